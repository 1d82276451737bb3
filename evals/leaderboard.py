"""Leaderboards: pure functions of the run records (pandas), written as markdown and CSV.

A row is one configuration (evals/rows.py): every completed run whose resolved config is equal except
train.seed. It shows the mean over seeds with a 95% interval over seeds x distinct prompts (recomputed
from the per-prompt outcomes in the records, never an average of interval bounds), the per-seed min and
max, the mean and median KL, the judge's validity on the row's own outputs, and, by the judge and by gold,
whether the row differs from the validation-best row (evals/significance.py: paired bootstrap,
Holm-corrected). A sweep's folder holds its spec (spec.json): with a selection rule the board shows each
method's configuration picked on validation under the rule's KL budget (evals/selection.py), reported on
its fresh-seed test runs, and the verdict recomputed across KL budgets (stability.csv); with
`rank_within` it is one board per value of that key.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from harness.cache import write_text_atomic

from .collapse import THRESHOLDS_TEXT
from .rows import MEANS, configuration_table, grid_edges  # noqa: F401  (re-exported: the board's building blocks)
from .selection import Selection, fragile_verdicts, kl_stability, select_best, stored_selection, stored_spec  # noqa: F401
from .significance import ALPHA, UNTESTED, rank
from .store import display_path, load_records, record_paths


def leaderboard(records: pd.DataFrame, rank_within: str | None = None) -> pd.DataFrame:
    """One row per configuration (seeds pooled), with judge and gold marks against the validation-best row
    and grid-edge flags. `rank_within` (a config key such as train.learning_rate): each value of it is its
    own board (own reference row, own family), stacked in the key's order."""
    table = configuration_table(records)
    if table.empty or "win_rate" not in table.columns:  # runs without evaluation: nothing to rank or test
        return table
    if not rank_within:
        return rank(table, records)
    values = table["configuration"].map(_setting(records, rank_within))
    parts = [rank(part, records).assign(**{"group": f"{rank_within}={value:g}" if isinstance(value, float) else
                                           f"{rank_within}={value}"})
             for value, part in table.groupby(values, sort=True)]
    return pd.concat(parts, ignore_index=True)


def _setting(records: pd.DataFrame, key: str) -> dict:
    """configuration -> the value of a dotted config key."""
    flat = pd.json_normalize(list(records["config"]))
    if key not in flat.columns:
        from harness.errors import BadInput

        raise BadInput(f"rank_within: {key!r} is not a config key of these records")
    return dict(zip(records["configuration"], flat[key]))


def unequal_data(table: pd.DataFrame) -> str:
    """A sentence when the offline rows of a board saw different numbers of preference pairs, else ''."""
    if "pairs_seen" not in table.columns:
        return ""
    seen = table["pairs_seen"].dropna()
    if seen.nunique() <= 1:
        return ""
    counts = ", ".join(f"{r.method} {r.pairs_seen:.0f}" for r in table.dropna(subset=["pairs_seen"]).itertuples())
    return (f"Unequal data: the offline rows saw different numbers of preference pairs ({counts}); their "
            "comparison mixes method and data budget.")


def cell(value) -> str:
    """3 decimals, or 3 significant digits for small numbers such as learning rates."""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else ""
    if isinstance(value, float):
        if np.isnan(value):
            return ""
        return f"{value:.3g}" if value and abs(value) < 0.01 else f"{value:.3f}"
    return str(value)


def _interval(row, key: str) -> str:
    if key not in row or pd.isna(row[key]):
        return ""
    return f"{row[key]:.3f} [{row[f'{key}_low']:.3f}, {row[f'{key}_high']:.3f}]"


def _mark(row, prefix: str) -> str:
    mark = row.get(f"{prefix}significance")
    if not isinstance(mark, str):
        return ""
    if mark == UNTESTED:
        return (f"{mark}: {row[f'{prefix}gap_to_best']:+.3f} [{row[f'{prefix}gap_to_best_low']:+.3f}, "
                f"{row[f'{prefix}gap_to_best_high']:+.3f}] over prompts only")
    if mark in ("better", "worse", "n.s."):
        return (f"{mark} ({row[f'{prefix}gap_to_best']:+.3f} [{row[f'{prefix}gap_to_best_low']:+.3f}, "
                f"{row[f'{prefix}gap_to_best_high']:+.3f}], Holm p={row[f'{prefix}p_holm']:.3f})")
    return mark


