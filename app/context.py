"""RunContext: everything one run reads, built once and shared by train, prepare and eval."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import methods
from evals.evaluate import Prompts
from evals.judge import RewardModelJudge, proxy_reward_model
from evals.scorers import GoldScorer, Scorer, make_scorer
from harness.config import MethodConfig, RunConfig, build_config
from harness.data import Formatter
from harness.errors import BadInput
from harness.models import check_local_weights, fingerprint, load_causal_lm, load_tokenizer, pick_device
from harness.precision import Precision
from harness.reference import Reference
from harness.sources import TaskData, load_task


def make_scorers(cfg: RunConfig, task: TaskData) -> dict[str, Scorer]:
    """{"judge": ..., "gold": ...} (gold where the task knows it), loaded (or trained, for the embedded
    task) before anything is trained or written."""
    judge = make_scorer(cfg.eval.judge, task.eval_prompts, embedded_assets=task.embedded, cache_dir=cfg.cache_dir,
                        device=cfg.model.device, trust_remote_code=cfg.model.trust_remote_code)
    # Gold is reported beside the judge wherever it is known (also when it is the judge).
    gold = judge if judge.name == "gold" else GoldScorer() if task.embedded else None
    return {"judge": judge, **({"gold": gold} if gold is not None else {})}


def _check_writable(folder: str, what: str) -> None:
    path = Path(folder).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BadInput(f"{what} {folder} cannot be created ({error.strerror or type(error).__name__})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise BadInput(f"{what} {folder} is not writable")


@dataclass
class RunContext:
    cfg: RunConfig  # resolved: the method's defaults are written in, so equal runs hash equal
    method: Any  # a methods.Method
    task: TaskData
    tokenizer: Any
    formatter: Formatter
    sft_fingerprint: str
    scorers: dict[str, Scorer]  # empty when eval.num_prompts == 0
    precision: Precision  # the one autocast policy of every forward and sample of the run

    @classmethod
    def build(cls, config: RunConfig | dict, source: str = "config") -> "RunContext":
        """Validate the config and the method, load the task, the scorers and the tokenizer. Raises BadInput
        before anything is trained or written."""
        cfg = config if isinstance(config, RunConfig) else build_config(config, source)
        method = methods.get(cfg.method.name, **cfg.method.params())
        cfg = cfg.model_copy(update={"method": MethodConfig(name=method.name, **method.recorded_params())}).for_kind(method.kind)
        _check_writable(cfg.cache_dir, "cache_dir")
        task = load_task(cfg)
        tokenizer = load_tokenizer(task.sft_path, cfg.model)
        check_local_weights(task.sft_path)
        scorers = make_scorers(cfg, task) if cfg.eval.num_prompts else {}
        formatter = Formatter(tokenizer, cfg.data.max_length, cfg.data.max_prompt_length, cfg.data.apply_chat_template)
        precision = Precision.of(cfg.model.mixed_precision, cfg.model.dtype, pick_device(cfg.model.device))
        return cls(cfg, method, task, tokenizer, formatter, fingerprint(task.sft_path, cfg.model.revision), scorers,
                   precision)

    def prompts(self, texts: list) -> Prompts:
        return Prompts(texts, [self.formatter.prompt_ids(p) for p in texts])

    def load_sft(self, device=None):
        """The SFT model in the dtype the policy computes in: a full fine-tune's fp32 master weights (so a frozen
        reference and the policy before its first step compute identically), else the LoRA base's own dtype."""
        return load_causal_lm(self.task.sft_path, self.cfg.model, device, like_trained=self.cfg.model.lora.r == 0)

    def training_prompts(self) -> list[tuple]:
        """The distinct prompts of the training rows, each as (the prompt the reward model is shown, the token
        ids the policy is conditioned on): what an online method samples from. A prompt longer than
        data.max_prompt_length keeps its last tokens for the policy, and the reward model is shown the text
        of exactly those tokens, so it judges the response to what the policy saw."""
        seen: dict[str, Any] = {}
        for row in self.task.rows:
            seen.setdefault(repr(row["prompt"]), row["prompt"])
        out = []
        for prompt in seen.values():
            ids = self.formatter.prompt_ids(prompt)
            cut = len(ids) < len(self.formatter.untruncated_prompt_ids(prompt))
            out.append((self.tokenizer.decode(ids, skip_special_tokens=True) if cut else prompt, ids))
        return out

    def reward_model(self) -> RewardModelJudge:
        """What an online method optimises: `online.reward`, or the proxy trained on this run's own
        training pairs (cached)."""
        model = self.cfg.model
        path = self.proxy()[0] if self.cfg.online.reward == "proxy" else self.cfg.online.reward
        return RewardModelJudge(path, device=model.device, trust_remote_code=model.trust_remote_code)

    def proxy(self) -> tuple[str, bool]:
        """The proxy reward model trained on this run's training pairs (cached; for the embedded task's default
        pairs the shipped copy, unless task.shipped is false): its folder, and whether it was found."""
        return proxy_reward_model(self.task.sft_path, self.sft_fingerprint, self.task.rows, self.cfg.cache_dir,
                                  self.cfg.online.proxy_steps, shipped=self.cfg.task.shipped)

    def reference_beside(self, policy) -> Reference:
        """The SFT model to compare a trained `policy` with (its LoRA base, or a separate copy)."""
        return Reference.beside(policy, self.sft_fingerprint, lambda: self.load_sft(next(policy.parameters()).device))
