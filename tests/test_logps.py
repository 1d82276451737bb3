"""Per-sequence log-probs equal a naive per-sequence log_softmax + gather, padding and prompt masking included."""

import pytest
import torch

from harness.data import Formatter, collate
from harness.embedded.build import build_base_model, build_tokenizer
import harness.logps
from harness.logps import CHOSEN, MISMATCHED, REJECTED, policy_logps, selected_logps, token_logps

from .conftest import shared_path


def naive_completion_logp(model, prompt, completion):
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    return sum(logp[len(prompt) + j - 1, token].item() for j, token in enumerate(completion))


def check_against_naive(model, examples, pad):
    batch = collate(examples, None, pad)
    with torch.no_grad():
        got = policy_logps(model, batch, with_prompt=True)
    flat = [seq for example in examples for seq in example]
    for role, values, counts in ((CHOSEN, got.chosen, got.chosen_tokens), (REJECTED, got.rejected, got.rejected_tokens)):
        sequences = [(p, c) for p, c, r in flat if r == role]
        assert len(values) == len(sequences)
        for (prompt, completion), value, count in zip(sequences, values, counts):
            assert int(count) == len(completion)
            assert value.item() == pytest.approx(naive_completion_logp(model, prompt, completion), abs=1e-4)
    return got


def test_logps_match_naive_on_tiny_llama():
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    model = build_base_model(tokenizer, seed=0).eval()
    formatter = Formatter(tokenizer, max_length=64, max_prompt_length=32)
    rows = [("review pizza price :", "the pizza price is great .", "the lamp is bad and bad and bad and bad ."),
            ("review lamp sound :", "the lamp sound is okay and nice and superb and good .", "the lamp is dull ."),
            ("review bike size :", "the bike size is good .", "the bike size is poor .")]
    examples = []
    for prompt, chosen, rejected in rows:
        p, (c, r) = formatter.encode(prompt, [chosen, rejected])
        examples.append([(p, c, CHOSEN), (p, r, REJECTED)])
    lengths = {len(p) + len(c) for ex in examples for p, c, _ in ex}
    assert len(lengths) > 1, "the rows must have different lengths so that padding is exercised"
    got = check_against_naive(model, examples, tokenizer.pad_token_id)
    assert got.kl is None
    # Prompt log-probs exclude the first token (nothing predicts it).
    assert got.chosen_prompt_tokens.tolist() == [len(ex[0][0]) - 1 for ex in examples]


def test_padding_and_prompt_tokens_do_not_change_completion_logps():
    tokenizer = build_tokenizer()
    model = build_base_model(tokenizer, seed=1).eval()
    f = Formatter(tokenizer, max_length=64, max_prompt_length=32)
    p, (good, bad, long_good) = f.encode("review pizza price :", [
        "the pizza is good .", "the pizza is bad .", "the pizza price is good and great and nice and lovely and superb ."])
    short = [(p, good, CHOSEN), (p, bad, REJECTED)]
    long = [(p, long_good, CHOSEN), (p, bad, REJECTED)]
    with torch.no_grad():
        alone = policy_logps(model, collate([short], None, tokenizer.pad_token_id))
        padded = policy_logps(model, collate([short, long], None, tokenizer.pad_token_id))
    assert padded.chosen[0].item() == pytest.approx(alone.chosen[0].item(), abs=1e-5)
    assert padded.rejected[0].item() == pytest.approx(alone.rejected[0].item(), abs=1e-5)


def test_mismatched_rows_fill_the_kl_field():
    tokenizer = build_tokenizer()
    model = build_base_model(tokenizer, seed=2).eval()
    f = Formatter(tokenizer, max_length=64, max_prompt_length=32)
    p, (c1, c2) = f.encode("review bike size :", ["the bike is good .", "the lamp is dull ."])
    examples = [[(p, c1, CHOSEN), (p, c2, MISMATCHED)], [(p, c2, REJECTED), (p, c1, MISMATCHED)]]
    with torch.no_grad():
        got = policy_logps(model, collate(examples, None, tokenizer.pad_token_id))
    assert len(got.chosen) == 1 and len(got.rejected) == 1 and len(got.kl) == 2
    assert got.kl[0].item() == pytest.approx(naive_completion_logp(model, p, c2), abs=1e-4)


