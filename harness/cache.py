"""Content-addressed on-disk cache: a value lives under <cache_dir>/<kind>/<key>/ and is built once.

The key is a hash of everything that determines the value. Builds go to a temp dir that is renamed
into place when complete, under a file lock, so concurrent trials never see half a value.
Values are stored as safetensors/JSON/HF model folders: never pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock


def key_of(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cached_dir(cache_dir: str | Path, kind: str, key: str, build: Callable[[Path], None]) -> tuple[Path, bool]:
    """(path, hit): the folder for (kind, key), calling build(tmp_folder) first if it is not there yet."""
    root = Path(cache_dir).expanduser() / kind
    final = root / key
    if final.is_dir():
        return final, True
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{key}.lock")):
        if final.is_dir():
            return final, True
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
        try:
            build(tmp)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final, False


def write_json_atomic(path: str | Path, value: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(value, handle, indent=2, default=str)
        handle.write("\n")
    os.replace(tmp, path)


class RowCache:
    """Per-sequence float values (reference log-probs) under <cache_dir>/<kind>/<key>/, one entry per token
    sequence, keyed by a hash of its ids. A run computes only the rows no earlier run or trial did and adds
    them as a new shard, written atomically; `fill` holds a file lock, so two processes never compute the
    same rows at once."""

    def __init__(self, cache_dir: str | Path, kind: str, key: str):
        self.folder = Path(cache_dir).expanduser() / kind / key

    @staticmethod
    def row_key(prompt: list[int], completion: list[int]) -> bytes:
        return hashlib.sha256(json.dumps([prompt, completion]).encode()).digest()[:16]

    def load(self) -> dict[bytes, float]:
        from safetensors.torch import load_file

        found: dict[bytes, float] = {}
        for shard in sorted(self.folder.glob("*.safetensors")):
            stored = load_file(str(shard))
            found.update(zip((bytes(k) for k in stored["keys"].tolist()), stored["values"].tolist()))
        return found

    def fill(self, rows: list[tuple[list[int], list[int]]], compute: Callable[[list[int]], list[float]]) -> tuple[list[float], int]:
        """Values for `rows` (prompt ids, completion ids), calling compute(indices of the missing rows) for
        the values not stored yet. Returns the values in row order and how many were computed."""
        import torch
        from safetensors.torch import save_file

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
                shard = {"keys": torch.tensor([list(keys[i]) for i in missing], dtype=torch.uint8), "values": fresh}
                fd, tmp = tempfile.mkstemp(prefix=".shard-", suffix=".safetensors", dir=self.folder)
                os.close(fd)
                save_file(shard, tmp)
                os.replace(tmp, self.folder / f"{time.time_ns()}-{os.getpid()}.safetensors")
                stored.update(zip((keys[i] for i in missing), fresh.tolist()))
        return [stored[k] for k in keys], len(missing)
