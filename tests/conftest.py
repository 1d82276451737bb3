"""Shared fixtures. Tests never touch the network: hub offline, W&B disabled, a private cache dir."""

import os
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory):
    """One cache for the whole session: the embedded task is built once (~45 s) and reused."""
    path = os.environ.get("HARNESS_TEST_CACHE_DIR") or str(tmp_path_factory.mktemp("harness-cache"))
    os.environ["HARNESS_CACHE_DIR"] = path
    return path


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared test data lives beside the repo, not in it)")
    return path


@pytest.fixture(scope="session")
def embedded(cache_dir):
    from harness.config import TaskConfig
    from harness.embedded.build import prepare_embedded

    return prepare_embedded(TaskConfig(), cache_dir)


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None):
    import subprocess

    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd or REPO, timeout=900)


def call_cli(*args: str, env: dict | None = None, cwd: Path | None = None):
    """`harness ARGS` in this process, returning what run_cli returns (returncode, stdout, stderr): for commands
    that stop at bad input or only read records, without an interpreter's start-up (~1.5 s) each. run_cli runs
    it as a user does, in a process of its own."""
    import contextlib
    import io
    import subprocess
    from unittest import mock

    from cli import main

    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, env or {}), contextlib.chdir(cwd or Path.cwd()), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def quick_overrides(tmp_path: Path, **extra) -> list[str]:
    """Dotted overrides for a short real run on the embedded task."""
    base = {"output_dir": str(tmp_path / "run"), "train.max_steps": 4, "eval.num_prompts": 16,
            "train.save_steps": 0, "wandb.mode": "disabled"}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]
