"""Multi-process runs: two processes launched by `accelerate launch` train and log what one process does
with the same global batch.

`accelerate launch --cpu --num_processes 2` starts ONE process (accelerate's multi-CPU path goes through
mpirun, which this machine lacks), so its run says nothing about two processes. `--multi_gpu` is
accelerate's torchrun launcher: on a CPU-only machine it starts two processes and the harness's
Accelerator(cpu=True) joins them over gloo. The test checks world_size == 2 in the record, so it cannot
pass on one process.

Tolerance: the two runs differ only in float32 summation order (DDP's gradient all-reduce against
accelerate's gradient accumulation, and a mean over processes against a mean over micro-batches), so
losses and metrics agree to a few float32 ulps per step: rel 1e-4 over 5 steps leaves two orders of
magnitude of room while a wrong reduction (one process's metrics alone, a per-process z_ref) is off by
percents. (Measured: DPO bit-identical; KTO loss within 1.2e-7 relative, z_ref within 1e-6 absolute.) DPO's
step-for-step comparison runs in tests/test_workers.py, on 2 Ray Train workers (the same loop and Accelerator).
"""

import json
import math
import socket
import subprocess
import sys

import pytest

from .conftest import REPO, run_cli

STEPS = 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(out, **overrides) -> list[str]:
    base = {"output_dir": str(out), "train.max_steps": STEPS, "train.log_steps": 1, "eval.num_prompts": 0,
            "train.save_model": "false", "train.save_steps": 0, "wandb.mode": "disabled", **overrides}
    return [f"{k}={v}" for k, v in base.items()]


def _launch_two(out, **overrides) -> dict:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
               "-m", "harness", "train", *_args(out, **overrides)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "record.json").read_text())


def _one(out, **overrides) -> dict:
    result = run_cli("train", *_args(out, **overrides))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "record.json").read_text())


def _history(out) -> list[dict]:
    return [row for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "step" in row]


def test_kto_reference_point_is_gathered_over_processes(tmp_path, embedded):
    """KTO, 2 processes x 4 rows against 1 process x 8 rows through the backend: the logged mean mismatched
    log-ratio (z_ref before its clamp at 0), z_ref and the loss agree (each process holds 4 rows, so the mean
    of the two per-process losses is the mean over 8). Whether z_ref leaves its clamp here depends on the SFT
    model (one machine's did at lr 1e-3 with the undesirable rows down-weighted, another's stays at 0 for 12
    steps), so the gather itself is checked on fixed log-probs below."""
    kto = {"method.name": "kto", "method.undesirable_weight": 0.05, "train.learning_rate": 1e-3}
    two = _launch_two(tmp_path / "two", **kto, **{"train.batch_size": 4})
    one = _one(tmp_path / "one", **kto, **{"train.batch_size": 8})
    assert two["metrics"]["global_batch_size"] == one["metrics"]["global_batch_size"] == 8
    a, b = _history(tmp_path / "two"), _history(tmp_path / "one")
    # step 1 trains at the warmup's learning rate 0, so step 2 still sees the SFT weights; from step 3 it moved
    # (by 1e-2 to 2e-1 nats, depending on the SFT model this CPU type builds: each is 500x the tolerance below)
    assert all(abs(row["kl_unclamped"]) > 5e-3 for row in b[2:]), [row["kl_unclamped"] for row in b]
    for x, y in zip(a, b):
        # a mean of differences of summed log-probs (~50 nats, float32 ulp ~4e-6): cancellation leaves ~1e-6 of
        # absolute noise; a per-process mean is off by the rows' spread (~1e-2).
        assert x["kl_unclamped"] == pytest.approx(y["kl_unclamped"], abs=2e-5), x["step"]
        assert x["kl"] == pytest.approx(y["kl"], abs=2e-5), x["step"]
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4, abs=1e-6), x["step"]


