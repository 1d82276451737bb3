"""What a report says before its tables: the verdict in a few sentences, the task card, the compact
leaderboard, and example outputs. Every sentence is generated from the board and the records; none is
written by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .leaderboard import _interval
from .rows import test_runs
from .significance import UNTESTED


def training_history(run) -> list[dict]:
    """A run's logged training steps (its metrics.jsonl), [] when it kept none."""
    path = Path(run["path"]) / "metrics.jsonl"
    return [r for r in map(json.loads, path.read_text().splitlines()) if "step" in r] if path.is_file() else []


def collapse_clause(row, done: pd.DataFrame) -> str:
    """Why a row collapsed, in one clause of numbers: how far it drifted, what happened to the chosen
    responses' log-probability in training, and the symptoms the collapse rule saw."""
    runs = test_runs(done[done["configuration"] == row["configuration"]])
    parts = []
    if pd.notna(row.get("kl_to_sft")):
        parts.append(f"it drifted {row['kl_to_sft']:.0f} nats (KL) from SFT")
    chosen = [h for h in map(training_history, (r for _, r in runs.iterrows())) if h and "logps/chosen" in h[0]]
    if chosen:
        first = np.mean([h[0]["logps/chosen"] for h in chosen])
        last = np.mean([h[-1]["logps/chosen"] for h in chosen])
        parts.append(f"chosen log-prob {first:.1f} -> {last:.1f} over training")
    if pd.notna(row.get("repeat_rate")):
        parts.append(f"repeat rate {row['repeat_rate']:.2f} (SFT {row['repeat_rate_sft']:.2f})")
    if pd.notna(row.get("mean_length")):
        parts.append(f"length {row['mean_length']:.1f} tokens (SFT {row['mean_length_sft']:.1f})")
    return ", ".join(parts)


def short_label(row, done: pd.DataFrame) -> str:
    """The method and only the settings that vary among its runs ("dpo beta=0.3 lr 0.0004")."""
    varied, lr_varies = varied_params(done, row["method"])
    params = [t for t in str(row["params"]).split() if t.split("=")[0] in varied]
    return " ".join([row["method"], *params] + ([f"lr {row['learning_rate']:g}"] if lr_varies else []))


def _setting(row, done: pd.DataFrame) -> str:
    """short_label without the learning rate: what a per-lr board compares."""
    return short_label(row, done).split(" lr ")[0]


