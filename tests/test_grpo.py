"""GRPO against TRL 1.16's GRPOTrainer (golden numbers from tests/data/make_grpo_golden.py): advantages for each
scale_rewards mode, the loss for each loss_type with and without the KL term, and dapo's loss unchanged when
the rollout batch is split into minibatches as the online loop splits it."""

import json

import pytest
import torch

import methods
from harness.logps import TokenLogps
from harness.online import Rollout

from .conftest import REPO, call_cli

GOLDEN = json.loads((REPO / "tests" / "data" / "trl-1.16-grpo-golden.json").read_text())
X = {k: torch.tensor(v, dtype=torch.float64) for k, v in GOLDEN["inputs"].items()}


def _rollout(method) -> Rollout:
    n, k = len(X["scores"]), method.samples_per_prompt
    rollout = Rollout(input_ids=torch.zeros(n, 5, dtype=torch.long), attention_mask=torch.ones(n, 5, dtype=torch.long),
                      mask=X["mask"], group=torch.arange(n // k).repeat_interleave(k), scores=X["scores"],
                      logps=X["old"], ref_logps=X["ref"], max_new_tokens=GOLDEN["max_completion_length"])
    rollout.fields, rollout.metrics = method.advantages(rollout)
    return rollout


def test_golden_is_trl_1_16():
    assert GOLDEN["trl_version"] == "1.16.0"


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_match_trl(scale):
    golden = GOLDEN["advantages"][scale]
    rollout = _rollout(methods.get("grpo", k=3, scale_rewards=scale))
    assert rollout.fields["advantages"].tolist() == pytest.approx(golden["advantages"], abs=1e-10)
    assert rollout.metrics["rollout/reward"].item() == pytest.approx(golden["reward"], abs=1e-10)
    assert rollout.metrics["rollout/reward_std"].item() == pytest.approx(golden["reward_std"], abs=1e-10)
    assert rollout.metrics["rollout/frac_reward_zero_std"].item() == pytest.approx(golden["frac_reward_zero_std"])


@pytest.mark.parametrize("case", sorted(GOLDEN["cases"]))
def test_loss_matches_trl(case):
    golden = GOLDEN["cases"][case]
    method = methods.get("grpo", **golden["params"])
    rollout = _rollout(method)
    out = method.loss(TokenLogps(X["new"], X["mask"]), rollout)
    assert out.loss.item() == pytest.approx(golden["loss"], abs=1e-10)
    assert out.metrics["policy/clipfrac"].item() == pytest.approx(golden["clip_ratio"], abs=1e-10)
    assert 0 < golden["clip_ratio"] < 1  # the inputs exercise the clip
    if golden["params"]["beta"] > 0:
        assert out.metrics["policy/kl"].item() == pytest.approx(golden["kl"], abs=1e-10)
    else:
        assert "policy/kl" not in out.metrics


@pytest.mark.parametrize("case", ["dapo_beta0", "dapo_beta0.04"])
def test_dapo_minibatches_average_to_the_batch_loss(case):
    """The loop's minibatches are random subsets and accumulation averages their losses: each is TRL's
    micro-batch loss times the accumulation steps, and their mean is the full batch's token mean."""
    golden = GOLDEN["cases"][case]
    method = methods.get("grpo", **golden["params"])
    rollout = _rollout(method)
    parts = golden["minibatches"]
    losses = []
    for part in parts:
        rows = torch.tensor(part["rows"])
        out = method.loss(TokenLogps(X["new"][rows], X["mask"][rows]), rollout.select(rows))
        assert out.loss.item() / len(parts) == pytest.approx(part["loss"], abs=1e-10)
        assert out.metrics["policy/clipfrac"].item() == pytest.approx(part["clip_ratio"], abs=1e-10)
        losses.append(out.loss)
    assert torch.stack(losses).mean().item() == pytest.approx(golden["loss"], abs=1e-10)


def test_dr_grpo_needs_the_samplers_length():
    method = methods.get("grpo", k=3, loss_type="dr_grpo")
    rollout = _rollout(method)
    rollout.max_new_tokens = 0
    with pytest.raises(ValueError, match="max_new_tokens"):
        method.loss(TokenLogps(X["new"], X["mask"]), rollout)


def test_defaults_are_trls_where_the_harness_has_no_reason_to_differ():
    p = methods.get("grpo").params
    assert (p.loss_type, p.scale_rewards, p.epsilon_low, p.epsilon_high) == ("dapo", "group", 0.2, 0.2)
    assert p.beta == methods.get("dpo").params.beta  # one beta knob across methods (TRL's default is 0.0)
    assert methods.get_class("grpo").kind == "online"


def test_listed_by_harness_methods():
    result = call_cli("methods", env={"COLUMNS": "300"})  # wide enough that rich truncates no name
    assert result.returncode == 0, result.stderr
    for param in ("loss_type", "scale_rewards", "epsilon_high"):
        assert param in result.stdout
    assert "grpo" in result.stdout
