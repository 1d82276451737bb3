"""Regenerate trl-1.16-online-dpo-golden.json: online DPO's pairs and loss as TRL 1.16.0 computes them.

    python tests/data/make_online_dpo_golden.py      (needs trl==1.16.0, a dependency of the harness)

TRL's loss is inline in `OnlineDPOTrainer.training_step` (trl/experimental/online_dpo/online_dpo_trainer.py,
1.16.0, lines 1141-1314), after generation, scoring and two forwards. That whole method is called here
unbound on a stand-in trainer whose `_generate` returns fixed completion ids (with or without EOS),
whose `_forward` returns fixed per-token log-probs of the policy or the reference, and whose
`_calculate_rewards_from_functions` returns fixed reward-model scores; so TRL's own lines apply the
missing-EOS penalty (1217-1219), split the pairs (1221-1227, a tie to the first sample), sum the
log-probs (1229-1247), take the loss (1249-1256) and log the metrics (1258-1295). No model runs.

Which sample TRL chose is not returned, so each prompt is also run alone: its `logps/chosen` stat is the
chosen sample's summed log-prob, and its loss the pair's loss.
Inputs: 4 prompts x 2 completions of up to 5 tokens, in the harness's layout (a prompt's two samples
consecutive; TRL holds all first samples, then all second ones), per-token log-probs of the policy and the
reference, reward-model scores with one exact tie, and which completions hold an EOS; float64.
"""

import json
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import torch
import trl
from trl.experimental.online_dpo.online_dpo_trainer import OnlineDPOTrainer

PAD, TOKEN, EOS = 0, 5, 2
CASES = {  # name: (loss_type, beta, missing_eos_penalty)
    "sigmoid_beta_0.1": ("sigmoid", 0.1, None),
    "sigmoid_beta_0.5": ("sigmoid", 0.5, None),
    "ipo_beta_0.1": ("ipo", 0.1, None),
    "sigmoid_missing_eos_penalty_1.0": ("sigmoid", 0.1, 1.0),  # flips the last pair
}


def inputs() -> dict:
    g = torch.Generator().manual_seed(0)
    n, t = 8, 5
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]] * 2, dtype=torch.float64)
    policy = -torch.rand(n, t, generator=g, dtype=torch.float64) * 3
    ref = policy - (torch.rand(n, t, generator=g, dtype=torch.float64) - 0.4) * 0.8
    scores = torch.tensor([0.7, -0.2, 0.3, 0.3, -1.1, 0.4, 1.5, 0.9], dtype=torch.float64)  # prompt 1: a tie
    contain_eos = torch.tensor([1, 1, 1, 1, 1, 1, 0, 1], dtype=torch.float64)  # prompt 3's first sample: none
    return {"mask": mask, "policy": policy * mask, "ref": ref * mask, "scores": scores, "contain_eos": contain_eos}


def to_trl(x: torch.Tensor) -> torch.Tensor:
    """Harness rows (prompt 0 sample 0, prompt 0 sample 1, prompt 1 sample 0, ...) -> TRL's (all sample 0s,
    then all sample 1s: `2 * prompts`)."""
    return x.view(-1, 2, *x.shape[1:]).transpose(0, 1).reshape(x.shape)


def trl_step(x: dict, loss_type: str, beta: float, penalty: float | None) -> tuple[float, dict]:
    """OnlineDPOTrainer.training_step on the prompts of `x`; returns the loss and TRL's logged stats."""
    mask = to_trl(x["mask"])
    completion_ids = torch.where(mask.bool(), TOKEN, PAD)
    lengths = mask.sum(1).long()
    for row in torch.nonzero(to_trl(x["contain_eos"])).flatten():
        completion_ids[row, lengths[row] - 1] = EOS  # the EOS is the last completion token
    batch_size = len(x["scores"]) // 2
    policy = SimpleNamespace(train=lambda: None, logps=to_trl(x["policy"]))
    reference = SimpleNamespace(logps=to_trl(x["ref"]))

    class Accelerator:
        gather_for_metrics = staticmethod(lambda t: t)
        backward = staticmethod(lambda loss, **kwargs: None)

    trainer = SimpleNamespace(
        args=SimpleNamespace(use_vllm=False, missing_eos_penalty=penalty, loss_type=loss_type, torch_empty_cache_steps=None,
                             optim="adamw_torch", n_gpu=1, gradient_accumulation_steps=1),
        beta=beta, eos_token_ids=[EOS], ref_model=reference, reward_funcs=["reward model"],
        stats=defaultdict(list), accelerator=Accelerator(), state=SimpleNamespace(global_step=0),
        processing_class=SimpleNamespace(batch_decode=lambda ids, **kwargs: ["completion"] * len(ids)),
        _generate=lambda model, prompts, images=None: (
            torch.full((len(mask), 2), TOKEN), torch.ones(len(mask), 2, dtype=torch.long), completion_ids, mask.long(), None),
        _forward=lambda model, *args: model.logps,
        _calculate_rewards_from_functions=lambda **kwargs: to_trl(x["scores"]).clone())  # TRL penalises in place
    loss = OnlineDPOTrainer.training_step(trainer, policy, {"prompt": ["prompt"] * batch_size})
    return loss.item(), {k: v[0] for k, v in trainer.stats.items()}


def main() -> None:
    assert trl.__version__ == "1.16.0", trl.__version__
    x = inputs()
    sums = (x["policy"] * x["mask"]).sum(1)
    cases = {}
    for name, (loss_type, beta, penalty) in CASES.items():
        loss, stats = trl_step(x, loss_type, beta, penalty)
        is_chosen, pair_losses = [], []
        for p in range(len(sums) // 2):
            one = {k: v[2 * p:2 * p + 2] for k, v in x.items()}
            pair_loss, pair_stats = trl_step(one, loss_type, beta, penalty)
            gaps = [abs(pair_stats["logps/chosen"] - sums[i].item()) for i in (2 * p, 2 * p + 1)]
            assert min(gaps) < 1e-12 < max(gaps), "which sample TRL chose is ambiguous"
            first = gaps[0] < gaps[1]
            is_chosen += [1.0, -1.0] if first else [-1.0, 1.0]
            pair_losses.append(pair_loss)
        assert abs(sum(pair_losses) / len(pair_losses) - loss) < 1e-12
        cases[name] = {
            "params": {"beta": beta, "loss_type": loss_type}, "missing_eos_penalty": penalty,
            "is_chosen": is_chosen, "pair_losses": pair_losses, "loss": loss,
            "metrics": {k: stats[k] for k in ("rewards/chosen", "rewards/rejected", "rewards/margins",
                                                 "rewards/accuracies", "logps/chosen", "logps/rejected",
                                                 "objective/scores_margin")}}
    out = {"trl_version": trl.__version__, "inputs": {k: v.tolist() for k, v in x.items()}, "cases": cases}
    path = Path(__file__).with_name("trl-1.16-online-dpo-golden.json")
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}: " + ", ".join(f"{k} loss {v['loss']:.10f} chosen {v['is_chosen'][::2]}" for k, v in cases.items()))


if __name__ == "__main__":
    main()
