"""Loading and normalising every accepted layout; chat templates; the truncation policy and its counts."""

import json

import pytest

from harness.data import Formatter, load_rows, normalise_row, normalise_rows, prepare_examples, unpair
from harness.embedded.build import build_tokenizer
from harness.errors import BadInput
from harness.logps import CHOSEN, MISMATCHED, MISMATCHED_ROWS, PAIRS, REJECTED, ROWS

from .conftest import shared_path

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def gpt2_tokenizer(template=None):
    from transformers import GPT2TokenizerFast

    tokenizer = GPT2TokenizerFast.from_pretrained(str(shared_path("data", "tokenizers", "gpt2")))
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.chat_template = template
    return tokenizer


def test_standard_explicit_prompt():
    row = normalise_row({"prompt": "Q?", "chosen": " yes", "rejected": " no"}, "r")
    assert row == {"prompt": "Q?", "chosen": " yes", "rejected": " no"}


def test_conversational_implicit_prompt():
    chosen = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"}]
    rejected = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go away"}]
    row = normalise_row({"chosen": chosen, "rejected": rejected}, "r")
    assert row["prompt"] == chosen[:1] and row["chosen"] == chosen[1:] and row["rejected"] == rejected[1:]


def test_hh_rlhf_sample_splits_at_last_assistant_turn():
    rows = load_rows(str(shared_path("data", "hh-rlhf", "harmless-base-test.sample.jsonl")))[0]
    assert len(rows) == 2000
    good, counts = normalise_rows(rows, "hh", skip_invalid=False)  # the default settings
    assert len(good) == 2000 and counts["skipped_invalid"] == 0
    # dialogues that differ before the last assistant turn are split at their common prefix, as TRL does
    assert counts["split_at_common_prefix"] == 3
    first = good[0]
    assert first["prompt"].endswith("\n\nAssistant:") and first["prompt"].startswith("\n\nHuman:")
    assert "\n\nAssistant:" not in first["chosen"]
    assert sum(not r["chosen"].strip() for r in good) + sum(not r["rejected"].strip() for r in good) == 4  # empty replies


def test_ultrafeedback_sample_rows():
    rows = load_rows(str(shared_path("data", "ultrafeedback-binarized", "eval_clean.jsonl")))[0]
    good, counts = normalise_rows(rows, "uf", skip_invalid=False)
    assert counts["skipped_invalid"] == 0 and len(good) == 200
    train, counts = normalise_rows(load_rows(str(shared_path("data", "ultrafeedback-binarized", "train_clean.jsonl")))[0],
                                   "uf-train", skip_invalid=False)  # row 478's empty reply no longer stops it
    assert len(train) == 1000 and sum(not r["rejected"].strip() or not r["chosen"].strip() for r in train) == 2
    assert isinstance(good[0]["prompt"], str) and isinstance(good[0]["chosen"], str)


def test_ultrafeedback_conversation_style_completion():
    row = normalise_row({"prompt": "Q", "chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
                         "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "B"}]}, "r")
    assert row["prompt"] == [{"role": "user", "content": "Q"}]
    assert row["chosen"] == [{"role": "assistant", "content": "A"}]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_file_types(tmp_path, suffix):
    import pandas as pd

    frame = pd.DataFrame([{"prompt": "p", "chosen": "c", "rejected": "r"}] * 3)
    path = tmp_path / f"d{suffix}"
    {".jsonl": lambda: frame.to_json(path, orient="records", lines=True),
     ".json": lambda: path.write_text(json.dumps(frame.to_dict("records"))),
     ".csv": lambda: frame.to_csv(path, index=False),
     ".parquet": lambda: frame.to_parquet(path)}[suffix]()
    assert load_rows(str(path))[0] == frame.to_dict("records")


def test_saved_dataset_directory(tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"prompt": "p", "chosen": "c", "rejected": "r"}])}) \
        .save_to_disk(str(tmp_path / "ds"))
    assert load_rows(str(tmp_path / "ds"), "train")[0] == [{"prompt": "p", "chosen": "c", "rejected": "r"}]
    with pytest.raises(BadInput, match="no split 'test'"):
        load_rows(str(tmp_path / "ds"), "test")


def test_bad_rows_name_the_field():
    with pytest.raises(BadInput, match="'chosen'"):
        normalise_row({"prompt": "p", "chosen": 3, "rejected": "r"}, "row 5")
    with pytest.raises(BadInput, match="empty message list"):
        normalise_row({"prompt": [{"role": "user", "content": "p"}], "chosen": [], "rejected": "r"}, "row 5")
    with pytest.raises(BadInput, match="'label'"):
        normalise_row({"prompt": "p", "completion": "c", "label": "maybe"}, "row 5")


def test_truncation_policy_is_explicit_and_counted():
    tokenizer = build_tokenizer()
    formatter = Formatter(tokenizer, max_length=11, max_prompt_length=5)
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    rows = [{"prompt": "review pizza price :", "chosen": "the pizza is good .", "rejected": "the pizza is bad ."},
            {"prompt": "review review pizza price :", "chosen": "the pizza price is great and good and nice .",
             "rejected": "the pizza is bad ."}]
    prepared = prepare_examples(rows, formatter, {PAIRS})
    first, second = prepared.examples
    assert first[0][0] == [tokenizer.bos_token_id] + ids("review pizza price :")  # fits: untouched
    assert second[0][0] == [tokenizer.bos_token_id] + ids("review review pizza price :")[-4:]  # BOS + its end
    assert second[0][1] == ids("the pizza price is great and")  # completion cut at the end to fit max_length
    assert prepared.stats["prompts_truncated"] == 1 and prepared.stats["completions_truncated"] == 1
    assert first[0][1][-1] == tokenizer.eos_token_id  # an untruncated completion ends with EOS


