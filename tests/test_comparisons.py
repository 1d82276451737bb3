"""Comparisons a skeptical reviewer accepts: seeds pooled per configuration with honest intervals, paired
significance, matched-KL selection on validation prompts, valid KL estimates, and metrics that mean the
same thing for every method. Unit tests on synthetic records (fast), then the shipped reference results."""

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evals.aggregate import configuration_key, paired_difference, seed_prompt_interval
from evals.leaderboard import leaderboard, load_records, write_leaderboard
from evals.metrics import distinct_n, distinct_n_per_response, is_plain_sampling, kl_from_samples, repeat_rate

from .conftest import REPO, call_cli

RESULTS = REPO / "results"
CONFIG = {"name": "t", "output_dir": "x", "cache_dir": "c", "wandb": {"mode": "disabled"}, "data": {"source": "embedded"},
          "method": {"name": "dpo", "beta": 0.1}, "train": {"learning_rate": 1e-4, "max_steps": 150, "seed": 0}}


def write_record(folder: Path, name: str, *, seed: int, judge: list[float], gold: list[float] | None = None,
                 val: list[float] | None = None, kl: float = 1.0, val_kl: float = 1.0, method: str = "dpo",
                 beta: float = 0.1, lr: float = 1e-4, steps: int = 150) -> None:
    config = copy.deepcopy(CONFIG)
    config["method"] = {"name": method, "beta": beta}
    config["train"].update(learning_rate=lr, max_steps=steps, seed=seed)
    config["output_dir"] = str(folder / name)
    gold = gold if gold is not None else judge
    metrics = {"win_rate": float(np.mean(judge)), "win_rate_low": 0.0, "win_rate_high": 1.0, "kl_to_sft": kl,
               "num_prompts": len(judge), "judge": "trained-judge", "gold_reward": 1.0, "final_train_loss": 0.5}
    outcomes = {"test": {"judge": judge, "gold": gold}}
    if val is not None:
        metrics.update(val_win_rate=float(np.mean(val)), val_kl_to_sft=val_kl)
        outcomes["val"] = {"judge": val}
    record = {"schema_version": 2, "trial_id": name, "spec": "t", "status": "completed", "method": method,
              "method_params": {"beta": beta}, "seed": seed, "config": config, "config_hash": name,
              "dataset": {"eval_prompts_fingerprint": "p"}, "metrics": metrics, "outcomes": outcomes,
              "output_dir": str(folder / name)}
    (folder / name).mkdir(parents=True)
    (folder / name / "record.json").write_text(json.dumps(record))


def outcomes(rate: float, n: int = 100, seed: int = 0) -> list[float]:
    return (np.random.default_rng(seed).random(n) < rate).astype(float).tolist()


# ---------------------------------------------------------------- metrics

def test_per_response_diversity_and_repeat_rate_do_not_track_length():
    short = ["the pizza is great ."] * 4
    loop = ["the pizza is great and great and great and great ."]
    assert distinct_n(short) < 0.5  # pooled: identical short answers look degenerate
    assert distinct_n_per_response(short) == 1.0 and repeat_rate(short) == 0.0  # each one is fine
    assert distinct_n_per_response(loop) < 0.7 and repeat_rate(loop) == 1.0
    assert repeat_rate(short + loop) == 0.2
    assert distinct_n_per_response(["great"]) == 0.0  # no bigram: left out, nothing to average


