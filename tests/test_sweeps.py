"""Sweeps on Ray Tune: spec validation, the prepare stage, W&B offline files, and kill-and-resume."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness.wandb_offline import summarize

from .conftest import REPO, call_cli, run_cli

TINY = {"eval": {"num_prompts": 12}, "train": {"max_steps": 4, "save_steps": 0}, "wandb": {"mode": "disabled"}}
TINY_TASK = {"sft_steps": 3, "num_sft_examples": 64, "num_train_pairs": 32, "num_judge_pairs": 32, "num_eval_prompts": 8,
             "num_val_prompts": 8}  # an embedded task built in seconds, for a cache of a test's own


def kill_session(sid: int) -> None:
    """SIGKILL the driver and everything it started: Ray's daemons and workers stay in the driver's session
    (workers in process groups of their own), so this touches no other Ray on the machine."""
    for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
        try:
            if os.getsid(pid) == sid:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def write_spec(tmp_path: Path, **fields) -> Path:
    spec = {"name": "t", "base": TINY, "grid": {"method.beta": [0.1]}, "resources": {"cpu": 1},
            "storage_path": str(tmp_path / "sweeps"), **fields}
    path = tmp_path / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("fields, needle", [
    ({"grid": {"method.name": ["dpo", "nosuch"]}}, "nosuch"),
    ({"grid": {}}, "grid is empty"),
    ({"grid": {"method.beta": []}}, "has no values"),
    ({"resources": {"cpu": 64}}, "resources.cpu"),
    ({"resources": {"cpu": 1, "gpu": 1}}, "resources.gpu"),
    ({"resources": {"cpu": 1, "workers": 64}}, "per worker x 64 workers"),
    ({"resources": {"cpu": 1, "workers": 2, "accelerate_config": "nope.yaml"}}, "resources.accelerate_config nope.yaml"),
    ({"resources": {"cpu": 1, "workers": 0}}, "resources.workers"),
    ({"grid": {"method.gamma": [1.0]}}, "gamma"),
    ({"gird": {"method.beta": [0.1]}}, "gird"),
])
def test_bad_specs_exit_2_with_one_line(tmp_path, fields, needle):
    result = call_cli("sweep", str(write_spec(tmp_path, **fields)))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert not (tmp_path / "sweeps").exists()


def test_shipped_specs_expand():
    from sweeps.spec import expand, load_spec

    sizes = {name: len(expand(*load_spec(name))) for name in ("quickstart", "beta_sensitivity", "method_comparison",
                                                               "frontier", "ultrafeedback_qwen", "beta_sensitivity_1b",
                                                               "reference_ablation")}
    # beta_sensitivity: 4 betas x 3 learning rates x 3 seeds; method_comparison's selection stage: 5 methods x the
    # same 9 configurations each x 2 selection seeds (extension rounds and the fresh-seed test stage come after)
    assert sizes["beta_sensitivity"] == 36 and sizes["method_comparison"] == 90 and sizes["frontier"] == 48
    assert sizes["reference_ablation"] == 12  # 4 reference variants x 3 seeds
    assert sizes["beta_sensitivity_1b"] == 12 and sizes["ultrafeedback_qwen"] == 20
    quickstart = {t["config"]["method"]["name"] for t in expand(*load_spec("quickstart"))}
    assert {"dpo", "ipo", "kto", "orpo", "simpo", "ppo", "rloo", "grpo", "online_dpo"} <= quickstart
    assert call_cli("sweep", "no_such_spec").returncode == 2


def test_two_sweeps_at_once_on_one_cache_prepare_once_log_to_wandb_and_write_their_boards(tmp_path):
    """Two drivers start at once on one empty cache (a small task, judged by gold: no judge to train). Each
    shared cache entry is built once, by whichever driver gets its lock first, and read by the other; the
    sweep of two trials prepares once, logs each trial and its report to W&B (offline), and writes its board."""
    from harness.cache import RowCache

    cache = tmp_path / "cache"
    base = {"task": TINY_TASK, "cache_dir": str(cache), "train": {"max_steps": 4, "save_steps": 0},
            "eval": {"num_prompts": 8, "judge": "gold"}, "wandb": {"mode": "disabled"}}
    specs = [write_spec(tmp_path, name="multi", base={**base, "wandb": {"mode": "offline"}},
                        grid={"method.beta": [0.1, 1.0]}, max_concurrent=2),
             write_spec(tmp_path, name="other", base=base, grid={"method.beta": [0.3]})]
    drivers = [subprocess.Popen([sys.executable, "-m", "harness", "sweep", str(spec)], cwd=REPO, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for spec in specs]
    try:
        for driver in drivers:
            _, stderr = driver.communicate(timeout=600)
            assert driver.returncode == 0, stderr[-3000:]
    finally:
        for driver in drivers:
            if driver.poll() is None:
                kill_session(driver.pid)
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweeps").glob("*/runs/*/record.json"))]
    assert [r["status"] for r in records] == ["completed"] * 3 and len({r["dataset"]["sft_fingerprint"] for r in records}) == 1
    for kind in ("embedded-task", "sft-generations"):  # built once, verified by both
        entries = [p for p in (cache / kind).iterdir() if not p.name.endswith(".lock")]
        assert len(entries) == 1 and (entries[0] / ".manifest.json").is_file(), kind
    shards = [RowCache._shard_values(s)[0] for s in (cache / "reference-logps").rglob("*.safetensors")]
    assert shards and all(shards) and sum(map(len, shards)) == len(set().union(*shards))  # no row computed twice

    root = tmp_path / "sweeps" / "multi"
    prepared = json.loads((root / "prepare.json").read_text())
    assert len(prepared) == 1  # one distinct setup for the two trials: prepared once
    records = [json.loads(p.read_text()) for p in sorted(root.glob("runs/*/record.json"))]
    for r in records:  # the trials only read what prepare computed
        assert r["metrics"]["reference_cache_hit"] is True and r["metrics"]["sft_cache_hit"] is True
        assert r["spec"] == "multi"
    assert sorted(r["method_params"]["beta"] for r in records) == [0.1, 1.0]
    assert (root / "leaderboard.md").is_file() and len((root / "leaderboard.csv").read_text().splitlines()) == 3
    # W&B: one offline run per trial, grouped by the spec, with the training history and eval summary
    files = sorted(root.glob("runs/*/wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 2
    logged = summarize(files[0])
    assert logged["exited"] and logged["group"] == "multi" and logged["job_type"] == "dpo"
    assert any("train/loss" in row for row in logged["history"])
    assert "win_rate" in logged["summary"] and "kl_to_sft" in logged["summary"]
    assert logged["config"]["method.name"] == "dpo"
    # the report: written at the end of the sweep, and logged as one W&B summary run in the spec's group
    assert (root / "report.md").is_file() and (root / "report.html").is_file()
    [report_run] = sorted((root / "wandb").glob("offline-run-*/run-*.wandb"))
    logged = summarize(report_run)
    assert logged["exited"] and logged["group"] == "multi" and logged["job_type"] == "report"
    keys = {key for row in logged["history"] for key in row}
    assert {"leaderboard/_type", "figures/reward_kl_frontier/_type"} <= keys  # a wandb.Table and a wandb.Image
    # the leaderboard is a pure function of the records
    assert call_cli("leaderboard", str(root)).returncode == 0


def test_a_sweep_survives_a_killed_trial_worker_and_a_killed_driver(tmp_path, embedded):
    """Two trials, one at a time. While the second trains, after its first checkpoint, its worker process is
    SIGKILLed (this test's own, by its process id): Tune restarts the trial, which resumes from the checkpoint.
    Then the driver is killed with everything it started, and `--resume` finishes the sweep without running
    the first trial again. The second trial's record equals, metric for metric, the same run uninterrupted
    (timing and cache bookkeeping aside)."""
    from .test_reliability import _comparable

    base = {**TINY, "train": {"max_steps": 24, "save_steps": 4, "log_steps": 1}, "eval": {"num_prompts": 16}}
    path = write_spec(tmp_path, name="killed", base=base, grid={"method.beta": [0.1, 0.2]}, max_concurrent=1,
                      max_failures=1)
    root = tmp_path / "sweeps" / "killed"
    driver = subprocess.Popen([sys.executable, "-m", "harness", "sweep", str(path)], cwd=REPO, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def attempts(run: Path) -> list[dict]:
        return [json.loads(line) for line in (run / "attempts.jsonl").read_text().splitlines()]

    try:
        deadline, victim, second = time.time() + 600, None, None
        while time.time() < deadline and second is None:
            assert driver.poll() is None, "the sweep ended before it could be killed: " + driver.stderr.read()[-3000:]
            running = [p.parent for p in root.glob("runs/*/attempts.jsonl") if not (p.parent / "record.json").is_file()
                       or json.loads((p.parent / "record.json").read_text())["status"] != "completed"]
            finished = [p for p in root.glob("runs/*/record.json") if json.loads(p.read_text())["status"] == "completed"]
            if finished and running and victim is None and list(running[0].glob("checkpoints/step-*/trainer_state.json")):
                victim, second = attempts(running[0])[0]["pid"], None
                os.kill(victim, signal.SIGKILL)  # the trial's worker: Tune restarts the trial
                trial = running[0]
            elif victim is not None and len(attempts(trial)) == 2:
                second = trial  # the restarted attempt began: now the driver goes, with all it started
            time.sleep(0.1)
        assert second is not None, "no restart within 600 s"
    finally:
        kill_session(driver.pid)
        driver.wait()
    done_before = {p.parent.name for p in root.glob("runs/*/record.json") if json.loads(p.read_text())["status"] == "completed"}
    assert len(done_before) == 1 and second.name not in done_before

    result = run_cli("sweep", str(path), "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    for trial in json.loads((root / "trials.json").read_text()):
        folder = root / "runs" / trial["name"]
        assert json.loads((folder / "record.json").read_text())["status"] == "completed"
        if trial["name"] in done_before:
            assert len(attempts(folder)) == 1, f"{trial['name']} finished before the kill but ran again"
    killed = json.loads((second / "record.json").read_text())
    runs = attempts(second)
    assert len(runs) == 3 and runs[0]["pid"] == victim and 4 <= killed["metrics"]["resumed_from_step"] < 24
    # the same run uninterrupted, on one torch thread as Ray runs a 1-CPU trial (a thread count can move the last
    # bits of a sum)
    config = tmp_path / "straight.yaml"
    config.write_text(yaml.safe_dump({**killed["config"], "output_dir": str(tmp_path / "straight")}))
    straight = subprocess.run([sys.executable, "-m", "harness", "train", "--config", str(config)], capture_output=True,
                              text=True, cwd=REPO, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert straight.returncode == 0, straight.stderr[-3000:]
    straight = json.loads((tmp_path / "straight" / "record.json").read_text())
    want, got = _comparable(straight["metrics"]), _comparable(killed["metrics"])
    assert got == want, {k: (want[k], got.get(k)) for k in want if want[k] != got.get(k)}
    assert killed["outcomes"] == straight["outcomes"]


def test_sweep_through_address_on_a_hand_started_head_with_token_auth_where_one_trial_diverges(tmp_path, embedded):
    """A user's cluster in miniature: `ray start --head` on loopback with its own temp dir and Ray's token
    authentication on, then `harness sweep --address`. The driver is given only the token, as a user
    copying it from the head would; the harness turns token mode on. One of the two trials diverges: it fails
    alone (its record says why), is not retried, and the other completes. Only this head is stopped."""
    import secrets
    import socket
    import tempfile

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = Path(tempfile.mkdtemp(prefix="rayhead-", dir="/tmp"))  # short: Ray's socket paths stay < 107 bytes
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={port}",
                             "--node-ip-address=127.0.0.1", f"--temp-dir={temp}", "--num-cpus=2",
                             "--include-dashboard=false", "--disable-usage-stats"],
                            env={**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        started = head.communicate(timeout=120)[0]
        assert head.returncode == 0, started[-2000:]
        path = write_spec(tmp_path, name="onhead", base={**TINY, "train": {"max_steps": 8, "save_steps": 0}},
                          grid={"train.learning_rate": [1000.0, 1e-4]}, max_concurrent=2)
        result = subprocess.run([sys.executable, "-m", "harness", "sweep", str(path), "--address", f"127.0.0.1:{port}"],
                                capture_output=True, text=True, cwd=REPO, timeout=900,
                                env={**env, "RAY_AUTH_TOKEN": token})
        assert result.returncode == 1 and "1 of 2 trials failed" in result.stderr, result.stderr[-3000:]
        records = {r["config"]["train"]["learning_rate"]: r for r in
                   (json.loads(p.read_text()) for p in (tmp_path / "sweeps" / "onhead").glob("runs/*/record.json"))}
        assert records[1e-4]["status"] == "completed"  # the other trial went on
        assert records[1000.0]["status"] == "failed" and records[1000.0]["error"].startswith("Diverged: non-finite")
        attempts = (Path(records[1000.0]["output_dir"]) / "attempts.jsonl").read_text().splitlines()
        assert len(attempts) == 1  # Tune's retry found the deterministic failure and did not train again
        # the trials ran in the head's workers (their logs are in its temp dir), not in a local Ray
        worker_logs = " ".join(p.read_text(errors="replace") for p in temp.glob("session_*/logs/worker-*.err"))
        assert "train dpo" in worker_logs
    finally:
        kill_session(head.pid)  # the head's daemons live in the session `ray start` ran in
        shutil.rmtree(temp, ignore_errors=True)


def test_a_comparison_runs_selection_extension_and_fresh_seed_test_stages(tmp_path, embedded):
    """The protocol end to end through `harness sweep`: equal budgets, a pick at the edge of its grid extended
    one step, each pick re-run on 5 fresh seeds, the stage and the spec as run (with its hash) in every record."""
    base = {**TINY, "eval": {"num_prompts": 12, "num_val_prompts": 12}}
    path = write_spec(tmp_path, name="protocol", base=base, grid={},
                      methods={"dpo": {"train.learning_rate": [1.0e-4, 3.0e-4]},
                               "ipo": {"train.learning_rate": [1.0e-4, 3.0e-4]}},
                      selection={"metric": "gold", "kl_budget": 50.0, "seeds": [0], "test_seeds": [10, 11, 12, 13, 14],
                                 "extend_rounds": 1}, max_concurrent=2)
    result = run_cli("sweep", str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    root = tmp_path / "sweeps" / "protocol"
    spec = json.loads((root / "spec.json").read_text())
    records = [json.loads(p.read_text()) for p in sorted(root.glob("runs/*/record.json"))]
    selection = [r for r in records if r["stage"] == "selection"]
    test = [r for r in records if r["stage"] == "test"]
    tuning = spec["tuning"]
    # two learning rates per method: every pick is at an edge, so round 1 added one configuration per method
    assert tuning["extension_rounds"] == 1 and tuning["budget"] == {"dpo": 3, "ipo": 3}
    assert len(selection) == 6 and {r["seed"] for r in selection} == {0}
    lrs = {p["train.learning_rate"] for p in spec["expanded"] if p["method.name"] == "dpo"}
    assert len(lrs) == 3 and lrs - {1e-4, 3e-4} <= {3.33e-5, 9e-4}  # one grid step (x3) beyond the edge picked
    assert len(test) == 10 and {r["seed"] for r in test} == {10, 11, 12, 13, 14}
    for method, pick in tuning["picks"].items():
        runs = [r for r in test if r["method"] == method]
        assert {r["config"]["train"]["learning_rate"] for r in runs} == {pick["train.learning_rate"]}
    assert {r["sweep"]["spec_hash"] for r in test} == {spec["spec_hash"]}  # the test stage ran the final spec
    assert all(r["sweep"]["spec"]["selection"]["test_seeds"] == [10, 11, 12, 13, 14] for r in records)
    board = __import__("pandas").read_csv(root / "leaderboard.csv")
    assert set(board["seeds"]) == {5} and set(board["stage"]) == {"test"}
    assert set(board["configurations_tried"]) == {3}
    assert (root / "stability.csv").is_file()
