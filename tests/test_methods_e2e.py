"""Every registered method trains end to end on the embedded task; a new method needs no edit elsewhere."""

import json
import math
import warnings

import pytest
import torch

import harness
import methods
from harness.config import load_config
from harness.errors import BadInput
from harness.logps import ROWS
from methods import LossOutput, Method, Params, hyper, register, reward_metrics

from .conftest import quick_overrides, run_cli


@register
class ToyHinge(Method):
    """A method defined only here, in tests/: hinge on the DPO margin."""

    name = "toy_hinge"

    class Params(Params):
        beta: float = hyper(0.5, [0.5], "scale", gt=0)

    def loss(self, policy, reference):
        chosen = self.params.beta * (policy.chosen - reference.chosen)
        rejected = self.params.beta * (policy.rejected - reference.rejected)
        return LossOutput(torch.relu(1 - (chosen - rejected)).mean(), reward_metrics(chosen, rejected))


@register
class ToyRows(Method):
    """Defined only here: a logistic loss on unpaired rows that asks for rows alone (no mismatched pairs)."""

    name = "toy_rows"
    consumes = frozenset({ROWS})

    def loss(self, policy, reference):
        assert policy.kl is None and reference.kl is None  # not asked for, not provided
        chosen, rejected = policy.chosen - reference.chosen, policy.rejected - reference.rejected
        losses = torch.cat([-torch.nn.functional.logsigmoid(chosen), -torch.nn.functional.logsigmoid(-rejected)])
        return LossOutput(losses.mean(), reward_metrics(chosen, rejected, paired=False))


def test_a_method_gets_exactly_the_inputs_it_declares(tmp_path, embedded):
    assert (ToyRows.paired, ToyRows.kind, methods.get_class("kto").paired) == (False, "offline", False)
    record = harness.train(load_config(None, quick_overrides(tmp_path, **{"method.name": "toy_rows", "train.max_steps": 3})))
    assert record.status == "completed" and record.method_facts["consumes"] == ["rows"]
    assert record.dataset["train_examples"] == 2000  # 1,000 pairs split into rows, no mismatched sequence
    assert record.metrics["first_train_loss"] == pytest.approx(math.log(2), abs=1e-5)  # log-ratio 0 at step one
    with pytest.raises(TypeError, match="unknown inputs"):
        type("Bad", (Method,), {"name": "bad", "consumes": frozenset({"pairs", "images"})})


def test_a_method_registered_in_tests_trains(tmp_path, embedded):
    assert "toy_hinge" in methods.available()
    record = harness.train(load_config(None, quick_overrides(tmp_path, **{"method.name": "toy_hinge"})))
    assert record.status == "completed" and record.method == "toy_hinge"
    assert record.metrics["first_train_loss"] == pytest.approx(1.0, abs=1e-5)  # margin 0 at step one


@pytest.mark.parametrize("name", ["dpo", "ipo", "kto", "orpo", "simpo"])
def test_each_method_runs_with_its_defaults(tmp_path, embedded, name):
    record = harness.train(load_config(None, quick_overrides(tmp_path, **{"method.name": name, "train.max_steps": 3})))
    assert record.status == "completed"
    assert record.method_facts["reference_free"] == methods.get_class(name).reference_free
    assert math.isfinite(record.metrics["final_train_loss"])
    if methods.get_class(name).reference_free:
        assert record.metrics["reference_cache_hit"] is None  # the reference pass never ran
    if name == "kto":
        assert record.dataset["train_examples"] == 2000  # 1,000 pairs unpaired into rows


def test_kto_on_a_native_unpaired_file(tmp_path, embedded):
    rows = [{"prompt": r["prompt"], "completion": r["chosen"], "label": True} for r in embedded.train_pairs[:60]]
    rows += [{"prompt": r["prompt"], "completion": r["rejected"], "label": False} for r in embedded.train_pairs[60:120]]
    path = tmp_path / "unpaired.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    record = harness.train(load_config(None, quick_overrides(tmp_path, **{
        "method.name": "kto", "data.source": str(path), "model.path": embedded.sft_path, "eval.num_prompts": 8,
        "eval.judge": "gold"})))
    assert record.status == "completed" and record.dataset["train_examples"] == 112
    assert "win_rate" in record.metrics and "gold_reward" in record.metrics  # embedded prompts: gold applies


def test_kto_batch_size_one_is_an_error_and_eq8_band_warns(tmp_path, embedded):
    with pytest.raises(BadInput, match="batch_size"):
        harness.train(load_config(None, quick_overrides(tmp_path, **{"method.name": "kto", "train.batch_size": 1})))
    with pytest.warns(UserWarning, match="Eq. 8"):
        harness.train(load_config(None, quick_overrides(tmp_path / "w", **{
            "method.name": "kto", "method.desirable_weight": 2.0, "train.max_steps": 1, "eval.num_prompts": 0})))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        methods.get("kto").check_setup(4, 100, 100)


def test_paired_method_on_unpaired_data_is_bad_input(tmp_path, embedded):
    path = tmp_path / "unpaired.jsonl"
    path.write_text(json.dumps({"prompt": "review pizza price :", "completion": "the pizza is good .", "label": True}) + "\n")
    result = run_cli("train", f"data.source={path}", f"model.path={embedded.sft_path}", "eval.num_prompts=0",
                     f"output_dir={tmp_path / 'out'}")
    assert result.returncode == 2 and "paired data" in result.stderr


def test_rows_with_empty_completions_after_truncation_are_skipped_not_nan(tmp_path, embedded):
    # A 14-token budget leaves some long prompts no room: those rows are dropped and counted, never NaN.
    rows = [dict(r) for r in embedded.train_pairs[:40]]
    for r in rows[:10]:
        r["prompt"] = r["prompt"] + " " + " ".join(["the pizza is good ."] * 3)
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name in ("dpo", "ipo", "orpo", "simpo", "kto"):
        record = harness.train(load_config(None, quick_overrides(tmp_path / name, **{
            "method.name": name, "data.source": str(path), "model.path": embedded.sft_path, "eval.num_prompts": 0,
            "data.max_length": 14, "data.max_prompt_length": 14, "train.max_steps": 2, "train.log_steps": 1})))
        dropped = record.dataset["dropped_empty_completion"]
        assert dropped == (20 if name == "kto" else 10), (name, dropped)
        logged = [json.loads(line) for line in (tmp_path / name / "run" / "metrics.jsonl").read_text().splitlines()]
        losses = [row["loss"] for row in logged if "step" in row]
        assert losses and all(math.isfinite(v) for v in losses), (name, losses)
