"""Content-addressed on-disk cache: a value lives under <cache_dir>/<kind>/<key>/ and is built once.

The key is a hash of everything that determines the value. Builds go to a temp dir that is renamed
into place when complete, under a file lock, so concurrent trials never see half a value.
Values are stored as safetensors/JSON/HF model folders: never pickle.

Every entry carries what verifies it: a manifest of each file's size and sha256, written last. A read
verifies the entry first; one that does not verify (a file truncated, a byte flipped, a file lost, a
crash or a bad copy) is a miss: it is moved aside, rebuilt, and a one-line warning names it. A rebuild
gives the bit-identical value (the cache's promise: same CPU type, same torch). Row-cache shards carry
their checksum in their file name and are verified the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock

from .errors import writing

MANIFEST = ".manifest.json"
_verified: set[tuple] = set()  # entries this process verified, with their files' sizes and modification times


def key_of(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _entry_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path) -> None:
    """Each file's size and sha256 (paths relative to the entry), written last: an entry without it is not complete."""
    files = {p.relative_to(folder).as_posix(): [p.stat().st_size, file_digest(p)] for p in _entry_files(folder)}
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=1, sort_keys=True))


def verify(folder: Path) -> str | None:
    """None when every file of the entry is there with its recorded size and checksum; else what is wrong."""
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return "it has no manifest (not written completely, or by a harness before entries carried one)"
    except (ValueError, KeyError, TypeError):
        return "its manifest is unreadable"
    for name, (size, digest) in files.items():
        path = folder / name
        try:
            if path.stat().st_size != size:
                return f"{name} is {path.stat().st_size} bytes where {size} were written"
            if file_digest(path) != digest:
                return f"{name} does not match its checksum"
        except OSError:  # gone, or moved aside by another process as we read it
            return f"{name} is missing"
    return None


def _verified_once(folder: Path) -> str | None:
    """verify(), remembered per process for an entry that passed, until any of its files changes (size or
    modification time): a long run reads its entries many times, and hashing is the costly part."""
    try:
        stamp = (str(folder), tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                                    for p in sorted(folder.rglob("*")) if p.is_file()))
    except OSError:  # another process moved the entry aside while we listed it: the locked path decides
        return "it changed while it was being read"
    if stamp in _verified:
        return None
    problem = verify(folder)
    if problem is None:
        _verified.add(stamp)
    return problem


def set_aside(path: Path, reason: str) -> Path:
    """Move a damaged entry (or shard) out of the cache's way, beside it, and say so in one line. The latest
    damaged copy of each entry is kept (to look at), earlier ones are removed, so they never pile up."""
    for earlier in path.parent.glob(f".{path.name}.damaged-*"):
        shutil.rmtree(earlier, ignore_errors=True) if earlier.is_dir() else earlier.unlink(missing_ok=True)
    aside = path.with_name(f".{path.name}.damaged-{time.time_ns()}")
    os.replace(path, aside)
    warnings.warn(f"cache entry {path}: {reason}; moved it to {aside} and rebuilding it", stacklevel=3)
    return aside


def cached_dir(cache_dir: str | Path, kind: str, key: str, build: Callable[[Path], None],
               shipped: Path | None = None) -> tuple[Path, bool]:
    """(path, hit): the folder for (kind, key), verified, calling build(tmp_folder) first if it is not there
    yet or did not verify. With `shipped` (a read-only store of entries laid out as the cache is), an entry
    found and verified there is used as it is."""
    if shipped is not None and (shipped / kind / key).is_dir():
        problem = _verified_once(shipped / kind / key)
        if problem is None:
            return shipped / kind / key, True
        warnings.warn(f"shipped asset {shipped / kind / key}: {problem}; using the cache's own copy or building one",
                      stacklevel=2)
    root = Path(cache_dir).expanduser() / kind
    final = root / key
    if final.is_dir() and _verified_once(final) is None:
        return final, True
    with writing(root):
        root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{key}.lock")):
        if final.is_dir():
            problem = verify(final)
            if problem is None:
                return final, True
            set_aside(final, problem)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
        try:
            with writing(final, partial=tmp):
                build(tmp)
                write_manifest(tmp)
                os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final, False


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write to a temp file beside `path` (a dot-name no reader lists), then rename it over `path`: a reader
    sees the old file or the new one, never half of one. A failed write (WriteFailed) leaves the old file and
    no temp file."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with writing(path, partial=Path(tmp)):
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        # the mode open() would have given it (mkstemp makes it private): a record or report on shared storage
        # stays readable by whoever the umask lets read it
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