def test_logps_match_naive_with_the_real_gpt2_tokenizer():
    from transformers import GPT2TokenizerFast, LlamaConfig, LlamaForCausalLM

    tokenizer = GPT2TokenizerFast.from_pretrained(str(shared_path("data", "tokenizers", "gpt2")))
    assert len(tokenizer) == 50257
    tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)).eval()
    f = Formatter(tokenizer, max_length=40, max_prompt_length=16)
    prompt = "Human: what is the capital of France?\n\nAssistant:"
    p, (chosen, rejected) = f.encode(prompt, [" Paris, of course.", " I do not know, sorry about that, it is hard."])
    examples = [[(p, chosen, CHOSEN), (p, rejected, REJECTED)]]
    check_against_naive(model, examples, tokenizer.pad_token_id)


def _random_batch(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, model.config.vocab_size, (6, 20), generator=generator)
    attention = torch.ones_like(ids)
    attention[2, 15:] = 0  # padding
    select = torch.rand(6, 19, generator=generator) > 0.4
    select &= attention[:, 1:].bool()
    return ids, attention, select


@pytest.mark.parametrize("chunk", [3, 2048])
def test_head_on_selected_positions_equals_full_logits_with_gradients(monkeypatch, chunk):
    """The LM head on gathered positions, in chunks, gives the full-logits values and the same gradients."""
    monkeypatch.setattr(harness.logps, "LOGITS_CHUNK", chunk)
    tokenizer = build_tokenizer()
    model = build_base_model(tokenizer, seed=3)
    ids, attention, select = _random_batch(model)
    full = token_logps(model, ids, attention)[select]
    full.sum().backward()
    want = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    got = selected_logps(model, ids, attention, select)
    got.sum().backward()
    assert torch.allclose(got, full, atol=1e-5)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, want[name], atol=1e-5), name


def test_head_on_selected_positions_through_a_lora_wrapper():
    from peft import LoraConfig, get_peft_model

    tokenizer = build_tokenizer()
    model = get_peft_model(build_base_model(tokenizer, seed=4),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj", "lm_head"], init_lora_weights=False))
    ids, attention, select = _random_batch(model, seed=1)
    assert harness.logps._output_head(model) is not None  # the gathered-positions path, through the wrapper
    with torch.no_grad():
        assert torch.allclose(selected_logps(model, ids, attention, select), token_logps(model, ids, attention)[select],
                              atol=1e-5)


def test_a_model_that_post_processes_its_logits_takes_the_full_path():
    tokenizer = build_tokenizer()
    model = build_base_model(tokenizer, seed=5)
    model.config.final_logit_softcapping = 30.0  # the head alone would miss what the forward does after it
    assert harness.logps._output_head(model) is None
    ids, attention, select = _random_batch(model, seed=2)
    with torch.no_grad():
        assert torch.equal(selected_logps(model, ids, attention, select), token_logps(model, ids, attention)[select])


def _varied_batch(model, seed: int = 0):
    """12 right-padded rows of 3 to 20 tokens."""
    generator = torch.Generator().manual_seed(seed)
    lengths = [3, 20, 5, 7, 11, 4, 16, 9, 6, 13, 8, 10]
    ids = torch.zeros((len(lengths), max(lengths)), dtype=torch.long)
    attention = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(4, model.config.vocab_size, (n,), generator=generator)
        attention[i, :n] = 1
    select = attention[:, 1:].bool() & (torch.rand(len(lengths), max(lengths) - 1, generator=generator) > 0.3)
    return ids, attention, select, lengths


def test_packed_rows_give_the_padded_batchs_log_probs_and_gradients():
    """Short rows packed into shared rows (harness/logps.py: per-sequence position ids, a block-causal mask) give
    the padded batch's log-probs and gradients, on fewer rows."""
    from harness.data import pack_rows

    tokenizer = build_tokenizer()
    model = build_base_model(tokenizer, seed=6)
    ids, attention, select, lengths = _varied_batch(model)
    plan = pack_rows(lengths, ids.shape[1])
    assert plan["bins"] < len(lengths)
    for row in range(plan["bins"]):  # every sequence inside its row, none overlapping another
        spans = sorted((int(o), int(o) + n) for b, o, n in zip(plan["bin"], plan["offset"], lengths) if b == row)
        assert spans[-1][1] <= ids.shape[1] and all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    padded = selected_logps(model, ids, attention, select)
    padded.sum().backward()
    want = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    packed = selected_logps(model, ids, attention, select, plan)
    packed.sum().backward()
    assert model._harness_packs is True  # the first packed batch matched its padded forward
    assert torch.allclose(packed, padded, atol=1e-5)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, want[name], atol=1e-5), name


