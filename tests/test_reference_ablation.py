"""The reference variants of exercise 18.3.2 (methods.REFERENCES): what the loss is given, and each variant
trained through the backend, an EMA reference resuming with its weights."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import harness
import methods
from harness import SequenceLogps
from harness.config import load_config
from harness.trainer import EmaReference, reference_side

from .conftest import quick_overrides


def _policy_side(requires_grad=True):
    chosen = torch.tensor([-3.0, -5.0], dtype=torch.float64, requires_grad=requires_grad)
    rejected = torch.tensor([-4.0, -4.5], dtype=torch.float64, requires_grad=requires_grad)
    return SequenceLogps(chosen, rejected, torch.tensor([3, 5]), torch.tensor([4, 4]))


def test_no_reference_gives_the_exercises_loss_and_a_co_trained_one_only_the_policys_gradient():
    beta = 0.5
    dpo = methods.get("dpo", beta=beta, reference="none")
    policy = _policy_side()
    out = dpo.loss(policy, reference_side("none", {}, policy, None, False))
    expected = -F.logsigmoid(beta * (policy.chosen - policy.rejected)).mean()  # log pi(y_w) - log pi(y_l) alone
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-12)

    policy = _policy_side()
    out = methods.get("dpo", beta=beta, reference="co_trained").loss(policy, reference_side("co_trained", {}, policy, None, False))
    out.loss.backward()
    # every log-ratio is 0 (the reference is the policy), so the loss is log 2 whatever the weights, and its
    # gradient pushes chosen up and rejected down at a constant rate beta / 2 per pair: no pull back anywhere
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-12)
    assert policy.chosen.grad.tolist() == pytest.approx([-beta / 2 / 2] * 2)
    assert policy.rejected.grad.tolist() == pytest.approx([beta / 2 / 2] * 2)
    assert reference_side(None, {}, policy, None, False) is None  # a reference-free method gets none


def test_the_variant_is_a_declared_option_of_the_methods_with_a_reference():
    for name in ("dpo", "ipo", "kto"):
        cls = methods.get_class(name)
        assert cls.hyperparameters()["reference"]["default"] == "frozen"
        assert methods.get(name, reference="ema").reference == "ema"
    assert methods.get("simpo").reference is None and methods.get("orpo").reference is None
    with pytest.raises(harness.BadInput, match="reference"):
        methods.get("dpo", reference="sometimes")
    with pytest.raises(harness.BadInput, match="its parameters"):
        methods.get("simpo", reference="none")  # reference-free: nothing to ablate


def test_ema_reference_follows_the_policy_by_its_decay():
    policy = torch.nn.Linear(2, 1)
    ema = EmaReference(policy, decay=0.9)
    start = policy.weight.detach().clone()
    with torch.no_grad():
        policy.weight.add_(1.0)
    ema.update()
    assert torch.allclose(ema.model.weight, 0.9 * start + 0.1 * policy.weight)
    assert not ema.model.weight.requires_grad


@pytest.mark.parametrize("variant", ["none", "co_trained", "ema"])
def test_each_reference_variant_trains_through_the_backend(tmp_path, embedded, variant):
    record = harness.train(load_config(None, quick_overrides(tmp_path, **{
        "method.reference": variant, "train.max_steps": 3, "eval.num_prompts": 0, "train.log_steps": 1})))
    assert record.status == "completed" and record.method_facts["reference"] == variant
    assert record.method_params["reference"] == variant
    assert record.metrics["reference_sequences_computed"] == 0  # no SFT log-probs are needed to train
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    # at step 1 the ema and co-trained references equal the policy: every log-ratio is 0, the loss log 2
    if variant in ("co_trained", "ema"):
        assert first["loss"] == pytest.approx(math.log(2), abs=1e-6) and first["margins"] == pytest.approx(0, abs=1e-6)
    else:
        assert first["rewards/chosen"] == pytest.approx(0.1 * first["logps/chosen"], rel=1e-5)  # beta * log pi


def test_an_ema_reference_run_resumes_with_its_reference_weights(tmp_path, embedded):
    common = {"method.reference": "ema", "method.reference_ema": 0.5, "train.max_steps": 4, "train.save_steps": 2,
              "eval.num_prompts": 0, "train.log_steps": 1}
    harness.train(load_config(None, quick_overrides(tmp_path, **common)))
    run_dir = tmp_path / "run"
    assert (run_dir / "checkpoints" / "step-2" / "ema_reference.safetensors").is_file()
    weights = load_file(str(run_dir / "model" / "model.safetensors"))
    harness.train(load_config(None, quick_overrides(tmp_path, **common)))  # resumes from step 2
    again = load_file(str(run_dir / "model" / "model.safetensors"))
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    logged = [row for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "step" in row]
    straight, replayed = logged[2:4], logged[4:]
    assert [r["step"] for r in replayed] == [3, 4] and [r["loss"] for r in straight] == [r["loss"] for r in replayed]
