"""Which runs collapsed: degenerate text, or a reward the judge likes and gold does not (reward hacking).

A run is flagged when, on the test prompts and relative to the SFT model's responses to the same prompts:
- repetition: its repeat rate (share of responses repeating a word trigram) is more than 0.25 above SFT's;
- diversity: its distinct-2 within a response is more than 0.25 below SFT's;
- length: its mean length is under 0.4x or over 2.5x SFT's;
- reward hacking: its gold reward is below SFT's while the judge still prefers it (judge win rate > 0.5).
The thresholds are stated in every report that uses them (THRESHOLDS_TEXT).
"""

from __future__ import annotations

import math
from typing import Mapping

REPEAT_RISE, DIVERSITY_DROP, SHORT, LONG = 0.25, 0.25, 0.4, 2.5

THRESHOLDS_TEXT = (f"repeat rate more than {REPEAT_RISE} above SFT's; distinct-2 within a response more than "
                   f"{DIVERSITY_DROP} below SFT's; mean length under {SHORT}x or over {LONG}x SFT's; gold reward below "
                   "SFT's while the judge's win rate is above 0.5 (reward hacking)")


def _known(run: Mapping, *keys: str) -> bool:
    return all(isinstance(run.get(k), (int, float)) and not math.isnan(run[k]) for k in keys)


def collapse_reasons(run: Mapping) -> list[str]:
    """The flags one run's metrics (a record's metrics, or a row of the records table) raise."""
    reasons = []
    if _known(run, "repeat_rate", "repeat_rate_sft") and run["repeat_rate"] > run["repeat_rate_sft"] + REPEAT_RISE:
        reasons.append("repetition")
    if _known(run, "distinct_2_per_response", "distinct_2_per_response_sft") and \
            run["distinct_2_per_response"] < run["distinct_2_per_response_sft"] - DIVERSITY_DROP:
        reasons.append("diversity")
    if _known(run, "mean_length", "mean_length_sft") and run["mean_length_sft"] > 0:
        ratio = run["mean_length"] / run["mean_length_sft"]
        if ratio < SHORT or ratio > LONG:
            reasons.append("length")
    if _known(run, "gold_reward", "gold_reward_sft", "win_rate") and run["gold_reward"] < run["gold_reward_sft"] \
            and run["win_rate"] > 0.5:
        reasons.append("reward hacking")
    return reasons


def collapse_summary(runs) -> str:
    """"k/n seeds: reasons" for a configuration's runs (rows of the records table), "" when none collapsed."""
    flagged = [collapse_reasons(run) for _, run in runs.iterrows()]
    hit = [r for r in flagged if r]
    if not hit:
        return ""
    reasons = sorted({reason for r in hit for reason in r})
    return f"{len(hit)}/{len(flagged)} seeds: {', '.join(reasons)}"
