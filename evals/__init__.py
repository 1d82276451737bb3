"""Evaluation: win rate vs the SFT model with intervals, the judge, and the metrics that explain it."""

from .metrics import distinct_n, kl_from_samples
from .scorers import GoldScorer, Scorer, make_scorer
from .winrate import WinRate, win_rate

__all__ = ["win_rate", "WinRate", "distinct_n", "kl_from_samples", "Scorer", "GoldScorer", "make_scorer"]
