"""The sweep runner: prepare once, then one Ray Tune trial per grid point, then the leaderboard.

Each trial trains, evaluates and writes its run record under <storage>/<spec>/runs/<trial>/; that dir is
named by the trial's config, so a restarted or retried trial resumes from its own checkpoint, and a trial
whose record is already complete is never trained again.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


from .spec import SweepSpec, check_resources, expand

# Passed to Ray workers explicitly: they do not see variables set after ray.init.
FORWARDED_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HOME", "HARNESS_CACHE_DIR", "WANDB_MODE", "WANDB_API_KEY",
                 "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_SILENT", "TOKENIZERS_PARALLELISM", "PYTHONPATH")


def run_trial(params: dict[str, Any]) -> None:
    """The Tune trainable: one run end to end, then its metrics reported to Tune."""
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
        record = pipeline.train(trial["config"], spec=params["spec"], trial_id=trial["name"])
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


def run_sweep(spec: SweepSpec, spec_path: Path | str, *, resume: bool = False, address: str | None = None,
              overrides: list[str] | None = None) -> Path:
    """Run (or resume) a sweep; returns its folder (records under runs/, leaderboard files beside them)."""
    if (address or os.environ.get("RAY_ADDRESS")) and _has_ray_token():
        # A head started with `ray start` (Ray 2.60) checks a token; a driver given an explicit address sends
        # it only in token mode. Token mode also connects to a cluster without authentication, so it is the
        # default whenever a token is at hand. Ray reads the mode when it is imported: set it first.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray
    from ray import tune

    from app import pipeline

    trials = expand(spec, spec_path, overrides)
    if not address and not os.environ.get("RAY_ADDRESS"):
        check_resources(spec.resources, {}, str(spec_path))
    root = Path(trials[0]["config"]["output_dir"]).parents[1]
    storage = root.parent
    root.mkdir(parents=True, exist_ok=True)
    (root / "trials.json").write_text(json.dumps([{k: t[k] for k in ("name", "point")} for t in trials], indent=1))
    # The spec travels with its records: `harness leaderboard DIR` applies the selection rule stored here.
    (root / "spec.json").write_text(spec.model_dump_json(indent=1))

    # Prepare once per distinct (model, data, eval) setup; the trials then only read the cache.
    prepared: dict[str, Any] = {}
    for trial in trials:
        c = trial["config"]
        key = json.dumps([c["model"], c["data"], c["task"], c["eval"], c["online"], c["cache_dir"], c["method"]["name"]],
                         sort_keys=True)
        if key not in prepared:
            prepared[key] = {"trial": trial["name"], **pipeline.prepare(c)}
    (root / "prepare.json").write_text(json.dumps(list(prepared.values()), indent=1))

    _ray_init(address)
    try:
        check_resources(spec.resources, ray.cluster_resources(), str(spec_path))
        trainable = tune.with_resources(run_trial, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
        experiment = str(storage / spec.name / "tune")
        if resume and tune.Tuner.can_restore(experiment):
            tuner = tune.Tuner.restore(experiment, trainable, resume_errored=True)
        else:
            if resume:
                print(f"harness: nothing to resume at {experiment}; starting the sweep")
            tuner = tune.Tuner(
                trainable,
                param_space={"spec": spec.name, "trial": tune.grid_search(trials)},
                # A trial's worker process is kept for the next trial: torch, transformers and the harness
                # are imported once per process, not once per trial (every trial sets its own seeds).
                tune_config=tune.TuneConfig(max_concurrent_trials=spec.max_concurrent, reuse_actors=True),
                run_config=tune.RunConfig(name="tune", storage_path=str(storage / spec.name), verbose=0,
                                          failure_config=tune.FailureConfig(max_failures=spec.max_failures)))
        results = tuner.fit()
    finally:
        ray.shutdown()
    if results.errors:  # Tuner.fit() does not raise when trials fail
        raise RuntimeError(f"{len(results.errors)} of {len(trials)} trials failed; first: {results.errors[0]}")
    return root
