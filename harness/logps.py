"""Per-sequence log-probabilities: the one quantity every offline method's loss is built from.

One forward over the concatenated batch (chosen, rejected and, for KTO, mismatched rows) gives, per
sequence, the summed log-probs of its completion tokens (and, when asked, of its prompt tokens). Prompt
tokens and padding never count towards the completion sum.

The LM head runs only where a log-prob is used: the backbone's hidden states at the selected positions are
gathered and projected to the vocabulary LOGITS_CHUNK positions at a time, so no (batch, length, vocab)
float32 logits tensor is ever built. With a 50k vocabulary the head is most of a small model's compute,
and prompt and padding positions are often half the batch.

Padding is not computed either, where the model allows: a collated batch carries a packing plan (data.py
`pack_rows`: short rows share a row of the batch's length, first fit by decreasing length), and the forward
runs on the packed rows with per-sequence position ids and no attention mask, from which transformers builds
a block-causal mask: every token attends to its own sequence only, as in the padded batch, so the log-probs
are the same (bit for bit in the tests here), on ~30% fewer positions for the embedded task's batches. A
model is packed only after its first packed forward matched its padded one (`packs`); one that does not
honour position ids that way is run padded.
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


LOGITS_CHUNK = 2048  # positions projected to the vocabulary at once: peak logits memory is chunk x vocab floats


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


def _output_head(model):
    """The LM head to project hidden states with, or None where the model's forward does more to its logits
    than the head (soft-capping, scaling): those models take the full-logits path."""
    inner = model.module if hasattr(model, "module") else model  # DDP / accelerate wrappers
    config = getattr(inner, "config", None)
    if config is None or getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return None
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    return head if isinstance(head, torch.nn.Module) else None


def _hidden_states(model, head, **inputs) -> torch.Tensor:
    """The backbone's last hidden states, the forward's own LM head fed no positions."""
    captured = []

    def keep_hidden(module, args):
        captured.append(args[0])
        return (args[0][:, :0],)  # the forward's own head call computes nothing

    handle = head.register_forward_pre_hook(keep_hidden)
    try:
        model(**inputs, use_cache=False)
    finally:
        handle.remove()
    return captured[0]


def _packed_hidden(model, head, input_ids: torch.Tensor, attention_mask: torch.Tensor, packing: dict) -> torch.Tensor:
    """Hidden states (batch, length, hidden) of the padded rows, computed on the packed rows of `packing`: row i
    sits in packed row bin[i] from column offset[i], with its own positions 0..len-1."""
    n, length = input_ids.shape
    columns = torch.arange(length, device=input_ids.device)
    valid = attention_mask.bool()
    bins = packing["bin"].to(input_ids.device)[:, None].expand(n, length)
    target = (packing["offset"].to(input_ids.device)[:, None] + columns).clamp(max=length - 1)
    packed = input_ids.new_zeros((packing["bins"], length))
    packed[bins[valid], target[valid]] = input_ids[valid]
    # a packed row's tail beyond its last sequence keeps positions that restart no sequence it attends to
    positions = columns.repeat(packing["bins"], 1)
    positions[bins[valid], target[valid]] = columns.expand(n, length)[valid]
    return _hidden_states(model, head, input_ids=packed, position_ids=positions)[bins, target]


def packs(model, head, input_ids: torch.Tensor, attention_mask: torch.Tensor, packing: dict) -> bool:
    """Whether `model` computes packed rows as it computes padded ones: checked once per model, on its first
    packed batch (a model that ignores position ids, or builds no block-causal mask from them, would let a
    sequence see its neighbours).

    The check's forwards must not be collectives: each process checks on its own batch, at its own step. So
    under DDP they run on the wrapped module (DDP's own forward broadcasts buffers: one process checking while
    another trains would pair different collectives, gloo's 'Received data size doesn't match'), and a model
    sharded over processes (FSDP, DeepSpeed: every forward gathers parameters) is not packed."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        inner = model.module
    elif hasattr(model, "module") or (torch.distributed.is_available() and torch.distributed.is_initialized()
                                      and torch.distributed.get_world_size() > 1):
        return False
    else:
        inner = model
    verdict = getattr(inner, "_harness_packs", None)
    if verdict is None:
        with torch.no_grad():
            padded = _hidden_states(inner, head, input_ids=input_ids, attention_mask=attention_mask)
            packed = _packed_hidden(inner, head, input_ids, attention_mask, packing)
        valid = attention_mask.bool()
        padded, packed = padded[valid].float(), packed[valid].float()
        kind = padded.device.type
        eps = max(torch.finfo(padded.dtype).eps,
                  torch.finfo(torch.get_autocast_dtype(kind)).eps if torch.is_autocast_enabled(kind) else 0.0)
        if eps < 1e-4:  # float32 kernels: the two agree to rounding
            verdict = bool(torch.allclose(padded, packed, rtol=1e-4, atol=1e-5))
        else:  # bf16/fp16 compute: a few of its epsilons of the states' scale (measured: 0.013 on 0.79 under bf16
            # autocast), where a sequence that sees its neighbours is off by the scale itself (4.7 on 0.79)
            verdict = bool((padded - packed).abs().max() <= 8 * eps * padded.abs().mean())
        inner._harness_packs = verdict
    return verdict


