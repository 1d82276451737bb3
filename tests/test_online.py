"""Online methods: PPO's pieces against hand-computed values, RLOO against TRL 1.16's numbers, an online
method defined in tests trains through the backend, and a PPO run resumes to the same weights."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import harness
import methods
from harness.config import load_config
from harness.errors import BadInput
from harness.logps import ROLLOUTS, TokenLogps
from harness.online import Rollout
from harness.record import RunRecord
from methods import ONLINE_METRICS, LossOutput, Method, register
from methods.ppo import adaptive_kl, clipped_policy_loss, clipped_value_loss, gae, last_token_rewards

from .conftest import REPO, call_cli, quick_overrides, run_cli

# ------------------------------------------------------------------ PPO's pieces, by hand


def test_gae_matches_a_hand_computed_example():
    # Row 0: three completion tokens. gamma 0.9, lam 0.8 (gamma * lam = 0.72), V after the last token = 0:
    #   delta_2 = 2 + 0 - 1.5 = 0.5                 A_2 = 0.5
    #   delta_1 = 0 + 0.9 * 1.5 - 1.0 = 0.35        A_1 = 0.35 + 0.72 * 0.5 = 0.71
    #   delta_0 = 1 + 0.9 * 1.0 - 0.5 = 1.4         A_0 = 1.4 + 0.72 * 0.71 = 1.9112
    # Row 1: the same recursion over its masked positions 1..2 only (a prompt token before, padding after):
    #   delta_2 = 2 - 1.0 = 1.0                     A_2 = 1.0
    #   delta_1 = 1 + 0.9 * 1.0 - 0.5 = 1.4         A_1 = 1.4 + 0.72 * 1.0 = 2.12
    rewards = torch.tensor([[1.0, 0.0, 2.0, 0.0], [9.0, 1.0, 2.0, 9.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 1.0, 1.5, 0.0], [9.0, 0.5, 1.0, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    assert advantages.flatten().tolist() == pytest.approx([1.9112, 0.71, 0.5, 0.0, 0.0, 2.12, 1.0, 0.0], abs=1e-12)
    assert returns.flatten().tolist() == pytest.approx([2.4112, 1.71, 2.0, 0.0, 0.0, 2.62, 2.0, 0.0], abs=1e-12)


def test_score_lands_on_the_last_completion_token():
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    assert last_token_rewards(torch.tensor([3.0, -1.0]), mask).tolist() == [[0, 0, 3, 0], [0, 0, 0, -1]]


def test_clipped_policy_loss_matches_hand_computed_values():
    # ratios 1.5, 0.5, 1.1 with advantages 1, 1, -2 and eps 0.2; per token max(-A r, -A clip(r)):
    #   max(-1.5, -1.2) = -1.2     max(-0.5, -0.8) = -0.5     max(2.2, 2.2) = 2.2     mean = 0.5 / 3
    old = torch.tensor([[-1.0, -2.0, -0.5, 0.0]], dtype=torch.float64)
    new = old + torch.log(torch.tensor([[1.5, 0.5, 1.1, 1.0]], dtype=torch.float64))
    advantages = torch.tensor([[1.0, 1.0, -2.0, 7.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)  # the last position is padding
    loss, clipped = clipped_policy_loss(new, old, advantages, mask, eps=0.2)
    assert loss.item() == pytest.approx(0.5 / 3, abs=1e-12)
    # ratios 1.5 and 0.5 lie outside [0.8, 1.2], but only 1.5's clip takes effect (A > 0 and r > 1 + eps); at 0.5
    # the unclipped term is the larger loss, so the token keeps its gradient: TRL counts 1 of 3
    assert clipped.item() == pytest.approx(1 / 3)


def test_clipped_value_loss_matches_hand_computed_values():
    # token 0: V 2.0, V_old 1.0, G 1.5: (2.0 - 1.5)^2 = 0.25; clipped V 1.2: (1.2 - 1.5)^2 = 0.09 -> 0.25
    # token 1: V 0.5, V_old 0.0, G 1.0: (0.5 - 1.0)^2 = 0.25; clipped V 0.2: (0.2 - 1.0)^2 = 0.64 -> 0.64
    # 1/2 * mean(0.25, 0.64) = 0.2225
    values = torch.tensor([[2.0, 0.5]], dtype=torch.float64)
    old = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    returns = torch.tensor([[1.5, 1.0]], dtype=torch.float64)
    loss = clipped_value_loss(values, old, returns, torch.ones_like(values), eps=0.2)
    assert loss.item() == pytest.approx(0.2225, abs=1e-12)


def test_adaptive_kl_controller_follows_ziegler_et_al():
    # beta <- beta * (1 + clip(kl / target - 1, -0.2, 0.2) * n / horizon)
    assert adaptive_kl(0.1, kl=12.0, target=6.0, n=64, horizon=10000) == pytest.approx(0.1 * (1 + 0.2 * 64 / 10000))
    assert adaptive_kl(0.1, kl=5.0, target=6.0, n=64, horizon=10000) == pytest.approx(0.1 * (1 - (1 / 6) * 64 / 10000))
    assert adaptive_kl(0.1, kl=0.0, target=6.0, n=100, horizon=100) == pytest.approx(0.1 * 0.8)  # error clipped at -0.2
    assert adaptive_kl(0.1, kl=6.0, target=6.0, n=100, horizon=100) == pytest.approx(0.1)


# ------------------------------------------------------------------ RLOO against TRL 1.16


def _rloo_golden():
    return json.loads((REPO / "tests" / "data" / "trl-1.16-rloo-golden.json").read_text())


@pytest.mark.parametrize("case", ["rloo_normalize_false", "rloo_normalize_true"])
def test_rloo_matches_trl(case):
    """Golden numbers from TRL 1.16's RLOOTrainer (tests/data/make_rloo_golden.py says how)."""
    data = _rloo_golden()
    x = {k: torch.tensor(v, dtype=torch.float64) for k, v in data["inputs"].items()}
    golden = data["cases"][case]
    method = methods.get("rloo", **golden["params"])
    n = len(x["scores"])
    rollout = Rollout(input_ids=torch.zeros(n, 5, dtype=torch.long), attention_mask=torch.ones(n, 5, dtype=torch.long),
                      mask=x["mask"], group=torch.arange(n // method.samples_per_prompt).repeat_interleave(method.samples_per_prompt),
                      scores=x["scores"], logps=x["old"], ref_logps=x["ref"])
    rollout.fields, _ = method.advantages(rollout)
    assert rollout.fields["advantages"].tolist() == pytest.approx(golden["advantages"], abs=1e-12)
    out = method.loss(TokenLogps(x["new"], x["mask"]), rollout)
    assert out.loss.item() == pytest.approx(golden["loss"], abs=1e-12)
    assert 0 < out.metrics["policy/clipfrac"] < 1  # the inputs exercise both sides of the clip


# ------------------------------------------------------------------ end to end on the embedded task

FAST = {"online.proxy_steps": 50, "online.prompts_per_rollout": 8, "train.batch_size": 8, "online.max_new_tokens": 12}


@register
class ToyReinforce(Method):
    """Defined only here: REINFORCE with the batch-mean score as baseline, no KL term."""

    name = "toy_reinforce"
    consumes = frozenset({ROLLOUTS})

    def advantages(self, rollout):
        return {"advantages": rollout.scores - rollout.scores.mean()}, {}

    def loss(self, policy, rollout):
        return LossOutput(-(rollout.fields["advantages"] * policy.summed()).mean(), {})


def test_an_online_method_registered_in_tests_trains(tmp_path, embedded):
    record = harness.train(load_config(None, quick_overrides(tmp_path, **{"method.name": "toy_reinforce", **FAST,
                                                                          "train.log_steps": 1})))
    assert record.status == "completed" and record.method_facts["kind"] == "online"
    m = record.metrics
    assert m["train_steps"] == 4 and m["samples_trained"] == 4 * 8
    assert m["tokens_generated"] > 0 and m["tokens_forwarded"] > m["tokens_trained"] > 0
    assert record.dataset["train_prompts"] > 8 and "proxy_reward" in m and "proxy_win_rate" in m
    assert 0.5 < m["proxy_agreement_heldout"] <= 1  # the proxy, even trained briefly, ranks pairs better than chance
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert history[0]["rollout/kl"] == 0.0  # the first rollout comes from the SFT weights themselves
    assert set(ONLINE_METRICS) <= set(history[0])  # the loop logs them for any online method


@pytest.mark.parametrize("precision", ["none", "bf16"])
def test_ppo_first_minibatch_has_ratio_one_and_zero_kl(tmp_path, embedded, precision):
    """Dropout off and old log-probs from the same weights: nothing is clipped and the ratio is 1. Under bf16
    autocast (on CPU here, as on a GPU) too: sampling, the old policy's and the frozen reference's log-probs
    and the training forward all compute under the same autocast from the same fp32 weights, so KL at step 0
    and the ratio stay within 1e-6 of 0 and 1 (measured: exactly); a reference or old-policy pass outside the
    autocast is off by the bf16 rounding of ~1e-2 nats per sequence."""
    # its own process: accelerate's state (the autocast with it) is fixed once per process
    result = run_cli("train", *quick_overrides(tmp_path, **{"method.name": "ppo", **FAST, "train.log_steps": 1,
                                                             "eval.num_prompts": 0, "model.mixed_precision": precision}))
    assert result.returncode == 0, result.stderr[-3000:]
    record = RunRecord.read(tmp_path / "run")
    first = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][0]
    assert record.status == "completed"
    assert first["policy/approxkl"] == pytest.approx(0.0, abs=1e-12) and first["policy/clipfrac"] == 0.0
    assert first["policy/ratio"] == pytest.approx(1.0, abs=1e-6)
    assert first["rollout/kl"] == pytest.approx(0.0, abs=1e-6)
    autocast = {"none": "no autocast", "bf16": "bfloat16 autocast"}[precision]
    for part in ("training", "generation", "old log-probs", "reference log-probs", "evaluation"):
        assert record.precision[part] == f"float32 weights, {autocast}", part


