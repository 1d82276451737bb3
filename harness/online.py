"""The online loop: methods that learn from their own samples (PPO, RLOO, any method consuming ROLLOUTS).

Per rollout batch (every `online.epochs x minibatches` micro-batches, in each process):
  1. draw `online.prompts_per_rollout` training prompts (seeded by the run seed, rollout index, process)
  2. sample `method.samples_per_prompt` completions of each with the policy: plain sampling (temperature 1,
     top_p 1), so the per-token log-probs below are those of the distribution that produced the tokens
  3. score each completion with the reward model, shown the prompt as the policy saw it (its kept tokens) and
     the completion as sampled: one cut at online.max_new_tokens is scored unfinished (no EOS appended) and,
     with online.missing_eos_penalty set, has that much subtracted from its score (TRL's missing_eos_penalty)
  4. per-token log-probs of the policy as it sampled (the "old" policy of the ratio) and of the reference
     (the SFT weights: the adapter disabled under LoRA, else the frozen copy), and per-token values when
     the method consumes VALUES
  5. `method.advantages(rollout)`, once, without gradients (rewards, KL shaping, GAE or baselines)
then `online.epochs` passes over the batch in shuffled minibatches of `train.batch_size` sequences; each
micro-batch is a step of the one training loop (`train_loop`): the same accumulation, clipping, schedule,
logging, checkpoints and resume as the offline methods.

The policy runs in eval mode (dropout off) throughout, so the ratio to the old policy is exactly 1 on the
first minibatch of a batch ("The N implementation details of RLHF with PPO", Huang et al., 2024).
Resume: a rollout batch is a function of (seed, rollout index, weights), so after a checkpoint (taken
only at rollout boundaries) the stream starts again at the next rollout and replays the same samples.
"""

from __future__ import annotations

import contextlib
import math
import random
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch

from .config import OnlineConfig, TrainConfig
from .data import collate
from .errors import BadInput
from .generation import eos_token_ids, finished, sample
from .logps import CHOSEN, VALUES, LossOutput, TokenLogps, logps_of_tokens
from .reference import Reference
from .trainer import TrainState, policy_optimizer, train_loop


@dataclass
class Rollout:
    """A batch of the policy's own samples with what an online loss reads; per-token tensors are (n, T)
    like `TokenLogps`, zero off the completion mask."""

    input_ids: torch.Tensor  # (n, T + 1) right-padded prompt + completion
    attention_mask: torch.Tensor
    mask: torch.Tensor  # (n, T) float: 1 where the predicted token is a completion token
    group: torch.Tensor  # (n,) index of the prompt: samples of one prompt share it
    scores: torch.Tensor  # (n,) reward model score of each completion
    logps: torch.Tensor  # (n, T) the sampling policy's per-token log-probs (no gradient)
    ref_logps: torch.Tensor  # (n, T) the reference's
    values: torch.Tensor | None = None  # (n, T) value estimates at sampling time (methods consuming VALUES)
    max_new_tokens: int = 0  # the longest completion the sampler could draw (Dr. GRPO normalises by it)
    fields: dict[str, torch.Tensor] = field(default_factory=dict)  # the method's: advantages, returns...
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # per-batch figures to log beside the loss

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, index: torch.Tensor) -> "Rollout":
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return replace(self, input_ids=self.input_ids[index], attention_mask=self.attention_mask[index],
                       mask=self.mask[index], group=self.group[index], scores=self.scores[index],
                       logps=self.logps[index], ref_logps=self.ref_logps[index], values=pick(self.values),
                       fields={k: v[index] for k, v in self.fields.items()})

    def kl(self) -> torch.Tensor:
        """Per-sequence summed log-ratio to the reference on the sampled tokens: an unbiased estimate of
        KL(policy || reference) for plain samples (the only kind this loop draws)."""
        return ((self.logps - self.ref_logps) * self.mask).sum(-1)


def rollout_seed(seed: int, rollout: int, process: int, what: int) -> int:
    """The seed of one part of a rollout batch (0: the prompts drawn, 1: sampling, 2: the minibatch order) of
    one process: every process of a launch draws its own prompts and samples."""
    return ((seed * 1_000_003 + rollout) * 101 + process) * 7 + what


class ValueHead(torch.nn.Module):
    """A policy with a scalar head on its last hidden state, sharing the trunk (PPO's critic).

    The head starts at zero, so the first batch's values are 0 and its advantages are rewards-to-go."""

    def __init__(self, policy):
        super().__init__()
        self.policy = policy
        self.head = torch.nn.Linear(policy.config.get_text_config().hidden_size, 1, dtype=torch.float32)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, input_ids, attention_mask):
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, output_hidden_states=True)
        return out.logits, self.head(out.hidden_states[-1].float()).squeeze(-1)


