"""One run end to end: build the RunContext, compute reference log-probs (cached), train, evaluate
against the SFT model, write the run record.

`harness.train(config) -> RunRecord` is the Python entry point; `harness train` calls it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

from evals.aggregate import prompt_cluster_ids
from evals.evaluate import (decode_completions, evaluate, judge_agreement, preference_accuracy, preference_ceiling,
                            sft_side)
from harness.cache import key_of
from harness.config import RunConfig, apply_overrides, build_config
from harness.data import prepare_examples
from harness.embedded.shipped import is_shipped
from harness.errors import BadInput, WriteFailed, writing
from harness.logps import CHOSEN, PAIRS, REJECTED
from harness.models import add_lora, load_causal_lm, pick_device
from harness.online import rollout_seed, train_online
from harness.precision import Precision, computes_in
from harness.record import RunRecord, hardware, versions
from harness.reference import Reference
from harness.tracking import Tracker
from harness.trainer import consumed_examples, train_policy

from .context import RunContext

VAL_METRICS = ("win_rate", "win_rate_low", "win_rate_high", "gold_win_rate", "gold_reward", "kl_to_sft", "kl_to_sft_se",
               "num_prompts")


def _assets(ctx: RunContext, proxy: str | None) -> dict[str, Any]:
    """For the embedded task: whether the run used the assets that ship with the harness (the task's models and
    data, and the judge and proxy reward model where it used the harness's own), and the judge's fingerprint."""
    if ctx.task.embedded is None:
        return {}
    judge = getattr(ctx.scorers.get("judge"), "path", None)
    used = [ctx.task.sft_path] + [path for path in (judge, proxy) if path is not None]
    return {"shipped_assets": all(is_shipped(path) for path in used),
            "judge_fingerprint": getattr(ctx.scorers.get("judge"), "fingerprint", None)}


def _trained_dtype(model) -> str:
    return str(next(p for p in model.parameters() if p.requires_grad).dtype).removeprefix("torch.")


def _make_accelerator(cfg: RunConfig, precision: Precision):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DataLoaderConfiguration

    device = pick_device(cfg.model.device)
    # accelerate keeps one AcceleratorState per process and refuses a second precision setting; harness.train
    # may run several times in one process (a notebook, a test session) with different ones, so each run sets
    # it afresh (its own-launch state, the process group, is PartialState's and is kept).
    AcceleratorState._reset_state()
    return Accelerator(cpu=device.type == "cpu", mixed_precision=precision.mixed_precision,
                       gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
                       dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.train.seed))


def _distributed(accelerator, cfg: RunConfig, launch: dict | None) -> dict:
    """How the run's processes were laid out: accelerate's strategy as it runs (NO, MULTI_CPU, MULTI_GPU, FSDP,
    DEEPSPEED), the world size and global batch, and the launch (a Ray Train trial's workers and accelerate
    config, else what started the processes)."""
    world = accelerator.num_processes
    launcher = "accelerate launch / torchrun" if world > 1 or "LOCAL_RANK" in os.environ else "single process"
    return {"strategy": str(accelerator.distributed_type).removeprefix("DistributedType."), "world_size": world,
            "global_batch_size": cfg.train.batch_size * cfg.train.gradient_accumulation_steps * world,
            "launcher": launcher, **(launch or {})}


def _precision_record(ctx: RunContext, policy, online: bool) -> dict:
    """What each part of the run computed in: one policy (harness/precision.py), stated part by part."""
    with ctx.precision.context():
        computes = computes_in(policy)
    parts = ["training", "evaluation"] + (["generation", "old log-probs", "reference log-probs"] if online else
                                          ["reference log-probs"] if ctx.method.reference == "frozen" else [])
    return {"setting": ctx.cfg.model.mixed_precision, "autocast": "bf16" if ctx.precision.autocast else "none",
            **{part: computes for part in parts}}


def _claim_output_dir(output_dir: Path, main_process: bool):
    """The run's lock on its output_dir (held by the launch's main process until the run ends): a second run
    started on the same folder stops with BadInput instead of interleaving its files with the first's."""
    from filelock import FileLock, Timeout

    if not main_process:
        return contextlib.nullcontext()
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        return FileLock(str(output_dir / ".run.lock")).acquire(timeout=0)  # released when the `with` ends
    except Timeout:
        raise BadInput(f"output_dir {output_dir} is in use by another run (it holds {output_dir / '.run.lock'}); "
                       "wait for that run to end or choose another output_dir") from None


