"""Builds the embedded task's assets once per task config, cached on disk:

a word-level tokenizer (built with `tokenizers`), a tiny Llama initialised from a seed and saved with
`save_pretrained`, its SFT on the base response distribution, the preference pairs (train), the judge's
pairs, the validation and test prompts, and labelled held-out pairs, each split drawn from its own
disjoint set of (item, aspect) prompts. Every model is loaded back through the same `from_pretrained`
path as any hub model.

Builds run on BUILD_THREADS torch threads whatever the machine has: the reduction order of a parallel
matmul depends on the thread count, so the same CPU type then gives bit-identical assets. Another CPU
type (other SIMD kernels) rounds differently and trains a slightly different SFT model: its fingerprint,
stored in every run record, tells them apart.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..cache import cached_dir, key_of
from ..config import TaskConfig
from ..trainer import TrainState
from .shipped import ASSETS, is_shipped
from .task import VOCAB, ReviewTask

TASK_VERSION = 7  # bump when the task, the model recipe or the entry changes: it is part of the cache key (7: base/)
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
MODEL_SHAPE = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=4, max_position_embeddings=128)
MODEL_PARAMETERS = 867_712  # of the model above with the task's 114-token vocabulary (tests/test_embedded.py checks it)
SFT_BATCH, SFT_LR, SFT_LOG_STEPS = 32, 3e-3, 20
BUILD_THREADS = 2
REPLAY_STEPS = 20  # every build records its weights' digest after this many steps: a replay of them checks the recipe


@contextlib.contextmanager
def build_threads():
    """Run a build on BUILD_THREADS threads (see the module docstring), then restore the caller's count."""
    before = torch.get_num_threads()
    torch.set_num_threads(BUILD_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def weights_digest(model) -> str:
    """sha256 of a model's weights (every tensor of its state dict, in order): the same only for the same bits."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def digest_after(model, steps: int) -> tuple[Callable[[], None], dict[str, str]]:
    """An `after_step` for train_loop that records the weights' digest after `steps` optimizer steps."""
    seen, digests = [0], {}

    def after_step() -> None:
        seen[0] += 1
        if seen[0] == steps:
            digests[str(steps)] = weights_digest(model)

    return after_step, digests


@dataclass
class EmbeddedAssets:
    root: Path
    sft_path: str
    train_pairs: list[dict]
    eval_prompts: list[str]
    val_prompts: list[str]
    judge_pairs: list[dict]
    heldout_pairs: list[dict]
    splits: dict[str, list[list[str]]]  # split name -> its (item, aspect) combinations
    cache_hit: bool
    shipped: bool = False  # the copy that ships with the harness (harness/embedded/shipped.py)


def build_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS + VOCAB)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # Words and punctuation split apart, so the prompt and its response tokenise the same way alone or joined
    # (Formatter tokenises prompt + response as one string, as TRL does); BOS in front, as Llama's tokenizer does.
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", unk_token="<unk>")


def build_base_model(tokenizer, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **MODEL_SHAPE)
    return LlamaForCausalLM(config)


def train_sft(model, tokenizer, rows: list[dict], steps: int, seed: int,
              stop_at: int | None = None) -> tuple[TrainState, dict[str, str]]:
    """Completion-only next-token loss on base-distribution responses (prompt tokens masked out), through
    the backend's training loop: batches of SFT_BATCH rows drawn with replacement, AdamW, one-cycle schedule.
    Returns the final state and the weights' digest after REPLAY_STEPS steps. `stop_at`: the same run
    stopped after that many steps (a replay of a build's beginning)."""
    from ..data import Formatter, collate
    from ..logps import LossOutput, token_logps
    from ..trainer import train_loop

    formatter = Formatter(tokenizer, max_length=96, max_prompt_length=16)
    sequences = []
    for row in rows:
        prompt, (response,) = formatter.encode(row["prompt"], [row["response"]])
        sequences.append([(prompt, response, 0)])
    sampler = torch.utils.data.RandomSampler(sequences, replacement=True, num_samples=steps * SFT_BATCH,
                                             generator=torch.Generator().manual_seed(seed))
    loader = torch.utils.data.DataLoader(sequences, batch_size=SFT_BATCH, sampler=sampler,
                                         collate_fn=lambda picked: collate(picked, None, tokenizer.pad_token_id))
    optimizer = torch.optim.AdamW(model.parameters(), lr=SFT_LR, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=SFT_LR, total_steps=steps, pct_start=0.1)

    def step_loss(model, batch) -> LossOutput:
        mask = batch["completion_mask"][:, 1:].float()
        return LossOutput(-(token_logps(model, batch["input_ids"], batch["attention_mask"]) * mask).sum() / mask.sum())

    after_step, digests = digest_after(model, REPLAY_STEPS)
    state = train_loop(model, step_loss, loader, optimizer, schedule, max_steps=stop_at or steps, max_grad_norm=1.0,
                       log_steps=SFT_LOG_STEPS, desc="SFT (embedded task)", after_step=after_step)
    model.eval()
    return state, digests


