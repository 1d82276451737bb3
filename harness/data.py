"""Datasets: load from any source, normalise to one form, tokenise as TRL does, with an explicit truncation policy.

Normalised paired rows: {"prompt", "chosen", "rejected"}; unpaired rows: {"prompt", "completion",
"label"}. Each text is a string or a list of chat messages. Accepted layouts: TRL's standard and
conversational preference formats (explicit or implicit prompt), Anthropic HH dialogues (split at the
last assistant turn), UltraFeedback-style rows (chosen/rejected as whole conversations), and unpaired
KTO rows. An empty completion is a legitimate answer: it trains as end-of-sequence alone and is counted.

TRL's utilities are used where they fit (trl.data_utils: is_conversational, extract_prompt for message
lists, common_prefix_length for the prompt/completion split); the harness deliberately differs in:
  - implicit string prompts: an HH dialogue splits after its last "\n\nAssistant:" marker, other strings
    at the last word boundary before they diverge (TRL's extract_prompt splits at the diverging character,
    which can fall inside a word or inside the reply);
  - unpairing for KTO: both rows of a pair are kept and the rows shuffled with the data seed, so batches
    mix labels (trl's unpair_preference_dataset keeps file order);
  - truncation (see Formatter), counted in the run record:
    1. a prompt longer than max_prompt_length keeps its *last* max_prompt_length tokens, BOS in front
       (the turn nearest the response matters most);
    2. a completion that does not fit in max_length after its prompt is cut at the end;
    3. a row whose completion is then empty is dropped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection

from .errors import BadInput, first_line, storage_fault
from .logps import CHOSEN, MISMATCHED, MISMATCHED_ROWS, PAIRS, REJECTED, ROWS
from .models import looks_local

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
HH_ASSISTANT = "\n\nAssistant:"
MAX_REASONS = 5  # reasons kept (in the record and the log) for rows skipped under data.skip_invalid

Text = str | list[dict[str, Any]]


# ---------------------------------------------------------------- loading

def load_rows(source: str, split: str = "train", subset: str | None = None, cache_dir: str | None = None,
              skip_invalid: bool = False) -> tuple[list[dict], dict[str, Any]]:
    """Rows of a hub dataset, a local dataset directory, or a .jsonl/.json/.parquet/.csv file, and what was
    skipped: a file `datasets` cannot read is diagnosed (empty, not UTF-8, the first line that is not JSON)
    into one BadInput naming the file and line; with skip_invalid, unreadable .jsonl lines are skipped and
    counted instead."""
    import datasets

    datasets.disable_progress_bars()  # stderr stays for errors: one line each
    path = Path(source).expanduser()
    skipped: dict[str, Any] = {"skipped_unreadable": 0, "skip_reasons": []}
    try:
        if path.is_file():
            if path.suffix not in FILE_BUILDERS:
                raise BadInput(f"{path}: unsupported data file type; use one of {', '.join(FILE_BUILDERS)}")
            _check_text_file(path)
            try:
                with _quiet(datasets):
                    dataset = datasets.load_dataset(FILE_BUILDERS[path.suffix], data_files=str(path), split="train",
                                                    cache_dir=cache_dir)
            except Exception as error:  # datasets wraps the reader's error; say what is wrong and where
                if storage_fault(error):
                    raise
                if path.suffix == ".jsonl" and skip_invalid:
                    return _readable_jsonl_rows(path, skipped), skipped
                raise BadInput(_diagnose(path) or f"{path}: cannot read it as {path.suffix} "
                               f"({type(error).__name__}: {first_line(error)})") from None
        elif path.is_dir():
            if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
                dataset = datasets.load_from_disk(str(path))
                if isinstance(dataset, datasets.DatasetDict):
                    dataset = _pick_split(dataset, split, str(path))
            else:
                try:
                    with _quiet(datasets):
                        dataset = datasets.load_dataset(str(path), subset, split=split, cache_dir=cache_dir)
                except Exception as error:  # one of its files is unreadable: find it, as for a file given alone
                    if storage_fault(error):  # datasets' own cache out of room: not the folder's fault
                        raise
                    files = sorted(p for p in path.rglob("*") if p.suffix in FILE_BUILDERS and p.is_file()
                                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
                    for file in files:
                        _check_text_file(file)
                        if problem := _diagnose(file):
                            raise BadInput(problem) from None
                    raise BadInput(f"{path}: cannot read this folder as a dataset ({type(error).__name__}: "
                                   f"{first_line(error)})") from None
        elif path.suffix in FILE_BUILDERS or looks_local(source):
            raise BadInput(f"data file not found: {source}")
        else:
            dataset = datasets.load_dataset(source, subset, split=split, cache_dir=cache_dir)
    except BadInput:
        raise
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as error:
        if storage_fault(error):
            raise
        raise BadInput(f"cannot load data.source {source!r} (split {split!r}): {first_line(error)}") from None
    return dataset.to_list(), skipped


@contextlib.contextmanager
def _quiet(datasets):
    """datasets logs a reader's error before raising it; the harness says it once, in its own words."""
    before = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(before)