def train(config: RunConfig | dict, *, spec: str | None = None, trial_id: str | None = None, stage: str | None = None,
          sweep: dict | None = None, distributed: dict | None = None) -> RunRecord:
    """Train, evaluate and record one run. Raises BadInput (before writing anything but its output_dir's lock)
    for bad config or data, or when another run holds the output_dir. A sweep passes its name, the trial's
    stage in a comparison (selection or test) and the spec as it runs (recorded with its hash); a multi-worker
    trial (sweeps/workers.py) passes how its processes were launched (recorded beside the strategy)."""
    started = time.perf_counter()
    cfg = config if isinstance(config, RunConfig) else build_config(config, "config")
    output_dir = Path(cfg.output_dir).expanduser().absolute()
    if output_dir.exists() and not output_dir.is_dir():  # said before anything is loaded or built
        raise BadInput(f"output_dir {output_dir} is a file, not a folder")
    ctx = RunContext.build(cfg)
    accelerator = _make_accelerator(ctx.cfg, ctx.precision)
    with _claim_output_dir(output_dir, accelerator.is_main_process):
        return _train(ctx, output_dir, accelerator, started, spec, trial_id, stage, sweep or {}, distributed)


def _train(ctx: RunContext, output_dir: Path, accelerator, started: float, spec: str | None,
           trial_id: str | None, stage: str | None, sweep: dict, distributed: dict | None) -> RunRecord:
    from accelerate.utils import set_seed

    cfg, method, task, tokenizer = ctx.cfg, ctx.method, ctx.task, ctx.tokenizer
    set_seed(cfg.train.seed)
    online = method.kind == "online"
    if online:  # the data is the training prompts (sampled from), and the reward model is trained first
        prompts, reward_model = ctx.training_prompts(), ctx.reward_model()
        data = {"fingerprint": key_of([ids for _, ids in prompts]), "train_prompts": len(prompts),
                "reward_model": reward_model.path, "reward_model_fingerprint": reward_model.fingerprint}
        info = Path(reward_model.path) / "judge_info.json"  # the proxy's own training cost, when the harness trained it
        reward_model_tokens = json.loads(info.read_text()).get("tokens_trained") if info.is_file() else None
    else:
        prepared = prepare_examples(task.rows, ctx.formatter, method.consumes, cfg.data.seed)
        roles = [seq[2] for example in prepared.examples for seq in example]
        for warning in method.check_setup(cfg.train.batch_size, roles.count(CHOSEN), roles.count(REJECTED)):
            warnings.warn(warning, stacklevel=2)
        data, reward_model_tokens = {"fingerprint": prepared.fingerprint, **prepared.stats}, None
    # Full fine-tuning keeps fp32 master weights (bf16 autocast on CUDA); a LoRA base is frozen and may be bf16.
    model = add_lora(load_causal_lm(task.sft_path, cfg.model, accelerator.device, trained=cfg.model.lora.r == 0),
                     cfg.model)

    record = RunRecord(
        spec=spec, trial_id=trial_id or output_dir.name, method=method.name, stage=stage, sweep=sweep,
        method_params=method.recorded_params(), seed=cfg.train.seed,
        method_facts={"reference_free": method.reference_free, "paired": method.paired, "kind": method.kind,
                      "consumes": sorted(method.consumes), "reference": method.reference},
        config=cfg.resolved(), config_hash=cfg.config_hash(), output_dir=str(output_dir),
        dataset={"source": cfg.data.source, "sft_model": task.sft_path, "sft_fingerprint": ctx.sft_fingerprint,
                 **task.stats, **data,
                 "eval_prompts": len(task.eval_prompts), "eval_prompts_fingerprint": key_of(task.eval_prompts),
                 "eval_prompts_distinct": len(set(prompt_cluster_ids(task.eval_prompts))),
                 "val_prompts": len(task.val_prompts), "val_prompts_fingerprint": key_of(task.val_prompts),
                 "val_prompts_distinct": len(set(prompt_cluster_ids(task.val_prompts))),
                 **_assets(ctx, reward_model.path if online else None)},
        versions=versions(), hardware=hardware(),
        distributed=_distributed(accelerator, cfg, distributed))
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        record.write()
    tracker = Tracker(output_dir, cfg.wandb, name=record.trial_id, group=spec or cfg.name, job_type=method.name,
                      config=cfg.resolved(), enabled=accelerator.is_main_process)
    try:
        reference_hit, reference_tokens, reference_computed = None, 0, 0
        if online:
            score = lambda texts, completions, ended: reward_model.score(  # noqa: E731
                texts, decode_completions(tokenizer, completions), ended)
            state = train_online(accelerator, model, method, prompts, score, ctx.reference_beside(model), tokenizer,
                                 cfg.train, cfg.online, output_dir, tracker.log)
        else:
            reference = None
            if method.reference == "frozen":  # the other variants need no SFT log-probs to train
                needed = consumed_examples(prepared.examples, cfg.train, accelerator.num_processes)
                reference, reference_computed = Reference.untrained(model, ctx.sft_fingerprint).cached_sequence_logps(
                    prepared.examples, tokenizer.pad_token_id, cfg.cache_dir, needed, ctx.precision)
                reference_hit = reference_computed == 0
                used = range(len(prepared.examples)) if needed is None else needed
                # its cost, whether this run or an earlier one paid it
                reference_tokens = sum(len(p) + len(c) for i in used for p, c, _ in prepared.examples[i])
            state = train_policy(accelerator, model, method, prepared.examples, reference, tokenizer.pad_token_id,
                                 cfg.train, output_dir, tracker.log)
        policy = accelerator.unwrap_model(model)
        if cfg.train.save_model and accelerator.is_main_process:
            _save_model(policy, tokenizer, output_dir / "model")
        world = accelerator.num_processes
        forwarded = state.tokens_forwarded + reference_tokens
        metrics: dict[str, Any] = {
            "first_train_loss": state.first_loss, "final_train_loss": state.history[-1]["loss"],
            "train_steps": state.step, "train_time_s": state.seconds, "resumed_from_step": state.resumed_from,
            # The data budget in preference pairs: an unpaired row (KTO) is half a pair; an online method
            # sees sampled completions instead (its reward model saw the training pairs).
            "pairs_seen": None if online else state.examples * (1.0 if method.paired else 0.5),
            "samples_trained": state.examples if online else None,  # sampled sequences x epochs
            "tokens_per_s": state.tokens / state.seconds if state.seconds else None,
            # Compute, comparable across methods: tokens forwarded and back-propagated, tokens forwarded
            # without gradients (reference log-probs; for online methods also the old policy and the
            # reward model), tokens sampled. Per process.
            "tokens_trained": state.tokens, "tokens_forwarded": forwarded,
            "tokens_generated": state.tokens_generated,
            # One number to rank cost by, in forward-token equivalents: a backward costs about two forwards,
            # and a sampled token with the KV cache about one.
            "compute_tokens": 3 * state.tokens + forwarded + state.tokens_generated,
            # An online method also needs the reward model it optimises: the proxy's training, whole (shared by
            # the runs on the same pairs; the leaderboard also states it amortised over them).
            "reward_model_compute_tokens": 3 * reward_model_tokens if online and reward_model_tokens else None,
            "reference_cache_hit": reference_hit,
            # Sequences whose reference log-probs this run computed (the rest came from the cache).
            "reference_sequences_computed": reference_computed,
            # What precision training ran in: the trained weights' dtype and the autocast (record.precision: each part).
            "precision": f"{_trained_dtype(policy)} weights, {accelerator.mixed_precision} autocast",
            # Processes of the launch, and examples per optimizer step over all of them.
            "world_size": world,
            "global_batch_size": cfg.train.batch_size * cfg.train.gradient_accumulation_steps * world,
            # Each process samples its own rollouts: the sampling seed of the first rollout batch, per process
            # (harness/online.py rollout_seed gives every later one).
            "rollout_seeds": [rollout_seed(cfg.train.seed, 0, p, 1) for p in range(world)] if online else None}
        record.precision = _precision_record(ctx, policy, online)
        if cfg.eval.num_prompts and accelerator.is_main_process:
            evaluated, record.outcomes, record.prompt_clusters, record.examples = evaluate_run(ctx, policy, output_dir)
            metrics.update(evaluated)
        metrics["wall_time_s"] = time.perf_counter() - started
        record.metrics, record.status = metrics, "completed"
        tracker.summary(metrics)
    except BaseException as error:
        record.status = "failed"
        record.error = f"{type(error).__name__}: {error}"
        record.traceback = traceback.format_exc(limit=8)
        raise
    finally:
        try:
            tracker.finish(failed=record.status != "completed")
        finally:
            record.tracking = tracker.status  # finishing may have lost W&B too: the record on disk says so
            if accelerator.is_main_process:
                _write_record(record)
    return record


