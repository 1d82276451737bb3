"""The SFT model a policy is measured against (and, before training, its reference for the loss).

Two ways to hold it: the policy's own base with its LoRA adapter disabled (no second copy in memory),
or a separate model with the SFT weights. `Reference` hides which: callers ask it for per-sequence
log-probs and for samples, and it switches the adapter off around exactly those calls.
"""

from __future__ import annotations

import contextlib
import math

import torch

from .cache import RowCache, key_of
from .generation import sample
from .logps import token_logps
from .precision import Precision, computes_in
from .trainer import sequence_logps_of


def is_lora(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


class Reference:
    def __init__(self, model, fingerprint: str, *, adapter_off: bool = False):
        self.model, self.fingerprint, self.adapter_off = model, fingerprint, adapter_off

    @classmethod
    def untrained(cls, policy, fingerprint: str) -> "Reference":
        """The policy itself before its first optimizer step (with LoRA: the adapter off)."""
        return cls(policy, fingerprint, adapter_off=is_lora(policy))

    @classmethod
    def beside(cls, policy, fingerprint: str, load_sft) -> "Reference":
        """The SFT model next to a trained policy: its LoRA base, else `load_sft()` (a separate copy)."""
        return cls(policy, fingerprint, adapter_off=True) if is_lora(policy) else cls(load_sft(), fingerprint)

    def weights(self):
        """Context in which `self.model` computes as the SFT model."""
        return self.model.disable_adapter() if self.adapter_off else contextlib.nullcontext()

    def sequence_logps(self, examples, pad_token_id: int, batch_size: int = 64, desc: str = "SFT log-probs"):
        with self.weights():
            return sequence_logps_of(self.model, examples, pad_token_id, batch_size, desc)

    def cached_sequence_logps(self, examples, pad_token_id: int, cache_dir: str, needed: list[int] | None = None,
                              precision: Precision | None = None) -> tuple[list[list[float]], int]:
        """Per-sequence log-probs of the examples `needed` (None: every example), from the per-sequence cache
        (RowCache: keyed by the SFT weights, how they compute (dtype, autocast) and the torch version, then by
        each sequence's token ids); the missing ones are computed now, in one length-sorted pass, under
        `precision` (as training computes the policy's). Examples not needed get NaN (train_policy refuses a
        batch holding one). The reference pass of training and the SFT side of held-out preference accuracy
        both read it. Returns the values and how many sequences were computed now."""
        autocast = precision.context if precision is not None else contextlib.nullcontext
        with autocast():
            computes = computes_in(self.model, adapter_off=self.adapter_off)
        cache = RowCache(cache_dir, "reference-logps", key_of("reference-logps", self.fingerprint, computes,
                                                               torch.__version__))
        needed = list(range(len(examples))) if needed is None else needed
        rows = [(prompt, completion) for i in needed for prompt, completion, _ in examples[i]]

        def compute(missing: list[int]) -> list[float]:
            as_examples = [[(*rows[i], 0)] for i in missing]
            with autocast():
                values = self.sequence_logps(as_examples, pad_token_id, desc="reference log-probs")
            return [v for vs in values for v in vs]

        flat, computed = cache.fill(rows, compute)
        values = [[math.nan] * len(example) for example in examples]
        position = 0
        for i in needed:
            values[i] = flat[position: position + len(values[i])]
            position += len(values[i])
        return values, computed

    @torch.no_grad()
    def token_logps(self, input_ids, attention_mask):
        """Per-token log-probs (n, T) of sequences the policy sampled (online methods)."""
        with self.weights():
            return token_logps(self.model, input_ids, attention_mask)

    def sample(self, tokenizer, prompt_ids: list[list[int]], **decoding) -> list[list[int]]:
        with self.weights():
            return sample(self.model, tokenizer, prompt_ids, **decoding)
