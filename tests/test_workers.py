"""Trials that span several processes: `resources.workers: 2` runs a trial as a Ray Train TorchTrainer (gloo on
CPU) through `harness sweep`.

Tolerance: as in tests/test_distributed.py, the 2-worker trial and one process accumulating 2 micro-batches see
the same micro-batches (accelerate's seedable sampler deals batch k of a step to process k) and differ only in
float32 summation order (DDP's all-reduce against gradient accumulation, a mean over processes against a
mean over micro-batches): rel 1e-4 leaves orders of magnitude of room (measured: bit-identical), while one
worker's metrics alone, a resume that replays the wrong batches or restores the wrong optimizer state, or
a trial that ran on one process are off by percents (the world size is checked too).
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from .conftest import REPO
from .test_sweeps import kill_session

STEPS = 24  # ~0.15 s a step: a window of 20 steps to kill a worker in after its first checkpoint
COMPARED = ("loss", "rewards/chosen", "rewards/rejected", "margins", "accuracy", "grad_norm", "learning_rate")
BASE = {"train": {"max_steps": STEPS, "log_steps": 1, "batch_size": 4, "save_steps": 0, "save_model": False},
        "eval": {"num_prompts": 0}, "wandb": {"mode": "disabled"}}


def _spec(tmp_path, name: str, base: dict, **fields):
    spec = {"name": name, "base": base, "grid": {"method.beta": [0.1]}, "storage_path": str(tmp_path / "sweeps"),
            "resources": {"cpu": 1, "workers": 2}, **fields}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _history(folder) -> list[dict]:
    return [row for row in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines()) if "step" in row]


def test_a_two_worker_trial_killed_mid_run_resumes_and_matches_one_process_accumulating_two(tmp_path, embedded):
    """One 2-worker DPO trial through `harness sweep` with a DDP accelerate config; one of its workers is
    SIGKILLed (by its process id) after a checkpoint. Tune restarts the trial, its workers resume from the
    checkpoint, and every step's logged values (the resumed attempt's where both logged one) equal those of one
    process accumulating the same 2 micro-batches per step, uninterrupted."""
    accelerate_config = tmp_path / "ddp.yaml"  # what `accelerate config` writes for DDP
    accelerate_config.write_text(yaml.safe_dump({"compute_environment": "LOCAL_MACHINE", "distributed_type": "MULTI_GPU",
                                                 "num_machines": 1, "num_processes": 2, "mixed_precision": "no"}))
    base = {**BASE, "train": {**BASE["train"], "max_steps": STEPS, "save_steps": 4}}
    path = _spec(tmp_path, "workers", base, max_failures=1,
                 resources={"cpu": 1, "workers": 2, "accelerate_config": "ddp.yaml"})
    runs = tmp_path / "sweeps" / "workers" / "runs"
    driver = subprocess.Popen([sys.executable, "-m", "harness", "sweep", str(path)], cwd=REPO, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline, victim = time.time() + 600, None
        while time.time() < deadline and victim is None:
            assert driver.poll() is None, driver.stderr.read()[-3000:]
            for run in runs.glob("*"):
                if list(run.glob("checkpoints/step-*/trainer_state.json")) and (run / "workers.jsonl").is_file():
                    workers = [json.loads(line) for line in (run / "workers.jsonl").read_text().splitlines()]
                    victim = next((w["pid"] for w in workers if w["rank"] == 1), None)
            time.sleep(0.2)
        assert victim is not None, "no checkpoint within 600 s"
        os.kill(victim, signal.SIGKILL)  # this test's own worker, by its process id
        _, stderr = driver.communicate(timeout=600)
        assert driver.returncode == 0, stderr[-3000:]
    finally:
        if driver.poll() is None:
            kill_session(driver.pid)
    [run] = runs.iterdir()
    two = json.loads((run / "record.json").read_text())
    assert two["status"] == "completed" and two["metrics"]["train_steps"] == STEPS
    resumed = two["metrics"]["resumed_from_step"]  # the second attempt went on from a checkpoint
    assert resumed is not None and resumed % 4 == 0 and 4 <= resumed < STEPS
    assert len((run / "attempts.jsonl").read_text().splitlines()) == 2
    workers = [json.loads(line) for line in (run / "workers.jsonl").read_text().splitlines()]
    assert sorted(w["rank"] for w in workers) == [0, 0, 1, 1]  # two attempts of two workers
    assert victim in [w["pid"] for w in workers[:2]] and victim not in [w["pid"] for w in workers[2:]]
    d = two["distributed"]
    assert (d["world_size"], d["launcher"], d["strategy"], d["backend"]) == (2, "ray-train", "MULTI_CPU", "gloo")
    assert d["accelerate_config"] == str(accelerate_config) and "MULTI_GPU" in d["accelerate_config_text"]

    one_dir = tmp_path / "one"
    import harness  # in this process: one process, no Ray

    harness.train({**base, "train": {**base["train"], "gradient_accumulation_steps": 2}, "method": {"beta": 0.1},
                   "output_dir": str(one_dir)})
    one = json.loads((one_dir / "record.json").read_text())
    assert one["distributed"]["world_size"] == 1 and one["distributed"]["strategy"] == "NO"
    assert two["metrics"]["global_batch_size"] == one["metrics"]["global_batch_size"] == 8
    assert two["metrics"]["pairs_seen"] == one["metrics"]["pairs_seen"] == STEPS * 8
    a = {row["step"]: row for row in _history(run)}  # a step logged by both attempts: the resumed one's
    b = {row["step"]: row for row in _history(one_dir)}
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    for step in b:
        for key in COMPARED:
            assert a[step][key] == pytest.approx(b[step][key], rel=1e-4, abs=1e-6), (step, key)
    assert a[STEPS]["loss"] != pytest.approx(a[1]["loss"], rel=1e-3)  # it trained: the comparison is not of constants
