"""The sweep runner: prepare once, then one Ray Tune trial per grid point, then the leaderboard.

Each trial trains, evaluates and writes its run record under <storage>/<spec>/runs/<trial>/; that dir is
named by the trial's config, so a restarted or retried trial resumes from its own checkpoint, and a trial
whose record is already complete is never trained again.

A spec with a protocol (`selection.test_seeds`) runs a comparison in stages, each a Ray Tune experiment
under tune*/: the selection stage (every configuration on the selection seeds), extension rounds where a
pick sits at the edge of its grid (sweeps/protocol.py), then the test stage (each method's pick on fresh
seeds). spec.json holds the spec as it ran: the configurations actually tried, rounds included, the picks,
and its hash, which every record also carries.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from harness.cache import write_json_atomic

from .protocol import SEED, tune_until_bracketed
from .spec import Resources, SweepSpec, check_resources, expand, method_points, seeds_of
from .workers import train_on_workers

# Passed to Ray workers explicitly: they do not see variables set after ray.init.
FORWARDED_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HOME", "HARNESS_CACHE_DIR", "WANDB_MODE", "WANDB_API_KEY",
                 "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_SILENT", "TOKENIZERS_PARALLELISM", "PYTHONPATH")


def run_trial(params: dict[str, Any]) -> None:
    """The Tune trainable: one run end to end (in this process, or on resources.workers Ray Train workers),
    then its metrics reported to Tune."""
    from ray import tune

    from app import pipeline
    from harness.record import RunRecord

    trial = params["trial"]
    out = Path(trial["config"]["output_dir"])
    done = out / "record.json"
    earlier = RunRecord.read(done) if done.is_file() else None
    if earlier is not None and earlier.status == "failed" and (earlier.error or "").startswith("Diverged"):
        raise RuntimeError(earlier.error)  # deterministic: a retry would diverge at the same step
    if earlier is not None and earlier.status == "completed":
        record = earlier  # finished before an interruption: report it, never train twice
    else:
        out.mkdir(parents=True, exist_ok=True)
        with (out / "attempts.jsonl").open("a") as handle:
            handle.write(json.dumps({"started": time.time(), "pid": os.getpid()}) + "\n")
        resources = Resources(**params.get("resources", {}))  # absent in a sweep started before workers existed
        if resources.workers > 1:
            train_on_workers(params, resources)
            record = RunRecord.read(done)
        else:
            record = pipeline.train(trial["config"], spec=params["spec"], trial_id=trial["name"],
                                    stage=trial.get("stage"), sweep=params.get("sweep"))
    tune.report({k: v for k, v in record.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})


def _has_ray_token() -> bool:
    """Where Ray 2.60 looks for a cluster's auth token, in its own order."""
    return bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                or (Path.home() / ".ray" / "auth_token").is_file())


def _ray_init(address: str | None) -> None:
    import ray

    os.environ.setdefault("RAY_TMPDIR", "/tmp/ray-h")  # Ray's socket paths must stay under 107 bytes
    address = address or os.environ.get("RAY_ADDRESS")
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    if address:
        try:
            ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=False)
        except ConnectionError as error:
            raise ConnectionError(f"cannot connect to the Ray cluster at {address} ({error}); a cluster with token "
                                  "authentication needs its token here: ~/.ray/auth_token, RAY_AUTH_TOKEN or "
                                  "RAY_AUTH_TOKEN_PATH (see README, 'Sweeps on a cluster')") from None
    else:
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, runtime_env={"env_vars": env},
                 log_to_driver=False, configure_logging=False)


def _spec_as_run(spec: SweepSpec, points: list[dict], tuning: dict | None = None) -> dict:
    """The spec with the configurations actually tried (extension rounds included), and its hash."""
    tree = {**spec.model_dump(mode="json"), "expanded": points, **({"tuning": tuning} if tuning else {})}
    return {**tree, "spec_hash": hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:16]}


def run_sweep(spec: SweepSpec, spec_path: Path | str, *, resume: bool = False, address: str | None = None,
              overrides: list[str] | None = None) -> Path:
    """Run (or resume) a sweep; returns its folder (records under runs/, leaderboard files beside them)."""
    if (address or os.environ.get("RAY_ADDRESS")) and _has_ray_token():
        # A head started with `ray start` (Ray 2.60) checks a token; a driver given an explicit address sends
        # it only in token mode. Token mode also connects to a cluster without authentication, so it is the
        # default whenever a token is at hand. Ray reads the mode when it is imported: set it first.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    from app import pipeline

    where = str(spec_path)
    points = method_points(spec, where)
    trials = expand(spec, spec_path, overrides, points=points)
    if not address and not os.environ.get("RAY_ADDRESS"):
        check_resources(spec.resources, {}, where)
    root = Path(trials[0]["config"]["output_dir"]).parents[1]
    root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(root / "trials.json", [{k: t[k] for k in ("name", "point", "stage")} for t in trials], indent=1)
    # The spec travels with its records: `harness leaderboard DIR` applies the selection rule stored here.
    as_run = _spec_as_run(spec, points)
    write_json_atomic(root / "spec.json", as_run, indent=1)

    # Prepare once per distinct (model, data, eval) setup; the trials then only read the cache.
    prepared: dict[str, Any] = {}
    for trial in trials:
        c = trial["config"]
        key = json.dumps([c["model"], c["data"], c["task"], c["eval"], c["online"], c["cache_dir"], c["method"]["name"]],
                         sort_keys=True)
        if key not in prepared:
            prepared[key] = {"trial": trial["name"], **pipeline.prepare(c)}
    write_json_atomic(root / "prepare.json", list(prepared.values()), indent=1)

    _ray_init(address)
    try:
        check_resources(spec.resources, ray.cluster_resources(), where)
        _fit(spec, trials, root, "tune", as_run, resume)
        if spec.protocol:
            _run_protocol(spec, spec_path, overrides, points, root, resume)
    finally:
        ray.shutdown()
    return root


