"""Multi-process runs: two processes launched by `accelerate launch` train and log what one process does
with the same global batch.

`accelerate launch --cpu --num_processes 2` starts ONE process (accelerate's multi-CPU path goes through
mpirun, which this machine lacks), so its run says nothing about two processes. `--multi_gpu` is
accelerate's torchrun launcher: on a CPU-only machine it starts two processes and the harness's
Accelerator(cpu=True) joins them over gloo. The test checks world_size == 2 in the record, so it cannot
pass on one process.

Tolerance: the two runs differ only in float32 summation order (DDP's gradient all-reduce against
accelerate's gradient accumulation, and a mean over processes against a mean over micro-batches), so
losses and metrics agree to a few float32 ulps per step: rel 1e-4 over 5 steps leaves two orders of
magnitude of room while a wrong reduction (one process's metrics alone, a per-process z_ref) is off by
percents. (Measured: DPO bit-identical; KTO loss within 1.2e-7 relative, z_ref within 1e-6 absolute.)
"""

import json
import socket
import subprocess
import sys

import pytest

from .conftest import REPO, run_cli

STEPS = 5
COMPARED = ("loss", "rewards/chosen", "rewards/rejected", "margins", "accuracy", "grad_norm", "learning_rate")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(out, **overrides) -> list[str]:
    base = {"output_dir": str(out), "train.max_steps": STEPS, "train.log_steps": 1, "eval.num_prompts": 0,
            "train.save_model": "false", "train.save_steps": 0, "wandb.mode": "disabled", **overrides}
    return [f"{k}={v}" for k, v in base.items()]


def _launch_two(out, **overrides) -> dict:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
               "-m", "harness", "train", *_args(out, **overrides)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "record.json").read_text())


def _one(out, **overrides) -> dict:
    result = run_cli("train", *_args(out, **overrides))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "record.json").read_text())


def _history(out) -> list[dict]:
    return [row for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "step" in row]


def test_two_processes_match_one_with_the_same_micro_batches(tmp_path, embedded):
    """DPO, 2 processes x 4 pairs against 1 process x 2 accumulated micro-batches of 4 pairs: the same
    micro-batches (accelerate's seedable sampler deals batch k of a step to process k), so every logged
    value is the same mean."""
    two = _launch_two(tmp_path / "two", **{"train.batch_size": 4})
    one = _one(tmp_path / "one", **{"train.batch_size": 4, "train.gradient_accumulation_steps": 2})
    assert (two["metrics"]["world_size"], two["metrics"]["global_batch_size"]) == (2, 8)
    assert (one["metrics"]["world_size"], one["metrics"]["global_batch_size"]) == (1, 8)
    assert two["metrics"]["pairs_seen"] == one["metrics"]["pairs_seen"] == STEPS * 8
    a, b = _history(tmp_path / "two"), _history(tmp_path / "one")
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, STEPS + 1))
    for x, y in zip(a, b):
        for key in COMPARED:
            assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-6), (x["step"], key)
    assert a[-1]["loss"] != pytest.approx(a[0]["loss"], rel=1e-3)  # it trained: the comparison is not of constants


def test_kto_reference_point_is_gathered_over_processes(tmp_path, embedded):
    """KTO, 2 processes x 4 rows against 1 process x 8 rows: z_ref is the mean over all 8 mismatched rows
    in both, so the logged z_ref ("kl") and the loss agree (each process holds 4 rows, so the mean of the
    two per-process losses is the mean over 8). A per-process z_ref would differ from step one."""
    # On the embedded task KTO's policy lowers the mismatched completions' log-probs, so z_ref stays at its
    # clamp (0) and could not tell a gathered mean from a per-process one. Down-weighting the undesirable rows
    # (outside the Eq. 8 band: a warning) at lr 1e-3 raises them: z_ref is 0.01-0.18 from step 3 (measured).
    kto = {"method.name": "kto", "method.undesirable_weight": 0.05, "train.learning_rate": 1e-3}
    two = _launch_two(tmp_path / "two", **kto, **{"train.batch_size": 4})
    one = _one(tmp_path / "one", **kto, **{"train.batch_size": 8})
    assert two["metrics"]["global_batch_size"] == one["metrics"]["global_batch_size"] == 8
    a, b = _history(tmp_path / "two"), _history(tmp_path / "one")
    assert any(row["kl"] > 0 for row in b[1:])  # z_ref leaves its clamp at 0 once the policy moves
    for x, y in zip(a, b):
        # z_ref is a small mean (~0.01) of differences of summed log-probs (~50 nats, float32 ulp ~4e-6):
        # cancellation leaves ~1e-6 of absolute noise; a per-process z_ref is off by the rows' spread (~1e-2).
        assert x["kl"] == pytest.approx(y["kl"], abs=2e-5), x["step"]
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4, abs=1e-6), x["step"]
