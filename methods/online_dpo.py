"""Online DPO (Guo et al., 2024, "Direct Language Model Alignment from Online AI Feedback", arXiv:2402.04792),
as TRL 1.16's experimental OnlineDPOTrainer computes it with a reward model.

Per prompt x the policy samples two completions y_1, y_2 (consecutive in the rollout); the reward model
R labels the pair, a tie going to the first sample as in TRL:
    (y_w, y_l) = (y_1, y_2) if R(x, y_1) >= R(x, y_2) else (y_2, y_1)
and the policy takes DPO's loss on its own fresh pair against the frozen reference, summed log-probs:
    d    = (log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))
    loss = -log sigmoid(beta * d)          loss_type "sigmoid" (DPO, arXiv:2305.18290)
    loss = (d - 1 / (2 beta))^2            loss_type "ipo" (arXiv:2310.12036)
mean over the pairs of a minibatch. Each rollout batch is a new round of preference data drawn from the
current policy: iterative DPO (Xiong et al., 2024, arXiv:2312.11456) with rounds of one batch.
Implicit reward, as DPO's: beta * (log pi - log ref).

Matches TRL 1.16's OnlineDPOTrainer.training_step (trl/experimental/online_dpo/online_dpo_trainer.py lines
1217-1256: missing-EOS penalty, the `first_half >= second_half` pair split, the summed log-ratios and both
loss types) on the golden inputs of tests/data/trl-1.16-online-dpo-golden.json; TRL's path matched is one
reward model, text prompts, no vLLM (1.16 scores with reward functions only; it has no judge). Departures:
- Sampling: TRL generates with its own settings (temperature 0.9, max_new_tokens 64, cut after the first
  EOS); here the online loop samples at temperature 1, so the log-probs are those of the sampling
  distribution, with online.max_new_tokens.
- Steps: TRL takes one gradient step per generated batch; here online.epochs passes over minibatches, so
  after the first minibatch the pairs come from a slightly older policy (still valid DPO data).
- missing_eos_penalty: TRL subtracts it from the rewards of completions without an EOS before comparing;
  here the online loop does that for every online method (online.missing_eos_penalty), so rollout.scores
  arrive penalised and the pairs are formed from them (the tests check that penalised scores give TRL's pairs).
- IPO here is TRL's online one, on summed log-ratios; methods/ipo.py (TRL's DPOTrainer) averages per token.
- One beta: TRL's per-epoch list of betas is not supported.
"""

from typing import Literal

import torch
import torch.nn.functional as F

from harness.logps import ROLLOUTS
from methods import LossOutput, Method, Params, hyper, register, reward_metrics


def pairs(values: torch.Tensor) -> torch.Tensor:
    """(n,) per-sequence values -> (n/2, 2): the two samples of each prompt side by side. The loop keeps a
    prompt's samples consecutive in a rollout and (whole_groups) in every minibatch."""
    return values.view(-1, 2)


@register
class OnlineDPO(Method):
    name = "online_dpo"
    consumes = frozenset({ROLLOUTS})
    whole_groups = True  # the loss compares the two samples of a prompt: a minibatch must hold both
    paper = "arXiv:2402.04792"

    class Params(Params):
        beta: float = hyper(0.1, [0.01, 0.1, 0.3, 1.0], "strength of the KL pull towards the reference", gt=0)
        # IPO's target margin 1/(2 beta) is in summed nats, a different beta scale: not swept with sigmoid.
        loss_type: Literal["sigmoid", "ipo"] = hyper("sigmoid", ["sigmoid"], "sigmoid (DPO) or ipo, as TRL's online DPO")

    @property
    def samples_per_prompt(self) -> int:
        return 2

    def advantages(self, rollout):
        group = pairs(rollout.group)
        if not torch.equal(group[:, 0], group[:, 1]):  # once per rollout batch, so the sync is cheap
            raise ValueError("online_dpo needs the two samples of each prompt next to each other in the rollout")
        scores = pairs(rollout.scores)
        first = scores[:, 0] >= scores[:, 1]  # TRL: mask = first_half >= second_half, so a tie picks the first
        is_chosen = torch.stack([first, ~first], dim=1).flatten().to(scores.dtype) * 2 - 1  # +1 chosen, -1 rejected
        # A tie is mostly two identical completions: then d = 0 whatever the weights, so no gradient.
        ties = (scores[:, 0] == scores[:, 1]).float().mean()
        return {"is_chosen": is_chosen}, {"rollout/ties": ties,
                                          "rollout/score_margin": (scores[:, 0] - scores[:, 1]).abs().mean()}

    def loss(self, policy, rollout):
        beta = self.params.beta
        first = pairs(rollout.fields["is_chosen"])[:, 0] > 0

        def split(values):  # (n,) -> chosen (n/2,), rejected (n/2,); either sample of a pair may be the winner
            values = pairs(values)
            return torch.where(first, values[:, 0], values[:, 1]), torch.where(first, values[:, 1], values[:, 0])

        chosen, rejected = split(policy.summed())
        ref_chosen, ref_rejected = split((rollout.ref_logps * rollout.mask).sum(-1))
        chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
        d = chosen_ratio - rejected_ratio
        if self.params.loss_type == "sigmoid":
            losses = -F.logsigmoid(beta * d)
        else:
            losses = (d - 1 / (2 * beta)) ** 2
        metrics = reward_metrics(beta * chosen_ratio, beta * rejected_ratio)
        metrics["logps/chosen"] = chosen.detach().mean()
        metrics["logps/rejected"] = rejected.detach().mean()
        return LossOutput(losses.mean(), metrics)
