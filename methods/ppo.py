"""PPO for RLHF: Proximal Policy Optimization (Schulman et al., 2017, arXiv:1707.06347) on a KL-shaped
reward, as in Ziegler et al. (2019, arXiv:1909.08593) and Ouyang et al. (2022, arXiv:2203.02155), with
the choices of "The N Implementation Details of RLHF with PPO" (Huang et al., ICLR 2024 blog track,
https://iclr-blogposts.github.io/2024/blog/the-n-implementation-details-of-rlhf-with-ppo/) and its sequel
"The N+ Implementation Details of RLHF with PPO: A Case Study on TL;DR Summarization" (Huang et al.,
2024, arXiv:2403.17031).

Per completion token t of a rollout (policy pi, reference pi_sft = the SFT weights, score R from the
reward model):
    r_t     = -beta * (log pi(y_t) - log pi_sft(y_t))   + R at the last completion token
    delta_t = r_t + gamma * V_{t+1} - V_t                    (V after the last token = 0: the episode ends)
    A_t     = sum_l (gamma * lam)^l delta_{t+l}             GAE (Schulman et al., 2016, arXiv:1506.02438)
    G_t     = A_t + V_t                                      the value target
    A_t    <- (A_t - mean A) / std A                         whitened over the batch's completion tokens
                                                             (std with Bessel's correction, as TRL's masked_whiten)
    rho_t   = pi(y_t) / pi_old(y_t)
    L_pi    = mean_t max(-A_t rho_t, -A_t clip(rho_t, 1 - eps, 1 + eps))
    L_V     = 1/2 mean_t max((V_t - G_t)^2, (V_old,t + clip(V_t - V_old,t, -eps_v, eps_v) - G_t)^2)
    loss    = L_pi + vf_coef * L_V
beta is the KL coefficient of the objective E[R] - beta KL(pi || pi_sft), the same knob as DPO's beta (DPO
solves that objective in closed form), so one beta sweep compares the two; beta = 0 is PPO on the score
alone. With `target_kl` set, beta follows Ziegler et al.'s adaptive controller after each rollout batch
of n samples with mean KL k:
    beta <- beta * (1 + clip(k / target_kl - 1, -0.2, 0.2) * n / horizon)
Its reach in a run is small unless the horizon is set for it: each update moves beta by at most a factor
(1 +- 0.2 n / horizon), so a run of N samples in all moves it by at most about exp(+-0.2 N / horizon). The
default run (150 steps of 16 sequences, 2 epochs per rollout batch of 32 prompts: a batch every 4 steps,
37 updates that take effect, N = 1,184) with the default horizon 10,000 moves beta by at most 2.4%; for the controller to hold a
target, use a horizon of the order of the run's N (Ziegler et al. used 10,000 with far longer runs).

Critic: a value head (one linear layer, zero-initialised) on the policy's last hidden state, sharing the
trunk, as TRL's PPOTrainer did up to version 0.11 (AutoModelForCausalLMWithValueHead) with vf_coef 0.1.
Why: no second model in memory, so PPO costs what the direct methods cost; Ziegler et al. and the "N
details" report use a separate critic initialised from the reward model, which decouples the value loss
from the policy's features but doubles the memory. Departures: no reward whitening, and the value head
starts at zero rather than from the reward model. A completion without EOS is scored as unfinished, with
online.missing_eos_penalty (the N details' -1) off by default. Checked end to end against a transcription
of TRL 0.11's PPOTrainer (compute_rewards, compute_advantages, loss) in tests/test_online.py.
"""

import torch
from pydantic import model_validator

