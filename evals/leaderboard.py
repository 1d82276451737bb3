"""Leaderboards: pure functions of the run records (pandas), written as markdown and CSV.

A row is one configuration: every completed run whose resolved config is equal except train.seed.
It shows the mean over seeds with a 95% interval over seeds x prompts (recomputed from the per-prompt
outcomes in the records, never an average of interval bounds), the per-seed min and max, the mean and
median KL, the judge's validity on the row's own outputs, and whether the row is significantly worse
than the best row (paired bootstrap over prompts and seeds). A sweep's folder holds its spec
(spec.json): when it has a selection rule, the board shows each method's configuration picked on the
validation prompts under the rule's KL budget, reported on the test prompts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from .aggregate import paired_difference, seed_prompt_interval
from .collapse import THRESHOLDS_TEXT, collapse_summary
from .store import IGNORED_PARAMS, display_path, load_records

# Means over seeds of these per-run metrics (where the records have them).
MEANS = ("gold_reward", "gold_reward_sft", "kl_to_sft", "kl_per_token", "judge_agreement_run", "judge_agreement_heldout",
         "heldout_pref_accuracy", "heldout_pref_accuracy_sft", "heldout_pref_gain", "heldout_pref_ceiling", "mean_length", "mean_length_sft",
         "distinct_2", "distinct_2_per_response", "distinct_2_per_response_sft", "repeat_rate", "repeat_rate_sft",
         "pairs_seen", "final_train_loss", "val_win_rate", "val_kl_to_sft", "compute_tokens")


class Selection(BaseModel):
    """Pick each method's best configuration on the validation prompts, report it on the test prompts.

    A configuration is eligible when its mean validation KL to SFT (over seeds) is within `kl_budget`
    nats, so methods are compared at matched drift rather than at whatever KL one learning rate gives."""

    model_config = ConfigDict(extra="forbid")
    metric: str = "val_win_rate"
    mode: str = Field("max", pattern="^(max|min)$")
    kl_budget: float | None = Field(None, gt=0, description="max mean val_kl_to_sft (nats) of an eligible configuration")


def _outcome_matrix(runs: pd.DataFrame, scorer: str, split: str = "test") -> np.ndarray | None:
    """seeds x prompts outcomes of one configuration, or None when a run lacks them."""
    rows = [o.get(split, {}).get(scorer) for o in runs["outcomes"]]
    if any(r is None for r in rows) or len({len(r) for r in rows}) != 1:
        return None
    return np.asarray(rows, dtype=np.float64)


def _configuration_row(runs: pd.DataFrame) -> dict:
    first = runs.iloc[0]
    row = {"method": first["method"], "params": first["params"], "learning_rate": first["learning_rate"],
           "seeds": int(runs["seed"].nunique()), "prompts": first.get("num_prompts"), "judge": first.get("judge"),
           "configuration": first["configuration"], "eval_prompts_fingerprint": first["eval_prompts_fingerprint"]}
    for scorer, prefix in (("judge", ""), ("gold", "gold_")):
        matrix = _outcome_matrix(runs, scorer)
        if matrix is None:  # a record without per-prompt outcomes: its mean, but no interval can be recomputed
            if f"{prefix}win_rate" in runs.columns and runs[f"{prefix}win_rate"].notna().all():
                row[f"{prefix}win_rate"] = float(runs[f"{prefix}win_rate"].mean())
            continue
        per_seed = matrix.mean(axis=1)
        low, high = seed_prompt_interval(matrix)
        row.update({f"{prefix}win_rate": float(matrix.mean()), f"{prefix}win_rate_low": low,
                    f"{prefix}win_rate_high": high, f"{prefix}win_rate_min": float(per_seed.min()),
                    f"{prefix}win_rate_max": float(per_seed.max())})
    judge, gold = _outcome_matrix(runs, "judge"), _outcome_matrix(runs, "gold")
    if judge is not None and gold is not None:
        low, high = seed_prompt_interval(judge - gold)
        row.update({"judge_gold_gap": float((judge - gold).mean()), "judge_gold_gap_low": low,
                    "judge_gold_gap_high": high, "judge_gap_flag": bool(low > 0 or high < 0)})
    for metric in MEANS:
        if metric in runs.columns and runs[metric].notna().all():
            row[metric] = float(runs[metric].mean())
    if "kl_to_sft" in runs.columns:
        row["kl_to_sft_median"] = float(runs["kl_to_sft"].median())
    row["collapsed"] = collapse_summary(runs)
    return row


def mark_significance(table: pd.DataFrame, records: pd.DataFrame) -> pd.DataFrame:
    """Sort by mean win rate and compare every row with the top one on the same prompts and judge:
    `gap_to_best` is the row's win rate minus the best's with its 95% paired interval, and `significance`
    is "best", "n.s." (that interval contains 0: not significantly worse than the best) or "worse"."""
    table = table.sort_values("win_rate", ascending=False, ignore_index=True)
    done = records[records["status"] == "completed"]
    matrices = {key: _outcome_matrix(runs, "judge") for key, runs in done.groupby("configuration")}
    best = table.iloc[0]
    marks, diffs, lows, highs = [], [], [], []
    for row in table.itertuples(index=False):
        a, b = matrices.get(best["configuration"]), matrices.get(row.configuration)
        comparable = (a is not None and b is not None and a.shape[1] == b.shape[1] and row.judge == best["judge"]
                      and row.eval_prompts_fingerprint == best["eval_prompts_fingerprint"])
        if row.configuration == best["configuration"]:
            marks.append("best"), diffs.append(0.0), lows.append(0.0), highs.append(0.0)
        elif not comparable:
            marks.append("not comparable"), diffs.append(np.nan), lows.append(np.nan), highs.append(np.nan)
        else:
            diff, low, high = paired_difference(b, a)  # this row minus the best: negative when worse
            marks.append("worse" if high < 0 else "n.s."), diffs.append(diff), lows.append(low), highs.append(high)
    return table.assign(significance=marks, gap_to_best=diffs, gap_to_best_low=lows, gap_to_best_high=highs)


def leaderboard(records: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration (seeds pooled), best mean judge win rate first, with significance marks
    and grid-edge flags."""
    done = records[records["status"] == "completed"]
    if done.empty:
        return pd.DataFrame()
    table = pd.DataFrame([_configuration_row(runs) for _, runs in done.groupby("configuration", sort=False)])
    table["grid_edge"] = [grid_edges(records[records["method"] == row.method], row.configuration)
                          for row in table.itertuples(index=False)]
    if "win_rate" not in table.columns:  # runs without evaluation: nothing to rank or test
        return table
    return mark_significance(table, records)


