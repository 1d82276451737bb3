"""Metrics that explain a win rate: length, repetition, KL to the SFT model."""

from __future__ import annotations

import numpy as np


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Unique n-grams / all n-grams over the whole set of responses (low = repetitive, degenerate text)."""
    grams = [tuple(words[i:i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def kl_from_samples(policy_logps: list[float], sft_logps: list[float]) -> float:
    """KL(policy || SFT) ~ mean over policy samples of log pi(y|x) - log pi_sft(y|x) (unbiased when the
    samples come from the policy at temperature 1)."""
    return float(np.mean(np.asarray(policy_logps) - np.asarray(sft_logps)))
