"""The tuning protocol of a comparison: where a method's pick sits at the edge of a swept axis, extend that
axis one step beyond it, and tune again, until every pick is interior, the axis reaches its stated limit,
or the rounds run out (what is left at an edge is flagged with the reason).

One step beyond an edge is the grid's own spacing there: geometric (edge x edge / neighbour) for a
positive axis such as a learning rate or beta, arithmetic otherwise; a step past a limit stops at the
limit. The new configuration is the pick with that one setting moved (a line search along the axis), so
an extension adds one configuration per edge, and the tuning budget of every method is shown on the board.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

SEED = "train.seed"


def _numeric(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _round(value: float) -> float:
    return float(f"{value:.3g}")  # 1.6e-3, not 1.6000000000000003e-3


def swept_axes(points: list[dict[str, Any]]) -> dict[str, list[float]]:
    """The numeric settings that take more than one value among a method's configurations, sorted."""
    keys = dict.fromkeys(k for p in points for k in p if k not in (SEED, "method.name"))
    axes = {}
    for key in keys:
        values = [p.get(key) for p in points]
        if all(_numeric(v) for v in values) and len(set(values)) > 1:
            axes[key] = sorted(set(values))
    return axes


def extensions(points: list[dict[str, Any]], pick: dict[str, Any], limits: dict[str, list[float]]
               ) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The configurations that extend each axis where `pick` sits at an edge, and for each edge that
    cannot be extended, why (key -> reason)."""
    new, stuck = [], {}
    for key, values in swept_axes(points).items():
        value = pick[key]
        if value not in (values[0], values[-1]):
            continue
        high = value == values[-1]
        edge, neighbour = (values[-1], values[-2]) if high else (values[0], values[1])
        step = edge * edge / neighbour if edge > 0 and neighbour > 0 else edge + (edge - neighbour)
        low_limit, high_limit = limits.get(key, [-np.inf, np.inf])
        if edge <= 0 < neighbour and not high:
            stuck[key] = "lowest at 0, the natural bound"
            continue
        target = min(step, high_limit) if high else max(step, low_limit)
        if target == edge or (high and edge >= high_limit) or (not high and edge <= low_limit):
            stuck[key] = f"{'highest' if high else 'lowest'} at its limit {edge:g}"
            continue
        moved = {**pick, key: _round(target)}
        if all(moved != p for p in points):
            new.append(moved)
    return new, stuck


def tune_until_bracketed(points: dict[str, list[dict[str, Any]]],
                         pick: Callable[[dict[str, list[dict[str, Any]]]], dict[str, dict[str, Any]]],
                         limits: dict[str, list[float]], rounds: int
                         ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, Any]], dict[str, str], int]:
    """Tune (`pick`: method -> its chosen configuration, given every method's configurations tried so far),
    then extend edges and tune again, at most `rounds` times. Returns the configurations tried, the final
    picks, why a remaining edge stayed (method -> reason) and the number of extension rounds run."""
    points = {method: list(p) for method, p in points.items()}
    chosen = pick(points)
    ran = 0
    for _ in range(rounds):
        added = {method: extensions(points[method], chosen[method], limits)[0] for method in points}
        if not any(added.values()):
            break
        for method, new in added.items():
            points[method] += new
        chosen, ran = pick(points), ran + 1
    notes = {}
    for method in points:
        new, stuck = extensions(points[method], chosen[method], limits)
        reasons = [f"{k} {why}" for k, why in stuck.items()]
        if new:
            reasons.append(f"{', '.join(k for k in swept_axes(points[method]) if any(n[k] != chosen[method][k] for n in new))}"
                           f" still at an edge after {ran} extension round(s) (the limit of rounds)")
        if reasons:
            notes[method] = "; ".join(reasons)
    return points, chosen, notes, ran