def _build(cfg: TaskConfig, out: Path, stop_at: int | None = None) -> dict[str, str]:
    """The task's files into `out`; `stop_at`: only the data, tokenizer and base model, and the SFT run stopped
    after that many steps (nothing of it saved). Returns the SFT weights' digest after REPLAY_STEPS steps."""
    task = ReviewTask(seed=cfg.seed, label_temperature=cfg.label_temperature)
    splits = task.split_combinations()
    train_pairs = task.preference_pairs(task.prompts(cfg.num_train_pairs, splits["train"]))
    eval_prompts = task.distinct_prompts(cfg.num_eval_prompts, splits["test"])
    judge_pairs = task.preference_pairs(task.prompts(cfg.num_judge_pairs, splits["judge"]))
    # Labelled pairs on test prompts: held-out preference accuracy and the judge's agreement with gold.
    heldout_pairs = task.preference_pairs(task.prompts(500, splits["test"]))
    val_prompts = task.distinct_prompts(cfg.num_val_prompts, splits["val"])
    sft_rows = [{"prompt": p, "response": task.response(p)} for p in task.prompts(cfg.num_sft_examples, splits["train"])]
    (out / "data.json").write_text(json.dumps({
        "train_pairs": train_pairs, "eval_prompts": eval_prompts, "judge_pairs": judge_pairs,
        "heldout_pairs": heldout_pairs, "val_prompts": val_prompts, "splits": splits}))

    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(out / "tokenizer")
    with build_threads():
        model = build_base_model(tokenizer, cfg.seed)
        model.should_save_on_this_rank = lambda is_main_process: True  # built by any rank of a launch (evals/judge.py)
        model.save_pretrained(out / "base")  # safetensors: the initialisation the SFT starts from
        state, digests = train_sft(model, tokenizer, sft_rows, cfg.sft_steps, cfg.seed, stop_at)
    if stop_at is not None:
        return digests
    model.save_pretrained(out / "sft")
    tokenizer.save_pretrained(out / "sft")
    (out / "sft_log.json").write_text(json.dumps({"first_loss": state.first_loss, "final_loss": state.history[-1]["loss"],
                                                  "history": state.history, "weights_at_step": digests}))
    return digests


def replay_build(cfg: TaskConfig, out: Path, steps: int = REPLAY_STEPS) -> dict[str, str]:
    """A build's beginning, replayed into `out`: its data files, tokenizer and base model as the build writes
    them, and the SFT weights' digest after `steps` steps (what sft_log.json's `weights_at_step` recorded)."""
    out.mkdir(parents=True, exist_ok=True)
    return _build(cfg, out, stop_at=steps)


def prepare_embedded(cfg: TaskConfig, cache_dir: str) -> EmbeddedAssets:
    """The task's assets: the shipped copy where the recipe matches and it verifies (unless `cfg.shipped` is
    false), else the cache's, built on first use."""
    key = key_of(TASK_VERSION, cfg.model_dump(exclude={"shipped"}), MODEL_SHAPE, SFT_BATCH, SFT_LR, BUILD_THREADS,
                 torch.__version__)
    root, hit = cached_dir(cache_dir, "embedded-task", key, lambda out: _build(cfg, out),
                           shipped=ASSETS if cfg.shipped else None)
    data = json.loads((root / "data.json").read_text())
    return EmbeddedAssets(root=root, sft_path=str(root / "sft"), cache_hit=hit, shipped=is_shipped(root), **data)