def display_rows(table: pd.DataFrame, selected: bool) -> list[dict[str, str]]:
    """The table a reader scans (markdown and terminal): estimates with their intervals in one cell,
    baselines beside them."""
    out = []
    for _, row in table.iterrows():
        get = lambda key, fmt="{:.3f}": fmt.format(row[key]) if key in row and pd.notna(row[key]) else ""  # noqa: E731
        compute = row.get("compute_tokens_with_reward_model", row.get("compute_tokens"))
        cells = {"method": row["method"], "params": row["params"], "lr": cell(row["learning_rate"]),
                 "seeds": str(row["seeds"]),
                 "judge win rate [95% CI]": _interval(row, "win_rate"), "judge vs best": _mark(row, ""),
                 "LC win rate [95% CI]": (f"refused: {row['lc_refused']}" if row.get("lc_refused") else
                                          _interval(row, "lc_win_rate") + (" (!)" if row.get("lc_warning") is True else "")),
                 "gold win rate [95% CI]": _interval(row, "gold_win_rate"), "gold vs best": _mark(row, "gold_"),
                 "seed min-max": f"{row['win_rate_min']:.3f}-{row['win_rate_max']:.3f}" if "win_rate_min" in row else "",
                 "gold reward (SFT)": f"{get('gold_reward')} ({get('gold_reward_sft')})" if "gold_reward" in row else "",
                 "KL mean / median (per token)": f"{get('kl_to_sft')} / {get('kl_to_sft_median')} ({get('kl_per_token')})",
                 "judge-gold gap [95% CI]": (_interval(row, "judge_gold_gap") + (" FLAG" if row.get("judge_gap_flag") else "")),
                 "judge agreement (run)": get("judge_agreement_run"),
                 "collapsed": row.get("collapsed") or "-",
                 "pref. accuracy (SFT / ceiling)": f"{get('heldout_pref_accuracy')} ({get('heldout_pref_accuracy_sft')} / "
                                                   f"{get('heldout_pref_ceiling')})" if "heldout_pref_accuracy" in row else "",
                 "length (SFT)": f"{get('mean_length', '{:.1f}')} ({get('mean_length_sft', '{:.1f}')})",
                 "distinct-2 per resp. / pooled": f"{get('distinct_2_per_response')} / {get('distinct_2')}",
                 "repeat rate (SFT)": f"{get('repeat_rate')} ({get('repeat_rate_sft')})",
                 "pairs seen": get("pairs_seen", "{:.0f}"),
                 "compute (M tok-eq)": f"{compute / 1e6:.2f}" if pd.notna(compute) else "",
                 "reward model (M tok-eq, whole)": (f"{row['reward_model_compute_tokens'] / 1e6:.2f} / "
                                                    f"{row['reward_model_runs_sharing']:.0f} runs"
                                                    if pd.notna(row.get("reward_model_compute_tokens")) else ""),
                 "win gain per M tok-eq": (f"{(row['win_rate'] - 0.5) / (compute / 1e6):+.3f}"
                                           if pd.notna(compute) and "win_rate" in row else ""),
                 "grid edge": row.get("grid_edge") or "-"}
        if not cells["reward model (M tok-eq, whole)"]:  # offline rows: shown only when a row has one
            cells.pop("reward model (M tok-eq, whole)")
        if selected:
            cells = {**{k: cells[k] for k in ("method", "params", "lr")},
                     "tuned (configs)": get("configurations_tried", "{:.0f}"),
                     "val win rate (judge / gold)": f"{get('val_win_rate')} / {get('val_gold_win_rate')}",
                     "val KL": get("val_kl_to_sft"), "test seeds": str(row.get("test_seeds", "")),
                     **{k: v for k, v in cells.items() if k not in ("method", "params", "lr", "seeds")}}
        out.append(cells)
    columns = list(dict.fromkeys(k for r in out for k in r))  # every row shows the same columns
    return [{k: r.get(k, "") for k in columns} for r in out]


def table_columns(rows: list[dict[str, str]]) -> list[str]:
    """Every key of the rows, in first-seen order. Cells are placed by key, never by position: rows may hold
    their keys in different orders (the stability table lists each budget's methods in its rank order)."""
    return list(dict.fromkeys(key for row in rows for key in row))


def to_markdown(rows: list[dict[str, str]]) -> str:
    if not rows:
        return ""
    columns = table_columns(rows)
    head = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(str(row.get(key, "")) for key in columns) + " |" for row in rows]
    return "\n".join([head, rule, *body]) + "\n"