def _run_protocol(spec: SweepSpec, spec_path, overrides, points: list[dict], root: Path, resume: bool) -> None:
    """Extension rounds until each method's pick is interior (or a limit is reached), then the test stage."""
    from evals.selection import picks
    from evals.rows import configuration_table
    from evals.store import load_records

    selection, seeds = spec.selection, seeds_of(spec, str(spec_path))
    by_method: dict[str, list[dict]] = {}
    for point in points:
        by_method.setdefault(point["method.name"], []).append(point)
    tried = [dict(p) for p in points]
    rounds = [0]

    def pick(current: dict[str, list[dict]]) -> dict[str, dict]:
        new = [p for ps in current.values() for p in ps if p not in tried]
        if new:
            tried.extend(new)
            rounds[0] += 1
            _fit(spec, expand(spec, spec_path, overrides, points=new, seeds=seeds), root, f"tune-extend-{rounds[0]}",
                 _spec_as_run(spec, tried), resume)
        records = load_records(root / "runs")
        records = records[records["stage"] == "selection"]
        point_of = {t["name"]: {k: v for k, v in t["point"].items() if k != SEED}
                    for t in expand(spec, spec_path, overrides, points=tried, seeds=seeds)}
        trial_of = dict(zip(records["configuration"], records["trial"]))  # a record's config holds every default
        board = picks(configuration_table(records), selection)
        return {row["method"]: point_of[trial_of[row["configuration"]]] for _, row in board.iterrows()}

    by_method, chosen, notes, ran = tune_until_bracketed(by_method, pick, selection.limits, selection.extend_rounds)
    tuning = {"extension_rounds": ran, "picks": chosen, "edge_notes": notes,
              "budget": {m: len(p) for m, p in by_method.items()}}
    as_run = _spec_as_run(spec, tried, tuning)
    write_json_atomic(root / "spec.json", as_run, indent=1)
    test = expand(spec, spec_path, overrides, points=list(chosen.values()), seeds=selection.test_seeds, stage="test")
    _fit(spec, test, root, "tune-test", as_run, resume)


def _fit(spec: SweepSpec, trials: list[dict], root: Path, experiment: str, as_run: dict, resume: bool) -> None:
    """One stage of the sweep as one Ray Tune experiment under root/<experiment>."""
    import ray
    from ray import tune

    res = spec.resources
    # A multi-worker trial's workers are Ray Train's to place (their own placement group); the Tune trial only
    # waits for them, so it holds no CPU (a token of memory: Ray needs some resource), and the concurrency is
    # what the cluster fits of whole trials.
    trainable = tune.with_resources(run_trial, {"cpu": res.cpu, "gpu": res.gpu} if res.workers == 1 else {"memory": 2**20})
    concurrent = spec.max_concurrent
    if res.workers > 1:
        available = ray.cluster_resources()
        fits = int(min(available.get("CPU", 1) // (res.cpu * res.workers),
                       available.get("GPU", 0) // (res.gpu * res.workers) if res.gpu else float("inf")))
        concurrent = max(1, min(concurrent or fits, fits))
    path = str(root / experiment)
    if resume and tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable, resume_errored=True)
    else:
        if resume:
            print(f"harness: nothing to resume at {path}; starting this stage")
        tuner = tune.Tuner(
            trainable,
            param_space={"spec": spec.name, "trial": tune.grid_search(trials), "resources": res.model_dump(),
                         "sweep": {"name": spec.name, "spec_hash": as_run["spec_hash"], "spec": as_run}},
            # A trial's worker process is kept for the next trial: torch, transformers and the harness
            # are imported once per process, not once per trial (every trial sets its own seeds).
            tune_config=tune.TuneConfig(max_concurrent_trials=concurrent, reuse_actors=True),
            run_config=tune.RunConfig(name=experiment, storage_path=str(root), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=spec.max_failures)))
    results = tuner.fit()
    if results.errors:  # Tuner.fit() does not raise when trials fail
        raise RuntimeError(f"{len(results.errors)} of {len(trials)} trials failed; first: {results.errors[0]}")
