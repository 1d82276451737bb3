"""The SFT model a policy is measured against (and, before training, its reference for the loss).

Two ways to hold it: the policy's own base with its LoRA adapter disabled (no second copy in memory),
or a separate model with the SFT weights. `Reference` hides which: callers ask it for per-sequence
log-probs and for samples, and it switches the adapter off around exactly those calls.
"""

from __future__ import annotations

import contextlib

import torch

from .generation import sample
from .logps import token_logps
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

    @torch.no_grad()
    def token_logps(self, input_ids, attention_mask):
        """Per-token log-probs (n, T) of sequences the policy sampled (online methods)."""
        with self.weights():
            return token_logps(self.model, input_ids, attention_mask)

    def sample(self, tokenizer, prompt_ids: list[list[int]], **decoding) -> list[list[int]]:
        with self.weights():
            return sample(self.model, tokenizer, prompt_ids, **decoding)
