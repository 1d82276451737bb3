"""Length-controlled win rate, as AlpacaEval 2 defines it (Dubois, Galambosi, Liang, Hashimoto 2024,
"Length-Controlled AlpacaEval: A Simple Way to Debias Automatic Evaluators", arXiv:2404.04475).

    P(policy beats SFT on a prompt) = sigmoid(theta + phi * tanh(d / sd(d)))
    d  = len(policy response) - len(SFT response), in characters (AlpacaEval's unit); sd over the fitted rows
    LC win rate = sigmoid(theta): the GLM's prediction at zero length difference

Fitted by maximum likelihood on soft labels (a tie is 1/2), which is AlpacaEval's "length_controlled_minimal"
GLM (`np.tanh(std_delta_len) + not_gamed_baseline - 1`). AlpacaEval 2's default adds an instruction-
difficulty term estimated from its own leaderboard's models and a pull towards its gamed baselines: neither
exists for a new prompt set, so the minimal GLM is the one that transfers. tests/test_length_control.py
checks this fit against alpaca-eval 0.6.6's own `fit_LogisticRegressionCV` on fixed data.

Valid when the judge's preference moves with length monotonically and the policy's length differs from
SFT's on enough prompts to estimate the slope; with no spread in d the slope is not identified and the LC
win rate is the raw one. Predicting at zero length difference is an extrapolation unless the data holds
comparisons on both sides of it: it refuses (None; `refusal` says why) unless at least MIN_SUPPORT of the
comparisons have the policy no longer than SFT and MIN_SUPPORT no shorter (a run whose every answer is
three times SFT's length has no comparison near zero to stand on), or with fewer than MIN_COMPARISONS
comparisons. Like AlpacaEval, a change of more than 0.10 from the raw win rate is flagged (`lc_warning`).

The interval resamples seeds and distinct prompts as every other interval here (evals/aggregate.py),
refitting the GLM on each replicate; sd(d) is that of the full sample (a fixed feature scale).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .aggregate import LEVEL, N_BOOT

MIN_COMPARISONS = 20
MIN_SUPPORT = 0.10  # share of comparisons needed on each side of zero length difference
WARN_CHANGE = 0.10  # AlpacaEval's get_is_extreme_changes: 10 win-rate points
_RIDGE = 1e-9  # keeps the 2 x 2 Newton system invertible when a replicate has no length spread


def expit(z):
    """The logistic function without overflow."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


@dataclass(frozen=True)
class LengthControlled:
    rate: float  # sigmoid(theta)
    low: float
    high: float
    length_coef: float  # phi: the judge's pull towards longer (> 0) or shorter (< 0) answers
    raw: float  # the plain win rate on the same comparisons
    warning: bool  # |rate - raw| > WARN_CHANGE


def features(length_diff) -> np.ndarray:
    """tanh of the standardised length difference (pandas' sd, ddof=1, as AlpacaEval); 0 where d has no spread."""
    d = np.asarray(length_diff, dtype=np.float64)
    sd = d.std(ddof=1) if d.size > 1 else 0.0
    return np.tanh(d / sd) if sd > 0 else np.zeros_like(d)


