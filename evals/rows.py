"""One leaderboard row per configuration: every completed run whose resolved config is equal except
train.seed, its numbers recomputed from the per-prompt outcomes the records store.

In a comparison run under the protocol (DESIGN.md, "How a comparison is run") a configuration has two
kinds of runs: selection-stage runs (the seeds that pick configurations on validation prompts) and
test-stage runs (fresh seeds of a picked configuration). A row's validation columns come from its
selection runs, its test columns only from its test runs when it has any; a sweep without stages uses
the same runs for both.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .aggregate import seed_prompt_interval
from .collapse import collapse_summary
from .length_control import length_controlled, refusal
from .store import IGNORED_PARAMS

# Means over seeds of these per-run metrics (where the records have them).
MEANS = ("gold_reward", "gold_reward_sft", "kl_to_sft", "kl_per_token", "judge_agreement_run", "judge_agreement_heldout",
         "heldout_pref_accuracy", "heldout_pref_accuracy_sft", "heldout_pref_gain", "heldout_pref_ceiling", "mean_length",
         "mean_length_sft", "distinct_2", "distinct_2_per_response", "distinct_2_per_response_sft", "repeat_rate",
         "repeat_rate_sft", "pairs_seen", "final_train_loss", "compute_tokens", "reward_model_compute_tokens",
         "eval_prompts_distinct")
# Validation metrics: means over the selection runs.
VAL_MEANS = ("val_win_rate", "val_gold_win_rate", "val_kl_to_sft")
SCORERS = {"judge": "", "gold": "gold_"}  # scorer -> prefix of its columns


def test_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs a configuration's test columns read: its test-stage runs, or all of them when it has none."""
    tested = runs[runs["stage"] == "test"] if "stage" in runs.columns else runs.iloc[:0]
    return tested if len(tested) else runs


def selection_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs a configuration's validation columns read: every run but the test-stage ones."""
    picked = runs[runs["stage"] != "test"] if "stage" in runs.columns else runs
    return picked if len(picked) else runs


def outcome_matrix(runs: pd.DataFrame, scorer: str, split: str = "test") -> np.ndarray | None:
    """seeds x prompts outcomes of one configuration's runs, or None when a run lacks them."""
    rows = [o.get(split, {}).get(scorer) for o in runs["outcomes"]]
    if any(r is None for r in rows) or len({len(r) for r in rows}) != 1:
        return None
    return np.asarray(rows, dtype=np.float64)


def prompt_clusters(runs: pd.DataFrame, split: str = "test") -> list[int] | None:
    """The distinct-prompt id of each outcome column (records before schema 3 have none: every column is
    its own prompt)."""
    if "prompt_clusters" not in runs.columns:
        return None
    found = [tuple(c.get(split, ())) for c in runs["prompt_clusters"] if isinstance(c, dict)]
    if not found or not found[0] or len(set(found)) != 1:
        return None
    return list(found[0])


