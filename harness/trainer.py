"""The one training loop: the policy of every offline method, the embedded task's SFT model and its judge.

`train_loop` owns the mechanics (accelerate's prepare/accumulate/backward, clipping, scheduler, logging
reduced over processes, checkpoints and resume); what is trained is a `step_loss(model, batch)`.
For a policy (`train_policy`), per optimizer step: one concatenated forward over the batch's chosen +
rejected (+ mismatched) rows -> per-sequence summed log-probs and token counts -> `method.loss(policy,
reference)` -> backward. The reference log-probs were computed once before training and ride along in
the batch; methods with `reference_free = True` never get them, and a reference ablation
(`method.reference`: none, co_trained, ema) gets its own per batch (`reference_side`). Runs under
`accelerate launch`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import shutil
import time
import dataclasses
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from .cache import write_json_atomic
from .config import TrainConfig
from .data import collate
from .errors import writing
from .logps import LossOutput, SequenceLogps, policy_logps, reference_logps, summed_logps


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
    batch = collate(examples, reference, pad_token_id, pack=True)
    # Rows outside consumed_examples carry NaN; a loader may collate a batch ahead that is never trained on,
    # so the check happens where a batch is used (train_policy), on this flag: no device sync.
    batch["reference_missing"] = reference is not None and any(math.isnan(v) for values in reference for v in values)
    return batch


def example_lengths(examples) -> list[int]:
    return [max(len(p) + len(c) for p, c, _ in example) for example in examples]


def length_grouped(lengths: list[int], batch_size: int, seed: int):
    from transformers.trainer_pt_utils import LengthGroupedSampler

    return LengthGroupedSampler(batch_size, lengths=lengths, generator=torch.Generator().manual_seed(seed))


def make_loader(examples, reference, batch_size: int, pad_token_id: int, shuffle: bool, seed: int = 0,
                group_by_length: bool = False):
    grouped = length_grouped(example_lengths(examples), batch_size, seed) if shuffle and group_by_length else None
    return torch.utils.data.DataLoader(
        ExampleDataset(examples, reference), batch_size=batch_size, shuffle=shuffle and grouped is None,
        sampler=grouped, generator=torch.Generator().manual_seed(seed),
        collate_fn=partial(collate_items, pad_token_id=pad_token_id))


def consumed_examples(examples, cfg: TrainConfig, num_processes: int) -> list[int] | None:
    """Indices of the examples `train_policy` draws in its cfg.max_steps optimizer steps, or None for all of
    them: a run shorter than an epoch needs reference log-probs for those rows only. Multi-process runs
    (accelerate shards the batches) take every row. The order is replayed with the sampler the run uses:
    the length-grouped one from its seed, else the one the run's Accelerator puts in (use_seedable_sampler,
    data_seed=train.seed: epoch 0 is a permutation seeded with the seed). A batch holding a row this
    missed stops the run (train_policy), never trains on a wrong value."""
    from accelerate.data_loader import SeedableRandomSampler

    micro_batches = cfg.max_steps * cfg.gradient_accumulation_steps * num_processes
    if num_processes > 1 or micro_batches >= math.ceil(len(examples) / cfg.batch_size):
        return None
    if cfg.group_by_length:
        order = list(length_grouped(example_lengths(examples), cfg.batch_size, cfg.seed))
    else:
        order = list(SeedableRandomSampler(range(len(examples)), data_seed=cfg.seed))
    return sorted(order[: micro_batches * cfg.batch_size])


@torch.no_grad()
def sequence_logps_of(model, examples, pad_token_id: int, batch_size: int = 64, desc: str = "log-probs") -> list[list[float]]:
    """Summed completion log-probs of every sequence of every example, in example order (eval mode).

    A batch holds only examples of one length (their longest sequence), taken in length order: no padding
    beyond what an example's own sequences need, and a single-sequence example's value depends on its own
    tokens only, never on which rows shared its batch (the padded length changes the float rounding), so
    values cached per row are the same whichever run computed them."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    lengths = example_lengths(examples)
    batches = []
    for _, same_length in itertools.groupby(sorted(range(len(examples)), key=lengths.__getitem__),
                                            key=lengths.__getitem__):
        same_length = list(same_length)
        batches += [same_length[start:start + batch_size] for start in range(0, len(same_length), batch_size)]
    values: list[list[float]] = [[] for _ in examples]
    for indices in tqdm(batches, desc=desc, leave=False):
        # not packed: a cached row's value must not depend on the rows that shared its batch
        batch = collate([examples[i] for i in indices], None, pad_token_id)
        completion, _ = summed_logps(model, {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)},
                                     with_prompt=False)
        flat = completion.tolist()
        for i in indices:  # collate keeps example order; each example owns its next len(example) rows
            values[i], flat = flat[:len(examples[i])], flat[len(examples[i]):]
    model.train(was_training)
    return values