def _write_record(record: RunRecord) -> None:
    """The record as the run ends. When that write fails too (a full disk), a run that failed anyway reports its
    own failure, and the record on disk is the last one written (it says `running`)."""
    try:
        record.write()
    except WriteFailed as failed:
        if record.status == "completed":
            raise
        warnings.warn(f"{failed}; it holds the run's state before it failed", stacklevel=2)


def _save_model(policy, tokenizer, target: Path) -> None:
    """The trained policy, written beside `target` and renamed into place: a write that fails (WriteFailed)
    leaves `target` as it was."""
    tmp, old = target.with_name(f".{target.name}-writing"), target.with_name(f".{target.name}-replaced")
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    with writing(target, partial=tmp):
        policy.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            os.replace(target, old)
        try:
            os.replace(tmp, target)
        except BaseException:
            if old.exists():
                os.replace(old, target)  # the previous model back in its place
            raise
    shutil.rmtree(old, ignore_errors=True)


def prepare(config: RunConfig | dict) -> dict[str, Any]:
    """What every trial of a sweep only reads: the task (and for the embedded task its SFT model and judge),
    the reference log-probs of the train split, and the SFT generations with their scores, all in the
    content-addressed cache. Returns which of them were computed now (False) or found (True)."""
    ctx = RunContext.build(config)
    cfg, task = ctx.cfg, ctx.task
    done: dict[str, Any] = {"task_cache_hit": task.stats.get("task_cache_hit")}
    sft = Reference(ctx.load_sft(), ctx.sft_fingerprint)
    autocast = ctx.precision.context
    if ctx.method.kind == "online":
        if cfg.online.reward == "proxy":
            done["proxy_reward_model_cache_hit"] = ctx.proxy()[1]
    elif ctx.method.reference == "frozen":
        prepared = prepare_examples(task.rows, ctx.formatter, ctx.method.consumes, cfg.data.seed)
        done["reference_cache_hit"] = sft.cached_sequence_logps(prepared.examples, ctx.tokenizer.pad_token_id,
                                                                cfg.cache_dir, precision=ctx.precision)[1] == 0
    for split, prompts in (("eval", task.eval_prompts), ("val", task.val_prompts)):
        if prompts and ctx.scorers:
            with autocast():  # as the trials' evaluation computes it
                done[f"sft_{split}_cache_hit"] = sft_side(sft, ctx.tokenizer, ctx.prompts(prompts), cfg.eval,
                                                          ctx.scorers, cfg.cache_dir)[1]
    return done


