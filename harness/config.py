"""The run config: typed, validated (unknown keys are errors), loaded from YAML plus dotted overrides.

`load_config("spec.yaml", ["method.beta=0.1", "train.max_steps=50"])` gives a `RunConfig`; its
`resolved()` dict and `config_hash()` go into the run record.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import BadInput, validation_message


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraConfig(_Strict):
    r: int = Field(0, ge=0, description="LoRA rank; 0 = full fine-tuning")
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"


class ModelConfig(_Strict):
    path: str | None = Field(None, description="hub id or local dir of the SFT model; None = the embedded task's")
    revision: str | None = None
    trust_remote_code: bool = False
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    mixed_precision: Literal["auto", "none", "bf16"] = Field(
        "auto", description="autocast for every forward and sample of a run (harness/precision.py): auto = bf16 on a "
        "bf16 CUDA device with dtype auto, else none; bf16 = bf16 autocast on any device")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    lora: LoraConfig = LoraConfig()


class DataConfig(_Strict):
    source: str = Field("embedded", description="'embedded', a hub id, a local dir, or a .jsonl/.json/.parquet/.csv file")
    split: str = "train"
    eval_split: str | None = Field(None, description="split holding the eval prompts; None = hold out rows of `split`")
    subset: str | None = Field(None, description="hub dataset config name")
    num_train: int | None = Field(None, gt=0, description="use at most this many training rows")
    max_length: int = Field(64, gt=1, description="max prompt+completion tokens")
    max_prompt_length: int = Field(32, gt=0, description="prompts longer than this keep their last tokens")
    apply_chat_template: bool = Field(True, description="render conversational rows (message lists) with the "
                                      "tokenizer's chat template, as TRL does; string rows are always plain text")
    skip_invalid: bool = Field(False, description="skip (and count) unusable rows instead of failing")
    columns: dict[str, str] = Field({}, description="rename dataset fields to the harness's names before use, "
                                    "e.g. {text: completion} for IMDb reviews as unpaired rows")
    seed: int = 0


class TaskConfig(_Strict):
    """Sizes of the embedded synthetic task (ignored for other data sources)."""

    seed: int = 0
    num_train_pairs: int = Field(1000, gt=0)
    num_eval_prompts: int = Field(200, gt=0)
    num_val_prompts: int = Field(200, ge=0)
    num_judge_pairs: int = Field(6000, gt=0)
    num_sft_examples: int = Field(4000, gt=0)
    sft_steps: int = Field(600, gt=0, description="SFT optimizer steps (600: the 50 x 24 prompt space needs them to stay on topic)")
    label_temperature: float = Field(1.0, gt=0, description="Bradley-Terry temperature of the preference labels")
    shipped: bool = Field(True, description="use the built assets that ship with the harness (harness/embedded/shipped.py) "
                          "where they match and verify; false builds them in the cache")


class MethodConfig(BaseModel):
    """`name` plus that method's own hyperparameters; the method validates the rest."""

    model_config = ConfigDict(extra="allow")
    name: str = "dpo"

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TrainConfig(_Strict):
    learning_rate: float = Field(1e-4, gt=0)
    max_steps: int = Field(150, gt=0)
    batch_size: int = Field(16, gt=0, description="pairs per optimizer step and process, before accumulation")
    gradient_accumulation_steps: int = Field(1, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = 0
    group_by_length: bool = Field(False, description="batch examples of similar length together (transformers' "
                                  "LengthGroupedSampler: shuffled mega-batches of 50 batches, each sorted by length); "
                                  "less padding, batches less random")
    save_steps: int = Field(50, ge=0, description="checkpoint every N steps (0 = only at the end); online methods "
                            "round N up to a whole number of rollout batches")
    resume: bool = Field(True, description="resume from the last checkpoint in output_dir when there is one")
    log_steps: int = Field(10, gt=0)
    save_model: bool = True


class EvalConfig(_Strict):
    num_prompts: int = Field(200, ge=0, description="0 = no evaluation")
    num_val_prompts: int = Field(0, ge=0, description="also evaluate on this many validation prompts (val_* metrics), "
                                 "for picking a configuration without looking at the test prompts")
    judge: str = Field("auto", description="'auto' (the embedded task's trained judge), 'trained', 'gold' "
                       "(embedded task), or a reward model's hub id/path")
    max_new_tokens: int = Field(48, gt=0)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    samples_per_prompt: int = Field(1, gt=0)
    batch_size: int = Field(64, gt=0)
    tie_eps: float = Field(0.0, ge=0)
    n_boot: int = Field(1000, gt=0)
    seed: int = 0


class OnlineConfig(_Strict):
    """Rollouts of online methods (PPO, RLOO); offline methods ignore this section."""

    prompts_per_rollout: int = Field(32, gt=0, description="training prompts sampled per rollout batch (and process)")
    epochs: int = Field(2, gt=0, description="passes over each rollout batch (PPO's K); train.batch_size "
                        "sequences per optimizer step")
    max_new_tokens: int = Field(24, gt=0, description="longest sampled completion")
    reward: str = Field("proxy", description="'proxy' (a Bradley-Terry reward model trained on the run's own "
                        "training pairs) or a reward model's hub id/path")
    proxy_steps: int = Field(600, gt=0, description="optimizer steps of the proxy reward model")
    missing_eos_penalty: float | None = Field(None, ge=0, description="subtracted from the score of a completion "
                                              "cut at max_new_tokens (no EOS), as TRL's missing_eos_penalty; "
                                              "None = no penalty")


class WandbConfig(_Strict):
    mode: Literal["offline", "online", "disabled"] | None = Field(
        None, description="None = online when credentials are present, else offline")
    project: str = "alignment-harness"
    entity: str | None = None
    group: str | None = None
    init_timeout: float = Field(30.0, gt=0, description="seconds to wait for the server at the start of a run; "
                                "past it the run logs offline (upload later with `wandb sync`)")
    finish_timeout: float = Field(60.0, gt=0, description="seconds to wait for the upload at the end of a run; "
                                  "what is not uploaded by then stays in the run's local W&B files")


def _default_cache_dir() -> str:
    # an empty HARNESS_CACHE_DIR is unset, not the current directory (which would put the cache in a checkout)
    return os.environ.get("HARNESS_CACHE_DIR") or str(Path("~/.cache/alignment-harness").expanduser())


class RunConfig(_Strict):
    name: str = "run"
    output_dir: str = "outputs/run"
    cache_dir: str = Field(default_factory=_default_cache_dir)
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    task: TaskConfig = TaskConfig()
    method: MethodConfig = MethodConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    online: OnlineConfig | None = OnlineConfig()  # None for offline methods (see for_kind)
    wandb: WandbConfig = WandbConfig()

    def resolved(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def for_kind(self, kind: str) -> "RunConfig":
        """The config as a method of this kind reads it: an offline method has no rollouts, so its record
        and hash carry no `online` section (and equal offline runs hash as they did before it existed)."""
        return self.model_copy(update={"online": None}) if kind == "offline" else self

    def config_hash(self) -> str:
        """Hash of what determines the result: paths where things are written are left out."""
        tree = self.resolved()
        for key in ("output_dir", "cache_dir", "name"):
            tree.pop(key)
        tree.pop("wandb")
        if tree["online"] is None:
            tree.pop("online")
        # Fields added with a default that reproduces earlier behaviour hash as before they existed.
        if not tree["data"]["columns"]:
            tree["data"].pop("columns")
        if not tree["train"]["group_by_length"]:
            tree["train"].pop("group_by_length")
        if tree.get("online") and tree["online"]["missing_eos_penalty"] is None:
            tree["online"].pop("missing_eos_penalty")
        return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:16]


def _parse_value(text: str) -> Any:
    # YAML scalars: 0.1 -> float, true -> bool, null -> None, [a, b] -> list; anything else stays a string.
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        if "=" not in item:
            raise BadInput(f"override {item!r} is not KEY=VALUE (e.g. method.beta=0.1)")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = tree
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise BadInput(f"override {key!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = _parse_value(value)
    return tree


def build_config(tree: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as error:
        raise BadInput(f"{source}: {validation_message(error, 'config key')}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader (plain data only) that refuses a mapping with a repeated key: plain YAML keeps the
    last value silently, so `beta: 0.1` twice would run whichever came last without a word."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A YAML mapping from a file (safe loading: plain data only; no repeated keys), or BadInput naming the file."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{what} not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not UTF-8 text") from None
    try:
        tree = yaml.load(text, Loader=_UniqueKeyLoader) or {}  # a SafeLoader
    except yaml.MarkedYAMLError as error:
        where = f"line {error.problem_mark.line + 1}: " if error.problem_mark else ""
        raise BadInput(f"{path}: {where}not valid YAML ({error.problem or error.context})") from None
    except yaml.YAMLError as error:
        raise BadInput(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None
    if not isinstance(tree, dict):
        raise BadInput(f"{path}: the top level must be a mapping of keys")
    return tree


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    tree = read_yaml(path) if path else {}
    tree = apply_overrides(tree, overrides or [])
    return build_config(tree, str(path) if path else "config")
