"""Datasets: load from any source, normalise to one form, tokenise with an explicit truncation policy.

Normalised paired rows: {"prompt", "chosen", "rejected"}; unpaired rows: {"prompt", "completion",
"label"}. Each text is a string or a list of chat messages. Accepted layouts: TRL's standard and
conversational preference formats (explicit or implicit prompt), Anthropic HH dialogues (split at the
last assistant turn), UltraFeedback-style rows (chosen/rejected as whole conversations), and unpaired
KTO rows.

Truncation policy (counted in the run record):
  1. a prompt longer than max_prompt_length keeps its *last* max_prompt_length tokens (the turn
     nearest the response matters most);
  2. a completion that does not fit in max_length after its prompt is cut at the end;
  3. a row whose completion is then empty is dropped.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection

from .errors import BadInput
from .logps import CHOSEN, MISMATCHED, MISMATCHED_ROWS, PAIRS, REJECTED, ROWS
from .models import looks_local

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
HH_ASSISTANT = "\n\nAssistant:"

Text = str | list[dict[str, Any]]


# ---------------------------------------------------------------- loading

def load_rows(source: str, split: str = "train", subset: str | None = None, cache_dir: str | None = None) -> list[dict]:
    """Rows of a hub dataset, a local dataset directory, or a .jsonl/.json/.parquet/.csv file."""
    import datasets

    datasets.disable_progress_bars()  # stderr stays for errors: one line each
    path = Path(source).expanduser()
    try:
        if path.is_file():
            if path.suffix not in FILE_BUILDERS:
                raise BadInput(f"{path}: unsupported data file type; use one of {', '.join(FILE_BUILDERS)}")
            dataset = datasets.load_dataset(FILE_BUILDERS[path.suffix], data_files=str(path), split="train",
                                            cache_dir=cache_dir)
        elif path.is_dir():
            if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
                dataset = datasets.load_from_disk(str(path))
                if isinstance(dataset, datasets.DatasetDict):
                    dataset = _pick_split(dataset, split, str(path))
            else:
                dataset = datasets.load_dataset(str(path), subset, split=split, cache_dir=cache_dir)
        elif path.suffix in FILE_BUILDERS or looks_local(source):
            raise BadInput(f"data file not found: {source}")
        else:
            dataset = datasets.load_dataset(source, subset, split=split, cache_dir=cache_dir)
    except BadInput:
        raise
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BadInput(f"cannot load data.source {source!r} (split {split!r}): {message}") from None
    return dataset.to_list()


def _pick_split(dataset_dict, split: str, where: str):
    if split not in dataset_dict:
        raise BadInput(f"{where}: no split {split!r}; splits: {', '.join(dataset_dict)}")
    return dataset_dict[split]


# ---------------------------------------------------------------- normalising

def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def _common_prefix(a: str, b: str) -> str:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    prefix = a[:n]
    return prefix[: prefix.rfind(" ") + 1] if n < min(len(a), len(b)) and " " in prefix else prefix


def _split_implicit(chosen: Text, rejected: Text, where: str, counts: dict[str, int]) -> tuple[Text, Text, Text]:
    """prompt, chosen completion, rejected completion from two whole dialogues."""
    if _is_messages(chosen) and _is_messages(rejected):
        n = 0
        while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
            n += 1
        return chosen[:n], chosen[n:], rejected[n:]
    if isinstance(chosen, str) and isinstance(rejected, str):
        cut = chosen.rfind(HH_ASSISTANT)
        if cut >= 0:  # Anthropic HH: the prompt runs up to and including the last assistant marker
            prompt = chosen[: cut + len(HH_ASSISTANT)]
            if rejected.startswith(prompt):
                return prompt, chosen[len(prompt):], rejected[len(prompt):]
            # The dialogues differ before the last assistant turn: split at their common prefix, as TRL's
            # extract_prompt does for every implicit-prompt row, and count it.
            counts["split_at_common_prefix"] = counts.get("split_at_common_prefix", 0) + 1
        prompt = _common_prefix(chosen, rejected)
        return prompt, chosen[len(prompt):], rejected[len(prompt):]
    raise BadInput(f"{where}: 'chosen' and 'rejected' must both be strings or both be message lists")


def _as_completion(prompt: Text, completion: Text) -> Text:
    # UltraFeedback style: a whole conversation [user, assistant] under chosen/rejected beside a string prompt.
    if _is_messages(completion) and len(completion) > 1 and completion[-1].get("role") == "assistant":
        return completion[-1:]
    return completion


def _is_empty(text: Text) -> bool:
    return not text.strip() if isinstance(text, str) else all(not str(m.get("content", "")).strip() for m in text)


def _check_text(value: Any, where: str, name: str, allow_empty: bool = False) -> Text:
    if isinstance(value, str):
        if not allow_empty and not value.strip():
            raise BadInput(f"{where}: field {name!r} is empty")
        return value
    if _is_messages(value):
        if not allow_empty and not value:
            raise BadInput(f"{where}: field {name!r} is an empty message list")
        return value
    raise BadInput(f"{where}: field {name!r} must be a string or a list of chat messages, got {type(value).__name__}")


def normalise_row(row: dict, where: str, counts: dict[str, int] | None = None) -> dict:
    """One row in the normalised paired or unpaired form; `counts` collects how often a fallback was taken."""
    counts = {} if counts is None else counts
    if not isinstance(row, dict):
        raise BadInput(f"{where}: not a mapping of fields")
    if "completion" in row and "label" in row:
        label = row["label"]
        if not isinstance(label, bool) and label not in (0, 1):
            raise BadInput(f"{where}: field 'label' must be true/false, got {label!r}")
        prompt = _check_text(row.get("prompt", ""), where, "prompt", allow_empty=True)
        # An empty completion is a legitimate answer: it trains as end-of-sequence alone, as in TRL.
        return {"prompt": prompt, "completion": _check_text(row["completion"], where, "completion", allow_empty=True),
                "label": bool(label)}
    for name in ("chosen", "rejected"):
        if name not in row or row[name] is None:
            present = [k for k, v in row.items() if v is not None]
            raise BadInput(f"{where}: field {name!r} is missing or null (fields present: {', '.join(present)})")
    # Empty completions are legitimate (Anthropic HH's preferred harmless answer is sometimes the empty one):
    # they train as end-of-sequence alone, as TRL does, and prepare_examples counts them.
    chosen = _check_text(row["chosen"], where, "chosen", allow_empty=True)
    rejected = _check_text(row["rejected"], where, "rejected", allow_empty=True)
    if row.get("prompt") is not None:
        prompt = _check_text(row["prompt"], where, "prompt", allow_empty=True)
        chosen, rejected = _as_completion(prompt, chosen), _as_completion(prompt, rejected)
    else:
        prompt, chosen, rejected = _split_implicit(chosen, rejected, where, counts)
    if isinstance(prompt, str) and (_is_messages(chosen) or _is_messages(rejected)):
        prompt = [{"role": "user", "content": prompt}]
    if _is_messages(chosen) and not chosen or _is_messages(rejected) and not rejected:
        raise BadInput(f"{where}: 'chosen' or 'rejected' is an empty message list (an empty reply is fine, no reply is not)")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def normalise_rows(rows: list[dict], source: str, skip_invalid: bool) -> tuple[list[dict], dict[str, int]]:
    """Normalised rows and counts: rows skipped (only when skip_invalid; otherwise the first bad row raises),
    rows split at the common prefix of their dialogues."""
    out, counts = [], {"skipped_invalid": 0, "split_at_common_prefix": 0}
    for index, row in enumerate(rows):
        try:
            out.append(normalise_row(row, f"{source}: row {index} (0-based)", counts))
        except BadInput:
            if not skip_invalid:
                raise
            counts["skipped_invalid"] += 1
    if not out:
        raise BadInput(f"{source}: no usable rows")
    return out, counts


# ---------------------------------------------------------------- formatting and tokenising

@dataclass
class Formatter:
    """Turns normalised prompt/completion pairs into token ids, with the tokenizer's chat template when it has one."""

    tokenizer: Any
    max_length: int
    max_prompt_length: int
    apply_chat_template: bool = True
    stats: dict[str, int] = field(default_factory=lambda: {"prompts_truncated": 0, "completions_truncated": 0,
                                                           "empty_completions": 0})

    @property
    def uses_template(self) -> bool:
        return self.apply_chat_template and bool(getattr(self.tokenizer, "chat_template", None))

    def prompt_text(self, prompt: Text) -> str:
        if self.uses_template:
            messages = prompt if _is_messages(prompt) else [{"role": "user", "content": prompt}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if _is_messages(prompt):
            raise BadInput("data is conversational but the tokenizer has no chat template (set a model whose tokenizer has one)")
        return prompt

    def completion_text(self, prompt: Text, completion: Text) -> str:
        if self.uses_template:
            prompt_messages = prompt if _is_messages(prompt) else [{"role": "user", "content": prompt}]
            completion_messages = completion if _is_messages(completion) else [{"role": "assistant", "content": completion}]
            head = self.prompt_text(prompt)
            full = self.tokenizer.apply_chat_template(prompt_messages + completion_messages, tokenize=False)
            if full.startswith(head):
                return full[len(head):]
            return "".join(m["content"] for m in completion_messages)
        if _is_messages(completion):
            raise BadInput("data is conversational but the tokenizer has no chat template (set a model whose tokenizer has one)")
        return completion

    def prompt_ids(self, prompt: Text) -> list[int]:
        ids = self.tokenizer(self.prompt_text(prompt), add_special_tokens=False)["input_ids"]
        bos = self.tokenizer.bos_token_id
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
        if len(ids) > self.max_prompt_length:  # keep the end (the question), and BOS in front of it
            self.stats["prompts_truncated"] += 1
            keep_bos = bos is not None and ids[0] == bos and self.max_prompt_length > 1
            ids = [bos] + ids[-(self.max_prompt_length - 1):] if keep_bos else ids[-self.max_prompt_length:]
        return ids

    def completion_ids(self, prompt: Text, completion: Text, prompt_length: int) -> list[int]:
        if _is_empty(completion):
            self.stats["empty_completions"] += 1
        ids = self.tokenizer(self.completion_text(prompt, completion), add_special_tokens=False)["input_ids"]
        eos = self.tokenizer.eos_token_id
        if eos is not None and (not ids or ids[-1] != eos):
            ids = ids + [eos]
        room = self.max_length - prompt_length
        if len(ids) > room:
            self.stats["completions_truncated"] += 1
            ids = ids[: max(room, 0)]
        return ids


Sequence = tuple[list[int], list[int], int]  # prompt ids, completion ids, role


@dataclass
class PreparedData:
    """Tokenised training examples: each a list of sequences (chosen/rejected, or one row plus its mismatched pair)."""

    examples: list[list[Sequence]]
    stats: dict[str, int]

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for example in self.examples:
            for prompt, completion, role in example:
                digest.update(repr((prompt, completion, role)).encode())
        return digest.hexdigest()[:16]

    @property
    def num_tokens(self) -> int:
        return sum(len(p) + len(c) for example in self.examples for p, c, _ in example)


def unpair(rows: list[dict], seed: int) -> list[dict]:
    """Paired rows -> unpaired desirable/undesirable rows, shuffled so that batches mix both labels."""
    out = []
    for row in rows:
        out.append({"prompt": row["prompt"], "completion": row["chosen"], "label": True})
        out.append({"prompt": row["prompt"], "completion": row["rejected"], "label": False})
    random.Random(seed).shuffle(out)
    return out


def prepare_examples(rows: list[dict], formatter: Formatter, consumes: Collection[str], seed: int = 0) -> PreparedData:
    """Tokenise normalised rows into the training examples a method consumes: pairs, or unpaired rows
    (with each row's mismatched pair when it asks for MISMATCHED_ROWS)."""
    paired, mismatched = PAIRS in consumes, MISMATCHED_ROWS in consumes
    if not paired and ROWS not in consumes:
        raise ValueError(f"prepare_examples: offline training data is pairs or rows, not {sorted(consumes)}")
    is_unpaired = "completion" in rows[0]
    if paired and is_unpaired:
        raise BadInput("this method needs paired data (prompt/chosen/rejected); the data is unpaired (prompt/completion/label)")
    if not paired and not is_unpaired:
        rows = unpair(rows, seed)
    dropped = 0
    examples: list[list[Sequence]] = []
    if paired:
        for row in rows:
            prompt = formatter.prompt_ids(row["prompt"])
            chosen = formatter.completion_ids(row["prompt"], row["chosen"], len(prompt))
            rejected = formatter.completion_ids(row["prompt"], row["rejected"], len(prompt))
            if not chosen or not rejected:
                dropped += 1
                continue
            examples.append([(prompt, chosen, CHOSEN), (prompt, rejected, REJECTED)])
    else:
        tokenised = []
        for row in rows:
            prompt = formatter.prompt_ids(row["prompt"])
            completion = formatter.completion_ids(row["prompt"], row["completion"], len(prompt))
            if not completion:
                dropped += 1
                continue
            tokenised.append((prompt, completion, CHOSEN if row["label"] else REJECTED))
        # The mismatched pair of row i is its prompt with the completion of row i+1: a fixed derangement,
        # so the reference log-probs of these pairs can be computed once, like every other sequence.
        for i, (prompt, completion, role) in enumerate(tokenised):
            other = tokenised[(i + 1) % len(tokenised)][1]
            other = other[: max(formatter.max_length - len(prompt), 1)]
            examples.append([(prompt, completion, role)] + ([(prompt, other, MISMATCHED)] if mismatched else []))
    if not examples:
        raise BadInput("no training example is left after truncation (raise data.max_length?)")
    stats = {"train_examples": len(examples), "dropped_empty_completion": dropped, **formatter.stats}
    return PreparedData(examples, stats)


# ---------------------------------------------------------------- batching

def collate(examples: list[list[Sequence]], reference: list[list[float]] | None, pad_token_id: int):
    """Right-padded concatenation of every sequence of every example, with masks, roles and reference log-probs."""
    import torch

    sequences = [seq for example in examples for seq in example]
    length = max(len(p) + len(c) for p, c, _ in sequences)
    n = len(sequences)
    input_ids = torch.full((n, length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((n, length), dtype=torch.long)
    completion_mask = torch.zeros((n, length), dtype=torch.bool)
    prompt_mask = torch.zeros((n, length), dtype=torch.bool)
    for i, (prompt, completion, _) in enumerate(sequences):
        ids = prompt + completion
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
        prompt_mask[i, : len(prompt)] = True
        completion_mask[i, len(prompt): len(ids)] = True
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "completion_mask": completion_mask,
        "prompt_mask": prompt_mask,
        "role": torch.tensor([role for _, _, role in sequences]),
        "num_examples": len(examples),  # a Python int: counting it never syncs with the device
    }
    if reference is not None:
        batch["reference_logps"] = torch.tensor([v for values in reference for v in values], dtype=torch.float32)
    return batch