def evaluate_run(ctx: RunContext, policy, output_dir: Path) -> tuple[dict, dict, dict, list]:
    """Win rate vs SFT (judge and gold) and its length-controlled version, KL, length, diversity, held-out
    preference accuracy with its SFT baseline and gold ceiling, judge agreement. Returns (metrics, per-prompt
    outcomes by split, each split's prompt clusters, a few test outputs). Every forward and sample runs under
    the run's precision, as in training, so `harness eval` of the saved model reproduces these numbers."""
    with ctx.precision.context():
        return _evaluate_run(ctx, policy, output_dir)


def _evaluate_run(ctx: RunContext, policy, output_dir: Path) -> tuple[dict, dict, dict, list]:
    cfg, task, scorers = ctx.cfg, ctx.task, ctx.scorers
    if ctx.method.kind == "online":  # also by the reward model it optimised: how far the judge's verdict is from it
        scorers = {**scorers, "proxy": ctx.reward_model()}
    sft = ctx.reference_beside(policy)
    metrics = evaluate(policy, sft, ctx.tokenizer, ctx.prompts(task.eval_prompts), cfg.eval, scorers, cfg.cache_dir,
                       output_dir / "eval")
    outcomes, examples = {"test": metrics.pop("per_prompt")}, metrics.pop("examples")
    if task.val_prompts:
        val = evaluate(policy, sft, ctx.tokenizer, ctx.prompts(task.val_prompts), cfg.eval, scorers, cfg.cache_dir)
        outcomes["val"] = val.pop("per_prompt")
        metrics.update({f"val_{k}": v for k, v in val.items() if k in VAL_METRICS})
    if task.heldout_pairs:
        heldout = prepare_examples(task.heldout_pairs, ctx.formatter, {PAIRS})
        sft_logps, _ = sft.cached_sequence_logps(heldout.examples, ctx.tokenizer.pad_token_id, cfg.cache_dir,
                                                 precision=ctx.precision)  # the same for every run: computed once
        metrics.update(preference_accuracy(ctx.method, policy, sft_logps, heldout.examples, ctx.tokenizer.pad_token_id,
                                           cfg.eval.batch_size))
        metrics["heldout_pairs"] = len(heldout.examples)
        gold = scorers.get("gold")
        if gold is not None:
            metrics["heldout_pref_ceiling"] = preference_ceiling(gold, task.heldout_pairs)
            if scorers["judge"] is not gold:
                metrics["judge_agreement_heldout"] = judge_agreement(scorers["judge"], gold, task.heldout_pairs,
                                                                     cfg.cache_dir)
            if "proxy" in scorers:  # how good a stand-in for gold the reward model the method optimised is
                metrics["proxy_agreement_heldout"] = judge_agreement(scorers["proxy"], gold, task.heldout_pairs,
                                                                     cfg.cache_dir)
    clusters = {split: prompt_cluster_ids(prompts) for split, prompts in (("test", task.eval_prompts), ("val", task.val_prompts))
                if split in outcomes}
    return metrics, outcomes, clusters, examples


