"""Statistics over runs: seeds grouped by configuration, intervals over seeds x prompts, paired tests.

Every interval here is a percentile bootstrap that resamples both sources of noise a reader cares
about: which prompts were asked (shared by every run judged on the same prompts) and which training
seeds were run. Interval bounds are never averaged: they are recomputed from the per-prompt outcomes
that every run record stores.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

N_BOOT = 2000
LEVEL = 0.95
# What does not change a run's result, plus the seed: runs equal in everything else are one configuration.
NOT_CONFIGURATION = ("output_dir", "cache_dir", "name", "wandb")


def configuration_key(config: dict) -> str:
    """Hash of a resolved run config without train.seed (and without where things are written)."""
    tree = {k: v for k, v in config.items() if k not in NOT_CONFIGURATION}
    tree["train"] = {k: v for k, v in tree.get("train", {}).items() if k != "seed"}
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:12]


def prompt_cluster_ids(prompts) -> list[int]:
    """Each prompt's cluster: the index of its first occurrence (equal prompts are one cluster)."""
    first: dict[str, int] = {}
    return [first.setdefault(repr(p), i) for i, p in enumerate(prompts)]


def _clustered(outcomes: np.ndarray, clusters) -> tuple[np.ndarray, np.ndarray]:
    """seeds x clusters sums of the outcomes and each cluster's size: a prompt asked several times is one
    cluster (one draw of the bootstrap), never several independent draws."""
    if clusters is None:
        return outcomes, np.ones(outcomes.shape[1])
    clusters = np.asarray(clusters)
    if clusters.shape != (outcomes.shape[1],):
        raise ValueError(f"one cluster id per prompt expected: {clusters.shape[0]} ids for {outcomes.shape[1]} prompts")
    _, index, sizes = np.unique(clusters, return_inverse=True, return_counts=True)
    sums = np.zeros((outcomes.shape[0], len(sizes)))
    np.add.at(sums, (slice(None), index), outcomes)
    return sums, sizes.astype(np.float64)


def _resampled_means(sums: np.ndarray, sizes: np.ndarray, seed_picks: np.ndarray, cluster_picks: np.ndarray) -> np.ndarray:
    """Mean outcome of each bootstrap replicate: the seeds picked x the clusters picked, each cluster counted
    with all its prompts (with one prompt per cluster: the plain mean of outcomes[seeds][:, prompts])."""
    total = sums[seed_picks[:, :, None], cluster_picks[:, None, :]].sum(axis=(1, 2))
    return total / (seed_picks.shape[1] * sizes[cluster_picks].sum(axis=1))


def seed_prompt_interval(outcomes, n_boot: int = N_BOOT, seed: int = 0, clusters=None) -> tuple[float, float]:
    """95% interval of the mean of a seeds x prompts outcome matrix, resampling seeds and distinct prompts
    (`clusters`: the id of each column's prompt; repeats of a prompt are drawn together). With one seed it
    is the plain bootstrap over prompts."""
    outcomes = np.asarray(outcomes, dtype=np.float64)
    sums, sizes = _clustered(outcomes, clusters)
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, outcomes.shape[0], size=(n_boot, outcomes.shape[0]))
    picks = rng.integers(0, len(sizes), size=(n_boot, len(sizes)))
    low, high = np.percentile(_resampled_means(sums, sizes, seeds, picks), [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    return float(low), float(high)


def paired_difference(a, b, n_boot: int = N_BOOT, seed: int = 0, clusters=None) -> tuple[float, float, float, float]:
    """mean(a) - mean(b) for two seeds x prompts outcome matrices judged on the same prompts, with a 95%
    paired bootstrap interval and a two-sided bootstrap p-value: each replicate draws one set of distinct
    prompts for both (the pairing) and each side's seeds independently (their training runs are
    independent). Returns (difference, low, high, p)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired test needs the same prompts: {a.shape[1]} vs {b.shape[1]} per seed")
    (sums_a, sizes), (sums_b, _) = _clustered(a, clusters), _clustered(b, clusters)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(sizes), size=(n_boot, len(sizes)))
    seeds_a = rng.integers(0, a.shape[0], size=(n_boot, a.shape[0]))
    seeds_b = rng.integers(0, b.shape[0], size=(n_boot, b.shape[0]))
    diff = _resampled_means(sums_a, sizes, seeds_a, picks) - _resampled_means(sums_b, sizes, seeds_b, picks)
    low, high = np.percentile(diff, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    return float(a.mean() - b.mean()), float(low), float(high), bootstrap_p(diff)


def bootstrap_p(replicates: np.ndarray) -> float:
    """Two-sided p-value of "the difference is 0" from its bootstrap replicates: twice the smaller tail
    share on either side of 0 (the smallest test level at which the percentile interval excludes 0),
    counting the observed sample as one replicate so that p is never 0."""
    replicates = np.asarray(replicates, dtype=np.float64)
    tail = min((replicates <= 0).sum(), (replicates >= 0).sum())
    return float(min(1.0, 2 * (tail + 1) / (len(replicates) + 1)))


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (Holm 1979): the i-th smallest is multiplied by
    (m - i + 1), then made monotone; reject where the adjusted value is below the level. Controls the
    family-wise error rate for any dependence between the tests. NaN entries are not part of the family."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = len(valid)
    order = valid[np.argsort(p[valid], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        out[index] = running
    return out
