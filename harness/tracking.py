"""Tracking: a local JSONL of every logged metric (always), and a W&B run (offline unless credentials exist).

W&B never stops training: a server that does not answer within `wandb.init_timeout` at the start of an
online run makes the run log offline (one warning, and the record says where: `wandb sync` uploads it
later; later runs in the same process, a sweep's next trials, do not wait for it again for RETRY_ONLINE_S); a W&B call that fails mid-run (the server lost, the W&B process gone) ends W&B logging for that run
with one warning, while the local metrics.jsonl goes on; and the end of a run waits at most
`wandb.finish_timeout` for the upload.
"""

from __future__ import annotations

import errno
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from .config import WandbConfig
from .errors import first_line, writing

METRICS_NAME = "metrics.jsonl"
RETRY_ONLINE_S = 600.0  # a server found unreachable is not waited for again, by runs in this process, for this long
_unreachable: dict[str, tuple[float, str]] = {}  # server -> (when it last failed, why): a sweep's trials share it


def finite_or_null(value: Any) -> Any:
    """`value` with every NaN or infinity replaced by None: JSON has no such numbers ("NaN" is not JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def wandb_mode(cfg: WandbConfig) -> str:
    if cfg.mode is not None:
        return cfg.mode
    if os.environ.get("WANDB_MODE") in ("offline", "online", "disabled"):
        return os.environ["WANDB_MODE"]
    has_key = bool(os.environ.get("WANDB_API_KEY")) or (Path.home() / ".netrc").is_file() and \
        "api.wandb.ai" in (Path.home() / ".netrc").read_text(errors="ignore")
    return "online" if has_key else "offline"


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _first_line(error: BaseException) -> str:
    """The error's type and the first line of its message: what the record and the warning say."""
    return f"{type(error).__name__}: {first_line(error)}" if str(error).strip() else type(error).__name__


class Tracker:
    def __init__(self, output_dir: Path, cfg: WandbConfig, *, name: str, group: str | None, job_type: str,
                 config: dict[str, Any], enabled: bool = True):
        # Under a multi-process launch only the main process tracks: its values are already reduced over all.
        self.path = output_dir / METRICS_NAME if enabled else None
        if self.path is not None:
            with writing(self.path):
                self.path.parent.mkdir(parents=True, exist_ok=True)
        self.run = None
        self.mode = wandb_mode(cfg)
        # What the run logged to, for its record: the W&B mode as it ran, and any fallback or loss on the way.
        self.status: dict[str, Any] = {"wandb": self.mode if enabled else "disabled"}
        if enabled and self.mode != "disabled":
            self.run = self._start(cfg, output_dir, project=cfg.project, entity=cfg.entity, group=cfg.group or group,
                                   job_type=job_type, name=name, config=flatten(config), dir=str(output_dir),
                                   reinit="create_new")

    def _start(self, cfg: WandbConfig, output_dir: Path, **init):
        import wandb

        def settings():
            return wandb.Settings(silent=True, console="off", init_timeout=cfg.init_timeout,
                                  finish_timeout=cfg.finish_timeout)

        server = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
        failed = _unreachable.get(server)
        if self.mode == "online" and failed is not None and time.time() - failed[0] < RETRY_ONLINE_S:
            reason = f"still unreachable: {failed[1]}"  # an earlier run in this process waited for it already
            waited = "not asked again"
        else:
            try:
                run = wandb.init(mode=self.mode, settings=settings(), **init)
                _unreachable.pop(server, None)
                return run
            except Exception as error:  # wandb raises CommError, UsageError, TimeoutError... for a server it cannot use
                if self.mode != "online":
                    raise
                reason = _first_line(error)
                _unreachable[server] = (time.time(), reason)
                waited = f"no answer within {cfg.init_timeout:g} s"
        run = wandb.init(mode="offline", settings=settings(), **init)
        where = str(Path(run.dir).parent)  # wandb/offline-run-*: what `wandb sync` takes
        warnings.warn(f"W&B: {server}: {waited} ({reason}); this run logs offline "
                      f"to {where} (upload it later: wandb sync {where})", stacklevel=3)
        self.status.update(wandb="offline", wandb_requested="online", wandb_fallback=reason, wandb_offline_dir=where)
        return run

    def _wandb(self, what: str, call: Callable) -> None:
        """A W&B call that may fail without failing the run: the first failure ends W&B logging, says so once,
        and is recorded; the local metrics.jsonl is unaffected."""
        if self.run is None:
            return
        try:
            call()
        except Exception as error:
            run, self.run = self.run, None
            self.status["wandb_lost"] = f"{what}: {_first_line(error)}"
            warnings.warn(f"W&B: {what} failed ({_first_line(error)}); this run goes on without W&B, logging to "
                          f"{self.path}", stacklevel=3)
            try:
                run.finish(exit_code=1, quiet=True)
            except Exception:  # already gone: nothing more to tell it
                pass

    def _append(self, row: dict[str, Any]) -> None:
        """One JSON line; a write that fails (a full disk) leaves the file as it was (WriteFailed names it)."""
        line = (json.dumps(finite_or_null(row), allow_nan=False) + "\n").encode()
        with writing(self.path):
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                size = os.fstat(fd).st_size
                try:
                    written = os.write(fd, line)
                    if written < len(line):  # a short write: the disk filled part-way through the line
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                except OSError:
                    os.ftruncate(fd, size)  # no buffer to flush first, so the cut-off bytes go (a text file's truncate would retry them)
                    raise
            finally:
                os.close(fd)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if self.path is None:
            return
        self._append({"step": step, **metrics})
        self._wandb("log", lambda: self.run.log({f"train/{k}": v for k, v in metrics.items()}, step=step))

    def log_objects(self, objects: dict[str, Any], summary: dict[str, Any] | None = None) -> None:
        """W&B objects (tables, images) and summary values on the W&B run only: they have no line in metrics.jsonl."""
        self._wandb("log", lambda: self.run.log(objects))
        self._wandb("summary", lambda: self.run.summary.update(summary or {}))

    def summary(self, metrics: dict[str, Any]) -> None:
        if self.path is None:
            return
        self._append({"summary": metrics})

        def update():
            for key, value in metrics.items():
                if isinstance(value, (int, float, str, bool)) or value is None:
                    self.run.summary[key] = value

        self._wandb("summary", update)

    def finish(self, failed: bool = False) -> None:
        if self.run is not None:
            import wandb

            self._wandb("finish", lambda: self.run.finish(exit_code=1 if failed else 0))
            self.run = None
            wandb.teardown()  # run.finish() can return before the offline file is flushed
