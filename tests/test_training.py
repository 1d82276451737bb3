"""Real runs of the shared backend on the embedded task."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import harness
from harness.config import load_config
from harness.record import RunRecord

from .conftest import quick_overrides


def test_first_step_loss_is_ln2_and_record_is_complete(tmp_path, embedded):
    record = harness.train(load_config(None, quick_overrides(tmp_path, **{"train.max_steps": 2})))
    assert record.status == "completed"
    assert abs(record.metrics["first_train_loss"] - math.log(2)) < 1e-5
    stored = RunRecord.read(tmp_path / "run")
    assert stored == record
    for key in ("win_rate", "win_rate_low", "win_rate_high", "ties", "gold_reward", "gold_reward_sft", "kl_to_sft",
                "mean_length", "distinct_2", "final_train_loss", "wall_time_s", "tokens_per_s",
                # what a skeptical reviewer needs in every record
                "judge_agreement_run", "judge_gold_gap", "judge_gold_gap_low", "judge_gold_gap_high", "judge_gap_flag",
                "heldout_pref_accuracy_sft", "heldout_pref_gain", "heldout_pref_ceiling", "kl_to_sft_se", "kl_per_token",
                "kl_decoding", "distinct_2_per_response", "repeat_rate", "repeat_rate_sft", "pairs_seen"):
        assert key in stored.metrics, key
    m = stored.metrics
    assert m["kl_decoding"] == "plain" and m["kl_to_sft_se"] > 0
    assert m["pairs_seen"] == 2 * 16  # 2 steps of 16 pairs
    assert m["heldout_pref_accuracy_sft"] == 0.5  # a log-ratio to SFT ties on every pair before training
    assert 0.75 < m["heldout_pref_ceiling"] < 0.95  # noisy Bradley-Terry labels cap any scorer
    assert m["heldout_pref_gain"] == pytest.approx(m["heldout_pref_accuracy"] - 0.5)
    assert len(stored.outcomes["test"]["judge"]) == len(stored.outcomes["test"]["gold"]) == 16
    assert sum(stored.outcomes["test"]["judge"]) / 16 == pytest.approx(m["win_rate"])
    params = {"beta": 0.1, "label_smoothing": 0.0, "reference": "frozen", "reference_ema": 0.99}
    assert stored.method == "dpo" and stored.method_params == params and stored.method_facts["reference"] == "frozen"
    assert stored.config["method"] == {"name": "dpo", **params}
    assert stored.dataset["train_examples"] == 1000 and stored.dataset["eval_prompts"] == 16
    assert {"prompts_truncated", "completions_truncated", "dropped_empty_completion"} <= set(stored.dataset)
    assert stored.versions["torch"] and stored.versions["transformers"] and stored.hardware["cpu_count"]
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) >= 2


def test_reference_logps_are_cached_bit_identically(tmp_path, embedded):
    first = harness.train(load_config(None, quick_overrides(tmp_path / "a", **{"train.max_steps": 1, "eval.num_prompts": 0})))
    second = harness.train(load_config(None, quick_overrides(tmp_path / "b", **{"train.max_steps": 1, "eval.num_prompts": 0})))
    assert second.metrics["reference_cache_hit"] is True
    assert first.metrics["first_train_loss"] == second.metrics["first_train_loss"]


def test_resume_from_checkpoint_gives_the_same_model(tmp_path, embedded):
    common = {"train.max_steps": 6, "train.save_steps": 3, "eval.num_prompts": 0, "train.log_steps": 1}
    straight = harness.train(load_config(None, quick_overrides(tmp_path / "straight", **common)))
    run_dir = tmp_path / "straight" / "run"
    assert (run_dir / "checkpoints" / "step-3").is_dir()
    # Another run in the same dir resumes from step 3 and must land on identical weights.
    weights = load_file(str(run_dir / "model" / "model.safetensors"))
    resumed = harness.train(load_config(None, quick_overrides(tmp_path / "straight", **common)))
    assert resumed.metrics["train_steps"] == 6
    again = load_file(str(run_dir / "model" / "model.safetensors"))
    assert all((weights[k] == again[k]).all() for k in weights)
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in logged if "step" in row]
    assert steps == [1, 2, 3, 4, 5, 6, 4, 5, 6], "the second run must have started at step 4"
    assert straight.metrics["final_train_loss"] == pytest.approx(resumed.metrics["final_train_loss"], abs=1e-6)


def test_gradient_accumulation_and_lora_run(tmp_path, embedded):
    record = harness.train(load_config(None, quick_overrides(
        tmp_path, **{"model.lora.r": 4, "train.gradient_accumulation_steps": 2, "train.batch_size": 4})))
    assert record.status == "completed"
    # with LoRA the reference is the base with the adapter off: policy == reference at step one
    assert abs(record.metrics["first_train_loss"] - math.log(2)) < 1e-5
    assert (tmp_path / "run" / "model" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_dpo_raises_gold_reward_over_sft(tmp_path, embedded):
    """The issue's bar: DPO at beta 0.1 with the defaults (1,000 pairs, 200 eval prompts)."""
    record = harness.train(load_config(None, [f"output_dir={tmp_path / 'run'}", "wandb.mode=disabled"]))
    m = record.metrics
    assert m["num_prompts"] == 200
    summary = {k: m[k] for k in ("gold_reward", "gold_reward_sft", "gold_win_rate", "gold_win_rate_low", "kl_to_sft")}
    assert m["gold_reward"] > m["gold_reward_sft"] + 0.2, summary
    assert m["gold_win_rate"] > 0.5, summary
    assert m["kl_to_sft"] > 0


