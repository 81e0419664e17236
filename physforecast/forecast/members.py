"""Ensemble rollouts of stochastic models: ``rollout(..., members=N)``.

Each member is an autoregressive rollout of its own: a stochastic model (one with
``stochastic = True``, a ``members`` attribute and ``reseed()``, such as ST-PAD's) draws
one sample per block, so the members evolve independently. The members are stacked
along a ``member`` dim, which the scorecard scores as an ensemble (CRPS, spread-skill).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

__all__ = ["ensemble_rollout"]


def ensemble_rollout(rollout_fn: Any, fc: Any, ds: xr.Dataset, steps: int, members: int, **kw):
    """``members`` rollouts of ``fc`` (a Forecaster of a stochastic model) along ``member``.

    Parameters
    ----------
    rollout_fn : callable
        :func:`~physforecast.forecast.rollout.rollout` (called with ``members=1``).
    fc : Forecaster
        Its ``model`` must be stochastic.
    ds, steps, **kw
        As :func:`~physforecast.forecast.rollout.rollout`.
    members : int
        Ensemble size ``N >= 2``.

    Raises
    ------
    ValueError
        A deterministic model (its members would all be equal).
    """
    if int(members) < 2:
        raise ValueError(f"members must be >= 1 (2 or more for an ensemble); got {members}")
    model = fc.model
    if not getattr(model, "stochastic", False):
        raise ValueError(
            f"--members {members} needs a stochastic model (trained with --method stpad); "
            f"{type(model).__name__} gives the same forecast every time"
        )
    saved = model.members
    model.members = 1
    model.reseed()
    try:
        runs = [rollout_fn(fc, ds, steps, members=1, **kw) for _ in range(members)]
    finally:
        model.members = saved
        model.reseed()
    fields = [v for v in runs[0].data_vars if "lead_time" in runs[0][v].dims]
    out = xr.concat(runs, dim="member", data_vars=fields, coords="minimal", compat="override")
    out = out.assign_coords(member=np.arange(members))
    out.attrs["forecast_members"] = int(members)
    return out