def legend(table: pd.DataFrame, records: pd.DataFrame, folder: Path, selection) -> str:
    done = records[records["status"] == "completed"]
    judge = ", ".join(sorted({str(j) for j in table.get("judge", pd.Series(dtype=str)).dropna()}))
    distinct = ", ".join(f"{n:.0f}" for n in sorted(table["distinct_prompts"].dropna().unique())) \
        if "distinct_prompts" in table.columns else "?"
    family = table["family_size"].max() if "family_size" in table.columns else 0
    chosen_on = ", ".join(sorted(set(table["reference_on"].dropna()))) if "reference_on" in table.columns else ""
    lines = [f"From {len(records)} run records under `{display_path(folder)}` ({len(done)} completed); "
             f"judge: {judge}; each row pools the seeds of one configuration (equal resolved config but train.seed); "
             f"{distinct} distinct test prompts.",
             "",
             ("- Win rates are against the SFT model on the test prompts (ties count one half): the mean over seeds, "
              "a 95% bootstrap interval over seeds x distinct prompts (a prompt asked twice is one draw), and the "
              "per-seed min-max. Gold: the task's true reward judges instead of the reward model."
              if "seeds" not in table.columns or table["seeds"].max() > 1 else
              "- Win rates are against the SFT model on the test prompts (ties count one half), from ONE seed per row: "
              "the 95% bootstrap interval is over distinct prompts only and leaves out seed noise, so no row is "
              "marked better or worse than another (`untested (1 seed)`). Gold: the task's true reward judges instead "
              "of the reward model."),
             f"- vs best: the row's test win rate minus the reference row's, with a 95% paired bootstrap interval over "
             f"distinct prompts and seeds and a Holm-corrected p-value over the board's {family:.0f} comparison(s) per "
             f"scorer; better / worse where the corrected p < {ALPHA:g}, else n.s. (the order among the best and the "
             f"n.s. rows is not supported by the data). The reference row (best) is the one with the highest mean "
             f"validation win rate by that scorer ({chosen_on or 'validation'}), chosen before the test numbers.",
             "- LC win rate: the length-controlled judge win rate of AlpacaEval 2 (a logistic GLM of the judge's "
             "verdict on tanh of the standardised policy-minus-SFT length difference in characters, predicted at zero "
             "difference; one fit over the row's seeds x prompts, interval by the same bootstrap, refitted); (!) "
             "where it moves more than 0.10 from the raw rate, as AlpacaEval warns; refused where fewer than 10% of "
             "the row's answers are no longer (or no shorter) than SFT's, since zero difference is then outside "
             "the data.",
             "- KL(policy || SFT) in nats from plain samples of the policy: mean and median over seeds, and the mean "
             "per-token KL.",
             "- judge-gold gap: judge win rate minus gold win rate on the row's own outputs; FLAG when its interval "
             "excludes 0 (the judge is fooled, or too strict, on these outputs). judge agreement (run): share of the "
             "row's own policy-vs-SFT comparisons that the judge orders as gold does.",
             "- pref. accuracy: held-out preference accuracy of the method's implicit reward, beside the untrained "
             "SFT model's score under the same definition and the gold reward's own score on the same noisy labels "
             "(the ceiling).",
             "- distinct-2 per response: unique word bigrams within a response, averaged (pooled over all responses it "
             "tracks length); repeat rate: share of responses repeating a word trigram; pairs seen: the data budget "
             "(an unpaired row is half a pair; online methods sample instead, their reward model saw the pairs).",
             "- compute: millions of forward-token equivalents per run (3 x tokens trained, as a backward costs about "
             "two forwards, + tokens forwarded without gradients: reference, old policy, reward model + tokens "
             "sampled), plus for an online method its share of the proxy reward model's training (the whole cost, "
             "and the runs sharing it, in `reward model`); win gain per M tok-eq: (judge win rate - 0.5) / compute.",
             f"- collapsed: seeds whose test responses degenerate or reward-hack, relative to SFT: {THRESHOLDS_TEXT}.",
             "- grid edge names a swept setting (a config key that differs between the method's runs, seeds aside) "
             "whose value in this row is the smallest or largest tried: an optimum there is not bracketed."]
    if "gold_win_rate" not in table.columns:
        lines.append("- No gold reward on this task: the judge's verdict cannot be checked against the truth here.")
    if selection is not None:
        budget = f" among those with mean val KL <= {selection.kl_budget:g} nats" if selection.kl_budget else ""
        tested = "stage" in table.columns and (table["stage"] == "test").all()
        lines += [f"- Selection: per method, the configuration with the {selection.mode} mean validation "
                  f"{selection.metric} win rate{budget}, over its selection seeds; `tuned` is the number of "
                  "configurations the method was given (its tuning budget). "
                  + (f"Test columns: {len(selection.test_seeds)} fresh seeds per pick, none used in selection."
                     if tested else "Test columns: the selection seeds (no fresh-seed test stage).")]
    warning = unequal_data(table)
    if warning:
        lines.append(f"- {warning}")
    return "\n".join(lines)