def forward_tokens(model, input_ids, attention_mask, entropy: bool = False):
    """Per-token log-probs (n, T), per-token values (n, T) for a ValueHead (else None), and with `entropy`
    the policy's per-token entropy (n, T, no gradient; else None)."""
    if isinstance(getattr(model, "module", model), ValueHead):
        logits, values = model(input_ids, attention_mask)
        values = values[:, :-1]
    else:
        logits, values = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits, None
    entropies = None
    if entropy:
        with torch.no_grad():
            shifted = logits[:, :-1].float()
            entropies = shifted.logsumexp(-1) - (shifted.softmax(-1) * shifted).sum(-1)
    return logps_of_tokens(logits, input_ids), values, entropies


class RolloutStream:
    """What `train_loop` iterates over for an online method: minibatches of rollout batches, forever."""

    def __init__(self, model, policy, method, prompts: list[tuple[Any, list[int]]], reward: Callable, reference: Reference,
                 tokenizer, train: TrainConfig, online: OnlineConfig, process_index: int = 0,
                 autocast: Callable = contextlib.nullcontext):
        self.model, self.policy, self.method, self.prompts = model, policy, method, prompts
        self.autocast = autocast  # the run's precision (harness/precision.py), as the training forward has it
        self.reward, self.reference, self.tokenizer = reward, reference, tokenizer
        self.train, self.online, self.process_index = train, online, process_index
        self.size = online.prompts_per_rollout * method.samples_per_prompt
        self.batches_per_rollout = online.epochs * math.ceil(self.size / train.batch_size)
        self.start = 0
        self.pending_counts: dict[str, int] = {}  # work done for the next batch to yield, for the record

    def _seed(self, rollout: int, what: int) -> int:
        return rollout_seed(self.train.seed, rollout, self.process_index, what)

    def collect(self, index: int) -> Rollout:
        """Rollout batch `index`: sampling, the old policy's and the reference's log-probs and the reward
        model's scores all under the training forward's autocast, so at step 0 KL is 0 and the ratio 1."""
        with torch.no_grad(), self.autocast():
            return self._collect(index)

    def _collect(self, index: int) -> Rollout:
        k, device = self.method.samples_per_prompt, next(self.model.parameters()).device
        picked = random.Random(self._seed(index, 0)).sample(range(len(self.prompts)), self.online.prompts_per_rollout)
        prompt_ids = [self.prompts[i][1] for i in picked for _ in range(k)]
        self.model.eval()  # dropout off for sampling and for every forward after it (see the module docstring)
        completions = sample(self.policy, self.tokenizer, prompt_ids, max_new_tokens=self.online.max_new_tokens,
                             seed=self._seed(index, 1), desc="rollouts")
        eos = eos_token_ids(self.policy, self.tokenizer)
        ended = [finished(c, eos) for c in completions]
        batch = collate([[(p, c, CHOSEN)] for p, c in zip(prompt_ids, completions)], None, self.tokenizer.pad_token_id)
        input_ids, attention_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        mask = batch["completion_mask"][:, 1:].to(device=device, dtype=torch.float32)
        logps, values, _ = forward_tokens(self.model, input_ids, attention_mask)
        ref_logps = self.reference.token_logps(input_ids, attention_mask)
        scores = torch.as_tensor(self.reward([self.prompts[i][0] for i in picked for _ in range(k)], completions, ended),
                                 dtype=torch.float32, device=device)
        truncated = torch.tensor([not e for e in ended], dtype=torch.float32, device=device)
        if self.online.missing_eos_penalty is not None:
            scores = scores - self.online.missing_eos_penalty * truncated
        rollout = Rollout(input_ids, attention_mask, mask, torch.arange(len(picked), device=device).repeat_interleave(k),
                          scores, logps.float() * mask, ref_logps.float() * mask,
                          None if values is None else values.float() * mask, max_new_tokens=self.online.max_new_tokens)
        rollout.fields, rollout.metrics = self.method.advantages(rollout)
        generated = int(mask.sum())
        rollout.metrics = {**rollout.metrics, "rollout/score": scores.mean(), "rollout/kl": rollout.kl().mean(),
                           "rollout/length": mask.sum(-1).mean(), "rollout/truncated": truncated.mean()}
        # Work done for this batch: tokens sampled, and tokens forwarded without gradients by the policy, the
        # reference and the reward model (counted in the policy's tokens; the reward model's tokenizer may differ).
        self.pending_counts = {"tokens_generated": generated, "tokens_forwarded": 3 * int(attention_mask.sum())}
        return rollout

    def _order(self, rollout: Rollout, generator: torch.Generator) -> torch.Tensor:
        """A shuffled order of the rollout's sequences; for a method whose loss compares the samples of one
        prompt (`whole_groups`, e.g. online DPO's pairs), a shuffle of whole groups, so that a minibatch of
        train.batch_size sequences (a multiple of the group size) never splits one."""
        if not self.method.whole_groups:
            return torch.randperm(len(rollout), generator=generator).to(rollout.input_ids.device)
        k = self.method.samples_per_prompt
        groups = torch.randperm(len(rollout) // k, generator=generator)
        return (groups[:, None] * k + torch.arange(k)).flatten().to(rollout.input_ids.device)

    def __iter__(self):
        index = self.start
        while True:
            rollout = self.collect(index)
            order_rng = torch.Generator().manual_seed(self._seed(index, 2))
            for _ in range(self.online.epochs):
                order = self._order(rollout, order_rng)
                for start in range(0, len(rollout), self.train.batch_size):
                    part = rollout.select(order[start:start + self.train.batch_size])
                    counts, self.pending_counts = self.pending_counts, {}
                    yield {"rollout": part, "attention_mask": part.attention_mask, "num_examples": len(part), **counts}
            index += 1

    def skip_first_batches(self, num_batches: int):
        """Resume after `num_batches` micro-batches: at a rollout boundary, replay from the next rollout."""
        if num_batches % self.batches_per_rollout:
            raise RuntimeError(f"checkpoint after {num_batches} micro-batches is not at a rollout boundary "
                               f"({self.batches_per_rollout} per rollout)")
        self.start = num_batches // self.batches_per_rollout
        return iter(self)


def train_online(accelerator, policy, method, prompts: list[tuple[Any, list[int]]], reward: Callable, reference: Reference,
                 tokenizer, cfg: TrainConfig, online: OnlineConfig, output_dir, log) -> TrainState:
    """An online method's training through `train_loop`; trains `policy` in place (with a value head beside
    it when the method consumes VALUES)."""
    if method.whole_groups and cfg.batch_size % method.samples_per_prompt:
        raise BadInput(f"train.batch_size={cfg.batch_size} must be a multiple of {method.name}'s "
                       f"{method.samples_per_prompt} samples per prompt (its loss compares the samples of a prompt)")
    if online.prompts_per_rollout > len(prompts):
        raise BadInput(f"online.prompts_per_rollout={online.prompts_per_rollout} but the training data has "
                       f"{len(prompts)} distinct prompts")
    model = ValueHead(policy).to(next(policy.parameters()).device) if VALUES in method.consumes else policy
    stream = RolloutStream(model, policy, method, prompts, reward, reference, tokenizer, cfg, online,
                           accelerator.process_index, accelerator.autocast)
    steps_per_rollout, remainder = divmod(stream.batches_per_rollout, cfg.gradient_accumulation_steps)
    if remainder:
        raise BadInput(f"train.gradient_accumulation_steps={cfg.gradient_accumulation_steps} must divide the "
                       f"{stream.batches_per_rollout} micro-batches of a rollout batch")
    # Checkpoints fall between rollout batches: save_steps is rounded up to a whole number of them.
    save_steps = math.ceil(cfg.save_steps / steps_per_rollout) * steps_per_rollout
    optimizer, scheduler = policy_optimizer(model, cfg, accelerator.num_processes)  # the value head included

    def step_loss(model, batch) -> LossOutput:
        part = batch["rollout"]
        logps, values, entropies = forward_tokens(model, part.input_ids, part.attention_mask, entropy=True)
        out = method.loss(TokenLogps(logps * part.mask, part.mask, None if values is None else values * part.mask), part)
        entropy = (entropies * part.mask).sum() / part.mask.sum().clamp(min=1)  # nats per completion token
        return LossOutput(out.loss, {**out.metrics, **part.metrics, "policy/entropy": entropy})

    return train_loop(model, step_loss, stream, optimizer, scheduler, max_steps=cfg.max_steps,
                      max_grad_norm=cfg.max_grad_norm, log_steps=cfg.log_steps, accelerator=accelerator,
                      checkpoints=output_dir / "checkpoints", save_steps=save_steps, resume=cfg.resume, log=log,
                      desc=f"train {method.name}", extra_state=method)
