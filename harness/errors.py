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


class WriteFailed(OSError):
    """A write the harness could not complete (a full disk, a quota, a read-only folder). One line naming the
    path; the write it interrupted left nothing behind, and what was there before it is intact."""

    def __init__(self, path, error: OSError):
        reason = os.strerror(error.errno) if error.errno else str(error)
        super().__init__(error.errno, f"cannot write {path}: {reason}")
        self.path = str(path)

    def __str__(self) -> str:
        return self.strerror


# What a write meets when the storage, not the harness, is at fault: a full disk, a quota, a file too large,
# a read-only mount.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


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
        full = isinstance(error, (OSError, RuntimeError)) and not isinstance(error, WriteFailed) and _out_of_space(path)
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
