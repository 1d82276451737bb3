"""RLOO: REINFORCE Leave-One-Out (Ahmadian et al., 2024, "Back to Basics", arXiv:2402.14740), as TRL 1.16's
RLOOTrainer computes it.

k completions y_1..y_k of each prompt x, scored by the reward model R, with the same KL shaping as PPO
on whole sequences (log-probs summed over completion tokens, those of the policy that sampled them):
    r_i   = R(x, y_i) - beta * (log pi_old(y_i|x) - log pi_sft(y_i|x))
    A_i   = r_i - 1/(k-1) * sum_{j != i} r_j                      leave-one-out baseline
    A_i  <- (A_i - mean A) / (std A + 1e-4)                       optional, over the rollout batch (all processes')
    rho_i = pi(y_i|x) / pi_old(y_i|x)                             sequence-level ratio
    loss  = mean_i max(-A_i rho_i, -A_i clip(rho_i, 1 - eps, 1 + eps))
No critic and no per-token credit assignment: the other samples of the same prompt are the baseline.
Matches TRL 1.16's RLOOTrainer (its _generate_and_score_completions advantages and _compute_loss) on the
golden inputs of tests/data/trl-1.16-rloo-golden.json; TRL's default beta is 0.05, here beta
defaults to DPO's 0.1 so one beta grid serves every method.
"""

import torch

from harness.logps import ROLLOUTS
from methods import LossOutput, Method, Params, batch_std, hyper, mean_over_processes, register


def leave_one_out(rewards: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """r_i minus the mean reward of the other samples of its prompt."""
    groups = int(group.max()) + 1
    sums = torch.zeros(groups, dtype=rewards.dtype, device=rewards.device).index_add_(0, group, rewards)
    counts = torch.zeros(groups, dtype=rewards.dtype, device=rewards.device).index_add_(0, group, torch.ones_like(rewards))
    return rewards - (sums[group] - rewards) / (counts[group] - 1)


@register
class RLOO(Method):
    name = "rloo"
    consumes = frozenset({ROLLOUTS})
    paper = "arXiv:2402.14740"

    class Params(Params):
        beta: float = hyper(0.1, [0.01, 0.1, 0.3, 1.0], "KL coefficient of E[R] - beta KL", ge=0)
        k: int = hyper(2, [2, 4], "completions sampled per prompt (the leave-one-out group)", ge=2)
        cliprange: float = hyper(0.2, [0.2], "ratio clip eps", gt=0)
        normalize_advantages: bool = hyper(False, [False], "standardise advantages over the rollout batch")

    @property
    def samples_per_prompt(self) -> int:
        return self.params.k

    def advantages(self, rollout):
        rewards = rollout.scores - self.params.beta * rollout.kl()
        advantages = leave_one_out(rewards, rollout.group)
        if self.params.normalize_advantages:  # over every process's rollout batch, as TRL gathers it
            advantages = (advantages - mean_over_processes(advantages)) / (batch_std(advantages) + 1e-4)
        return {"advantages": advantages}, {"rollout/reward": rewards.mean()}

    def loss(self, policy, rollout):
        ratio = torch.exp(policy.summed() - rollout.logps.sum(-1))
        advantages = rollout.fields["advantages"]
        eps = self.params.cliprange
        unclipped, clipped = -advantages * ratio, -advantages * ratio.clamp(1 - eps, 1 + eps)
        active = (clipped > unclipped).float().mean()  # clips that take effect, as TRL's clip_ratio counts them
        return LossOutput(torch.max(unclipped, clipped).mean(), {"policy/clipfrac": active,
                                                                 "policy/ratio": ratio.detach().mean()})