def verdict(board: pd.DataFrame, done: pd.DataFrame, metric: str, stability: pd.DataFrame | None) -> list[str]:
    """A few sentences: the best row by the selection metric with its interval and the rows its intervals
    cannot separate from it; where judge and gold disagree and what length control changes; the worst
    collapse and why; whether the pick survives other KL budgets."""
    if board.empty or "win_rate" not in board.columns:
        return ["No completed run with an evaluation: nothing to compare."]
    prefix = "gold_" if metric == "gold" and "gold_significance" in board.columns else ""
    scorer = "gold" if prefix else "judge"
    out = []
    groups = list(board.groupby("group", sort=False)) if "group" in board.columns else [("", board)]
    bests = [(g, p[p[f"{prefix}significance"] == "best"].iloc[0]) for g, p in groups
             if (p[f"{prefix}significance"] == "best").any()]
    if len(groups) > 1 and len({_setting(b, done) for _, b in bests}) == 1:
        best = bests[0][1]
        out.append(f"{_setting(best, done)} is best by {scorer} at every {board['group'].iloc[0].split('=')[0]} "
                   f"(picked on validation; {scorer} win rate against SFT "
                   + "; ".join(f"{_interval(b, f'{prefix}win_rate')} at lr {b['learning_rate']:g}" for _, b in bests) + ").")
    else:
        for group, best in bests:
            where = f"At {group}, " if group else ""
            out.append(f"{where}{short_label(best, done)} is best by {scorer} (picked on validation): {scorer} win rate "
                       f"against SFT {_interval(best, f'{prefix}win_rate')} over {best['seeds']} seed(s) x "
                       f"{best.get('distinct_prompts', 0):.0f} test prompts.")
    marks = board[f"{prefix}significance"]
    if (marks == UNTESTED).any():
        out.append("With one seed per row no difference is tested: each interval covers prompt noise only.")
    else:
        same = [short_label(r, done) for _, r in board.iterrows() if r[f"{prefix}significance"] == "n.s."]
        worse = int((marks == "worse").sum())
        whose = "The best row's intervals (within its board)" if len(groups) > 1 else "Its intervals"
        out.append((f"{whose} cannot separate it from {', '.join(same)}" if same else "No row is indistinguishable from it")
                   + f"; {worse} row{'s are' if worse != 1 else ' is'} worse (Holm-corrected).")
    if "gold_significance" in board.columns:
        other = "judge" if prefix else "gold"
        differ = int((board["significance"] != board["gold_significance"]).sum())
        gaps = board["judge_gold_gap"].dropna() if "judge_gold_gap" in board.columns else pd.Series(dtype=float)
        text = (f"The {other} gives other marks on {differ} of {len(board)} rows" if differ
                else f"The {other} gives the same marks")
        if len(gaps):
            text += f"; the judge overstates gold on {(gaps > 0).sum()} of {len(gaps)} rows ({gaps.mean():+.3f} on average)"
        if "lc_win_rate" in board.columns and board["lc_win_rate"].notna().any():
            shift = (board["lc_win_rate"] - board["win_rate"]).dropna()
            refused = int(board["lc_refused"].astype(bool).sum()) if "lc_refused" in board.columns else 0
            text += (f"; controlled for length, judge win rates move by {shift.mean():+.3f} on average"
                     + (f" ({refused} row{'s' if refused != 1 else ''} without one: lengths too far from SFT's)" if refused else ""))
        out.append(text + ".")
    collapsed = board[board["collapsed"].astype(bool)] if "collapsed" in board.columns else board.iloc[:0]
    if len(collapsed):
        share = collapsed["collapsed"].map(lambda c: int(c.split("/")[0]) / int(c.split("/")[1].split()[0]))
        worst = collapsed.assign(share=share).sort_values(["share", "kl_to_sft"], ascending=False).iloc[0]
        others = len(collapsed) - 1
        out.append(f"{short_label(worst, done)} collapsed in {worst['collapsed']}: {collapse_clause(worst, done)}"
                   + (f"; {others} other row{'s have' if others != 1 else ' has'} collapsed seeds (see Collapse)." if others else "."))
    if stability is not None and not stability.empty:
        moved = [m for m, rows in stability.groupby("method", sort=False) if rows["configuration"].nunique() > 1]
        out.append(f"The pick of {len(moved)} of {stability['method'].nunique()} methods changes between KL budgets "
                   f"{stability['kl_budget'].iloc[0]} and {stability['kl_budget'].iloc[-1]} (see the verdict across KL budgets).")
    return out


def task_card(done: pd.DataFrame, board: pd.DataFrame, selection, folders) -> list[str]:
    """What was compared, on what, how: task, model, training, data, prompts, judge, seeds, selection."""
    from harness.embedded.build import MODEL_PARAMETERS, MODEL_SHAPE

    first = done.iloc[0]
    cfg = first["config"]
    embedded = cfg.get("data", {}).get("source") == "embedded"
    model = cfg.get("model", {}).get("path")
    lines = [("Task: the embedded synthetic review task (offline; a known gold reward scores every response)"
              if embedded else f"Task: {cfg.get('data', {}).get('source')} (no gold reward: the judge is unchecked)"),
             (f"Model: the embedded SFT model, a Llama of {MODEL_SHAPE['num_hidden_layers']} layers x "
              f"{MODEL_SHAPE['hidden_size']} hidden ({MODEL_PARAMETERS / 1e6:.2f}M parameters)" if model is None and embedded
              else f"Model: {model or 'the embedded SFT model'}")]
    steps = sorted({c["train"]["max_steps"] for c in done["config"]})
    lines.append(f"Training: {', '.join(map(str, steps))} optimizer steps per run; "
                 f"{', '.join(f'{v:.0f}' for v in sorted(done['pairs_seen'].dropna().unique())) or '?'} preference pairs seen "
                 f"(offline; an unpaired row counts half) from "
                 f"{', '.join(str(v) for v in sorted({c.get('data', {}).get('num_train') for c in done['config']} - {None})) or 'all'} training pairs")
    distinct = board["distinct_prompts"].dropna().unique() if "distinct_prompts" in board.columns else []
    val = sorted({int(v) for v in done.get("val_num_prompts", pd.Series(dtype=float)).dropna()})
    lines.append(f"Evaluation: {', '.join(f'{v:.0f}' for v in distinct)} distinct test prompts"
                 + (f", {', '.join(map(str, val))} validation prompts (disjoint)" if val else "")
                 + "; one sample per prompt from the policy and from SFT")
    judge = ", ".join(sorted({str(j) for j in done["judge"].dropna()})) if "judge" in done.columns else "?"
    agreement = done["judge_agreement_heldout"].dropna() if "judge_agreement_heldout" in done.columns else []
    lines.append(f"Judge: {judge}" + (f", agreeing with gold on {np.mean(agreement):.3f} of held-out preference pairs"
                                      if len(agreement) else ""))
    seeds = board["seeds"].astype(int) if "seeds" in board.columns else pd.Series([1])
    lines.append(f"Seeds: {seeds.min()}" + (f"-{seeds.max()}" if seeds.max() != seeds.min() else "")
                 + " per row" + (" (fresh seeds, none used in selection)" if "stage" in board.columns
                                 and (board["stage"] == "test").all() else ""))
    if selection is not None:
        budget = f", mean validation KL <= {selection.kl_budget:g} nats" if selection.kl_budget else ""
        lines.append(f"Selection: per method, the best mean validation {selection.metric} win rate{budget}; "
                     f"reported on the test prompts")
    else:
        lines.append("Selection: none; every configuration is a row, the validation-best row is the reference")
    return lines


