"""Training: run config, DeepSpeed engine, schedule, the train loop, metrics, checkpoints, signals.

`run` is imported on first use, so reading a run config does not import DeepSpeed.
"""

from __future__ import annotations

import importlib


def __getattr__(name: str):
    if name == "run":
        return importlib.import_module("layoutlmv3.training.pretraining_job").run
    raise AttributeError(f"module 'layoutlmv3.training' has no attribute {name!r}")


__all__ = ["run"]