def test_kl_from_samples_reports_its_standard_error_and_per_token_value():
    policy, sft = [-2.0, -3.0, -1.0, -4.0], [-3.0, -3.5, -2.0, -4.0]  # log-ratios 1, 0.5, 1, 0
    out = kl_from_samples(policy, sft, tokens=[5, 5, 5, 5])
    assert out["kl_to_sft"] == pytest.approx(0.625)
    assert out["kl_to_sft_se"] == pytest.approx(np.std([1, 0.5, 1, 0], ddof=1) / 2)
    assert out["kl_per_token"] == pytest.approx(2.5 / 20)
    # two samples per prompt (sample-major: prompt 0 has ratios 1 and 1, prompt 1 has 0.5 and 0): the error is
    # over prompts, the samples of a prompt averaged first
    two = kl_from_samples(policy, sft, tokens=[5] * 4, prompts=2)
    assert two["kl_to_sft"] == pytest.approx(0.625) and two["kl_to_sft_se"] == pytest.approx(np.std([1, 0.25], ddof=1) / np.sqrt(2))
    assert is_plain_sampling(1.0, 1.0) and not is_plain_sampling(0.7, 1.0) and not is_plain_sampling(1.0, 0.9)


# ---------------------------------------------------------------- seeds, intervals, significance

def test_configuration_key_ignores_the_seed_and_output_paths_only():
    other_seed = copy.deepcopy(CONFIG) | {"output_dir": "elsewhere"}
    other_seed["train"] = {**CONFIG["train"], "seed": 7}
    other_steps = copy.deepcopy(CONFIG)
    other_steps["train"]["max_steps"] = 300
    assert configuration_key(other_seed) == configuration_key(CONFIG)
    assert configuration_key(other_steps) != configuration_key(CONFIG)


def test_seed_prompt_interval_widens_with_seed_spread():
    rng = np.random.default_rng(0)
    agree = (rng.random((3, 200)) < 0.6).astype(float)
    spread = np.stack([agree[0], agree[1], (rng.random(200) < 0.05).astype(float)])  # one seed collapsed
    low_a, high_a = seed_prompt_interval(agree)
    low_s, high_s = seed_prompt_interval(spread)
    assert low_a < agree.mean() < high_a and low_s < spread.mean() < high_s
    assert high_s - low_s > 2 * (high_a - low_a)
    assert seed_prompt_interval(agree) == (low_a, high_a)  # seeded: the same records give the same table


def test_paired_difference_uses_the_pairing_of_prompts():
    rng = np.random.default_rng(1)
    difficulty = rng.random(300)  # prompts differ far more than the two methods do
    base = np.tile(difficulty, (3, 1)) + rng.normal(0, 0.01, (3, 300))
    better = base + 0.03
    diff, low, high, p = paired_difference(better, base)
    assert diff == pytest.approx(0.03) and low > 0 and p < 0.01  # resampled together, the prompts' spread cancels
    unpaired = np.percentile(better.mean(axis=0)[rng.integers(0, 300, (2000, 300))].mean(axis=1)
                             - base.mean(axis=0)[rng.integers(0, 300, (2000, 300))].mean(axis=1), 2.5)
    assert unpaired < 0  # resampled apart, the same difference would not be significant
    diff, low, high, p = paired_difference(base, base[[1, 2, 0]])
    assert low <= 0 <= high and p > 0.05
    with pytest.raises(ValueError, match="same prompts"):
        paired_difference(base, base[:, :10])


def test_leaderboard_pools_seeds_of_one_configuration_without_averaging_bounds(tmp_path):
    seeds = [outcomes(0.65, seed=0), outcomes(0.58, seed=1), outcomes(0.04, seed=2)]
    for seed, row in enumerate(seeds):
        write_record(tmp_path, f"low-beta-{seed}", seed=seed, judge=row, kl=[8.8, 5.2, 115.8][seed], beta=0.01)
        write_record(tmp_path, f"high-beta-{seed}", seed=seed, judge=outcomes(0.7, seed=10 + seed), kl=0.4, beta=1.0)
    # (a lower win rate: the reference row stays the 3-seed high-beta one, so the marks against it are tested;
    # a 1-seed row's comparisons are left untested)
    write_record(tmp_path, "high-beta-longer", seed=0, judge=outcomes(0.5, seed=20), beta=1.0, steps=300)
    table = leaderboard(load_records(tmp_path))
    assert len(table) == 3  # a run that differs in another setting is its own row, not a fourth "seed"
    low = table[table["params"] == "beta=0.01"].iloc[0]
    per_seed = [np.mean(s) for s in seeds]
    assert low["seeds"] == 3
    assert low["win_rate"] == pytest.approx(np.mean(per_seed))
    assert (low["win_rate_min"], low["win_rate_max"]) == pytest.approx((min(per_seed), max(per_seed)))
    assert low["kl_to_sft"] == pytest.approx(np.mean([8.8, 5.2, 115.8])) and low["kl_to_sft_median"] == 8.8
    assert low["win_rate_low"] < min(per_seed) + 0.05 and low["win_rate_high"] > 0.55  # the collapsed seed shows
    assert table.iloc[0]["significance"] == "best" and low["significance"] == "worse"
    assert low["gap_to_best_high"] < 0


