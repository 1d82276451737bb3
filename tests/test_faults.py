"""Faults a long sweep on a shared machine meets, survived rather than only refused: a damaged cache entry is
rebuilt, an unreachable W&B server never stops training, a full disk loses nothing. (A killed trial resuming
to the numbers of an uninterrupted one, and two sweeps sharing one cache: tests/test_sweeps.py.)

The cache entries here are built small (a tiny embedded task, judge and proxy trained for a few steps) so
that every kind can be damaged and rebuilt in seconds; the mechanism is the one every entry goes through.
"""

import errno
import json
import os
import re
import socket
import time
import warnings
from pathlib import Path

import pytest

import harness
from harness.config import load_config
from harness.errors import WriteFailed

from .conftest import quick_overrides
from .test_sweeps import TINY_TASK


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":  # what a crash, a full disk or an interrupted copy leaves
        path.write_bytes(data[: len(data) // 2])
    else:  # one flipped bit in the middle: the size is right, the content is not
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:])


# ------------------------------------------------------------------ cache integrity

def _entries(cache: str):
    """Each kind of cache entry, as (name, a call that looks it up (building it when missing or damaged) and
    returns its folder, the file in it to damage)."""
    from evals.evaluate import Prompts, sft_side
    from evals.judge import embedded_judge, proxy_reward_model
    from evals.scorers import GoldScorer
    from harness.config import EvalConfig, ModelConfig, TaskConfig
    from harness.embedded.build import build_tokenizer, prepare_embedded
    from harness.models import fingerprint, load_causal_lm
    from harness.reference import Reference

    task = lambda: prepare_embedded(TaskConfig(**TINY_TASK), cache)  # noqa: E731
    assets = task()
    tokenizer = build_tokenizer()
    prompts = Prompts(assets.eval_prompts[:4], [tokenizer(p)["input_ids"] for p in assets.eval_prompts[:4]])

    def generations():
        sft = Reference(load_causal_lm(assets.sft_path, ModelConfig()), fingerprint(assets.sft_path))
        sft_side(sft, tokenizer, prompts, EvalConfig(num_prompts=4, max_new_tokens=8), {"gold": GoldScorer()}, cache)
        return next(p for p in (Path(cache) / "sft-generations").iterdir() if p.is_dir() and not p.name.startswith("."))

    return {
        "embedded task (data)": (lambda: task().root, "data.json"),
        "embedded task (SFT model)": (lambda: task().root, "sft/model.safetensors"),
        "judge": (lambda: Path(embedded_judge(task(), cache)[0]), "model.safetensors"),
        "proxy reward model": (lambda: Path(proxy_reward_model(assets.sft_path, fingerprint(assets.sft_path),
                                                                 assets.train_pairs, cache, 3)[0]), "model.safetensors"),
        "SFT generations": (generations, "sft_side.json"),
    }


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_a_damaged_cache_entry_of_each_kind_is_moved_aside_and_rebuilt_bit_for_bit(tmp_path, monkeypatch, how):
    monkeypatch.setattr("evals.judge.JUDGE_STEPS", 3)
    cache = str(tmp_path / "cache")
    for name, (lookup, file) in _entries(cache).items():
        folder = lookup()
        before, set_aside = _snapshot(folder), set(folder.parent.glob(f".{folder.name}.damaged-*"))
        _damage(folder / file, how)
        with pytest.warns(UserWarning, match=rf"cache entry {re.escape(str(folder))}: {file} (is \d+ bytes where \d+ "
                                             rf"were written|does not match its checksum); moved it to .*\.damaged-\d+ "
                                             rf"and rebuilding it"):
            again = lookup()
        assert again == folder and _snapshot(again) == before, name  # rebuilt, bit for bit
        damaged = list(set(folder.parent.glob(f".{folder.name}.damaged-*")) - set_aside)
        assert len(damaged) == 1 and _snapshot(damaged[0])[file] != before[file], name  # kept aside, as found
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            assert lookup() == folder
        assert not [w for w in seen if "cache entry" in str(w.message)], name  # it verifies now


