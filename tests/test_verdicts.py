"""Verdicts that survive the analyst's choices (issue 18): clustered intervals over distinct prompts, Holm
correction, the reference row chosen on validation, extension rounds where a pick sits at a grid edge,
fresh test seeds, equal pairs seen, and the verdict recomputed across KL budgets. Fast: synthetic records
and toy objectives, no training."""

import json

import numpy as np
import pandas as pd
import pytest

from evals.aggregate import holm, paired_difference, seed_prompt_interval
from evals.leaderboard import (leaderboard, load_records, select_best, stability_rows, to_markdown, unequal_data,
                               write_leaderboard)
from evals.selection import Selection, fragile_verdicts, kl_stability
from harness.errors import BadInput
from sweeps.protocol import extensions, tune_until_bracketed

from .test_comparisons import outcomes, write_record


# ---------------------------------------------------------------- distinct prompts are the bootstrap's unit

def test_a_set_with_repeated_prompts_gives_the_interval_of_its_distinct_prompts():
    rng = np.random.default_rng(0)
    distinct = (rng.random((3, 48)) < 0.6).astype(float)
    repeated = np.repeat(distinct, 4, axis=1)  # every prompt asked 4 times: 192 columns, 48 prompts
    clusters = np.repeat(np.arange(48), 4)
    assert seed_prompt_interval(repeated, clusters=clusters) == pytest.approx(seed_prompt_interval(distinct))
    # treated as 192 independent prompts the interval is about half as wide: the bug this guards against
    low, high = seed_prompt_interval(repeated)
    d_low, d_high = seed_prompt_interval(distinct)
    assert high - low < 0.7 * (d_high - d_low)
    other = np.repeat((rng.random((3, 48)) < 0.5).astype(float), 4, axis=1)
    paired = paired_difference(repeated, other, clusters=clusters)
    assert paired == pytest.approx(paired_difference(distinct, other[:, ::4]))


def test_unequal_clusters_weigh_each_prompt_by_its_repeats():
    outcomes_ = np.array([[1.0, 1.0, 1.0, 0.0]])  # prompt 0 asked three times and won, prompt 1 lost
    low, high = seed_prompt_interval(outcomes_, clusters=[0, 0, 0, 1], n_boot=4000)
    # a replicate draws prompts {0,0}, {0,1} or {1,1}: means 1, 0.75, 0 -- never 0.5 as 4 free draws could
    assert (low, high) == (0.0, 1.0)
    with pytest.raises(ValueError, match="one cluster id per prompt"):
        seed_prompt_interval(outcomes_, clusters=[0, 1])


# ---------------------------------------------------------------- Holm

def test_holm_matches_hand_computed_adjustments():
    # sorted 0.01, 0.03, 0.04, 0.20 -> 4 x 0.01 = 0.04; 3 x 0.03 = 0.09; max(0.09, 2 x 0.04) = 0.09; 0.20
    assert holm([0.04, 0.01, 0.20, 0.03]) == pytest.approx([0.09, 0.04, 0.20, 0.09])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    adjusted = holm([0.02, np.nan, 0.01])  # NaN (the reference row) is not in the family: m = 2
    assert adjusted[0] == pytest.approx(0.02) and np.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.02)


def test_marks_are_holm_corrected_across_the_board(tmp_path):
    # four rows against one reference: a difference that is significant alone is n.s. in a family of 3
    rates = {0.1: 0.62, 0.3: 0.55, 1.0: 0.55, 3.0: 0.55}
    for beta, rate in rates.items():
        for seed in range(2):
            write_record(tmp_path, f"r-{beta}-{seed}", seed=seed, beta=beta, judge=outcomes(rate, n=300, seed=seed + 7 * int(beta * 10)),
                         val=outcomes(0.9 if beta == 0.1 else 0.5, seed=seed))
    table = leaderboard(load_records(tmp_path))
    others = table[table["significance"] != "best"]
    assert (others["family_size"] == 3).all()
    assert np.allclose(others["p_holm"].to_numpy(), holm(others["p_value"].to_numpy()))
    assert (others["p_holm"] >= others["p_value"]).all()
    for _, row in others.iterrows():
        assert row["significance"] == ("worse" if row["p_holm"] < 0.05 else "n.s.")