def fit(y: np.ndarray, x: np.ndarray, weights: np.ndarray | None = None, iterations: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(theta, phi) maximising sum_i w_i [y_i log p_i + (1 - y_i) log(1 - p_i)], p_i = sigmoid(theta + phi x_i),
    for every row of `weights` (replicates x rows; None = one fit with unit weights) at once, by Newton's method
    (the log-likelihood is concave)."""
    w = np.ones((1, len(y))) if weights is None else np.asarray(weights, dtype=np.float64)
    beta = np.zeros((w.shape[0], 2))
    design = np.stack([np.ones_like(x), x], axis=1)  # rows x 2
    for _ in range(iterations):
        p = expit(beta @ design.T)  # replicates x rows
        gradient = (w * (y - p)) @ design
        h00, h01, h11 = ((w * p * (1 - p)) @ np.stack([np.ones_like(x), x, x * x], axis=1)).T
        hessian = np.stack([np.stack([h00, h01], -1), np.stack([h01, h11], -1)], -2) + _RIDGE * np.eye(2)
        step = np.linalg.solve(hessian, gradient[:, :, None])[:, :, 0]
        beta += step
        if np.abs(step).max() < 1e-10:
            break
    return beta[:, 0], beta[:, 1]


def _counts(draws: np.ndarray, n: int) -> np.ndarray:
    """How often each of 0..n-1 occurs in each row of `draws` (replicates x draws), as float64."""
    rows = draws.shape[0]
    flat = (np.arange(rows)[:, None] * n + draws).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float64)


def refusal(length_diff) -> str | None:
    """Why the LC win rate cannot be estimated from these length differences, or None when it can."""
    d = np.asarray(length_diff, dtype=np.float64).ravel()
    if d.size < MIN_COMPARISONS:
        return f"{d.size} comparisons, fewer than {MIN_COMPARISONS}"
    shorter, longer = float(np.mean(d <= 0)), float(np.mean(d >= 0))
    if min(shorter, longer) < MIN_SUPPORT:
        side = "longer" if longer > shorter else "shorter"
        return f"{max(1 - shorter, 1 - longer):.0%} of answers {side} than SFT's: zero length difference is outside the data"
    return None


def length_controlled(outcomes, length_diff, clusters=None, n_boot: int = N_BOOT, seed: int = 0) -> LengthControlled | None:
    """LC win rate of a seeds x prompts matrix of outcomes (1 win, 1/2 tie, 0 loss) with the matching
    policy-minus-SFT length differences (characters), and its 95% interval over seeds x distinct prompts
    (`clusters`: each column's prompt id; repeats of a prompt are drawn together). None when it cannot be
    estimated (see `refusal`)."""
    y = np.atleast_2d(np.asarray(outcomes, dtype=np.float64))
    d = np.atleast_2d(np.asarray(length_diff, dtype=np.float64))
    if y.shape != d.shape:
        raise ValueError(f"outcomes {y.shape} and length differences {d.shape} must have the same shape")
    if refusal(d) is not None:
        return None
    # A report and its leaderboard ask for the same configurations' LC (the board, the KL-budget table): each
    # distinct input is fitted once per process (1,000 refits are most of a report's time).
    key = hashlib.sha256(b"".join([repr((y.shape, n_boot, seed)).encode(), y.tobytes(), d.tobytes(),
                                   b"" if clusters is None else np.asarray(clusters).tobytes()])).digest()
    if key not in _FITTED:
        _FITTED[key] = _length_controlled(y, d, clusters, n_boot, seed)
    return _FITTED[key]


_FITTED: dict[bytes, LengthControlled] = {}


def _length_controlled(y: np.ndarray, d: np.ndarray, clusters, n_boot: int, seed: int) -> LengthControlled:
    n_seeds, n_prompts = y.shape
    x = features(d.ravel())
    theta, phi = fit(y.ravel(), x)
    rate = float(expit(theta[0]))
    # replicate weights: how often each (seed, prompt) is drawn when seeds and distinct prompts are resampled
    rng = np.random.default_rng(seed)
    ids = np.arange(n_prompts) if clusters is None else np.unique(np.asarray(clusters), return_inverse=True)[1]
    n_clusters = ids.max() + 1
    seed_counts = _counts(rng.integers(0, n_seeds, size=(n_boot, n_seeds)), n_seeds)
    cluster_counts = _counts(rng.integers(0, n_clusters, size=(n_boot, n_clusters)), n_clusters)
    weights = (seed_counts[:, :, None] * cluster_counts[:, ids][:, None, :]).reshape(n_boot, -1)
    replicates = expit(fit(y.ravel(), x, weights)[0])
    low, high = np.percentile(replicates, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    raw = float(y.mean())
    return LengthControlled(rate, float(low), float(high), float(phi[0]), raw, abs(rate - raw) > WARN_CHANGE)
