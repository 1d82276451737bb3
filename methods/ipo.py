"""IPO: Identity Preference Optimisation (Azar et al., 2023, "A General Theoretical Paradigm to
Understand Learning from Human Preferences", arXiv:2310.12036).

    h    = (log pi(y_w|x) - log ref(y_w|x)) / |y_w| - (log pi(y_l|x) - log ref(y_l|x)) / |y_l|
    loss = (h - 1 / (2 tau))^2

The log-ratios are averaged per token (as TRL 1.16 does), so 1/(2 tau) is a target margin in nats
*per token*: TRL's beta = 0.1 asks for 5 nats per token, far more than DPO-scale betas suggest. The
default here (tau = 1.0, a 0.5 nat-per-token target) and the sweep range are set for that scale.
`beta` is accepted as TRL's name for tau. Reported rewards: tau * summed log-ratio (TRL's convention).
"""

from pydantic import AliasChoices

from methods import LossOutput, Method, ReferenceParams, hyper, register, reward_metrics


@register
class IPO(Method):
    name = "ipo"
    paper = "arXiv:2310.12036"

    class Params(ReferenceParams):  # a reference model: frozen by default, or an ablation
        tau: float = hyper(1.0, [0.25, 0.5, 1.0, 2.0], "regularisation; target margin = 1/(2 tau) nats per token "
                           "(TRL: beta)", gt=0, validation_alias=AliasChoices("tau", "beta"))

    def implicit_reward(self, logps, reference, tokens):
        return (logps - reference) / tokens  # IPO fits per-token log-ratios

    def loss(self, policy, reference):
        tau = self.params.tau
        chosen_ratio = policy.chosen - reference.chosen
        rejected_ratio = policy.rejected - reference.rejected
        h = chosen_ratio / policy.chosen_tokens - rejected_ratio / policy.rejected_tokens
        losses = (h - 1 / (2 * tau)) ** 2
        metrics = reward_metrics(tau * chosen_ratio, tau * rejected_ratio)
        metrics["logratio_per_token_margin"] = h.detach().mean()
        return LossOutput(losses.mean(), metrics)