def test_judge_fooled_on_a_rows_own_outputs_is_flagged(tmp_path):
    for seed in range(3):
        write_record(tmp_path, f"fooled-{seed}", seed=seed, judge=outcomes(0.65, seed=seed), gold=outcomes(0.15, seed=9 + seed))
        write_record(tmp_path, f"honest-{seed}", seed=seed, judge=outcomes(0.6, seed=seed), beta=0.3)
    table = leaderboard(load_records(tmp_path)).set_index("params")
    assert table.loc["beta=0.1", "judge_gap_flag"] and table.loc["beta=0.1", "judge_gold_gap"] > 0.3
    assert not table.loc["beta=0.3", "judge_gap_flag"]


def test_selection_respects_the_kl_budget_flags_grid_edges_and_is_stored_with_the_sweep(tmp_path):
    from sweeps.spec import SweepSpec

    grid = [(0.1, 5e-5), (0.1, 1e-4), (0.1, 2e-4), (0.3, 1e-4), (1.0, 1e-4)]
    for beta, lr in grid:
        drift = 0.1 / beta * lr / 1e-4  # low beta and high lr drift furthest
        quality = 0.8 if (beta, lr) == (0.1, 2e-4) else 0.7 if (beta, lr) == (0.1, 1e-4) else 0.55
        for seed in range(3):
            write_record(tmp_path, f"dpo-{beta}-{lr}-{seed}", seed=seed, beta=beta, lr=lr, judge=outcomes(quality, seed=seed),
                         val=outcomes(quality, seed=50 + seed), kl=drift, val_kl=drift)
    spec = SweepSpec(name="t", selection={"metric": "val_win_rate", "kl_budget": 1.5})
    (tmp_path / "spec.json").write_text(spec.model_dump_json())
    result = call_cli("leaderboard", str(tmp_path))
    assert result.returncode == 0, result.stderr
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    assert len(board) == 1
    chosen = board.iloc[0]
    # the best validation win rate (lr 2e-4, KL 2) is over budget: the best within it is lr 1e-4
    assert (chosen["params"], chosen["learning_rate"]) == ("beta=0.1", 1e-4)
    assert chosen["val_kl_to_sft"] <= 1.5 and chosen["within_budget"] == 4 and chosen["configurations_tried"] == 5
    assert chosen["grid_edge"] == "method.beta lowest"  # lr 1e-4 is inside its grid; beta 0.1 is not
    text = (tmp_path / "leaderboard.md").read_text()
    assert "picked on validation" in text and "val KL <= 1.5 nats" in text
    assert chosen["seeds"] == 3


# ---------------------------------------------------------------- KL needs plain samples

