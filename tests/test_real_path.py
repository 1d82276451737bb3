"""The real path end to end, except the download: `harness train` + eval on UltraFeedback.

A tiny random Llama saved locally (the real GPT-2 tokenizer with a chat template) is the SFT model, a tiny
random Llama sequence classifier saved locally is the judge, and the data is the UltraFeedback sample in
its upstream conversational form (trl-lib/ultrafeedback_binarized), saved as a local dataset with train and
test splits. Everything a hub run does happens: load_from_disk, chat templates, held-out prompts from the
eval split, a reward model judge, the record. Skips when ../shared is absent.
"""

import json

from .conftest import run_cli, shared_path

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _save_models(folder, tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    shape = dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                 num_attention_heads=2, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id,
                 bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**shape)).save_pretrained(folder / "sft")
    tokenizer.save_pretrained(folder / "sft")
    LlamaForSequenceClassification(LlamaConfig(num_labels=1, **shape)).save_pretrained(folder / "judge")
    tokenizer.save_pretrained(folder / "judge")


def _save_dataset(folder):
    import datasets

    def conversational(name):
        rows = [json.loads(line) for line in shared_path("data", "ultrafeedback-binarized", name).read_text().splitlines()]
        return [{"prompt": [{"role": "user", "content": r["prompt"]}],
                 "chosen": [{"role": "assistant", "content": r["chosen"]}],
                 "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows]

    datasets.DatasetDict({"train": datasets.Dataset.from_list(conversational("train_clean.jsonl")),
                          "test": datasets.Dataset.from_list(conversational("eval_clean.jsonl"))}) \
        .save_to_disk(str(folder / "ultrafeedback"))


def test_train_and_eval_on_ultrafeedback_with_local_models(tmp_path):
    from transformers import GPT2TokenizerFast

    tokenizer = GPT2TokenizerFast.from_pretrained(str(shared_path("data", "tokenizers", "gpt2")))
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.chat_template = CHAT_TEMPLATE
    _save_models(tmp_path, tokenizer)
    _save_dataset(tmp_path)
    out = tmp_path / "run"
    result = run_cli("train", f"model.path={tmp_path / 'sft'}", f"data.source={tmp_path / 'ultrafeedback'}",
                     "data.eval_split=test", "data.num_train=64", "data.max_length=128", "data.max_prompt_length=64",
                     "train.max_steps=4", "train.batch_size=8", "train.save_steps=0", "method.name=dpo",
                     f"eval.judge={tmp_path / 'judge'}", "eval.num_prompts=16", "eval.max_new_tokens=8",
                     "wandb.mode=disabled", f"output_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "completed"
    metrics, dataset = record["metrics"], record["dataset"]
    assert dataset["rows_read"] == 1000 and dataset["train_examples"] == 64 and dataset["skipped_invalid"] == 0
    assert dataset["prompts_truncated"] > 0 and dataset["completions_truncated"] > 0  # 64/128 tokens: some are long
    assert "empty_completions" in dataset and dataset["eval_prompts"] == 16
    assert metrics["num_prompts"] == 16 and 0.0 <= metrics["win_rate"] <= 1.0 and metrics["train_steps"] == 4
    assert metrics["judge"].startswith("rm:judge") and len(record["outcomes"]["test"]["judge"]) == 16


def test_hh_rlhf_file_trains_under_default_settings(tmp_path):
    """The raw HH sample file (plain-text dialogues, 4 empty replies) trains as it is: no skip_invalid."""
    from transformers import GPT2TokenizerFast

    tokenizer = GPT2TokenizerFast.from_pretrained(str(shared_path("data", "tokenizers", "gpt2")))
    tokenizer.pad_token = tokenizer.eos_token
    _save_models(tmp_path, tokenizer)
    out = tmp_path / "run"
    result = run_cli("train", f"model.path={tmp_path / 'sft'}",
                     f"data.source={shared_path('data', 'hh-rlhf', 'harmless-base-test.sample.jsonl')}",
                     "data.max_length=96", "data.max_prompt_length=64", "train.max_steps=2", "train.batch_size=4",
                     "train.save_steps=0", f"eval.judge={tmp_path / 'judge'}", "eval.num_prompts=8",
                     "eval.max_new_tokens=4", "wandb.mode=disabled", f"output_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "completed" and record["dataset"]["rows_read"] == 2000
    assert record["dataset"]["skipped_invalid"] == 0 and record["dataset"]["split_at_common_prefix"] == 3
    assert record["dataset"]["train_examples"] == 2000 - 8  # every row but the held-out prompts
    assert record["dataset"]["empty_completions"] >= 3  # (one of the 4 empty replies may sit in a held-out row)