def grid_edges(records: pd.DataFrame, configuration: str) -> str:
    """The swept settings (config keys that differ between the method's runs, seed aside) at which
    `configuration` sits at the smallest or largest value tried: an optimum there is not bracketed."""
    flat = pd.json_normalize(list(records["config"])).set_index(records["configuration"].to_numpy())
    flat = flat.drop(columns=[c for c in flat.columns if c.split(".")[0] in ("output_dir", "cache_dir", "name", "wandb")
                              or c == "train.seed" or c in {f"method.{p}" for p in IGNORED_PARAMS}])
    swept = [c for c in flat.columns if flat[c].astype(str).nunique() > 1]
    chosen = flat.loc[[configuration]].iloc[0]
    edges = []
    for column in swept:
        values = pd.to_numeric(flat[column], errors="coerce")
        if values.notna().all():
            if chosen[column] == values.min():
                edges.append(f"{column} lowest")
            elif chosen[column] == values.max():
                edges.append(f"{column} highest")
    return ", ".join(edges)


def select_best(records: pd.DataFrame, selection) -> pd.DataFrame:
    """Each method's configuration with the best mean validation metric among those whose mean validation
    KL to SFT is within the selection's budget (none within it: the lowest-KL one, marked), reported on
    the test prompts, with significance marks among the chosen rows and grid-edge flags."""
    table = leaderboard(records)
    if table.empty:
        return table
    if selection.metric not in table.columns:
        from harness.errors import BadInput

        raise BadInput(f"selection metric {selection.metric!r} is in no run record (was eval.num_val_prompts set?)")
    chosen = []
    for method, rows in table.groupby("method", sort=False):
        budget = selection.kl_budget
        eligible = rows if budget is None else rows[rows["val_kl_to_sft"] <= budget]
        note = "" if not eligible.empty else "no configuration within the KL budget; lowest KL shown"
        pool = eligible if not eligible.empty else rows.nsmallest(1, "val_kl_to_sft")
        best = pool.sort_values(selection.metric, ascending=selection.mode == "min").iloc[0]
        chosen.append({**best.to_dict(), "configurations_tried": len(rows), "within_budget": len(eligible),
                       "selection_note": note})
    board = pd.DataFrame(chosen).drop(columns=["significance", "gap_to_best", "gap_to_best_low", "gap_to_best_high"])
    return mark_significance(board, records)


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


