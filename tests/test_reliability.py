"""Reliability: every bad input is one clear line and exit 2, with nothing written outside the run's own
folders; a diverging run stops at its first non-finite loss; a killed run resumes to the same result; two
runs never share an output_dir; the same config gives the same metrics; the code loads nothing unsafely.

The corpus of bad inputs lives in tests/data/bad_inputs/ (files) and in CASES below (arguments); each
case runs the CLI in this process (`cli.main`, what `harness` calls) and a few run it as the real
command, so the exit status and the absence of a traceback are checked where a user sees them.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import harness

from .conftest import REPO, quick_overrides, run_cli

BAD = REPO / "tests" / "data" / "bad_inputs"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny Llama with the embedded task's tokenizer, a copy of it with pickle-only weights, a folder with a
    config and no weights, and a causal LM where a judge (a sequence classifier) is expected."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from harness.embedded.build import build_tokenizer

    root = tmp_path_factory.mktemp("models")
    tokenizer = build_tokenizer()
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                         pad_token_id=tokenizer.pad_token_id))
    for name in ("good", "pickle_only", "no_weights"):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    (root / "pickle_only" / "model.safetensors").unlink()
    torch.save(model.state_dict(), root / "pickle_only" / "pytorch_model.bin")  # the format the harness refuses
    (root / "no_weights" / "model.safetensors").unlink()
    return root


def data_case(file: str, needle: str, *extra: str):
    return (f"data/{file}", ["train", f"data.source={BAD / file}", "model.path={models}/good", *extra], needle)


CASES = [
    data_case("broken_line.jsonl", "line 2: not valid JSON"),
    data_case("empty.jsonl", "the file is empty"),
    data_case("blank_lines.jsonl", "the file is empty"),
    data_case("latin1.jsonl", "line 1: not UTF-8 text"),
    data_case("null_prompt.jsonl", "'prompt' is null"),
    data_case("chosen_number.jsonl", "'chosen' must be a string"),
    data_case("missing_rejected.jsonl", "'rejected' is missing"),
    data_case("null_chosen.jsonl", "'chosen' is missing or null"),
    data_case("array_line.jsonl", "line 2: a JSON object per line expected"),
    data_case("empty_message_list.jsonl", "empty message list"),
    data_case("label_not_bool.jsonl", "'label' must be true/false"),
    data_case("prompt_object.jsonl", "'prompt' must be a string"),
    data_case("no_usable_columns.csv", "'chosen' is missing"),
    data_case("broken.json", "line 2: not valid JSON"),
    data_case("pairs.tsv", "unsupported data file type"),
    data_case("folder_with_a_broken_file", "folder_with_a_broken_file/b.jsonl: line 2: not valid JSON"),
    ("data/columns names an absent field", ["train", f"data.source={BAD / 'pairs_ok.jsonl'}", "model.path={models}/good",
                                           "data.columns={{answer: chosen}}"], "data.columns names field 'answer'"),
    ("data/missing file", ["train", "data.source={tmp}/nope.jsonl", "model.path={models}/good"], "not found"),
    ("config/duplicate keys", ["train", "--config", str(BAD / "duplicate_keys.yaml")], "line 3: not valid YAML (duplicate key 'max_steps')"),
    ("config/invalid syntax", ["train", "--config", str(BAD / "invalid_syntax.yaml")], "line 3: not valid YAML"),
    ("config/not a mapping", ["train", "--config", str(BAD / "not_a_mapping.yaml")], "must be a mapping"),
    ("config/negative lr", ["train", "--config", str(BAD / "negative_learning_rate.yaml")], "train.learning_rate"),
    ("config/unknown key", ["train", "--config", str(BAD / "unknown_key.yaml")], "train.nosuch_key"),
    ("config/missing file", ["train", "--config", "{tmp}/nope.yaml"], "config file not found"),
    ("spec/empty grid", ["sweep", str(BAD / "spec_empty_grid.yaml")], "the grid is empty"),
    ("spec/duplicate keys", ["sweep", str(BAD / "spec_duplicate_keys.yaml")], "duplicate key 'method.beta'"),
    ("spec/unknown resource", ["sweep", str(BAD / "spec_unknown_resource.yaml")], "tpu"),
    ("spec/grid not a list", ["sweep", str(BAD / "spec_grid_not_list.yaml")], "method.beta"),
    ("spec/missing", ["sweep", "no_such_spec"], "sweep spec not found"),
    ("path/output_dir is a file", ["train", "output_dir={tmp}/a_file"], "is a file, not a folder"),
    ("path/cache_dir not writable", ["train", "cache_dir={tmp}/a_file/cache"], "cache_dir"),
    ("method/unknown", ["train", "method.name=nosuch"], "nosuch"),
    ("method/bad parameter", ["train", "method.beta=-1"], "beta"),
    ("method/unknown parameter", ["train", "method.gamma=0.5"], "gamma"),
    ("judge/not a classifier", ["train", "eval.judge={models}/good"], "not a sequence classifier"),
    ("judge/missing folder", ["train", "eval.judge={tmp}/no_judge/"], "no_judge"),
    ("model/no weights", ["train", "model.path={models}/no_weights"], "no safetensors weights"),
    ("model/pickle-only weights", ["train", "model.path={models}/pickle_only"], "pytorch_model.bin"),
    ("model/missing folder", ["train", "model.path={tmp}/no_model/"], "no_model"),
]


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


@pytest.mark.parametrize("name, argv, needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(tmp_path, tiny_model, embedded, capsys, name, argv, needle):
    from cli import main

    (tmp_path / "a_file").write_text("not a folder")
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = [a.format(tmp=tmp_path, models=tiny_model) for a in argv]
    extra = [f"output_dir={out}"] if not any(a.startswith("output_dir=") for a in argv) else []
    if argv[0] == "train":
        extra += ["train.max_steps=1", "eval.num_prompts=4", "wandb.mode=disabled"]
        if any(a.startswith("data.source=") for a in argv):  # (the embedded task keeps the session's cache)
            extra += [f"cache_dir={cache}"]
    before = _files(tmp_path)
    code = main(argv + extra)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("harness: error: "), err
    assert needle in lines[0], lines[0]
    written = {p for p in _files(tmp_path) - before if out not in p.parents and cache not in p.parents
               and p not in (out, cache)}
    assert not written, f"written outside the output and cache folders: {sorted(map(str, written))}"


@pytest.mark.parametrize("argv, needle", [
    (["train", f"data.source={BAD / 'broken_line.jsonl'}", "model.path=."], "line 2"),
    (["train", "--config", str(BAD / "duplicate_keys.yaml")], "duplicate key"),
])
def test_bad_input_as_a_user_runs_it(tmp_path, argv, needle):
    result = run_cli(*argv, f"output_dir={tmp_path / 'out'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_skip_invalid_skips_counts_and_says_why(tmp_path):
    from harness.data import load_rows, normalise_rows

    lines = ['{"prompt": "p%d", "chosen": "c", "rejected": "r"}' % i for i in range(4)]
    lines[1] = '{"prompt": "p1", "chosen": "c"'  # broken JSON
    lines[2] = '{"prompt": "p2", "chosen": 7, "rejected": "r"}'  # a number where text belongs
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    raw, unreadable = load_rows(str(tmp_path / "d.jsonl"), skip_invalid=True)
    rows, counts = normalise_rows(raw, "d", skip_invalid=True)
    assert len(rows) == 2 and unreadable["skipped_unreadable"] == 1 and counts["skipped_invalid"] == 1
    assert unreadable["skip_reasons"][0].startswith("line 2: not valid JSON")
    assert "'chosen' must be a string" in counts["skip_reasons"][0]


def test_a_diverging_run_stops_at_its_first_non_finite_step(tmp_path, embedded):
    from harness.config import load_config

    cfg = load_config(None, quick_overrides(tmp_path, **{"train.learning_rate": 1000.0, "train.max_steps": 30,
                                                         "train.save_steps": 1, "train.log_steps": 1,
                                                         "eval.num_prompts": 0}))
    with pytest.raises(RuntimeError, match="non-finite"):
        harness.train(cfg)
    run = tmp_path / "run"
    record = json.loads((run / "record.json").read_text())  # valid JSON: no NaN in it
    assert record["status"] == "failed" and record["error"].startswith("Diverged: non-finite")
    step = int(re.search(r"at step (\d+)", record["error"]).group(1))
    assert 1 < step < 30 and re.search(r"last finite loss [0-9.e+-]+ at step %d" % (step - 1), record["error"])
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]  # every line is JSON
    assert max(row["step"] for row in logged if "step" in row) == step - 1  # nothing logged past the last good step
    checkpoints = sorted(p.name for p in (run / "checkpoints").glob("step-*"))
    assert checkpoints == [f"step-{step - 1}"]  # the last finite step's checkpoint is kept


def test_non_finite_numbers_are_written_as_null(tmp_path):
    from harness.config import WandbConfig
    from harness.tracking import Tracker

    tracker = Tracker(tmp_path, WandbConfig(mode="disabled"), name="t", group="g", job_type="dpo", config={})
    tracker.log(1, {"loss": float("nan"), "grad_norm": float("inf"), "ok": 1.5})
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 1, "loss": None, "grad_norm": None, "ok": 1.5}


TIMING = {"wall_time_s", "train_time_s", "tokens_per_s"}


def _comparable(metrics: dict) -> dict:
    """Metrics that say what a run computed, not how long it took, what an earlier run left in the cache or
    from which checkpoint it resumed."""
    return {k: v for k, v in metrics.items() if k not in TIMING and not k.endswith("cache_hit")
            and k not in ("reference_sequences_computed", "resumed_from_step")}


def _train_command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "harness", "train", *quick_overrides(out.parent, **{
        "output_dir": str(out), "train.max_steps": 12, "train.save_steps": 3, "train.log_steps": 1,
        "eval.num_prompts": 16}), *extra]


def test_a_killed_run_resumes_to_the_same_metrics(tmp_path, embedded):
    from harness.config import load_config

    harness.train(load_config(None, _train_command(tmp_path / "straight")[4:]))  # uninterrupted, in this process
    out = tmp_path / "killed"
    process = subprocess.Popen(_train_command(out), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.time() + 600
    while not list((out / "checkpoints").glob("step-*/trainer_state.json")) and time.time() < deadline:
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    state = json.loads(next((out / "checkpoints").glob("step-*/trainer_state.json")).read_text())
    assert state["step"] < 12
    again = subprocess.run(_train_command(out), capture_output=True, text=True, cwd=REPO, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    want = _comparable(json.loads((tmp_path / "straight" / "record.json").read_text())["metrics"])
    got = _comparable(json.loads((out / "record.json").read_text())["metrics"])
    assert got == want, {k: (want[k], got.get(k)) for k in want if want[k] != got.get(k)}
    assert json.loads((out / "record.json").read_text())["metrics"]["resumed_from_step"] == state["step"]


def test_a_second_run_on_the_same_output_dir_refuses(tmp_path, embedded):
    out = tmp_path / "shared"
    first = subprocess.Popen(_train_command(out), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        deadline = time.time() + 300
        while not (out / ".run.lock").exists() and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # the lock file appears as the first run takes it
        second = run_cli("train", *quick_overrides(tmp_path, **{"output_dir": str(out)}))
        assert second.returncode == 2 and "in use by another run" in second.stderr, second.stderr
        assert len([line for line in second.stderr.splitlines() if line.strip()]) == 1
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


def test_same_seed_same_config_same_metrics(tmp_path, embedded):
    from harness.config import load_config

    records = [harness.train(load_config(None, quick_overrides(tmp_path / name, **{"train.max_steps": 3})))
               for name in ("a", "b")]
    want, got = _comparable(records[0].metrics), _comparable(records[1].metrics)
    assert got == want, {k: (want[k], got.get(k)) for k in want if want[k] != got.get(k)}


UNSAFE = {
    "pickle": re.compile(r"^\s*(import pickle|from pickle|import dill|import cloudpickle)", re.M),
    "torch.load without weights_only=True": re.compile(r"torch\.load\((?![^)]*weights_only=True)[^)]*\)"),
    "trust_remote_code=True": re.compile(r"trust_remote_code\s*=\s*True"),
    "yaml.load without a safe loader": re.compile(r"yaml\.load\((?![^)]*Loader=_UniqueKeyLoader)[^)]*\)"),
    "yaml.unsafe_load / full_load": re.compile(r"yaml\.(unsafe_load|full_load)\("),
    "non-safetensors save": re.compile(r"safe_serialization\s*=\s*False"),
}


def test_the_code_loads_nothing_unsafely():
    """safetensors only, no pickle, torch.load only with weights_only=True, trust_remote_code only from the
    config, yaml through a safe loader: scanned over every Python file of the project (tests excepted,
    which write pickle-only weights on purpose)."""
    found = []
    for path in sorted(REPO.rglob("*.py")):
        if any(part in (".venv", "tests", "build", "outputs") for part in path.relative_to(REPO).parts):
            continue
        text = path.read_text()
        found += [f"{path.relative_to(REPO)}: {what}" for what, pattern in UNSAFE.items() if pattern.search(text)]
    assert not found, found
    # and the patterns do catch what they are for
    assert UNSAFE["torch.load without weights_only=True"].search("torch.load(path)")
    assert not UNSAFE["torch.load without weights_only=True"].search("torch.load(path, weights_only=True)")
    assert UNSAFE["trust_remote_code=True"].search("from_pretrained(p, trust_remote_code=True)")
    assert UNSAFE["yaml.load without a safe loader"].search("yaml.load(text)")
