"""One precision policy for every part of a run: the reference's log-probs, sampling, the old policy's
log-probs, training, the reward model's forward and the evaluation all compute under the same autocast, and
a frozen reference holds the same weight dtype as the policy it is compared with.

`model.mixed_precision`: `auto` is bf16 autocast on a CUDA device that supports bf16 (with `model.dtype`
auto, whose trained weights stay fp32: mixed precision with fp32 master weights), else none; `bf16` asks for
bf16 autocast on any device (CPU included: how the tests check the policy); `none` computes in the weights'
dtype. Why one policy: a log-ratio of two forwards taken under different precisions is not 0 for equal
weights (bf16 rounding moves a summed log-prob by ~1e-2 nats), so PPO's KL at step 0, its first ratio, and
DPO's first-step rewards would start off their true values, and a re-evaluation would not reproduce the
train-time numbers.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Precision:
    device_type: str  # "cpu" or "cuda"
    autocast: bool  # bf16 autocast around every forward and every sampling call

    @classmethod
    def of(cls, choice: str, dtype_choice: str, device: torch.device) -> "Precision":
        if choice == "auto":
            bf16_cuda = device.type == "cuda" and torch.cuda.is_bf16_supported()
            return cls(device.type, bf16_cuda and dtype_choice == "auto")
        return cls(device.type, choice == "bf16")

    @property
    def mixed_precision(self) -> str:
        """accelerate's name for it (the Accelerator then autocasts the prepared model's forward)."""
        return "bf16" if self.autocast else "no"

    def context(self):
        """The autocast every forward and sample outside accelerate's prepared forward runs under."""
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=torch.bfloat16)


def computes_in(model, adapter_off: bool = False) -> str:
    """How `model` computes right now: its weights' dtypes (`adapter_off`: a LoRA model's base only, as a
    reference with its adapter disabled computes) and the autocast in force (a cache key part, and what the
    record states for each part of a run)."""
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for name, p in model.named_parameters()
                     if not (adapter_off and "lora_" in name)})
    device = next(model.parameters()).device.type
    autocast = (f"{str(torch.get_autocast_dtype(device)).removeprefix('torch.')} autocast"
                if torch.is_autocast_enabled(device) else "no autocast")
    return f"{'+'.join(dtypes)} weights, {autocast}"