def test_generation_ignores_filters_in_the_models_generation_config(embedded):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.data import Formatter
    from harness.generation import sample

    tokenizer = AutoTokenizer.from_pretrained(embedded.sft_path)
    ids = [Formatter(tokenizer, 64, 32).prompt_ids(p) for p in embedded.eval_prompts[:16]]
    plain = AutoModelForCausalLM.from_pretrained(embedded.sft_path)
    filtered = AutoModelForCausalLM.from_pretrained(embedded.sft_path)
    filtered.generation_config.update(top_k=2, repetition_penalty=3.0, no_repeat_ngram_size=1, min_new_tokens=20)
    assert sample(filtered, tokenizer, ids, max_new_tokens=48, seed=3) == sample(plain, tokenizer, ids, max_new_tokens=48, seed=3)
    assert filtered.generation_config.top_k == 2  # restored afterwards


def test_kl_under_non_plain_eval_decoding_comes_from_separate_plain_samples(embedded, judge_scorer, cache_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evals.evaluate import Prompts, evaluate
    from evals.scorers import GoldScorer
    from harness.config import EvalConfig
    from harness.data import Formatter
    from harness.reference import Reference

    tokenizer = AutoTokenizer.from_pretrained(embedded.sft_path)
    sft = AutoModelForCausalLM.from_pretrained(embedded.sft_path)
    policy = AutoModelForCausalLM.from_pretrained(embedded.sft_path)
    with torch.no_grad():  # a policy that has drifted from SFT
        policy.model.norm.weight.mul_(1.5)
    prompts = embedded.eval_prompts[:24]
    ids = [Formatter(tokenizer, 64, 32).prompt_ids(p) for p in prompts]
    run = lambda **decoding: evaluate(policy, Reference(sft, "kl-decoding-test"), tokenizer, Prompts(prompts, ids),  # noqa: E731
                                      EvalConfig(num_prompts=24, **decoding), {"judge": judge_scorer, "gold": GoldScorer()},
                                      cache_dir)
    plain, cooled = run(), run(temperature=0.5)
    assert plain["kl_decoding"] == "plain" and cooled["kl_decoding"] == "plain, separate samples"
    assert cooled["eval_decoding"] == "temperature=0.5 top_p=1.0"
    assert plain["kl_to_sft"] > 0.05
    # the estimate is the plain one, although the judged samples differ
    assert cooled["kl_to_sft"] == pytest.approx(plain["kl_to_sft"]) and cooled["kl_to_sft_se"] == pytest.approx(plain["kl_to_sft_se"])
    assert cooled["per_prompt"] != plain["per_prompt"]


@pytest.fixture(scope="module")
def judge_scorer(embedded, cache_dir):
    from evals.judge import RewardModelJudge, embedded_judge

    return RewardModelJudge(embedded_judge(embedded, cache_dir)[0], device="cpu")


# ---------------------------------------------------------------- the shipped reference results

def _results(name: str) -> tuple[Path, pd.DataFrame]:
    folder = RESULTS / name
    assert folder.is_dir(), f"{folder} is part of the repo: regenerate it with `harness run {name}`"
    return folder, load_records(folder)


def _independent_interval(matrix: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """The seeds x prompts bootstrap written out again, loop by loop, to check the table's numbers."""
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, matrix.shape[0], size=(n_boot, matrix.shape[0]))
    prompts = rng.integers(0, matrix.shape[1], size=(n_boot, matrix.shape[1]))
    means = [matrix[s][:, p].mean() for s, p in zip(seeds, prompts)]
    return tuple(np.percentile(means, [2.5, 97.5]))


def test_beta_sensitivity_table_is_recomputable_from_its_per_seed_records(tmp_path):
    from evals.rows import prompt_clusters

    folder, records = _results("beta_sensitivity")
    stored = pd.read_csv(folder / "leaderboard.csv")
    betas = stored["params"].str.extract(r"beta=([\d.]+)")[0].astype(float)
    assert sorted(set(betas)) == [0.01, 0.1, 0.3, 1.0]
    assert sorted(set(stored["learning_rate"])) == [1e-4, 2e-4, 4e-4]  # the ranking at three learning rates
    for group, part in stored.groupby("group"):  # one board per learning rate: its own reference and family
        assert (part["significance"] == "best").sum() == 1 and set(part["family_size"].dropna()) == {3}
        best = part[part["significance"] == "best"].iloc[0]
        assert best["val_win_rate"] == part["val_win_rate"].max()  # chosen on validation, not on test
    for _, row in stored.iterrows():
        runs = records[(records["configuration"] == row["configuration"]) & (records["status"] == "completed")]
        assert row["seeds"] == len(runs) == 3
        per_seed = runs["win_rate"].to_numpy()
        matrix = np.asarray([o["test"]["judge"] for o in runs["outcomes"]])
        assert matrix.shape[1] == row["distinct_prompts"] == 200  # 200 distinct test prompts, none repeated
        assert len(set(prompt_clusters(runs))) == 200
        assert matrix.mean(axis=1) == pytest.approx(per_seed)  # the outcomes are the record's own win rates
        assert row["win_rate"] == pytest.approx(per_seed.mean())
        assert (row["win_rate_min"], row["win_rate_max"]) == pytest.approx((per_seed.min(), per_seed.max()))
        assert row["kl_to_sft_median"] == pytest.approx(np.median(runs["kl_to_sft"]))
        assert row["kl_to_sft"] == pytest.approx(runs["kl_to_sft"].mean())
        # the interval is the seeds x prompts bootstrap of the stored outcomes, not an average of the runs' bounds
        assert (row["win_rate_low"], row["win_rate_high"]) == pytest.approx(_independent_interval(matrix))
    # and the stored table is exactly what the records give today
    write_leaderboard(folder, tmp_path)
    assert (tmp_path / "leaderboard.md").read_text().split("\n", 3)[3] == (folder / "leaderboard.md").read_text().split("\n", 3)[3]


def test_method_comparison_follows_the_protocol(tmp_path):
    from evals.leaderboard import stored_selection, stored_spec
    from evals.rows import configuration_table

    folder, records = _results("method_comparison")
    selection, spec = stored_selection(folder), stored_spec(folder)
    assert selection is not None and selection.kl_budget == 2.0 and selection.metric == "gold"
    done = records[records["status"] == "completed"]
    chosen, tested = done[done["stage"] == "selection"], done[done["stage"] == "test"]
    assert set(chosen["seed"]) == set(selection.seeds) and set(tested["seed"]) == set(selection.test_seeds)
    assert not set(selection.seeds) & set(selection.test_seeds)  # fresh seeds for the test numbers
    board = pd.read_csv(folder / "leaderboard.csv")
    assert sorted(board["method"]) == ["dpo", "ipo", "kto", "orpo", "simpo"]
    assert set(board["seeds"]) == {len(selection.test_seeds)} and set(board["stage"]) == {"test"}
    assert set(board["significance"]) <= {"best", "n.s.", "worse", "better"} and (board["significance"] == "best").sum() == 1
    assert set(board["family_size"].dropna()) == {4} and set(board["gold_family_size"].dropna()) == {4}
    # equal first-round budgets; extension rounds add where a pick sat at an edge, and the board shows the total
    budget = spec["tuning"]["budget"]
    tried = chosen.groupby("method")["configuration"].nunique().to_dict()
    assert tried == budget and sum(budget.values()) == len(spec["expanded"])  # every configuration tried was run
    assert dict(zip(board["method"], board["configurations_tried"])) == budget
    assert min(budget.values()) >= 9
    table = configuration_table(chosen)
    for _, row in board.iterrows():  # the pick: best validation gold win rate within the KL budget
        rows = table[table["method"] == row["method"]]
        eligible = rows[rows["val_kl_to_sft"] <= selection.kl_budget]
        if len(eligible):
            assert row["val_gold_win_rate"] == pytest.approx(eligible["val_gold_win_rate"].max()), row["method"]
        assert spec["tuning"]["picks"][row["method"]]["train.learning_rate"] == row["learning_rate"]
    assert len(set(board["pairs_seen"])) == 1  # every method saw the same number of preference pairs
    best = board[board["gold_significance"] == "best"].iloc[0]
    assert best["val_gold_win_rate"] == board["val_gold_win_rate"].max()  # the reference row, on validation
    write_leaderboard(folder, tmp_path)
    # full-precision floats: equal up to the last digits the CPU's float kernels move (the LC fit's, here)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "leaderboard.csv"), board, check_exact=False, rtol=1e-9)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "stability.csv"), pd.read_csv(folder / "stability.csv"),
                                  check_exact=False, rtol=1e-9)