def configuration_row(runs: pd.DataFrame) -> dict:
    first = runs.iloc[0]
    tested, picking = test_runs(runs), selection_runs(runs)
    row = {"method": first["method"], "params": first["params"], "learning_rate": first["learning_rate"],
           "seeds": int(tested["seed"].nunique()), "test_seeds": " ".join(str(s) for s in sorted(tested["seed"].unique())),
           "selection_seeds": int(picking["seed"].nunique()),
           "stage": "test" if (tested["stage"] == "test").any() else "selection" if (picking["stage"] == "selection").any()
           else "", "prompts": first.get("num_prompts"), "judge": first.get("judge"),
           "configuration": first["configuration"], "eval_prompts_fingerprint": first["eval_prompts_fingerprint"]}
    clusters = prompt_clusters(tested)
    matrices = {scorer: outcome_matrix(tested, scorer) for scorer in SCORERS}
    for scorer, prefix in SCORERS.items():
        matrix = matrices[scorer]
        if matrix is None:  # a record without per-prompt outcomes: its mean, but no interval can be recomputed
            if f"{prefix}win_rate" in tested.columns and tested[f"{prefix}win_rate"].notna().all():
                row[f"{prefix}win_rate"] = float(tested[f"{prefix}win_rate"].mean())
            continue
        per_seed = matrix.mean(axis=1)
        low, high = seed_prompt_interval(matrix, clusters=clusters)
        row.update({f"{prefix}win_rate": float(matrix.mean()), f"{prefix}win_rate_low": low,
                    f"{prefix}win_rate_high": high, f"{prefix}win_rate_min": float(per_seed.min()),
                    f"{prefix}win_rate_max": float(per_seed.max())})
    if matrices["judge"] is not None and matrices["gold"] is not None:
        gap = matrices["judge"] - matrices["gold"]
        low, high = seed_prompt_interval(gap, clusters=clusters)
        row.update({"judge_gold_gap": float(gap.mean()), "judge_gold_gap_low": low, "judge_gold_gap_high": high,
                    "judge_gap_flag": bool(low > 0 or high < 0)})
    lengths = outcome_matrix(tested, "length_diff")
    if matrices["judge"] is not None and lengths is not None and lengths.shape == matrices["judge"].shape:
        lc = length_controlled(matrices["judge"], lengths, clusters)  # one GLM over the row's seeds x prompts
        row["lc_refused"] = refusal(lengths) or ""
        if lc is not None:
            row.update({"lc_win_rate": lc.rate, "lc_win_rate_low": lc.low, "lc_win_rate_high": lc.high,
                        "lc_length_coef": lc.length_coef, "lc_warning": lc.warning})
    row["distinct_prompts"] = len(set(clusters)) if clusters else (matrices["judge"].shape[1]
                                                                    if matrices["judge"] is not None else None)
    for metric in MEANS:
        if metric in tested.columns and tested[metric].notna().all():
            row[metric] = float(tested[metric].mean())
    for metric in VAL_MEANS:
        if metric in picking.columns and picking[metric].notna().all():
            row[metric] = float(picking[metric].mean())
    if "kl_to_sft" in tested.columns:
        row["kl_to_sft_median"] = float(tested["kl_to_sft"].median())
    row["collapsed"] = collapse_summary(tested)
    return row


def configuration_table(records: pd.DataFrame) -> pd.DataFrame:
    """One unranked row per configuration of the completed runs, with grid-edge flags and compute that
    includes each online run's share of the reward model it optimised."""
    done = records[records["status"] == "completed"]
    if done.empty:
        return pd.DataFrame()
    table = pd.DataFrame([configuration_row(runs) for _, runs in done.groupby("configuration", sort=False)])
    swept = {method: swept_settings(selection_runs(records[records["method"] == method])) for method in table["method"].unique()}
    table["grid_edge"] = [grid_edges(swept[row.method], row.configuration) for row in table.itertuples(index=False)]
    if "reward_model_compute_tokens" in table.columns and "reward_model_fingerprint" in done.columns:
        # The proxy reward model is trained once and shared by every run on the same pairs: each run's share.
        sharing = done.groupby("reward_model_fingerprint")["trial"].count()
        shares = [row["reward_model_compute_tokens"] / sharing[fp] if pd.notna(row.get("reward_model_compute_tokens"))
                  and (fp := _one(done, row["configuration"], "reward_model_fingerprint")) in sharing else np.nan
                  for _, row in table.iterrows()]
        table["reward_model_runs_sharing"] = [sharing.get(_one(done, c, "reward_model_fingerprint"), np.nan)
                                              for c in table["configuration"]]
        table["compute_tokens_with_reward_model"] = table["compute_tokens"] + np.nan_to_num(shares)
    return table


def _one(done: pd.DataFrame, configuration: str, column: str):
    return done.loc[done["configuration"] == configuration, column].iloc[0]


def swept_settings(records: pd.DataFrame) -> pd.DataFrame:
    """Per configuration (index), the config keys that differ between these runs, seed and paths aside."""
    flat = pd.json_normalize(list(records["config"])).set_index(records["configuration"].to_numpy())
    flat = flat.drop(columns=[c for c in flat.columns if c.split(".")[0] in ("output_dir", "cache_dir", "name", "wandb")
                              or c == "train.seed" or c in {f"method.{p}" for p in IGNORED_PARAMS}])
    return flat[[c for c in flat.columns if flat[c].astype(str).nunique() > 1]]


def grid_edges(flat: pd.DataFrame, configuration: str) -> str:
    """The swept settings (`flat`: swept_settings of the method's runs) at which `configuration` sits at the
    smallest or largest value tried: an optimum there is not bracketed."""
    chosen = flat.loc[[configuration]].iloc[0]
    edges = []
    for column in flat.columns:
        values = pd.to_numeric(flat[column], errors="coerce")
        if values.notna().all():
            if chosen[column] == values.min():
                edges.append(f"{column} lowest")
            elif chosen[column] == values.max():
                edges.append(f"{column} highest")
    return ", ".join(edges)