def test_killed_ppo_run_resumes_to_the_same_weights(tmp_path, embedded):
    """8 steps straight (4 per rollout batch of 8 prompts x 2 epochs / 4 per minibatch), with the adaptive
    KL controller on so that resume must restore beta too; then the same run again in the same folder,
    which resumes from its step-4 checkpoint, as a run killed after it would."""
    common = {"method.name": "ppo", "method.target_kl": 0.01, "method.horizon": 10, **FAST, "train.batch_size": 4,
              "train.max_steps": 8, "train.save_steps": 4, "train.log_steps": 1, "eval.num_prompts": 0}
    harness.train(load_config(None, quick_overrides(tmp_path, **common)))
    run_dir = tmp_path / "run"
    assert (run_dir / "checkpoints" / "step-4").is_dir()
    weights = load_file(str(run_dir / "model" / "model.safetensors"))
    resumed = harness.train(load_config(None, quick_overrides(tmp_path, **common)))
    again = load_file(str(run_dir / "model" / "model.safetensors"))
    assert resumed.metrics["train_steps"] == 8
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    logged = [row for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "step" in row]
    assert [row["step"] for row in logged] == [1, 2, 3, 4, 5, 6, 7, 8, 5, 6, 7, 8]
    straight, replayed = logged[4:8], logged[8:]
    assert [r["beta"] for r in straight] == [r["beta"] for r in replayed] and straight[0]["beta"] != logged[0]["beta"]
    assert [r["loss"] for r in straight] == [r["loss"] for r in replayed]