def test_default_precision_keeps_fp32_master_weights_so_small_steps_train():
    """On a bf16 CUDA device `model.dtype=auto` trains full fine-tuning in fp32 weights (bf16 autocast); a
    frozen model (a LoRA base, the reference) may be bf16. Shown on CPU: one AdamW step of 5e-7 on weights
    of scale 0.02 changes every fp32 weight and almost no bf16 one."""
    from harness.models import weights_dtype

    assert weights_dtype("auto", bf16_device=True, trained=True) == torch.float32
    assert weights_dtype("auto", bf16_device=True, trained=False) == torch.bfloat16
    assert weights_dtype("auto", bf16_device=False, trained=True) == torch.float32
    assert weights_dtype("bfloat16", bf16_device=True, trained=True) == torch.bfloat16  # asked for: pure bf16

    def changed_share(dtype) -> float:
        torch.manual_seed(0)
        weight = torch.nn.Parameter((torch.randn(256, 256) * 0.02).to(dtype))
        before = weight.detach().clone()
        optimizer = torch.optim.AdamW([weight], lr=5e-7, weight_decay=0.0)
        weight.grad = torch.randn_like(weight)
        optimizer.step()
        return (weight.detach() != before).float().mean().item()

    assert changed_share(weights_dtype("auto", bf16_device=True, trained=True)) > 0.99
    assert changed_share(torch.bfloat16) < 0.05  # what pure bf16 would have done


