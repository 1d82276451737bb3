"""Sweep specs: a base run config + a grid (+ per-method grids) + resources per trial.

    name: beta_sensitivity
    base:                    # any run-config tree (the same keys as `harness train`)
      method: {name: dpo}
    grid:                    # the cross product of these dotted keys...
      method.beta: [0.01, 0.1, 0.3, 1.0]
      train.seed: [0, 1, 2]
    methods:                 # ...optionally times one grid per method (its own keys and values),
      dpo: {method.beta: [0.1, 0.3]}
      simpo:                 # or a list of its configurations (a design that is no full grid)
        - {method.beta: 1.0, method.gamma: 0.5, train.learning_rate: 1.0e-4}
    selection:               # a comparison's protocol (evals/selection.py: Selection)
      metric: gold           # pick on the validation win rate by the judge or by gold
      kl_budget: 2.0
      seeds: [0, 1]          # the selection stage's seeds
      test_seeds: [10, 11, 12, 13, 14]   # each pick re-run on fresh seeds: the test columns
      extend_rounds: 2       # extend an axis where a pick sits at its edge, at most this often
      limits: {train.learning_rate: [1.0e-5, 3.2e-3]}
    rank_within: train.learning_rate     # a board (own reference, own family) per value of this key
    resources: {cpu: 1, gpu: 0}   # per trial; with workers: N, per worker of a trial that spans N processes
    max_concurrent: 2

`method.name: all` in the grid means every registered method, offline and online. With `equal_pairs`
(the default) an unpaired method (KTO: two rows per preference pair) gets twice the batch size unless its
grid sets one, so every offline method of a comparison sees the same number of preference pairs.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness.config import apply_overrides, build_config, read_yaml
from evals.selection import Selection
from harness.errors import BadInput, validation_message

SPEC_DIR = Path(__file__).parent / "specs"


class Resources(BaseModel):
    """Per trial; with `workers` > 1, per worker of the trial (a Ray Train TorchTrainer, sweeps/workers.py)."""

    model_config = ConfigDict(extra="forbid")
    cpu: float = Field(1, gt=0)
    gpu: float = Field(0, ge=0)
    workers: int = Field(1, ge=1, description="processes of one trial (Ray Train workers, one process group)")
    accelerate_config: str | None = Field(None, description="an `accelerate config` YAML (DDP, FSDP or DeepSpeed) "
                                          "the workers apply; relative paths are read from the spec's folder")


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any] | Literal["all"]] = Field(default_factory=dict)
    methods: dict[str, dict[str, list[Any]] | list[dict[str, Any]]] = Field(default_factory=dict)
    resources: Resources = Resources()
    max_concurrent: int | None = Field(None, gt=0)
    max_failures: int = Field(1, ge=0)
    storage_path: str = "outputs/sweeps"
    selection: Selection | None = None
    rank_within: str | None = Field(None, description="config key: one board per value of it (own reference row)")
    equal_pairs: bool = Field(True, description="unpaired methods get 2x the batch size, so all see the same pairs")

    @property
    def protocol(self) -> bool:
        """Whether the sweep runs a comparison's protocol: selection seeds, extension rounds, a fresh-seed test."""
        return bool(self.selection and self.selection.test_seeds)

    def selection_seeds(self) -> list[Any] | None:
        return self.selection.seeds if self.selection and self.selection.seeds else None


def load_spec(name_or_path: str) -> tuple[SweepSpec, Path]:
    path = Path(name_or_path)
    if not path.suffix:
        path = SPEC_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in SPEC_DIR.glob("*.yaml")))
        raise BadInput(f"sweep spec not found: {name_or_path} (shipped specs: {shipped})")
    try:
        spec = SweepSpec.model_validate(read_yaml(path, "sweep spec"))
    except ValidationError as error:
        raise BadInput(f"{path}: {validation_message(error, 'spec key')}") from None
    named = spec.resources.accelerate_config
    if named:  # read where the spec is, checked now: a worker would fail on it only after the prepare stage
        from .workers import accelerate_env

        resolved = (path.parent / named).expanduser().absolute() if not Path(named).is_absolute() else Path(named)
        if not resolved.is_file():
            raise BadInput(f"{path}: resources.accelerate_config {named}: no such file ({resolved})")
        spec.resources.accelerate_config = str(resolved)
        accelerate_env(str(resolved), spec.resources.workers, spec.resources.gpu > 0)
    return spec, path


def _product(grid: dict[str, list[Any]], where: str) -> list[dict[str, Any]]:
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise BadInput(f"{where}: grid key {key!r} has no values")
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def _slug(point: dict[str, Any]) -> str:
    """The grid values that tell this trial apart (the method name is added by the caller)."""
    return "-".join(f"{k.split('.')[-1]}={v}" for k, v in point.items() if k != "method.name").replace("/", "_")


