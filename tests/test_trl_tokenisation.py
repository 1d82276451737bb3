"""The token ids the harness trains on are the ones TRL 1.16's DPOTrainer feeds the model.

The reference is TRL itself, run live: a DPOTrainer built on a tiny random GPT-2 with the real GPT-2
byte-level BPE tokenizer and a small chat template whose markers are not special tokens, so BPE merges
across the prompt/completion boundary (the case the common-prefix split exists for). Conversational rows,
standard rows, empty completions, and real rows from the UltraFeedback and HH samples are compared id for
id. Truncation is off on both sides (the harness's own truncation policy is tested in test_data.py).
"""

import pytest

from harness.data import Formatter, load_rows, normalise_rows, prepare_examples
from harness.logps import PAIRS

from .conftest import shared_path

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _messages(role, text):
    return [{"role": role, "content": text}]


CONVERSATIONAL = [
    {"prompt": _messages("user", "What is 2+2?"), "chosen": _messages("assistant", "4"),
     "rejected": _messages("assistant", "")},  # an empty reply trains as the end-of-turn marker alone
    {"prompt": _messages("user", "hi") + _messages("assistant", "hello") + _messages("user", "name a colour"),
     "chosen": _messages("assistant", " blue"), "rejected": _messages("assistant", "Sorry, I can't.")},
]
STANDARD = [
    {"prompt": "Q: capital of France?\nA:", "chosen": " Paris.", "rejected": " Rome."},
    {"prompt": "Translate 'cat': ", "chosen": "chat", "rejected": ""},  # merges across the boundary; empty reply
    {"prompt": "Say done.", "chosen": " done<|endoftext|>", "rejected": " no"},  # already ends with EOS
]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import GPT2TokenizerFast

    tokenizer = GPT2TokenizerFast.from_pretrained(str(shared_path("data", "tokenizers", "gpt2")))
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def trl_ids(tokenizer, tmp_path_factory):
    """rows -> TRL's (prompt_ids, chosen_ids, rejected_ids) for each row, from a real DPOTrainer."""
    from datasets import Dataset
    from transformers import GPT2Config, GPT2LMHeadModel
    from trl import DPOConfig, DPOTrainer

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=len(tokenizer))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    args = DPOConfig(output_dir=str(folder / "out"), report_to=[], max_length=None, use_cpu=True)
    trainer = DPOTrainer(model=str(folder), args=args, processing_class=tokenizer,
                         train_dataset=Dataset.from_list(CONVERSATIONAL))

    def ids(rows):
        # the same preparation the trainer just ran on its train_dataset, for further datasets
        prepared = trainer._prepare_dataset(Dataset.from_list(rows), tokenizer, args, "test")
        return [(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]) for r in prepared]

    assert ids(CONVERSATIONAL) == [(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"])
                                   for r in trainer.train_dataset]
    return ids


def harness_ids(rows, tokenizer):
    formatter = Formatter(tokenizer, max_length=100_000, max_prompt_length=100_000)
    prepared = prepare_examples(rows, formatter, {PAIRS})
    assert prepared.stats["prompts_truncated"] == prepared.stats["completions_truncated"] == 0
    return [(chosen[0], chosen[1], rejected[1]) for chosen, rejected in prepared.examples], prepared.stats


def test_conversational_rows_match_trl(tokenizer, trl_ids):
    ours, stats = harness_ids(CONVERSATIONAL, tokenizer)
    assert ours == trl_ids(CONVERSATIONAL)
    assert stats["empty_completions"] == 1
    # no EOS after the template's own end-of-turn marker, and the boundary merge stays out of the prompt
    prompt, chosen, _ = ours[0]
    assert tokenizer.eos_token_id not in chosen
    assert tokenizer.decode(prompt + chosen) == "<|user|>What is 2+2?<|end|><|assistant|>4<|end|>"


def test_standard_rows_match_trl(tokenizer, trl_ids):
    ours, stats = harness_ids(STANDARD, tokenizer)
    assert ours == trl_ids(STANDARD)
    assert all(chosen[-1] == rejected[-1] == tokenizer.eos_token_id for _, chosen, rejected in ours)
    assert ours[2][1].count(tokenizer.eos_token_id) == 1  # an EOS already there is not doubled
    assert stats["empty_completions"] == 1


def test_real_ultrafeedback_rows_match_trl(tokenizer, trl_ids):
    raw = load_rows(str(shared_path("data", "ultrafeedback-binarized", "eval_clean.jsonl")))[0][:40]
    standard, _ = normalise_rows(raw, "uf", skip_invalid=False)  # the sample is flattened to strings
    assert harness_ids(standard, tokenizer)[0] == trl_ids(standard)
    # and in its upstream conversational form (trl-lib/ultrafeedback_binarized: one user turn, one reply)
    upstream = [{"prompt": _messages("user", r["prompt"]), "chosen": _messages("assistant", r["chosen"]),
                 "rejected": _messages("assistant", r["rejected"])} for r in raw]
    conversational, _ = normalise_rows(upstream, "uf", skip_invalid=False)
    assert harness_ids(conversational, tokenizer)[0] == trl_ids(conversational)


def test_real_hh_rows_match_trl(tokenizer, trl_ids):
    raw = load_rows(str(shared_path("data", "hh-rlhf", "harmless-base-test.sample.jsonl")))[0][:40]
    rows, _ = normalise_rows(raw, "hh", skip_invalid=False)
    assert isinstance(rows[0]["prompt"], str)  # HH dialogues are plain text: no template, as in TRL
    assert harness_ids(rows, tokenizer)[0] == trl_ids(rows)
