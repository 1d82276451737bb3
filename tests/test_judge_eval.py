"""The judge, evaluation against the SFT model, `harness eval`, and the errors a judge can raise."""

import json

import numpy as np
import pytest

import harness
from evals import win_rate
from evals.evaluate import Prompts, evaluate
from evals.judge import RewardModelJudge, embedded_judge
from evals.scorers import GoldScorer, make_scorer
from harness.config import EvalConfig, load_config
from harness.data import Formatter
from harness.errors import BadInput
from harness.reference import Reference

from .conftest import call_cli, quick_overrides


@pytest.fixture(scope="module")
def judge(embedded, cache_dir):
    path, _ = embedded_judge(embedded, cache_dir)
    return RewardModelJudge(path, device="cpu")


def test_trained_judge_agrees_with_gold_on_heldout_pairs(judge, embedded):
    from evals.evaluate import judge_agreement

    # the judge a CPU type builds from the same seed differs: 0.852 for the committed records, 0.833 on another;
    # a broken judge sits near 0.5
    assert judge.info["agreement_with_gold"] >= 0.8
    assert judge_agreement(judge, GoldScorer(), embedded.heldout_pairs) == pytest.approx(judge.info["agreement_with_gold"])
    # the judge is judged on prompts it never saw (test prompts), and never trained on the policy's pairs
    assert not {r["prompt"] for r in embedded.heldout_pairs} & {r["prompt"] for r in embedded.judge_pairs}
    assert not {r["prompt"] for r in embedded.train_pairs} & {r["prompt"] for r in embedded.judge_pairs}


def test_judge_is_a_saved_hugging_face_reward_model(judge):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(judge.path)
    assert model.config.num_labels == 1
    scores = judge.score(["review pizza price :"] * 2, ["the pizza price is great and lovely .", "the pizza price is awful ."])
    assert scores[0] > scores[1]


