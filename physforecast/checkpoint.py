"""Checkpoints: tensors plus a JSON config, written atomically, read with ``weights_only``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from physforecast.atomic import atomic_write

__all__ = ["save_checkpoint", "load_checkpoint", "CHECKPOINT_VERSION"]

CHECKPOINT_VERSION = 1


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` through a temporary file and ``os.replace``.

    A crash mid-write leaves the previous checkpoint intact. ``state`` must hold only
    tensors, numbers, strings and containers of them (what ``weights_only`` loads).
    """
    return atomic_write(path, lambda tmp: torch.save({"version": CHECKPOINT_VERSION, **state}, tmp))


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, ValueError) as err:
        raise RuntimeError(f"checkpoint {path} is corrupt or truncated: {err}") from err
