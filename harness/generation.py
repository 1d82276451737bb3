"""Batched, seeded sampling with the KV cache (transformers `generate`, left padding)."""

from __future__ import annotations

import contextlib

import torch
from tqdm.auto import tqdm


@contextlib.contextmanager
def _blank_generation_config(model):
    """transformers fills every decoding setting a call leaves unset from the model's own generation_config,
    which can switch on filters (top_k, repetition_penalty, min_new_tokens, bad words...). A blank one for
    the duration means only the settings passed here apply (also to a peft model, whose generate copies
    its base model's)."""
    from transformers import GenerationConfig

    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = target.generation_config
    target.generation_config = GenerationConfig()
    try:
        yield
    finally:
        target.generation_config = saved


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a completion: the tokenizer's EOS and each one the model's generation_config
    lists (chat models often end a turn with a second one, e.g. <|eot_id|> beside <|end_of_text|>)."""
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    configured = getattr(getattr(target, "generation_config", None), "eos_token_id", None)
    configured = configured if isinstance(configured, list) else [configured]
    ids = [tokenizer.eos_token_id, *configured]
    return list(dict.fromkeys(int(i) for i in ids if i is not None))


def finished(completion: list[int], eos_ids: list[int]) -> bool:
    """Whether a sampled completion ended by itself (its last token is an EOS) rather than at max_new_tokens."""
    return bool(completion) and completion[-1] in eos_ids


@torch.no_grad()
def sample(model, tokenizer, prompt_ids: list[list[int]], *, max_new_tokens: int, temperature: float = 1.0,
           top_p: float = 1.0, batch_size: int = 64, seed: int = 0, desc: str = "generating") -> list[list[int]]:
    """One sampled completion per prompt (token ids, cut after its first EOS, any of `eos_token_ids`). Seeded per batch, so two models
    given the same prompts and seed use the same random stream: their differences are the models'.
    Only temperature and top_p shape the distribution: no top-k, no penalties, whatever the model's
    generation_config says (temperature 1 and top_p 1 give plain samples of the model)."""
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    pad, eos = tokenizer.pad_token_id, eos_token_ids(model, tokenizer)  # read before the config is blanked
    decoding = GenerationConfig(do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
                                max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos)
    was_training = model.training
    model.eval()
    completions: list[list[int]] = []
    with _blank_generation_config(model):
        for start in tqdm(range(0, len(prompt_ids), batch_size), desc=desc, leave=False):
            chunk = prompt_ids[start:start + batch_size]
            width = max(len(p) for p in chunk)
            input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=device)
            attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
            torch.manual_seed(seed * 100_003 + start)
            output = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=decoding)
            for row in output[:, width:].tolist():
                end = next((i for i, token in enumerate(row) if token in eos), None)
                completions.append(row if end is None else row[: end + 1])
    model.train(was_training)
    return completions