def display_rows(table: pd.DataFrame, selected: bool) -> list[dict[str, str]]:
    """The table a reader scans (markdown and terminal): estimates with their intervals in one cell,
    baselines beside them."""
    out = []
    for _, row in table.iterrows():
        get = lambda key, fmt="{:.3f}": fmt.format(row[key]) if key in row and pd.notna(row[key]) else ""  # noqa: E731
        cells = {"method": row["method"], "params": row["params"], "lr": cell(row["learning_rate"]),
                 "seeds": str(row["seeds"]), "grid edge": row.get("grid_edge") or "-",
                 "judge win rate [95% CI]": _interval(row, "win_rate"),
                 "seed min-max": f"{row['win_rate_min']:.3f}-{row['win_rate_max']:.3f}" if "win_rate_min" in row else "",
                 "vs best": row["significance"] + (f" ({row['gap_to_best']:+.3f} [{row['gap_to_best_low']:+.3f}, "
                                                    f"{row['gap_to_best_high']:+.3f}])"
                                                    if row["significance"] in ("n.s.", "worse") else ""),
                 "gold win rate [95% CI]": _interval(row, "gold_win_rate"),
                 "gold reward (SFT)": f"{get('gold_reward')} ({get('gold_reward_sft')})" if "gold_reward" in row else "",
                 "KL mean / median (per token)": f"{get('kl_to_sft')} / {get('kl_to_sft_median')} ({get('kl_per_token')})",
                 "judge-gold gap [95% CI]": (_interval(row, "judge_gold_gap") + (" FLAG" if row.get("judge_gap_flag") else "")),
                 "judge agreement (run)": get("judge_agreement_run"),
                 "collapsed": row.get("collapsed") or "-",
                 "pref. accuracy (SFT / ceiling)": f"{get('heldout_pref_accuracy')} ({get('heldout_pref_accuracy_sft')} / "
                                                   f"{get('heldout_pref_ceiling')})" if "heldout_pref_accuracy" in row else "",
                 "length (SFT)": f"{get('mean_length', '{:.1f}')} ({get('mean_length_sft', '{:.1f}')})",
                 "distinct-2 per resp. / pooled": f"{get('distinct_2_per_response')} / {get('distinct_2')}",
                 "repeat rate (SFT)":
                     f"{get('repeat_rate')} ({get('repeat_rate_sft')})", "pairs seen": get("pairs_seen", "{:.0f}"),
                 "compute (M tok-eq)": f"{row['compute_tokens'] / 1e6:.2f}" if pd.notna(row.get("compute_tokens")) else "",
                 "win gain per M tok-eq": (f"{(row['win_rate'] - 0.5) / (row['compute_tokens'] / 1e6):+.3f}"
                                           if pd.notna(row.get("compute_tokens")) and "win_rate" in row else "")}
        if selected:
            cells = {**{k: cells[k] for k in ("method", "params", "lr", "seeds")},
                     "val win rate": get("val_win_rate"), "val KL": get("val_kl_to_sft"),
                     **{k: v for k, v in cells.items() if k not in ("method", "params", "lr", "seeds")}}
        out.append(cells)
    return out


def to_markdown(rows: list[dict[str, str]]) -> str:
    if not rows:
        return ""
    head = "| " + " | ".join(rows[0]) + " |"
    rule = "|" + "|".join("---" for _ in rows[0]) + "|"
    body = ["| " + " | ".join(str(v) for v in row.values()) + " |" for row in rows]
    return "\n".join([head, rule, *body]) + "\n"


def stored_selection(folder: Path) -> Selection | None:
    """The selection rule of the sweep whose folder this is (its spec.json), or None."""
    path = folder / "spec.json"
    selection = json.loads(path.read_text()).get("selection") if path.is_file() else None
    return Selection.model_validate(selection) if selection else None


def legend(table: pd.DataFrame, records: pd.DataFrame, folder: Path, selection) -> str:
    judge = ", ".join(sorted({str(j) for j in table.get("judge", pd.Series(dtype=str)).dropna()}))
    lines = [f"From {len(records)} run records under `{display_path(folder)}` ({int((records['status'] == 'completed').sum())} completed); "
             f"judge: {judge}; each row pools the seeds of one configuration (equal resolved config but train.seed).",
             "",
             "- Win rates are against the SFT model on the test prompts (ties count one half): the mean over seeds, "
             "a 95% bootstrap interval over seeds x prompts, and the per-seed min-max.",
             "- vs best: the row's win rate minus the top row's, with a 95% paired bootstrap interval over prompts "
             "and seeds; n.s. = not significantly worse than the best (the interval contains 0): the order among the "
             "best and the n.s. rows is not supported by the data.",
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
             "sampled); win gain per M tok-eq: (judge win rate - 0.5) / compute. Records from before cost accounting "
             "leave both empty.",
             f"- collapsed: seeds whose test responses degenerate or reward-hack, relative to SFT: {THRESHOLDS_TEXT}.",
             "- grid edge names a swept setting (a config key that differs between the method's runs, seeds aside) "
             "whose value in this row is the smallest or largest tried: an optimum there is not bracketed."]
    if selection is not None:
        budget = f" among those with mean val KL <= {selection.kl_budget:g} nats" if selection.kl_budget else ""
        lines += [f"- Selection: per method, the configuration with the {selection.mode} mean {selection.metric} on the "
                  f"validation prompts{budget}; reported on the test prompts."]
    return "\n".join(lines)


def write_leaderboard(folder: str | Path, out: str | Path | None = None) -> list[dict[str, str]]:
    """Write leaderboard.csv (every column) and leaderboard.md under `out` (default: `folder`); returns the
    rows as displayed."""
    folder = Path(folder)
    out = Path(out or folder)
    records = load_records(folder)
    selection = stored_selection(folder)
    table = select_best(records, selection) if selection else leaderboard(records)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "leaderboard.csv", index=False)
    title = "best configuration per method (picked on validation, reported on test)" if selection else "leaderboard"
    rows = display_rows(table, selection is not None)
    (out / "leaderboard.md").write_text(f"# {title}\n\n{legend(table, records, folder, selection)}\n\n"
                                        f"{to_markdown(rows)}")
    return rows
