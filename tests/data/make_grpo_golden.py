"""Regenerate trl-1.16-grpo-golden.json: GRPO advantages and loss as TRL 1.16.0 computes them.

    python tests/data/make_grpo_golden.py      (needs trl==1.16.0, a dependency of the harness)

The loss is TRL's own `GRPOTrainer._compute_loss`, called unbound on a stand-in trainer whose
`_get_per_token_logps_and_entropies` returns fixed per-token log-probs (so no model runs). The advantages
are computed inside TRL's `_generate_and_score_completions`, which needs a model, generation and reward
functions; its advantage block (grpo_trainer.py lines 2759-2810 in 1.16.0, the default
multi_objective_aggregation="sum_then_normalize" with one reward function, and the reward metrics of lines
2826-2830) is reproduced below line for line, with TRL's own `nanstd`.
Inputs: 3 prompts x k = 3 completions of up to 4 tokens (the last prompt's three scores tied, so its
group std is 0), per-token log-probs of the new, old and reference policies (log-ratios new/old up to
+-0.4, so both sides of the 0.2 clip are hit), reward-model scores; float64. Why 9 sequences: TRL's nanstd
takes Bessel's factor count / (count - 1) as an integer division, which gives float32 even for float64
rewards; it is exact only where count - 1 is a power of two (groups of 3, a batch of 9), so that TRL's
numbers here are float64-exact.
Cases: every loss type with beta 0 and beta > 0, each on one scale_rewards mode; the advantages of all
three modes; dapo's loss on three random minibatches of one generation batch, as TRL splits it over
gradient accumulation (steps_per_generation = gradient_accumulation_steps = 3).
"""

import json
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import torch
import trl
from trl.trainer.grpo_trainer import GRPOTrainer
from trl.trainer.utils import nanstd

K, EPSILON, MAX_COMPLETION_LENGTH, BETA = 3, 0.2, 6, 0.04
SCALES = ("group", "batch", "none")
# (loss_type, scale_rewards): each loss type on one mode, so every mode also reaches a loss
LOSSES = (("grpo", "group"), ("bnpo", "batch"), ("dr_grpo", "none"), ("dapo", "group"))
MINIBATCHES = ([0, 4, 8], [1, 5, 6], [2, 3, 7])  # a random-looking split, not prompt by prompt


def inputs() -> dict:
    g = torch.Generator().manual_seed(0)
    n, t = 9, 4
    mask = torch.tensor(([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]] * 3)[:n], dtype=torch.float64)
    old = -torch.rand(n, t, generator=g, dtype=torch.float64) * 3
    ref = old - (torch.rand(n, t, generator=g, dtype=torch.float64) - 0.3) * 0.5
    new = old + (torch.rand(n, t, generator=g, dtype=torch.float64) - 0.5) * 0.8  # ratios in about [0.67, 1.5]
    scores = torch.randn(n, generator=g, dtype=torch.float64)
    scores[6:] = 0.5  # a group whose samples all score alike: std 0, advantages 0
    return {"mask": mask, "old": old * mask, "ref": ref * mask, "new": new * mask, "scores": scores}


def trl_advantages(scores: torch.Tensor, scale_rewards: str) -> tuple[torch.Tensor, dict]:
    """grpo_trainer.py (1.16.0) lines 2759-2810 and 2826-2830, one reward function of weight 1, all scorable."""
    num_generations = K
    rewards_per_func = scores[:, None]
    reward_weights = torch.ones(1, dtype=scores.dtype)
    unscorable_mask = torch.isnan(rewards_per_func).all(dim=1)
    rewards = (rewards_per_func * reward_weights.unsqueeze(0)).nansum(dim=1)
    rewards[unscorable_mask] = torch.nan
    mean_grouped_rewards = torch.nanmean(rewards.view(-1, num_generations), dim=1)
    mean_grouped_rewards = mean_grouped_rewards.repeat_interleave(num_generations, dim=0)
    if scale_rewards in ["group", "none"]:
        std_rewards = nanstd(rewards.view(-1, num_generations), dim=1)
        std_rewards = std_rewards.repeat_interleave(num_generations, dim=0)
    elif scale_rewards == "batch":
        std_rewards = nanstd(rewards).expand_as(rewards)
    advantages = rewards - mean_grouped_rewards
    if scale_rewards != "none":
        advantages = advantages / (std_rewards + 1e-4)
    is_std_zero = torch.isclose(std_rewards, torch.zeros_like(std_rewards))
    advantages = torch.nan_to_num(advantages, nan=0.0)
    metrics = {"reward": torch.nanmean(rewards).item(), "reward_std": nanstd(rewards).item(),
               "frac_reward_zero_std": is_std_zero.float().mean().item()}
    return advantages, metrics


