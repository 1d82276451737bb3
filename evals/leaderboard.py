"""Leaderboards: pure functions of the run records (pandas), written as markdown and CSV."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

COLUMNS = ["method", "params", "learning_rate", "seeds", "prompts", "win_rate", "win_rate_low", "win_rate_high", "gold_win_rate",
           "gold_reward", "gold_reward_sft", "kl_to_sft", "mean_length", "distinct_2", "heldout_pref_accuracy",
           "judge_agreement_gold", "final_train_loss"]


def load_records(folder: str | Path) -> pd.DataFrame:
    """One row per completed run record found under `folder` (failed runs are listed in `status`)."""
    rows = []
    for path in sorted(Path(folder).rglob("record.json")):
        record = json.loads(path.read_text())
        params = " ".join(f"{k}={v}" for k, v in record["method_params"].items()
                          if not isinstance(v, bool) and k != "gamma_beta_ratio")
        rows.append({"trial": record["trial_id"], "spec": record.get("spec"), "status": record["status"],
                     "method": record["method"], "params": params, "seed": record["seed"],
                     "learning_rate": record["config"]["train"]["learning_rate"], **{
                         k: v for k, v in record["metrics"].items() if isinstance(v, (int, float, str)) and k != "traceback"}})
    return pd.DataFrame(rows)


def leaderboard(records: pd.DataFrame, sort_by: str = "win_rate") -> pd.DataFrame:
    """Mean over seeds per (method, params, learning rate); sorted best first."""
    done = records[records["status"] == "completed"]
    if done.empty:
        return pd.DataFrame(columns=COLUMNS)
    metrics = [c for c in COLUMNS[5:] if c in done.columns]
    counts = {"prompts": ("num_prompts", "max")} if "num_prompts" in done.columns else {}
    table = done.groupby(["method", "params", "learning_rate"], as_index=False).agg(
        seeds=("seed", "nunique"), **counts, **{m: (m, "mean") for m in metrics})
    key = sort_by if sort_by in table.columns else metrics[0]
    return table.sort_values(key, ascending=False, ignore_index=True)[[c for c in COLUMNS if c in table.columns]]


def select_best(records: pd.DataFrame, metric: str = "val_win_rate", mode: str = "max") -> pd.DataFrame:
    """Each method's configuration that is best on `metric` (validation), reported with its test metrics."""
    table = leaderboard(records)
    scored = records[records["status"] == "completed"].groupby(["method", "params", "learning_rate"], as_index=False)[
        metric].mean()
    merged = table.merge(scored, on=["method", "params", "learning_rate"])
    best = merged.sort_values(metric, ascending=(mode == "min")).groupby("method", as_index=False).head(1)
    return best.sort_values("win_rate", ascending=False, ignore_index=True)


def cell(value) -> str:
    """3 decimals, or 3 significant digits for small numbers such as learning rates."""
    if isinstance(value, float):
        return f"{value:.3g}" if value and abs(value) < 0.01 else f"{value:.3f}"
    return str(value)


def to_markdown(table: pd.DataFrame) -> str:
    head = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([head, rule, *body]) + "\n"


def write_leaderboard(folder: str | Path, out: str | Path | None = None, selection=None) -> pd.DataFrame:
    folder = Path(folder)
    out = Path(out or folder)
    records = load_records(folder)
    if records.empty:
        from harness.errors import BadInput

        raise BadInput(f"{folder}: no run records (record.json) found")
    table = select_best(records, selection.metric, selection.mode) if selection else leaderboard(records)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "leaderboard.csv", index=False)
    title = "best configuration per method (picked on validation, reported on test)" if selection else "leaderboard"
    (out / "leaderboard.md").write_text(f"# {title}\n\nFrom {len(records)} run records under `{folder}`; "
                                        f"metrics are means over seeds.\n\n{to_markdown(table)}")
    return table