@pytest.mark.parametrize("how", ["truncate", "flip", "no checksum"])
def test_a_damaged_reference_row_shard_is_set_aside_and_its_rows_computed_again(tmp_path, embedded, how):
    import methods
    from harness.config import ModelConfig
    from harness.data import Formatter, prepare_examples
    from harness.embedded.build import build_tokenizer
    from harness.models import fingerprint, load_causal_lm
    from harness.reference import Reference

    tokenizer = build_tokenizer()
    examples = prepare_examples(embedded.train_pairs[:6], Formatter(tokenizer, 64, 32), methods.get("dpo").consumes).examples
    reference = Reference(load_causal_lm(embedded.sft_path, ModelConfig()), fingerprint(embedded.sft_path))
    cache = str(tmp_path / "cache")
    values, computed = reference.cached_sequence_logps(examples, tokenizer.pad_token_id, cache)
    [shard] = list((tmp_path / "cache" / "reference-logps").rglob("*.safetensors"))
    if how == "no checksum":  # a shard written before shards carried one
        shard = shard.rename(shard.with_name(shard.name.rsplit("-", 1)[0] + ".safetensors"))
    else:
        _damage(shard, how)
    with pytest.warns(UserWarning, match=rf"cache entry {re.escape(str(shard))}: .*; moved it to .*\.damaged-\d+ and "
                                         rf"rebuilding it"):
        again, recomputed = reference.cached_sequence_logps(examples, tokenizer.pad_token_id, cache)
    assert computed == recomputed == 12 and again == values


# ------------------------------------------------------------------ tracking

def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: connections are refused


def test_an_unreachable_wandb_server_makes_the_run_log_offline(tmp_path, embedded, monkeypatch):
    from harness import tracking
    from harness.wandb_offline import summarize

    monkeypatch.setattr(tracking, "_unreachable", {})

    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # credentials present: the user asked for online logging
    started = time.perf_counter()
    with pytest.warns(UserWarning, match=r"W&B: http://127\.0\.0\.1:\d+: no answer within 3 s .*; this run logs "
                                         r"offline to .*offline-run-.* \(upload it later: wandb sync .*\)"):
        record = harness.train(load_config(None, quick_overrides(tmp_path, **{
            "wandb.mode": "online", "wandb.init_timeout": 3, "train.max_steps": 3, "train.log_steps": 1,
            "eval.num_prompts": 0})))
    assert time.perf_counter() - started < 60  # bounded by init_timeout, not wandb's 90 s default
    assert record.status == "completed"
    tracking = json.loads((tmp_path / "run" / "record.json").read_text())["tracking"]
    assert tracking["wandb"] == "offline" and tracking["wandb_requested"] == "online"
    assert "connection refused" in tracking["wandb_fallback"]
    [logged] = Path(tracking["wandb_offline_dir"]).glob("run-*.wandb")  # what `wandb sync` uploads later
    assert summarize(logged)["exited"] and [r["train/loss"] for r in summarize(logged)["history"]] == \
        [r["loss"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) if "step" in r]
    # the next run in this process (a sweep's next trial) does not wait for the server again
    started = time.perf_counter()
    with pytest.warns(UserWarning, match=r"W&B: http://\S+: not asked again \(still unreachable: CommError"):
        again = harness.train(load_config(None, quick_overrides(tmp_path / "again", **{
            "wandb.mode": "online", "wandb.init_timeout": 3, "train.max_steps": 1, "eval.num_prompts": 0})))
    assert again.tracking["wandb"] == "offline" and time.perf_counter() - started < 3


def test_wandb_lost_mid_run_never_fails_the_run(tmp_path, embedded, monkeypatch):
    import wandb

    calls = []

    def lost(self, *args, **kwargs):  # the server (or W&B's own process) gone after the second step
        calls.append(1)
        if len(calls) > 2:
            raise wandb.errors.CommError("connection to the W&B server lost")

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", lost)
    with pytest.warns(UserWarning, match=r"W&B: log failed \(CommError: connection to the W&B server lost\); this "
                                         r"run goes on without W&B, logging to .*metrics\.jsonl"):
        record = harness.train(load_config(None, quick_overrides(tmp_path, **{
            "wandb.mode": "offline", "train.max_steps": 5, "train.log_steps": 1, "eval.num_prompts": 0})))
    assert record.status == "completed" and len(calls) == 3  # no call after the failure
    assert record.tracking["wandb_lost"] == "log: CommError: connection to the W&B server lost"
    steps = [r["step"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) if "step" in r]
    assert steps == [1, 2, 3, 4, 5]  # the local log has every step


