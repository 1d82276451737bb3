"""Every real public sample in ../shared/data, under default settings, with the real GPT-2 byte-level BPE.

For each sample: the rows normalise (empty replies are kept and counted, never fatal), prompt masking puts
exactly the prompt's tokens under the prompt and the reply plus EOS under the completion, and the counts
of empty, truncated and dropped rows equal the ones computed here independently from the texts.
The figures are printed (pytest -s) for the record.
"""

import pytest

from harness.data import Formatter, load_rows, normalise_rows, prepare_examples
from harness.logps import MISMATCHED_ROWS, PAIRS, ROWS

from .conftest import shared_path

MAX_LENGTH, MAX_PROMPT_LENGTH = 512, 256  # the harness's usual settings for real data (ultrafeedback_qwen)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import GPT2TokenizerFast

    tokenizer = GPT2TokenizerFast.from_pretrained(str(shared_path("data", "tokenizers", "gpt2")))
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def expected_counts(rows, tokenizer, completions):
    """The counts from first principles: token lengths of each prompt alone and of prompt + reply + EOS."""
    n_tokens = lambda text: len(tokenizer(text)["input_ids"])  # noqa: E731
    counts = {"prompts_truncated": 0, "completions_truncated": 0, "empty_completions": 0, "dropped": 0}
    for row in rows:
        prompt = min(n_tokens(row["prompt"]), MAX_PROMPT_LENGTH)
        counts["prompts_truncated"] += n_tokens(row["prompt"]) > MAX_PROMPT_LENGTH
        lengths = [len(tokenizer(row["prompt"] + row[c] + tokenizer.eos_token)["input_ids"])
                   - len(tokenizer(row["prompt"])["input_ids"]) for c in completions]
        counts["completions_truncated"] += sum(length > MAX_LENGTH - prompt for length in lengths)
        counts["empty_completions"] += sum(not row[c].strip() for c in completions)
        counts["dropped"] += prompt >= MAX_LENGTH  # no room left for any reply
    return counts


def check_sample(rows, tokenizer, consumes, completions):
    formatter = Formatter(tokenizer, MAX_LENGTH, MAX_PROMPT_LENGTH)
    prepared = prepare_examples(rows, formatter, consumes, seed=0)
    stats = prepared.stats
    want = expected_counts(rows, tokenizer, completions)
    got = {k: stats[k] for k in ("prompts_truncated", "completions_truncated", "empty_completions")}
    got["dropped"] = stats["dropped_empty_completion"]
    print({"rows": len(rows), **got, "examples": stats["train_examples"]})
    assert got == want
    for example in prepared.examples:
        for prompt, completion, _ in example:
            assert len(prompt) <= MAX_PROMPT_LENGTH and len(prompt) + len(completion) <= MAX_LENGTH
            assert completion  # an empty reply is at least the end-of-sequence token
    return prepared


def test_hh_rlhf_harmless_base(tokenizer):
    raw = load_rows(str(shared_path("data", "hh-rlhf", "harmless-base-test.sample.jsonl")))[0]
    rows, counts = normalise_rows(raw, "hh", skip_invalid=False)
    assert len(raw) == len(rows) == 2000 and counts["skipped_invalid"] == 0
    prepared = check_sample(rows, tokenizer, {PAIRS}, ("chosen", "rejected"))
    assert prepared.stats["empty_completions"] == 4  # the sample's SOURCE.md: 4 of 4,000 replies are empty
    # prompt masking with the real BPE: the prompt part decodes to the dialogue up to "Assistant:", the
    # completion to the reply and EOS (row 0 is short enough to be untruncated)
    (prompt, chosen, _), _ = prepared.examples[0]
    assert tokenizer.decode(prompt) == rows[0]["prompt"]
    assert tokenizer.decode(chosen) == rows[0]["chosen"] + tokenizer.eos_token


@pytest.mark.parametrize("name, n", [("train_clean.jsonl", 1000), ("eval_clean.jsonl", 200)])
def test_ultrafeedback_binarized(tokenizer, name, n):
    raw = load_rows(str(shared_path("data", "ultrafeedback-binarized", name)))[0]
    rows, counts = normalise_rows(raw, "uf", skip_invalid=False)
    assert len(raw) == len(rows) == n and counts["skipped_invalid"] == 0
    prepared = check_sample(rows, tokenizer, {PAIRS}, ("chosen", "rejected"))
    if name == "train_clean.jsonl":
        assert prepared.stats["empty_completions"] == 2  # row 478's rejected reply among them: trained, not fatal


def test_imdb_reviews_as_unpaired_rows(tokenizer):
    """IMDb reviews as KTO rows: the review is the completion (data.columns {text: completion}), no prompt."""
    raw = load_rows(str(shared_path("data", "imdb", "aclImdb-test.sample.jsonl")))[0]
    rows, counts = normalise_rows(raw, "imdb", skip_invalid=False, columns={"text": "completion"})
    assert len(rows) == 2000 and counts["skipped_invalid"] == 0
    assert sum(r["label"] for r in rows) == 1000 and all(r["prompt"] == "" for r in rows)
    prepared = check_sample(rows, tokenizer, {ROWS, MISMATCHED_ROWS}, ("completion",))
    assert len(prepared.examples) == 2000 and all(len(example) == 2 for example in prepared.examples)
    short = next(i for i, r in enumerate(raw) if len(tokenizer(r["text"])["input_ids"]) < 200)
    (prompt, completion, _), _ = prepare_examples([rows[short]], Formatter(tokenizer, MAX_LENGTH, MAX_PROMPT_LENGTH),
                                                  {ROWS, MISMATCHED_ROWS}).examples[0]
    assert prompt == [] and tokenizer.decode(completion) == raw[short]["text"] + tokenizer.eos_token