from harness.logps import ROLLOUTS, VALUES
from methods import LossOutput, Method, Params, hyper, mean_over_processes, register


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and returns over the masked positions of each row, (n, T) each.
    Positions off the mask (prompt, padding) are skipped: the step after a row's last masked position
    has value 0 (the episode ends there)."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        on = mask[:, t] > 0
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = torch.where(on, delta + gamma * lam * running, running)
        next_value = torch.where(on, values[:, t], next_value)
        advantages[:, t] = torch.where(on, running, torch.zeros_like(running))
    return advantages, (advantages + values) * mask


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance over the masked positions (the unbiased variance, as TRL's masked_whiten)."""
    mean, count = masked_mean(x, mask), mask.sum()
    variance = masked_mean((x - mean) ** 2, mask) * count / (count - 1).clamp(min=1)
    return (x - mean) * torch.rsqrt(variance + 1e-8) * mask


def last_token_rewards(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(n, T) zeros with each row's score at its last completion token."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask > 0, positions, torch.full_like(positions, -1)).max(-1).values
    out = torch.zeros_like(mask, dtype=scores.dtype)
    out[torch.arange(mask.shape[0], device=mask.device), last] = scores
    return out


def adaptive_kl(beta: float, kl: float, target: float, n: int, horizon: float) -> float:
    """Ziegler et al. (2019)'s proportional controller: beta grows when KL is above target, shrinks below."""
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return beta * (1.0 + error * n / horizon)


def clipped_policy_loss(logps, old_logps, advantages, mask, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_pi, clip fraction): the share of tokens where the clipped term is the one taken, i.e. the clip is
    active and the token gets no gradient (TRL's pg_clipfrac: a ratio past 1 + eps with a negative advantage
    is not clipped, since the unclipped term is the larger loss there)."""
    ratio = torch.exp(logps - old_logps)
    unclipped, clipped = -advantages * ratio, -advantages * ratio.clamp(1 - eps, 1 + eps)
    return masked_mean(torch.max(unclipped, clipped), mask), masked_mean((clipped > unclipped).float(), mask)


def clipped_value_loss(values, old_values, returns, mask, eps: float) -> torch.Tensor:
    clipped = old_values + (values - old_values).clamp(-eps, eps)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)


@register
class PPO(Method):
    name = "ppo"
    consumes = frozenset({ROLLOUTS, VALUES})
    paper = "arXiv:1707.06347"

    class Params(Params):
        beta: float = hyper(0.1, [0.01, 0.1, 0.3, 1.0], "KL coefficient of E[R] - beta KL (its start value "
                            "when target_kl is set; 0 = no KL term)", ge=0)
        target_kl: float | None = hyper(None, [], "adaptive KL controller's target (nats per sequence); None = fixed beta", gt=0)
        horizon: float = hyper(10000.0, [10000.0], "adaptive controller's horizon (samples)", gt=0)
        gamma: float = hyper(1.0, [1.0], "discount", ge=0, le=1)
        lam: float = hyper(0.95, [0.95], "GAE lambda", ge=0, le=1)
        cliprange: float = hyper(0.2, [0.2], "policy ratio clip eps", gt=0)
        cliprange_value: float = hyper(0.2, [0.2], "value clip eps_v", gt=0)
        vf_coef: float = hyper(0.1, [0.1], "weight of the value loss", ge=0)
        whiten_advantages: bool = hyper(True, [True], "whiten advantages over each rollout batch")

        @model_validator(mode="after")
        def _controller_needs_beta(self):
            if self.target_kl is not None and self.beta == 0:
                raise ValueError("target_kl needs beta > 0: the adaptive controller scales beta, and 0 stays 0")
            return self

    def __init__(self, **params):
        super().__init__(**params)
        self.beta = self.params.beta

    def advantages(self, rollout):
        p = self.params
        kl = (rollout.logps - rollout.ref_logps) * rollout.mask
        rewards = -self.beta * kl + last_token_rewards(rollout.scores, rollout.mask)
        advantages, returns = gae(rewards, rollout.values, rollout.mask, p.gamma, p.lam)
        if p.whiten_advantages:
            advantages = whiten(advantages, rollout.mask)
        metrics = {"beta": torch.tensor(self.beta), "rollout/reward": (rewards * rollout.mask).sum(-1).mean()}
        if p.target_kl is not None:  # one beta for every process of a launch: the KL and n are global
            from accelerate import PartialState

            n = len(rollout) * PartialState().num_processes
            self.beta = adaptive_kl(self.beta, float(mean_over_processes(kl.sum(-1))), p.target_kl, n, p.horizon)
        return {"advantages": advantages, "returns": returns}, metrics

    def loss(self, policy, rollout):
        p, mask = self.params, rollout.mask
        policy_loss, clipped = clipped_policy_loss(policy.logps, rollout.logps, rollout.fields["advantages"], mask,
                                                   p.cliprange)
        value_loss = clipped_value_loss(policy.values, rollout.values, rollout.fields["returns"], mask, p.cliprange_value)
        approx_kl = 0.5 * masked_mean((policy.logps - rollout.logps) ** 2, mask)
        ratio = masked_mean(torch.exp(policy.logps.detach() - rollout.logps), mask)
        metrics = {"policy/loss": policy_loss.detach(), "policy/clipfrac": clipped, "policy/approxkl": approx_kl.detach(),
                   "policy/ratio": ratio, "value/loss": value_loss.detach()}
        return LossOutput(policy_loss + p.vf_coef * value_loss, metrics)

    def state_dict(self):
        return {"beta": self.beta}

    def load_state_dict(self, state):
        self.beta = state["beta"]