class Diverged(RuntimeError):
    """A non-finite loss or gradient norm: the run stopped before the optimizer step that would apply it."""


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    tokens: int = 0  # tokens forwarded and back-propagated (this process)
    examples: int = 0  # training examples consumed, over all processes (a pair, an unpaired row, a rollout)
    # Work done producing batches, for loaders that do some (an online method's rollouts; this process).
    tokens_generated: int = 0
    tokens_forwarded: int = 0  # forwards without gradients: old policy, reference, reward model
    seconds: float = 0.0
    first_loss: float | None = None
    last_finite_loss: float | None = None  # the last optimizer step's loss (its last micro-batch)
    history: list[dict] = field(default_factory=list)
    extra: dict | None = None  # `extra_state.state_dict()` (e.g. an adaptive KL controller), saved with checkpoints
    resumed_from: int | None = None  # the checkpoint's step this run resumed from (None: it started fresh)


def _latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint: trainer_state.json is written last, so a folder without it is one
    a killed process left half-written (the previous checkpoint is only removed after it)."""
    found = sorted((p for p in folder.glob("step-*") if (p / "trainer_state.json").is_file()),
                   key=lambda p: int(p.name.split("-")[1])) if folder.is_dir() else []
    return found[-1] if found else None


def _save_checkpoint(accelerator, folder: Path, state: TrainState, extra_state=None) -> None:
    if extra_state is not None:
        state.extra = extra_state.state_dict()
    target = folder / f"step-{state.step}"
    # A write that fails (WriteFailed: a full disk) removes what it began; the previous checkpoint, removed only
    # once this one is complete, stays the one a resumed run starts from.
    with writing(target, partial=target if accelerator.is_main_process else None):
        accelerator.save_state(str(target), safe_serialization=True)
        if accelerator.is_main_process:
            if hasattr(extra_state, "save_to"):  # state too large for JSON (an EMA reference's weights)
                extra_state.save_to(target)
            write_json_atomic(target / "trainer_state.json", asdict(state))  # last: it marks the checkpoint complete
    if accelerator.is_main_process:
        for old in folder.glob("step-*"):  # keep only the newest: a run resumes from its last checkpoint
            if old != target:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


class OneProcess:
    """The part of accelerate's `Accelerator` that `train_loop` uses, for a model this process trains alone.

    The embedded task's SFT model and judge are built inside whichever process of a launch gets the cache
    lock first, so they must not join the launch's process group (and their result must not depend on it).
    """

    is_main_process, num_processes, process_index, sync_gradients = True, 1, 0, True

    def prepare(self, *objects):
        return objects

    def accumulate(self, model):
        return contextlib.nullcontext()

    def backward(self, loss):
        loss.backward()

    def clip_grad_norm_(self, parameters, max_norm):
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)

    def reduce(self, tensor, reduction="mean"):
        return tensor

    def autocast(self):
        return contextlib.nullcontext()

    def skip_first_batches(self, loader, num_batches):
        return itertools.islice(loader, num_batches, None)


def _window_means(accelerator, window: list[dict]) -> dict[str, float]:
    """Mean of each logged value over the window's micro-batches and over all processes: one stacked
    tensor, one reduction, one host sync per log step (methods return detached tensors, not floats)."""
    keys, device = list(window[0]), getattr(accelerator, "device", "cpu")
    stacked = torch.stack([torch.stack([torch.as_tensor(w[k], dtype=torch.float32, device=device) for k in keys])
                           for w in window])
    means = accelerator.reduce(stacked.mean(0), "mean")
    return dict(zip(keys, means.tolist()))


def train_loop(model, step_loss: Callable, loader, optimizer, scheduler, *, max_steps: int, max_grad_norm: float,
               log_steps: int, accelerator=None, checkpoints: Path | None = None, save_steps: int = 0,
               resume: bool = False, log: Callable | None = None, desc: str = "train", extra_state=None,
               after_step: Callable | None = None) -> TrainState:
    """The one training loop (offline and online policies, embedded SFT, judge): `step_loss(model, batch) ->
    LossOutput` per micro-batch, backward, clip, optimizer and scheduler step; logs window means;
    checkpoints and resumes. Trains `model` in place for max_steps optimizer steps and returns the final
    state. Without an accelerator it runs in this process alone (OneProcess).

    `loader` is a DataLoader, or any iterable of batches; one that resumes itself (a stream of rollouts
    replays from its seed) has its own `skip_first_batches(n)`. A batch may carry counts of the work
    done producing it ("tokens_generated", "tokens_forwarded"). `extra_state` (state_dict/load_state_dict)
    is saved with each checkpoint and restored on resume. `after_step()` runs after each optimizer step
    (an EMA reference follows the weights there)."""
    accelerator = accelerator or OneProcess()
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    state = TrainState()
    latest = _latest_checkpoint(checkpoints) if resume and checkpoints is not None else None
    if latest is not None:
        accelerator.load_state(str(latest))
        state = TrainState(**json.loads((latest / "trainer_state.json").read_text()))
        state.resumed_from = state.step
        if extra_state is not None and state.extra is not None:
            extra_state.load_state_dict(state.extra)
        if hasattr(extra_state, "load_from"):
            extra_state.load_from(latest)
    skip = getattr(loader, "skip_first_batches", None) or partial(accelerator.skip_first_batches, loader)

    model.train()
    progress = tqdm(total=max_steps, initial=state.step, desc=desc, leave=False, disable=not accelerator.is_main_process)
    window: list[dict] = []
    tokens = torch.zeros((), dtype=torch.long)  # counted on the batch's device, read at log time: no sync per step
    started = time.perf_counter() - state.seconds
    while state.step < max_steps:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(state.epoch)
        batches = skip(state.batch_in_epoch) if state.batch_in_epoch else loader
        for batch in batches:
            state.batch_in_epoch += 1
            with accelerator.accumulate(model):
                out = step_loss(model, batch)
                accelerator.backward(out.loss)
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
                    # One host sync per optimizer step: a non-finite loss or gradient stops the run here, before
                    # the optimizer applies it, so the weights and every checkpoint so far stay finite.
                    loss_value, norm_value = float(out.loss.detach()), float(grad_norm)
                    if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
                        raise Diverged(f"non-finite {'loss' if not math.isfinite(loss_value) else 'gradient norm'} at "
                                       f"step {state.step + 1} (loss {loss_value}, gradient norm {norm_value}); last "
                                       f"finite loss {state.last_finite_loss} at step {state.step}; training stopped "
                                       "before applying it")
                    state.last_finite_loss = loss_value
                rate = scheduler.get_last_lr()[0]  # the rate this step applies (once stepped, it names the next one's)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                if after_step is not None and accelerator.sync_gradients:
                    after_step()
            tokens = tokens.to(batch["attention_mask"].device) + batch["attention_mask"].sum()
            state.examples += batch["num_examples"] * accelerator.num_processes
            state.tokens_generated += batch.get("tokens_generated", 0)
            state.tokens_forwarded += batch.get("tokens_forwarded", 0)
            window.append({"loss": out.loss.detach(), **out.metrics})
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            if state.first_loss is None:
                state.first_loss = _window_means(accelerator, window)["loss"]
            progress.update(1)
            if state.step % log_steps == 0 or state.step == max_steps:
                state.tokens, tokens = state.tokens + int(tokens), torch.zeros_like(tokens)
                means = _window_means(accelerator, window)
                means.update(grad_norm=float(grad_norm), learning_rate=rate, epoch=state.epoch)
                state.history.append({"step": state.step, **means})
                if log is not None:
                    log(state.step, means)
                progress.set_postfix(loss=f"{means['loss']:.4f}")
                window = []
            if checkpoints is not None and save_steps and state.step % save_steps == 0 and state.step < max_steps:
                state.tokens, tokens = state.tokens + int(tokens), torch.zeros_like(tokens)
                state.seconds = time.perf_counter() - started
                _save_checkpoint(accelerator, checkpoints, state, extra_state)
            if state.step >= max_steps:
                break
        else:
            state.epoch += 1
            state.batch_in_epoch = 0
    progress.close()
    state.tokens += int(tokens)
    state.seconds = time.perf_counter() - started
    return state


def policy_optimizer(model, cfg: TrainConfig, num_processes: int):
    """AdamW over the trainable parameters and the configured learning-rate schedule, for a policy."""
    from transformers import get_scheduler

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate,
                                  weight_decay=cfg.weight_decay, foreach=True)
    # accelerate steps a prepared scheduler once per process per optimizer step (it assumes the schedule
    # counts single-process batches), so the schedule is laid out in those ticks: step k then has the same
    # learning rate whatever the number of processes.
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer,
                              num_warmup_steps=math.ceil(cfg.warmup_ratio * cfg.max_steps) * num_processes,
                              num_training_steps=cfg.max_steps * num_processes)
    return optimizer, scheduler


class EmaReference:
    """A copy of the policy whose weights follow it as an exponential moving average, updated after each
    optimizer step: ref <- decay * ref + (1 - decay) * policy (TR-DPO's soft update). It starts as the
    policy before training (the SFT weights) and is saved with checkpoints, so a resumed run goes on with it."""

    def __init__(self, model, decay: float):
        import copy

        self.policy, self.decay = model, decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self) -> None:
        for ema, weight in zip(self.model.parameters(), self.policy.parameters()):
            ema.lerp_(weight.detach().to(ema.dtype), 1.0 - self.decay)

    def state_dict(self) -> dict:
        return {"decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        pass

    def save_to(self, checkpoint: Path) -> None:  # its weights beside the policy's, in safetensors
        from safetensors.torch import save_model

        save_model(self.model, str(checkpoint / "ema_reference.safetensors"))

    def load_from(self, checkpoint: Path) -> None:
        from safetensors.torch import load_model

        load_model(self.model, str(checkpoint / "ema_reference.safetensors"))


def reference_side(variant: str | None, batch, policy: SequenceLogps, ema: EmaReference | None,
                   with_prompt: bool) -> SequenceLogps | None:
    """What the loss is given as the reference for this batch (methods.REFERENCES): the precomputed SFT
    log-probs the batch carries (frozen), zeros (none), the policy's own values detached (co_trained: a
    reference that moves with the policy, so every log-ratio is 0 while its gradient is the policy's), or
    the EMA copy's (ema). None for a reference-free method."""
    if variant is None:
        return None
    if variant == "frozen":
        return reference_logps(batch)
    if variant == "ema":
        with torch.no_grad():
            return policy_logps(ema.model, batch, with_prompt=with_prompt)
    like = torch.zeros_like if variant == "none" else torch.Tensor.detach
    values = {f.name: getattr(policy, f.name) for f in dataclasses.fields(policy)}
    return SequenceLogps(**{name: value if value is None or name.endswith("tokens") else like(value)
                            for name, value in values.items()})


def train_policy(accelerator, model, method, examples, reference, pad_token_id: int, cfg: TrainConfig,
                 output_dir: Path, log) -> TrainState:
    """An offline method's training: per micro-batch, one concatenated forward for the policy's per-sequence
    log-probs, the reference side (`method.reference`: the precomputed log-probs from the batch, or an
    ablation's), and `method.loss(policy, reference)`."""
    variant = method.reference
    loader = make_loader(examples, reference if variant == "frozen" else None, cfg.batch_size, pad_token_id,
                         shuffle=True, seed=cfg.seed, group_by_length=cfg.group_by_length)
    optimizer, scheduler = policy_optimizer(model, cfg, accelerator.num_processes)
    ema = EmaReference(model, method.params.reference_ema) if variant == "ema" else None

    def step_loss(model, batch) -> LossOutput:
        if batch.get("reference_missing"):
            raise RuntimeError("a batch holds a row whose reference log-probs were not computed: "
                               "consumed_examples did not predict the rows this run draws")
        policy = policy_logps(model, batch, with_prompt=method.reads_prompt_logps)
        out = method.loss(policy, reference_side(variant, batch, policy, ema, method.reads_prompt_logps))
        # Every offline method's curves show where its policy takes the training responses (a chosen log-prob
        # falling far below its start is a policy leaving the SFT distribution), whatever its loss logs.
        return LossOutput(out.loss, {"logps/chosen": policy.chosen.detach().mean(),
                                     "logps/rejected": policy.rejected.detach().mean(), **out.metrics})

    return train_loop(model, step_loss, loader, optimizer, scheduler, max_steps=cfg.max_steps,
                      max_grad_norm=cfg.max_grad_norm, log_steps=cfg.log_steps, accelerator=accelerator,
                      checkpoints=output_dir / "checkpoints", save_steps=cfg.save_steps, resume=cfg.resume, log=log,
                      desc=f"train {method.name}", extra_state=ema, after_step=None if ema is None else ema.update)
