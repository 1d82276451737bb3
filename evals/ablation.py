"""The reference ablation (exercise 18.3.2), from the records: what each reference variant of a method
(methods.REFERENCES: frozen, none, co_trained, ema) did to the policy, and the answer the numbers give.

The exercise asks what DPO does without its reference term (the loss of log pi(y_w) - log pi(y_l) alone) and
why the reference is frozen rather than co-trained. Its answer sketch: with no anchor the policy drifts
without bound and forgets; a co-trained reference moves with the policy, so the regularisation vanishes.
The section reports, per variant, the training responses' log-probs at the first and last logged step, the
policy's own margin log pi(y_w) - log pi(y_l) (the same quantity for every variant, unlike the loss's
reward margin, which is 0 by construction for a co-trained reference), and the eval columns of the board.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .leaderboard import _interval
from .rows import test_runs
from .summary import training_history

VARIANT_COLORS = {"frozen": "#1f77b4", "none": "#d62728", "co_trained": "#ff7f0e", "ema": "#2ca02c"}


def variant(run_or_row) -> str:
    return (run_or_row.get("method_params") or {}).get("reference", "frozen")


def reference_varies(done: pd.DataFrame) -> bool:
    return not done.empty and done.apply(variant, axis=1).nunique() > 1


def _histories(row, done: pd.DataFrame) -> list[list[dict]]:
    runs = test_runs(done[done["configuration"] == row["configuration"]])
    return [h for h in (training_history(r) for _, r in runs.iterrows()) if h and "logps/chosen" in h[0]]


def _mean_at(histories: list[list[dict]], key: str, index: int) -> float:
    return float(np.mean([h[index][key] for h in histories]))


def variant_rows(board: pd.DataFrame, done: pd.DataFrame) -> list[dict]:
    """Per board row: its variant, the log-probs at the first and last logged step (means over the seeds the
    test columns read) and the board's eval columns."""
    out = []
    for _, row in board.iterrows():
        runs = done[done["configuration"] == row["configuration"]]
        histories = _histories(row, done)
        if runs.empty or not histories:
            continue
        first = {k: _mean_at(histories, f"logps/{k}", 0) for k in ("chosen", "rejected")}
        last = {k: _mean_at(histories, f"logps/{k}", -1) for k in ("chosen", "rejected")}
        out.append({"variant": variant(runs.iloc[0]), "row": row, "seeds": len(histories), "first": first, "last": last,
                    "margin": last["chosen"] - last["rejected"], "margin_first": first["chosen"] - first["rejected"]})
    return out


def _table(rows: list[dict]) -> list[dict[str, str]]:
    """One row per variant; the SFT model's length and repeat rate (the same for every row) in the headers."""
    def number(row, key, digits=2):
        value = row.get(key)
        return "" if value is None or pd.isna(value) else f"{value:.{digits}f}"

    sft = rows[0]["row"]
    length, repeats = (f"length (SFT {number(sft, 'mean_length_sft', 1)})",
                       f"repeats (SFT {number(sft, 'repeat_rate_sft')})")
    return [{"reference": r["variant"],
             "log pi(y_w)": f"{r['first']['chosen']:.1f} → {r['last']['chosen']:.1f}",
             "log pi(y_l)": f"{r['first']['rejected']:.1f} → {r['last']['rejected']:.1f}",
             "margin": f"{r['margin_first']:.1f} → {r['margin']:.1f}",
             "KL": number(r["row"], "kl_to_sft", 1),
             length: number(r["row"], "mean_length", 1), repeats: number(r["row"], "repeat_rate"),
             "judge win": _interval(r["row"], "win_rate"), "gold win": _interval(r["row"], "gold_win_rate"),
             "collapsed": str(r["row"].get("collapsed") or "0").split(":")[0]} for r in rows]  # reasons: above


def _log_ticks(ax) -> None:
    """Plain-number ticks on a symlog axis (matplotlib's own give only powers of ten)."""
    from matplotlib.ticker import FuncFormatter, NullLocator

    low, high = ax.get_ylim()
    marks = [m * sign for sign in (-1, 1) for m in (10, 20, 30, 50, 100, 200, 300, 500, 1000)] + [0]
    ax.set_yticks(sorted(m for m in marks if low <= m <= high))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))