def test_wandb_lost_at_finish_is_in_the_record_on_disk(tmp_path, embedded, monkeypatch):
    import wandb

    def lost(self, *args, **kwargs):
        raise wandb.errors.CommError("connection to the W&B server lost")

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "finish", lost)
    with pytest.warns(UserWarning, match=r"W&B: finish failed"):
        record = harness.train(load_config(None, quick_overrides(tmp_path, **{
            "wandb.mode": "offline", "train.max_steps": 2, "eval.num_prompts": 0})))
    on_disk = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record.status == on_disk["status"] == "completed"
    assert on_disk["tracking"]["wandb_lost"] == "finish: CommError: connection to the W&B server lost"


# ------------------------------------------------------------------ a full disk

class FullDisk:
    """A file object that takes `room` bytes and then fails as a full disk does."""

    def __init__(self, handle, room: int = 10):
        self.handle, self.room = handle, room

    def write(self, data):
        if len(data) > self.room:
            self.handle.write(data[: self.room])
            self.handle.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def _fill_disk_at(monkeypatch, module, match, nth: int = 1):
    """The `nth` file `module` opens with os.fdopen for writing at a path that `match`es gets a full disk."""
    real, seen = os.fdopen, []

    def fdopen(fd, mode="r", *args, **kwargs):
        path = os.readlink(f"/proc/self/fd/{fd}")
        handle = real(fd, mode, *args, **kwargs)
        if "w" in mode and match(path):
            seen.append(path)
            if len(seen) == nth:
                return FullDisk(handle)
        return handle

    monkeypatch.setattr(f"{module}.os.fdopen", fdopen)


def _run(tmp_path, **extra):
    return load_config(None, quick_overrides(tmp_path, **{"train.max_steps": 12, "train.save_steps": 4,
                                                          "train.log_steps": 1, "eval.num_prompts": 0, **extra}))


def _no_temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if not p.name.endswith((".lock", ".manifest.json"))]


