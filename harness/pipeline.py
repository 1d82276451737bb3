"""One run end to end: resolve the method, prepare the task, compute reference log-probs (cached),
train, evaluate against the SFT model, write the run record.

`harness.train(config) -> RunRecord` is the Python entry point; `harness train` calls it.
"""

from __future__ import annotations

import random
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .cache import cached_dir, key_of
from .config import MethodConfig, RunConfig, build_config
from .data import Formatter, load_rows, normalise_rows, prepare_examples
from .errors import BadInput
from .logps import CHOSEN, REJECTED
from .models import add_lora, fingerprint, load_causal_lm, load_tokenizer, pick_device, reference_weights
from .record import RunRecord, hardware, versions
from .tracking import Tracker
from .trainer import sequence_logps_of, train_loop


VAL_METRICS = ("win_rate", "win_rate_low", "win_rate_high", "gold_win_rate", "gold_reward", "kl_to_sft", "kl_to_sft_se",
               "num_prompts")


@dataclass
class TaskData:
    """What a run trains and evaluates on, whatever the source."""

    rows: list[dict]
    eval_prompts: list
    sft_path: str
    embedded: Any = None  # the embedded task's assets (None for other data sources)
    val_prompts: list = field(default_factory=list)  # for choosing configurations; never the eval (test) prompts
    heldout_pairs: list[dict] = field(default_factory=list)  # labelled pairs never trained on
    stats: dict[str, Any] = field(default_factory=dict)


def load_task(cfg: RunConfig) -> TaskData:
    if cfg.data.source == "embedded":
        from .embedded.build import prepare_embedded

        assets = prepare_embedded(cfg.task, cfg.cache_dir)
        if cfg.eval.num_prompts > len(assets.eval_prompts):
            raise BadInput(f"eval.num_prompts={cfg.eval.num_prompts} but the embedded task has "
                           f"{len(assets.eval_prompts)} eval prompts (raise task.num_eval_prompts)")
        if cfg.eval.num_val_prompts > len(assets.val_prompts):
            raise BadInput(f"eval.num_val_prompts={cfg.eval.num_val_prompts} but the embedded task has "
                           f"{len(assets.val_prompts)} validation prompts (raise task.num_val_prompts)")
        rows = assets.train_pairs[: cfg.data.num_train]
        return TaskData(rows, assets.eval_prompts[: cfg.eval.num_prompts], cfg.model.path or assets.sft_path, assets,
                        assets.val_prompts[: cfg.eval.num_val_prompts], assets.heldout_pairs,
                        {"rows_read": len(assets.train_pairs), "skipped_invalid": 0, "task_cache_hit": assets.cache_hit})
    if cfg.model.path is None:
        raise BadInput("model.path is required when data.source is not 'embedded' (the SFT model to start from)")
    cache = str(Path(cfg.cache_dir).expanduser() / "hf-datasets")
    raw = load_rows(cfg.data.source, cfg.data.split, cfg.data.subset, cache)
    rows, skipped = normalise_rows(raw, f"{cfg.data.source} [{cfg.data.split}]", cfg.data.skip_invalid)
    random.Random(cfg.data.seed).shuffle(rows)
    if cfg.data.eval_split:
        eval_raw = load_rows(cfg.data.source, cfg.data.eval_split, cfg.data.subset, cache)
        eval_rows, _ = normalise_rows(eval_raw, f"{cfg.data.source} [{cfg.data.eval_split}]", cfg.data.skip_invalid)
        eval_rows = eval_rows[: cfg.eval.num_prompts]
        val_rows, rows = rows[: cfg.eval.num_val_prompts], rows[cfg.eval.num_val_prompts:]
    else:  # hold out the last rows of the shuffled training split: validation, then test
        held = cfg.eval.num_prompts + cfg.eval.num_val_prompts
        if held >= len(rows):
            raise BadInput(f"{cfg.data.source}: {len(rows)} rows cannot spare eval.num_prompts + eval.num_val_prompts="
                           f"{held} for evaluation")
        rows, val_rows, eval_rows = rows[: len(rows) - held], rows[len(rows) - held: len(rows) - cfg.eval.num_prompts], \
            rows[len(rows) - cfg.eval.num_prompts:]
    return TaskData(rows[: cfg.data.num_train], [r["prompt"] for r in eval_rows], cfg.model.path, None,
                    [r["prompt"] for r in val_rows], [r for r in eval_rows if "chosen" in r],
                    {"rows_read": len(raw), "skipped_invalid": skipped})


