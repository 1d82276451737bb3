"""The core: config, data, models, the training loop, log-probs, generation, caches, tracking, records and
the embedded task. It imports nothing above it (methods, evals, sweeps, app); `harness.train` is the
application layer's entry point, re-exported here lazily because DESIGN.md names it so."""

from .errors import BadInput

__version__ = "0.1.0"


def __getattr__(name):
    # Heavy imports (torch, transformers, accelerate) only when they are used, so a command that stops at bad
    # input (a spec, a config, a records folder) answers before torch is loaded.
    if name == "SequenceLogps":
        from .logps import SequenceLogps

        return SequenceLogps
    if name == "train":
        from app.pipeline import train

        return train
    if name in ("RunRecord", "load_config"):
        from . import config, record

        return {"RunRecord": record.RunRecord, "load_config": config.load_config}[name]
    raise AttributeError(name)


__all__ = ["SequenceLogps", "BadInput", "train", "RunRecord", "load_config", "__version__"]
