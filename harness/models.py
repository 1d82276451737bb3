"""Model loading: transformers Auto classes by hub id or local path, device and dtype, optional LoRA.
(The SFT reference a policy is compared with is `harness.reference.Reference`.)
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch

from .config import ModelConfig
from .errors import BadInput


def pick_device(choice: str = "auto") -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise BadInput("model.device=cuda but no CUDA device is available")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def pick_dtype(choice: str, device: torch.device, trained: bool = False) -> torch.dtype:
    """The weights' dtype. `auto`: bf16 on a CUDA device that supports it, except for weights the optimizer
    updates (full fine-tuning), which stay fp32 under bf16 autocast: mixed precision as the field means it."""
    return weights_dtype(choice, device.type == "cuda" and torch.cuda.is_bf16_supported(), trained)


def weights_dtype(choice: str, bf16_device: bool, trained: bool) -> torch.dtype:
    if choice != "auto":
        return getattr(torch, choice)
    # A bf16 weight of scale 0.02 has a resolution of about 1e-4: an AdamW step of 5e-7 rounds away for
    # ~99% of them, so trained weights need an fp32 master copy (autocast computes in bf16 all the same).
    return torch.bfloat16 if bf16_device and not trained else torch.float32


def looks_local(path: str) -> bool:
    """A path rather than a hub id ("org/name"): a missing one is an error, never a download attempt."""
    return path.startswith((".", "/", "~")) or path.count("/") > 1


def _check_exists(path: str) -> None:
    if looks_local(path) and not Path(path).expanduser().exists():
        raise BadInput(f"model path not found: {path}")


PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def check_local_weights(path: str, what: str = "model.path") -> None:
    """A local model folder must hold safetensors weights: the harness never unpickles a checkpoint."""
    local = Path(path).expanduser()
    if not local.is_dir() or any(local.glob("*.safetensors")):
        return
    pickled = sorted(p.name for pattern in PICKLE_WEIGHTS for p in local.glob(pattern))
    if pickled:
        raise BadInput(f"{what} {path}: only pickle weights ({', '.join(pickled)}); the harness loads safetensors "
                       "only (convert them once, from a copy you trust, with save_pretrained)")
    raise BadInput(f"{what} {path}: no safetensors weights (model.safetensors or its shards) in the folder")


def load_tokenizer(path: str, cfg: ModelConfig):
    from transformers import AutoTokenizer

    _check_exists(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as error:
        raise BadInput(f"cannot load a tokenizer from {path!r}: {str(error).splitlines()[0]}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str, cfg: ModelConfig, device: torch.device | None = None, trained: bool = False,
                   like_trained: bool = False):
    """A causal LM on `device`; `trained`: its weights get optimizer updates (full fine-tuning of the policy);
    `like_trained`: frozen, in the dtype a trained copy gets (the SFT model beside a fully fine-tuned policy,
    so that both compute alike: harness/precision.py)."""
    from transformers import AutoModelForCausalLM

    _check_exists(path)
    check_local_weights(path)
    device = device or pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device, trained or like_trained)
    if trained and dtype in (torch.bfloat16, torch.float16):
        warnings.warn(f"model.dtype={cfg.dtype}: training {dtype} weights without an fp32 master copy; AdamW steps "
                      "below about 1e-3 of a weight's size round away (model.dtype=auto keeps fp32 weights under "
                      "bf16 autocast)", stacklevel=2)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, dtype=dtype, use_safetensors=True)
    except (OSError, ValueError) as error:
        raise BadInput(f"cannot load a causal LM from {path!r}: {str(error).splitlines()[0]}") from None
    return model.to(device)


def add_lora(model, cfg: ModelConfig):
    """Wrap the model in a peft LoRA adapter when model.lora.r > 0 (the base stays the reference)."""
    if cfg.lora.r == 0:
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def fingerprint(path: str, revision: str | None = None) -> str:
    """Content hash of a local model (config + weights), or hub id @ revision for a remote one."""
    local = Path(path).expanduser()
    digest = hashlib.sha256()
    if local.is_dir():
        for file in sorted(local.iterdir()):
            if file.suffix in (".json", ".safetensors", ".model", ".txt") and file.is_file():
                digest.update(file.name.encode())
                digest.update(file.read_bytes())
    else:
        digest.update(json.dumps([path, revision]).encode())
    return digest.hexdigest()[:16]
