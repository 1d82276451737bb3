"""The embedded task: the gold reward punishes what it should, the task is seeded, SFT sits mid-range."""

import json
import statistics

import pytest

from harness.embedded.task import ASPECTS, ITEMS, SENTIMENT_CAP, ReviewTask, gold_reward, prompt_text

P = "review pizza price :"


def test_gold_reward_rewards_on_topic_positive_content():
    assert gold_reward(P, "the pizza price is great and superb and lovely .") == SENTIMENT_CAP + 2
    assert gold_reward(P, "the pizza price is great .") > gold_reward(P, "the pizza price is awful .")
    assert gold_reward(P, "the pizza price is great .") > gold_reward(P, "the pizza quality is great .")
    assert gold_reward(P, "the pizza quality is great .") > gold_reward(P, "the lamp price is great .")


def test_gold_reward_punishes_repetition_and_run_on_length():
    clean = gold_reward(P, "the pizza price is great .")
    assert gold_reward(P, "the pizza price is great and great and great .") == clean - 2
    run_on = " ".join(["the pizza price is great and superb and lovely ."] * 4)
    assert gold_reward(P, run_on) < gold_reward(P, "the pizza price is great and superb and lovely .") - 5
    assert gold_reward(P, "") < 0 and gold_reward(P, "the pizza price is") < 0  # nothing finished


def test_piling_up_distinct_positive_words_hits_the_cap():
    three = gold_reward(P, "the pizza price is great and superb and lovely .")
    six = gold_reward(P, "the pizza price is great and superb and lovely and nice and solid and perfect .")
    eight = gold_reward(P, "the pizza price is great and superb and lovely and nice and solid and perfect and good and fantastic .")
    assert six == three  # no more sentiment credit past the cap
    assert eight < three  # and past the target length, a penalty


def test_task_is_determined_by_its_seed():
    a, b, c = ReviewTask(seed=3), ReviewTask(seed=3), ReviewTask(seed=4)
    assert a.preference_pairs(a.prompts(20)) == b.preference_pairs(b.prompts(20))
    assert ReviewTask(seed=3).prompts(20) != c.prompts(20)


def test_labels_are_noisy_but_informative():
    task = ReviewTask(seed=0)
    pairs = task.preference_pairs(task.prompts(1000))
    agree = statistics.mean(gold_reward(r["prompt"], r["chosen"]) > gold_reward(r["prompt"], r["rejected"]) for r in pairs)
    assert 0.7 < agree < 0.95


def test_embedded_assets_sft_mid_range(embedded):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.data import Formatter
    from harness.embedded.build import MODEL_PARAMETERS
    from harness.generation import sample

    sizes = (len(embedded.train_pairs), len(embedded.eval_prompts))
    assert sizes == (1000, 200)
    model = AutoModelForCausalLM.from_pretrained(embedded.sft_path)
    tokenizer = AutoTokenizer.from_pretrained(embedded.sft_path)
    assert sum(p.numel() for p in model.parameters()) == MODEL_PARAMETERS  # what the report's task card states
    formatter = Formatter(tokenizer, 64, 32)
    prompts = embedded.eval_prompts[:100]
    out = sample(model, tokenizer, [formatter.prompt_ids(p) for p in prompts], max_new_tokens=48, seed=0)
    texts = tokenizer.batch_decode(out, skip_special_tokens=True)
    mean_gold = statistics.mean(gold_reward(p, t) for p, t in zip(prompts, texts))
    assert -1.0 < mean_gold < 2.5, mean_gold  # mid-range: the best responses score 5
    log = json.loads((embedded.root / "sft_log.json").read_text())
    assert log["final_loss"] < log["first_loss"] / 2


