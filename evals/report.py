"""The method comparison report: a pure function of run records -> report.md (figures beside it under
report_files/) and report.html (one self-contained file, figures embedded), written beside the leaderboard.

    harness report DIR [DIR ...]

One content list (headings, paragraphs, bullet lists, tables, figures with captions) rendered twice, so the
markdown and the HTML say the same thing. Figures are matplotlib PNGs written without timestamps, so the
same records give the same bytes on the same machine.
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from harness.cache import write_bytes_atomic, write_text_atomic

from .ablation import reference_section
from .aggregate import seed_prompt_interval
from .rows import prompt_clusters, test_runs
from .collapse import THRESHOLDS_TEXT, collapse_reasons
from .leaderboard import boards, display_rows, legend, stability_rows, table_columns, to_markdown, unequal_data
from .selection import fragile_verdicts, stored_spec
from .store import REFERENCE_PARAMS, display_path
from .summary import compact_rows, example_rows, short_label, task_card, training_history, verdict

FIGURE_DIR = "report_files"
CURVES = {"offline": ("loss", "margins", "logps/chosen", "logps/rejected"), "online": ("loss", "rollout/score", "rollout/kl")}
CURVE_UNITS = {"loss": "loss (method's units)", "margins": "reward margin (nats x beta)", "logps/chosen": "log-prob, nats",
               "logps/rejected": "log-prob, nats", "rollout/score": "reward-model score", "rollout/kl": "KL, nats",
               "accuracy": "pairwise accuracy"}


@dataclass
class Figure:
    name: str
    title: str
    caption: str  # what the figure shows and what to conclude from it
    png: bytes
    data: dict = field(default_factory=dict)  # what was plotted (tests read it, not the pixels)


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buffer.getvalue()


# One colour per method on every page and panel (methods outside this list take the spare colours in order).
METHOD_COLORS = {"dpo": "#1f77b4", "ipo": "#2ca02c", "kto": "#d62728", "orpo": "#9467bd", "simpo": "#ff7f0e",
                 "ppo": "#8c564b", "rloo": "#e377c2", "grpo": "#17becf", "online_dpo": "#bcbd22"}
SPARE = ["#7f7f7f", "#393b79", "#637939", "#8c6d31", "#843c39"]
LR_RANGE = (1e-5, 3e-3)  # learning rates coloured on one fixed scale, so a colour means one lr everywhere


def _colors(methods: list[str]) -> dict[str, str]:
    spare = iter(SPARE * 4)
    return {m: METHOD_COLORS.get(m) or next(spare) for m in methods}


def lr_color(lr: float):
    """The colour of a learning rate, the same on every panel and page (viridis over log10 lr in LR_RANGE)."""
    import matplotlib

    low, high = np.log10(LR_RANGE)
    return matplotlib.colormaps["viridis"](float(np.clip((np.log10(lr) - low) / (high - low), 0, 1)) * 0.9)


KL_TICKS = [0, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500]


def _kl_axis(ax, values, axis: str = "x") -> None:
    """A symlog KL axis with readable ticks (plain numbers, not 10^k)."""
    top = max([1.0, *[v for v in values if np.isfinite(v)]])
    ticks = [t for t in KL_TICKS if t <= top * 1.5]
    (ax.set_xscale if axis == "x" else ax.set_yscale)("symlog", linthresh=1.0)
    (ax.set_xticks if axis == "x" else ax.set_yticks)(ticks, [f"{t:g}" for t in ticks])
    (ax.xaxis if axis == "x" else ax.yaxis).set_minor_locator(__import__("matplotlib").ticker.NullLocator())


def _strength(method_params: dict) -> tuple[str, float] | None:
    """The method's first declared hyperparameter (its KL-strength knob: beta, tau, lambda) and its value; the
    reference option every method with a reference shares (listed first in its records) is not one."""
    for key, value in method_params.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in REFERENCE_PARAMS:
            return key, float(value)
    return None


# ---------------------------------------------------------------- figures

def win_rate_figure(done: pd.DataFrame, colors: dict) -> Figure | None:
    import matplotlib.pyplot as plt

    methods = list(colors)
    ncols = min(3, len(methods))
    nrows = -(-len(methods) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.8 * ncols, 3.3 * nrows), sharey=True, squeeze=False)
    for ax in axes.flat[len(methods):]:
        ax.set_visible(False)
    for ax, method in zip(axes.flat, methods):
        runs = done[done["method"] == method]
        knob = _strength(runs.iloc[0]["method_params"])
        if knob is None:
            continue
        name = knob[0]
        several = runs["learning_rate"].nunique() > 1
        for lr, by_lr in runs.groupby("learning_rate"):
            points = []
            for _, config in by_lr.groupby("configuration"):
                x = _strength(config.iloc[0]["method_params"])[1]
                matrix = np.asarray([o["test"]["judge"] for o in config["outcomes"]])
                low, high = seed_prompt_interval(matrix, clusters=prompt_clusters(config))
                gold = config["gold_win_rate"].mean() if "gold_win_rate" in config.columns else np.nan
                points.append((x, matrix.mean(), low, high, gold))
                ax.scatter([x] * len(config), config["win_rate"], s=10, alpha=0.35,
                           color=lr_color(lr) if several else colors[method])
            points.sort()
            xs, mean, low, high, gold = map(np.asarray, zip(*points))
            line = ax.errorbar(xs, mean, yerr=[mean - low, high - mean], marker="o", capsize=3,
                               label=f"lr {lr:g}" if several else "judge", color=lr_color(lr) if several else colors[method])
            if not np.isnan(gold).all():
                ax.plot(xs, gold, ls="--", marker="s", mfc="none", ms=4, color=line.lines[0].get_color(),
                        label=None if several else "gold")
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        tried = sorted({_strength(p)[1] for p in runs["method_params"]})
        ax.set_xticks(tried, [f"{v:g}" for v in tried])
        ax.minorticks_off()
        ax.set_title(method)
        ax.set_xlabel(name)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("win rate vs SFT")
    fig.tight_layout()
    return Figure("win_rate_vs_strength", "Win rate against each method's strength parameter",
                  "Judge win rate against the SFT model on the test prompts, per method, against its KL-strength "
                  "parameter (log scale). Faint dots: one seed each; solid line and bars: the mean over seeds with the "
                  "95% bootstrap interval over seeds x prompts; dashed: the gold reward's win rate on the same responses "
                  "(where the task knows it); one colour per learning rate where several were tried (the same colour "
                  "means the same learning rate in every panel and report). Dotted: "
                  "0.5, no better than SFT. Where two points' bars overlap, their order is not established.",
                  _png(fig))


def frontier_figure(done: pd.DataFrame, colors: dict, board: pd.DataFrame | None = None,
                    kl_budget: float | None = None) -> Figure | None:
    import matplotlib.pyplot as plt

    use_gold = "gold_reward" in done.columns and done["gold_reward"].notna().all()
    reward, sft_reward = ("gold_reward", "gold_reward_sft") if use_gold else ("judge_reward", "judge_reward_sft")
    if reward not in done.columns or "kl_to_sft" not in done.columns:
        return None
    means = done.groupby("configuration").agg(kl=("kl_to_sft", "mean"), reward=(reward, "mean"), method=("method", "first"),
                                              params=("method_params", "first"), lr=("learning_rate", "first"))
    # Outliers (a collapsed configuration far below the rest) would squash every other point into a sliver:
    # the axis stops at the rest's range and a clipped point is drawn on the bottom edge with its value.
    q1, q3 = np.percentile(means["reward"], [25, 75])
    floor = min(q1 - 1.5 * max(q3 - q1, 0.25), done[sft_reward].mean() - 0.5)
    clipped = means["reward"] < floor
    runs_below = bool((done[reward] < floor).any())
    bottom = max(floor, means["reward"].min()) - 0.15 * (means["reward"].max() - floor if clipped.any() else 0)
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    several_lr = done.groupby("method")["learning_rate"].nunique().max() > 1
    for method, runs in done.groupby("method", sort=False):
        kept = runs[~runs["configuration"].map(clipped) & (runs[reward] >= floor)]
        ax.scatter(kept["kl_to_sft"], kept[reward], s=8, alpha=0.25, color=colors[method])
        mine = means[means["method"] == method].sort_values("kl")
        shown = mine[~clipped.loc[mine.index]]
        ax.scatter(shown["kl"], shown["reward"], s=28, color=colors[method])
        # The frontier: the configurations no other of the method beats with less KL (running maximum).
        best = mine[mine["reward"] > mine["reward"].cummax().shift(fill_value=-np.inf)]
        best = best[~clipped.loc[best.index]]
        ax.plot(best["kl"], best["reward"], color=colors[method], label=method)
        for key, point in mine.iterrows():
            knob = _strength(point["params"])
            text = (f"{knob[1]:g}" if knob else "") + (f"/{point['lr']:g}" if several_lr else "")
            y = point["reward"] if not clipped[key] else bottom
            if clipped[key]:
                ax.scatter([point["kl"]], [bottom], marker="v", s=40, color=colors[method], zorder=4)
                text += f" ({point['reward']:.1f})"
            ax.annotate(text, (point["kl"], y), textcoords="offset points", xytext=(3, 3), fontsize=6,
                        color=colors[method])
    if board is not None and not board.empty and len(board) < len(means):  # rings only where the board is a selection
        picked = means.loc[[c for c in board["configuration"] if c in means.index]]
        ax.scatter(picked["kl"], picked["reward"].clip(lower=bottom), s=130, facecolors="none", edgecolors="black",
                   linewidths=1.2, zorder=5, label="on the board")
    if kl_budget:
        ax.axvline(kl_budget, color="black", ls="--", lw=0.9, label=f"KL budget {kl_budget:g} (on validation)")
    ax.scatter([0], [done[sft_reward].mean()], marker="*", s=160, color="black", zorder=5, label="SFT")
    _kl_axis(ax, means["kl"])
    if clipped.any() or runs_below:
        ax.set_ylim(bottom=bottom - 0.05 * (means["reward"].max() - bottom))
    ax.set_xlabel("KL(policy || SFT), nats per response (symlog)")
    ax.set_ylabel(("gold" if use_gold else "judge") + " reward, mean over test prompts (reward units)")
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    strength = "the strength parameter" + (" / learning rate" if several_lr else "")
    return Figure("reward_kl_frontier", "Reward against KL to SFT (the frontier)",
                  f"Each faint dot is one run: its mean {'gold' if use_gold else 'judge'} reward on the test prompts "
                  "against its KL to the SFT model (from plain samples); solid dots are configurations (means over "
                  f"seeds), labelled by {strength}; each line is a method's frontier: the configurations that no other "
                  "configuration of the method beats with less KL. Black rings (where the board is a selection): the picked configurations"
                  + ("; dashed: the selection's KL budget (applied to validation KL, so a pick may sit a little past it "
                     "on the test prompts)" if kl_budget else "")
                  + (f"; a triangle on the bottom edge is a configuration below the axis (its reward in brackets), cut "
                     "off so it does not squash the rest" if clipped.any() else "")
                  + ("; single runs below the axis are not drawn (their configuration's mean is)" if runs_below else "")
                  + ". The star is the SFT model. Up and to the left is better: more reward for less drift.",
                  _png(fig), {"configurations": list(means.index), "clipped": list(means.index[clipped])})


def training_curves_figure(done: pd.DataFrame, board: pd.DataFrame, colors: dict) -> Figure | None:
    import matplotlib
    import matplotlib.pyplot as plt

    panels: dict[str, list] = {}  # one row of panels per method (per board group and method on grouped boards)
    plotted: dict[str, list[str]] = {}
    for _, row in board.iterrows():  # every row on the board, under its own label (never one per method)
        runs = test_runs(done[done["configuration"] == row["configuration"]])
        found = []
        for _, run in runs.iterrows():
            if steps := training_history(run):
                found.append(steps)
                plotted.setdefault(short_label(row, done), []).append(str(run["path"]))
        if found:
            kind = "online" if run["config"].get("online") else "offline"  # offline runs record online: None
            key = f"{row['group']}: {row['method']}" if isinstance(row.get("group"), str) and row.get("group") else row["method"]
            logged = tuple(m for m in CURVES[kind] if any(m in step for steps in found for step in steps))  # no empty panel
            panels.setdefault(key, []).append((short_label(row, done), found, logged, row, run["method_params"]))
    if not panels:
        return None
    ncols = max(len(entries[0][2]) for entries in panels.values())
    fig, axes = plt.subplots(len(panels), ncols, figsize=(3.1 * ncols, 2.6 * len(panels)), squeeze=False)
    cmap = matplotlib.colormaps["plasma"]
    for (key, entries), axrow in zip(panels.items(), axes):
        order = sorted(range(len(entries)), key=lambda i: (_strength(entries[i][4]) or ("", 0))[1])
        shade = {i: cmap(0.85 * rank / max(len(entries) - 1, 1)) for rank, i in enumerate(order)}
        for ax in axrow[len(entries[0][2]):]:
            ax.set_visible(False)
        for i, (label_, runs, keys, *_) in enumerate(entries):
            color = shade[i] if len(entries) > 1 else colors[entries[0][3]["method"]]
            for ax, metric in zip(axrow, keys):
                for j, history in enumerate(runs):
                    steps = [r["step"] for r in history if metric in r]
                    ax.plot(steps, [r[metric] for r in history if metric in r], color=color, alpha=0.75, lw=1,
                            label=label_ if j == 0 and ax is axrow[0] else None)
                ax.set_title(f"{key}: {metric}", fontsize=8)
                ax.set_ylabel(CURVE_UNITS.get(metric, metric), fontsize=7)
                ax.tick_params(labelsize=7)
                ax.grid(alpha=0.3)
        axrow[0].legend(fontsize=6)
    for ax in axes[-1]:
        ax.set_xlabel("optimizer step", fontsize=8)
    fig.tight_layout()
    return Figure("training_curves", "Training curves",
                  "Logged training metrics of every configuration on the board (the runs its test columns read), one "
                  "row of panels per method (and board), one line per seed, coloured by the configuration's strength "
                  "parameter (dark: smallest, light: largest; the legend names each). Offline methods: loss, reward "
                  "margin, and the log-probabilities of the chosen and rejected training responses (nats per "
                  "response; a chosen log-prob that falls far below its start is a policy leaving the SFT "
                  "distribution; records from before the backend logged them for every offline method hold them for "
                  "DPO only, and a panel no run logged is left out); online methods: loss, the reward model's score "
                  "of the rollouts and their KL to the reference. Offline methods log no KL during training (it needs "
                  "samples); their KL is in the table.",
                  _png(fig), {"runs": plotted})


def length_figure(done: pd.DataFrame, colors: dict) -> Figure | None:
    import matplotlib.pyplot as plt

    if "mean_length" not in done.columns:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for method, runs in done.groupby("method", sort=False):
        ax.scatter(runs["mean_length"], runs["win_rate"], s=16, alpha=0.6, color=colors[method], label=method)
    if "mean_length_sft" in done.columns:
        ax.axvline(done["mean_length_sft"].mean(), color="black", lw=0.8, ls="--", label="SFT length")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("mean response length, tokens")
    ax.set_ylabel("judge win rate vs SFT")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return Figure("length_vs_win_rate", "Length against win rate",
                  "One dot per run: mean response length on the test prompts against the judge's win rate over SFT; "
                  "dashed: the SFT model's mean length. A win rate that rises with length (or with brevity) across "
                  "methods says the judge may be rewarding length rather than content: read the gold columns.",
                  _png(fig))


def judge_gold_figure(board: pd.DataFrame, done: pd.DataFrame, colors: dict) -> Figure | None:
    import matplotlib.pyplot as plt

    if "gold_win_rate" not in board.columns or board["gold_win_rate"].isna().all():
        return None
    fig, ax = plt.subplots(figsize=(5.4, 5.2))
    flags = board["judge_gap_flag"].fillna(False).astype(bool) if "judge_gap_flag" in board.columns else \
        pd.Series(False, index=board.index)
    seen = set()
    for (_, row), flagged in zip(board.iterrows(), flags):
        x, y = row["gold_win_rate"], row["win_rate"]
        ax.errorbar([x], [y], xerr=[[x - row["gold_win_rate_low"]], [row["gold_win_rate_high"] - x]],
                    yerr=[[y - row["win_rate_low"]], [row["win_rate_high"] - y]], fmt="X" if flagged else "o",
                    ms=8 if flagged else 5, color=colors[row["method"]], alpha=0.8, capsize=2, lw=0.8,
                    label=row["method"] if row["method"] not in seen else None)
        seen.add(row["method"])
        ax.annotate(short_label(row, done).removeprefix(row["method"]).strip(), (x, y), textcoords="offset points",
                    xytext=(4, -8), fontsize=6, color=colors[row["method"]])
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    low = max(0.0, min(board["gold_win_rate_low"].min(), board["win_rate_low"].min()) - 0.05)
    ax.set_xlim(low, 1), ax.set_ylim(low, 1)
    ax.set_xlabel("gold win rate vs SFT (test prompts)")
    ax.set_ylabel("judge win rate vs SFT (test prompts)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return Figure("judge_vs_gold", "The judge against gold on each board row's own outputs",
                  "One mark per board row (its test seeds pooled, 95% intervals over seeds x prompts on both axes): "
                  "the judge's win rate against the gold reward's on the same test responses. On the dotted diagonal "
                  "the judge and gold agree; a cross is a row the table flags (its judge-gold gap interval excludes 0, "
                  "the rule of the table's FLAG): compare such rows by their gold win rate.",
                  _png(fig), {"flagged": [short_label(r, done) for (_, r), f in zip(board.iterrows(), flags) if f]})


# ---------------------------------------------------------------- findings

def stability_figure(stability: pd.DataFrame, metric: str, colors: dict) -> Figure | None:
    """Each method's picked configuration's test win rate at each KL budget, marked by its verdict."""
    import matplotlib.pyplot as plt

    if stability.empty:
        return None
    budgets = list(dict.fromkeys(stability["kl_budget"]))
    scorers = [("win_rate", "significance", "judge")] + ([("gold_win_rate", "gold_significance", "gold")]
                                                          if "gold_win_rate" in stability.columns else [])
    fig, axes = plt.subplots(1, len(scorers), figsize=(5.2 * len(scorers), 3.8), squeeze=False)
    markers = {"best": "*", "better": "^", "n.s.": "o", "worse": "v", "not comparable": "x"}
    for ax, (column, mark, name) in zip(axes[0], scorers):
        for method, rows in stability.groupby("method", sort=False):
            x = [budgets.index(b) for b in rows["kl_budget"]]
            ax.plot(x, rows[column], color=colors.get(method, "grey"), alpha=0.6, label=method)
            for xi, (_, r) in zip(x, rows.iterrows()):
                ax.scatter([xi], [r[column]], marker=markers.get(r[mark], "o"), s=60 if r[mark] == "best" else 28,
                           color=colors.get(method, "grey"), zorder=3)
        ax.set_xticks(range(len(budgets)), budgets)
        ax.set_xlabel("KL budget of the selection (nats)")
        ax.set_ylabel(f"{name} win rate vs SFT, test prompts")
        ax.set_title(f"{name} verdict", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return Figure("verdict_across_kl_budgets", "The verdict across KL budgets",
                  f"At each KL budget (x axis) each method's configuration is picked again on the validation prompts "
                  f"(best mean validation {metric} win rate within the budget) from the selection-stage runs, and "
                  "judged on their test prompts: a star is the reference row, a triangle up / down a row "
                  "significantly better / worse than it (Holm-corrected), a circle not significantly different. A "
                  "line that jumps, or a marker that changes, is a verdict that depends on the analyst's budget.",
                  _png(fig))


def findings(board: pd.DataFrame, done: pd.DataFrame, stability: pd.DataFrame | None = None,
             edge_notes: dict | None = None) -> list[str]:
    """Sentences that only restate what the numbers show."""
    if board.empty or "win_rate" not in board.columns:
        return ["No completed run with an evaluation: nothing to compare."]
    label = lambda r: short_label(r, done)  # noqa: E731  (the method and only the settings that vary)
    out = []
    boards = board.groupby("group", sort=False) if "group" in board.columns else [("", board)]
    for group, part in boards:
        where = f"At {group}: " if group else ""
        for scorer, prefix in (("judge", ""), ("gold", "gold_")):
            if f"{prefix}significance" not in part.columns:
                continue
            best = part[part[f"{prefix}significance"] == "best"].iloc[0]
            out.append(f"{where}By {scorer}, the reference row (best on validation) is {label(best)}: test win rate "
                       f"{best[f'{prefix}win_rate']:.3f} [{best[f'{prefix}win_rate_low']:.3f}, "
                       f"{best[f'{prefix}win_rate_high']:.3f}] over {best['seeds']} seed(s).")
            for verdict, text in (("n.s.", "Not significantly different from it"), ("better", "Significantly better than it"),
                                  ("worse", "Significantly worse than it")):
                rows = [label(r) for _, r in part.iterrows() if r[f"{prefix}significance"] == verdict]
                if rows:
                    out.append(f"{where}{text} by {scorer} (Holm-corrected over {int(part[f'{prefix}family_size'].max())} "
                               f"comparisons): {'; '.join(rows)}.")
        if "gold_significance" in part.columns:
            differ = [f"{label(r)}: judge {r['significance']}, gold {r['gold_significance']}" for _, r in part.iterrows()
                      if r["significance"] != r["gold_significance"]]
            if differ:
                out.append(f"{where}Judge and gold verdicts differ: {'; '.join(differ)}.")
            if "judge_gold_gap" in part.columns and part["judge_gold_gap"].notna().any():
                gaps = part["judge_gold_gap"].dropna()
                out.append(f"{where}Measured judge bias on these rows' own outputs: judge minus gold win rate "
                           f"{gaps.mean():+.3f} on average ({(gaps > 0).sum()} of {len(gaps)} rows overstated).")
    if "judge_gap_flag" in board.columns:
        for _, r in board[board["judge_gap_flag"].fillna(False).astype(bool)].iterrows():
            side = "overstates" if r["judge_gold_gap"] > 0 else "understates"
            out.append(f"On {label(r)} the judge {side} gold: judge {r['win_rate']:.3f}, gold {r['gold_win_rate']:.3f} "
                       f"(gap {r['judge_gold_gap']:+.3f} [{r['judge_gold_gap_low']:+.3f}, {r['judge_gold_gap_high']:+.3f}], "
                       "interval excluding 0); compare this row by its gold win rate.")
    if "gold_win_rate" not in board.columns:
        out.append("No gold reward on this task: the judge's verdict cannot be checked against the truth here.")
    warning = unequal_data(board)
    if warning:
        out.append(warning)
    for _, r in board.iterrows():
        if r.get("collapsed"):
            out.append(f"{label(r)} collapsed in {r['collapsed']}.")
        if r.get("grid_edge"):
            reason = (edge_notes or {}).get(r["method"])
            out.append(f"{label(r)} sits at the edge of its grid ({r['grid_edge']}): the optimum is not bracketed"
                       + (f" ({reason})." if reason else "."))
    if stability is not None:
        out += fragile_verdicts(stability) or (["No pick or verdict changes across the KL budgets tried."]
                                                if not stability.empty else [])
    collapsed = sorted({f"{run['method']} ({run['params']})" for _, run in done.iterrows() if collapse_reasons(run)}
                       - {f"{r['method']} ({r['params']})" for _, r in board.iterrows() if r.get("collapsed")})
    if collapsed:
        out.append(f"Other configurations with collapsed seeds (not on the board): {'; '.join(collapsed)}.")
    return out


# ---------------------------------------------------------------- rendering

def _html_table(rows: list[dict[str, str]], css: str = "") -> str:
    columns = table_columns(rows)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(row.get(k, '')))}</td>" for k in columns) + "</tr>"
                   for row in rows)
    table = f"<table class=\"{css}\">" if css else "<table>"
    return f'<div class="scroll">{table}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


STYLE = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:.8em}td,th{border:1px solid #ccc;padding:3px 6px;
white-space:nowrap;text-align:left}th{background:#f3f3f3;position:sticky;top:0}figure{margin:1.2em 0}
table.compact td:first-child,table.compact th:first-child{position:sticky;left:0;background:#fff;z-index:1}
table.compact th:first-child{background:#f3f3f3;z-index:2}table.compact td:last-child,
table.compact td:nth-child(2){white-space:normal;min-width:7em}table.examples td{white-space:normal;min-width:6em;
max-width:26em}.verdict{font-size:1.05em;background:#f6f8fa;border-left:4px solid #2a6;padding:.6em 1em}
details{margin:.8em 0}summary{cursor:pointer;font-weight:600}
.img{overflow-x:auto}.img img{max-width:100%;height:auto;border:1px solid #eee}
@media (max-width:700px){body{margin:1em auto;padding:0 .5em}table{font-size:.72em}td,th{padding:2px 4px}
.img img{max-width:none}}figcaption{font-size:.9em;color:#444;max-width:760px}
code{background:#f3f3f3;padding:0 3px}"""