def _launch_probe(source: str, out) -> None:
    """Run a script on 2 processes (gloo, as the pipeline's Accelerator(cpu=True)); it writes under `out`."""
    script = out / "probe.py"
    script.write_text(source)
    for attempt in range(2):  # once more if a launch fails for its infrastructure (port taken, gloo teardown)
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
                   str(_free_port()), str(script), str(out)]
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
        if result.returncode == 0:
            return
    assert result.returncode == 0, result.stderr[-3000:]


GATHER_PROBE = """
import json, sys, torch
from accelerate import Accelerator
import methods
from harness import SequenceLogps
rank = Accelerator(cpu=True).process_index  # as the pipeline starts it: gloo across the 2 processes
g = torch.Generator().manual_seed(0)
chosen, rejected, kl = (torch.randn(8, generator=g, dtype=torch.float64) for _ in range(3))
rows = slice(4 * rank, 4 * rank + 4)  # this process's 4 rows of 8: 2 desirable, 2 undesirable, 4 mismatched
zero = torch.zeros(2, dtype=torch.float64)
policy = SequenceLogps(chosen[rows][:2], rejected[rows][:2], zero, zero, kl=kl[rows] + 1.0)  # z_ref > 0
reference = SequenceLogps(zero, zero, zero, zero, kl=torch.zeros(4, dtype=torch.float64))
out = methods.get("kto", beta=0.5).loss(policy, reference)
json.dump({"loss": out.loss.item(), "kl": float(out.metrics["kl"])}, open(sys.argv[1] + f"/{rank}.json", "w"))
torch.distributed.destroy_process_group()  # an exit with the gloo group alive can abort ("terminate called")
"""


def test_kto_z_ref_is_the_mean_over_every_processs_rows(tmp_path):
    """KTO's loss on fixed log-probs with z_ref > 0, in 2 processes of 4 rows each: each process's z_ref is
    the mean over all 8 mismatched rows (as TRL gathers it), so its loss is the one a single process computes
    with that z_ref for its rows, not the one with its own 4 rows' mean."""
    import torch

    from harness import SequenceLogps

    _launch_probe(GATHER_PROBE, tmp_path)
    g = torch.Generator().manual_seed(0)
    chosen, rejected, kl = (torch.randn(8, generator=g, dtype=torch.float64) for _ in range(3))
    beta, z_all = 0.5, float((kl + 1.0).mean().clamp(min=0))

    def loss_with(z: float, rank: int) -> float:  # KTO's formula for one process's rows and a given z_ref
        rows = slice(4 * rank, 4 * rank + 4)
        return float(torch.cat([1 - torch.sigmoid(beta * (chosen[rows][:2] - z)),
                                1 - torch.sigmoid(beta * (z - rejected[rows][:2]))]).mean())

    for rank in (0, 1):
        got = json.loads((tmp_path / f"{rank}.json").read_text())
        own = float((kl[4 * rank: 4 * rank + 4] + 1.0).mean().clamp(min=0))
        assert got["kl"] == pytest.approx(z_all, abs=1e-12)
        assert got["loss"] == pytest.approx(loss_with(z_all, rank), abs=1e-12)
        assert abs(loss_with(own, rank) - loss_with(z_all, rank)) > 1e-3  # a per-process z_ref would show


RLOO_PROBE = """
import json, sys, torch
from types import SimpleNamespace
from accelerate import Accelerator
import methods
rank = Accelerator(cpu=True).process_index
g = torch.Generator().manual_seed(0)
scores = torch.randn(8, generator=g, dtype=torch.float64) * (1 + torch.arange(8))  # the halves differ in spread
rows = slice(4 * rank, 4 * rank + 4)  # 2 prompts x k = 2 on each process
rollout = SimpleNamespace(scores=scores[rows], kl=lambda: torch.zeros(4, dtype=torch.float64),
                          group=torch.tensor([0, 0, 1, 1]))
fields, _ = methods.get("rloo", k=2, beta=0.1, normalize_advantages=True).advantages(rollout)
json.dump(fields["advantages"].tolist(), open(sys.argv[1] + f"/{rank}.json", "w"))
torch.distributed.destroy_process_group()
"""


