"""The results store: every run record under one or more folders, checked against the versioned record
schema, as one pandas DataFrame (what leaderboards and reports are computed from).

Record schema versions (`schema_version` in record.json):
    1  records written before the field existed (the committed method_comparison records, for one):
       the fields of harness.record.RunRecord without `schema_version`
    2  adds `schema_version`; online methods' records, cost accounting (tokens trained, forwarded,
       generated; compute_tokens)
    3  adds `prompt_clusters` (the distinct prompt of each outcome), `stage` (selection or test run of a
       comparison) and `sweep` (the spec the run belongs to, as it ran, and its hash)
    4  adds `examples` (a few test outputs with the SFT model's and their scores), `outcomes.<split>.length_diff`
       (policy-minus-SFT length per prompt) and the length-controlled win rate (`metrics.lc_win_rate*`)
    5  adds `tracking` (the W&B mode a run logged in, an offline fallback and where) and
       `dataset.shipped_assets` (whether an embedded-task run used the assets that ship with the harness) and
       `dataset.judge_fingerprint`
A record of another version, one that is not JSON, or one missing a field is bad input naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from pydantic import ValidationError

from harness.errors import BadInput, validation_message
from harness.record import RECORD_NAME, RECORD_SCHEMA_VERSION, RunRecord

from .aggregate import configuration_key

SCHEMA_VERSIONS = (1, 2, 3, 4, 5)
# Fields every version has, that the leaderboard and the report read (the rest may be absent in old records).
REQUIRED = ("trial_id", "status", "method", "method_params", "seed", "config", "config_hash", "metrics", "output_dir")
IGNORED_PARAMS = ("gamma_beta_ratio",)  # derived from other parameters, shown once
REFERENCE_PARAMS = ("reference", "reference_ema")  # methods.ReferenceParams: shown last
assert RECORD_SCHEMA_VERSION in SCHEMA_VERSIONS


def read_record(path: Path) -> dict:
    """One record.json, checked: raises BadInput naming the file for anything the store cannot read."""
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise BadInput(f"{path}: not a JSON run record ({error.msg}, line {error.lineno})") from None
    if not isinstance(record, dict):
        raise BadInput(f"{path}: not a run record (a JSON {type(record).__name__}, not an object)")
    version = record.get("schema_version", 1)
    if version not in SCHEMA_VERSIONS:
        raise BadInput(f"{path}: record schema version {version!r} is unknown; this harness reads versions "
                       f"{', '.join(map(str, SCHEMA_VERSIONS))}")
    missing = [key for key in REQUIRED if key not in record]
    if missing:
        raise BadInput(f"{path}: record has no field {missing[0]!r} (schema version {version})")
    try:
        RunRecord.model_validate(record)
    except ValidationError as error:
        raise BadInput(f"{path}: {validation_message(error, 'field')}") from None
    return record


def record_paths(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInput(f"{folder}: no such directory")
    return sorted(folder.rglob(RECORD_NAME))


def display_path(folder: str | Path) -> str:
    """A folder as a report names it: relative to the working directory when inside it, so a report
    regenerated from the repository root reads the same wherever the clone lives."""
    folder = Path(folder).absolute()
    try:
        return str(folder.relative_to(Path.cwd()))
    except ValueError:
        return str(folder)


def params_label(record: dict) -> str:
    """The method's own parameters, then its reference variant (methods.REFERENCES), with the EMA decay only
    for an EMA reference (the decay of a reference that is not one would read as a setting that matters)."""
    params = dict(record["method_params"])
    if params.get("reference") != "ema":
        params.pop("reference_ema", None)
    order = [k for k in params if k not in REFERENCE_PARAMS] + [k for k in REFERENCE_PARAMS if k in params]
    return " ".join(f"{k}={params[k]}" for k in order
                    if not isinstance(params[k], bool) and params[k] is not None and k not in IGNORED_PARAMS)


def load_records(*folders: str | Path) -> pd.DataFrame:
    """One row per run record under the folders (any status): its configuration key, its scalar metrics,
    its per-prompt outcomes (column `outcomes`), its config and the folder it was found in (`path`).
    Raises BadInput when a folder holds no record."""
    rows = []
    for folder in folders:
        paths = record_paths(folder)
        if not paths:
            raise BadInput(f"{folder}: no run records ({RECORD_NAME}) found")
        for path in paths:
            record = read_record(path)
            dataset = record.get("dataset", {})
            rows.append({"trial": record["trial_id"], "spec": record.get("spec"), "status": record["status"],
                         "method": record["method"], "params": params_label(record), "seed": record["seed"],
                         "method_params": record["method_params"],
                         "learning_rate": record["config"]["train"]["learning_rate"],
                         "configuration": configuration_key(record["config"]), "config": record["config"],
                         "eval_prompts_fingerprint": dataset.get("eval_prompts_fingerprint"),
                         "outcomes": record.get("outcomes", {}), "prompt_clusters": record.get("prompt_clusters", {}),
                         "examples": record.get("examples", []),
                         "stage": record.get("stage"), "eval_prompts_distinct": dataset.get("eval_prompts_distinct"),
                         "reward_model_fingerprint": dataset.get("reward_model_fingerprint"),
                         "path": str(path.parent), **{
                             k: v for k, v in record["metrics"].items() if isinstance(v, (int, float, str))}})
    return pd.DataFrame(rows)
