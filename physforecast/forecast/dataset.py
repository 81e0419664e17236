"""The forecast Dataset: model output as an ``xr.Dataset`` in the package's forecast convention.

Data variables ``(sample | init_time, lead_time, [level...], y | latitude, x | longitude)``
in physical units; coordinate ``lead_time`` in steps (1, 2, ...), ``init_index`` (the time
index of the last input frame), ``init_time`` and ``valid_time`` when the source has a time
coordinate, ``trajectory`` per sample for simulations; per-sample physical parameters as
variables ``(sample,)``; the source's grid coordinates and attributes. Every forecast the
package makes (:func:`~physforecast.forecast.rollout.rollout`, the evaluation of test
windows) is built here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from physforecast.data.layout import ChannelLayout

__all__ = ["forecast_dataset", "declared_parameters", "sample_parameters"]


def declared_parameters(ds: xr.Dataset) -> list[str]:
    """The physical parameters a dataset declares in its ``parameters`` attribute."""
    return [p.strip() for p in str(ds.attrs.get("parameters", "")).split(",") if p.strip()]


def sample_parameters(
    ds: xr.Dataset,
    names: list[str],
    trajectory: np.ndarray | None,
    n: int,
    *,
    strict: frozenset[str] | set[str] = frozenset(),
) -> dict[str, np.ndarray]:
    """Per-sample values ``(n,)`` of the parameters ``names`` that ``ds`` holds.

    A parameter is a scalar variable or one along ``trajectory`` (indexed by the samples'
    trajectory positions). Others are skipped, unless their name is in ``strict``, which
    raises a ``ValueError``.
    """
    out = {}
    for name in names:
        if name not in ds.data_vars:
            continue
        da = ds[name]
        if da.dims == ():
            values = np.full(n, np.asarray(da.values).item())
        elif da.dims == ("trajectory",) and trajectory is not None:
            values = np.asarray(da.values)[trajectory]
        elif name in strict:
            raise ValueError(
                f"parameter {name!r} has dims {da.dims}; expected a scalar or ('trajectory',)"
            )
        else:
            continue
        out[str(name)] = values
    return out


def _time_attrs(time: xr.DataArray) -> dict[str, Any]:
    if time.dtype.kind in "mM":
        return {k: v for k, v in time.attrs.items() if k not in ("units", "calendar")}
    return dict(time.attrs)


def _time_step(ds: xr.Dataset) -> Any:
    """The spacing of a regular time coordinate (or the ``dt`` attribute), else None."""
    t = ds["time"].values
    if t.size >= 2:
        d = np.diff(t)
        return d[0] if (d == d[0]).all() else None
    dt = ds.attrs.get("dt")
    if dt is not None and t.dtype.kind in "fiu":
        return float(dt)
    return None


def forecast_dataset(
    values: np.ndarray,
    *,
    layout: ChannelLayout,
    source: xr.Dataset,
    init_index: np.ndarray,
    trajectory: np.ndarray | None = None,
    params: Mapping[str, np.ndarray] | None = None,
    sample_dim: str = "sample",
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Build the forecast Dataset of ``values``.

    Parameters
    ----------
    values : np.ndarray
        Forecast in physical units, (S, L, C, H, W): S samples, L lead times, the
        ``layout``'s C channels.
    layout : ChannelLayout
        Which channels are which variable (and level).
    source : xr.Dataset
        The dataset the forecast started from: grid and level coordinates, variable and
        dataset attributes, and the time coordinate (for ``init_time``/``valid_time``).
    init_index : np.ndarray
        (S,) time position of each sample's last input frame in ``source``.
    trajectory : np.ndarray, optional
        (S,) trajectory position of each sample in ``source`` (simulations).
    params : mapping, optional
        Per-sample parameter values ``{name: (S,)}``.
    sample_dim : str
        ``"sample"``, or ``"init_time"`` for a reanalysis forecast indexed by its start.
    attrs : mapping, optional
        Attributes added to the source's.

    Returns
    -------
    xr.Dataset
        The forecast convention described in this module's docstring.
    """
    n, steps = values.shape[:2]
    lead = np.arange(1, steps + 1)
    init_index = np.asarray(init_index)
    keep = {*layout.spatial, *(d for e in layout.extra for d, _ in e)}
    coords: dict[str, Any] = {
        str(k): c.variable for k, c in source.coords.items() if c.dims and set(c.dims) <= keep
    }
    coords["lead_time"] = ("lead_time", lead, {"units": "steps", "long_name": "lead time"})
    coords["init_index"] = (
        sample_dim,
        init_index,
        {"long_name": "time index of the last input frame"},
    )
    if sample_dim != "init_time":
        coords[sample_dim] = np.arange(n)
    if trajectory is not None:
        has = "trajectory" in source.coords
        labels = source["trajectory"].values[trajectory] if has else np.asarray(trajectory)
        coords["trajectory"] = (sample_dim, labels, dict(source["trajectory"].attrs) if has else {})
    if "time" in source.coords:
        time = source["time"]
        time_attrs = _time_attrs(time)
        t0 = time.values[init_index]
        coords["init_time"] = (
            sample_dim,
            t0,
            {**time_attrs, "long_name": "time of the last input frame"},
        )
        step = _time_step(source)
        if step is not None:
            coords["valid_time"] = (
                (sample_dim, "lead_time"),
                t0[:, None] + step * lead[None, :],
                {**time_attrs, "long_name": "time the forecast is valid for"},
            )
    elif sample_dim == "init_time":
        coords["init_time"] = (
            "init_time",
            init_index,
            {"long_name": "time index of the last input frame"},
        )
    data_vars: dict[str, Any] = {
        name: (dims, block, dict(source[name].attrs))
        for name, (dims, block) in layout.unstack(values, (sample_dim, "lead_time")).items()
    }
    for name, v in (params or {}).items():
        data_vars[name] = ((sample_dim,), np.asarray(v), dict(source[name].attrs))
    return xr.Dataset(data_vars, coords=coords, attrs={**source.attrs, **(attrs or {})})