def answer(rows: list[dict]) -> list[str]:
    """The exercise's two questions answered from the numbers, each claim with the figures behind it."""
    by = {r["variant"]: r for r in rows}
    frozen = by.get("frozen")
    if frozen is None:
        return ["No frozen-reference row to compare the variants with."]
    kl = lambda r: r["row"].get("kl_to_sft")  # noqa: E731
    lines = [f"Frozen reference (the method as published): log pi(chosen) {frozen['first']['chosen']:.1f} -> "
             f"{frozen['last']['chosen']:.1f}, log pi(rejected) {frozen['first']['rejected']:.1f} -> "
             f"{frozen['last']['rejected']:.1f}, KL to SFT {kl(frozen):.1f} nats, gold win rate "
             f"{_interval(frozen['row'], 'gold_win_rate')}."]
    for name, what in (("none", "No reference (the exercise's loss)"), ("co_trained", "A co-trained reference"),
                       ("ema", "An EMA reference")):
        r = by.get(name)
        if r is None:
            continue
        ratio = kl(r) / kl(frozen) if kl(frozen) else float("nan")
        collapsed = r["row"].get("collapsed")
        lines.append(
            f"{what}: log pi(chosen) {r['first']['chosen']:.1f} -> {r['last']['chosen']:.1f} and log pi(rejected) "
            f"{r['first']['rejected']:.1f} -> {r['last']['rejected']:.1f} (margin {r['margin']:.1f} nats against frozen's "
            f"{frozen['margin']:.1f}); KL to SFT {kl(r):.1f} nats ({ratio:.1f}x frozen's), length "
            f"{r['row'].get('mean_length', float('nan')):.1f} tokens, repeat rate {r['row'].get('repeat_rate', float('nan')):.2f}, "
            f"gold win rate {_interval(r['row'], 'gold_win_rate')}"
            + (f"; collapsed in {collapsed}" if collapsed else "") + ".")
    def compare(r) -> str:
        more = lambda key: "more" if r["row"].get(key, 0) > frozen["row"].get(key, 0) else "less"  # noqa: E731
        return (f"it drifted {more('kl_to_sft')} than frozen ({kl(r):.1f} against {kl(frozen):.1f} nats), its outputs "
                f"were {'longer' if more('mean_length') == 'more' else 'shorter'} ({r['row']['mean_length']:.1f} against "
                f"{frozen['row']['mean_length']:.1f} tokens) and {more('repeat_rate')} repetitive (repeat rate "
                f"{r['row']['repeat_rate']:.2f} against {frozen['row']['repeat_rate']:.2f}), and its gold win rate "
                f"{'rose' if more('gold_win_rate') == 'more' else 'fell'} ({r['row']['gold_win_rate']:.3f} against "
                f"{frozen['row']['gold_win_rate']:.3f})")

    if "none" in by:
        lines.append(f"Without the reference term: {compare(by['none'])}. The exercise predicts unbounded drift; "
                     + ("here the drift exceeds the frozen reference's." if kl(by["none"]) > kl(frozen) else
                        "in these 150 steps the missing anchor shows as longer, more repetitive outputs rather than as "
                        "more drift."
                        if by["none"]["row"]["repeat_rate"] > frozen["row"]["repeat_rate"] else
                        "it is not borne out in these steps."))
    if "co_trained" in by:
        r = by["co_trained"]
        lines.append(f"Why frozen and not co-trained: with the reference equal to the policy every log-ratio is 0, so the "
                     f"loss is log 2 whatever the weights and its gradient never shrinks; {compare(r)}"
                     + (f", collapsing in {r['row']['collapsed']}" if r["row"].get("collapsed") else "")
                     + (". The regularisation vanishes, as the exercise's answer says." if kl(r) > kl(frozen) else
                        ". The prediction is not borne out in these steps."))
    return lines


def reference_figure(rows: list[dict], done: pd.DataFrame):
    """Mean log-probs of the chosen and rejected training responses, and their difference, over training."""
    import matplotlib.pyplot as plt

    from .report import Figure, _png

    fig, (left, right) = plt.subplots(1, 2, figsize=(8.4, 3.0))
    plotted = {}
    for r in rows:
        histories = _histories(r["row"], done)
        steps = [s["step"] for s in histories[0]]
        color = VARIANT_COLORS.get(r["variant"], "#7f7f7f")
        mean = {k: np.mean([[s[f"logps/{k}"] for s in h] for h in histories], axis=0) for k in ("chosen", "rejected")}
        left.plot(steps, mean["chosen"], color=color, lw=1.4, label=f"{r['variant']}: chosen")
        left.plot(steps, mean["rejected"], color=color, lw=1.4, ls="--", label=f"{r['variant']}: rejected")
        right.plot(steps, mean["chosen"] - mean["rejected"], color=color, lw=1.4, label=r["variant"])
        plotted[r["variant"]] = {"steps": steps, "chosen": mean["chosen"].tolist(), "rejected": mean["rejected"].tolist()}
    left.set_ylabel("log-prob of the training response (nats)", fontsize=7)
    right.set_ylabel("log pi(y_w) - log pi(y_l) (nats)", fontsize=7)
    for ax in (left, right):  # symlog: a run that falls by hundreds of nats does not flatten the others
        ax.set_yscale("symlog", linthresh=10)
        _log_ticks(ax)
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    left.legend(fontsize=6, ncol=2)
    right.legend(fontsize=6)
    fig.tight_layout()
    return Figure("reference_ablation", "Reference variants over training",
                  "Left: the policy's summed log-probability of the chosen (solid) and rejected (dashed) training "
                  "responses, mean over the seeds of each variant, per logged step; right: their difference, the "
                  "policy's own margin, which means the same for every variant (the loss's reward margin does not: it "
                  "is 0 throughout for a co-trained reference). Both axes are symlog (linear within 10 nats of 0, "
                  "logarithmic beyond), so a variant that falls by hundreds of nats leaves the others readable.",
                  _png(fig), {"variants": plotted})


def reference_section(board: pd.DataFrame, done: pd.DataFrame) -> list[tuple]:
    """The report's blocks for a board whose rows differ in their reference variant, else []."""
    if not reference_varies(done):
        return []
    rows = variant_rows(board, done)
    if not rows:
        return []
    return [("h2", "Reference ablation (exercise 18.3.2)"),
            ("p", "What DPO does without its reference term, and why the reference is frozen rather than co-trained: "
                  "each variant's training log-probs (first and last logged step, mean over seeds), its drift from SFT "
                  "and its outputs' length and repetition on the test prompts, and its win rates against SFT."),
            ("ul", answer(rows)),
            ("table", _table(rows), "compact"),
            ("figure", reference_figure(rows, done))]