def cached_reference(model, prepared, pad_token_id: int, cfg: RunConfig, model_id: str) -> tuple[list[list[float]], bool]:
    """Reference log-probs of every training sequence: one pass of the SFT weights, content-addressed on disk."""
    from safetensors.torch import load_file, save_file

    dtype = str(next(model.parameters()).dtype)
    key = key_of("reference-logps", model_id, prepared.fingerprint, dtype, torch.__version__)

    def build(out: Path) -> None:
        with reference_weights(model):
            values = sequence_logps_of(model, prepared.examples, pad_token_id, desc="reference log-probs")
        save_file({"values": torch.tensor([v for vs in values for v in vs], dtype=torch.float32),
                   "lengths": torch.tensor([len(vs) for vs in values])}, str(out / "reference.safetensors"))

    folder, hit = cached_dir(cfg.cache_dir, "reference-logps", key, build)
    stored = load_file(str(folder / "reference.safetensors"))
    flat, lengths = stored["values"].tolist(), stored["lengths"].tolist()
    values, start = [], 0
    for n in lengths:
        values.append(flat[start:start + n])
        start += n
    return values, hit


def _make_accelerator(cfg: RunConfig):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    device = pick_device(cfg.model.device)
    mixed = "bf16" if device.type == "cuda" and cfg.model.dtype == "auto" and torch.cuda.is_bf16_supported() else "no"
    return Accelerator(cpu=device.type == "cpu", mixed_precision=mixed,
                       gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
                       dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.train.seed))


def train(config: RunConfig | dict, *, spec: str | None = None, trial_id: str | None = None) -> RunRecord:
    """Train, evaluate and record one run. Raises BadInput (before writing anything) for bad config or data."""
    import methods
    from accelerate.utils import set_seed

    cfg = config if isinstance(config, RunConfig) else build_config(config)
    started = time.perf_counter()
    method = methods.get(cfg.method.name, **cfg.method.params())
    # Record (and hash) the method's defaults too, so equal runs get equal hashes however they were spelled.
    cfg = cfg.model_copy(update={"method": MethodConfig(name=method.name, **method.recorded_params())})
    if method.kind != "offline":
        raise BadInput(f"method {method.name!r} is {method.kind}; `harness train` runs offline methods")
    output_dir = Path(cfg.output_dir).expanduser().absolute()
    task = load_task(cfg)
    scorers = make_scorers(cfg, task) if cfg.eval.num_prompts else None
    accelerator = _make_accelerator(cfg)
    set_seed(cfg.train.seed)
    tokenizer = load_tokenizer(task.sft_path, cfg.model)
    formatter = Formatter(tokenizer, cfg.data.max_length, cfg.data.max_prompt_length, cfg.data.apply_chat_template)
    prepared = prepare_examples(task.rows, formatter, method.paired, cfg.data.seed)
    roles = [seq[2] for example in prepared.examples for seq in example]
    for warning in method.check_setup(cfg.train.batch_size, roles.count(CHOSEN), roles.count(REJECTED)):
        warnings.warn(warning, stacklevel=2)
    model = load_causal_lm(task.sft_path, cfg.model, accelerator.device)
    sft_id = fingerprint(task.sft_path, cfg.model.revision)
    model = add_lora(model, cfg.model)

    record = RunRecord(
        spec=spec, trial_id=trial_id or output_dir.name, method=method.name,
        method_params=method.recorded_params(), seed=cfg.train.seed,
        method_facts={"reference_free": method.reference_free, "paired": method.paired, "kind": method.kind},
        config=cfg.resolved(), config_hash=cfg.config_hash(), output_dir=str(output_dir),
        dataset={"source": cfg.data.source, "fingerprint": prepared.fingerprint, "sft_model": task.sft_path,
                 "sft_fingerprint": sft_id, **task.stats, **prepared.stats, "eval_prompts": len(task.eval_prompts),
                 "eval_prompts_fingerprint": key_of(task.eval_prompts), "val_prompts": len(task.val_prompts),
                 "val_prompts_fingerprint": key_of(task.val_prompts)},
        versions=versions(), hardware=hardware())
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        record.write()
    tracker = Tracker(output_dir, cfg.wandb, name=record.trial_id, group=spec or cfg.name, job_type=method.name,
                      config=cfg.resolved(), enabled=accelerator.is_main_process)
    try:
        reference, reference_hit = (None, None) if method.reference_free else \
            cached_reference(model, prepared, tokenizer.pad_token_id, cfg, sft_id)
        state = train_loop(accelerator, model, method, prepared.examples, reference, tokenizer.pad_token_id,
                           cfg.train, output_dir, tracker.log)
        policy = accelerator.unwrap_model(model)
        if cfg.train.save_model and accelerator.is_main_process:
            policy.save_pretrained(output_dir / "model")
            tokenizer.save_pretrained(output_dir / "model")
        metrics: dict[str, Any] = {
            "first_train_loss": state.first_loss, "final_train_loss": state.history[-1]["loss"],
            "train_steps": state.step, "train_time_s": state.seconds,
            # The data budget in preference pairs: an unpaired row (KTO) is half a pair.
            "pairs_seen": state.examples * (1.0 if method.paired else 0.5),
            "tokens_per_s": state.tokens / state.seconds if state.seconds else None,
            "reference_cache_hit": reference_hit}
        if cfg.eval.num_prompts and accelerator.is_main_process:
            evaluated, record.outcomes = evaluate_run(policy, tokenizer, formatter, task, cfg, method, sft_id, output_dir,
                                                      *scorers)
            metrics.update(evaluated)
        metrics["wall_time_s"] = time.perf_counter() - started
        record.metrics, record.status = metrics, "completed"
        tracker.summary(metrics)
    except BaseException as error:
        record.status = "failed"
        record.error = f"{type(error).__name__}: {error}"
        record.metrics["traceback"] = traceback.format_exc(limit=8)
        raise
    finally:
        if accelerator.is_main_process:
            record.write()
        tracker.finish(failed=record.status != "completed")
    return record