def evaluate_saved(run_dir: str | Path, overrides: list[str] | None = None) -> RunRecord:
    """`harness eval RUN_DIR`: evaluate a trained run again (eval.* keys may be overridden) and update its record."""
    run_dir = Path(run_dir).expanduser().absolute()
    if not (run_dir / "record.json").is_file():
        raise BadInput(f"{run_dir}: no record.json (not a run directory)")
    record = RunRecord.read(run_dir)
    bad = [o for o in overrides or [] if not o.startswith("eval.")]
    if bad:
        raise BadInput(f"harness eval takes only eval.* overrides, got {bad[0]!r}")
    if not (run_dir / "model").is_dir():
        raise BadInput(f"{run_dir}: no saved model (the run had train.save_model=false or did not finish)")
    ctx = RunContext.build(apply_overrides(dict(record.config), overrides or []), str(run_dir / "record.json"))
    if (run_dir / "model" / "adapter_config.json").is_file():
        from peft import PeftModel

        policy = PeftModel.from_pretrained(ctx.load_sft(), str(run_dir / "model"))
    else:
        policy = load_causal_lm(str(run_dir / "model"), ctx.cfg.model, like_trained=True)  # its fp32 master weights
    metrics, record.outcomes, record.prompt_clusters, record.examples = evaluate_run(ctx, policy, run_dir)
    record.metrics.update(metrics)
    record.config = ctx.cfg.resolved()
    record.write(run_dir)
    return record
