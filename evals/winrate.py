"""Win rate against the SFT model, with ties counted as one half and a bootstrap interval over prompts."""

from __future__ import annotations

from dataclasses import astuple, dataclass

import numpy as np


@dataclass(frozen=True)
class WinRate:
    """Unpacks as the contract's `rate, low, high, wins, ties, losses`; `soft` and `num_prompts` are extra."""

    rate: float
    low: float  # 95% bootstrap interval over prompts
    high: float
    wins: int  # comparisons (k x k per prompt with k samples per prompt; one per prompt when k = 1)
    ties: int
    losses: int
    soft: float  # mean sigmoid(r_policy - r_sft): no threshold, no ties
    num_prompts: int

    def __iter__(self):
        return iter(astuple(self)[:6])


def _as_matrix(scores, name: str) -> np.ndarray:
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(f"{name}: expected one score per prompt (or prompts x samples), got shape {array.shape}")
    bad = np.argwhere(~np.isfinite(array))
    if len(bad):
        raise ValueError(f"{name}: score of prompt {bad[0][0]} is {array[tuple(bad[0])]}: the scorer must return finite numbers")
    return array


def prompt_outcomes(policy_scores, sft_scores, tie_eps: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt, every policy sample is compared with every SFT sample: win 1, tie (|diff| <= tie_eps) 1/2,
    loss 0. Returns the outcome of each prompt (its k x k comparisons averaged) and the score differences
    (prompts x k_policy x k_sft)."""
    policy, sft = _as_matrix(policy_scores, "policy_scores"), _as_matrix(sft_scores, "sft_scores")
    if policy.shape[0] != sft.shape[0]:
        raise ValueError(f"policy has {policy.shape[0]} prompts but sft has {sft.shape[0]}")
    diff = policy[:, :, None] - sft[:, None, :]
    tie = np.abs(diff) <= tie_eps
    outcome = (((diff > 0) & ~tie) + 0.5 * tie).reshape(len(diff), -1).mean(axis=1)
    return outcome, diff


def win_rate(policy_scores, sft_scores, tie_eps: float = 0.0, n_boot: int = 1000, seed: int = 0,
             clusters=None) -> WinRate:
    """The mean of `prompt_outcomes` over prompts, with the 2.5/97.5 percentile of `n_boot` resamples of
    prompts as its interval (seeded: same seed, same interval). `clusters` (one id per prompt): a prompt
    asked several times is resampled as one draw with all its repeats."""
    outcome, diff = prompt_outcomes(policy_scores, sft_scores, tie_eps)
    tie = np.abs(diff) <= tie_eps
    win = (diff > 0) & ~tie
    rng = np.random.default_rng(seed)
    if clusters is not None:
        from .aggregate import _clustered, _resampled_means

        sums, sizes = _clustered(outcome[None, :], clusters)
        picks = rng.integers(0, len(sizes), size=(n_boot, len(sizes)))
        resampled = _resampled_means(sums, sizes, np.zeros((n_boot, 1), dtype=int), picks)
    else:
        resampled = outcome[rng.integers(0, len(outcome), size=(n_boot, len(outcome)))].mean(axis=1)
    low, high = np.percentile(resampled, [2.5, 97.5])
    soft = float((1.0 / (1.0 + np.exp(-diff))).mean())
    return WinRate(float(outcome.mean()), float(low), float(high), int(win.sum()), int(tie.sum()),
                   int((~win & ~tie).sum()), soft, len(outcome))
