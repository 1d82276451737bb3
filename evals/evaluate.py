"""Evaluate a policy against its SFT model: seeded samples from both, judge scores, win rate, KL, length.

The SFT side (its generations and their scores) depends only on the SFT model, the prompts, the
decoding settings, the seed and the judge, so it is cached on disk and every trial reuses it.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from harness.cache import cached_dir, key_of
from harness.config import EvalConfig
from harness.generation import sample
from harness.logps import CHOSEN
from harness.trainer import sequence_logps_of

from .metrics import distinct_n, kl_from_samples
from .scorers import Scorer
from .winrate import win_rate


def _generate(model, tokenizer, prompt_ids, cfg: EvalConfig, desc: str) -> list[list[int]]:
    """k samples per prompt, sample-major: row s * n + i is sample s of prompt i."""
    out = []
    for s in range(cfg.samples_per_prompt):
        out += sample(model, tokenizer, prompt_ids, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                      top_p=cfg.top_p, batch_size=cfg.batch_size, seed=cfg.seed * 1000 + s, desc=desc)
    return out


def _decode(tokenizer, completions: list[list[int]]) -> list[str]:
    return [text.strip() for text in tokenizer.batch_decode(completions, skip_special_tokens=True)]


def _checked_scores(scorer: Scorer, prompts, texts) -> np.ndarray:
    scores = np.asarray(scorer.score(prompts, texts), dtype=np.float64)
    if scores.shape != (len(texts),):
        raise ValueError(f"judge {scorer.name!r} returned {scores.shape} scores for {len(texts)} responses")
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        raise ValueError(f"judge {scorer.name!r} returned {scores[bad[0]]} for response {bad[0]}: scores must be finite")
    return scores


def sft_side(sft_model, tokenizer, prompts, prompt_ids, cfg: EvalConfig, scorers: dict[str, Scorer],
             cache_dir: str, sft_fingerprint: str, sft_mode: Callable = contextlib.nullcontext) -> tuple[dict, bool]:
    """SFT generations and their scores by every scorer, from the cache or computed once and stored."""
    decoding = cfg.model_dump(include={"max_new_tokens", "temperature", "top_p", "samples_per_prompt", "seed"})
    key = key_of("sft-side", sft_fingerprint, prompt_ids, decoding, {k: s.fingerprint for k, s in scorers.items()})

    def build(out: Path) -> None:
        with sft_mode():
            completions = _generate(sft_model, tokenizer, prompt_ids, cfg, "SFT samples")
        texts = _decode(tokenizer, completions)
        repeated = list(prompts) * cfg.samples_per_prompt
        scores = {name: _checked_scores(s, repeated, texts).tolist() for name, s in scorers.items()}
        (out / "sft_side.json").write_text(json.dumps({"completions": completions, "texts": texts, "scores": scores}))

    folder, hit = cached_dir(cache_dir, "sft-generations", key, build)
    return json.loads((folder / "sft_side.json").read_text()), hit


def scorer_set(judge: Scorer, gold: Scorer | None) -> dict[str, Scorer]:
    return {"judge": judge, **({"gold": gold} if gold is not None else {})}


def evaluate(policy, tokenizer, prompts: list, prompt_ids: list[list[int]], cfg: EvalConfig, judge: Scorer,
             *, sft_model, sft_fingerprint: str, cache_dir: str, gold: Scorer | None = None,
             sft_mode: Callable = contextlib.nullcontext, output_dir: Path | None = None) -> dict[str, Any]:
    """Win rate of `policy` over the SFT model by `judge` (and by `gold` where known), KL to SFT, length, distinct-2."""
    scorers = scorer_set(judge, gold)
    sft, sft_hit = sft_side(sft_model, tokenizer, prompts, prompt_ids, cfg, scorers, cache_dir, sft_fingerprint, sft_mode)
    completions = _generate(policy, tokenizer, prompt_ids, cfg, "policy samples")
    texts = _decode(tokenizer, completions)
    repeated = list(prompts) * cfg.samples_per_prompt
    n, k = len(prompts), cfg.samples_per_prompt

    def per_prompt(values) -> np.ndarray:  # sample-major flat list -> prompts x samples
        return np.asarray(values, dtype=np.float64).reshape(k, n).T

    metrics: dict[str, Any] = {"num_prompts": n, "samples_per_prompt": k, "judge": judge.name, "sft_cache_hit": sft_hit}
    for name, scorer in scorers.items():
        policy_scores = _checked_scores(scorer, repeated, texts)
        result = win_rate(per_prompt(policy_scores), per_prompt(sft["scores"][name]), tie_eps=cfg.tie_eps,
                          n_boot=cfg.n_boot, seed=cfg.seed)
        prefix = "" if name == "judge" else "gold_"
        metrics.update({f"{prefix}win_rate": result.rate, f"{prefix}win_rate_low": result.low,
                        f"{prefix}win_rate_high": result.high, f"{prefix}wins": result.wins,
                        f"{prefix}ties": result.ties, f"{prefix}losses": result.losses,
                        f"{prefix}soft_win_rate": result.soft,
                        f"{name}_reward": float(policy_scores.mean()),
                        f"{name}_reward_sft": float(np.mean(sft["scores"][name]))})

    examples = [[(p, c, CHOSEN)] for p, c in zip(prompt_ids * k, completions)]
    pad = tokenizer.pad_token_id
    policy_logps = [v[0] for v in sequence_logps_of(policy, examples, pad, cfg.batch_size, "KL: policy")]
    with sft_mode():
        sft_logps = [v[0] for v in sequence_logps_of(sft_model, examples, pad, cfg.batch_size, "KL: SFT")]
    eos = tokenizer.eos_token_id
    metrics.update({
        "kl_to_sft": kl_from_samples(policy_logps, sft_logps),
        "mean_length": float(np.mean([len(c) - (c[-1:] == [eos]) for c in completions])),
        "mean_length_sft": float(np.mean([len(c) - (c[-1:] == [eos]) for c in sft["completions"]])),
        "distinct_2": distinct_n(texts),
        "distinct_2_sft": distinct_n(sft["texts"]),
    })
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        with (output_dir / "generations.jsonl").open("w") as handle:
            for i, text in enumerate(texts):
                handle.write(json.dumps({"prompt": repeated[i], "policy": text, "sft": sft["texts"][i]}) + "\n")
    return metrics


def preference_accuracy(method, policy, sft_model, examples, pad_token_id: int, batch_size: int = 64,
                        sft_mode: Callable = contextlib.nullcontext) -> float:
    """Share of held-out pairs whose chosen response gets the higher implicit reward of `method`
    (its own definition: log-ratio to the SFT model, or average log-prob for reference-free methods)."""
    import torch

    policy_side = torch.tensor(sequence_logps_of(policy, examples, pad_token_id, batch_size, "held-out: policy"))
    reference_side = None
    if not method.reference_free:
        with sft_mode():
            reference_side = torch.tensor(sequence_logps_of(sft_model, examples, pad_token_id, batch_size, "held-out: SFT"))
    tokens = torch.tensor([[len(c) for _, c, _ in example] for example in examples], dtype=torch.float64)
    rewards = method.implicit_reward(policy_side.double(), None if reference_side is None else reference_side.double(), tokens)
    return float((rewards[:, 0] > rewards[:, 1]).double().mean())


def judge_agreement(judge: Scorer, gold: Scorer, pairs: list[dict]) -> float:
    """Share of held-out pairs (with a gold preference) that the judge orders as the gold reward does."""
    from .judge import agreement_with

    prompts = [r["prompt"] for r in pairs]
    a, b = [r["chosen"] for r in pairs], [r["rejected"] for r in pairs]
    return agreement_with(judge.score(prompts, a), judge.score(prompts, b), gold.score(prompts, a), gold.score(prompts, b))