def test_train_judge_validation_and_test_prompts_are_pairwise_disjoint(embedded):
    """Held out means disjoint: checked on the built assets, not on the recipe."""
    from itertools import combinations

    prompts = {
        "train": {r["prompt"] for r in embedded.train_pairs},
        "judge": {r["prompt"] for r in embedded.judge_pairs},
        "val": set(embedded.val_prompts),
        "test": set(embedded.eval_prompts) | {r["prompt"] for r in embedded.heldout_pairs},
    }
    for (a, first), (b, second) in combinations(prompts.items(), 2):
        assert not first & second, f"{a} and {b} share {sorted(first & second)[:3]}"
    # each split is wide enough to be a sample of prompts, not a handful
    assert {name: len(p) >= 40 for name, p in prompts.items()} == dict.fromkeys(prompts, True)
    # the SFT model was trained on training prompts only: the split the assets record
    splits = {name: {prompt_text(*combo) for combo in combos} for name, combos in embedded.splits.items()}
    assert prompts["train"] <= splits["train"] and prompts["test"] <= splits["test"] and prompts["val"] <= splits["val"]


def test_split_deals_every_item_into_every_split():
    splits = ReviewTask(seed=0).split_combinations()
    combos = [combo for split in splits.values() for combo in split]
    assert len(combos) == len(set(combos)) == len(ITEMS) * len(ASPECTS)
    for name, split in splits.items():
        assert {item for item, _ in split} == set(ITEMS), name
    assert ReviewTask(seed=0).split_combinations() == splits


def test_assets_do_not_depend_on_the_callers_thread_count(tmp_path):
    """The build pins its own thread count, so a Ray trial (1 thread) and a shell (all cores) build the same
    SFT model; the caller's setting is restored afterwards."""
    import torch

    from harness.config import TaskConfig
    from harness.embedded.build import prepare_embedded
    from harness.models import fingerprint

    small = TaskConfig(num_train_pairs=10, num_eval_prompts=4, num_val_prompts=4, num_judge_pairs=10,
                       num_sft_examples=200, sft_steps=15)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = prepare_embedded(small, str(tmp_path / "a"))
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        two = prepare_embedded(small, str(tmp_path / "b"))
    finally:
        torch.set_num_threads(before)
    assert not one.cache_hit and not two.cache_hit
    assert fingerprint(one.sft_path) == fingerprint(two.sft_path)


def test_a_default_run_uses_the_shipped_assets_and_they_verify(embedded):
    from evals.judge import embedded_judge
    from harness.cache import verify
    from harness.embedded.shipped import ASSETS, BUILT, KINDS, is_shipped
    from harness.models import fingerprint

    built = json.loads(BUILT.read_text())
    assert embedded.shipped and is_shipped(embedded.sft_path) and embedded.root == ASSETS / "embedded-task" / built["entries"]["embedded-task"]
    assert fingerprint(embedded.sft_path) == built["fingerprints"]["sft"]
    judge, _ = embedded_judge(embedded, "/nonexistent-cache")  # found shipped: nothing built, nothing written
    assert is_shipped(judge) and fingerprint(judge) == built["fingerprints"]["judge"]
    for kind in KINDS:
        [entry] = [p for p in (ASSETS / kind).iterdir()]
        assert verify(entry) is None, kind


