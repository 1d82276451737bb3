"""The method losses reproduce the numbers TRL 1.16 computes on the same inputs (tests/data/, the
repo's own copy of ../shared/conformance, so every clone checks them)."""

import json

import pytest
import torch

import methods
from harness import SequenceLogps

from .conftest import REPO

GOLDEN = REPO / "tests" / "data" / "trl-1.16-golden.json"


def golden():
    return json.loads(GOLDEN.read_text())


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


def kto_logps(data, shift_policy_kl=0.0):
    rows = data["inputs"]["kto_examples"]
    t = lambda values: torch.tensor(values, dtype=torch.float64)  # noqa: E731
    good, bad = [r for r in rows if r["label"]], [r for r in rows if not r["label"]]
    side = lambda key, kl_key, shift: SequenceLogps(  # noqa: E731
        t([r[key] for r in good]), t([r[key] for r in bad]), t([r["n"] for r in good]), t([r["n"] for r in bad]),
        kl=t([r[kl_key] + shift for r in rows]), kl_tokens=t([r["nkl"] for r in rows]))
    return side("pl", "pkl", shift_policy_kl), side("rl", "rkl", 0.0)


def orpo_logps(data):
    policy, reference = pair_logps(data, {})
    # TRL's NLL covers the prompt tokens too, all but the first (nothing predicts it): -1.0 nat each here.
    predicted = torch.tensor([n - 1 for n in data["inputs"]["prompt_lens"]], dtype=torch.float64)
    policy.chosen_prompt = predicted * data["inputs"]["prompt_token_logp"]
    policy.chosen_prompt_tokens = predicted
    return policy, reference


# The harness's ORPO leaves prompt tokens out of its NLL by default; TRL counts them (see methods/orpo.py).
TRL_SPELLING = {"orpo": {"nll_on_prompt": True}}


def _case_names():
    return sorted(json.loads(GOLDEN.read_text())["cases"])


@pytest.mark.parametrize("name", _case_names())
def test_every_golden_case(name):
    data = golden()
    case = data["cases"][name]
    method = methods.get(case["method"], **case["params"], **TRL_SPELLING.get(case["method"], {}))
    if case["method"] == "kto":
        policy, reference = kto_logps(data, shift_policy_kl=-1.0 if name == "kto_negative_kl_clamped" else 0.0)
    elif case["method"] == "orpo":
        policy, reference = orpo_logps(data)
    else:
        policy, reference = pair_logps(data, case)
    out = method.loss(policy, None if method.reference_free else reference)
    tolerance = 1e-6 if case["method"] == "orpo" else 1e-9
    assert abs(out.loss.item() - case["expected_loss"]) < tolerance, (name, out.loss.item(), case["expected_loss"])
    if "kl_formula" in case:
        assert out.metrics["kl"] == pytest.approx(case["kl_formula"], abs=1e-12)
    if "nll_formula" in case:
        assert out.metrics["nll"] == pytest.approx(case["nll_formula"], abs=1e-9)
    for key in ("rewards/chosen", "rewards/rejected", "margins", "accuracy"):
        assert key in out.metrics


def test_orpo_default_nll_excludes_prompt_tokens():
    data = golden()
    policy, _ = orpo_logps(data)
    out = methods.get("orpo", **{"lambda": 0.1}).loss(policy, None)
    pairs = data["inputs"]["pairs"]
    assert out.metrics["nll"] == pytest.approx(-sum(p["pc"] for p in pairs) / sum(p["lc"] for p in pairs), abs=1e-12)


def test_simpo_gamma_spellings_agree():
    a = methods.get("simpo", beta=2.0, gamma=0.5)
    b = methods.get("simpo", beta=2.0, gamma_beta_ratio=0.25)
    assert a.recorded_params() == b.recorded_params() == {"beta": 2.0, "gamma": 0.5, "gamma_beta_ratio": 0.25,
                                                          "sft_weight": 0.0}


def test_ipo_accepts_trl_beta_as_tau():
    assert methods.get("ipo", beta=0.5).recorded_params() == methods.get("ipo", tau=0.5).recorded_params() == {
        "tau": 0.5, "reference": "frozen", "reference_ema": 0.99}


def test_the_repo_copy_is_the_shared_one():
    from .conftest import shared_path

    assert GOLDEN.read_bytes() == shared_path("conformance", "trl-1.16-golden.json").read_bytes()
