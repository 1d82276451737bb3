"""What a run trains and evaluates on, whatever the source: the embedded task's assets, or a dataset (hub
id, local folder or file) with its validation and test prompts held out of the training rows."""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import RunConfig
from .data import MAX_REASONS, load_rows, normalise_rows
from .errors import BadInput


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
    raw, unreadable = load_rows(cfg.data.source, cfg.data.split, cfg.data.subset, cache, cfg.data.skip_invalid)
    rows, counts = normalise_rows(raw, f"{cfg.data.source} [{cfg.data.split}]", cfg.data.skip_invalid,
                                  cfg.data.columns)
    counts["skipped_unreadable"] = unreadable["skipped_unreadable"]
    counts["skip_reasons"] = (unreadable["skip_reasons"] + counts["skip_reasons"])[:MAX_REASONS]
    skipped = counts["skipped_unreadable"] + counts["skipped_invalid"]
    if skipped:
        warnings.warn(f"{cfg.data.source}: skipped {skipped} of {len(raw) + counts['skipped_unreadable']} rows "
                      f"(data.skip_invalid); first reasons: {'; '.join(counts['skip_reasons'])}", stacklevel=2)
    random.Random(cfg.data.seed).shuffle(rows)
    if cfg.data.eval_split:
        eval_raw, _ = load_rows(cfg.data.source, cfg.data.eval_split, cfg.data.subset, cache, cfg.data.skip_invalid)
        eval_rows, _ = normalise_rows(eval_raw, f"{cfg.data.source} [{cfg.data.eval_split}]",
                                      cfg.data.skip_invalid, cfg.data.columns)
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
                    {"rows_read": len(raw), **counts})