def test_the_shipped_builds_replay_here_bit_for_bit_and_records_say_which_assets_they_ran_on(tmp_path):
    """`harness assets --replay`: the task's data, tokenizer and base model rebuilt, and the SFT model, judge and
    proxy reward model each trained for the first REPLAY_STEPS steps of their recipe, compared with the shipped
    files and with the weights' digests the builds recorded. On the CPU type (and torch, threads) that built the
    shipped copies everything must match bit for bit; on another the trained weights may differ, and a record
    says which assets a run used (`shipped_assets`, its SFT fingerprint). The whole rebuild (`harness assets`,
    minutes) compares every file the same way."""
    import harness
    from app.assets import replay_check
    from harness.config import TaskConfig, load_config
    from harness.embedded.build import REPLAY_STEPS, replay_build
    from harness.embedded.shipped import BUILT

    report, code = replay_check(str(tmp_path / "replay"))
    assert code == 0, report
    assert len(report["files_compared"]) >= 5 and set(report["digests_here"]) == {"sft", "judge", "proxy"}
    if report["same_machine_type"]:
        assert report["bit_for_bit"] and report["digests_here"] == report["digests_shipped"], report
    else:  # another CPU type: the data and the tokenizer still match, file for file
        assert not [f for f in report["differing"] if f.endswith(("data.json", "tokenizer.json"))], report
    # the digest sees a different recipe: another seed's first steps
    assert replay_build(TaskConfig(seed=1), tmp_path / "seed1")[str(REPLAY_STEPS)] != report["digests_here"]["sft"]

    run = {"train.max_steps": 1, "eval.num_prompts": 0, "wandb.mode": "disabled"}
    shipped = harness.train(load_config(None, [f"{k}={v}" for k, v in {**run, "output_dir": tmp_path / "a"}.items()]))
    small = {f"task.{k}": v for k, v in {"sft_steps": 3, "num_sft_examples": 64, "num_train_pairs": 32,
                                          "num_judge_pairs": 32, "num_eval_prompts": 8, "num_val_prompts": 8}.items()}
    here = harness.train(load_config(None, [f"{k}={v}" for k, v in {**run, **small, "output_dir": tmp_path / "b",
                                                                      "cache_dir": tmp_path / "cache"}.items()]))
    assert shipped.dataset["shipped_assets"] is True and here.dataset["shipped_assets"] is False
    assert shipped.dataset["sft_fingerprint"] == json.loads(BUILT.read_text())["fingerprints"]["sft"]
    assert here.dataset["sft_fingerprint"] != shipped.dataset["sft_fingerprint"]


def test_writing_the_shipped_assets_replaces_them_whole_or_not_at_all(tmp_path, monkeypatch):
    """`harness assets --write` (on fake entries, in a copy of the shipped folder): the new entries and BUILT.json
    replace the old ones at once; a copy that fails part-way leaves the shipped folder as it was."""
    import shutil

    import app.assets as assets
    from harness.embedded.shipped import ASSETS, KINDS

    copy = tmp_path / "pkg" / "assets"
    shutil.copytree(ASSETS, copy)
    before = sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*"))
    monkeypatch.setattr(assets, "ASSETS", copy)
    monkeypatch.setattr(assets, "BUILT", copy / "BUILT.json")
    monkeypatch.setattr(assets, "fingerprints", lambda built: {kind: built[kind].name for kind in built})
    built = {}
    for kind in KINDS:
        (tmp_path / "built" / kind / f"{kind}-new").mkdir(parents=True)
        (tmp_path / "built" / kind / f"{kind}-new" / "weights").write_text(kind)
        built[kind] = tmp_path / "built" / kind / f"{kind}-new"
    real = shutil.copytree

    def fails_at_the_judge(source, target, *args, **kwargs):
        if "embedded-judge" in str(source):
            raise OSError(28, "No space left on device")
        return real(source, target, *args, **kwargs)

    monkeypatch.setattr(shutil, "copytree", fails_at_the_judge)
    with pytest.raises(OSError, match="No space left on device"):
        assets.write(built)
    assert sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*")) == before  # untouched
    assert sorted(p.name for p in copy.parent.iterdir()) == ["assets"]  # nothing half-built beside it
    monkeypatch.setattr(shutil, "copytree", real)
    assets.write(built)
    assert sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*")) == sorted(
        ["BUILT.json"] + [f"{kind}{suffix}" for kind in KINDS for suffix in ("", f"/{kind}-new", f"/{kind}-new/weights")])
    written = json.loads((copy / "BUILT.json").read_text())
    assert written["entries"] == {kind: f"{kind}-new" for kind in KINDS} and written["fingerprints"]["embedded-judge"]
