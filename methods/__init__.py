"""The methods registry. `methods.get("dpo", beta=0.1)` gives a validated method instance.

Adding a method = one new file in this package with a class decorated by `@register`; every module
here is imported on first use, so nothing else needs editing.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from harness.errors import BadInput

from .base import (ONLINE_METRICS, REFERENCES, SHARED_METRICS, LossOutput, Method, Params, ReferenceParams, batch_std,
                   hyper, mean_over_processes, reward_metrics)

_REGISTRY: dict[str, type[Method]] = {}
_discovered = False


def register(cls: type[Method]) -> type[Method]:
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    global _discovered
    if not _discovered:
        _discovered = True
        for module in pkgutil.iter_modules(__path__):
            if module.name != "base":
                importlib.import_module(f"{__name__}.{module.name}")


def available() -> dict[str, type[Method]]:
    _discover()
    return dict(sorted(_REGISTRY.items()))


def get_class(name: str) -> type[Method]:
    registry = available()
    if name not in registry:
        raise BadInput(f"unknown method {name!r}; choose one of: {', '.join(registry)}")
    return registry[name]


def get(name: str, **params: Any) -> Method:
    return get_class(name)(**params)


__all__ = ["Method", "Params", "ReferenceParams", "REFERENCES", "LossOutput", "hyper", "mean_over_processes", "batch_std",
           "reward_metrics", "SHARED_METRICS", "ONLINE_METRICS", "register", "available", "get", "get_class"]
