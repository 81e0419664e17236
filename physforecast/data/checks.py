"""Checks of a dataset against the run's data settings, before any window is cut.

:func:`check_split_lengths` tells a user whose file is too short for the windows asked
for which split is short, by how much, and the settings that would fit (smaller
``in_steps`` / ``out_steps``, or a ``split`` that gives the short splits more time),
computed from the file's own length.

Examples
--------
>>> import numpy as np, xarray as xr
>>> ds = xr.Dataset({"sst": (("time", "y", "x"), np.zeros((50, 2, 2)))})
>>> check_split_lengths(ds, [0.8, 0.1, 0.1], 10, 10)
Traceback (most recent call last):
...
physforecast.errors.WindowsTooShortError: the validation split has 5 of the dataset's 50 time steps (data.split=[0.8, 0.1, 0.1]), and so has the test split, but a window needs data.in_steps + data.out_steps = 10 + 10 = 20. Use fewer steps per window, e.g. --set data.in_steps=2 data.out_steps=3 (5 fit the shortest split as it is)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import xarray as xr

from physforecast.errors import WindowsTooShortError

from .windows import split_indices

__all__ = ["SPLIT_NAMES", "split_lengths", "check_split_lengths"]

SPLIT_NAMES = ("training", "validation", "test")


def split_lengths(ds: xr.Dataset, fractions: Sequence[float], seed: int = 0) -> list[int]:
    """Time steps each split offers one window: a trajectory's length for simulations
    (split by trajectory), the block's length for reanalysis (split by time)."""
    if "trajectory" in ds.dims:
        return [ds.sizes["time"] if f > 0 else 0 for f in fractions]
    out = []
    for sel, f in zip(split_indices(ds, fractions, seed=seed), fractions):
        block = sel["time"]
        out.append(len(range(*block.indices(ds.sizes["time"]))) if f > 0 else 0)
    return out


def _fewer_steps(fit: int, in_steps: int, out_steps: int) -> tuple[int, int]:
    """``in_steps + out_steps = fit``, keeping their ratio, each >= 1."""
    new_in = min(fit - 1, max(1, round(fit * in_steps / (in_steps + out_steps))))
    return new_in, fit - new_in


def _larger_split(
    ds: xr.Dataset, need: int, fractions: Sequence[float], seed: int
) -> list[float] | None:
    """Fractions (in hundredths) that give every used split ``need`` steps, or None."""
    n = ds.sizes["time"]
    used = [f > 0 for f in fractions]
    for hundredths in range(math.ceil(100 * need / n), 50):
        others = [hundredths / 100 if u else 0.0 for u in used[1:]]
        split = [round(1 - sum(others), 2), *others]
        if split[0] <= 0:
            return None
        lengths = split_lengths(ds, split, seed)
        if all(m >= need for m, u in zip(lengths, used) if u):
            return split
    return None


def check_split_lengths(
    ds: xr.Dataset,
    fractions: Sequence[float],
    in_steps: int,
    out_steps: int,
    *,
    seed: int = 0,
) -> None:
    """Raise :class:`~physforecast.errors.WindowsTooShortError` when a split cannot hold
    one window of ``in_steps + out_steps`` frames.

    The message names the short split(s) with their length and the dataset's, and the
    settings that would fit: fewer steps per window, and (for reanalysis, split into
    blocks of time) a ``data.split`` giving the short splits enough time when the dataset
    is long enough for that.
    """
    if "time" not in ds.dims:
        return  # the windows say so, naming the dims
    need = in_steps + out_steps
    n = ds.sizes["time"]
    lengths = split_lengths(ds, fractions, seed)
    short = [i for i, (f, m) in enumerate(zip(fractions, lengths)) if f > 0 and m < need]
    if not short:
        return
    shown = [round(float(f), 4) for f in fractions]
    if "trajectory" in ds.dims:
        head = f"each trajectory has {n} time steps"
    else:
        first = short[0]
        head = (
            f"the {SPLIT_NAMES[first]} split has {lengths[first]} of the dataset's {n} time "
            f"steps (data.split={shown})"
        )
        for i in short[1:]:
            same = lengths[i] == lengths[first]
            head += (
                f", and so has the {SPLIT_NAMES[i]} split"
                if same
                else f", the {SPLIT_NAMES[i]} split {lengths[i]}"
            )
    message = (
        f"{head}, but a window needs data.in_steps + data.out_steps = "
        f"{in_steps} + {out_steps} = {need}."
    )
    fit = min(lengths[i] for i in short)
    fixes = []
    if fit >= 2:
        a, b = _fewer_steps(fit, in_steps, out_steps)
        fixes.append(
            f"Use fewer steps per window, e.g. --set data.in_steps={a} data.out_steps={b} "
            f"({fit} fit the shortest split as it is)"
        )
    if "trajectory" not in ds.dims:
        better = _larger_split(ds, need, fractions, seed)
        if better is not None:
            listed = ",".join(f"{v:g}" for v in better)
            fixes.append(f"or give the short splits more time: --set data.split=[{listed}]")
    if not fixes:
        fixes.append(
            "The dataset is too short for three splits of such windows: lower "
            "data.in_steps and data.out_steps"
        )
    raise WindowsTooShortError(message + " " + ", ".join(fixes))
