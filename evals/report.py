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
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .aggregate import seed_prompt_interval
from .rows import prompt_clusters, test_runs
from .collapse import THRESHOLDS_TEXT, collapse_reasons
from .leaderboard import display_rows, leaderboard, legend, stability_rows, table_columns, to_markdown, unequal_data
from .selection import fragile_verdicts, kl_stability, select_best, stored_selection, stored_spec
from .store import display_path, load_records

FIGURE_DIR = "report_files"
CURVES = {"offline": ("loss", "margins", "accuracy"), "online": ("loss", "rollout/score", "rollout/kl")}


@dataclass
class Figure:
    name: str
    title: str
    caption: str  # what the figure shows and what to conclude from it
    png: bytes


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buffer.getvalue()


def _colors(methods: list[str]) -> dict[str, str]:
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]
    return {m: palette[i % len(palette)] for i, m in enumerate(methods)}


def _strength(method_params: dict) -> tuple[str, float] | None:
    """The method's first declared hyperparameter (its KL-strength knob: beta, tau, lambda) and its value."""
    for key, value in method_params.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
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
                ax.scatter([x] * len(config), config["win_rate"], s=10, color=colors[method], alpha=0.35)
            points.sort()
            xs, mean, low, high, gold = map(np.asarray, zip(*points))
            line = ax.errorbar(xs, mean, yerr=[mean - low, high - mean], marker="o", capsize=3,
                               label=f"lr {lr:g}" if several else "judge", color=None if several else colors[method])
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
                  "(where the task knows it); one colour per learning rate where several were tried. Dotted: "
                  "0.5, no better than SFT. Where two points' bars overlap, their order is not established.",
                  _png(fig))


def frontier_figure(done: pd.DataFrame, colors: dict) -> Figure | None:
    import matplotlib.pyplot as plt

    use_gold = "gold_reward" in done.columns and done["gold_reward"].notna().all()
    reward, sft_reward = ("gold_reward", "gold_reward_sft") if use_gold else ("judge_reward", "judge_reward_sft")
    if reward not in done.columns or "kl_to_sft" not in done.columns:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, runs in done.groupby("method", sort=False):
        ax.scatter(runs["kl_to_sft"], runs[reward], s=10, alpha=0.3, color=colors[method])
        means = runs.groupby("configuration")[["kl_to_sft", reward]].mean().sort_values("kl_to_sft")
        ax.scatter(means["kl_to_sft"], means[reward], s=28, color=colors[method])
        # The frontier: the configurations no other of the method beats with less KL (running maximum).
        best = means[means[reward] > means[reward].cummax().shift(fill_value=-np.inf)]
        ax.plot(best["kl_to_sft"], best[reward], marker="o", color=colors[method], label=method)
    ax.scatter([0], [done[sft_reward].mean()], marker="*", s=160, color="black", zorder=5, label="SFT")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("KL(policy || SFT), nats per response (symlog)")
    ax.set_ylabel(("gold" if use_gold else "judge") + " reward, mean over test prompts")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return Figure("reward_kl_frontier", "Reward against KL to SFT (the frontier)",
                  f"Each faint dot is one run: its mean {'gold' if use_gold else 'judge'} reward on the test prompts "
                  "against its KL to the SFT model (from plain samples); solid dots are configurations (means over "
                  "seeds), and each line is a method's frontier: the configurations that no other configuration of "
                  "the method beats with less KL. The star is the SFT model. Up and to the left is better: more reward "
                  "for less drift. A method whose frontier lies above another's at equal KL uses its KL budget better.",
                  _png(fig))