def test_record_states_the_precision(tmp_path, embedded):
    """Also after another Accelerator in the same process asked for bf16 (as TRL's trainers do by default):
    accelerate's per-process state would otherwise refuse the run's own setting."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # whatever an earlier test left
    Accelerator(cpu=True, mixed_precision="bf16")
    record = harness.train(load_config(None, quick_overrides(tmp_path, **{"train.max_steps": 1, "eval.num_prompts": 0})))
    assert record.metrics["precision"] == "float32 weights, no autocast"  # CPU: fp32, no autocast


def test_reference_logps_are_computed_for_the_rows_a_run_draws_and_kept_per_row(tmp_path, embedded):
    """A run shorter than an epoch computes reference log-probs for the rows it draws only; a later run
    (another seed) computes only the rows no earlier run did; every value equals a from-scratch pass."""
    import methods
    from harness.config import TrainConfig
    from harness.data import Formatter, prepare_examples
    from harness.embedded.build import build_tokenizer
    from harness.models import fingerprint, load_causal_lm
    from harness.config import ModelConfig
    from harness.reference import Reference
    from harness.trainer import consumed_examples, sequence_logps_of

    tokenizer = build_tokenizer()
    prepared = prepare_examples(embedded.train_pairs[:200], Formatter(tokenizer, 64, 32), methods.get("dpo").consumes)
    reference = Reference(load_causal_lm(embedded.sft_path, ModelConfig()), fingerprint(embedded.sft_path))
    cache = str(tmp_path / "cache")
    first = consumed_examples(prepared.examples, TrainConfig(max_steps=3, batch_size=8, seed=0), num_processes=1)
    second = consumed_examples(prepared.examples, TrainConfig(max_steps=3, batch_size=8, seed=1), num_processes=1)
    assert len(first) == len(second) == 24 and first != second
    assert consumed_examples(prepared.examples, TrainConfig(max_steps=25, batch_size=8), num_processes=1) is None

    values, computed = reference.cached_sequence_logps(prepared.examples, tokenizer.pad_token_id, cache, first)
    assert computed == 2 * 24 and all(math.isnan(v) for i in set(range(200)) - set(first) for v in values[i])
    new_rows = {(tuple(p), tuple(c)) for i in set(second) - set(first) for p, c, _ in prepared.examples[i]}
    again, computed = reference.cached_sequence_logps(prepared.examples, tokenizer.pad_token_id, cache, second)
    assert computed == len(new_rows) < 2 * 24  # the overlap came from the cache
    whole, computed = reference.cached_sequence_logps(prepared.examples, tokenizer.pad_token_id, cache)
    assert computed == 2 * 200 - 2 * len(set(first) | set(second))
    # from scratch, each sequence alone, in one fresh pass: the values do not depend on which rows shared a batch
    alone = sequence_logps_of(reference.model, [[seq] for ex in prepared.examples for seq in ex], tokenizer.pad_token_id)
    as_stored = torch.tensor(alone, dtype=torch.float32).view(200, 2).tolist()  # the cache keeps float32
    assert whole == as_stored and all(again[i] == as_stored[i] for i in second) and all(values[i] == as_stored[i] for i in first)


@pytest.mark.parametrize("group_by_length", [False, True])
def test_a_short_run_with_gradient_accumulation_draws_only_predicted_rows(tmp_path, embedded, group_by_length):
    record = harness.train(load_config(None, quick_overrides(tmp_path, **{
        "train.max_steps": 2, "train.batch_size": 4, "train.gradient_accumulation_steps": 3, "train.seed": 7,
        "train.group_by_length": group_by_length, "eval.num_prompts": 0})))
    assert record.status == "completed" and record.metrics["train_steps"] == 2
    assert record.metrics["reference_sequences_computed"] <= 2 * 2 * 3 * 4  # a training batch with a row outside
    # the prediction stops the run (train_policy), so completing proves the rows drawn were the ones computed


def test_the_logged_learning_rate_is_the_one_each_step_used(tmp_path, embedded):
    """Linear schedule, 4 steps, 2 of warmup: the optimizer applies 0, lr/2, lr, lr/2 (TRL logs these); a rate
    read after the scheduler steps would name the next step's (lr/2 at step 1, 0 at the last)."""
    harness.train(load_config(None, quick_overrides(tmp_path, **{
        "train.max_steps": 4, "train.warmup_ratio": 0.5, "train.lr_scheduler": "linear", "train.learning_rate": 1e-4,
        "train.log_steps": 1, "eval.num_prompts": 0})))
    logged = [row for row in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) if "step" in row]
    assert [row["learning_rate"] for row in logged] == pytest.approx([0.0, 5e-5, 1e-4, 5e-5], abs=1e-12)
    # step 1 applied rate 0, so step 2 still sees the SFT weights: DPO's loss is ln 2 there, and not after step 2
    assert logged[1]["loss"] == pytest.approx(math.log(2), abs=1e-6) != logged[2]["loss"]
