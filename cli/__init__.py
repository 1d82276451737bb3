"""The face: the `harness` command (also `python -m harness`), above everything it drives.

Layers, top to bottom, each importing only those below it (tests/test_layers.py checks the folders):
cli -> sweeps (Ray Tune) -> app (RunContext, pipeline, reporting) -> evals, methods -> harness (the core).
"""

from .main import main

__all__ = ["main"]
