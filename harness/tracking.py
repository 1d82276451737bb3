"""Tracking: a local JSONL of every logged metric (always), and a W&B run (offline unless credentials exist)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .config import WandbConfig

METRICS_NAME = "metrics.jsonl"


def finite_or_null(value: Any) -> Any:
    """`value` with every NaN or infinity replaced by None: JSON has no such numbers ("NaN" is not JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def wandb_mode(cfg: WandbConfig) -> str:
    if cfg.mode is not None:
        return cfg.mode
    if os.environ.get("WANDB_MODE") in ("offline", "online", "disabled"):
        return os.environ["WANDB_MODE"]
    has_key = bool(os.environ.get("WANDB_API_KEY")) or (Path.home() / ".netrc").is_file() and \
        "api.wandb.ai" in (Path.home() / ".netrc").read_text(errors="ignore")
    return "online" if has_key else "offline"


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class Tracker:
    def __init__(self, output_dir: Path, cfg: WandbConfig, *, name: str, group: str | None, job_type: str,
                 config: dict[str, Any], enabled: bool = True):
        # Under a multi-process launch only the main process tracks: its values are already reduced over all.
        self.path = output_dir / METRICS_NAME if enabled else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.run = None
        self.mode = wandb_mode(cfg)
        if enabled and self.mode != "disabled":
            import wandb

            self.run = wandb.init(project=cfg.project, entity=cfg.entity, group=cfg.group or group, job_type=job_type,
                                  name=name, config=flatten(config), dir=str(output_dir), mode=self.mode,
                                  reinit="create_new", settings=wandb.Settings(silent=True, console="off"))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if self.path is None:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(finite_or_null({"step": step, **metrics}), allow_nan=False) + "\n")
        if self.run is not None:
            self.run.log({f"train/{k}": v for k, v in metrics.items()}, step=step)

    def summary(self, metrics: dict[str, Any]) -> None:
        if self.path is None:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(finite_or_null({"summary": metrics}), allow_nan=False) + "\n")
        if self.run is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float, str, bool)) or value is None:
                    self.run.summary[key] = value

    def finish(self, failed: bool = False) -> None:
        if self.run is not None:
            import wandb

            self.run.finish(exit_code=1 if failed else 0)
            wandb.teardown()  # run.finish() can return before the offline file is flushed
            self.run = None
