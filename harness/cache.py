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
