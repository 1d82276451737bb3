"""Significance marks a reviewer accepts: every row against one reference row chosen on validation prompts,
paired bootstrap intervals over distinct prompts and seeds, Holm-corrected across the board's family.

For each scorer (the judge, and gold where the task has it) the reference row ("best") is the row with
the highest mean validation win rate by that scorer: it is chosen before the test numbers are looked at,
so comparing the other rows with it on the test prompts does not pick the winner on the data that then
tests it. (A board without validation numbers falls back to the highest test win rate and says so: its
comparisons are optimistic.) Each other row's test win rate minus the reference's gets a paired bootstrap
interval and p-value; the family is the board's comparisons with its reference (m = rows - 1), corrected
with Holm's step-down method, and a row is marked `better` or `worse` only where its corrected p is below
ALPHA, otherwise `n.s.`. A comparison where either row has a single seed is not tested (`untested (1 seed)`,
its difference and interval still shown, outside the Holm family): with one seed the bootstrap sees prompt
noise only, and a training seed moves a win rate by more than that.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .aggregate import holm, paired_difference
from .rows import SCORERS, outcome_matrix, prompt_clusters, test_runs

ALPHA = 0.05
MARK_COLUMNS = ("significance", "gap_to_best", "gap_to_best_low", "gap_to_best_high", "p_value", "p_holm",
                "reference_on", "family_size")


UNTESTED = "untested (1 seed)"


def reference_row(table: pd.DataFrame, scorer: str = "judge") -> tuple[int | None, str]:
    """Index of the row with the best mean validation win rate by `scorer`, and "validation"; without
    validation numbers, the best test win rate and "test"."""
    prefix = SCORERS[scorer]
    val, test = f"val_{prefix}win_rate", f"{prefix}win_rate"
    if val in table.columns and table[val].notna().all():
        return int(table[val].to_numpy().argmax()), "validation"
    if test in table.columns and table[test].notna().any():
        return int(table[test].fillna(-np.inf).to_numpy().argmax()), "test"
    return None, ""


def mark_significance(table: pd.DataFrame, records: pd.DataFrame, scorer: str = "judge") -> pd.DataFrame:
    """Adds `{prefix}significance` (best / better / worse / n.s. / not comparable), the gap to the reference
    with its 95% paired interval, the raw and Holm-corrected p-values, what the reference was chosen on and
    the family size."""
    prefix = SCORERS[scorer]
    table = table.reset_index(drop=True)
    best, chosen_on = reference_row(table, scorer)
    columns = {f"{prefix}{c}": [] for c in MARK_COLUMNS}
    if best is None:
        return table
    done = records[records["status"] == "completed"]
    runs = {key: test_runs(group) for key, group in done.groupby("configuration")}
    reference = table.iloc[best]
    a = outcome_matrix(runs[reference["configuration"]], scorer)
    clusters = prompt_clusters(runs[reference["configuration"]])
    found = []
    for i, row in table.iterrows():
        b = outcome_matrix(runs[row["configuration"]], scorer) if row["configuration"] in runs else None
        comparable = (a is not None and b is not None and a.shape[1] == b.shape[1] and row["judge"] == reference["judge"]
                      and row["eval_prompts_fingerprint"] == reference["eval_prompts_fingerprint"])
        if i == best:
            found.append(("best", 0.0, 0.0, 0.0, np.nan))
        elif not comparable:
            found.append(("not comparable", np.nan, np.nan, np.nan, np.nan))
        elif min(a.shape[0], b.shape[0]) < 2:  # one seed: the bootstrap would see prompt noise only, never seed noise
            found.append((UNTESTED, *paired_difference(b, a, clusters=clusters)[:3], np.nan))
        else:
            found.append(("", *paired_difference(b, a, clusters=clusters)))  # this row minus the reference
    adjusted = holm([f[4] for f in found])
    family = int(np.sum(~np.isnan(adjusted)))
    for (mark, diff, low, high, p), p_adj in zip(found, adjusted):
        if not mark:
            mark = ("better" if diff > 0 else "worse") if p_adj < ALPHA else "n.s."
        for key, value in zip(MARK_COLUMNS, (mark, diff, low, high, p, p_adj, chosen_on, family)):
            columns[f"{prefix}{key}"].append(value)
    return table.assign(**columns)


def rank(table: pd.DataFrame, records: pd.DataFrame, scorer: str = "judge") -> pd.DataFrame:
    """Marks for the judge and (where present) gold, the reference row of `scorer` first, then by its test
    win rate."""
    for name, prefix in SCORERS.items():
        if f"{prefix}win_rate" in table.columns:
            table = mark_significance(table, records, name)
    prefix = SCORERS[scorer] if f"{SCORERS[scorer]}win_rate" in table.columns else ""
    key = f"{prefix}significance"
    if key not in table.columns:
        return table
    order = np.lexsort((-table[f"{prefix}win_rate"].fillna(-np.inf).to_numpy(), (table[key] != "best").to_numpy()))
    return table.iloc[order].reset_index(drop=True)
