"""GPU smoke benchmark: DPO through the harness's own training loop on a randomly initialised ~100M-parameter
Llama, full fine-tuning and LoRA, in the precision `model.dtype=auto` gives (on CUDA: fp32 master weights,
bf16 autocast). Prints step time, tokens/s and peak GPU memory.

    python benchmarks/gpu_smoke.py                    # CUDA, ~100M parameters, 40 steps each
    python benchmarks/gpu_smoke.py --device cpu --tiny --steps 4    # a check that it runs, anywhere

Random weights and random token pairs: this measures the plumbing (loop, autocast, optimizer, LoRA), not
learning.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def run(device: str, tiny: bool, steps: int, lora: bool, batch: int, length: int, bf16: bool | None = None) -> dict:
    """One DPO run; `bf16`: autocast (default: where CUDA supports it; True on CPU for a dry run)."""
    import torch
    from accelerate import Accelerator
    from transformers import LlamaConfig, LlamaForCausalLM

    import methods
    from harness.config import LoraConfig, ModelConfig, TrainConfig
    from harness.logps import CHOSEN, REJECTED
    from harness.models import add_lora, weights_dtype
    from harness.trainer import sequence_logps_of, train_policy

    torch.manual_seed(0)
    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=1000) if tiny \
        else dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12, vocab_size=32000)
    cuda = device == "cuda"
    bf16 = cuda and torch.cuda.is_bf16_supported() if bf16 is None else bf16
    dtype = weights_dtype("auto", bf16, trained=not lora)  # what model.dtype=auto picks for the policy
    model = LlamaForCausalLM(LlamaConfig(**shape, max_position_embeddings=length)).to(device=device, dtype=dtype)
    model = add_lora(model, ModelConfig(lora=LoraConfig(r=16 if lora else 0, alpha=32)))
    parameters = sum(p.numel() for p in model.parameters())
    vocab, half = shape["vocab_size"], length // 2
    examples = [[(prompt, torch.randint(3, vocab, (half,)).tolist(), CHOSEN),
                 (prompt, torch.randint(3, vocab, (half,)).tolist(), REJECTED)]
                for prompt in (torch.randint(3, vocab, (half,)).tolist() for _ in range(batch * steps))]
    accelerator = Accelerator(cpu=not cuda, mixed_precision="bf16" if bf16 else "no")
    with accelerator.autocast():  # the reference pass under the training forward's precision (harness/precision.py)
        reference = sequence_logps_of(model, examples, pad_token_id=0, batch_size=batch)
    cfg = TrainConfig(max_steps=steps, batch_size=batch, learning_rate=5e-7 if not lora else 5e-6, save_steps=0,
                      log_steps=steps, warmup_ratio=0.0, lr_scheduler="constant")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        state = train_policy(accelerator, model, methods.get("dpo", beta=0.1), examples, reference, 0, cfg, Path(out),
                             log=None)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {"mode": "LoRA r=16" if lora else "full", "parameters_M": parameters / 1e6, "weights": str(dtype),
            "autocast": accelerator.mixed_precision, "steps": state.step, "s_per_step": seconds / state.step,
            "tokens_per_s": state.tokens / seconds, "final_loss": state.history[-1]["loss"],
            "peak_gpu_GiB": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model, for a check on CPU")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8, help="pairs per step")
    parser.add_argument("--length", type=int, default=512, help="prompt + completion tokens")
    args = parser.parse_args()
    for lora in (False, True):
        result = run(args.device, args.tiny, args.steps, lora, args.batch, args.length)
        print("  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
