"""Errors the CLI turns into exit codes: BadInput -> 2 (one line, no traceback); anything else a run raises
(WriteFailed among them) -> 1, its record saying why."""

import contextlib
import errno
import os
from pathlib import Path


class BadInput(ValueError):
    """Bad config, data or path. The message is one line that names the file, row, field or key."""


def validation_message(error, what: str = "key") -> str:
    """One line for the first problem in a pydantic ValidationError, naming its dotted key."""
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
    return f"{what} {key!r}: {message}" if key else message


def first_line(error: BaseException) -> str:
    """An error's message in one line (its first), or its type's name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class WriteFailed(OSError):
    """A write the harness could not complete (a full disk, a quota, a read-only folder). One line naming the
    path; the write it interrupted left nothing behind, and what was there before it is intact."""

    def __init__(self, path, error: OSError):
        reason = os.strerror(error.errno) if error.errno else str(error)
        super().__init__(error.errno, f"cannot write {path}: {reason}")
        self.path = str(path)

    def __str__(self) -> str:
        return self.strerror

    def __reduce__(self):  # as it was raised, across processes: a Ray trial's or worker's error reaches the driver whole
        return _write_failed, (self.path, self.errno, self.strerror)


def _write_failed(path: str, number: int | None, message: str) -> WriteFailed:
    error = WriteFailed.__new__(WriteFailed)
    OSError.__init__(error, number, message)
    error.path = path
    return error


# What a write meets when the storage, not the harness, is at fault: a full disk, a quota, a file too large,
# a read-only mount.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


# How writers that do not raise OSError report a full disk: torch's zip writer (torch.save, accelerate's
# checkpoints) raises RuntimeError "[enforce fail at inline_container.cc] . unexpected pos ..." or "PytorchStreamWriter
# failed writing file ...".
_WRITER_RUNTIME_ERRORS = ("unexpected pos", "PytorchStreamWriter failed", "file write failed")


def storage_fault(error: BaseException) -> bool:
    """Whether an error is the machine's, not the input's: no room or memory left. Code that turns a reader's
    errors into BadInput lets these through as they are."""
    return isinstance(error, MemoryError) or isinstance(error, OSError) and error.errno in WRITE_ERRNOS


def _out_of_space(path) -> bool:
    """Whether the file system `path` is on (its nearest existing folder's) has under 1 MiB left."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < 2**20


@contextlib.contextmanager
def writing(path, partial: Path | None = None):
    """Around one write site: what the write had begun (`partial`: a temp file or folder) is removed on any
    error, and a storage error becomes WriteFailed naming `path`: an OSError of WRITE_ERRNOS, or any failure
    of a writer that reports a full disk its own way (torch's zip writer raises RuntimeError "unexpected pos")
    when the file system is out of space."""
    try:
        yield
    except BaseException as error:
        writer = isinstance(error, OSError) or isinstance(error, RuntimeError) and any(
            marker in str(error) for marker in _WRITER_RUNTIME_ERRORS)  # not a training error (Diverged, out of memory)
        full = writer and not isinstance(error, WriteFailed) and _out_of_space(path)
        if partial is not None:
            import shutil

            if Path(partial).is_dir():
                shutil.rmtree(partial, ignore_errors=True)
            else:
                Path(partial).unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, WriteFailed) and error.errno in WRITE_ERRNOS:
            raise WriteFailed(path, error) from None
        if full:
            raise WriteFailed(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))) from error
        raise