def test_rloo_normalises_advantages_over_every_processs_batch(tmp_path):
    """RLOO with normalize_advantages on 2 processes of 2 prompts each: the advantages are standardised with the
    mean and std of all 8, as TRL does it after gathering the rewards, so together they equal one process's
    advantages for the 8 rows, not each half standardised on its own."""
    import torch
    from types import SimpleNamespace

    import methods

    _launch_probe(RLOO_PROBE, tmp_path)
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(8, generator=g, dtype=torch.float64) * (1 + torch.arange(8))
    whole = SimpleNamespace(scores=scores, kl=lambda: torch.zeros(8, dtype=torch.float64),
                            group=torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    expected, _ = methods.get("rloo", k=2, beta=0.1, normalize_advantages=True).advantages(whole)
    got = [a for rank in (0, 1) for a in json.loads((tmp_path / f"{rank}.json").read_text())]
    assert got == pytest.approx(expected["advantages"].tolist(), abs=1e-12)
    halves = [methods.get("rloo", k=2, beta=0.1, normalize_advantages=True).advantages(SimpleNamespace(
        scores=scores[4 * r: 4 * r + 4], kl=lambda: torch.zeros(4, dtype=torch.float64), group=torch.tensor([0, 0, 1, 1])))[0]
        ["advantages"] for r in (0, 1)]
    assert torch.cat(halves).tolist() != pytest.approx(got, abs=1e-3)  # per-process standardising would show


# Online methods on a fixed rollout batch of 8 sequences (4 prompts x 2 samples), T = 5: what one optimizer
# step computes from it, on 2 processes of 4 sequences (DDP averages the gradients) against one process whose
# 2 accumulated micro-batches are the same halves. The configurations: every online method, GRPO also with
# its batch-level normalisations (scale_rewards=batch gathers the std, dapo the token count).
ONLINE_CASES = {"ppo": ("ppo", {}), "rloo": ("rloo", {"k": 2, "normalize_advantages": True}),
                "grpo": ("grpo", {"k": 2}), "grpo_dapo_batch": ("grpo", {"k": 2, "loss_type": "dapo",
                                                                         "scale_rewards": "batch"}),
                "online_dpo": ("online_dpo", {})}


def fixed_rollout(rows=None):
    """A rollout batch whose halves differ in spread (scores x 1..8, masks of different lengths)."""
    import torch

    from harness.online import Rollout

    g = torch.Generator().manual_seed(0)
    n, t = 8, 5
    mask = (torch.rand(n, t, generator=g) > 0.3).double()
    mask[:, 0] = 1
    logps = -torch.rand(n, t, generator=g, dtype=torch.float64) * mask
    ref_logps = (logps + 0.1 * torch.randn(n, t, generator=g, dtype=torch.float64)) * mask
    values = torch.randn(n, t, generator=g, dtype=torch.float64) * mask
    scores = torch.randn(n, generator=g, dtype=torch.float64) * (1 + torch.arange(n))
    rollout = Rollout(torch.zeros(n, t + 1, dtype=torch.long), torch.ones(n, t + 1, dtype=torch.long), mask,
                      torch.arange(4).repeat_interleave(2), scores, logps, ref_logps, values, max_new_tokens=t)
    return rollout if rows is None else rollout.select(torch.arange(n)[rows])


def online_step(case: str, rollout, micro_batches) -> dict:
    """Advantages of `rollout` (this process's batch), then each micro-batch's loss and its gradient with
    respect to a shift of the policy's log-probs and values; returns the advantages, the mean loss and the
    mean gradient over the micro-batches (as accumulation or DDP's all-reduce gives it)."""
    import torch

    import methods
    from harness.logps import TokenLogps

    name, params = ONLINE_CASES[case]
    method = methods.get(name, **params)
    rollout.fields, _ = method.advantages(rollout)
    shift = torch.zeros(rollout.mask.shape[1], dtype=torch.float64, requires_grad=True)
    losses, grads = [], []
    for rows in micro_batches:
        part = rollout.select(rows)
        policy = TokenLogps((part.logps + shift) * part.mask, part.mask, (part.values + shift) * part.mask)
        loss = method.loss(policy, part).loss
        losses.append(float(loss))
        grads.append(torch.autograd.grad(loss, shift)[0])
    advantages = rollout.fields.get("advantages", rollout.fields.get("is_chosen"))
    return {"advantages": advantages.flatten().tolist(), "loss": sum(losses) / len(losses),
            "grad": (sum(grads) / len(grads)).tolist()}


ONLINE_PROBE = """
import json, os, sys, torch
sys.path.insert(0, os.getcwd())  # the repository (the launch's working directory): this module's helpers
from accelerate import Accelerator
from tests.test_distributed import ONLINE_CASES, fixed_rollout, online_step
accelerator = Accelerator(cpu=True)
rank = accelerator.process_index
out = {}
for case in ONLINE_CASES:
    got = online_step(case, fixed_rollout(slice(4 * rank, 4 * rank + 4)), [torch.arange(4)])
    grad = torch.tensor(got["grad"], dtype=torch.float64)
    torch.distributed.all_reduce(grad)  # what DDP does with the gradients: their mean over processes
    out[case] = {**got, "grad": (grad / 2).tolist()}
json.dump(out, open(sys.argv[1] + f"/{rank}.json", "w"))
torch.distributed.destroy_process_group()
"""


def test_online_methods_take_the_same_step_on_two_processes_as_on_one(tmp_path):
    """Every online method on one fixed rollout batch: 2 processes x 4 sequences against one process with the
    same 8 in 2 accumulated micro-batches. The gradient of the step and the mean loss agree (1e-12: float64),
    and so do the advantages wherever TRL computes them over the whole batch (RLOO's and GRPO's batch-level
    normalisations gather; a group never straddles processes). PPO whitens its advantages over each process's
    batch, as TRL's PPOTrainer does, so its 2-process step is that of each half whitened on its own."""
    import torch

    _launch_probe(ONLINE_PROBE, tmp_path)
    ranks = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    halves = [torch.arange(4), torch.arange(4, 8)]
    for case in ONLINE_CASES:
        got_advantages = [a for r in ranks for a in r[case]["advantages"]]
        assert ranks[0][case]["grad"] == pytest.approx(ranks[1][case]["grad"], abs=1e-12)  # one all-reduced step
        loss_two = (ranks[0][case]["loss"] + ranks[1][case]["loss"]) / 2
        if case == "ppo":  # per-process whitening: each half's own step, averaged
            per_half = [online_step(case, fixed_rollout(rows), [torch.arange(4)]) for rows in (slice(0, 4), slice(4, 8))]
            expected_grad = [(a + b) / 2 for a, b in zip(per_half[0]["grad"], per_half[1]["grad"])]
            assert got_advantages == pytest.approx(per_half[0]["advantages"] + per_half[1]["advantages"], abs=1e-12)
            assert ranks[0][case]["grad"] == pytest.approx(expected_grad, abs=1e-12)
            assert loss_two == pytest.approx((per_half[0]["loss"] + per_half[1]["loss"]) / 2, abs=1e-12)
            continue
        one = online_step(case, fixed_rollout(), halves)
        assert got_advantages == pytest.approx(one["advantages"], abs=1e-12), case
        assert ranks[0][case]["grad"] == pytest.approx(one["grad"], abs=1e-12), case
        assert loss_two == pytest.approx(one["loss"], abs=1e-12), case
        assert any(abs(g) > 1e-3 for g in one["grad"]), case  # a step that moves something
    # the gathers are what makes these agree: each half normalised on its own would not
    own = [online_step("grpo_dapo_batch", fixed_rollout(rows), [torch.arange(4)]) for rows in (slice(0, 4), slice(4, 8))]
    assert own[0]["advantages"] + own[1]["advantages"] != pytest.approx(
        [a for r in ranks for a in r["grpo_dapo_batch"]["advantages"]], abs=1e-3)


ONLINE_RUNS_PROBE = """
import json, sys
from app import pipeline
out, overrides = sys.argv[1], json.loads(sys.argv[2])
for name in ("ppo", "rloo", "grpo", "online_dpo"):
    pipeline.train({**overrides[name], "output_dir": f"{out}/{name}-two"})
import torch
torch.distributed.destroy_process_group()
"""


def test_every_online_method_trains_on_two_processes_as_on_one_at_the_same_global_batch(tmp_path, embedded):
    """PPO, RLOO, GRPO and online DPO through the backend on 2 processes (each drawing and sampling its own
    prompts, with its own recorded seed) against one process drawing twice the prompts with 2 accumulated
    micro-batches: the same global batch, steps and samples. Their samples differ by design (per-process
    seeds), so what must agree is what does not depend on the draw: the first rollout comes from the SFT
    weights on every process (KL 0, ratio 1: the reduced means of both processes), every logged key is there,
    and the budget."""
    import yaml

    small = {"online": {"proxy_steps": 50, "max_new_tokens": 8, "epochs": 1},
             "train": {"max_steps": 2, "log_steps": 1, "save_steps": 0, "save_model": False, "batch_size": 4},
             "eval": {"num_prompts": 0}, "wandb": {"mode": "disabled"}}
    per_method = {"ppo": {}, "rloo": {"k": 2}, "grpo": {"k": 2}, "online_dpo": {}}

    def config(name: str, prompts: int, accumulation: int) -> dict:
        tree = yaml.safe_load(yaml.safe_dump(small))
        tree["method"] = {"name": name, **per_method[name]}
        tree["online"]["prompts_per_rollout"] = prompts
        tree["train"]["gradient_accumulation_steps"] = accumulation
        return tree

    def sequences(name):
        return 4 if name == "ppo" else 2  # per process: 4 prompts x 1 sample, or 2 prompts x 2 samples

    two = {name: config(name, sequences(name), 1) for name in per_method}
    script = tmp_path / "runs.py"
    script.write_text(ONLINE_RUNS_PROBE)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               str(_free_port()), str(script), str(tmp_path), json.dumps(two)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    import harness

    for name in per_method:
        one_cfg = {**config(name, 2 * sequences(name), 2), "output_dir": str(tmp_path / f"{name}-one")}
        one = harness.train(one_cfg)
        two_record = json.loads((tmp_path / f"{name}-two" / "record.json").read_text())
        m2, m1 = two_record["metrics"], one.metrics
        assert (m2["world_size"], m1["world_size"]) == (2, 1), name
        assert m2["global_batch_size"] == m1["global_batch_size"] == 8, name
        assert m2["train_steps"] == m1["train_steps"] == 2 and m2["samples_trained"] == m1["samples_trained"], name
        assert len(set(m2["rollout_seeds"])) == 2 and m2["rollout_seeds"][0] == m1["rollout_seeds"][0], name
        a, b = _history(tmp_path / f"{name}-two"), _history(tmp_path / f"{name}-one")
        assert set(a[0]) == set(b[0]), name
        for first in (a[0], b[0]):
            assert first["rollout/kl"] == pytest.approx(0.0, abs=1e-6), name
            if "policy/ratio" in first:
                assert first["policy/ratio"] == pytest.approx(1.0, abs=1e-6), name
            assert all(math.isfinite(v) for v in first.values() if isinstance(v, float)), name
