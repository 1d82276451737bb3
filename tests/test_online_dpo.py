"""Online DPO: pairs and loss against TRL 1.16's OnlineDPOTrainer, the same numbers as the offline DPO loss,
independence from the order of whole groups in a minibatch, and the CLI listing."""

import json

import pytest
import torch

import methods
from harness import SequenceLogps
from harness.errors import BadInput
from harness.logps import TokenLogps
from harness.online import Rollout

from .conftest import REPO, call_cli

GOLDEN = json.loads((REPO / "tests" / "data" / "trl-1.16-online-dpo-golden.json").read_text())
X = {k: torch.tensor(v, dtype=torch.float64) for k, v in GOLDEN["inputs"].items()}
SIGMOID = [name for name, case in GOLDEN["cases"].items() if case["params"]["loss_type"] == "sigmoid"]


def rollout_of(case: dict) -> Rollout:
    """The golden inputs as the online loop hands them over. TRL penalises a completion without EOS before
    comparing; the loop is to do it in its scores, so it is done here the same way."""
    scores = X["scores"].clone()
    if case["missing_eos_penalty"] is not None:
        scores[X["contain_eos"] == 0] -= case["missing_eos_penalty"]
    n, t = X["mask"].shape
    return Rollout(input_ids=torch.zeros(n, t + 1, dtype=torch.long), attention_mask=torch.ones(n, t + 1, dtype=torch.long),
                   mask=X["mask"], group=torch.arange(n // 2).repeat_interleave(2), scores=scores,
                   logps=X["policy"], ref_logps=X["ref"])


def prepared(name: str):
    case = GOLDEN["cases"][name]
    method = methods.get("online_dpo", **case["params"])
    rollout = rollout_of(case)
    rollout.fields, rollout.metrics = method.advantages(rollout)
    return case, method, rollout


def loss_of(method, rollout):
    return method.loss(TokenLogps(rollout.logps, rollout.mask), rollout)


@pytest.mark.parametrize("name", list(GOLDEN["cases"]))
def test_online_dpo_matches_trl(name):
    """Golden numbers from TRL 1.16's OnlineDPOTrainer.training_step (tests/data/make_online_dpo_golden.py)."""
    assert GOLDEN["trl_version"] == "1.16.0"
    case, method, rollout = prepared(name)
    assert rollout.fields["is_chosen"].tolist() == case["is_chosen"]
    assert rollout.metrics["rollout/ties"].item() == 0.25  # prompt 1's tie: TRL takes the first sample
    assert rollout.metrics["rollout/score_margin"].item() == pytest.approx(case["metrics"]["objective/scores_margin"], abs=1e-10)
    out = loss_of(method, rollout)
    assert out.loss.item() == pytest.approx(case["loss"], abs=1e-10)
    trl_names = {"rewards/chosen": "rewards/chosen", "rewards/rejected": "rewards/rejected", "margins": "rewards/margins",
                 "accuracy": "rewards/accuracies", "logps/chosen": "logps/chosen", "logps/rejected": "logps/rejected"}
    for ours, theirs in trl_names.items():
        assert out.metrics[ours].item() == pytest.approx(case["metrics"][theirs], abs=1e-10), ours


def test_missing_eos_penalty_in_the_scores_flips_a_pair_as_in_trl():
    plain, penalised = GOLDEN["cases"]["sigmoid_beta_0.1"], GOLDEN["cases"]["sigmoid_missing_eos_penalty_1.0"]
    assert plain["is_chosen"][6:] == [1.0, -1.0] and penalised["is_chosen"][6:] == [-1.0, 1.0]


@pytest.mark.parametrize("name", SIGMOID)
def test_online_dpo_equals_the_offline_dpo_loss(name):
    """One DPO formula in two places: online_dpo's loss is DPO's on the pairs its advantages formed."""
    case, method, rollout = prepared(name)
    chosen, rejected = rollout.fields["is_chosen"] > 0, rollout.fields["is_chosen"] < 0
    policy_sums, ref_sums = (X["policy"] * X["mask"]).sum(1), (X["ref"] * X["mask"]).sum(1)
    tokens = X["mask"].sum(1)
    side = lambda sums: SequenceLogps(sums[chosen], sums[rejected], tokens[chosen], tokens[rejected])  # noqa: E731
    offline = methods.get("dpo", beta=case["params"]["beta"]).loss(side(policy_sums), side(ref_sums))
    online = loss_of(method, rollout)
    assert online.loss.item() == pytest.approx(offline.loss.item(), abs=1e-12)
    for key in offline.metrics:
        assert online.metrics[key].item() == pytest.approx(offline.metrics[key].item(), abs=1e-12), key


@pytest.mark.parametrize("name", ["sigmoid_beta_0.1", "ipo_beta_0.1"])
def test_any_order_of_whole_groups_gives_the_same_pair_losses(name):
    """Minibatches drawn after advantages(), whole groups shuffled (and the two samples of a pair swapped,
    which the loop never does): each pair keeps its loss, each minibatch the mean of its pairs'."""
    case, method, rollout = prepared(name)
    generator = torch.Generator().manual_seed(3)
    groups = torch.randperm(len(rollout) // 2, generator=generator)
    within = torch.randint(0, 2, (len(groups),), generator=generator)
    order = torch.stack([2 * groups + within, 2 * groups + 1 - within], dim=1).flatten()
    for start in range(0, len(order), 2):
        part = rollout.select(order[start:start + 2])
        assert loss_of(method, part).loss.item() == pytest.approx(case["pair_losses"][groups[start // 2]], abs=1e-10)
    for start in range(0, len(order), 4):
        part = rollout.select(order[start:start + 4])
        expected = sum(case["pair_losses"][g] for g in groups[start // 2:start // 2 + 2].tolist()) / 2
        assert loss_of(method, part).loss.item() == pytest.approx(expected, abs=1e-10)


def test_online_dpo_facts_and_params():
    cls = methods.get_class("online_dpo")
    assert cls.kind == "online" and cls.whole_groups and methods.get("online_dpo").samples_per_prompt == 2
    assert methods.get("online_dpo").params.beta == methods.get("dpo").params.beta
    with pytest.raises(BadInput, match="loss_type"):
        methods.get("online_dpo", loss_type="hinge")


def test_methods_command_lists_online_dpo():
    result = call_cli("methods", env={"COLUMNS": "200"})  # rich's table would cut "online_dpo" at 80 columns
    assert result.returncode == 0, result.stderr
    assert "online_dpo" in result.stdout and "loss_type" in result.stdout
