"""The embedded task's built assets, shipped with the harness, so that every machine starts from the same models.

What is shipped (harness/embedded/assets/<kind>/<key>/, each a cache entry with its manifest of sizes and
sha256): the task (`embedded-task`: the tokenizer, the base model, the SFT model, the data files), its judge
(`embedded-judge`) and the proxy reward model the online methods optimise on the default training pairs
(`proxy-reward-model`). BUILT.json says where they were built (CPU model with its SIMD extensions, torch,
threads) and their fingerprints. Another CPU type builds slightly different models from the same seed
(different SIMD kernels round differently), so without them a comparison regenerated elsewhere would start
from another SFT model and judge.

The harness uses a shipped entry when its key matches (the same recipe and torch) and it verifies;
`task.shipped=false`, or a shipped entry that does not verify (a warning says so), builds it in the cache
instead. Every record says which (`dataset.shipped_assets`).

    harness assets            # rebuild them here (minutes) and compare with the shipped copies, file by file
    harness assets --replay   # replay the first steps of each build (seconds) and compare with what it recorded
    harness assets --write    # rebuild them here and replace the shipped copies (then regenerate results/)
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
BUILT = ASSETS / "BUILT.json"
KINDS = ("embedded-task", "embedded-judge", "proxy-reward-model")


def is_shipped(path: str | Path | None) -> bool:
    return path is not None and Path(path).resolve().is_relative_to(ASSETS)


def where_built() -> dict:
    """What decides the bits of a build: the CPU (model and SIMD extensions), torch and its threads."""
    import torch

    from harness.embedded.build import BUILD_THREADS
    from harness.record import _cpu_model

    return {"cpu_model": _cpu_model(), "torch": torch.__version__, "build_threads": BUILD_THREADS}