def test_methods_command_lists_the_online_methods():
    result = call_cli("methods")
    assert result.returncode == 0, result.stderr
    for name, param in (("ppo", "target_kl"), ("ppo", "lam"), ("rloo", "k")):
        assert name in result.stdout and param in result.stdout
    assert methods.get_class("ppo").kind == methods.get_class("rloo").kind == "online"
    assert math.isclose(methods.get("ppo").params.beta, methods.get("dpo").params.beta)  # one beta knob


# ------------------------------------------------------------------ PPO end to end against TRL 0.11's PPOTrainer


def _trl_011_ppo(logprobs, ref_logprobs, values, scores, mask, new_logprobs, vpreds, kl_coef, gamma, lam,
                 cliprange, cliprange_value, vf_coef):
    """An independent transcription of TRL 0.11's PPOTrainer (trl/trainer/ppo_trainer.py: compute_rewards,
    compute_advantages, loss; trl/core.py: masked_mean, masked_var, masked_whiten), on full-length tensors
    whose `mask` marks the response tokens, as its batched_forward_pass leaves them."""
    def masked_mean(x, m):
        return (x * m).sum() / m.sum()

    def masked_whiten(x, m):
        mean = masked_mean(x, m)
        var = masked_mean((x - mean) ** 2, m) * m.sum() / (m.sum() - 1)  # masked_var(unbiased=True)
        return (x - mean) * torch.rsqrt(var + 1e-8)

    rewards = []
    for score, logprob, ref_logprob, m in zip(scores, logprobs, ref_logprobs, mask):  # compute_rewards
        reward = -kl_coef * (logprob - ref_logprob)  # kl_penalty "kl"
        reward[m.nonzero()[-1]] += score
        rewards.append(reward)
    rewards = torch.stack(rewards)
    values, rewards = values * mask, rewards * mask  # compute_advantages
    lastgaelam, reversed_advantages, length = 0, [], rewards.shape[-1]
    for t in reversed(range(length)):
        nextvalues = values[:, t + 1] if t < length - 1 else 0.0
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        reversed_advantages.append(lastgaelam)
    advantages = torch.stack(reversed_advantages[::-1]).transpose(0, 1)
    returns = advantages + values
    advantages = masked_whiten(advantages, mask)
    vpredclipped = torch.max(torch.min(vpreds, values + cliprange_value), values - cliprange_value)  # loss
    vf_loss = 0.5 * masked_mean(torch.max((vpreds - returns) ** 2, (vpredclipped - returns) ** 2), mask)
    ratio = torch.exp(new_logprobs - logprobs)
    pg_losses, pg_losses2 = -advantages * ratio, -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    pg_loss = masked_mean(torch.max(pg_losses, pg_losses2), mask)
    pg_clipfrac = masked_mean(torch.gt(pg_losses2, pg_losses).double(), mask)
    return advantages, returns, pg_loss + vf_coef * vf_loss, pg_clipfrac


