"""evals.win_rate: ties count one half, a seeded bootstrap interval over prompts."""

import numpy as np
import pytest

from evals import win_rate


def test_all_wins_all_ties_all_losses():
    rate, low, high, wins, ties, losses = win_rate([2.0] * 30, [1.0] * 30)
    assert (rate, low, high, wins, ties, losses) == (1.0, 1.0, 1.0, 30, 0, 0)
    rate, low, high, wins, ties, losses = win_rate([1.0] * 30, [1.0] * 30)
    assert (rate, wins, ties, losses) == (0.5, 0, 30, 0) and low == high == 0.5
    assert win_rate([0.0] * 5, [1.0] * 5).rate == 0.0


def test_small_hand_computed_case():
    result = win_rate([3.0, 1.0, 2.0, 5.0], [1.0, 1.05, 2.0, 4.0], tie_eps=0.1)
    # wins: prompts 0 and 3; ties: 1 (|-0.05| <= 0.1) and 2 -> (1 + 0.5 + 0.5 + 1) / 4
    assert result.rate == pytest.approx(0.75)
    assert (result.wins, result.ties, result.losses) == (2, 2, 0)
    assert result.soft == pytest.approx(np.mean(1 / (1 + np.exp(-np.array([2.0, -0.05, 0.0, 1.0])))))


def test_k_samples_per_prompt_average_the_k_by_k_comparisons():
    policy = [[1.0, 3.0], [0.0, 0.0]]
    sft = [[2.0, 2.0], [1.0, 1.0]]
    # prompt 0: 1 vs 2 lose twice, 3 vs 2 win twice -> 0.5; prompt 1: all lose -> 0
    assert win_rate(policy, sft).rate == pytest.approx(0.25)


def test_interval_contains_estimate_narrows_with_prompts_and_is_seeded():
    rng = np.random.default_rng(0)
    small = win_rate(rng.normal(0.3, 1, 40), rng.normal(0, 1, 40), seed=1)
    large = win_rate(rng.normal(0.3, 1, 1000), rng.normal(0, 1, 1000), seed=1)
    for r in (small, large):
        assert r.low <= r.rate <= r.high
    assert (large.high - large.low) < (small.high - small.low)
    x, y = rng.normal(size=50), rng.normal(size=50)
    assert win_rate(x, y, seed=7) == win_rate(x, y, seed=7)
    assert (win_rate(x, y, seed=7).low, win_rate(x, y, seed=7).high) != (win_rate(x, y, seed=8).low, win_rate(x, y, seed=8).high)


def test_nan_scores_are_an_error():
    with pytest.raises(ValueError, match="prompt 1"):
        win_rate([1.0, float("nan")], [0.0, 0.0])
    with pytest.raises(ValueError, match="prompts"):
        win_rate([1.0, 2.0], [0.0])