def _decode_lines(path: Path) -> tuple[list[str] | None, str | None]:
    """The file's lines, or where it stops being UTF-8 text."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8").split("\n"), None
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        return None, f"{path}: line {line}: not UTF-8 text (byte 0x{data[error.start]:02x} at column {column})"


def _check_text_file(path: Path) -> None:
    """A text data file that is not UTF-8 (naming the line) or holds no rows is bad input."""
    if path.suffix == ".parquet":
        return
    lines, problem = _decode_lines(path)
    if problem:
        raise BadInput(problem)
    if not any(line.strip() for line in lines):
        raise BadInput(f"{path}: the file is empty (no rows)")


def _diagnose(path: Path) -> str | None:
    """One line saying what makes a local data file unreadable, naming the line, or None if nothing is found."""
    lines, problem = _decode_lines(path)
    if problem:
        return problem
    if path.suffix == ".json":
        try:
            json.loads("\n".join(lines))
        except json.JSONDecodeError as error:
            return f"{path}: line {error.lineno}: not valid JSON ({error.msg})"
    if path.suffix == ".jsonl":
        for number, line in enumerate(lines, 1):
            problem = _parse_jsonl_line(line)[1]
            if problem:
                return f"{path}: line {number}: {problem}"
    return None


def _parse_jsonl_line(line: str) -> tuple[dict | None, str | None]:
    """A .jsonl line's object, or what is wrong with it (a blank line is neither)."""
    if not line.strip():
        return None, None
    try:
        value = json.loads(line)
    except json.JSONDecodeError as error:
        return None, f"not valid JSON ({error.msg} at column {error.colno})"
    if not isinstance(value, dict):
        return None, f"a JSON object per line expected, got {type(value).__name__}"
    return value, None


def _readable_jsonl_rows(path: Path, skipped: dict[str, Any]) -> list[dict]:
    """The rows of a .jsonl file, skipping (and counting, with the first reasons) lines that are not objects."""
    lines, problem = _decode_lines(path)
    if problem:
        raise BadInput(problem)  # not text at all: nothing to skip line by line
    rows = []
    for number, line in enumerate(lines, 1):
        row, problem = _parse_jsonl_line(line)
        if problem:
            skipped["skipped_unreadable"] += 1
            if len(skipped["skip_reasons"]) < MAX_REASONS:
                skipped["skip_reasons"].append(f"line {number}: {problem}")
        elif row is not None:
            rows.append(row)
    return rows


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
        from trl.data_utils import extract_prompt

        split = extract_prompt({"chosen": chosen, "rejected": rejected})
        return split["prompt"], split["chosen"], split["rejected"]
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
        if "prompt" in row and not prompt:  # an explicit null, and nothing shared to take the prompt from
            raise BadInput(f"{where}: field 'prompt' is null and 'chosen' and 'rejected' share no prefix to take "
                           "it from")
    if isinstance(prompt, str) and (_is_messages(chosen) or _is_messages(rejected)):
        prompt = [{"role": "user", "content": prompt}]
    if _is_messages(chosen) and not chosen or _is_messages(rejected) and not rejected:
        raise BadInput(f"{where}: 'chosen' or 'rejected' is an empty message list (an empty reply is fine, no reply is not)")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def rename_fields(row: Any, columns: dict[str, str], where: str) -> Any:
    """`row` with its fields renamed by `columns` (dataset field -> harness field)."""
    if not columns or not isinstance(row, dict):
        return row
    missing = [name for name in columns if name not in row]
    if missing:
        raise BadInput(f"{where}: data.columns names field {missing[0]!r}, which the row lacks "
                       f"(fields present: {', '.join(row)})")
    return {columns.get(name, name): value for name, value in row.items()}