def _inline(text: str) -> str:
    """Escaped HTML of a markdown line's text, `code` spans as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))


def render(blocks: list[tuple], title: str) -> tuple[str, str, dict[str, bytes]]:
    """(markdown, self-contained HTML, {file name: PNG bytes} for the markdown's figures)."""
    md, body, files = [f"# {title}", ""], [f"<h1>{html.escape(title)}</h1>"], {}
    _render(blocks, md, body, files)
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>{html.escape(title)}</title><style>{STYLE}</style>'
            f"</head><body>{''.join(body)}</body></html>\n")
    return "\n".join(md).rstrip() + "\n", page, files


def _render(blocks: list[tuple], md: list[str], body: list[str], files: dict[str, bytes]) -> None:
    """Blocks: (h2|h3, text), (p, text), (verdict, sentences), (ul, items), (table, rows[, css class]),
    (figure, Figure), (details, summary, blocks): a collapsed section."""
    for kind, *content in blocks:
        if kind in ("h2", "h3"):
            md += [f"{'#' * int(kind[1])} {content[0]}", ""]
            body.append(f"<{kind}>{html.escape(content[0])}</{kind}>")
        elif kind == "p":
            md += [content[0], ""]
            body.append(f"<p>{_inline(content[0])}</p>")
        elif kind == "ul":
            md += [f"- {item}" for item in content[0]] + [""]
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in content[0]) + "</ul>")
        elif kind == "verdict":
            md += [" ".join(content[0]), ""]
            body.append(f'<p class="verdict">{_inline(" ".join(content[0]))}</p>')
        elif kind == "table":
            md += [to_markdown(content[0])]
            body.append(_html_table(content[0], *content[1:]))
        elif kind == "details":
            summary, inner = content
            md += [f"<details><summary>{html.escape(summary)}</summary>", ""]
            body.append(f"<details><summary>{html.escape(summary)}</summary>")
            _render(inner, md, body, files)
            md += ["</details>", ""]
            body.append("</details>")
        elif kind == "figure":
            figure: Figure = content[0]
            files[f"{figure.name}.png"] = figure.png
            md += [f"### {figure.title}", "", f"![{figure.title}]({FIGURE_DIR}/{figure.name}.png)", "", figure.caption, ""]
            data = base64.b64encode(figure.png).decode()
            body.append(f'<figure id="{figure.name}"><h3>{html.escape(figure.title)}</h3>'
                        f'<div class="img"><img alt="{html.escape(figure.title)}" src="data:image/png;base64,{data}"></div>'
                        f"<figcaption>{html.escape(figure.caption)}</figcaption></figure>")


