"""KTO: Model Alignment as Prospect Theoretic Optimization (Ethayarajh et al., 2024, arXiv:2402.01306).

    r(x, y) = log pi(y|x) - log ref(y|x)                                  summed log-probs
    z_ref   = max(0, mean over the batch of r(x', y) for mismatched pairs)  detached
    loss    = mean over rows of  w_D * (1 - sigmoid(beta * (r - z_ref)))   desirable rows
                              |  w_U * (1 - sigmoid(beta * (z_ref - r)))   undesirable rows

Unpaired: takes prompt/completion/label rows, or paired data split into desirable and undesirable rows
and shuffled so that batches mix both labels (TRL 1.16 keeps them in blocks, so a batch can hold one
label only). Each row's mismatched pair (its prompt with another row's completion) is fixed when the data
is prepared, so its reference log-probs are computed once like every other sequence. z_ref is the
mean over the micro-batch's mismatched rows of every process, gathered as TRL gathers it. The paper's Eq. 8 asks for
w_D * n_D / (w_U * n_U) in [1, 4/3]; outside that band the run warns.
"""

import torch

from harness.errors import BadInput
from harness.logps import MISMATCHED_ROWS, ROWS
from methods import LossOutput, Method, ReferenceParams, hyper, mean_over_processes, register, reward_metrics

EQ8_BAND = (1.0, 4.0 / 3.0)


@register
class KTO(Method):
    name = "kto"
    consumes = frozenset({ROWS, MISMATCHED_ROWS})
    paper = "arXiv:2402.01306"

    class Params(ReferenceParams):  # a reference model: frozen by default, or an ablation
        beta: float = hyper(0.1, [0.01, 0.1, 0.3, 1.0], "strength of the KL pull towards the reference", gt=0)
        desirable_weight: float = hyper(1.0, [1.0, 1.33], "w_D, weight of desirable rows", gt=0)
        undesirable_weight: float = hyper(1.0, [1.0], "w_U, weight of undesirable rows", gt=0)

    def check_setup(self, batch_size, num_chosen, num_rejected):
        if batch_size < 2:
            raise BadInput("method 'kto' needs train.batch_size >= 2: its reference point z_ref is a batch mean "
                           "over mismatched pairs")
        if not num_chosen or not num_rejected:
            return [f"kto: the data has {num_chosen} desirable and {num_rejected} undesirable rows"]
        ratio = self.params.desirable_weight * num_chosen / (self.params.undesirable_weight * num_rejected)
        low, high = EQ8_BAND
        if not low <= ratio <= high:
            return [f"kto: desirable_weight * n_desirable / (undesirable_weight * n_undesirable) = {ratio:.3f} is "
                    f"outside the KTO paper's Eq. 8 band [{low}, {high:.3f}] ({num_chosen} desirable, "
                    f"{num_rejected} undesirable rows)"]
        return []

    def loss(self, policy, reference):
        beta = self.params.beta
        mismatched = mean_over_processes(policy.kl - reference.kl).detach()  # over every process's rows
        z_ref = mismatched.clamp(min=0)
        chosen_ratio = policy.chosen - reference.chosen
        rejected_ratio = policy.rejected - reference.rejected
        chosen_losses = self.params.desirable_weight * (1 - torch.sigmoid(beta * (chosen_ratio - z_ref)))
        rejected_losses = self.params.undesirable_weight * (1 - torch.sigmoid(beta * (z_ref - rejected_ratio)))
        loss = torch.cat([chosen_losses, rejected_losses]).mean()
        metrics = reward_metrics(beta * chosen_ratio, beta * rejected_ratio, paired=False)
        metrics["kl"] = z_ref
        metrics["kl_unclamped"] = mismatched  # z_ref before its clamp at 0: what a gathered mean changes first
        return LossOutput(loss, metrics)
