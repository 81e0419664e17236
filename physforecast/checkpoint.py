"""Checkpoints: tensors plus a JSON config, written atomically, read with ``weights_only``.

A checkpoint that cannot be read is a :class:`~physforecast.errors.CheckpointError` whose
message says what is wrong with the file (empty, truncated, not a checkpoint) and whether
its sibling (``best.pt`` beside ``last.pt``, and the other way round) is still good. One
that holds Python objects which would run code when unpickled is refused as unsafe
(:class:`~physforecast.errors.UnsafeCheckpointError`): the package never writes such
objects and never loads them.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from physforecast.atomic import atomic_write
from physforecast.errors import CheckpointError, UnsafeCheckpointError

__all__ = ["save_checkpoint", "load_checkpoint", "checkpoint_status", "CHECKPOINT_VERSION"]

CHECKPOINT_VERSION = 1


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` through a temporary file and ``os.replace``.

    A crash mid-write leaves the previous checkpoint intact. ``state`` must hold only
    tensors, numbers, strings and containers of them (what ``weights_only`` loads).
    """
    return atomic_write(path, lambda tmp: torch.save({"version": CHECKPOINT_VERSION, **state}, tmp))


def _read(path: Path, map_location: Any) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with its failures as :class:`CheckpointError`."""
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found is None:  # not a reference to code: a damaged or foreign file
            raise CheckpointError(
                f"checkpoint {path} is corrupt or truncated ({size} bytes; not a "
                "checkpoint archive)"
            ) from None
        what = f" (it refers to {found.group(1)})"
        raise UnsafeCheckpointError(
            f"checkpoint {path} refused as unsafe: it holds Python objects that would run "
            f"code when loaded{what}. physforecast checkpoints hold only tensors and numbers; "
            "this file was not written by physforecast or was tampered with. Do not load it; "
            "train again or use a checkpoint from a source you trust"
        ) from None
    except (RuntimeError, EOFError, ValueError, IndexError, KeyError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({size} bytes; torch says: {first})"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path} is not a physforecast checkpoint (it holds a {type(state).__name__}, "
            "not a dict of tensors)"
        )
    return state


def checkpoint_status(path: str | os.PathLike) -> str:
    """One phrase on the state of a checkpoint file: ``"intact (epoch 3)"``, ``"missing"``,
    or what is wrong with it."""
    path = Path(path)
    if not path.exists():
        return "missing"
    try:
        state = _read(path, "cpu")
    except UnsafeCheckpointError:
        return "refused as unsafe"
    except CheckpointError:
        return "unreadable"
    epoch = state.get("epoch")
    return f"intact (epoch {int(epoch)})" if epoch is not None else "intact"


def _sibling_note(path: Path) -> str:
    """What the other checkpoint of the pair says, and what to do with it."""
    other = {"last": "best", "best": "last"}.get(path.stem)
    if other is None:
        return ""
    sibling = path.with_name(f"{other}{path.suffix}")
    status = checkpoint_status(sibling)
    if status.startswith("intact"):
        todo = (
            "evaluate and forecast can use it (they read best.pt); to resume training from "
            f"it, copy it over {path.name}"
            if other == "best"
            else f"copy it over {path.name} to use it"
        )
        return f" {sibling.name} is {status}: {todo}."
    return f" {sibling.name} is {status}; train again (physforecast train --overwrite)."


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises
    ------
    FileNotFoundError
        When there is no file at ``path``.
    CheckpointError
        When the file is empty, truncated, corrupt or not a checkpoint; the message says
        whether the sibling checkpoint (``best.pt`` / ``last.pt``) is still good.
    UnsafeCheckpointError
        When the file would execute code if unpickled.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return _read(path, map_location)
    except UnsafeCheckpointError:
        raise
    except CheckpointError as err:
        raise CheckpointError(f"{err}.{_sibling_note(path)}") from None