def _random_rollout(seed: int = 0, n: int = 6, length: int = 9):
    """Rows of prompt tokens, a response of 1-6 tokens, right padding; random log-probs, values and scores."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, length, dtype=torch.float64)
    for row in range(n):
        start = int(torch.randint(0, 3, (1,), generator=g))
        mask[row, start:start + int(torch.randint(1, 7, (1,), generator=g))] = 1
    draw = lambda scale=1.0: torch.randn(n, length, generator=g, dtype=torch.float64) * scale  # noqa: E731
    old = -draw().abs() - 0.5
    return {"mask": mask, "old": old, "ref": old + draw(0.3), "values": draw(), "scores": torch.randn(n, generator=g, dtype=torch.float64) * 2,
            "new": old + draw(0.3), "vpreds": draw()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ppo_advantages_and_loss_match_a_transcription_of_trl_011(seed):
    """Rewards (KL shaping and the score on the last token), GAE, whitening, the clipped policy and value losses
    and the clip fraction: a wrong KL sign, dropped whitening or a wrong clip count makes this fail."""
    x = _random_rollout(seed)
    p = dict(beta=0.2, gamma=0.99, lam=0.9, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1)
    method = methods.get("ppo", **p)
    mask = x["mask"]
    n, t = mask.shape
    rollout = Rollout(torch.zeros(n, t + 1, dtype=torch.long), torch.ones(n, t + 1, dtype=torch.long), mask,
                      torch.arange(n), x["scores"], x["old"] * mask, x["ref"] * mask, x["values"] * mask)
    rollout.fields, _ = method.advantages(rollout)
    out = method.loss(TokenLogps(x["new"] * mask, mask, x["vpreds"] * mask), rollout)
    advantages, returns, loss, clipfrac = _trl_011_ppo(
        x["old"], x["ref"], x["values"], x["scores"], mask, x["new"], x["vpreds"], p["beta"], p["gamma"], p["lam"],
        p["cliprange"], p["cliprange_value"], p["vf_coef"])
    on = mask > 0
    assert torch.allclose(rollout.fields["advantages"][on], advantages[on], atol=1e-12)
    assert torch.allclose(rollout.fields["returns"][on], returns[on], atol=1e-12)
    assert out.loss.item() == pytest.approx(loss.item(), abs=1e-12)
    assert float(out.metrics["policy/clipfrac"]) == pytest.approx(clipfrac.item(), abs=1e-12)
    assert 0 < clipfrac.item() < 1  # the inputs exercise the clip


def test_ppo_accepts_beta_zero_and_refuses_a_controller_that_cannot_move():
    assert methods.get("ppo", beta=0.0).params.beta == 0.0
    with pytest.raises(BadInput, match="target_kl needs beta > 0"):
        methods.get("ppo", beta=0.0, target_kl=6.0)


# ------------------------------------------------------------------ every online method learns a toy reward


TOKEN, EOS, PAD = 5, 1, 0


def _toy_policy(seed: int = 0):
    """A one-layer GPT-2 over 12 tokens (about 9k parameters): fast enough to train online in seconds."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=12, n_positions=16, n_embd=32, n_layer=1, n_head=2, bos_token_id=EOS,
                        eos_token_id=EOS, pad_token_id=PAD, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