def trl_loss(x: dict, advantages: torch.Tensor, loss_type: str, beta: float, rows=None, accumulation: int = 1) -> dict:
    """TRL's `_compute_loss` on the rows `rows` of the generation batch (all by default), with `accumulation`
    = steps_per_generation = gradient_accumulation_steps micro-batches per generation batch."""

    class Accelerator:
        num_processes = 1
        gather = gather_for_metrics = staticmethod(lambda t: t)
        reduce = staticmethod(lambda t, reduction="sum": t)

    metrics = defaultdict(lambda: defaultdict(list))
    rows = torch.arange(len(advantages)) if rows is None else torch.tensor(rows)
    new = x["new"][rows]
    trainer = SimpleNamespace(
        loss_type=loss_type, beta=beta, epsilon_low=EPSILON, epsilon_high=EPSILON, importance_sampling_level="token",
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, use_vllm=False, aux_loss_enabled=False,
        _entropy_bonus_enabled=False, max_completion_length=MAX_COMPLETION_LENGTH,
        current_gradient_accumulation_steps=accumulation, model=SimpleNamespace(training=True), _metrics=metrics,
        args=SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=accumulation),
        accelerator=Accelerator(),
        _get_per_token_logps_and_entropies=lambda *a, **k: (new, torch.zeros_like(new), None))
    n, t = new.shape
    batch = {"prompt_ids": torch.zeros(n, 2, dtype=torch.long), "prompt_mask": torch.ones(n, 2, dtype=torch.long),
             "completion_ids": torch.zeros(n, t, dtype=torch.long), "completion_mask": x["mask"][rows],
             "old_per_token_logps": x["old"][rows], "ref_per_token_logps": x["ref"][rows],
             "advantages": advantages[rows],
             "num_items_in_batch": x["mask"].sum()}  # always the whole generation batch's completion tokens
    loss = GRPOTrainer._compute_loss(trainer, None, batch).item()
    out = {"loss": loss, "clip_ratio": metrics["train"]["clip_ratio/region_mean"][0]}
    if beta:
        out["kl"] = metrics["train"]["kl"][0]
    return out


def main() -> None:
    assert trl.__version__ == "1.16.0", trl.__version__
    x = inputs()
    advantages = {}
    for scale in SCALES:
        values, metrics = trl_advantages(x["scores"], scale)
        advantages[scale] = {"advantages": values.tolist(), **metrics}
    cases = {}
    for loss_type, scale in LOSSES:
        for beta in (0.0, BETA):
            params = {"loss_type": loss_type, "scale_rewards": scale, "beta": beta, "k": K,
                      "epsilon_low": EPSILON, "epsilon_high": EPSILON}
            values = torch.tensor(advantages[scale]["advantages"], dtype=torch.float64)
            case = {"params": params, **trl_loss(x, values, loss_type, beta)}
            if loss_type == "dapo":
                # each micro-batch's loss as TRL returns it: already divided by the accumulation steps
                case["minibatches"] = [{"rows": rows, **trl_loss(x, values, loss_type, beta, rows, len(MINIBATCHES))}
                                       for rows in MINIBATCHES]
            cases[f"{loss_type}_beta{beta:g}"] = case
    out = {"trl_version": trl.__version__, "max_completion_length": MAX_COMPLETION_LENGTH,
           "inputs": {k: v.tolist() for k, v in x.items()}, "advantages": advantages, "cases": cases}
    path = Path(__file__).with_name("trl-1.16-grpo-golden.json")
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}: " + ", ".join(f"{k} loss {v['loss']:.10f}" for k, v in cases.items()))


if __name__ == "__main__":
    main()
