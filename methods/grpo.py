"""GRPO: Group Relative Policy Optimization (Shao et al., 2024, DeepSeekMath, arXiv:2402.03300), as TRL 1.16's
GRPOTrainer computes it, with the loss normalisations of Dr. GRPO (Liu et al., 2025, arXiv:2503.20783) and
DAPO (Yu et al., 2025, arXiv:2503.14476).

k completions y_1..y_k of each prompt x, scored by the reward model (R_i); no critic, no KL in the reward:
    A_i    = R_i - mean_j R_j                                  over the k samples of the prompt
    A_i   <- A_i / (std_j R_j + 1e-4)                          scale_rewards "group" (std of the prompt's group)
    A_i   <- A_i / (std R + 1e-4)                              scale_rewards "batch" (std of the rollout batch)
                                                               scale_rewards "none": unscaled (Dr. GRPO)
(std Bessel-corrected, TRL's nanstd); then per completion token t of y_i:
    rho_t  = pi(y_t) / pi_old(y_t)                             token-level ratio
    l_t    = -min(rho_t A_i, clip(rho_t, 1 - eps_low, 1 + eps_high) A_i)
    l_t   += beta * (exp(d_t) - d_t - 1),  d_t = log pi_sft(y_t) - log pi(y_t)   k3 KL estimator (beta > 0)
aggregated over a minibatch of n sequences with |y_i| completion tokens each:
    grpo     mean_i (1/|y_i|) sum_t l_t                        per-sequence mean, then mean (length-biased)
    bnpo     sum_{i,t} l_t / sum_i |y_i|                       token mean over the minibatch
    dr_grpo  sum_{i,t} l_t / (n * max_new_tokens)              a constant: the sampler's max length (Dr. GRPO)
    dapo     sum_{i,t} l_t / (n * mean |y|)                    mean |y| over the whole rollout batch (DAPO)
dapo is TRL's token mean over the generation batch, sum over all its tokens / its completion tokens: the
batch's mean completion length rides along from `advantages()` as a per-sequence field, so the loop's mean
over the minibatches of a rollout batch (gradient accumulation) gives that number whatever the split.

Matches TRL 1.16's GRPOTrainer (its _generate_and_score_completions advantages and _compute_loss, token-level
importance sampling, no vLLM) on the golden inputs of tests/data/trl-1.16-grpo-golden.json. TRL's defaults
except two: beta defaults to DPO's 0.1 (TRL's is 0.0: no reference model) so one beta grid serves every
method, and k to 4 (TRL's num_generations is 8). Across processes, "batch" std and dapo's mean length are
taken over every process's rollout batch, as TRL gathers them.
"""

from typing import Literal

import torch

from harness.logps import ROLLOUTS
from methods import LossOutput, Method, Params, batch_std, hyper, mean_over_processes, register
from methods.ppo import masked_mean


@register
class GRPO(Method):
    name = "grpo"
    consumes = frozenset({ROLLOUTS})
    paper = "arXiv:2402.03300"

    class Params(Params):
        beta: float = hyper(0.1, [0.01, 0.1, 0.3, 1.0], "KL coefficient of the per-token k3 KL term in the loss "
                            "(TRL's default: 0.0)", ge=0)
        k: int = hyper(4, [4, 8], "completions sampled per prompt (the group; TRL: num_generations)", ge=2)
        loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = hyper(
            "dapo", ["dapo"], "aggregation of the token losses: grpo (per-sequence mean), bnpo (minibatch token "
            "mean), dr_grpo (/ max_new_tokens), dapo (rollout batch token mean)")
        scale_rewards: Literal["group", "batch", "none"] = hyper(
            "group", ["group"], "divide advantages by the reward std of the prompt's group, the batch, or not at all")
        epsilon_low: float = hyper(0.2, [0.2], "ratio clip below: 1 - epsilon_low", gt=0)
        epsilon_high: float = hyper(0.2, [0.2], "ratio clip above: 1 + epsilon_high (DAPO's clip-higher: 0.28)", gt=0)

    @property
    def samples_per_prompt(self) -> int:
        return self.params.k

    def advantages(self, rollout):
        p = self.params
        # RolloutStream.collect puts the k samples of a prompt next to each other, so a group is a row here.
        grouped = rollout.scores.view(-1, p.k)
        advantages = (grouped - grouped.mean(1, keepdim=True)).flatten()
        group_std = grouped.std(1).repeat_interleave(p.k)
        std = batch_std(rollout.scores).expand_as(advantages) if p.scale_rewards == "batch" else group_std
        if p.scale_rewards != "none":
            advantages = advantages / (std + 1e-4)
        # Every completion has a token at least (its EOS, or max_new_tokens of them), so this clamp, like TRL's
        # on the token total, never binds; it only keeps a degenerate batch finite.
        batch_tokens = mean_over_processes(rollout.mask.sum(-1)).clamp(min=1)
        metrics = {"rollout/reward": rollout.scores.mean(), "rollout/reward_std": rollout.scores.std(),
                   "rollout/frac_reward_zero_std": torch.isclose(std, torch.zeros_like(std)).float().mean()}
        return {"advantages": advantages, "batch_tokens": batch_tokens.expand_as(advantages)}, metrics

    def loss(self, policy, rollout):
        p, mask = self.params, rollout.mask
        advantages = rollout.fields["advantages"][:, None]
        ratio = torch.exp(policy.logps - rollout.logps)
        per_token = -torch.min(ratio * advantages, ratio.clamp(1 - p.epsilon_low, 1 + p.epsilon_high) * advantages)
        # Counted as TRL's clip_ratio/region_mean: tokens where the clip binds (the ratio is past the bound on
        # the side its advantage pushes it, so min() picks the clipped term and the token has no gradient).
        low, high = (ratio < 1 - p.epsilon_low) & (advantages < 0), (ratio > 1 + p.epsilon_high) & (advantages > 0)
        metrics = {"policy/clipfrac": masked_mean((low | high).float(), mask),
                   "policy/ratio": masked_mean(ratio.detach(), mask)}
        if p.beta > 0:
            log_ratio = rollout.ref_logps - policy.logps
            kl = torch.exp(log_ratio) - log_ratio - 1
            per_token = per_token + p.beta * kl
            metrics["policy/kl"] = masked_mean(kl.detach(), mask)
        total, n = (per_token * mask).sum(), len(rollout)
        if p.loss_type == "grpo":
            loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
        elif p.loss_type == "bnpo":
            loss = masked_mean(per_token, mask)
        elif p.loss_type == "dr_grpo":
            if rollout.max_new_tokens <= 0:
                raise ValueError("grpo's loss_type dr_grpo needs rollout.max_new_tokens (the sampler's longest "
                                 "completion)")
            loss = total / (n * rollout.max_new_tokens)
        else:  # dapo: the field is one number, the rollout batch's mean completion length
            loss = total / (n * rollout.fields["batch_tokens"].mean())
        metrics["policy/loss"] = loss.detach()
        return LossOutput(loss, metrics)
