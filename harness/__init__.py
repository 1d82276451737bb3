"""The core: config, data, models, the training loop, log-probs, generation, caches, tracking, records and
the embedded task. It imports nothing above it (methods, evals, sweeps, app); `harness.train` is the
application layer's entry point, re-exported here lazily because DESIGN.md names it so."""

from .errors import BadInput
from .logps import SequenceLogps

__version__ = "0.1.0"


def __getattr__(name):
    # Heavy imports (transformers, accelerate) only when the pipeline is used, so `harness methods` is quick.
    if name == "train":
        from app.pipeline import train

        return train
    if name in ("RunRecord", "load_config"):
        from . import config, record

        return {"RunRecord": record.RunRecord, "load_config": config.load_config}[name]
    raise AttributeError(name)


__all__ = ["SequenceLogps", "BadInput", "train", "RunRecord", "load_config", "__version__"]