def _toy_reward(prompts, completions, ended):
    """Share of the completion's 6 slots holding token 5: about 1/12 for the untrained policy, 1 at best."""
    return [sum(token == TOKEN for token in c) / 6 for c in completions]


ONLINE_LEARNERS = {"ppo": {"beta": 0.01}, "rloo": {"beta": 0.01, "k": 4}, "grpo": {"beta": 0.01, "k": 4},
                   "online_dpo": {"beta": 0.1}}


@pytest.mark.parametrize("name", sorted(ONLINE_LEARNERS))
def test_every_online_method_learns_a_toy_reward_through_the_backend_loop(tmp_path, name):
    """The backend's own online loop (train_online: sampling, scoring, reference log-probs, the method's
    advantages and loss, the optimizer) on a toy policy and reward: the mean score over the last 10 steps
    beats the first rollout batch's by at least 0.3 (of a 0-1 scale; the untrained policy scores ~0.08)."""
    import copy

    from harness.config import OnlineConfig, TrainConfig
    from harness.online import train_online
    from harness.reference import Reference
    from harness.trainer import OneProcess

    policy = _toy_policy()
    reference = Reference(copy.deepcopy(policy).eval(), "toy-sft")
    tokenizer = type("Toy", (), {"pad_token_id": PAD, "eos_token_id": EOS})()
    prompts = [(f"p{i}", [2 + i % 3, 3 + i % 2]) for i in range(16)]
    method = methods.get(name, **ONLINE_LEARNERS[name])
    cfg = TrainConfig(learning_rate=3e-3, max_steps=48, batch_size=16, warmup_ratio=0.0, lr_scheduler="constant",
                      save_steps=0, log_steps=1, resume=False)
    online = OnlineConfig(prompts_per_rollout=8 if method.samples_per_prompt > 1 else 16, epochs=2, max_new_tokens=6)
    logged = []
    train_online(OneProcess(), policy, method, prompts, _toy_reward, reference, tokenizer, cfg, online, tmp_path,
                 lambda step, means: logged.append(means))
    scores = [row["rollout/score"] for row in logged]  # each step logs the score of the batch it trains on
    first, last = scores[0], sum(scores[-10:]) / 10
    print(f"{name}: mean score {first:.3f} -> {last:.3f}")
    assert last - first >= 0.3, f"{name}: score {first:.3f} -> {last:.3f}"
    assert "policy/entropy" in logged[0] and logged[-1]["policy/entropy"] < logged[0]["policy/entropy"]


# ------------------------------------------------------------------ what the reward model is shown


