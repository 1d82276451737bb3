"""Sweep specs: a base run config + a grid (+ per-method grids) + resources per trial.

    name: beta_sensitivity
    base:                    # any run-config tree (the same keys as `harness train`)
      method: {name: dpo}
    grid:                    # the cross product of these dotted keys...
      method.beta: [0.01, 0.1, 0.3, 1.0]
      train.seed: [0, 1, 2]
    methods:                 # ...optionally times one grid per method (its own keys and values)
      dpo: {method.beta: [0.1, 0.3]}
    resources: {cpu: 1, gpu: 0}
    max_concurrent: 2

`method.name: all` in the grid means every registered method, offline and online.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness.config import apply_overrides, build_config, read_yaml
from evals.leaderboard import Selection
from harness.errors import BadInput, validation_message

SPEC_DIR = Path(__file__).parent / "specs"


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cpu: float = Field(1, gt=0)
    gpu: float = Field(0, ge=0)


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any] | Literal["all"]] = Field(default_factory=dict)
    methods: dict[str, dict[str, list[Any]]] = Field(default_factory=dict)
    resources: Resources = Resources()
    max_concurrent: int | None = Field(None, gt=0)
    max_failures: int = Field(1, ge=0)
    storage_path: str = "outputs/sweeps"
    selection: Selection | None = None


def load_spec(name_or_path: str) -> tuple[SweepSpec, Path]:
    path = Path(name_or_path)
    if not path.suffix:
        path = SPEC_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in SPEC_DIR.glob("*.yaml")))
        raise BadInput(f"sweep spec not found: {name_or_path} (shipped specs: {shipped})")
    try:
        return SweepSpec.model_validate(read_yaml(path, "sweep spec")), path
    except ValidationError as error:
        raise BadInput(f"{path}: {validation_message(error, 'spec key')}") from None


def _product(grid: dict[str, list[Any]], where: str) -> list[dict[str, Any]]:
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise BadInput(f"{where}: grid key {key!r} has no values")
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def _slug(point: dict[str, Any]) -> str:
    """The grid values that tell this trial apart (the method name is added by the caller)."""
    return "-".join(f"{k.split('.')[-1]}={v}" for k, v in point.items() if k != "method.name").replace("/", "_")


def expand(spec: SweepSpec, spec_path: Path | str = "spec", overrides: list[str] | None = None) -> list[dict[str, Any]]:
    """Every trial of the sweep: {"name", "config"} with a validated, fully resolved run config."""
    import methods

    where = str(spec_path)
    grid = dict(spec.grid)
    if grid.get("method.name") == "all":
        grid["method.name"] = list(methods.available())
    if spec.methods and "method.name" in grid:
        raise BadInput(f"{where}: give methods either under 'grid: method.name' or under 'methods', not both")
    points = _product(grid, where) if grid else [{}]
    if spec.methods:
        points = [{**p, "method.name": name, **q} for name, sub in spec.methods.items()
                  for q in _product(sub, f"{where}: methods.{name}") for p in points]
    if not points or points == [{}]:
        raise BadInput(f"{where}: the grid is empty: give at least one key with values under 'grid' or 'methods'")
    root = (Path(spec.storage_path).expanduser().absolute() / spec.name)
    trials = []
    for point in points:
        tree = apply_overrides(yaml.safe_load(yaml.safe_dump(spec.base)) or {}, list(overrides or []))
        tree = apply_overrides(tree, [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                                      for k, v in point.items()])
        tree.setdefault("name", spec.name)
        cfg = build_config(tree, f"{where} (trial {point})")
        method = methods.get(cfg.method.name, **cfg.method.params())
        cfg = cfg.for_kind(method.kind)
        name = "-".join(filter(None, [cfg.method.name, _slug(point), cfg.config_hash()[:6]]))
        cfg = cfg.model_copy(update={"output_dir": str(root / "runs" / name)})
        trials.append({"name": name, "config": cfg.resolved(), "point": point})
    names = [t["name"] for t in trials]
    if len(set(names)) != len(names):
        raise BadInput(f"{where}: the grid repeats a trial ({len(names) - len(set(names))} duplicates)")
    return trials


def check_resources(resources: Resources, available: dict[str, float], where: str) -> None:
    """A trial asking for more than the cluster has would wait forever in Ray: refuse it up front."""
    cpus, gpus = available.get("CPU", os.cpu_count() or 1), available.get("GPU", 0)
    if resources.cpu > cpus:
        raise BadInput(f"{where}: resources.cpu={resources.cpu} per trial but only {cpus:g} CPUs are available")
    if resources.gpu > gpus:
        raise BadInput(f"{where}: resources.gpu={resources.gpu} per trial but only {gpus:g} GPUs are available")
