"""What every method is: declared hyperparameters, class facts, and a `loss()` with shared metric keys."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness.logps import INPUTS, PAIRS, ROLLOUTS, LossOutput, SequenceLogps, TokenLogps
from harness.errors import BadInput, validation_message

# Every offline method reports these, so one dashboard fits all of them; online methods report
# ONLINE_METRICS (the rollout's reward-model score, its KL to the reference, its completion length).
SHARED_METRICS = ("rewards/chosen", "rewards/rejected", "margins", "accuracy")
ONLINE_METRICS = ("rollout/score", "rollout/kl", "rollout/length")


def hyper(default: float, sweep: list[float], description: str, **bounds: float) -> Any:
    """A hyperparameter: its default, the values a sweep tries, and its valid bounds (gt/ge/lt/le)."""
    return Field(default, description=description, json_schema_extra={"sweep": sweep}, **bounds)


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# What the loss of a method with a reference model is given as the reference, per batch (exercise 18.3.2):
#   frozen      the SFT model's log-probs, computed once before training (the method as published)
#   none        zeros: the loss sees the policy's log-probs alone (DPO: log pi(y_w) - log pi(y_l))
#   co_trained  the policy's own log-probs, detached, each step: the reference moves with the policy
#   ema         an exponential moving average of the policy's weights (TR-DPO's soft update, Gorbatovski
#               et al., 2024, arXiv:2404.09656): ref <- reference_ema * ref + (1 - reference_ema) * policy
REFERENCES = ("frozen", "none", "co_trained", "ema")


class ReferenceParams(Params):
    """The parameters every method with a reference model declares besides its own: which reference."""

    reference: Literal["frozen", "none", "co_trained", "ema"] = hyper(
        "frozen", ["frozen"], "the loss's reference: frozen (SFT), none, co_trained or ema (methods.REFERENCES)")
    reference_ema: float = hyper(0.99, [0.99], "ema reference: the share of its weights kept at each optimizer step",
                                 ge=0, lt=1)


class Method:
    name: ClassVar[str]
    # What the backend must provide (harness.logps: PAIRS, ROWS, MISMATCHED_ROWS, ROLLOUTS, VALUES), nothing more.
    consumes: ClassVar[frozenset[str]] = frozenset({PAIRS})
    reference_free: ClassVar[bool] = False  # True: the backend skips the reference pass entirely
    # True: the loss reads policy.chosen_prompt (the backend then runs the LM head on prompt tokens too).
    reads_prompt_logps: bool = False
    # Read by the backend, derived from `consumes` (never set by hand): pairs or unpaired rows; offline
    # (fixed preference data) or online (its own rollouts).
    paired: ClassVar[bool] = True
    kind: ClassVar[Literal["offline", "online"]] = "offline"
    # Online only: True when the loss compares the samples of one prompt with each other (online DPO's
    # pairs), so the loop's minibatches must hold whole groups of `samples_per_prompt` sequences.
    whole_groups: ClassVar[bool] = False
    Params: ClassVar[type[Params]] = Params
    paper: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        unknown = set(cls.consumes) - set(INPUTS)
        if unknown:
            raise TypeError(f"{cls.__name__}.consumes: unknown inputs {sorted(unknown)}; the backend provides {INPUTS}")
        cls.paired = PAIRS in cls.consumes
        cls.kind = "online" if ROLLOUTS in cls.consumes else "offline"

    def __init__(self, **params: Any):
        try:
            self.params = self.Params(**params)
        except ValidationError as error:
            message = validation_message(error, "parameter")
            if error.errors()[0]["type"] == "extra_forbidden":
                message += f" (its parameters: {', '.join(self.hyperparameters()) or 'none'})"
            raise BadInput(f"method {self.name!r}: {message}") from None

    @classmethod
    def hyperparameters(cls) -> dict[str, dict[str, Any]]:
        """name -> default, sweep values, bounds and description (what `harness methods` prints)."""
        out = {}
        fields = cls.Params.model_fields
        shared = [name for name in fields if name in ReferenceParams.model_fields]  # after the method's own
        for field_name, info in ((name, fields[name]) for name in [*(n for n in fields if n not in shared), *shared]):
            name = info.serialization_alias or field_name
            bounds = {f.name: getattr(m, f.name) for m in info.metadata for f in dataclasses.fields(m)}
            extra = info.json_schema_extra or {}
            out[name] = {"default": info.default, "sweep": extra.get("sweep", []), "bounds": bounds,
                         "description": info.description or ""}
        return out

    @property
    def reference(self) -> str | None:
        """Which reference the backend gives the loss (REFERENCES); None for a reference-free method."""
        return None if self.reference_free else getattr(self.params, "reference", "frozen")

    def recorded_params(self) -> dict[str, Any]:
        """The hyperparameters as the run record and the config hash hold them (defaults included)."""
        return self.params.model_dump(by_alias=True)

    def check_setup(self, batch_size: int, num_chosen: int, num_rejected: int) -> list[str]:
        """Called by the backend before training: raise BadInput for a setup that cannot work, return warnings
        for one that is legal but suspect. Most methods accept anything."""
        return []

    def implicit_reward(self, logps: torch.Tensor, reference: torch.Tensor | None, tokens: torch.Tensor) -> torch.Tensor:
        """The reward the method implicitly fits, per sequence (for held-out preference accuracy).
        Default: the summed log-ratio to the reference (DPO, KTO)."""
        return logps - reference

    def loss(self, policy: SequenceLogps | TokenLogps, reference_or_rollout) -> LossOutput:
        """Offline: `loss(policy: SequenceLogps, reference: SequenceLogps | None)`.
        Online: `loss(policy: TokenLogps, rollout: Rollout)`, the rollout a minibatch carrying what
        `advantages` added."""
        raise NotImplementedError

    # ---- online methods only (kind "online"): what the online loop asks of them

    @property
    def samples_per_prompt(self) -> int:
        """Completions sampled per training prompt in a rollout batch."""
        return 1

    def advantages(self, rollout) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Once per rollout batch, without gradients: (per-sequence tensors the loss reads, e.g. advantages
        and returns; metrics to log)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """What changes while training (an adaptive KL coefficient), saved with checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def mean_over_processes(values: torch.Tensor) -> torch.Tensor:
    """The mean of `values` over the rows of every process of a launch (TRL gathers KTO's z_ref so);
    in a single process, the plain mean. One all-reduce of (sum, count), so shards may differ in size."""
    from accelerate.utils import reduce

    total = reduce(torch.stack([values.sum(), torch.tensor(float(values.numel()), device=values.device)]), "sum")
    return total[0] / total[1]


