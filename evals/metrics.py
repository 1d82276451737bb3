"""Metrics that explain a win rate: length, diversity, repetition, KL to the SFT model."""

from __future__ import annotations

import numpy as np


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Unique n-grams / all n-grams, pooled over the whole set of responses. Pooled figures track length
    (short responses share fewer n-grams): read it beside `distinct_n_per_response`."""
    grams = [gram for text in texts for gram in _ngrams(text.split(), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def distinct_n_per_response(texts: list[str], n: int = 2) -> float:
    """Mean over responses of unique n-grams / n-grams within the response (1.0 = no n-gram repeats);
    responses shorter than n words have no n-gram and are left out."""
    shares = [len(set(grams)) / len(grams) for grams in (_ngrams(t.split(), n) for t in texts) if grams]
    return float(np.mean(shares)) if shares else 0.0


def repeat_rate(texts: list[str], n: int = 3) -> float:
    """Share of responses in which some word n-gram occurs more than once (a repetition loop, as in
    "great and great and great")."""
    if not texts:
        return 0.0
    return float(np.mean([len(set(grams)) < len(grams) for grams in (_ngrams(t.split(), n) for t in texts)]))


def degeneracy(text: str, n: int = 3) -> float:
    """How degenerate one response is: its share of repeated word n-grams (0 = none repeat), what the
    report's "most degenerate outputs" are ranked by (then by length)."""
    grams = _ngrams(text.split(), n)
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def is_plain_sampling(temperature: float, top_p: float) -> bool:
    """Samples come from the model's own distribution only at temperature 1 with no truncation (top_p 1;
    top-k, repetition penalties and every other logits filter are switched off by harness.generation)."""
    return temperature == 1.0 and top_p == 1.0


def kl_from_samples(policy_logps, sft_logps, tokens, prompts: int | None = None) -> dict[str, float]:
    """KL(policy || SFT) estimated from samples y ~ policy(.|x): the mean of log pi(y|x) - log pi_sft(y|x).

    Valid only when the samples are plain draws from the policy (see `is_plain_sampling`); under any other
    decoding the mean log-ratio is not a KL and can be negative, so callers must pass plain samples.
    Returns the estimate, its standard error (over prompts: samples of one prompt are averaged first),
    and the per-token KL (summed log-ratio / generated tokens, end-of-sequence included).
    `policy_logps`, `sft_logps` and `tokens` are sample-major flat lists (sample s of prompt i at s * prompts + i).
    """
    ratio = np.asarray(policy_logps, dtype=np.float64) - np.asarray(sft_logps, dtype=np.float64)
    n = prompts or len(ratio)
    per_prompt = ratio.reshape(-1, n).mean(axis=0)
    se = float(per_prompt.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    total_tokens = float(np.sum(tokens))
    return {"kl_to_sft": float(ratio.mean()), "kl_to_sft_se": se,
            "kl_per_token": float(ratio.sum() / total_tokens) if total_tokens else float("nan")}
