"""The method losses reproduce the numbers TRL 1.16 computes on the same inputs (../shared/conformance)."""

import json

import pytest
import torch

import methods
from harness import SequenceLogps

from .conftest import shared_path


def golden():
    return json.loads(shared_path("conformance", "trl-1.16-golden.json").read_text())


def pair_logps(data, case):
    pairs = [data["inputs"]["pairs"][i] for i in case.get("pairs", range(len(data["inputs"]["pairs"])))]
    column = lambda key: torch.tensor([p[key] for p in pairs], dtype=torch.float64)  # noqa: E731
    policy = SequenceLogps(column("pc"), column("pr"), column("lc"), column("lr"))
    reference = SequenceLogps(column("rc"), column("rr"), column("lc"), column("lr"))
    return policy, reference


@pytest.mark.parametrize("name", ["seed_dpo", "dpo_sigmoid"])
def test_dpo_matches_trl(name):
    data = golden()
    case = data["cases"][name]
    policy, reference = pair_logps(data, case)
    out = methods.get("dpo", **case["params"]).loss(policy, reference)
    assert out.loss.dtype == torch.float64
    assert abs(out.loss.item() - case["expected_loss"]) < 1e-9
    trl = case["trl_metrics"]
    assert out.metrics["rewards/chosen"] == pytest.approx(trl["rewards/chosen"], abs=1e-9)
    assert out.metrics["rewards/rejected"] == pytest.approx(trl["rewards/rejected"], abs=1e-9)
    assert out.metrics["margins"] == pytest.approx(trl["rewards/margins"], abs=1e-9)
    assert out.metrics["accuracy"] == pytest.approx(trl["rewards/accuracies"], abs=1e-6)


def test_dpo_per_pair_values():
    data = golden()
    case = data["cases"]["dpo_sigmoid"]
    policy, reference = pair_logps(data, case)
    for i, expected in enumerate(case["per_pair_formula"]):
        one = lambda side: SequenceLogps(side.chosen[i:i + 1], side.rejected[i:i + 1],  # noqa: E731
                                         side.chosen_tokens[i:i + 1], side.rejected_tokens[i:i + 1])
        assert methods.get("dpo", beta=0.1).loss(one(policy), one(reference)).loss.item() == pytest.approx(expected, abs=1e-12)


def test_label_smoothing_is_conservative_dpo():
    data = golden()
    policy, reference = pair_logps(data, data["cases"]["dpo_sigmoid"])
    beta, eps = 0.1, 0.2
    logits = beta * ((policy.chosen - reference.chosen) - (policy.rejected - reference.rejected))
    expected = ((1 - eps) * -torch.nn.functional.logsigmoid(logits) + eps * -torch.nn.functional.logsigmoid(-logits)).mean()
    got = methods.get("dpo", beta=beta, label_smoothing=eps).loss(policy, reference).loss
    assert got.item() == pytest.approx(expected.item(), abs=1e-12)
    assert got.item() != pytest.approx(data["cases"]["dpo_sigmoid"]["expected_loss"], abs=1e-6)