def stability_rows(stability: pd.DataFrame) -> list[dict[str, str]]:
    """The stability table as a reader scans it: per budget, each method's pick and its marks."""
    rows = []
    for budget, part in stability.groupby("kl_budget", sort=False):
        row = {"KL budget (nats)": budget}
        for _, r in part.iterrows():
            row[r["method"]] = (f"{r['params']} lr {cell(r['learning_rate'])}: judge {cell(r['win_rate'])} "
                                f"{r['significance']}" + (f", gold {cell(r['gold_win_rate'])} {r['gold_significance']}"
                                                          if isinstance(r.get("gold_significance"), str) else ""))
        rows.append(row)
    return rows


_BOARDS: dict[str, tuple] = {}  # folders' content digest -> boards(): the leaderboard and the report read the same


def boards(*folders: str | Path) -> tuple[pd.DataFrame, Selection | None, pd.DataFrame, pd.DataFrame | None]:
    """The records under `folders`, the selection rule (one folder with a stored spec), the board (picks with
    their marks, or every configuration ranked) and the verdict across KL budgets (with a selection rule):
    what the leaderboard and the report are computed from. Computed once per process for the same files (keyed
    by their content), and returned as copies of the tables (a caller may add or drop columns; the cells that
    hold lists and dicts, such as outcomes and config, are shared: read them, never change them in place)."""
    folders = tuple(Path(f) for f in folders)
    digest = hashlib.sha256()
    for folder in folders:
        for path in [folder / "spec.json", *record_paths(folder)]:
            if path.is_file():
                digest.update(str(path).encode() + b"\0" + path.read_bytes())
    key = digest.hexdigest()
    if key not in _BOARDS:
        records = load_records(*folders)
        selection = stored_selection(folders[0]) if len(folders) == 1 else None
        spec = stored_spec(folders[0]) if len(folders) == 1 else {}
        board = select_best(records, selection) if selection else leaderboard(records, spec.get("rank_within"))
        stability = kl_stability(records, selection) if selection else None
        _BOARDS.clear()  # one set of folders at a time: a report and its leaderboard
        _BOARDS[key] = (records, selection, board, stability)
    records, selection, board, stability = _BOARDS[key]
    return records.copy(), selection, board.copy(), None if stability is None else stability.copy()


def write_leaderboard(folder: str | Path, out: str | Path | None = None) -> list[dict[str, str]]:
    """Write leaderboard.csv (every column) and leaderboard.md under `out` (default: `folder`), and with a
    selection rule stability.csv (the verdict across KL budgets); returns the rows as displayed."""
    folder = Path(folder)
    out = Path(out or folder)
    records, selection, table, stability = boards(folder)
    write_text_atomic(out / "leaderboard.csv", table.to_csv(index=False))
    title = "best configuration per method (picked on validation, reported on test)" if selection else "leaderboard"
    rows = display_rows(table, selection is not None)
    text = f"# {title}\n\n{legend(table, records, folder, selection)}\n\n"
    if "group" in table.columns:  # one board per value of rank_within
        for group, part in table.groupby("group", sort=False):
            text += f"## {group}\n\n{to_markdown(display_rows(part, False))}\n"
    else:
        text += to_markdown(rows)
    if selection is not None:
        if not stability.empty:
            write_text_atomic(out / "stability.csv", stability.to_csv(index=False))
            text += ("\n## The verdict across KL budgets\n\nPicks and marks recomputed from the selection-stage runs "
                     "(picked on their validation prompts, judged on their test prompts) at each budget:\n\n"
                     + to_markdown(stability_rows(stability))
                     + "".join(f"\n- {line}" for line in fragile_verdicts(stability) or
                               ["No verdict changes over these budgets."]) + "\n")
    write_text_atomic(out / "leaderboard.md", text)
    return rows
