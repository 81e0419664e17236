"""Training: the trainer, checkpoints, distributed setup and the end-to-end run pipeline.

The names below load on first use (the ``physforecast`` command's parser imports
:mod:`physforecast.training.commands` without loading torch).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Trainer", "TrainingDivergedError", "mse_loss_fn", "save_checkpoint", "load_checkpoint"]

_WHERE = {
    "Trainer": "physforecast.training.trainer",
    "TrainingDivergedError": "physforecast.training.trainer",
    "mse_loss_fn": "physforecast.training.trainer",
    "save_checkpoint": "physforecast.checkpoint",
    "load_checkpoint": "physforecast.checkpoint",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
