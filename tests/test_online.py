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
from harness.logps import ROLLOUTS, TokenLogps
from harness.online import Rollout
from methods import ONLINE_METRICS, LossOutput, Method, register
from methods.ppo import adaptive_kl, clipped_policy_loss, clipped_value_loss, gae, last_token_rewards

from .conftest import REPO, quick_overrides, run_cli

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
    assert clipped.item() == pytest.approx(2 / 3)  # ratios 1.5 and 0.5 lie outside [0.8, 1.2]


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


def test_ppo_first_minibatch_has_ratio_one_and_zero_kl(tmp_path, embedded):
    record = harness.train(load_config(None, quick_overrides(tmp_path, **{"method.name": "ppo", **FAST,
                                                                          "train.log_steps": 1, "eval.num_prompts": 0})))
    first = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][0]
    assert record.status == "completed"
    # dropout off and old log-probs from the same weights: nothing is clipped and the ratio is exactly 1
    assert first["policy/approxkl"] == 0.0 and first["policy/clipfrac"] == 0.0 and first["rollout/kl"] == 0.0


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
    result = run_cli("methods")
    assert result.returncode == 0, result.stderr
    for name, param in (("ppo", "target_kl"), ("ppo", "lam"), ("rloo", "k")):
        assert name in result.stdout and param in result.stdout
    assert methods.get_class("ppo").kind == methods.get_class("rloo").kind == "online"
    assert math.isclose(methods.get("ppo").params.beta, methods.get("dpo").params.beta)  # one beta knob