def test_the_reward_model_scores_the_prompt_the_policy_saw_and_the_completion_as_sampled(tmp_path, embedded, cache_dir):
    """A 1,000-word prompt: the policy keeps its last data.max_prompt_length tokens, the reward model is shown
    the text of exactly those, and a long text loses its prompt's beginning, never the response (right
    truncation at 1,024 tokens gave a good and a bad response the same score). A completion cut at
    max_new_tokens is scored without the EOS a finished one ends with."""
    from app.context import RunContext
    from evals.judge import RewardModelJudge, embedded_judge

    long_prompt = " ".join(["the pizza is nice ."] * 250) + " review the pizza taste :"
    rows = [{"prompt": long_prompt, "chosen": "the pizza taste is great .", "rejected": "the pizza taste is awful ."},
            {"prompt": "review the soup price :", "chosen": "the soup price is fair .", "rejected": "soup soup soup"}]
    data = tmp_path / "long.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    ctx = RunContext.build(load_config(None, [f"data.source={data}", f"model.path={embedded.sft_path}", "method.name=ppo",
                                              "eval.num_prompts=0", "data.max_prompt_length=12", f"cache_dir={cache_dir}"]))
    (shown_long, ids_long), (shown_short, _) = ctx.training_prompts()
    assert len(ids_long) == 12 and shown_long == ctx.tokenizer.decode(ids_long, skip_special_tokens=True)
    assert shown_long.endswith("review the pizza taste :") and len(shown_long.split()) < 15
    assert shown_short == "review the soup price :"  # an untruncated prompt is passed as it is

    # max_length 40 stands in for a real reward model's 1,024 (this one has seen only short texts)
    judge = RewardModelJudge(embedded_judge(embedded, cache_dir)[0], device="cpu", max_length=40)
    responses = ["the pizza taste is great and superb .", "pizza pizza pizza pizza"]
    good, bad = judge.score([long_prompt] * 2, responses)
    assert len(judge.tokenizer(judge.text(long_prompt, "x"))["input_ids"]) > judge.max_length
    # the response survives truncation, so the two are told apart (which one the judge prefers depends on the
    # judge this CPU type builds: it is a learned proxy, and repetition fools some)
    assert abs(good - bad) > 0.1, (good, bad)
    assert [good, bad] == pytest.approx(judge.score([" ".join(long_prompt.split()[-40:])] * 2, responses), abs=1e-5)
    judge.tokenizer.truncation_side = "right"  # what it did before: both texts cut to the same prompt words
    assert len(set(judge.score([long_prompt] * 2, responses))) == 1
    judge.tokenizer.truncation_side = "left"
    eos = judge.tokenizer.eos_token
    assert judge.text("p", "r").endswith(eos) and not judge.text("p", "r", finished=False).endswith(eos)
    finished, cut = judge.score(["review the pizza taste :"] * 2, ["the pizza taste is great"] * 2, [True, False])
    assert finished != cut
    with pytest.raises(BadInput, match="does not fit its max_length"):
        judge.score(["p"], [" ".join(["great"] * 1100)])


def test_every_eos_id_of_the_generation_config_stops_and_cuts_a_sample():
    """A chat model often ends a turn with a second EOS (e.g. <|eot_id|>): sampling stops at either, and the
    loop counts a completion ending in either as finished."""
    from harness.generation import eos_token_ids, finished, sample

    policy = _toy_policy()
    policy.generation_config.eos_token_id = [EOS, 7]
    tokenizer = type("Toy", (), {"pad_token_id": PAD, "eos_token_id": EOS})()
    assert eos_token_ids(policy, tokenizer) == [EOS, 7]
    completions = sample(policy, tokenizer, [[2, 3]] * 64, max_new_tokens=12, seed=0)
    ended_at_7 = [c for c in completions if 7 in c]
    assert ended_at_7 and all(c.index(7) == len(c) - 1 and EOS not in c[:-1] for c in ended_at_7)
    assert all(finished(c, [EOS, 7]) == (c[-1] in (EOS, 7)) for c in completions)
    assert any(not finished(c, [EOS, 7]) and len(c) == 12 for c in completions)  # some ran to max_new_tokens
    assert policy.generation_config.eos_token_id == [EOS, 7]  # the model's own config is left as it was