def method_points(spec: SweepSpec, where: str = "spec") -> list[dict[str, Any]]:
    """The configurations of the sweep before seeds: the grid (seeds aside) times each method's own grid or
    list of configurations."""
    import methods

    grid = {k: v for k, v in spec.grid.items() if k != "train.seed"}
    if grid.get("method.name") == "all":
        grid["method.name"] = list(methods.available())
    if spec.methods and "method.name" in grid:
        raise BadInput(f"{where}: give methods either under 'grid: method.name' or under 'methods', not both")
    points = _product(grid, where) if grid else [{}]
    if spec.methods:
        own = {name: sub if isinstance(sub, list) else _product(sub, f"{where}: methods.{name}")
               for name, sub in spec.methods.items()}
        empty = [name for name, sub in own.items() if not sub]
        if empty:
            raise BadInput(f"{where}: methods.{empty[0]} has no configurations")
        points = [{**p, "method.name": name, **q} for name, sub in own.items() for q in sub for p in points]
    if not points or points == [{}]:
        raise BadInput(f"{where}: the grid is empty: give at least one key with values under 'grid' or 'methods'")
    if spec.protocol:
        sizes = {name: sum(p.get("method.name") == name for p in points) for name in dict.fromkeys(
            p.get("method.name") for p in points)}
        if len(set(sizes.values())) > 1:
            raise BadInput(f"{where}: unequal tuning budgets ({', '.join(f'{k} {v}' for k, v in sizes.items())} "
                           "configurations): a comparison gives every method the same number")
    return points


def seeds_of(spec: SweepSpec, where: str = "spec") -> list[Any]:
    """The selection stage's seeds: `selection.seeds`, else the grid's train.seed, else the base config's."""
    if spec.selection_seeds() and "train.seed" in spec.grid:
        raise BadInput(f"{where}: give the seeds either as selection.seeds or as grid train.seed, not both")
    seeds = spec.selection_seeds() or spec.grid.get("train.seed")
    if isinstance(seeds, list) and not seeds:
        raise BadInput(f"{where}: grid key 'train.seed' has no values")
    return list(seeds) if seeds else [None]


def expand(spec: SweepSpec, spec_path: Path | str = "spec", overrides: list[str] | None = None,
           points: list[dict[str, Any]] | None = None, seeds: list[Any] | None = None,
           stage: str | None = None) -> list[dict[str, Any]]:
    """Every trial of the sweep (or of `points` x `seeds`, one stage of it): {"name", "config", "point",
    "stage"} with a validated, fully resolved run config. Under the protocol the stage defaults to
    selection."""
    import methods

    where = str(spec_path)
    points = method_points(spec, where) if points is None else points
    seeds = seeds_of(spec, where) if seeds is None else seeds
    stage = stage or ("selection" if spec.protocol else None)
    root = (Path(spec.storage_path).expanduser().absolute() / spec.name)
    trials = []
    for base_point in points:
        for seed in seeds:
            point = {"train.seed": seed, **base_point} if seed is not None else dict(base_point)
            cfg = _config(spec, point, overrides, where)
            method = methods.get(cfg.method.name, **cfg.method.params())
            if spec.equal_pairs and method.kind == "offline" and not method.paired and "train.batch_size" not in point:
                # two unpaired rows per preference pair: twice the rows per step, the same pairs per step
                cfg = _config(spec, {**point, "train.batch_size": 2 * cfg.train.batch_size}, overrides, where)
            cfg = cfg.for_kind(method.kind)
            name = "-".join(filter(None, [cfg.method.name, _slug(point), cfg.config_hash()[:6]]))
            cfg = cfg.model_copy(update={"output_dir": str(root / "runs" / name)})
            trials.append({"name": name, "config": cfg.resolved(), "point": point, "stage": stage})
    names = [t["name"] for t in trials]
    if len(set(names)) != len(names):
        raise BadInput(f"{where}: the grid repeats a trial ({len(names) - len(set(names))} duplicates)")
    return trials


def _config(spec: SweepSpec, point: dict[str, Any], overrides: list[str] | None, where: str):
    tree = apply_overrides(yaml.safe_load(yaml.safe_dump(spec.base)) or {}, list(overrides or []))
    tree = apply_overrides(tree, [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                                  for k, v in point.items()])
    tree.setdefault("name", spec.name)
    return build_config(tree, f"{where} (trial {point})")


def check_resources(resources: Resources, available: dict[str, float], where: str) -> None:
    """A trial asking for more than the cluster has would wait forever in Ray: refuse it up front."""
    cpus, gpus = available.get("CPU", os.cpu_count() or 1), available.get("GPU", 0)
    n, each = resources.workers, " per trial" if resources.workers == 1 else f" per worker x {resources.workers} workers"
    if resources.cpu * n > cpus:
        raise BadInput(f"{where}: resources.cpu={resources.cpu:g}{each} but only {cpus:g} CPUs are available")
    if resources.gpu * n > gpus:
        raise BadInput(f"{where}: resources.gpu={resources.gpu:g}{each} but only {gpus:g} GPUs are available")
