"""SimPO: Simple Preference Optimization with a reference-free reward (Meng et al., 2024, arXiv:2405.14734).

    loss = -log sigmoid(beta * (log pi(y_w|x) / |y_w| - log pi(y_l|x) / |y_l|) - gamma)
           + sft_weight * NLL(y_w)                       (CPO-SimPO when sft_weight > 0)

gamma is the absolute target margin (the paper's gamma; TRL's `simpo_gamma`). Some code spells the margin
as gamma_beta_ratio = gamma / beta (the SimPO repo's config): give either one; it is converted once and
both are recorded. NLL is the token-mean of the chosen completion's negative log-likelihood over the
batch (prompt excluded), as TRL's CPOTrainer computes it; TRL's default cpo_alpha = 1.0 adds it, pure
SimPO is sft_weight = 0 (the default here). Reference-free: no reference pass at all.
Reported rewards: beta * average log-prob (TRL's convention).
"""

from typing import Any

import torch.nn.functional as F
from pydantic import model_validator

from methods import LossOutput, Method, Params, hyper, register, reward_metrics


@register
class SimPO(Method):
    name = "simpo"
    reference_free = True
    paper = "arXiv:2405.14734"

    class Params(Params):
        beta: float = hyper(2.0, [1.0, 2.0, 2.5, 10.0], "reward scale on average log-probs", gt=0)
        gamma: float = hyper(0.5, [0.3, 0.5, 1.0, 1.6], "absolute target margin", ge=0)
        gamma_beta_ratio: float = hyper(0.25, [], "gamma / beta (the other spelling; derived when gamma is given)", ge=0)
        sft_weight: float = hyper(0.0, [0.0, 1.0], "weight of the chosen NLL term (CPO-SimPO; TRL's cpo_alpha)", ge=0)

        @model_validator(mode="before")
        @classmethod
        def _one_margin(cls, values: Any) -> Any:
            values = dict(values)
            beta = values.get("beta", cls.model_fields["beta"].default)
            if "gamma" in values and "gamma_beta_ratio" in values:
                if abs(values["gamma"] - values["gamma_beta_ratio"] * beta) > 1e-12:
                    raise ValueError("give gamma or gamma_beta_ratio (= gamma / beta), not both")
            elif "gamma_beta_ratio" in values:
                values["gamma"] = values["gamma_beta_ratio"] * beta
            else:
                values["gamma_beta_ratio"] = values.get("gamma", cls.model_fields["gamma"].default) / beta
            return values

    def implicit_reward(self, logps, reference, tokens):
        return logps / tokens  # average log-prob: the reward of a reference-free method

    def loss(self, policy, reference=None):
        beta, gamma = self.params.beta, self.params.gamma
        chosen_avg = policy.chosen / policy.chosen_tokens
        rejected_avg = policy.rejected / policy.rejected_tokens
        losses = -F.logsigmoid(beta * (chosen_avg - rejected_avg) - gamma)
        nll = -policy.chosen.sum() / policy.chosen_tokens.sum()
        loss = losses.mean() + self.params.sft_weight * nll
        metrics = reward_metrics(beta * chosen_avg, beta * rejected_avg)
        metrics["nll"] = nll.detach()
        return LossOutput(loss, metrics)