def test_one_seed_rows_are_never_marked_better_or_worse(tmp_path):
    """With one seed the bootstrap sees prompt noise only: a gap that would be 'worse' is left untested."""
    from evals.significance import UNTESTED

    for beta, rate in {0.1: 0.80, 0.3: 0.50}.items():
        write_record(tmp_path, f"r-{beta}", seed=0, beta=beta, judge=outcomes(rate, n=300, seed=1),
                     val=outcomes(0.9 if beta == 0.1 else 0.5, seed=2))
    table = leaderboard(load_records(tmp_path))
    other = table[table["significance"] != "best"].iloc[0]
    assert other["significance"] == UNTESTED and other["gap_to_best"] < -0.2 and np.isnan(other["p_holm"])


# ---------------------------------------------------------------- the reference row is chosen on validation

def test_best_row_is_chosen_on_validation_not_on_the_test_numbers(tmp_path):
    for seed in range(3):
        # A is best on validation, B is better on the test prompts
        write_record(tmp_path, f"a-{seed}", seed=seed, beta=0.1, judge=outcomes(0.55, seed=seed), val=outcomes(0.8, seed=30 + seed))
        write_record(tmp_path, f"b-{seed}", seed=seed, beta=0.3, judge=outcomes(0.85, seed=10 + seed), val=outcomes(0.6, seed=40 + seed))
    table = leaderboard(load_records(tmp_path)).set_index("params")
    assert table.loc["beta=0.1", "significance"] == "best" and table.loc["beta=0.1", "reference_on"] == "validation"
    assert table.loc["beta=0.3", "significance"] == "better"  # compared with the validation pick, not crowned
    assert table.loc["beta=0.3", "gap_to_best"] > 0.2


def test_gold_has_its_own_ranking_and_marks(tmp_path):
    for seed in range(3):
        write_record(tmp_path, f"fool-{seed}", seed=seed, beta=0.1, judge=outcomes(0.8, seed=seed),
                     gold=outcomes(0.3, seed=20 + seed), val=outcomes(0.8, seed=30 + seed))
        write_record(tmp_path, f"honest-{seed}", seed=seed, beta=0.3, judge=outcomes(0.6, seed=10 + seed),
                     gold=outcomes(0.6, seed=40 + seed), val=outcomes(0.6, seed=50 + seed))
    table = leaderboard(load_records(tmp_path)).set_index("params")
    # by the judge the fooling row is the reference and the honest one worse; gold ranks them the other way
    assert table.loc["beta=0.1", "significance"] == "best" and table.loc["beta=0.3", "significance"] == "worse"
    assert table.loc["beta=0.3", "gold_significance"] == "best" and table.loc["beta=0.1", "gold_significance"] == "worse"
    assert table.loc["beta=0.3", "gold_reference_on"] == "test"  # these records hold no validation gold win rate


# ---------------------------------------------------------------- tuning: extension rounds, equal budgets

def _toy_pick(objective):
    return lambda points: {m: max(ps, key=objective) for m, ps in points.items()}


def test_an_extension_round_fires_when_the_pick_sits_at_an_edge():
    objective = lambda p: -(np.log10(p["train.learning_rate"]) + 3) ** 2 - (np.log10(p["method.beta"]) + 0.5) ** 2  # noqa: E731
    grid = [{"method.name": "dpo", "method.beta": b, "train.learning_rate": lr}
            for b in (0.1, 0.3, 1.0) for lr in (1e-4, 2e-4, 4e-4)]
    points, chosen, notes, rounds = tune_until_bracketed({"dpo": grid}, _toy_pick(objective), {}, rounds=3)
    lrs = sorted({p["train.learning_rate"] for p in points["dpo"]})
    assert lrs == [1e-4, 2e-4, 4e-4, 8e-4, 1.6e-3]  # one grid step per round, until the optimum is bracketed
    assert chosen["dpo"]["train.learning_rate"] == 8e-4 and chosen["dpo"]["method.beta"] == 0.3
    assert rounds == 2 and notes == {}
    # an interior pick needs no round at all
    _, _, _, none = tune_until_bracketed({"dpo": grid}, _toy_pick(lambda p: -abs(p["train.learning_rate"] - 2e-4) - abs(p["method.beta"] - 0.3)), {}, 3)
    assert none == 0


