"""DPO: Direct Preference Optimization (Rafailov et al., 2023, arXiv:2305.18290).

    d    = (log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))     summed log-probs
    loss = (1 - eps) * -log sigmoid(beta * d) + eps * -log sigmoid(-beta * d)

eps = label_smoothing is conservative DPO (Mitchell, 2023): each label is flipped with probability eps,
for noisy preference data; eps = 0 is plain DPO. Implicit reward: beta * (log pi - log ref).
Matches TRL 1.16's DPOTrainer loss_type="sigmoid".
"""

import torch.nn.functional as F

from methods import LossOutput, Method, ReferenceParams, hyper, register, reward_metrics


@register
class DPO(Method):
    name = "dpo"
    paper = "arXiv:2305.18290"

    class Params(ReferenceParams):  # a reference model: frozen by default, or an ablation
        beta: float = hyper(0.1, [0.01, 0.1, 0.3, 1.0], "strength of the KL pull towards the reference", gt=0)
        label_smoothing: float = hyper(0.0, [0.0, 0.1], "probability that a label is flipped (cDPO)", ge=0, lt=0.5)

    def loss(self, policy, reference):
        beta, eps = self.params.beta, self.params.label_smoothing
        chosen_rewards = beta * (policy.chosen - reference.chosen)
        rejected_rewards = beta * (policy.rejected - reference.rejected)
        logits = chosen_rewards - rejected_rewards
        losses = -(1 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)
        return LossOutput(losses.mean(), reward_metrics(chosen_rewards, rejected_rewards))
