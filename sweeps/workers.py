"""A trial that spans several processes: `resources.workers: N` runs it as a Ray Train TorchTrainer.

The Tune trial (sweeps/runner.py `run_trial`) starts a TorchTrainer whose N workers each run the same
`pipeline.train` on the trial's config: Ray Train forms their process group (gloo on CPU, NCCL on GPU) and
sets RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT, so the pipeline's Accelerator joins it as it joins
an `accelerate launch`. An accelerate config file (DDP, FSDP, DeepSpeed ZeRO; what `accelerate config`
writes) is turned into the environment `accelerate launch` would give each process, by accelerate's own
launcher code, and set in each worker before its Accelerator exists. The main worker writes the record,
metrics and checkpoints in the trial's output_dir as a single-process trial does, so a restarted trial
resumes from its last checkpoint; the Tune trial reports the record's metrics.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from harness.errors import BadInput

# The variables accelerate's launcher sets for a strategy; the rest of its environment (ranks, ports) is
# Ray Train's to set.
STRATEGY_PREFIXES = ("ACCELERATE_", "FSDP_", "PARALLELISM_CONFIG_")


def accelerate_env(config_file: str | None, num_processes: int, gpus: bool) -> dict[str, str]:
    """What `accelerate launch --config_file F --num_processes N` puts in each process's environment for its
    strategy (DDP / FSDP / DeepSpeed settings), or {} without a config file. BadInput names a bad file."""
    if not config_file:
        return {}
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    argv = ["--config_file", config_file, "--num_processes", str(num_processes), "--main_process_port", "0"]
    try:
        args, _, _ = _validate_launch_command(launch_command_parser().parse_args([*argv, "train.py"]))
    except (ValueError, KeyError, TypeError, OSError) as error:
        raise BadInput(f"resources.accelerate_config {config_file}: {error}") from None
    except SystemExit:
        raise BadInput(f"resources.accelerate_config {config_file}: not an accelerate config") from None
    if args.use_deepspeed:
        env = prepare_deepspeed_cmd_env(args)[1]
    else:
        env = prepare_multi_gpu_env(args)
    before = os.environ
    return {k: v for k, v in env.items() if k.startswith(STRATEGY_PREFIXES) and before.get(k) != v
            and (gpus or not k.startswith("ACCELERATE_TORCH_DEVICE"))}


def _worker(params: dict[str, Any]) -> None:
    """Each Ray Train worker: the strategy's environment, then the same run as a single-process trial."""
    from app import pipeline

    import json

    from ray import train

    os.environ.update(params["strategy_env"])
    trial = params["trial"]
    out = Path(trial["config"]["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    with (out / "workers.jsonl").open("a") as handle:  # which process is which worker, attempt by attempt
        handle.write(json.dumps({"rank": train.get_context().get_world_rank(), "pid": os.getpid()}) + "\n")
    pipeline.train(trial["config"], spec=params["spec"], trial_id=trial["name"], stage=trial.get("stage"),
                   sweep=params.get("sweep"), distributed=params["distributed"])


def train_on_workers(params: dict[str, Any], resources) -> None:
    """Run one trial on `resources.workers` Ray Train workers and wait for it; its record is in output_dir."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    out = Path(params["trial"]["config"]["output_dir"])
    gpus = resources.gpu > 0
    per_worker = {"CPU": resources.cpu, **({"GPU": resources.gpu} if gpus else {})}
    env = accelerate_env(resources.accelerate_config, resources.workers, gpus)
    distributed = {"launcher": "ray-train", "workers": resources.workers, "backend": "nccl" if gpus else "gloo",
                   "accelerate_config": resources.accelerate_config,
                   "accelerate_config_text": Path(resources.accelerate_config).read_text()
                   if resources.accelerate_config else None}
    trainer = TorchTrainer(
        _worker, train_loop_config={**params, "strategy_env": env, "distributed": distributed},
        scaling_config=ScalingConfig(num_workers=resources.workers, use_gpu=gpus, resources_per_worker=per_worker),
        torch_config=TorchConfig(backend=distributed["backend"]),
        # A worker lost mid-run fails this fit; the Tune trial's own FailureConfig restarts the trial, which
        # resumes from the checkpoint in output_dir (as a single-process trial does).
        run_config=RunConfig(name="workers", storage_path=str(out / "ray_train"), failure_config=FailureConfig(0)))
    trainer.fit()
