"""Learned judges: any Hugging Face sequence-classification reward model (num_labels 1), and a judge the
harness trains itself with a Bradley-Terry loss on a held-out preference split.

    judge = RewardModelJudge("OpenAssistant/reward-model-deberta-v3-large-v2")   # hub id or local dir
    scores = judge.score(prompts, responses)                                     # one float each

Texts are formatted with the judge's own chat template when it has one (user prompt, assistant
response), else as prompt + response.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from harness.cache import cached_dir, key_of
from harness.embedded.shipped import ASSETS
from harness.errors import BadInput
from harness.logps import LossOutput
from harness.models import check_local_weights, fingerprint, looks_local, pick_device
from harness.trainer import train_loop

JUDGE_STEPS, JUDGE_BATCH, JUDGE_LR = 600, 32, 1e-3


class RewardModelJudge:
    def __init__(self, path: str, *, device: str = "auto", trust_remote_code: bool = False, batch_size: int = 32,
                 max_length: int = 1024):
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        local = Path(path).expanduser()
        if looks_local(path) and not local.exists():
            raise BadInput(f"eval.judge: reward model not found: {path}")
        check_local_weights(path, "eval.judge")
        try:
            config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as error:
            raise BadInput(f"eval.judge: cannot load a model config from {path!r}: {str(error).splitlines()[0]}") from None
        architectures = config.architectures or []
        if not any(a.endswith("ForSequenceClassification") for a in architectures):
            raise BadInput(f"eval.judge: {path} is not a sequence classifier (architectures: "
                           f"{', '.join(architectures) or 'none'}); a reward model has a ...ForSequenceClassification head")
        if config.num_labels != 1:
            raise BadInput(f"eval.judge: {path} has num_labels={config.num_labels}; a reward model has exactly 1")
        self.device = pick_device(device)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            path, trust_remote_code=trust_remote_code, use_safetensors=True).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        # A text longer than max_length loses the beginning of its prompt, never the response being scored
        # (right truncation would cut the response and leave two different responses the same score).
        self.tokenizer.truncation_side = "left"
        self.name = f"rm:{local.name if local.exists() else path}"
        self.fingerprint = fingerprint(path)
        self.path, self.batch_size, self.max_length = path, batch_size, max_length
        info = local / "judge_info.json"
        self.info = json.loads(info.read_text()) if info.is_file() else {}

    def text(self, prompt, response: str, finished: bool = True) -> str:
        """The judge's input: a `finished` response ends as a finished one does (EOS, or the chat template's
        end of turn); an unfinished one (cut at max_new_tokens) is left open, so it is not scored as complete."""
        if getattr(self.tokenizer, "chat_template", None):
            messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            return self.tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}],
                                                      tokenize=False, continue_final_message=not finished)
        if isinstance(prompt, list):
            prompt = "\n".join(m["content"] for m in prompt)
        eos = (self.tokenizer.eos_token or "") if finished else ""
        return f"{prompt} {response}{eos}"

    @torch.no_grad()
    def score(self, prompts: list, responses: list[str], finished: list[bool] | None = None) -> list[float]:
        """One score per (prompt, response); `finished` (default: all) says which responses ended with EOS."""
        finished = [True] * len(responses) if finished is None else finished
        for response in responses:
            size = len(self.tokenizer(response, add_special_tokens=False)["input_ids"])
            if size >= self.max_length:
                raise BadInput(f"reward model {self.path}: a response of {size} tokens does not fit its "
                               f"max_length {self.max_length} with any prompt (lower the max_new_tokens)")
        texts = [self.text(p, r, f) for p, r, f in zip(prompts, responses, finished)]
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start:start + self.batch_size], padding=True, truncation=True,
                                   max_length=self.max_length, add_special_tokens=False, return_tensors="pt").to(self.device)
            scores += self.model(**batch).logits[:, 0].float().tolist()
        return scores


def agreement_with(scores_a: list[float], scores_b: list[float], gold_a: list[float], gold_b: list[float]) -> float:
    """Share of pairs (with a gold preference) that the judge orders as the gold reward does."""
    judge = np.sign(np.asarray(scores_a) - np.asarray(scores_b))
    gold = np.sign(np.asarray(gold_a) - np.asarray(gold_b))
    decided = gold != 0
    return float((judge[decided] == gold[decided]).mean())


class _RandomBuckets(torch.utils.data.Sampler):
    """`steps` batches, each a bucket of `batch_size` consecutive indices of `order`, drawn with replacement."""

    def __init__(self, order: list[int], batch_size: int, steps: int, seed: int):
        self.buckets = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        self.steps, self.generator = steps, torch.Generator().manual_seed(seed)

    def __iter__(self):
        draws = torch.utils.data.RandomSampler(self.buckets, replacement=True, num_samples=self.steps,
                                               generator=self.generator)
        return (self.buckets[i] for i in draws)

    def __len__(self):
        return self.steps


def _pad_pairs(tokenizer, pairs: list[tuple[list[int], list[int]]]) -> dict:
    """All chosen rows, then all rejected rows, padded into one batch."""
    batch = tokenizer.pad({"input_ids": [c for c, _ in pairs] + [r for _, r in pairs]}, return_tensors="pt")
    return {**batch, "num_examples": len(pairs)}


def train_bt_judge(base_path: str, pairs: list[dict], out: Path | None, *, steps: int = JUDGE_STEPS,
                   batch_size: int = JUDGE_BATCH, lr: float = JUDGE_LR, seed: int = 0,
                   stop_at: int | None = None) -> tuple[int, dict[str, str]]:
    """Train a reward model on preference pairs with the Bradley-Terry loss -log sigmoid(r_chosen - r_rejected),
    starting from `base_path` (a causal LM: its body is reused, the score head is new), and save it to `out`.
    Returns the tokens it forwarded and back-propagated (its training cost) and its weights' digest after
    REPLAY_STEPS steps. `stop_at`: the same run stopped after that many steps, nothing saved (a replay)."""
    from harness.embedded.build import REPLAY_STEPS, digest_after

    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the new score head is expected: no "newly initialized" report
    model = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=1, use_safetensors=True)
    hf_logging.set_verbosity(verbosity)
    model.config.pad_token_id = tokenizer.pad_token_id
    eos = tokenizer.eos_token or ""
    encode = lambda side: tokenizer([f"{r['prompt']} {r[side]}{eos}" for r in pairs], add_special_tokens=False)["input_ids"]  # noqa: E731
    encoded = list(zip(encode("chosen"), encode("rejected")))
    # Batches of pairs of similar length: far less padding, the same Bradley-Terry objective.
    order = sorted(range(len(pairs)), key=lambda i: max(map(len, encoded[i])))
    loader = torch.utils.data.DataLoader(encoded, batch_sampler=_RandomBuckets(order, batch_size, steps, seed),
                                         collate_fn=lambda picked: _pad_pairs(tokenizer, picked))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)

    def step_loss(model, batch) -> LossOutput:
        rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
        margin = rewards[:batch["num_examples"]] - rewards[batch["num_examples"]:]
        return LossOutput(-torch.nn.functional.logsigmoid(margin).mean(),
                          {"accuracy": (margin > 0).float().mean().detach()})

    after_step, digests = digest_after(model, REPLAY_STEPS)
    state = train_loop(model, step_loss, loader, optimizer, schedule, max_steps=stop_at or steps, max_grad_norm=1.0,
                       log_steps=50, desc="judge (Bradley-Terry)", after_step=after_step)
    model.eval()
    if stop_at is not None:
        return state.tokens, digests
    # This process's own model, whatever its rank in a launch: transformers 5's save_pretrained writes nothing
    # on a rank other than 0 once torch.distributed is initialised, which left an empty cache entry.
    model.should_save_on_this_rank = lambda is_main_process: True
    model.save_pretrained(out)  # safetensors
    # how the tokenizer was loaded is not part of it: HF_HUB_OFFLINE would otherwise be written into its config,
    # and the same build would differ by the environment it ran in
    tokenizer.init_kwargs.pop("local_files_only", None)
    tokenizer.save_pretrained(out)
    return state.tokens, digests


def proxy_reward_model(sft_path: str, sft_fingerprint: str, pairs: list[dict], cache_dir: str, steps: int,
                       shipped: bool = True) -> tuple[str, bool]:
    """The reward model an online method optimises: Bradley-Terry on the run's own training pairs (the pairs
    the offline methods learn from), never on the judge's split or on eval prompts, so online and offline
    methods learn from the same preference data and are judged by a model neither optimised. Cached by
    content (the shipped copy for the embedded task's default pairs, unless `shipped` is false); returns (its
    folder, whether the cache had it)."""
    bad = next((i for i, r in enumerate(pairs) if not all(isinstance(r[k], str) for k in ("prompt", "chosen", "rejected"))), None)
    if bad is not None:
        raise BadInput(f"online.reward=proxy trains on plain-text pairs; training row {bad} holds chat messages "
                       "(pass a reward model's hub id or path as online.reward)")
    key = key_of("proxy-reward-model", sft_fingerprint, pairs, steps, JUDGE_BATCH, JUDGE_LR, torch.__version__)

    def build(out: Path) -> None:
        from harness.embedded.build import build_threads

        with build_threads():
            tokens, digests = train_bt_judge(sft_path, pairs, out, steps=steps)
        (out / "judge_info.json").write_text(json.dumps({"train_pairs": len(pairs), "steps": steps, "role": "proxy",
                                                         "tokens_trained": tokens, "weights_at_step": digests}))

    folder, hit = cached_dir(cache_dir, "proxy-reward-model", key, build, shipped=ASSETS if shipped else None)
    return str(folder), hit


def embedded_judge(assets, cache_dir: str) -> tuple[str, bool]:
    """The embedded task's judge: trained on its judge split (prompts disjoint from training, validation and
    test), with its agreement with the gold reward on held-out pairs (test prompts) stored beside it. Keyed by
    the SFT weights it starts from; the shipped copy is used when the task's assets are the shipped ones."""
    from harness.embedded.build import BUILD_THREADS, build_threads
    from harness.embedded.task import gold_reward

    key = key_of("embedded-judge", fingerprint(assets.sft_path), assets.judge_pairs, JUDGE_STEPS, JUDGE_BATCH, JUDGE_LR,
                 BUILD_THREADS, torch.__version__)

    def build(out: Path) -> None:
        with build_threads():
            _, digests = train_bt_judge(assets.sft_path, assets.judge_pairs, out, steps=JUDGE_STEPS)
        judge = RewardModelJudge(str(out), device="cpu")
        held = assets.heldout_pairs
        prompts = [r["prompt"] for r in held]
        a, b = [r["chosen"] for r in held], [r["rejected"] for r in held]
        agreement = agreement_with(judge.score(prompts, a), judge.score(prompts, b),
                                   [gold_reward(p, x) for p, x in zip(prompts, a)],
                                   [gold_reward(p, x) for p, x in zip(prompts, b)])
        (out / "judge_info.json").write_text(json.dumps({"agreement_with_gold": agreement, "heldout_pairs": len(held),
                                                         "train_pairs": len(assets.judge_pairs), "steps": JUDGE_STEPS,
                                                         "weights_at_step": digests}))

    folder, hit = cached_dir(cache_dir, "embedded-judge", key, build, shipped=ASSETS if assets.shipped else None)
    return str(folder), hit
