"""The one training loop for every offline method. Runs unchanged under `accelerate launch`.

Per optimizer step: one concatenated forward over the batch's chosen + rejected (+ mismatched) rows
-> per-sequence summed log-probs and token counts -> `method.loss(policy, reference)` -> backward.
The reference log-probs were computed once before training and ride along in the batch; methods with
`reference_free = True` never get them.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .config import TrainConfig
from .data import collate
from .logps import policy_logps, reference_logps, summed_logps


class ExampleDataset(torch.utils.data.Dataset):
    def __init__(self, examples, reference=None):
        self.examples, self.reference = examples, reference

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, index):
        return self.examples[index], None if self.reference is None else self.reference[index]


def collate_items(items, pad_token_id: int):
    examples = [example for example, _ in items]
    reference = None if items[0][1] is None else [values for _, values in items]
    return collate(examples, reference, pad_token_id)


def make_loader(examples, reference, batch_size: int, pad_token_id: int, shuffle: bool, seed: int = 0):
    return torch.utils.data.DataLoader(
        ExampleDataset(examples, reference), batch_size=batch_size, shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed), collate_fn=partial(collate_items, pad_token_id=pad_token_id))


@torch.no_grad()
def sequence_logps_of(model, examples, pad_token_id: int, batch_size: int = 64, desc: str = "log-probs") -> list[list[float]]:
    """Summed completion log-probs of every sequence of every example, in example order (one pass, eval mode)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    values: list[list[float]] = []
    loader = make_loader(examples, None, batch_size, pad_token_id, shuffle=False)
    for batch in tqdm(loader, desc=desc, leave=False):
        completion, _ = summed_logps(model, {k: v.to(device) for k, v in batch.items()})
        flat = completion.tolist()
        while flat:  # the loader keeps example order; each example owns its next len(example) rows
            width = len(examples[len(values)])
            values.append(flat[:width])
            flat = flat[width:]
    model.train(was_training)
    return values


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    tokens: int = 0
    examples: int = 0  # training examples consumed, over all processes (a pair, or one unpaired row)
    seconds: float = 0.0
    first_loss: float | None = None
    history: list[dict] = field(default_factory=list)


def _latest_checkpoint(folder: Path) -> Path | None:
    found = sorted(folder.glob("step-*"), key=lambda p: int(p.name.split("-")[1])) if folder.is_dir() else []
    return found[-1] if found else None


def _save_checkpoint(accelerator, folder: Path, state: TrainState) -> None:
    target = folder / f"step-{state.step}"
    accelerator.save_state(str(target), safe_serialization=True)
    if accelerator.is_main_process:
        (target / "trainer_state.json").write_text(json.dumps(asdict(state)))
        for old in folder.glob("step-*"):  # keep only the newest: a run resumes from its last checkpoint
            if old != target:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def train_loop(accelerator, model, method, examples, reference, pad_token_id: int, cfg: TrainConfig,
               output_dir: Path, log) -> TrainState:
    """Train `model` in place for cfg.max_steps optimizer steps; returns the final state."""
    from transformers import get_scheduler

    loader = make_loader(examples, None if method.reference_free else reference, cfg.batch_size, pad_token_id,
                         shuffle=True, seed=cfg.seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate,
                                  weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=math.ceil(cfg.warmup_ratio * cfg.max_steps),
                              num_training_steps=cfg.max_steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    checkpoints = output_dir / "checkpoints"
    state = TrainState()
    latest = _latest_checkpoint(checkpoints) if cfg.resume else None
    if latest is not None:
        accelerator.load_state(str(latest))
        state = TrainState(**json.loads((latest / "trainer_state.json").read_text()))

    model.train()
    progress = tqdm(total=cfg.max_steps, initial=state.step, desc=f"train {method.name}", leave=False,
                    disable=not accelerator.is_main_process)
    window: list[dict] = []
    started = time.perf_counter() - state.seconds
    while state.step < cfg.max_steps:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(state.epoch)
        batches = accelerator.skip_first_batches(loader, state.batch_in_epoch) if state.batch_in_epoch else loader
        for batch in batches:
            state.batch_in_epoch += 1
            with accelerator.accumulate(model):
                policy = policy_logps(model, batch)
                reference_side = None if method.reference_free else reference_logps(batch)
                out = method.loss(policy, reference_side)
                accelerator.backward(out.loss)
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            state.tokens += int(batch["attention_mask"].sum())
            state.examples += int(batch["num_examples"]) * accelerator.num_processes
            window.append({"loss": out.loss.item(), **out.metrics})
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            if state.first_loss is None:
                state.first_loss = sum(w["loss"] for w in window) / len(window)
            progress.update(1)
            if state.step % cfg.log_steps == 0 or state.step == cfg.max_steps:
                means = {key: sum(w[key] for w in window) / len(window) for key in window[0]}
                means.update(grad_norm=float(grad_norm), learning_rate=scheduler.get_last_lr()[0], epoch=state.epoch)
                state.history.append({"step": state.step, **means})
                log(state.step, means)
                progress.set_postfix(loss=f"{means['loss']:.4f}")
                window = []
            if cfg.save_steps and state.step % cfg.save_steps == 0 and state.step < cfg.max_steps:
                state.seconds = time.perf_counter() - started
                _save_checkpoint(accelerator, checkpoints, state)
            if state.step >= cfg.max_steps:
                break
        else:
            state.epoch += 1
            state.batch_in_epoch = 0
    progress.close()
    state.seconds = time.perf_counter() - started
    return state
