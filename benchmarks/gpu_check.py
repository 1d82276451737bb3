"""The checks a GPU run must pass, in one command (`make gpu-check`), with no network and no downloads.

    python benchmarks/gpu_check.py            # on a CUDA machine: under 10 minutes
    python benchmarks/gpu_check.py --dry-run  # the same checks on CPU under bf16 autocast, tiny (what CI runs)

1. benchmarks/gpu_smoke.py: DPO through the training loop on a random-init ~100M-parameter Llama, full
   fine-tuning (fp32 master weights, bf16 autocast) and LoRA: s/step, tokens/s, peak memory.
2. A short DPO and a short PPO trial through `harness.train` on the embedded task (its models are built
   here, from a seed), on the GPU in bf16 autocast with fp32 master weights: the record states that precision
   for every part, PPO's KL at step 0 is 0 and its first ratio 1 (within 1e-3: one precision policy for
   sampling, old and reference log-probs and training), and DPO's first loss is log 2 within 5e-3 (its
   policy equals its reference at step 0; bf16 rounds differently padded batches differently); `harness eval` of the saved DPO model reproduces its train-time eval (1e-6: it
   reloads the fp32 weights and evaluates under the same autocast). Tokens/s and peak memory of each.
3. With two or more GPUs: the DPO trial on 2 processes (`accelerate launch --multi_gpu`), world size 2 in its
   record. Skipped, and said so, on one GPU.
Where no CUDA device is present it says so and exits 0. Any failed check exits 1 after printing them all.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-3
DPO_TOLERANCE = 5e-3


def _report(name: str, ok: bool, detail: str, failures: list[str]) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
    if not ok:
        failures.append(name)


def _trial(method: str, out: Path, dry_run: bool, steps: int) -> dict:
    import torch

    import harness

    overrides = {"output_dir": str(out), "method": {"name": method}, "wandb": {"mode": "disabled"},
                 "model": {"device": "cpu" if dry_run else "cuda", "mixed_precision": "bf16" if dry_run else "auto"},
                 "train": {"max_steps": steps, "log_steps": 1, "save_steps": 0, "save_model": method == "dpo"},
                 "eval": {"num_prompts": 8 if dry_run else 64}, "online": {"proxy_steps": 50, "prompts_per_rollout": 8,
                                                         "max_new_tokens": 12}}
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    record = harness.train(overrides)
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    return {"record": record, "first": first, "seconds": time.perf_counter() - started,
            "peak_GiB": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="run the checks on CPU (bf16 autocast, tiny sizes)")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps of each trial")
    parser.add_argument("--methods", default="dpo,ppo", help="the trials to run (default both)")
    args = parser.parse_args()
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu-check: no CUDA device on this machine; nothing to check (--dry-run runs the checks on CPU)")
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    failures: list[str] = []
    started = time.perf_counter()
    gpus = 0 if args.dry_run else torch.cuda.device_count()
    print(f"gpu-check: {'CPU dry run' if args.dry_run else f'{gpus} x ' + torch.cuda.get_device_name(0)}, "
          f"torch {torch.__version__}", flush=True)

    sys.path.insert(0, str(REPO / "benchmarks"))
    from gpu_smoke import run as smoke

    for lora in (False, True):
        result = smoke("cpu" if args.dry_run else "cuda", args.dry_run, 4 if args.dry_run else 40, lora,
                       2 if args.dry_run else 8, 64 if args.dry_run else 512, bf16=True if args.dry_run else None)
        peak = f", peak {result['peak_gpu_GiB']:.2f} GiB" if result["peak_gpu_GiB"] is not None else ""
        _report(f"gpu_smoke {result['mode']}", math.isfinite(result["final_loss"]),
                f"{result['parameters_M']:.1f}M parameters, {result['weights']} weights, {result['autocast']} autocast, "
                f"{result['s_per_step']:.3f} s/step, {result['tokens_per_s']:,.0f} tokens/s{peak}", failures)

    with tempfile.TemporaryDirectory() as tmp:
        steps = 4 if args.dry_run else args.steps
        for method in args.methods.split(","):
            got = _trial(method, Path(tmp) / method, args.dry_run, steps)
            record, first, m = got["record"], got["first"], got["record"].metrics
            peak = f", peak {got['peak_GiB']:.2f} GiB" if got["peak_GiB"] is not None else ""
            parts = {k: v for k, v in record.precision.items() if k not in ("setting", "autocast")}
            one_policy = record.precision["autocast"] == "bf16" and len(set(parts.values())) == 1 \
                and all(v.startswith("float32 weights") for v in parts.values())
            _report(f"{method} precision", one_policy, json.dumps(record.precision), failures)
            _report(f"{method} trial", record.status == "completed" and math.isfinite(m["final_train_loss"]),
                    f"{steps} steps in {got['seconds']:.1f} s, {m['tokens_per_s']:,.0f} tokens/s{peak}, "
                    f"win rate {m.get('win_rate', float('nan')):.3f}, KL to SFT {m.get('kl_to_sft', float('nan')):.3f}",
                    failures)
            if method == "ppo":
                kl, ratio = first["rollout/kl"], first["policy/ratio"]
                _report("ppo step 0", abs(kl) <= TOLERANCE and abs(ratio - 1) <= TOLERANCE,
                        f"KL {kl:.2e} (want 0 +- {TOLERANCE:g}), ratio {ratio:.6f} (want 1 +- {TOLERANCE:g})", failures)
            else:
                # bf16 rounds a summed log-prob differently for a differently padded batch (the reference pass
                # groups rows by length, training pads to the batch's longest): ~1e-2 nats, x beta / 2 in the loss
                _report("dpo step 0", abs(first["loss"] - math.log(2)) <= DPO_TOLERANCE,
                        f"loss {first['loss']:.6f} (want log 2 = {math.log(2):.6f} +- {DPO_TOLERANCE:g})", failures)
                from app.pipeline import evaluate_saved

                again = evaluate_saved(Path(tmp) / method).metrics
                keys = ("win_rate", "gold_reward", "kl_to_sft", "mean_length", "heldout_pref_accuracy")
                moved = {k: (m[k], again[k]) for k in keys if abs(m[k] - again[k]) > 1e-6}
                _report("dpo re-eval", not moved, f"harness eval reproduces {', '.join(keys)}" if not moved
                        else f"moved: {moved}", failures)
        if gpus >= 2:
            out = Path(tmp) / "dpo-2gpu"
            command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                       "--num_machines", "1", "--mixed_precision", "bf16", "--dynamo_backend", "no",
                       "--main_process_port", "0", "-m", "harness", "train", f"output_dir={out}",
                       f"train.max_steps={steps}", "train.save_steps=0", "train.save_model=false", "eval.num_prompts=16",
                       "wandb.mode=disabled"]
            result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
            ok = result.returncode == 0 and json.loads((out / "record.json").read_text())["metrics"]["world_size"] == 2
            _report("dpo on 2 GPUs", ok, "world size 2" if ok else result.stderr[-2000:], failures)
        else:
            print(f"skip dpo on 2 GPUs: {gpus} GPU{'s' if gpus != 1 else ''} here", flush=True)
    print(f"gpu-check: {'all checks passed' if not failures else 'FAILED: ' + ', '.join(failures)} "
          f"in {time.perf_counter() - started:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
