"""The run record: one JSON per run, written atomically. Leaderboards and reports are pure functions of these."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from .cache import write_json_atomic
from .tracking import finite_or_null

RECORD_NAME = "record.json"
RECORD_SCHEMA_VERSION = 5  # evals/store.py says what each version holds


class RunRecord(BaseModel):
    schema_version: int = RECORD_SCHEMA_VERSION
    spec: str | None = None
    trial_id: str
    status: Literal["running", "completed", "failed"] = "running"
    error: str | None = None  # one line: what failed
    traceback: str | None = None  # where it failed (the last frames), for a failed run
    method: str
    method_params: dict[str, Any]
    method_facts: dict[str, Any] = Field(default_factory=dict)
    seed: int
    config: dict[str, Any]
    config_hash: str
    dataset: dict[str, Any] = Field(default_factory=dict)  # fingerprint, source, sizes, truncation counts
    metrics: dict[str, Any] = Field(default_factory=dict)
    # Per-prompt win outcomes (1 win, 1/2 tie, 0 loss; k x k samples averaged) by split ("test", "val") and
    # scorer ("judge", "gold"): what seed aggregation and paired significance tests are computed from; and
    # "length_diff", each prompt's policy-minus-SFT response length in characters (the length-controlled win rate).
    outcomes: dict[str, dict[str, list[float]]] = Field(default_factory=dict)
    # A few test outputs beside the SFT model's (prompts drawn by the eval seed, and the most degenerate
    # responses) with both sides' scores: what the report shows as examples.
    examples: list[dict[str, Any]] = Field(default_factory=list)
    # By split, the id of each outcome's distinct prompt (the index of its first occurrence): a prompt asked
    # twice is one cluster of the bootstrap, never two independent draws.
    prompt_clusters: dict[str, list[int]] = Field(default_factory=dict)
    # In a comparison: "selection" (a run that picks configurations on validation prompts) or "test" (a
    # fresh-seed re-run of a picked configuration, the only runs a comparison's test columns read).
    stage: Literal["selection", "test"] | None = None
    # The sweep this run belongs to: the spec as it ran (its grid expanded, extension rounds included) and
    # that spec's hash.
    sweep: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str | None] = Field(default_factory=dict)
    hardware: dict[str, Any] = Field(default_factory=dict)
    # The processes: accelerate's strategy, world size, global batch, the launch (Ray Train workers, their
    # accelerate config); and the precision of each part of the run (app/precision.py).
    distributed: dict[str, Any] = Field(default_factory=dict)
    precision: dict[str, Any] = Field(default_factory=dict)
    # What the run logged to (harness/tracking.py): the W&B mode as it ran, and an offline fallback (with the
    # folder `wandb sync` uploads) or a W&B connection lost mid-run, where either happened.
    tracking: dict[str, Any] = Field(default_factory=dict)
    output_dir: str
    created_at: str = Field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat())

    def write(self, output_dir: str | Path | None = None) -> Path:
        path = Path(output_dir or self.output_dir) / RECORD_NAME
        write_json_atomic(path, finite_or_null(self.model_dump(mode="json")))  # NaN is not JSON
        return path

    @classmethod
    def read(cls, path: str | Path) -> "RunRecord":
        path = Path(path)
        return cls.model_validate_json((path / RECORD_NAME if path.is_dir() else path).read_text())


def _git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "ray", "wandb", "alignment-harness"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    found["harness_git_commit"] = _git_commit()
    found["harness_git_dirty"] = _git_dirty()
    return found


def _git_dirty() -> str | None:
    """Whether the harness's own code differed from its commit ("yes"/"no"): a record names the commit that
    produced it only when it did not."""
    try:
        here = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "harness", "methods",
                              "evals", "app", "sweeps"], cwd=here, capture_output=True, text=True, timeout=5)
        return None if out.returncode else ("yes" if out.stdout.strip() else "no")
    except (OSError, subprocess.SubprocessError):
        return None


SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def _cpu_model() -> str | None:
    """The CPU's model name and the SIMD extensions torch's kernels pick from: the embedded task's assets
    are bit-identical only where these match (a virtual machine may report a generic model name)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or None
    field = lambda key: next((line.split(":", 1)[1].strip() for line in lines if line.startswith(key)), "")  # noqa: E731
    flags = set(field("flags").split())
    return f"{field('model name') or platform.processor()} [{' '.join(f for f in SIMD_FLAGS if f in flags)}]"


def hardware() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "machine": platform.machine(), "cpu_model": _cpu_model(),
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "cuda": torch.cuda.is_available(), "argv": sys.argv[:1]}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    return info