def training_curves_figure(done: pd.DataFrame, board: pd.DataFrame, colors: dict) -> Figure | None:
    import matplotlib.pyplot as plt

    histories = {}
    for _, row in board.iterrows():  # every row on the board, under its own label (never one per method)
        runs = test_runs(done[done["configuration"] == row["configuration"]])
        found = []
        for _, run in runs.iterrows():
            path = Path(run["path"]) / "metrics.jsonl"
            if path.is_file():
                found.append([r for r in map(json.loads, path.read_text().splitlines()) if "step" in r])
        if found:
            kind = "online" if run["config"].get("online") else "offline"  # offline runs record online: None
            label = f"{row['method']} {row['params']} lr {row['learning_rate']:g}"
            histories[label] = (found, CURVES[kind], row["method"])
    if not histories:
        return None
    fig, axes = plt.subplots(len(histories), 3, figsize=(10, 2.3 * len(histories)), squeeze=False)
    for (label, (runs, keys, method)), axrow in zip(histories.items(), axes):
        for ax, key in zip(axrow, keys):
            for history in runs:
                steps = [r["step"] for r in history if key in r]
                ax.plot(steps, [r[key] for r in history if key in r], color=colors[method], alpha=0.7, lw=1)
            ax.set_title(f"{label}: {key}", fontsize=8)
            ax.tick_params(labelsize=7)
        axrow[0].set_ylabel("value", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("optimizer step", fontsize=8)
    fig.tight_layout()
    return Figure("training_curves", "Training curves",
                  "Logged training metrics of every configuration in the leaderboard (one row of panels each, the "
                  "runs its test columns read), one line per seed "
                  "(window means over log_steps). Offline methods: loss, reward margin, pairwise accuracy on the "
                  "training batches; online methods: loss, the reward model's score of the rollouts, their KL to the "
                  "reference. Seeds that part ways show how much of a row's spread is training noise.", _png(fig))


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


def judge_gold_figure(done: pd.DataFrame, colors: dict) -> Figure | None:
    import matplotlib.pyplot as plt

    if "gold_win_rate" not in done.columns or done["gold_win_rate"].isna().all():
        return None
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    for method, runs in done.groupby("method", sort=False):
        flagged = runs["judge_gap_flag"].fillna(False).astype(bool) if "judge_gap_flag" in runs.columns else \
            pd.Series(False, index=runs.index)
        ax.scatter(runs.loc[~flagged, "gold_win_rate"], runs.loc[~flagged, "win_rate"], s=18, alpha=0.7,
                   color=colors[method], label=method)
        ax.scatter(runs.loc[flagged, "gold_win_rate"], runs.loc[flagged, "win_rate"], s=50, marker="x",
                   color=colors[method])
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.set_xlim(0, 1), ax.set_ylim(0, 1)
    ax.set_xlabel("gold win rate vs SFT")
    ax.set_ylabel("judge win rate vs SFT")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return Figure("judge_vs_gold", "The judge against gold on each run's own outputs",
                  "One mark per run: the judge's win rate against the gold reward's on the same test responses. On "
                  "the dotted diagonal the judge and gold agree; x marks a run whose judge-gold gap interval excludes "
                  "0 (the judge is fooled, or too strict, on that run's outputs): compare such runs by their gold win rate.",
                  _png(fig))


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
    label = lambda r: f"{r['method']} ({r['params']}, lr {r['learning_rate']:g})"  # noqa: E731
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

def _html_table(rows: list[dict[str, str]]) -> str:
    columns = table_columns(rows)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(row.get(k, '')))}</td>" for k in columns) + "</tr>"
                   for row in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