def test_row_with_empty_completion_after_truncation_is_dropped_and_counted():
    tokenizer = build_tokenizer()
    formatter = Formatter(tokenizer, max_length=5, max_prompt_length=5)
    rows = [{"prompt": "review pizza price :", "chosen": "the pizza is good .", "rejected": "the pizza is bad ."},
            {"prompt": "review pizza :", "chosen": "the pizza is good .", "rejected": "the pizza is bad ."}]
    prepared = prepare_examples(rows, formatter, {PAIRS})
    assert prepared.stats["dropped_empty_completion"] == 1 and len(prepared.examples) == 1


def test_chat_template_renders_conversational_rows_only():
    tokenizer = gpt2_tokenizer(CHAT_TEMPLATE)
    formatter = Formatter(tokenizer, max_length=256, max_prompt_length=128)
    row = normalise_row({"prompt": [{"role": "user", "content": "hi"}],
                         "chosen": [{"role": "assistant", "content": "hello"}],
                         "rejected": [{"role": "assistant", "content": "bye"}]}, "r")
    assert tokenizer.decode(formatter.prompt_ids(row["prompt"])) == "<|user|>hi<|end|><|assistant|>"
    prompt, (chosen, rejected) = formatter.encode(row["prompt"], [row["chosen"], row["rejected"]])
    assert tokenizer.decode(prompt + chosen) == "<|user|>hi<|end|><|assistant|>hello<|end|>"
    # string rows stay plain text even when the tokenizer has a template, as in TRL (HH dialogues are text)
    assert tokenizer.decode(formatter.prompt_ids("hi")) == "hi"
    with pytest.raises(BadInput, match="no chat template"):
        Formatter(gpt2_tokenizer(None), max_length=256, max_prompt_length=128).prompt_ids(row["prompt"])
    with pytest.raises(BadInput, match="apply_chat_template is false"):
        Formatter(tokenizer, 256, 128, apply_chat_template=False).prompt_ids(row["prompt"])


def test_unpaired_examples_mix_labels_and_carry_mismatched_pairs():
    tokenizer = build_tokenizer()
    formatter = Formatter(tokenizer, max_length=32, max_prompt_length=8)
    rows = [{"prompt": f"review {item} price :", "chosen": f"the {item} is good .", "rejected": f"the {item} is bad ."}
            for item in ("pizza", "lamp", "bike", "sofa")]
    unpaired = unpair(rows, seed=0)
    assert sorted(r["label"] for r in unpaired) == [False] * 4 + [True] * 4
    assert [r["label"] for r in unpaired] != [True] * 4 + [False] * 4  # shuffled, not one block per label
    prepared = prepare_examples(rows, formatter, {ROWS, MISMATCHED_ROWS})
    assert len(prepared.examples) == 8
    for i, example in enumerate(prepared.examples):
        (prompt, completion, role), (kl_prompt, kl_completion, kl_role) = example
        assert role in (CHOSEN, REJECTED) and kl_role == MISMATCHED and kl_prompt == prompt
        assert kl_completion == prepared.examples[(i + 1) % 8][0][1]  # the next row's completion
    with pytest.raises(BadInput, match="paired data"):
        prepare_examples(unpaired, formatter, {PAIRS})
    # a method that asks for rows alone gets no mismatched pairs: the backend provides what is declared
    plain = prepare_examples(rows, formatter, {ROWS})
    assert [len(example) for example in plain.examples] == [1] * 8
    assert [example[0] for example in plain.examples] == [example[0] for example in prepared.examples]


def test_an_empty_completion_trains_as_end_of_sequence_alone_and_is_counted():
    """As in TRL: HH's preferred harmless answer is sometimes the empty one."""
    tokenizer = build_tokenizer()
    formatter = Formatter(tokenizer, max_length=32, max_prompt_length=8)
    rows = [normalise_row({"prompt": "review pizza :", "chosen": "", "rejected": "the pizza is bad ."}, "row 0"),
            normalise_row({"prompt": "review lamp :", "chosen": "the lamp is good .", "rejected": "  "}, "row 1")]
    prepared = prepare_examples(rows, formatter, {PAIRS})
    (_, chosen, _), _ = prepared.examples[0]
    _, (_, rejected, _) = prepared.examples[1]
    assert chosen == [tokenizer.eos_token_id] and rejected == [tokenizer.eos_token_id]
    assert prepared.stats["empty_completions"] == 2 and prepared.stats["dropped_empty_completion"] == 0
    unpaired = normalise_row({"prompt": "review pizza :", "completion": "", "label": False}, "row 2")
    assert prepare_examples([unpaired], formatter, {ROWS}).examples[0][0][1] == [tokenizer.eos_token_id]


def test_prompt_truncation_keeps_bos():
    tokenizer = build_tokenizer()
    formatter = Formatter(tokenizer, max_length=32, max_prompt_length=4)
    ids = formatter.prompt_ids("review review review pizza price :")
    plain = tokenizer("review review review pizza price :", add_special_tokens=False)["input_ids"]
    assert ids == [tokenizer.bos_token_id] + plain[-3:] and formatter.stats["prompts_truncated"] == 1