def selected_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, select: torch.Tensor,
                   packing: dict | None = None) -> torch.Tensor:
    """log p(token_t | tokens_<t) at the positions t >= 1 where `select` (batch, length - 1) is True, flat in
    row-major order. The model's forward runs as usual (through any DDP/peft wrapper, so gradients sync),
    with its LM head fed no positions, on the packed rows of `packing` where it saves rows and the model
    `packs`; the head then projects only the selected hidden states, in chunks."""
    head = _output_head(model)
    if head is None:
        return token_logps(model, input_ids, attention_mask)[select]
    if packing is not None and packing["bins"] < len(input_ids) and packs(model, head, input_ids, attention_mask, packing):
        hidden = _packed_hidden(model, head, input_ids, attention_mask, packing)
    else:
        hidden = _hidden_states(model, head, input_ids=input_ids, attention_mask=attention_mask)
    hidden = hidden[:, :-1][select]
    targets = input_ids[:, 1:][select]
    out = []
    for hidden_chunk, target_chunk in zip(hidden.split(LOGITS_CHUNK), targets.split(LOGITS_CHUNK)):
        logits = head(hidden_chunk)
        logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        out.append(logits.gather(-1, target_chunk.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1))
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)


def summed_logps(model, batch: dict[str, torch.Tensor], with_prompt: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Summed completion log-probs per row of a collated batch, and summed prompt log-probs (None unless
    `with_prompt`: the prompt positions then go through the LM head too)."""
    completion = batch["completion_mask"][:, 1:]
    prompt = batch["prompt_mask"][:, 1:]
    select = completion | prompt if with_prompt else completion
    values = selected_logps(model, batch["input_ids"], batch["attention_mask"], select, batch.get("packing"))
    per_token = torch.zeros(select.shape, dtype=values.dtype, device=values.device).masked_scatter(select, values)
    completion_sum = (per_token * completion).sum(-1)
    return completion_sum, (per_token * prompt).sum(-1) if with_prompt else None


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


def policy_logps(model, batch: dict[str, torch.Tensor], with_prompt: bool = False) -> SequenceLogps:
    """The policy's side of the method contract; prompt log-probs only for a method that reads them."""
    completion, prompt = summed_logps(model, batch, with_prompt)
    return split_by_role(completion, prompt, batch)


def reference_logps(batch: dict[str, torch.Tensor]) -> SequenceLogps:
    """The precomputed reference log-probs that the collator attached to the batch."""
    return split_by_role(batch["reference_logps"], None, batch)