@pytest.mark.parametrize("error", ["ENOSPC", "torch's writer"])
def test_disk_full_at_a_checkpoint_keeps_the_previous_one_and_the_run_resumes_from_it(tmp_path, embedded, monkeypatch,
                                                                                       error):
    """A full disk as Python reports it (OSError ENOSPC), or as torch's zip writer does (a RuntimeError, on a file
    system with no room left: what a real full disk gave here)."""
    from accelerate import Accelerator

    real = Accelerator.save_state

    def save_state(self, output_dir, **kwargs):
        if output_dir.endswith("step-8"):  # the second checkpoint: some files written, then no room
            Path(output_dir).mkdir(parents=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"\0" * 100)
            if error == "ENOSPC":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            monkeypatch.setattr("harness.errors._out_of_space", lambda path: True)
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 651968 vs 651860")
        return real(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", save_state)
    run = tmp_path / "run"
    with pytest.raises(WriteFailed, match=rf"^cannot write {run}/checkpoints/step-8: No space left on device$"):
        harness.train(_run(tmp_path))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-4"]  # the partial one is gone
    assert json.loads((run / "checkpoints" / "step-4" / "trainer_state.json").read_text())["step"] == 4
    record = json.loads((run / "record.json").read_text())
    assert record["status"] == "failed" and record["error"] == \
        f"WriteFailed: cannot write {run}/checkpoints/step-8: No space left on device"
    monkeypatch.setattr(Accelerator, "save_state", real)  # room again: the same run resumes from step 4
    monkeypatch.setattr("harness.errors._out_of_space", lambda path: False)
    again = harness.train(_run(tmp_path))
    assert again.status == "completed" and again.metrics["resumed_from_step"] == 4


def test_a_writer_failure_with_room_left_is_not_called_a_full_disk(tmp_path):
    from harness.errors import writing

    with pytest.raises(RuntimeError, match="unexpected pos"):  # said as it is: not a storage fault
        with writing(tmp_path / "x", partial=tmp_path / "x"):
            (tmp_path / "x").write_text("begun")
            raise RuntimeError("unexpected pos")
    assert not (tmp_path / "x").exists()  # what it had begun is removed all the same


def test_write_failed_crosses_processes_whole_and_only_a_writers_error_is_called_a_full_disk(tmp_path, monkeypatch):
    import pickle

    from harness.errors import writing

    error = WriteFailed(tmp_path / "record.json", OSError(errno.ENOSPC, "x"))
    again = pickle.loads(pickle.dumps(error))  # what Ray does to a trial's error on its way to the driver
    assert (type(again), str(again), again.errno, again.path) == (WriteFailed, str(error), errno.ENOSPC, error.path)
    monkeypatch.setattr("harness.errors._out_of_space", lambda path: True)
    with pytest.raises(WriteFailed):
        with writing(tmp_path / "x"):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 651968 vs 651860")
    with pytest.raises(RuntimeError, match="^loss is nan at step 3$"):  # a training error stays one, disk or not
        with writing(tmp_path / "x"):
            raise RuntimeError("loss is nan at step 3")


@pytest.mark.parametrize("site", ["record", "metrics", "model", "reference rows", "cache entry"])
def test_disk_full_at_each_write_site_names_the_path_and_loses_nothing_written_before(tmp_path, embedded, monkeypatch,
                                                                                       site):
    run = tmp_path / "run"
    cache = tmp_path / "cache"  # the sites that write cache entries get a small task in a cache of their own
    own_cache = {"cache_dir": str(cache), "task.sft_steps": 3, "task.num_sft_examples": 64}
    config = _run(tmp_path, **own_cache if site in ("reference rows", "cache entry") else {})
    if site == "record":  # the final record (`completed`): the one written at the start stays
        _fill_disk_at(monkeypatch, "harness.cache", lambda path: "/.record.json-" in path, nth=2)
        expected = run / "record.json"
    elif site == "metrics":  # the 6th line of metrics.jsonl: the disk fills part-way through it, as os.write sees it
        real_write, lines = os.write, []

        def write(fd, data):
            if os.readlink(f"/proc/self/fd/{fd}").endswith("/metrics.jsonl"):
                lines.append(1)
                if len(lines) == 6:
                    return real_write(fd, data[:10])  # a short write: the first 10 bytes land, then no room
            return real_write(fd, data)

        monkeypatch.setattr(os, "write", write)
        expected = run / "metrics.jsonl"
    elif site == "model":
        from transformers import PreTrainedModel

        def save_pretrained(self, folder, *args, **kwargs):
            Path(folder).mkdir(parents=True, exist_ok=True)
            (Path(folder) / "model.safetensors").write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(PreTrainedModel, "save_pretrained", save_pretrained)
        expected = run / "model"
    elif site == "reference rows":
        _fill_disk_at(monkeypatch, "harness.cache", lambda path: ".safetensors-" in path)
        expected = None  # the shard's final name holds its checksum
    else:  # a cache entry being built: the embedded task's SFT model being saved
        from transformers import PreTrainedModel

        def save_pretrained(self, folder, *args, **kwargs):
            (Path(folder) / "model.safetensors").parent.mkdir(parents=True, exist_ok=True)
            (Path(folder) / "model.safetensors").write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(PreTrainedModel, "save_pretrained", save_pretrained)
        expected = None
    with pytest.raises(WriteFailed) as failed:
        harness.train(config)
    message = str(failed.value)
    assert "\n" not in message and message.endswith(": No space left on device"), message
    if expected is not None:
        assert message == f"cannot write {expected}: No space left on device"
    elif site == "reference rows":
        assert re.fullmatch(rf"cannot write {cache}/reference-logps/\w+/\d+-\d+-[0-9a-f]{{16}}\.safetensors: No space "
                            rf"left on device", message), message
    else:
        assert message.startswith(f"cannot write {cache}/embedded-task/")
        assert not (cache / "embedded-task").exists() or not [p for p in (cache / "embedded-task").iterdir()
                                                              if not p.name.endswith(".lock")]
    assert not _no_temp_files(tmp_path), _no_temp_files(tmp_path)  # nothing half-written left behind
    if run.exists():
        record = json.loads((run / "record.json").read_text())  # intact: the last one written
        assert record["status"] in ("running", "failed")
        for line in (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []:
            json.loads(line)  # every line whole
    if site == "metrics":
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 5