def batch_std(values: torch.Tensor) -> torch.Tensor:
    """Bessel-corrected std over the rollout batches of every process (equal sizes), as TRL's nanstd of the
    gathered rewards; in a single process, the plain std."""
    from accelerate import PartialState

    n = len(values) * PartialState().num_processes
    mean = mean_over_processes(values)
    return (mean_over_processes((values - mean) ** 2) * n / (n - 1)).sqrt()


def reward_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, paired: bool = True) -> dict[str, torch.Tensor]:
    """The shared keys from per-row implicit rewards. Paired: accuracy = share of pairs ranked right.
    Unpaired (desirable vs undesirable rows): share of rows whose reward has the sign of their label.
    Detached tensors, never floats: a float would cost a host sync per micro-batch on a GPU."""
    chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    mean = lambda t: t.mean() if t.numel() else torch.tensor(float("nan"), device=t.device)  # noqa: E731
    if paired:
        accuracy = mean((chosen_rewards > rejected_rewards).float())
    else:
        accuracy = mean(torch.cat([chosen_rewards > 0, rejected_rewards < 0]).float())
    return {
        "rewards/chosen": mean(chosen_rewards),
        "rewards/rejected": mean(rejected_rewards),
        "margins": mean(chosen_rewards) - mean(rejected_rewards),
        "accuracy": accuracy,
    }