def test_an_edge_that_remains_is_flagged_with_its_reason():
    grid = [{"method.name": "dpo", "train.learning_rate": lr} for lr in (1e-4, 2e-4, 4e-4)]
    rising = _toy_pick(lambda p: p["train.learning_rate"])
    points, chosen, notes, _ = tune_until_bracketed({"dpo": grid}, rising, {"train.learning_rate": [1e-5, 5e-4]}, rounds=3)
    assert chosen["dpo"]["train.learning_rate"] == 5e-4  # the step to 8e-4 stops at the limit
    assert "limit" in notes["dpo"]
    points, chosen, notes, rounds = tune_until_bracketed({"dpo": grid}, rising, {}, rounds=1)
    assert rounds == 1 and "still at an edge" in notes["dpo"]
    new, stuck = extensions([{"g": 0.0}, {"g": 0.5}], {"g": 0.0}, {})
    assert not new and "natural bound" in stuck["g"]


def test_a_protocol_refuses_unequal_budgets_and_reused_seeds(tmp_path):
    from sweeps.spec import SweepSpec, expand

    protocol = {"metric": "gold", "seeds": [0, 1], "test_seeds": [10, 11, 12, 13, 14]}
    spec = SweepSpec(name="t", methods={"dpo": {"method.beta": [0.1, 0.3]}, "ipo": {"method.tau": [1.0]}},
                     selection=protocol)
    with pytest.raises(BadInput, match="unequal tuning budgets"):
        expand(spec)
    with pytest.raises(ValueError, match="fresh"):
        Selection(seeds=[0, 1], test_seeds=[1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="at least 5"):
        Selection(test_seeds=[1, 2, 3])
    equal = SweepSpec(name="t", methods={"dpo": {"method.beta": [0.1, 0.3]}, "ipo": {"method.tau": [0.3, 1.0]}},
                      selection=protocol, storage_path=str(tmp_path))
    trials = expand(equal)
    assert {t["stage"] for t in trials} == {"selection"} and {t["config"]["train"]["seed"] for t in trials} == {0, 1}
    test = expand(equal, points=[{"method.name": "dpo", "method.beta": 0.1}], seeds=equal.selection.test_seeds, stage="test")
    assert {t["config"]["train"]["seed"] for t in test} == {10, 11, 12, 13, 14}
    assert not {t["name"] for t in test} & {t["name"] for t in trials}


# ---------------------------------------------------------------- fresh seeds make the test columns

def test_test_columns_read_only_the_fresh_seed_runs(tmp_path):
    for seed in range(2):
        write_record(tmp_path, f"sel-{seed}", seed=seed, judge=outcomes(0.9, seed=seed), val=outcomes(0.7, seed=seed))
    for seed in range(10, 15):
        write_record(tmp_path, f"test-{seed}", seed=seed, judge=outcomes(0.6, seed=seed), val=outcomes(0.7, seed=seed))
    for path in tmp_path.glob("*/record.json"):
        record = json.loads(path.read_text())
        record["stage"] = "test" if record["trial_id"].startswith("test") else "selection"
        path.write_text(json.dumps(record))
    row = select_best(load_records(tmp_path), Selection(metric="judge")).iloc[0]
    assert row["seeds"] == 5 and row["test_seeds"] == "10 11 12 13 14" and row["stage"] == "test"
    assert row["win_rate"] == pytest.approx(np.mean([np.mean(outcomes(0.6, seed=s)) for s in range(10, 15)]))
    assert row["selection_seeds"] == 2


# ---------------------------------------------------------------- equal data

def test_every_offline_method_of_a_sweep_sees_the_same_pairs():
    from sweeps.spec import expand, load_spec

    batches = {t["config"]["method"]["name"]: t["config"]["train"]["batch_size"] for t in expand(*load_spec("quickstart"))}
    assert batches["kto"] == 2 * batches["dpo"]  # two unpaired rows per pair
    assert {batches[m] for m in ("dpo", "ipo", "orpo", "simpo")} == {batches["dpo"]}
    table = pd.DataFrame({"method": ["dpo", "kto"], "pairs_seen": [2384.0, 1200.0]})
    assert "Unequal data" in unequal_data(table) and "kto 1200" in unequal_data(table)
    assert unequal_data(table.assign(pairs_seen=2384.0)) == ""


# ---------------------------------------------------------------- the verdict across KL budgets

def test_stability_table_matches_hand_computed_picks(tmp_path):
    # dpo: (beta 0.1: val 0.80, KL 2.5) (beta 0.3: val 0.70, KL 1.2) (beta 1.0: val 0.60, KL 0.4)
    # ipo: one configuration (val 0.65, KL 0.8)
    grid = {("dpo", 0.1): (0.80, 2.5, 0.62), ("dpo", 0.3): (0.70, 1.2, 0.66), ("dpo", 1.0): (0.60, 0.4, 0.58),
            ("ipo", 1.0): (0.65, 0.8, 0.64)}
    for (method, beta), (val, kl, test) in grid.items():
        for seed in range(2):
            write_record(tmp_path, f"{method}-{beta}-{seed}", seed=seed, method=method, beta=beta, kl=kl, val_kl=kl,
                         judge=outcomes(test, n=200, seed=seed), val=outcomes(val, n=200, seed=100 + seed))
    stability = kl_stability(load_records(tmp_path), Selection(metric="judge"), budgets=(1.0, 1.5, 3.0, None))
    dpo = stability[stability["method"] == "dpo"].set_index("kl_budget")["params"].to_dict()
    assert dpo == {"1": "beta=1.0", "1.5": "beta=0.3", "3": "beta=0.1", "none": "beta=0.1"}  # by hand
    assert set(stability[stability["method"] == "ipo"]["params"]) == {"beta=1.0"}
    lines = {line.split()[0]: line for line in fragile_verdicts(stability)}
    assert lines["dpo"].startswith("dpo is fragile") and "between budgets 1 and 1.5: pick beta=1.0" in lines["dpo"]
    assert "between budgets 1.5 and 3: pick beta=0.3" in lines["dpo"] and "between budgets 3 and none" not in lines["dpo"]
    ipo = stability[stability["method"] == "ipo"]
    assert ("ipo" in lines) == (ipo["significance"].nunique() > 1)  # its pick never moves; its mark may
    # the table as displayed: each cell under its own method's column, whatever each budget's rank order
    # (ipo leads at budget 1, dpo from budget 3)
    head, _, *body = to_markdown(stability_rows(stability)).splitlines()
    columns = [c.strip() for c in head.strip("|").split("|")]
    for line in body:
        cells = dict(zip(columns, (c.strip() for c in line.strip("|").split("|"))))
        assert cells["dpo"].startswith(dpo[cells["KL budget (nats)"]] + " lr"), cells
        assert cells["ipo"].startswith("beta=1.0 lr"), cells


def test_a_selection_board_writes_the_stability_table(tmp_path):
    from sweeps.spec import SweepSpec

    for beta, kl in ((0.1, 3.0), (0.3, 1.0)):
        for seed in range(2):
            write_record(tmp_path, f"dpo-{beta}-{seed}", seed=seed, beta=beta, kl=kl, val_kl=kl,
                         judge=outcomes(0.6, seed=seed), val=outcomes(0.9 if beta == 0.1 else 0.6, seed=seed))
    (tmp_path / "spec.json").write_text(SweepSpec(name="t", selection={"metric": "judge", "kl_budget": 2.0}).model_dump_json())
    write_leaderboard(tmp_path)
    stability = pd.read_csv(tmp_path / "stability.csv")
    assert list(stability["kl_budget"].astype(str)) == ["1", "1.5", "2", "3", "5", "none"]
    text = (tmp_path / "leaderboard.md").read_text()
    assert "The verdict across KL budgets" in text and "dpo is fragile to the KL budget" in text


def test_a_runs_own_win_rate_interval_counts_a_repeated_prompt_once():
    from evals.winrate import win_rate

    rng = np.random.default_rng(3)
    policy, sft = rng.normal(size=60), rng.normal(size=60)
    alone = win_rate(policy, sft)
    repeated = win_rate(np.repeat(policy, 3), np.repeat(sft, 3), clusters=np.repeat(np.arange(60), 3))
    assert (repeated.rate, repeated.low, repeated.high) == pytest.approx((alone.rate, alone.low, alone.high))
    naive = win_rate(np.repeat(policy, 3), np.repeat(sft, 3))
    assert naive.high - naive.low < 0.75 * (alone.high - alone.low)  # repeats taken as draws: too narrow