def prepare(config: RunConfig | dict) -> dict[str, Any]:
    """What every trial of a sweep only reads: the task (and for the embedded task its SFT model and judge),
    the reference log-probs of the train split, and the SFT generations with their scores, all in the
    content-addressed cache. Returns which of them were computed now (False) or found (True)."""
    import methods
    from evals.evaluate import scorer_set, sft_side

    cfg = config if isinstance(config, RunConfig) else build_config(config)
    method = methods.get(cfg.method.name, **cfg.method.params())
    task = load_task(cfg)
    done: dict[str, Any] = {"task_cache_hit": task.stats.get("task_cache_hit")}
    tokenizer = load_tokenizer(task.sft_path, cfg.model)
    formatter = Formatter(tokenizer, cfg.data.max_length, cfg.data.max_prompt_length, cfg.data.apply_chat_template)
    model = load_causal_lm(task.sft_path, cfg.model)
    sft_id = fingerprint(task.sft_path, cfg.model.revision)
    if not method.reference_free:
        prepared = prepare_examples(task.rows, formatter, method.paired, cfg.data.seed)
        done["reference_cache_hit"] = cached_reference(model, prepared, tokenizer.pad_token_id, cfg, sft_id)[1]
    scorers = scorer_set(*make_scorers(cfg, task)) if cfg.eval.num_prompts else {}
    for split, prompts in (("eval", task.eval_prompts), ("val", task.val_prompts)):
        if prompts:
            ids = [formatter.prompt_ids(p) for p in prompts]
            done[f"sft_{split}_cache_hit"] = sft_side(model, tokenizer, prompts, ids, cfg.eval, scorers, cfg.cache_dir,
                                                      sft_id)[1]
    return done


def make_scorers(cfg: RunConfig, task: TaskData):
    """(judge, gold or None), loaded (or trained, for the embedded task) before anything is trained or written."""
    from evals.scorers import GoldScorer, make_scorer

    judge = make_scorer(cfg.eval.judge, task.eval_prompts, embedded_assets=task.embedded, cache_dir=cfg.cache_dir,
                        device=cfg.model.device, trust_remote_code=cfg.model.trust_remote_code)
    # Gold is reported beside the judge wherever it is known (also when it is the judge).
    return judge, (judge if judge.name == "gold" else GoldScorer() if task.embedded else None)


