"""Picking each method's configuration on validation prompts under a KL budget, and how the verdict moves
when the budget does.

A configuration is eligible when its mean validation KL to SFT (over its selection seeds) is within
`kl_budget` nats, so methods are compared at matched drift rather than at whatever KL one learning rate
gives; among the eligible ones the pick has the best mean validation win rate by the selection metric
(`judge`, or `gold` where the task has a gold reward). With the protocol's `test_seeds`, each pick is
re-run on fresh seeds and only those runs make the board's test columns.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .rows import configuration_table
from .significance import rank

METRICS = {"judge": "val_win_rate", "gold": "val_gold_win_rate"}
STABILITY_BUDGETS = (1.0, 1.5, 2.0, 3.0, 5.0, None)


class Selection(BaseModel):
    """The selection rule of a comparison, stored with its sweep (spec.json), so `harness leaderboard DIR`
    applies it again; with `test_seeds` it is also the protocol the sweep runs."""

    model_config = ConfigDict(extra="forbid")
    metric: str = Field("judge", description="judge or gold: the scorer whose mean validation win rate picks")
    mode: str = Field("max", pattern="^(max|min)$")
    kl_budget: float | None = Field(None, gt=0, description="max mean val_kl_to_sft (nats) of an eligible configuration")
    seeds: list[int] | None = Field(None, min_length=1, description="the selection stage's seeds (default: the grid's)")
    test_seeds: list[int] = Field([], description="fresh seeds each pick is re-run with (at least 5, none of `seeds`)")
    extend_rounds: int = Field(0, ge=0, description="rounds that extend an axis where a pick sits at its edge")
    limits: dict[str, list[float]] = Field({}, description="key -> [low, high]: how far an extension may go")

    @field_validator("metric", mode="before")
    @classmethod
    def _metric(cls, value):
        value = {v: k for k, v in METRICS.items()}.get(value, value)  # the column names of earlier specs
        if value not in METRICS:
            raise ValueError(f"selection.metric must be one of {', '.join(METRICS)}, got {value!r}")
        return value

    @model_validator(mode="after")
    def _fresh(self):
        if self.test_seeds:
            if len(set(self.test_seeds)) < 5:
                raise ValueError("selection.test_seeds: at least 5 distinct fresh seeds")
            if self.seeds and set(self.seeds) & set(self.test_seeds):
                raise ValueError(f"selection.test_seeds must be fresh: {sorted(set(self.seeds) & set(self.test_seeds))} "
                                 "also in selection.seeds")
        for key, bounds in self.limits.items():
            if len(bounds) != 2 or bounds[0] >= bounds[1]:
                raise ValueError(f"selection.limits.{key}: give [low, high] with low < high")
        return self

    @property
    def column(self) -> str:
        return METRICS[self.metric]


def picks(table: pd.DataFrame, selection: Selection) -> pd.DataFrame:
    """Each method's pick from unranked configuration rows (validation columns only are read)."""
    chosen = []
    for method, rows in table.groupby("method", sort=False):
        budget = selection.kl_budget
        eligible = rows if budget is None else rows[rows["val_kl_to_sft"] <= budget]
        note = "" if not eligible.empty else "no configuration within the KL budget; lowest KL shown"
        pool = eligible if not eligible.empty else rows.nsmallest(1, "val_kl_to_sft")
        best = pool.sort_values(selection.column, ascending=selection.mode == "min", kind="stable").iloc[0]
        chosen.append({**best.to_dict(), "configurations_tried": len(rows), "within_budget": len(eligible),
                       "selection_note": note})
    return pd.DataFrame(chosen)


def select_best(records: pd.DataFrame, selection: Selection) -> pd.DataFrame:
    """Each method's configuration picked on validation, reported on the test prompts (its fresh-seed runs
    where the sweep ran a test stage), with Holm-corrected marks for the judge and gold against the row
    that is best on validation, and the tuning budget (configurations tried) per method."""
    table = configuration_table(records)
    if table.empty:
        return table
    if selection.column not in table.columns:
        from harness.errors import BadInput

        raise BadInput(f"selection metric {selection.metric!r} needs {selection.column}, which is in no run record "
                       "(was eval.num_val_prompts set? does the task have a gold reward?)")
    return rank(picks(table, selection), records, selection.metric)


def kl_stability(records: pd.DataFrame, selection: Selection, budgets=STABILITY_BUDGETS) -> pd.DataFrame:
    """The picks and verdicts recomputed at each KL budget from the selection-stage runs (pick on their
    validation prompts, verdict on their test prompts: the fresh-seed runs exist only for the spec's own
    budget). One row per budget and method: its pick, test win rates and marks."""
    chosen = records[records["stage"] != "test"] if "stage" in records.columns else records
    table = configuration_table(chosen)
    if table.empty or selection.column not in table.columns:
        return pd.DataFrame()
    out = []
    for budget in budgets:
        board = rank(picks(table, selection.model_copy(update={"kl_budget": budget})), chosen, selection.metric)
        for _, row in board.iterrows():
            out.append({"kl_budget": "none" if budget is None else f"{budget:g}", "method": row["method"],
                        "params": row["params"], "learning_rate": row["learning_rate"],
                        "configuration": row["configuration"], "val_kl_to_sft": row["val_kl_to_sft"],
                        selection.column: row[selection.column],
                        **{k: row.get(k) for k in ("win_rate", "significance", "gold_win_rate", "gold_significance")},
                        "selection_note": row["selection_note"]})
    return pd.DataFrame(out)


def fragile_verdicts(stability: pd.DataFrame) -> list[str]:
    """For each method whose pick or mark changes over the budgets: what changes and at which budget."""
    if stability.empty:
        return []
    out = []
    marks = [c for c in ("significance", "gold_significance") if c in stability.columns]
    for method, rows in stability.groupby("method", sort=False):
        rows = rows.reset_index(drop=True)
        changes = []
        for i in range(1, len(rows)):
            before, after = rows.iloc[i - 1], rows.iloc[i]
            what = []
            if after["configuration"] != before["configuration"]:
                what.append(f"pick {before['params']} lr {before['learning_rate']:g} -> {after['params']} "
                            f"lr {after['learning_rate']:g}")
            what += [f"{'gold' if m.startswith('gold') else 'judge'} verdict {before[m]} -> {after[m]}"
                     for m in marks if before[m] != after[m]]
            if what:
                changes.append(f"between budgets {before['kl_budget']} and {after['kl_budget']}: {', '.join(what)}")
        if changes:
            out.append(f"{method} is fragile to the KL budget: " + "; ".join(changes) + ".")
    return out


def stored_spec(folder: Path) -> dict:
    path = Path(folder) / "spec.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def stored_selection(folder: Path) -> Selection | None:
    """The selection rule of the sweep whose folder this is (its spec.json), or None."""
    selection = stored_spec(folder).get("selection")
    return Selection.model_validate(selection) if selection else None