def varied_params(done: pd.DataFrame, method: str) -> tuple[list[str], bool]:
    """The method's parameters that take more than one value across its runs, and whether lr does."""
    runs = done[done["method"] == method]
    keys = list(dict.fromkeys(k for p in runs["method_params"] for k in p))
    varied = [k for k in keys if len({json.dumps(p.get(k)) for p in runs["method_params"]}) > 1]
    return varied, runs["learning_rate"].nunique() > 1


def compact_rows(board: pd.DataFrame, done: pd.DataFrame) -> list[dict[str, str]]:
    """The leaderboard as a screen holds it: the method, only what varies, the win rates by judge, gold
    and length-controlled, KL, length, collapse and the marks."""
    out = []
    for _, row in board.iterrows():
        varied, lr_varies = varied_params(done, row["method"])
        params = " ".join(t for t in str(row["params"]).split() if t.split("=")[0] in varied)
        def mark(prefix: str) -> str:
            value = row.get(f"{prefix}significance")
            return ("1 seed" if value == UNTESTED else value) if isinstance(value, str) else ""

        cells = {"method": row["method"], "setting": " ".join(filter(None, [params, f"lr {row['learning_rate']:g}"
                                                                          if lr_varies else ""])) or "default",
                 "judge win [95% CI]": _interval(row, "win_rate"), "judge": mark(""),
                 "gold win [95% CI]": _interval(row, "gold_win_rate"), "gold": mark("gold_"),
                 "LC win [95% CI]": ("n/a: length off SFT's" if row.get("lc_refused") else
                                     _interval(row, "lc_win_rate") + (" (!)" if row.get("lc_warning") is True else "")),
                 "KL (nats)": f"{row['kl_to_sft']:.2f}" if pd.notna(row.get("kl_to_sft")) else "",
                 "length (SFT)": (f"{row['mean_length']:.1f} ({row['mean_length_sft']:.1f})"
                                  if pd.notna(row.get("mean_length")) else ""),
                 "collapsed": row.get("collapsed") or "-"}
        if "gold_win_rate" not in board.columns:
            for key in ("gold win [95% CI]", "gold"):
                cells.pop(key)
        out.append(cells)
    return out


def example_rows(row, done: pd.DataFrame, kinds=("sample",)) -> list[dict[str, str]]:
    """The examples the row's first test run keeps (its lowest seed), of the given kinds."""
    runs = test_runs(done[done["configuration"] == row["configuration"]]).sort_values("seed")
    for _, run in runs.iterrows():
        found = [e for e in run.get("examples") or [] if e["kind"] in kinds]
        if found:
            return [{"seed": str(run["seed"]), "prompt": e["prompt"], "SFT": e["sft"], "policy": e["policy"],
                     **{f"{name} (policy / SFT)": f"{s['policy']:.2f} / {s['sft']:.2f}"
                        for name, s in e["scores"].items() if name in ("judge", "gold")}}
                    for e in found]
    return []