def evaluate_run(policy, tokenizer, formatter, task: TaskData, cfg: RunConfig, method, sft_id: str, output_dir: Path,
                 judge, gold) -> tuple[dict, dict]:
    """Win rate vs SFT (judge and gold), KL, length, diversity, held-out preference accuracy with its SFT
    baseline and gold ceiling, judge agreement. Returns (metrics, per-prompt outcomes by split)."""
    from evals.evaluate import evaluate, judge_agreement, preference_accuracy, preference_ceiling

    if hasattr(policy, "disable_adapter") and hasattr(policy, "peft_config"):
        sft_model, sft_mode = policy, lambda: reference_weights(policy)  # LoRA: the base is the SFT model
    else:
        sft_model, sft_mode = load_causal_lm(task.sft_path, cfg.model, next(policy.parameters()).device), None
    kwargs = {"sft_mode": sft_mode} if sft_mode else {}
    prompt_ids = [formatter.prompt_ids(p) for p in task.eval_prompts]
    metrics = evaluate(policy, tokenizer, task.eval_prompts, prompt_ids, cfg.eval, judge, sft_model=sft_model,
                       sft_fingerprint=sft_id, cache_dir=cfg.cache_dir, gold=gold, output_dir=output_dir / "eval", **kwargs)
    outcomes = {"test": metrics.pop("per_prompt")}
    if task.val_prompts:
        val_ids = [formatter.prompt_ids(p) for p in task.val_prompts]
        val = evaluate(policy, tokenizer, task.val_prompts, val_ids, cfg.eval, judge, sft_model=sft_model,
                       sft_fingerprint=sft_id, cache_dir=cfg.cache_dir, gold=gold, **kwargs)
        outcomes["val"] = val.pop("per_prompt")
        metrics.update({f"val_{k}": v for k, v in val.items() if k in VAL_METRICS})
    if task.heldout_pairs:
        heldout = prepare_examples(task.heldout_pairs, formatter, paired=True)
        metrics.update(preference_accuracy(method, policy, sft_model, heldout.examples, tokenizer.pad_token_id,
                                           cfg.eval.batch_size, **kwargs))
        metrics["heldout_pairs"] = len(heldout.examples)
        if gold is not None:
            metrics["heldout_pref_ceiling"] = preference_ceiling(gold, task.heldout_pairs)
            if judge is not gold:
                metrics["judge_agreement_heldout"] = judge_agreement(judge, gold, task.heldout_pairs)
    return metrics, outcomes


def evaluate_saved(run_dir: str | Path, overrides: list[str] | None = None) -> RunRecord:
    """`harness eval RUN_DIR`: evaluate a trained run again (eval.* keys may be overridden) and update its record."""
    import methods

    from .config import apply_overrides

    run_dir = Path(run_dir).expanduser().absolute()
    if not (run_dir / "record.json").is_file():
        raise BadInput(f"{run_dir}: no record.json (not a run directory)")
    record = RunRecord.read(run_dir)
    bad = [o for o in overrides or [] if not o.startswith("eval.")]
    if bad:
        raise BadInput(f"harness eval takes only eval.* overrides, got {bad[0]!r}")
    cfg = build_config(apply_overrides(dict(record.config), overrides or []), str(run_dir / "record.json"))
    if not (run_dir / "model").is_dir():
        raise BadInput(f"{run_dir}: no saved model (the run had train.save_model=false or did not finish)")
    method = methods.get(cfg.method.name, **cfg.method.params())
    task = load_task(cfg)
    judge, gold = make_scorers(cfg, task)
    tokenizer = load_tokenizer(task.sft_path, cfg.model)
    formatter = Formatter(tokenizer, cfg.data.max_length, cfg.data.max_prompt_length, cfg.data.apply_chat_template)
    if (run_dir / "model" / "adapter_config.json").is_file():
        from peft import PeftModel

        policy = PeftModel.from_pretrained(load_causal_lm(task.sft_path, cfg.model), str(run_dir / "model"))
    else:
        policy = load_causal_lm(str(run_dir / "model"), cfg.model)
    sft_id = fingerprint(task.sft_path, cfg.model.revision)
    metrics, record.outcomes = evaluate_run(policy, tokenizer, formatter, task, cfg, method, sft_id, run_dir, judge, gold)
    record.metrics.update(metrics)
    record.config = cfg.resolved()
    record.write(run_dir)
    return record