def build_report(folders: list[Path]) -> tuple[list[tuple], str, pd.DataFrame, list[Figure]]:
    """The report's content blocks, its title, the board, and its figures."""
    import matplotlib

    matplotlib.use("Agg")
    records, selection, board, stability = boards(*folders)
    spec = stored_spec(folders[0]) if len(folders) == 1 else {}
    done = records[records["status"] == "completed"]
    colors = _colors(list(dict.fromkeys(done["method"])))
    # Runs trained without an evaluation (eval.num_prompts=0) have curves but no outcomes to draw.
    evaluated = done[done["outcomes"].map(lambda o: isinstance(o, dict) and "test" in o)] if not done.empty else done
    figures = [f for f in ((win_rate_figure(evaluated, colors),
                            frontier_figure(evaluated, colors, board, selection.kl_budget if selection else None))
                           if not evaluated.empty else ()) + (training_curves_figure(done, board, colors),)
               + ((length_figure(evaluated, colors), judge_gold_figure(board, evaluated, colors))
                  if not evaluated.empty else ()) if f is not None] if not done.empty else []
    verdict_figure = stability_figure(stability, selection.metric, colors) if stability is not None else None
    names = ", ".join(f"`{display_path(f)}`" for f in folders)
    judges = ", ".join(sorted({str(j) for j in done.get("judge", pd.Series(dtype=str)).dropna()})) or "none"
    rule = (f"each method's configuration with the {selection.mode} mean validation {selection.metric} win rate"
            + (f" among those with mean validation KL <= {selection.kl_budget:g} nats" if selection.kl_budget else "")
            + ", reported on the test prompts" if selection
            else "every configuration, the validation-best row first" + (f", one board per {spec['rank_within']}"
                                                                        if spec.get("rank_within") else ""))
    groups = list(board.groupby("group", sort=False)) if "group" in board.columns else [("", board)]
    compact = [block for group, part in groups
               for block in ([("h3", group)] if group else []) + [("table", compact_rows(part, done), "compact")]]
    full = [block for group, part in groups
            for block in ([("h3", group)] if group else []) + [("table", display_rows(part, selection is not None and not group))]]
    stability_blocks = [("h2", "The verdict across KL budgets"),
                        ("p", "Picks and marks recomputed from the selection-stage runs (picked on their validation "
                              "prompts, judged on their test prompts) at each KL budget; the leaderboard above uses the "
                              "spec's budget and, where the sweep ran one, the fresh-seed test stage."),
                        ("table", stability_rows(stability)),
                        *([("figure", verdict_figure)] if verdict_figure else [])] if stability is not None and not stability.empty else []
    metric = selection.metric if selection else "judge"
    blocks: list[tuple] = [
        ("verdict", verdict(board, done, metric, stability)),
        ("h2", "Task"),
        ("ul", task_card(done, board, selection, folders) if not done.empty else ["No completed run."]),
        ("h2", "Leaderboard"),
        ("p", f"Rows: {rule}. Win rates against SFT with 95% intervals over seeds x distinct prompts; judge / gold: "
              "the mark against the reference row (best on validation), Holm-corrected; LC: length-controlled. The "
              "full table and the glossary are below it."),
        *(compact if not board.empty else [("p", "No completed run.")]),
        ("details", "The full leaderboard (every column)", full if not board.empty else []),
        ("details", "What the columns mean",
         [("ul", [line[2:] for line in legend(board, records, folders[0], selection).splitlines() if line.startswith("- ")])]),
        ("h2", "Findings"),
        ("ul", findings(board, done, stability, spec.get("tuning", {}).get("edge_notes"))),
        *reference_section(board, done),
        *stability_blocks,
        *example_blocks(board, done),
        ("h2", "Collapse"),
        ("p", f"A run is flagged as collapsed when, on the test prompts and relative to the SFT model: {THRESHOLDS_TEXT}. "
              "The leaderboard's `collapsed` column counts the flagged seeds of each row."),
        ("table", _collapsed_rows(done)),
        ("h2", "Figures"),
        *[("figure", f) for f in figures],
        ("p", f"From {len(records)} run records under {names} ({len(done)} completed). Judge: {judges}. "
              f"Regenerate without training: `harness report {' '.join(map(display_path, folders))}`.")]
    title = "Method comparison: " + ", ".join(Path(f).name for f in folders)
    return blocks, title, board, figures


