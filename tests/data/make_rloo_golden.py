"""Regenerate trl-1.16-rloo-golden.json: RLOO advantages and loss as TRL 1.16.0 computes them.

    python tests/data/make_rloo_golden.py      (needs trl==1.16.0, a dependency of the harness)

The loss is TRL's own `RLOOTrainer._compute_loss`, called unbound on a stand-in trainer whose
`_get_per_token_logps_and_entropies` returns fixed per-token log-probs (so no model runs). The advantages
are computed inside TRL's `_generate_and_score_completions`, which needs a model, generation and reward
functions; its advantage block (rloo_trainer.py lines 1664-1699 in 1.16.0: KL penalty, leave-one-out
baseline, optional normalisation) is reproduced below line for line, with TRL's own `nanstd`.
Inputs: 3 prompts x k = 3 completions of up to 4 tokens, per-token log-probs of the new, old and
reference policies, reward-model scores; float64.
"""

import json
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import torch
import trl
from trl.trainer.rloo_trainer import RLOOTrainer
from trl.trainer.utils import nanstd

K, BETA, EPSILON = 3, 0.05, 0.2


def inputs() -> dict:
    g = torch.Generator().manual_seed(0)
    n, t = 9, 4
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]] * 3, dtype=torch.float64)
    old = -torch.rand(n, t, generator=g, dtype=torch.float64) * 3
    ref = old - (torch.rand(n, t, generator=g, dtype=torch.float64) - 0.3) * 0.5
    new = old + (torch.rand(n, t, generator=g, dtype=torch.float64) - 0.5) * 0.6  # some ratios clip at 0.2
    scores = torch.randn(n, generator=g, dtype=torch.float64)
    return {"mask": mask * 1.0, "old": old * mask, "ref": ref * mask, "new": new * mask, "scores": scores}


def trl_advantages(x: dict, normalize: bool) -> torch.Tensor:
    """rloo_trainer.py (1.16.0) lines 1664-1699, for completions that are all scorable."""
    completion_mask, rewards = x["mask"], x["scores"].clone()
    per_token_kl = x["old"] - x["ref"]
    kl = (per_token_kl * completion_mask).sum(-1)
    rewards = rewards - BETA * kl
    grouped_rewards = rewards.view(-1, K)
    scorable_counts = (~torch.isnan(grouped_rewards)).sum(dim=1, keepdim=True)
    grouped_sum = torch.nansum(grouped_rewards, dim=1, keepdim=True)
    baselines = (grouped_sum - grouped_rewards) / (scorable_counts - 1)
    advantages = rewards - baselines.view(-1)
    if normalize:
        advantages = (advantages - torch.nanmean(advantages)) / (nanstd(advantages) + 1e-4)
    return torch.nan_to_num(advantages, nan=0.0)


def trl_loss(x: dict, advantages: torch.Tensor) -> float:
    class Accelerator:
        gather = gather_for_metrics = staticmethod(lambda t: t)
        reduce = staticmethod(lambda t, reduction="sum": t)

    trainer = SimpleNamespace(
        epsilon_low=EPSILON, epsilon_high=EPSILON, aux_loss_enabled=False, model=SimpleNamespace(training=True),
        _metrics=defaultdict(lambda: defaultdict(list)), accelerator=Accelerator(),
        _get_per_token_logps_and_entropies=lambda *a, **k: (x["new"], torch.zeros_like(x["new"]), None))
    n, t = x["mask"].shape
    batch = {"prompt_ids": torch.zeros(n, 2, dtype=torch.long), "prompt_mask": torch.ones(n, 2, dtype=torch.long),
             "completion_ids": torch.zeros(n, t, dtype=torch.long), "completion_mask": x["mask"],
             "old_logps": (x["old"] * x["mask"]).sum(1), "advantages": advantages}
    return RLOOTrainer._compute_loss(trainer, None, batch).item()


def main() -> None:
    assert trl.__version__ == "1.16.0", trl.__version__
    x = inputs()
    cases = {}
    for normalize in (False, True):
        advantages = trl_advantages(x, normalize)
        cases[f"rloo_normalize_{str(normalize).lower()}"] = {
            "params": {"beta": BETA, "k": K, "cliprange": EPSILON, "normalize_advantages": normalize},
            "advantages": advantages.tolist(), "loss": trl_loss(x, advantages)}
    out = {"trl_version": trl.__version__, "inputs": {k: v.tolist() for k, v in x.items()}, "cases": cases}
    path = Path(__file__).with_name("trl-1.16-rloo-golden.json")
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}: " + ", ".join(f"{k} loss {v['loss']:.10f}" for k, v in cases.items()))


if __name__ == "__main__":
    main()
