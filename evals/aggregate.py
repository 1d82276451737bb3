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


def _resampled_means(outcomes: np.ndarray, seed_picks: np.ndarray, prompt_picks: np.ndarray) -> np.ndarray:
    """Mean outcome of each bootstrap replicate: outcomes[seeds picked][:, prompts picked]."""
    return outcomes[seed_picks[:, :, None], prompt_picks[:, None, :]].mean(axis=(1, 2))


def seed_prompt_interval(outcomes, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float]:
    """95% interval of the mean of a seeds x prompts outcome matrix, resampling seeds and prompts
    (with one seed it is the plain bootstrap over prompts)."""
    outcomes = np.asarray(outcomes, dtype=np.float64)
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, outcomes.shape[0], size=(n_boot, outcomes.shape[0]))
    prompts = rng.integers(0, outcomes.shape[1], size=(n_boot, outcomes.shape[1]))
    low, high = np.percentile(_resampled_means(outcomes, seeds, prompts), [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    return float(low), float(high)


def paired_difference(a, b, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float, float]:
    """mean(a) - mean(b) for two seeds x prompts outcome matrices judged on the same prompts, with a 95%
    paired bootstrap interval: each replicate draws one set of prompts for both (the pairing) and each
    side's seeds independently (their training runs are independent)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired test needs the same prompts: {a.shape[1]} vs {b.shape[1]} per seed")
    rng = np.random.default_rng(seed)
    prompts = rng.integers(0, a.shape[1], size=(n_boot, a.shape[1]))
    seeds_a = rng.integers(0, a.shape[0], size=(n_boot, a.shape[0]))
    seeds_b = rng.integers(0, b.shape[0], size=(n_boot, b.shape[0]))
    diff = _resampled_means(a, seeds_a, prompts) - _resampled_means(b, seeds_b, prompts)
    low, high = np.percentile(diff, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    return float(a.mean() - b.mean()), float(low), float(high)