def example_blocks(board: pd.DataFrame, done: pd.DataFrame) -> list[tuple]:
    """Each collapsed row's most degenerate outputs in view; every row's sample outputs (the same prompts for
    every run evaluated with the same seed) in a collapsible section."""
    if board.empty or "examples" not in done.columns or not any(done["examples"].map(bool)):
        return []
    blocks: list[tuple] = [("h2", "Example outputs"),
                           ("p", "From each row's lowest test seed: the policy's response beside the SFT model's to the "
                                 "same prompt, with both scores by the judge and by gold (higher is better). The most "
                                 "degenerate outputs are the run's responses with the most repeated word trigrams, then "
                                 "the longest; samples are prompts drawn by the eval seed, the same for every row.")]
    for _, row in board.iterrows():
        if row.get("collapsed") and (rows := example_rows(row, done, ("most degenerate",))):
            blocks += [("h3", f"{short_label(row, done)}: its most degenerate outputs (collapsed in {row['collapsed']})"),
                       ("table", rows, "examples")]
    samples = [block for _, row in board.iterrows() if (rows := example_rows(row, done))
               for block in (("h3", short_label(row, done)), ("table", rows, "examples"))]
    return blocks + ([("details", "Sample outputs of every row", samples)] if samples else [])


def _collapsed_rows(done: pd.DataFrame) -> list[dict[str, str]]:
    rows = [{"method": r["method"], "params": r["params"], "lr": f"{r['learning_rate']:g}", "seed": str(r["seed"]),
             "reasons": ", ".join(reasons)}
            for _, r in done.iterrows() if (reasons := collapse_reasons(r))]
    return rows or [{"collapsed runs": "none"}]


def write_report(folders: list[str | Path], out: str | Path | None = None) -> tuple[Path, Path, pd.DataFrame, list[Figure]]:
    """Write report.md, report_files/*.png and report.html under `out` (default: the first folder)."""
    folders = [Path(f) for f in folders]
    out = Path(out or folders[0])
    blocks, title, board, figures = build_report(folders)
    markdown, page, files = render(blocks, title)
    for name, data in files.items():
        write_bytes_atomic(out / FIGURE_DIR / name, data)
    write_text_atomic(out / "report.md", markdown)
    write_text_atomic(out / "report.html", page)
    return out / "report.md", out / "report.html", board, figures