class IgnoresPositionIds(torch.nn.Module):
    """A model that drops position ids: packed sequences would attend to their neighbours."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)


def test_a_model_that_ignores_position_ids_is_run_padded():
    from harness.data import pack_rows

    tokenizer = build_tokenizer()
    model = IgnoresPositionIds(build_base_model(tokenizer, seed=7))
    ids, attention, select, lengths = _varied_batch(model, seed=1)
    with torch.no_grad():
        got = selected_logps(model, ids, attention, select, pack_rows(lengths, ids.shape[1]))
        want = selected_logps(model, ids, attention, select)
    assert model._harness_packs is False and torch.equal(got, want)


@pytest.mark.parametrize("ignores_positions", [False, True])
def test_packing_is_checked_at_the_precision_the_model_runs_in(ignores_positions):
    """Under bf16 autocast packed and padded rows differ by bf16's rounding, not by float32's: the check still
    packs a model that keeps sequences apart, and still refuses one that lets them see each other."""
    from harness.data import pack_rows
    from harness.logps import _output_head, packs

    model = build_base_model(build_tokenizer(), seed=6)
    model = IgnoresPositionIds(model) if ignores_positions else model
    ids, attention, _, lengths = _varied_batch(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert packs(model, _output_head(model), ids, attention, pack_rows(lengths, ids.shape[1])) is not ignores_positions


def test_the_packing_check_runs_no_collective(monkeypatch):
    """Each process checks packing on its own first packed batch, so the check must not go through DDP's forward
    (it broadcasts buffers: one process checking while another trains pairs different collectives, which gloo
    reported as 'Received data size doesn't match' in a resumed 2-worker trial); a model sharded over processes
    is not packed at all."""
    import socket

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from harness.data import pack_rows
    from harness.logps import _output_head, packs

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        model = DistributedDataParallel(build_base_model(build_tokenizer(), seed=6))
        ids, attention, _, lengths = _varied_batch(model.module)
        calls = []
        monkeypatch.setattr(DistributedDataParallel, "forward", lambda self, *a, **k: calls.append(1))
        assert packs(model, _output_head(model), ids, attention, pack_rows(lengths, ids.shape[1])) is True
        assert calls == [] and model.module._harness_packs is True  # checked on the wrapped module
        monkeypatch.setattr(dist, "get_world_size", lambda *a: 2)  # a plain (e.g. FSDP2-sharded) model on 2 processes
        plain = build_base_model(build_tokenizer(), seed=6)
        assert packs(plain, _output_head(plain), ids, attention, pack_rows(lengths, ids.shape[1])) is False
        assert not hasattr(plain, "_harness_packs")
    finally:
        dist.destroy_process_group()
