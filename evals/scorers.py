"""Scorers (judges): score(prompts, responses) -> one float per response. Pluggable: anything with `.name`
and `.score`."""

from __future__ import annotations

from typing import Protocol

from harness.errors import BadInput


class Scorer(Protocol):
    name: str

    def score(self, prompts: list[str], responses: list[str]) -> list[float]: ...


class GoldScorer:
    """The embedded task's known gold reward."""

    name = "gold"

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        from harness.embedded.task import gold_reward

        return [gold_reward(p, r) for p, r in zip(prompts, responses)]


def make_scorer(judge: str, embedded: bool) -> Scorer:
    if judge == "gold":
        if not embedded:
            raise BadInput("eval.judge=gold needs the embedded task (data.source=embedded); give a reward model path")
        return GoldScorer()
    raise BadInput(f"eval.judge={judge!r}: only 'gold' is available yet")