def normalise_rows(rows: list[dict], source: str, skip_invalid: bool,
                   columns: dict[str, str] | None = None) -> tuple[list[dict], dict[str, Any]]:
    """Normalised rows (fields renamed by `columns` first) and counts: rows skipped (only when skip_invalid;
    otherwise the first bad row raises) with the first reasons, rows split at the common prefix of their
    dialogues."""
    out, counts = [], {"skipped_invalid": 0, "split_at_common_prefix": 0}
    reasons: list[str] = []
    for index, row in enumerate(rows):
        where = f"{source}: row {index} (0-based)"
        try:
            out.append(normalise_row(rename_fields(row, columns or {}, where), where, counts))
        except BadInput as error:
            if not skip_invalid:
                raise
            counts["skipped_invalid"] += 1
            if len(reasons) < MAX_REASONS:
                reasons.append(str(error).removeprefix(f"{source}: "))
    if not out:
        raise BadInput(f"{source}: no usable rows" + (f" ({counts['skipped_invalid']} skipped; first: {reasons[0]})"
                                                        if reasons else ""))
    return out, {**counts, "skip_reasons": reasons}


# ---------------------------------------------------------------- formatting and tokenising

@dataclass
class Formatter:
    """Token ids of prompts and completions, as TRL 1.16's DPOTrainer computes them (trl.data_utils).

    - Conversational rows (message lists) go through the tokenizer's chat template: the prompt alone with the
      generation prompt, and prompt + completion as one conversation; no EOS is appended (the template ends
      the turn itself).
    - Standard rows (strings) are plain text, never templated: the prompt with the tokenizer's own special
      tokens (BOS where the tokenizer adds one), and prompt + completion + EOS text as one string.
    - The completion is what follows the longest common prefix of the prompt's ids and the whole sequence's
      ids (for a pair, the shorter of the two prefixes), so a template that renders the prompt differently
      alone, or a token merged across the boundary, never leaks prompt tokens into the completion.

    Where the harness deliberately differs: TRL truncates the whole sequence (keep_start) and drops rows whose
    prompt fills max_length; the harness keeps the *last* max_prompt_length prompt tokens (with BOS in front),
    cuts the completion at the end to fit max_length, and counts both (`stats`).
    """

    tokenizer: Any
    max_length: int
    max_prompt_length: int
    apply_chat_template: bool = True
    stats: dict[str, int] = field(default_factory=lambda: {"prompts_truncated": 0, "completions_truncated": 0,
                                                           "empty_completions": 0})

    def _conversational(self, prompt: Text) -> bool:
        from trl.data_utils import is_conversational

        if not (_is_messages(prompt) and (not prompt or is_conversational({"prompt": prompt}))):
            return False
        if not self.apply_chat_template:
            raise BadInput("the data is conversational (message lists) but data.apply_chat_template is false")
        if not getattr(self.tokenizer, "chat_template", None):
            raise BadInput("the data is conversational (message lists) but the tokenizer has no chat template "
                           "(use a model whose tokenizer has one)")
        return True

    def _template_ids(self, messages: list, generation_prompt: bool) -> list[int]:
        return list(self.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                                       add_generation_prompt=generation_prompt)["input_ids"])

    def untruncated_prompt_ids(self, prompt: Text) -> list[int]:
        if self._conversational(prompt):
            return self._template_ids(prompt, generation_prompt=True)
        return self.tokenizer(prompt)["input_ids"]

    def _sequence_ids(self, prompt: Text, completion: Text) -> list[int]:
        """prompt + completion as one sequence, untruncated."""
        if _is_empty(completion):
            self.stats["empty_completions"] += 1
        if self._conversational(prompt):
            return self._template_ids(prompt + completion, generation_prompt=False)
        eos = self.tokenizer.eos_token
        text = prompt + completion
        return self.tokenizer(text if eos is None or text.endswith(eos) else text + eos)["input_ids"]

    def _truncate_prompt(self, ids: list[int]) -> list[int]:
        if len(ids) <= self.max_prompt_length:
            return ids
        self.stats["prompts_truncated"] += 1  # keep the end (the question), and BOS in front of it
        bos = self.tokenizer.bos_token_id
        if bos is not None and ids[0] == bos and self.max_prompt_length > 1:
            return [bos] + ids[-(self.max_prompt_length - 1):]
        return ids[-self.max_prompt_length:]

    def prompt_ids(self, prompt: Text) -> list[int]:
        """The prompt as the model sees it before generating (chat template with the generation prompt)."""
        return self._truncate_prompt(self.untruncated_prompt_ids(prompt))

    def encode(self, prompt: Text, completions: list[Text]) -> tuple[list[int], list[list[int]]]:
        """Prompt ids and each completion's ids, split where the tokenised prompt and sequences diverge."""
        from trl.data_utils import common_prefix_length

        if _is_messages(prompt):  # normalise_row gives message-list prompts message-list completions
            completions = [c if _is_messages(c) else [{"role": "assistant", "content": c}] for c in completions]
        prompt_ids = self.untruncated_prompt_ids(prompt)
        sequences = [self._sequence_ids(prompt, c) for c in completions]
        shared = min(common_prefix_length(prompt_ids, s) for s in sequences)
        prompt_ids = self._truncate_prompt(prompt_ids[:shared])
        room = self.max_length - len(prompt_ids)
        out = []
        for sequence in sequences:
            ids = sequence[shared:]
            if len(ids) > room:
                self.stats["completions_truncated"] += 1
                ids = ids[: max(room, 0)]
            out.append(ids)
        return prompt_ids, out


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
            prompt, (chosen, rejected) = formatter.encode(row["prompt"], [row["chosen"], row["rejected"]])
            if not chosen or not rejected:
                dropped += 1
                continue
            examples.append([(prompt, chosen, CHOSEN), (prompt, rejected, REJECTED)])
    else:
        tokenised = []
        for row in rows:
            prompt, (completion,) = formatter.encode(row["prompt"], [row["completion"]])
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

def collate(examples: list[list[Sequence]], reference: list[list[float]] | None, pad_token_id: int,
            pack: bool = False):
    """Right-padded concatenation of every sequence of every example, with masks, roles and reference log-probs;
    with `pack`, the plan that packs its rows (training batches: harness/logps.py)."""
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
    if pack:
        batch["packing"] = pack_rows([len(p) + len(c) for p, c, _ in sequences], length)
    return batch


def pack_rows(lengths: list[int], capacity: int) -> dict:
    """Where each sequence goes when the batch's rows are packed (harness/logps.py): first fit by decreasing
    length into rows of `capacity` tokens. {"bin": row of each sequence, "offset": its first column, "bins": rows}."""
    import torch

    room: list[int] = []
    where = [(0, 0)] * len(lengths)
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, left in enumerate(room) if left >= lengths[i]), len(room))
        if row == len(room):
            room.append(capacity)
        where[i] = (row, capacity - room[row])
        room[row] -= lengths[i]
    return {"bin": torch.tensor([r for r, _ in where]), "offset": torch.tensor([o for _, o in where]), "bins": len(room)}