STYLE = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:.8em}td,th{border:1px solid #ccc;padding:3px 6px;
white-space:nowrap;text-align:left}th{background:#f3f3f3;position:sticky;top:0}figure{margin:1.2em 0}
.img{overflow-x:auto}.img img{max-width:100%;height:auto;border:1px solid #eee}
@media (max-width:700px){.img img{max-width:none}}figcaption{font-size:.9em;color:#444;max-width:760px}
code{background:#f3f3f3;padding:0 3px}"""


def _inline(text: str) -> str:
    """Escaped HTML of a markdown line's text, `code` spans as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))


def render(blocks: list[tuple], title: str) -> tuple[str, str, dict[str, bytes]]:
    """(markdown, self-contained HTML, {file name: PNG bytes} for the markdown's figures)."""
    md, body, files = [f"# {title}", ""], [f"<h1>{html.escape(title)}</h1>"], {}
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
        elif kind == "table":
            md += [to_markdown(content[0])]
            body.append(_html_table(content[0]))
        elif kind == "figure":
            figure: Figure = content[0]
            files[f"{figure.name}.png"] = figure.png
            md += [f"### {figure.title}", "", f"![{figure.title}]({FIGURE_DIR}/{figure.name}.png)", "", figure.caption, ""]
            data = base64.b64encode(figure.png).decode()
            body.append(f'<figure id="{figure.name}"><h3>{html.escape(figure.title)}</h3>'
                        f'<div class="img"><img alt="{html.escape(figure.title)}" src="data:image/png;base64,{data}"></div>'
                        f"<figcaption>{html.escape(figure.caption)}</figcaption></figure>")
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>{html.escape(title)}</title><style>{STYLE}</style>'
            f"</head><body>{''.join(body)}</body></html>\n")
    return "\n".join(md).rstrip() + "\n", page, files


def build_report(folders: list[Path]) -> tuple[list[tuple], str, pd.DataFrame, list[Figure]]:
    """The report's content blocks, its title, the board, and its figures."""
    import matplotlib

    matplotlib.use("Agg")
    records = load_records(*folders)
    done = records[records["status"] == "completed"]
    selection = stored_selection(folders[0]) if len(folders) == 1 else None
    spec = stored_spec(folders[0]) if len(folders) == 1 else {}
    board = select_best(records, selection) if selection else leaderboard(records, spec.get("rank_within"))
    stability = kl_stability(records, selection) if selection else None
    colors = _colors(list(dict.fromkeys(done["method"])))
    figures = [f for f in (win_rate_figure(done, colors), frontier_figure(done, colors),
                           training_curves_figure(done, board, colors), length_figure(done, colors),
                           judge_gold_figure(done, colors)) if f is not None] if not done.empty else []
    verdict_figure = stability_figure(stability, selection.metric, colors) if stability is not None else None
    names = ", ".join(f"`{display_path(f)}`" for f in folders)
    judges = ", ".join(sorted({str(j) for j in done.get("judge", pd.Series(dtype=str)).dropna()})) or "none"
    rule = (f"each method's configuration with the {selection.mode} mean validation {selection.metric} win rate"
            + (f" among those with mean validation KL <= {selection.kl_budget:g} nats" if selection.kl_budget else "")
            + ", reported on the test prompts" if selection
            else "every configuration, the validation-best row first" + (f", one board per {spec['rank_within']}"
                                                                        if spec.get("rank_within") else ""))
    tables = ([("h3", group), ("table", display_rows(part, False))] for group, part in board.groupby("group", sort=False)) \
        if "group" in board.columns else [[("table", display_rows(board, selection is not None))]]
    stability_blocks = [("h2", "The verdict across KL budgets"),
                        ("p", "Picks and marks recomputed from the selection-stage runs (picked on their validation "
                              "prompts, judged on their test prompts) at each KL budget; the leaderboard above uses the "
                              "spec's budget and, where the sweep ran one, the fresh-seed test stage."),
                        ("table", stability_rows(stability)),
                        *([("figure", verdict_figure)] if verdict_figure else [])] if stability is not None and not stability.empty else []
    blocks: list[tuple] = [
        ("p", f"From {len(records)} run records under {names} ({len(done)} completed). Judge: {judges}. "
              f"Regenerate without training: `harness report {' '.join(map(display_path, folders))}`."),
        ("h2", "Leaderboard"),
        ("p", f"Rows: {rule}. What the columns mean:"),
        ("ul", [line[2:] for line in legend(board, records, folders[0], selection).splitlines() if line.startswith("- ")]),
        *([block for part in tables for block in part] if not board.empty else [("p", "No completed run.")]),
        ("h2", "Findings"),
        ("ul", findings(board, done, stability, spec.get("tuning", {}).get("edge_notes"))),
        *stability_blocks,
        ("h2", "Collapse"),
        ("p", f"A run is flagged as collapsed when, on the test prompts and relative to the SFT model: {THRESHOLDS_TEXT}. "
              "The leaderboard's `collapsed` column counts the flagged seeds of each row."),
        ("table", _collapsed_rows(done)),
        ("h2", "Figures"),
        *[("figure", f) for f in figures]]
    title = "Method comparison: " + ", ".join(Path(f).name for f in folders)
    return blocks, title, board, figures


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
    out.mkdir(parents=True, exist_ok=True)
    (out / FIGURE_DIR).mkdir(exist_ok=True)
    for name, data in files.items():
        (out / FIGURE_DIR / name).write_bytes(data)
    (out / "report.md").write_text(markdown)
    (out / "report.html").write_text(page)
    return out / "report.md", out / "report.html", board, figures
