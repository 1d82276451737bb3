"""Benchmark: evaluating a policy on the embedded task's 200 eval prompts once the SFT side is cached.

    python benchmarks/eval_speed.py            # prints seconds for a cold and a warm (SFT-cached) evaluation

Counts everything `evaluate()` does: policy sampling (KV cache, batched), judge and gold scoring, the
win-rate bootstrap, and the KL pass under policy and SFT. The SFT model stands in for the policy.
"""

import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evals.evaluate import Prompts, evaluate
    from evals.judge import RewardModelJudge, embedded_judge
    from evals.scorers import GoldScorer
    from harness.config import EvalConfig, TaskConfig
    from harness.data import Formatter
    from harness.embedded.build import prepare_embedded
    from harness.reference import Reference

    cache = os.environ.get("HARNESS_CACHE_DIR", os.path.expanduser("~/.cache/alignment-harness"))
    assets = prepare_embedded(TaskConfig(), cache)
    judge = RewardModelJudge(embedded_judge(assets, cache)[0], device="cpu")
    tokenizer = AutoTokenizer.from_pretrained(assets.sft_path)
    sft = AutoModelForCausalLM.from_pretrained(assets.sft_path)
    policy = AutoModelForCausalLM.from_pretrained(assets.sft_path)
    prompts = assets.eval_prompts
    ids = [Formatter(tokenizer, 64, 32).prompt_ids(p) for p in prompts]
    scratch = tempfile.mkdtemp(prefix="eval-bench-")  # a fresh SFT-side cache: the first call is cold
    cfg = EvalConfig(num_prompts=len(prompts))
    print(f"torch threads: {torch.get_num_threads()}, prompts: {len(prompts)}, max_new_tokens: {cfg.max_new_tokens}")
    for label in ("cold (SFT side computed)", "warm (SFT side cached)", "warm again"):
        start = time.perf_counter()
        metrics = evaluate(policy, Reference(sft, "bench"), tokenizer, Prompts(prompts, ids), cfg,
                           {"judge": judge, "gold": GoldScorer()}, scratch)
        print(f"{label:28s} {time.perf_counter() - start:6.2f} s   sft_cache_hit={metrics['sft_cache_hit']}")


if __name__ == "__main__":
    main()
