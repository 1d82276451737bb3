"""`harness assets`: rebuild the embedded task's shipped assets (harness/embedded/shipped.py) on this machine and
compare them with the shipped copies file by file, or replace the shipped copies with them (--write)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from harness.embedded.shipped import ASSETS, BUILT, KINDS, where_built


def build_all(cache_dir: str) -> dict[str, Path]:
    """Build the task, its judge and the default proxy reward model into `cache_dir`, ignoring the shipped
    copies; returns each entry's folder by kind."""
    from evals.judge import embedded_judge, proxy_reward_model
    from harness.config import OnlineConfig, RunConfig, TaskConfig
    from harness.embedded.build import prepare_embedded
    from harness.models import fingerprint

    assets = prepare_embedded(TaskConfig(shipped=False), cache_dir)
    judge, _ = embedded_judge(assets, cache_dir)
    rows = assets.train_pairs[: RunConfig().data.num_train]  # what a default run trains on (sources.load_task)
    proxy, _ = proxy_reward_model(assets.sft_path, fingerprint(assets.sft_path), rows, cache_dir,
                                  OnlineConfig().proxy_steps, shipped=False)
    return {"embedded-task": assets.root, "embedded-judge": Path(judge), "proxy-reward-model": Path(proxy)}


def differences(built: dict[str, Path]) -> list[str]:
    """What differs between freshly built entries and the shipped ones, file by file (empty: bit for bit)."""
    out = []
    for kind, folder in built.items():
        shipped = ASSETS / kind / folder.name
        if not shipped.is_dir():
            out.append(f"{kind}: no shipped entry {folder.name} (the recipe or torch changed: rebuild with --write)")
            continue
        names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        names |= {p.relative_to(shipped).as_posix() for p in shipped.rglob("*") if p.is_file()}
        out += [f"{kind}/{folder.name}/{name}" for name in sorted(names)
                if not (folder / name).is_file() or not (shipped / name).is_file()
                or (folder / name).read_bytes() != (shipped / name).read_bytes()]
    return out


def fingerprints(entries: dict[str, Path]) -> dict[str, str]:
    from harness.models import fingerprint

    return {"sft": fingerprint(str(entries["embedded-task"] / "sft")), "base": fingerprint(str(entries["embedded-task"] / "base")),
            "judge": fingerprint(str(entries["embedded-judge"])), "proxy": fingerprint(str(entries["proxy-reward-model"]))}


def write(built: dict[str, Path]) -> None:
    """Replace the shipped entries with `built` (and BUILT.json), all at once: they are assembled beside the
    shipped folder and renamed into its place, so a failure part-way leaves the shipped copies as they were."""
    from harness.cache import write_json_atomic
    from harness.errors import BadInput, writing

    if not os.access(ASSETS.parent, os.W_OK):
        raise BadInput(f"{ASSETS}: not writable (the shipped assets are replaced in a checkout installed with "
                       "pip install -e, then committed)")
    staging, old = ASSETS.with_name(".assets-writing"), ASSETS.with_name(".assets-replaced")
    for leftover in (staging, old):
        shutil.rmtree(leftover, ignore_errors=True)
    with writing(ASSETS, partial=staging):
        for kind in KINDS:
            shutil.copytree(built[kind], staging / kind / built[kind].name)
        write_json_atomic(staging / BUILT.name, {**where_built(), "fingerprints": fingerprints(built),
                                                 "entries": {kind: built[kind].name for kind in KINDS}})
        os.replace(ASSETS, old)
        try:
            os.replace(staging, ASSETS)
        except BaseException:
            os.replace(old, ASSETS)  # the shipped copies back in their place
            raise
    shutil.rmtree(old, ignore_errors=True)


def _machines(shipped: dict) -> dict:
    """Where the shipped assets were built against where this rebuild ran: bit for bit is expected only when equal."""
    here = where_built()
    there = {k: shipped.get(k) for k in here}
    return {"built_here": here, "shipped_from": there, "same_machine_type": here == there}


def check_or_write(write_them: bool = False, cache_dir: str | None = None) -> tuple[dict, int]:
    """Rebuild the assets (in `cache_dir`, else a temp folder removed after) and compare them with the shipped
    ones, or write them over the shipped ones. Returns a report and an exit code: 1 when this machine is where
    the shipped assets were built (CPU type, torch, threads) and yet the rebuild differs from them."""
    cache = cache_dir or tempfile.mkdtemp(prefix="harness-assets-")
    try:
        built = build_all(cache)
        if write_them:
            write(built)
            return {"wrote": {kind: str(ASSETS / kind / built[kind].name) for kind in KINDS}}, 0
        shipped = json.loads(BUILT.read_text())
        found = differences(built)
        report = {**_machines(shipped), "fingerprints_here": fingerprints(built),
                  "shipped_fingerprints": shipped["fingerprints"], "bit_for_bit": not found, "differing_files": found}
        return report, 1 if report["same_machine_type"] and found else 0
    finally:
        if not cache_dir:
            shutil.rmtree(cache, ignore_errors=True)


def replay_check(workdir: str | None = None) -> tuple[dict, int]:
    """The beginning of every shipped build, replayed here in seconds: the task's data files, tokenizer and base
    model rebuilt and compared file by file, and the SFT model, the judge and the proxy reward model each trained
    for REPLAY_STEPS steps of their recipe (from the shipped SFT model, as their builds started from it) and
    compared with the weights' digests their builds recorded then. Returns a report and an exit code: 1 when
    this machine is where the shipped assets were built and yet anything differs."""
    from evals.judge import train_bt_judge
    from harness.config import TaskConfig
    from harness.embedded.build import REPLAY_STEPS, build_threads, replay_build

    shipped = json.loads(BUILT.read_text())
    task, judge, proxy = (ASSETS / kind / shipped["entries"][kind] for kind in KINDS)
    out = Path(workdir or tempfile.mkdtemp(prefix="harness-replay-"))
    try:
        digests = {"sft": replay_build(TaskConfig(), out, REPLAY_STEPS)[str(REPLAY_STEPS)]}
        data = json.loads((task / "data.json").read_text())
        for name, folder, pairs in (("judge", judge, data["judge_pairs"]), ("proxy", proxy, None)):
            info = json.loads((folder / "judge_info.json").read_text())
            rows = pairs if pairs is not None else data["train_pairs"][: info["train_pairs"]]
            with build_threads():
                digests[name] = train_bt_judge(str(task / "sft"), rows, None, steps=info["steps"],
                                               stop_at=REPLAY_STEPS)[1][str(REPLAY_STEPS)]
        recorded = {"sft": json.loads((task / "sft_log.json").read_text())["weights_at_step"][str(REPLAY_STEPS)],
                    **{name: json.loads((folder / "judge_info.json").read_text())["weights_at_step"][str(REPLAY_STEPS)]
                       for name, folder in (("judge", judge), ("proxy", proxy))}}
        files = [p.relative_to(out).as_posix() for p in sorted(out.rglob("*")) if p.is_file()]
        differing = [f"embedded-task/{task.name}/{name}" for name in files
                     if (out / name).read_bytes() != (task / name).read_bytes()]
        differing += [f"{name} weights after {REPLAY_STEPS} steps" for name in digests if digests[name] != recorded[name]]
        report = {**_machines(shipped), "replayed_steps": REPLAY_STEPS, "files_compared": files,
                  "digests_here": digests, "digests_shipped": recorded, "bit_for_bit": not differing,
                  "differing": differing}
        return report, 1 if report["same_machine_type"] and differing else 0
    finally:
        if not workdir:
            shutil.rmtree(out, ignore_errors=True)