_UMASK = os.umask(0)  # read once, at import: setting it back and forth later would race with other threads
os.umask(_UMASK)


def write_json_atomic(path: str | Path, value: Any, indent: int = 2) -> None:
    write_text_atomic(path, json.dumps(value, indent=indent, default=str) + "\n")


class RowCache:
    """Per-sequence float values (reference log-probs) under <cache_dir>/<kind>/<key>/, one entry per token
    sequence, keyed by a hash of its ids. A run computes only the rows no earlier run or trial did and adds
    them as a new shard, written atomically, its sha256 in its name; `fill` holds a file lock, so two
    processes never compute the same rows at once. A shard that does not verify is set aside and its rows
    are computed again."""

    def __init__(self, cache_dir: str | Path, kind: str, key: str):
        self.folder = Path(cache_dir).expanduser() / kind / key

    @staticmethod
    def row_key(prompt: list[int], completion: list[int]) -> bytes:
        return hashlib.sha256(json.dumps([prompt, completion]).encode()).digest()[:16]

    @staticmethod
    def _shard_values(shard: Path) -> tuple[dict[bytes, float] | None, str | None]:
        from safetensors import SafetensorError
        from safetensors.torch import load

        data = shard.read_bytes()
        named = shard.stem.rsplit("-", 1)[-1]
        if len(named) != 16:
            return None, "its name holds no checksum (written by a harness before shards carried one)"
        if hashlib.sha256(data).hexdigest()[:16] != named:
            return None, "it does not match the checksum in its name"
        try:
            stored = load(data)
        except SafetensorError as error:  # a checksum that matches a file safetensors cannot read: not ours
            return None, f"it is not readable as safetensors ({error})"
        return dict(zip((bytes(k) for k in stored["keys"].tolist()), stored["values"].tolist())), None

    def load(self) -> dict[bytes, float]:
        found: dict[bytes, float] = {}
        for shard in sorted(self.folder.glob("[!.]*.safetensors")):  # not a writer's temp file, nor one set aside
            values, problem = self._shard_values(shard)
            if problem is not None:
                set_aside(shard, problem)
                continue
            found.update(values)
        return found

    def fill(self, rows: list[tuple[list[int], list[int]]], compute: Callable[[list[int]], list[float]]) -> tuple[list[float], int]:
        """Values for `rows` (prompt ids, completion ids), calling compute(indices of the missing rows) for
        the values not stored yet. Returns the values in row order and how many were computed."""
        import torch
        from safetensors.torch import save

        with writing(self.folder):
            self.folder.mkdir(parents=True, exist_ok=True)
        keys = [self.row_key(p, c) for p, c in rows]
        with FileLock(str(self.folder / ".lock")):
            stored = self.load()
            first_of: dict[bytes, int] = {}
            for index, key in enumerate(keys):
                if key not in stored:
                    first_of.setdefault(key, index)  # one computation per distinct sequence
            missing = list(first_of.values())
            if missing:
                # stored as float32; returned rounded the same way, so a run that computed them and a run
                # that read them train on identical values
                fresh = torch.tensor(compute(missing), dtype=torch.float32)
                data = save({"keys": torch.tensor([list(keys[i]) for i in missing], dtype=torch.uint8), "values": fresh})
                name = f"{time.time_ns()}-{os.getpid()}-{hashlib.sha256(data).hexdigest()[:16]}.safetensors"
                write_bytes_atomic(self.folder / name, data)
                stored.update(zip((keys[i] for i in missing), fresh.tolist()))
        return [stored[k] for k in keys], len(missing)
