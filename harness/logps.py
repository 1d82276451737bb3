"""Per-sequence log-probabilities: the one quantity every offline method's loss is built from.

One forward over the concatenated batch (chosen, rejected and, for KTO, mismatched rows) gives, per
sequence, the summed log-probs of its completion tokens and of its prompt tokens. Prompt tokens and
padding never count towards the completion sum.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# Roles of the sequences in a batch; the collator orders rows by example, the roles pick them out.
CHOSEN, REJECTED, MISMATCHED = 0, 1, 2

# What a method can ask the backend for (`Method.consumes`); the backend provides exactly what is asked.
PAIRS = "pairs"  # a chosen and a rejected completion of one prompt
ROWS = "rows"  # unpaired rows, each a desirable or an undesirable completion (paired data is split)
MISMATCHED_ROWS = "mismatched_rows"  # each row's prompt with another row's completion: a KL reference point
ROLLOUTS = "rollouts"  # the policy's own samples of training prompts, scored, with per-token log-probs (online)
VALUES = "values"  # per-token value estimates from a value head the backend adds to the policy (online)
INPUTS = (PAIRS, ROWS, MISMATCHED_ROWS, ROLLOUTS, VALUES)


@dataclass
class SequenceLogps:
    """Log-probs of one side (policy or reference) for one batch. The method contract of DESIGN.md.

    For unpaired methods `chosen` holds the desirable rows and `rejected` the undesirable ones, so the
    two may differ in length.
    """

    chosen: torch.Tensor  # (n_chosen,) summed completion log-probs
    rejected: torch.Tensor  # (n_rejected,)
    chosen_tokens: torch.Tensor  # (n_chosen,) completion token counts
    rejected_tokens: torch.Tensor
    kl: torch.Tensor | None = None  # summed log-probs of mismatched prompt/completion pairs (KTO)
    kl_tokens: torch.Tensor | None = None
    # Prompt tokens of the chosen rows (all but the first, which nothing predicts): TRL's ORPO NLL counts them.
    chosen_prompt: torch.Tensor | None = None
    chosen_prompt_tokens: torch.Tensor | None = None


@dataclass
class TokenLogps:
    """The policy's per-token view of a batch of its own rollouts (online methods), shape (n, T) with
    T = sequence length - 1: position t holds log p(token t+1 | tokens <= t). `mask` marks completion
    tokens; values are 0 elsewhere."""

    logps: torch.Tensor
    mask: torch.Tensor  # float, 1 on completion tokens
    values: torch.Tensor | None = None  # value head output per position (methods that consume VALUES)

    def summed(self) -> torch.Tensor:
        return (self.logps * self.mask).sum(-1)


@dataclass
class LossOutput:
    """What a loss returns: the scalar to minimise, and metrics as detached tensors (or floats) that the
    training loop averages over micro-batches and processes when it logs."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor | float] = field(default_factory=dict)


def token_logps(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """log p(token_t | tokens_<t) for t >= 1, shape (batch, length - 1), in float32 or wider."""
    return logps_of_tokens(model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits, input_ids)


def logps_of_tokens(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """`token_logps` from a forward's logits (batch, length, vocab)."""
    logits = logits[:, :-1]
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    targets = input_ids[:, 1:].unsqueeze(-1)
    # gather - logsumexp instead of log_softmax: never materialises a second (batch, length, vocab) tensor.
    return logits.gather(-1, targets).squeeze(-1) - logits.logsumexp(-1)


def summed_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion and prompt log-probs per row of a collated batch."""
    per_token = token_logps(model, batch["input_ids"], batch["attention_mask"])
    completion = batch["completion_mask"][:, 1:].to(per_token.dtype)
    prompt = batch["prompt_mask"][:, 1:].to(per_token.dtype)
    return (per_token * completion).sum(-1), (per_token * prompt).sum(-1)


def split_by_role(completion: torch.Tensor, prompt: torch.Tensor | None, batch: dict[str, torch.Tensor]) -> SequenceLogps:
    """Arrange per-row values into the chosen/rejected/mismatched fields of the method contract."""
    role = batch["role"]
    counts = batch["completion_mask"].sum(-1)
    prompt_counts = batch["prompt_mask"][:, 1:].sum(-1)
    chosen, rejected, mismatched = role == CHOSEN, role == REJECTED, role == MISMATCHED
    has_kl = bool(mismatched.any())
    return SequenceLogps(
        chosen=completion[chosen],
        rejected=completion[rejected],
        chosen_tokens=counts[chosen],
        rejected_tokens=counts[rejected],
        kl=completion[mismatched] if has_kl else None,
        kl_tokens=counts[mismatched] if has_kl else None,
        chosen_prompt=prompt[chosen] if prompt is not None else None,
        chosen_prompt_tokens=prompt_counts[chosen] if prompt is not None else None,
    )


def policy_logps(model, batch: dict[str, torch.Tensor]) -> SequenceLogps:
    completion, prompt = summed_logps(model, batch)
    return split_by_role(completion, prompt, batch)


def reference_logps(batch: dict[str, torch.Tensor]) -> SequenceLogps:
    """The precomputed reference log-probs that the collator attached to the batch."""
    return split_by_role(batch["reference_logps"], None, batch)
