"""The shared backend: config, data, models, training loop, log-probs, generation, tracking, pipeline."""

from .errors import BadInput
from .logps import SequenceLogps

__version__ = "0.1.0"


def __getattr__(name):
    # Heavy imports (transformers, accelerate) only when the pipeline is used, so `harness methods` is quick.
    if name in ("train", "RunRecord", "load_config"):
        from . import config, pipeline, record

        return {"train": pipeline.train, "RunRecord": record.RunRecord, "load_config": config.load_config}[name]
    raise AttributeError(name)


__all__ = ["SequenceLogps", "BadInput", "train", "RunRecord", "load_config", "__version__"]
