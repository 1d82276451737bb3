"""Evaluate a policy against its SFT model: seeded samples from both, judge scores, win rate, KL, length.

The SFT side (its generations and their scores) depends only on the SFT model, the prompts, the
decoding settings, the seed and the judge, so it is cached on disk and every trial reuses it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np

from harness.precision import computes_in
from harness.cache import cached_dir, key_of, write_text_atomic
from harness.config import EvalConfig
from harness.generation import sample
from harness.logps import CHOSEN
from harness.reference import Reference
from harness.trainer import sequence_logps_of

from .length_control import length_controlled
from .metrics import degeneracy, distinct_n, distinct_n_per_response, is_plain_sampling, kl_from_samples, repeat_rate
from .scorers import Scorer
from .aggregate import prompt_cluster_ids
from .winrate import prompt_outcomes, win_rate


@dataclass
class Prompts:
    """Evaluation prompts as the judge reads them (`texts`) and as the models read them (`ids`)."""

    texts: list
    ids: list[list[int]]


def _generate(sampler: Callable, prompt_ids, cfg: EvalConfig, desc: str) -> list[list[int]]:
    """k samples per prompt, sample-major: row s * n + i is sample s of prompt i. `sampler(prompt_ids,
    **decoding)` is `harness.generation.sample` bound to a model (or a Reference's own)."""
    out = []
    for s in range(cfg.samples_per_prompt):
        out += sampler(prompt_ids, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                       batch_size=cfg.batch_size, seed=cfg.seed * 1000 + s, desc=desc)
    return out


def decode_completions(tokenizer, completions: list[list[int]]) -> list[str]:
    return [text.strip() for text in tokenizer.batch_decode(completions, skip_special_tokens=True)]


def _checked_scores(scorer: Scorer, prompts, texts) -> np.ndarray:
    scores = np.asarray(scorer.score(prompts, texts), dtype=np.float64)
    if scores.shape != (len(texts),):
        raise ValueError(f"judge {scorer.name!r} returned {scores.shape} scores for {len(texts)} responses")
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        raise ValueError(f"judge {scorer.name!r} returned {scores[bad[0]]} for response {bad[0]}: scores must be finite")
    return scores


def sft_side(sft: Reference, tokenizer, prompts: Prompts, cfg: EvalConfig, scorers: dict[str, Scorer],
             cache_dir: str) -> tuple[dict, bool]:
    """SFT generations and their scores by every scorer, from the cache or computed once and stored; keyed
    also by how the SFT model computes here (its dtype and the autocast in force: harness/precision.py)."""
    decoding = cfg.model_dump(include={"max_new_tokens", "temperature", "top_p", "samples_per_prompt", "seed"})
    computes = computes_in(sft.model, adapter_off=sft.adapter_off)
    key = key_of("sft-side", sft.fingerprint, prompts.ids, decoding, {k: s.fingerprint for k, s in scorers.items()},
                 computes)

    def build(out: Path) -> None:
        completions = _generate(partial(sft.sample, tokenizer), prompts.ids, cfg, "SFT samples")
        texts = decode_completions(tokenizer, completions)
        repeated = list(prompts.texts) * cfg.samples_per_prompt
        scores = {name: _checked_scores(s, repeated, texts).tolist() for name, s in scorers.items()}
        (out / "sft_side.json").write_text(json.dumps({"completions": completions, "texts": texts, "scores": scores}))

    folder, hit = cached_dir(cache_dir, "sft-generations", key, build)
    return json.loads((folder / "sft_side.json").read_text()), hit


def _ordered_share(chosen, rejected) -> float:
    """Share of pairs whose chosen side scores higher; a tie counts one half (a scorer that cannot tell
    the two apart is a coin flip, not wrong)."""
    chosen, rejected = np.asarray(chosen, dtype=np.float64), np.asarray(rejected, dtype=np.float64)
    return float(np.mean((chosen > rejected) + 0.5 * (chosen == rejected)))


def judge_validity(judge_diff: np.ndarray, gold_diff: np.ndarray, judge_outcome: np.ndarray, gold_outcome: np.ndarray,
                   n_boot: int, seed: int) -> dict[str, Any]:
    """Is the judge right about *this* run? Its agreement with gold on the run's own policy-vs-SFT
    comparisons (those gold does not tie), and the gap between the judge's and gold's win rates with a
    paired bootstrap interval over prompts; `judge_gap_flag` when that interval excludes 0."""
    decided = gold_diff != 0
    agreement = float((np.sign(judge_diff[decided]) == np.sign(gold_diff[decided])).mean()) if decided.any() else None
    gap = judge_outcome - gold_outcome
    rng = np.random.default_rng(seed)
    resampled = gap[rng.integers(0, len(gap), size=(n_boot, len(gap)))].mean(axis=1)
    low, high = np.percentile(resampled, [2.5, 97.5])
    return {"judge_agreement_run": agreement, "judge_agreement_run_comparisons": int(decided.sum()),
            "judge_gold_gap": float(gap.mean()), "judge_gold_gap_low": float(low), "judge_gold_gap_high": float(high),
            "judge_gap_flag": bool(low > 0 or high < 0)}


def response_metrics(texts: list[str], completions: list[list[int]], eos: int | None) -> dict[str, float]:
    return {"mean_length": float(np.mean([len(c) - (c[-1:] == [eos]) for c in completions])),
            "distinct_2": distinct_n(texts), "distinct_2_per_response": distinct_n_per_response(texts),
            "repeat_rate": repeat_rate(texts)}


EXAMPLES = 3  # prompts per run whose outputs the record keeps, drawn by the eval seed (the same for every run)
DEGENERATE = 2  # and the run's most degenerate outputs


def example_outputs(prompts: list, texts: list[str], sft_generations: dict, scored: dict[str, np.ndarray], clusters,
                    seed: int) -> list[dict[str, Any]]:
    """A few of the run's outputs, kept in its record: EXAMPLES distinct prompts drawn by the eval seed (so
    every run evaluated with that seed shows the same prompts) and the DEGENERATE responses with the most
    repeated word trigrams (then the longest), each with the SFT response to the same prompt and both
    sides' scores by every scorer. Rows are sample-major (row s * n + i: sample s of prompt i)."""
    distinct = sorted(set(clusters))
    rng = np.random.default_rng(seed)
    drawn = [int(i) for i in rng.choice(distinct, size=min(EXAMPLES, len(distinct)), replace=False)]
    worst = sorted(range(len(texts)), key=lambda i: (-degeneracy(texts[i]), -len(texts[i]), i))
    worst = [i for i in worst if i not in drawn][:DEGENERATE]

    def one(i: int, kind: str) -> dict[str, Any]:
        prompt = prompts[i]
        return {"kind": kind, "prompt": prompt if isinstance(prompt, str) else json.dumps(prompt), "policy": texts[i],
                "sft": sft_generations["texts"][i], "degeneracy": round(degeneracy(texts[i]), 3),
                "scores": {name: {"policy": round(float(values[i]), 4),
                                  "sft": round(float(sft_generations["scores"][name][i]), 4)}
                           for name, values in scored.items()}}

    return [one(i, "sample") for i in drawn] + [one(i, "most degenerate") for i in worst]


def evaluate(policy, sft: Reference, tokenizer, prompts: Prompts, cfg: EvalConfig, scorers: dict[str, Scorer],
             cache_dir: str, output_dir: Path | None = None) -> dict[str, Any]:
    """Win rate of `policy` over the SFT model by scorers["judge"] (and by scorers["gold"] where known,
    with the judge's validity on this run's outputs; any other scorer, e.g. the "proxy" reward model an
    online method optimised, gives <name>_win_rate and <name>_reward), KL to SFT from plain samples, length, diversity and
    repetition. `per_prompt` holds each scorer's outcome per prompt (what seed aggregation and
    significance tests need)."""
    judge, gold = scorers["judge"], scorers.get("gold")
    sft_generations, sft_hit = sft_side(sft, tokenizer, prompts, cfg, scorers, cache_dir)
    policy_sampler = partial(sample, policy, tokenizer)
    completions = _generate(policy_sampler, prompts.ids, cfg, "policy samples")
    texts = decode_completions(tokenizer, completions)
    repeated = list(prompts.texts) * cfg.samples_per_prompt
    n, k = len(prompts.texts), cfg.samples_per_prompt
    clusters = prompt_cluster_ids(prompts.texts)  # a repeated prompt is one draw of the bootstrap

    def per_prompt(values) -> np.ndarray:  # sample-major flat list -> prompts x samples
        return np.asarray(values, dtype=np.float64).reshape(k, n).T

    metrics: dict[str, Any] = {"num_prompts": n, "samples_per_prompt": k, "judge": judge.name, "sft_cache_hit": sft_hit,
                               "eval_decoding": f"temperature={cfg.temperature} top_p={cfg.top_p}"}
    outcomes, diffs, scored = {}, {}, {}
    for name, scorer in scorers.items():
        policy_scores = scored[name] = _checked_scores(scorer, repeated, texts)
        sft_scores = per_prompt(sft_generations["scores"][name])
        result = win_rate(per_prompt(policy_scores), sft_scores, tie_eps=cfg.tie_eps, n_boot=cfg.n_boot, seed=cfg.seed,
                          clusters=clusters)
        outcomes[name], diffs[name] = prompt_outcomes(per_prompt(policy_scores), sft_scores, cfg.tie_eps)
        prefix = "" if name == "judge" else f"{name}_"
        metrics.update({f"{prefix}win_rate": result.rate, f"{prefix}win_rate_low": result.low,
                        f"{prefix}win_rate_high": result.high, f"{prefix}wins": result.wins,
                        f"{prefix}ties": result.ties, f"{prefix}losses": result.losses,
                        f"{prefix}soft_win_rate": result.soft,
                        f"{name}_reward": float(policy_scores.mean()),
                        f"{name}_reward_sft": float(np.mean(sft_generations["scores"][name]))})
    if gold is not None and gold is not judge:
        metrics.update(judge_validity(diffs["judge"], diffs["gold"], outcomes["judge"], outcomes["gold"], cfg.n_boot,
                                      cfg.seed))

    # KL is only estimable from plain samples of the policy: other decodings get their own plain draws.
    plain = is_plain_sampling(cfg.temperature, cfg.top_p)
    kl_completions = completions if plain else _generate(
        policy_sampler, prompts.ids, cfg.model_copy(update={"temperature": 1.0, "top_p": 1.0}), "plain samples for KL")
    examples = [[(p, c, CHOSEN)] for p, c in zip(prompts.ids * k, kl_completions)]
    pad = tokenizer.pad_token_id
    policy_logps = [v[0] for v in sequence_logps_of(policy, examples, pad, cfg.batch_size, "KL: policy")]
    sft_logps = [v[0] for v in sft.sequence_logps(examples, pad, cfg.batch_size, "KL: SFT")]
    metrics.update(kl_from_samples(policy_logps, sft_logps, [len(c) for c in kl_completions], n))
    metrics["kl_decoding"] = "plain" if plain else "plain, separate samples"
    eos = tokenizer.eos_token_id
    metrics.update(response_metrics(texts, completions, eos))
    metrics.update({f"{key}_sft": value
                    for key, value in response_metrics(sft_generations["texts"], sft_generations["completions"], eos).items()})
    # length-controlled win rate (AlpacaEval 2) of the judge's verdicts, from the per-prompt length gap in characters
    length_diff = (per_prompt([len(t) for t in texts]).mean(axis=1)
                   - per_prompt([len(t) for t in sft_generations["texts"]]).mean(axis=1))
    lc = length_controlled(outcomes["judge"][None, :], length_diff[None, :], clusters, n_boot=cfg.n_boot, seed=cfg.seed)
    if lc is not None:
        metrics.update({"lc_win_rate": lc.rate, "lc_win_rate_low": lc.low, "lc_win_rate_high": lc.high,
                        "lc_length_coef": lc.length_coef, "lc_warning": lc.warning})
    metrics["per_prompt"] = {name: [round(float(v), 6) for v in outcome] for name, outcome in outcomes.items()}
    metrics["per_prompt"]["length_diff"] = [round(float(v), 3) for v in length_diff]
    metrics["examples"] = example_outputs(repeated, texts, sft_generations, scored, clusters, cfg.seed)
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(output_dir / "generations.jsonl", "".join(
            json.dumps({"prompt": repeated[i], "policy": text, "sft": sft_generations["texts"][i]}) + "\n"
            for i, text in enumerate(texts)))
    return metrics


def preference_accuracy(method, policy, sft_logps: list[list[float]], examples, pad_token_id: int,
                        batch_size: int = 64) -> dict[str, float]:
    """Share of held-out pairs whose chosen response gets the higher implicit reward of `method` (its own
    definition: log-ratio to the SFT model, or average log-prob for reference-free methods; ties count one
    half), for the policy and, under the same definition, for the untrained SFT model (`sft_logps`, its
    log-probs of the same examples: Reference.cached_sequence_logps): the gain is what training added (a
    log-ratio scores exactly 0.5 at SFT, an average log-prob does not)."""
    import torch

    # computed as the SFT side was (each sequence on its own, in batches of one length: Reference.cached_sequence_logps),
    # so a policy equal to the SFT model gets the same values to the bit and a log-ratio of exactly 0
    single = [[sequence] for example in examples for sequence in example]
    flat = iter(sequence_logps_of(policy, single, pad_token_id, batch_size, "held-out: policy"))
    policy_side = torch.tensor([[next(flat)[0] for _ in example] for example in examples])
    sft_side = torch.tensor(sft_logps)
    tokens = torch.tensor([[len(c) for _, c, _ in example] for example in examples], dtype=torch.float64)
    reference = None if method.reference_free else sft_side.double()
    policy_rewards = method.implicit_reward(policy_side.double(), reference, tokens)
    sft_rewards = method.implicit_reward(sft_side.double(), reference, tokens)
    accuracy = _ordered_share(policy_rewards[:, 0], policy_rewards[:, 1])
    baseline = _ordered_share(sft_rewards[:, 0], sft_rewards[:, 1])
    return {"heldout_pref_accuracy": accuracy, "heldout_pref_accuracy_sft": baseline,
            "heldout_pref_gain": accuracy - baseline}


def preference_ceiling(gold: Scorer, pairs: list[dict]) -> float:
    """The held-out preference accuracy of the gold reward itself: the labels are noisy Bradley-Terry draws,
    so no scorer is expected to beat this."""
    prompts = [r["prompt"] for r in pairs]
    return _ordered_share(gold.score(prompts, [r["chosen"] for r in pairs]), gold.score(prompts, [r["rejected"] for r in pairs]))


def judge_agreement(judge: Scorer, gold: Scorer, pairs: list[dict], cache_dir: str | None = None) -> float:
    """Share of held-out pairs (with a gold preference) that the judge orders as the gold reward does. A fact
    about the two scorers and the pairs, not about a run: with `cache_dir` it is computed once and stored,
    keyed by both fingerprints, the pairs and how the judge computes here (its dtype and autocast)."""
    from .judge import agreement_with

    def compute() -> float:
        prompts = [r["prompt"] for r in pairs]
        a, b = [r["chosen"] for r in pairs], [r["rejected"] for r in pairs]
        return agreement_with(judge.score(prompts, a), judge.score(prompts, b), gold.score(prompts, a),
                              gold.score(prompts, b))

    if cache_dir is None:
        return compute()
    model = getattr(judge, "model", None)
    key = key_of("judge-agreement", judge.fingerprint, gold.fingerprint, pairs,
                 computes_in(model) if model is not None else None)
    folder, _ = cached_dir(cache_dir, "judge-agreement", key,
                           lambda out: (out / "agreement.json").write_text(json.dumps(compute())))
    return json.loads((folder / "agreement.json").read_text())