def test_sft_against_itself_is_a_coin_flip(judge, embedded, cache_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.generation import sample

    model = AutoModelForCausalLM.from_pretrained(embedded.sft_path)
    tokenizer = AutoTokenizer.from_pretrained(embedded.sft_path)
    prompts = embedded.eval_prompts
    ids = [Formatter(tokenizer, 64, 32).prompt_ids(p) for p in prompts]
    texts = lambda seed: tokenizer.batch_decode(sample(model, tokenizer, ids, max_new_tokens=48, seed=seed),  # noqa: E731
                                                skip_special_tokens=True)
    a, b = texts(1), texts(2)
    assert a != b
    result = win_rate(judge.score(prompts, a), judge.score(prompts, b))
    assert result.low <= 0.5 <= result.high
    # and through evaluate(): the same model with the same seeded decoding ties on every prompt
    cfg = EvalConfig(num_prompts=40)
    metrics = evaluate(model, Reference(model, "sft-self-test"), tokenizer, Prompts(prompts[:40], ids[:40]), cfg,
                       {"judge": judge, "gold": GoldScorer()}, cache_dir)
    assert metrics["win_rate"] == 0.5 and metrics["ties"] == 40 and metrics["kl_to_sft"] == pytest.approx(0, abs=1e-5)
    assert metrics["judge_gold_gap"] == 0 and not metrics["judge_gap_flag"] and metrics["judge_agreement_run"] is None
    assert metrics["per_prompt"]["judge"] == [0.5] * 40


def test_missing_judge_and_non_classifier_are_bad_input(tmp_path, embedded):
    with pytest.raises(BadInput, match="not found"):
        make_scorer(str(tmp_path / "no-such-judge"), [])
    with pytest.raises(BadInput, match="not a sequence classifier"):
        make_scorer(embedded.sft_path, [])
    result = call_cli("train", f"eval.judge={embedded.sft_path}", f"output_dir={tmp_path / 'out'}")
    assert result.returncode == 2 and "not a sequence classifier" in result.stderr
    assert not (tmp_path / "out").exists()
    with pytest.raises(BadInput, match="embedded task"):
        make_scorer("gold", ["What is the capital of France?"])


def test_a_scorer_returning_nan_is_an_error(embedded, cache_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    class NanJudge:
        name, fingerprint = "nan-judge", "nan-judge"

        def score(self, prompts, responses):
            return [float("nan") if i == 3 else 0.0 for i in range(len(responses))]

    model = AutoModelForCausalLM.from_pretrained(embedded.sft_path)
    tokenizer = AutoTokenizer.from_pretrained(embedded.sft_path)
    prompts = embedded.eval_prompts[:8]
    ids = [Formatter(tokenizer, 64, 32).prompt_ids(p) for p in prompts]
    with pytest.raises(ValueError, match="nan-judge.*nan.*response 3"):
        evaluate(model, Reference(model, "nan-test"), tokenizer, Prompts(prompts, ids), EvalConfig(num_prompts=8),
                 {"judge": NanJudge()}, cache_dir)


def test_run_record_holds_eval_metrics_and_harness_eval_reproduces_them(tmp_path, embedded):
    record = harness.train(load_config(None, quick_overrides(tmp_path, **{"train.max_steps": 5, "eval.num_prompts": 30})))
    m = record.metrics
    assert m["judge"] == "trained-judge" and m["num_prompts"] == 30
    for key in ("win_rate", "gold_win_rate", "soft_win_rate", "judge_agreement_heldout", "heldout_pref_accuracy",
                "kl_to_sft", "mean_length", "distinct_2", "gold_reward", "gold_reward_sft"):
        assert key in m, key
    assert m["judge_agreement_heldout"] >= 0.8
    assert m["sft_cache_hit"] in (True, False)
    result = call_cli("eval", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    again = json.loads((tmp_path / "run" / "record.json").read_text())["metrics"]
    assert again["sft_cache_hit"] is True
    for key in ("win_rate", "gold_reward", "kl_to_sft", "heldout_pref_accuracy"):
        assert again[key] == pytest.approx(m[key], abs=1e-6), key
    result = call_cli("eval", str(tmp_path / "run"), "eval.judge=gold", "eval.num_prompts=20")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "run" / "record.json").read_text())["metrics"]["judge"] == "gold"
    assert call_cli("eval", str(tmp_path / "run"), "train.max_steps=3").returncode == 2
    assert call_cli("eval", str(tmp_path / "nothing-here")).returncode == 2


def test_bootstrap_interval_on_real_scores_narrows_with_prompts(judge, embedded):
    scores = np.asarray(judge.score(embedded.eval_prompts, [r["chosen"] for r in embedded.train_pairs[:200]]))
    sft = np.asarray(judge.score(embedded.eval_prompts, [r["rejected"] for r in embedded.train_pairs[:200]]))
    few = win_rate(scores[:50], sft[:50])
    many = win_rate(scores, sft)
    assert many.high - many.low < few.high - few.low


def test_an_untrained_policy_scores_exactly_the_sft_baseline_on_heldout_pairs(embedded, cache_dir):
    """The policy's side of held-out preference accuracy is computed as the SFT side is (cached per sequence),
    so the SFT model as the policy gets log-ratios of exactly 0: accuracy 0.5 and gain 0, not rounding noise."""
    import methods
    from evals.evaluate import preference_accuracy
    from harness.data import PAIRS, prepare_examples
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded.sft_path)
    model = AutoModelForCausalLM.from_pretrained(embedded.sft_path)
    examples = prepare_examples(embedded.heldout_pairs[:96], Formatter(tokenizer, 64, 32), {PAIRS}).examples
    sft_logps, _ = Reference(model, "untrained-policy-test").cached_sequence_logps(
        examples, tokenizer.pad_token_id, cache_dir)
    found = preference_accuracy(methods.get("dpo"), model, sft_logps, examples, tokenizer.pad_token_id, batch_size=16)
    assert found == {"heldout_pref_accuracy": 0.5, "heldout_pref_accuracy_sft": 0.5, "heldout_pref_gain": 0.0}