def test_reference_records_carry_what_a_reviewer_checks():
    keys = ("judge_agreement_run", "judge_gold_gap_low", "judge_gold_gap_high", "heldout_pref_gain", "heldout_pref_ceiling",
            "kl_to_sft_se", "kl_per_token", "kl_decoding", "pairs_seen", "val_gold_win_rate")
    built = json.loads((REPO / "harness" / "embedded" / "assets" / "BUILT.json").read_text())["fingerprints"]
    commits: dict[str, set] = {}
    for path in sorted(RESULTS.rglob("record.json")):
        record = json.loads(path.read_text())
        # every folder ran on the shipped SFT model and judge, so any machine regenerates it from the same models
        assert record["dataset"]["shipped_assets"] is True, path
        assert (record["dataset"]["sft_fingerprint"], record["dataset"]["judge_fingerprint"]) == (built["sft"], built["judge"]), path
        missing = [k for k in keys if k not in record["metrics"]]
        assert not missing, f"{path}: {missing}"
        assert record["metrics"]["kl_decoding"] == "plain" and record["outcomes"]["test"]["judge"]
        assert record["dataset"]["eval_prompts_distinct"] == record["dataset"]["val_prompts_distinct"] == 200, path
        assert record["sweep"]["spec_hash"] and record["sweep"]["spec"]["name"] == path.parts[-3], path
        assert record["versions"]["harness_git_dirty"] == "no", path  # the commit it names produced it
        commits.setdefault(path.parts[-3], set()).add(record["versions"]["harness_git_commit"])
        if record["method_facts"]["kind"] == "online":
            assert record["metrics"]["reward_model_compute_tokens"] > record["metrics"]["compute_tokens"], path
    assert all(len(found) == 1 for found in commits.values()), commits  # each folder: one commit produced it
    readme = (RESULTS / "README.md").read_text()
    assert all(next(iter(found))[:7] in readme for found in commits.values())  # and results/README names it


