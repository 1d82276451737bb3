"""Scorers (judges): score(prompts, responses) -> one float per response. Pluggable: anything with `.name`
and `.score`."""

from __future__ import annotations

from typing import Protocol

from harness.errors import BadInput


class Scorer(Protocol):
    name: str
    fingerprint: str  # what cached scores are keyed by

    def score(self, prompts: list[str], responses: list[str]) -> list[float]: ...


class GoldScorer:
    """The embedded task's known gold reward (for prompts of the embedded task only)."""

    name = "gold"
    fingerprint = "gold-reward"

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        from harness.embedded.task import gold_reward

        return [gold_reward(p, r) for p, r in zip(prompts, responses)]

    @staticmethod
    def check_prompts(prompts: list) -> None:
        from harness.embedded.task import ASPECTS, ITEMS

        for index, prompt in enumerate(prompts):
            words = prompt.split() if isinstance(prompt, str) else []
            if len(words) != 4 or words[1] not in ITEMS or words[2] not in ASPECTS:
                raise BadInput(f"eval.judge=gold scores only prompts of the embedded task; eval prompt {index} is "
                               f"{str(prompt)[:60]!r} (give a reward model as eval.judge)")


def make_scorer(judge: str, prompts: list, *, embedded_assets=None, cache_dir: str | None = None,
                device: str = "auto", trust_remote_code: bool = False) -> Scorer:
    """The judge named by eval.judge, loaded (or trained, for the embedded task) before any training starts."""
    if judge == "gold":
        GoldScorer.check_prompts(prompts)
        return GoldScorer()
    from .judge import RewardModelJudge, embedded_judge

    if judge in ("auto", "trained"):
        if embedded_assets is None:
            raise BadInput(f"eval.judge={judge}: give a reward model's hub id or path for this data (or eval.num_prompts=0); "
                           "the harness trains its own judge only for the embedded task")
        path, _ = embedded_judge(embedded_assets, cache_dir)
        scorer = RewardModelJudge(path, device=device)
        scorer.name = "trained-judge"
        return scorer
    return RewardModelJudge(judge, device=device, trust_remote_code=trust_remote_code)
