"""ORPO: Monolithic Preference Optimization without Reference Model (Hong et al., 2024, arXiv:2403.07691).

    p_avg    = exp(log pi(y|x) / |y|)                     average per-token probability
    log_odds = log(p_w / (1 - p_w)) - log(p_l / (1 - p_l))
    loss     = NLL(y_w) - lambda * mean(log sigmoid(log_odds))

Reference-free. NLL is the token-mean negative log-likelihood of the chosen completions over the batch.
Difference from TRL 1.16: TRL's ORPOTrainer takes that NLL over the chosen row's prompt *and* completion
tokens (all but the first token, which nothing predicts). The paper's loss is an SFT term on the
response, so the harness excludes the prompt by default; `nll_on_prompt=True` reproduces TRL's number
(the conformance test does). `beta` is accepted as TRL's name for lambda.
Reported rewards: lambda * average log-prob (TRL's convention).
"""

import torch
import torch.nn.functional as F
from pydantic import AliasChoices, Field

from methods import LossOutput, Method, Params, hyper, register, reward_metrics


@register
class ORPO(Method):
    name = "orpo"
    reference_free = True
    paper = "arXiv:2403.07691"

    class Params(Params):
        lambda_: float = hyper(0.1, [0.05, 0.1, 0.25, 0.5], "weight of the odds-ratio term (TRL: beta)", gt=0,
                               validation_alias=AliasChoices("lambda", "lambda_", "beta"), serialization_alias="lambda")
        nll_on_prompt: bool = Field(False, description="count prompt tokens in the NLL term, as TRL 1.16 does")

    @property
    def reads_prompt_logps(self) -> bool:
        return self.params.nll_on_prompt

    def implicit_reward(self, logps, reference, tokens):
        return logps / tokens  # average log-prob: the reward of a reference-free method

    def loss(self, policy, reference=None):
        lam = self.params.lambda_
        chosen_avg = policy.chosen / policy.chosen_tokens
        rejected_avg = policy.rejected / policy.rejected_tokens
        # log(p / (1 - p)) with log p = avg; log1p(-exp(avg)) is the stable log(1 - p) for avg < 0.
        log_odds = (chosen_avg - rejected_avg) - (torch.log1p(-torch.exp(chosen_avg)) - torch.log1p(-torch.exp(rejected_avg)))
        odds_term = F.logsigmoid(log_odds)
        nll_sum, nll_tokens = -policy.chosen.sum(), policy.chosen_tokens.sum()
        if self.params.nll_on_prompt:
            nll_sum, nll_tokens = nll_sum - policy.chosen_prompt.sum(), nll_tokens + policy.chosen_prompt_tokens.sum()
        nll = nll_sum / nll_tokens
        metrics = reward_metrics(lam * chosen_avg, lam * rejected_avg)
        metrics.update(nll=nll.detach(), log_odds_ratio=log_odds.detach().mean(),
                       log_odds_chosen=odds_term.detach().mean())
        return LossOutput(nll - lam * odds_term.mean(), metrics)