def test_collapse_flags_name_their_reason_against_the_sft_baseline():
    from evals.collapse import collapse_reasons

    sft = {"repeat_rate_sft": 0.2, "distinct_2_per_response_sft": 0.95, "mean_length_sft": 16.0, "gold_reward_sft": 0.2}
    healthy = {**sft, "repeat_rate": 0.3, "distinct_2_per_response": 0.9, "mean_length": 10.0, "gold_reward": 1.5,
               "win_rate": 0.75}
    assert collapse_reasons(healthy) == []
    assert collapse_reasons({**healthy, "repeat_rate": 0.5}) == ["repetition"]
    assert collapse_reasons({**healthy, "distinct_2_per_response": 0.6}) == ["diversity"]
    assert collapse_reasons({**healthy, "mean_length": 5.0}) == ["length"]  # under 0.4 x 16
    assert collapse_reasons({**healthy, "mean_length": 41.0}) == ["length"]  # over 2.5 x 16
    assert collapse_reasons({**healthy, "gold_reward": -1.0}) == ["reward hacking"]  # judge prefers, gold worse
    assert collapse_reasons({**healthy, "gold_reward": -1.0, "win_rate": 0.3}) == []  # judge agrees it is worse
    assert collapse_reasons({"win_rate": 0.9}) == []  # nothing to compare with: no flag
