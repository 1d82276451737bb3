"""`make gpu-check` (benchmarks/gpu_check.py): on this CPU-only machine it says so and exits 0, and its dry
run takes every check's code path on CPU under bf16 autocast, so the script a GPU machine runs is not run
for the first time there. The dry run is also the CPU test of the precision policy's end-to-end promises
under bf16 autocast: DPO's first loss is log 2 and `harness eval` of the saved model reproduces the
train-time eval (each check prints what it measured); PPO's step-0 checks are tests/test_online.py's."""

import subprocess
import sys

import pytest
import torch

from .conftest import REPO

SCRIPT = str(REPO / "benchmarks" / "gpu_check.py")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the check would run for real")
def test_without_a_gpu_it_says_so_and_exits_0():
    result = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "no CUDA device" in result.stdout


def test_the_dry_run_passes_every_check_on_cpu_under_bf16_autocast(embedded):
    # DPO only: PPO's step-0 checks under bf16 autocast run in tests/test_online.py (CI's time budget)
    result = subprocess.run([sys.executable, SCRIPT, "--dry-run", "--methods", "dpo"], capture_output=True, text=True,
                            cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stdout.splitlines()
    for check in ("gpu_smoke full", "gpu_smoke LoRA r=16", "dpo precision", "dpo trial", "dpo step 0", "dpo re-eval"):
        assert any(line.startswith(f"ok   {check}:") for line in lines), (check, result.stdout)
    assert "skip dpo on 2 GPUs" in result.stdout and "all checks passed" in lines[-1]
    assert '"training": "float32 weights, bfloat16 autocast"' in result.stdout
