"""The scorecard: every metric of a suite on a forecast, per lead time and variable.

A suite is a list of metric names (from :data:`physforecast.registry.METRICS`) and/or
callables. :func:`score` evaluates it on a forecast and its truth (the forecast convention:
data variables ``(sample, lead_time, y, x)``, optionally with a ``member`` dim, per-sample
parameters as variables ``(sample,)``, source attrs ``system``, ``dx``, ``dy``, ``dt``...)
and returns an ``xr.Dataset`` with

- ``score (metric, lead_time, variable)``: the sample mean of the per-sample values (or the
  metric's own aggregate over samples for those registered ``reduces_samples``);
- ``summary (metric, variable)``: the mean over lead times, or the single value of a metric
  over the whole forecast window (TKE);

and the coordinates ``kind`` and ``higher_is_better`` (1, 0, NaN = neither) along
``metric``. :func:`scorecard_to_json` gives its JSON twin, :func:`write_scorecard` writes
both into a run directory, :func:`format_scorecard` prints a compact table.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from physforecast.registry import METRICS

from .weather import latitude_weights

__all__ = [
    "GENERIC_SUITE",
    "LATLON_SUITE",
    "ENSEMBLE_SUITE",
    "SUITES",
    "default_suite",
    "score",
    "scorecard_to_json",
    "write_scorecard",
    "format_scorecard",
]

#: Pointwise and spectral metrics for any gridded field.
GENERIC_SUITE = [
    "rmse",
    "mae",
    "rel_l2",
    "vrmse",
    "max_error",
    "pearson",
    "ssim",
    "frmse",
    "spectral_mse",
    "crmse",
    "brmse",
]
#: Latitude-longitude grids: the pointwise metrics get latitude weights; ACC is added when
#: a climatology is given.
LATLON_SUITE = ["rmse", "lat_rmse", "mae", "pearson"]
#: Added when the forecast has a ``member`` dim.
ENSEMBLE_SUITE = ["crps", "spread_skill_ratio"]
_STORM_SUITE = ["rmse", "mae", "csi", "csi_m", "pod", "far", "hss", "fss"]
#: Default suite per ``system`` attribute; add or replace entries to extend.
SUITES: dict[str, list[str | Callable[..., Any] | tuple[str, Callable[..., Any]]]] = {
    "ns2d": [*GENERIC_SUITE, "lsd", "ns_vorticity_residual"],
    "rayleigh_benard": [
        *GENERIC_SUITE,
        "divergence",
        "vorticity_rmse",
        "tke_mse",
        "tke_spectrum_mse",
    ],
    "storms": _STORM_SUITE,
    "sevir": _STORM_SUITE,
    "advection_diffusion": [*GENERIC_SUITE, "advection_diffusion_residual", "mass_drift"],
    "heat": [*GENERIC_SUITE, "advection_diffusion_residual", "mass_drift"],
    "shallow_water": [*GENERIC_SUITE, "shallow_water_continuity_residual", "mass_drift"],
}

_SPATIAL_NAMES = (("y", "x"), ("latitude", "longitude"), ("lat", "lon"))
_RESERVED = ("sample", "lead_time", "member")
#: Dataset names of physical parameters -> the keyword the metric functions take.
_ALIASES = {
    "viscosity": "nu",
    "kinematic_viscosity": "nu",
    "diffusivity": "kappa",
    "diffusion_coefficient": "kappa",
    "thermal_diffusivity": "kappa",
}
_HINTS = {
    "climatology": "pass climatology= to score() (a Dataset with this variable)",
    "latitude": "it needs a latitude-longitude grid",
}
_MIN_SIZE = {"ssim": 11, "lsd": 4}
#: The stored validity mask of physforecast.data.cf: boolean, dims (variable, *spatial).
_MASK_VARIABLE = "valid_mask"


class _Unavailable(Exception):
    """A metric cannot run on this dataset (missing field or parameter)."""


@dataclass(frozen=True)
class _Item:
    row: str
    fn: Callable[..., torch.Tensor]
    meta: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Field:
    pred: torch.Tensor  # (S, L, H, W) (ensemble mean when there are members)
    truth: torch.Tensor  # (S, L, H, W)
    mask: torch.Tensor | None  # bool (S, L, H, W) or None
    members: torch.Tensor | None = None  # (S, L, M, H, W)
    climatology: torch.Tensor | None = None  # (S, L, H, W)


@dataclass
class _Data:
    fields: dict[str, _Field]
    context: dict[str, Any]  # dx, dy, dt, periodic, parameters, latitude, weights
    lead_time: np.ndarray
    n_samples: int
    per_sample: set[str] = field(default_factory=set)  # context keys indexed by sample


# ---------------------------------------------------------------- suites


def _variant_index() -> dict[str, tuple[str, dict[str, Any]]]:
    index = {}
    for name in METRICS.names():
        for suffix, options in (METRICS.entry(name).meta.get("variants") or {}).items():
            index[f"{name}_{suffix}"] = (name, options)
    return index


def _resolve(suite: Iterable[Any]) -> list[_Item]:
    """Turn a suite (names, callables, (name, callable) pairs) into rows."""
    items: list[_Item] = []
    variants = None
    for entry in suite:
        if isinstance(entry, str):
            if entry in METRICS:
                reg = METRICS.entry(entry)
                expand = reg.meta.get("variants")
                if expand and not reg.meta.get("outputs"):
                    items += [
                        _Item(f"{entry}_{suffix}", reg.factory, reg.meta, dict(opts))
                        for suffix, opts in expand.items()
                    ]
                else:
                    items.append(_Item(entry, reg.factory, reg.meta))
                continue
            variants = variants if variants is not None else _variant_index()
            if entry not in variants:
                names = sorted(set(METRICS.names()) | set(variants))
                raise ValueError(
                    f"unknown metric {entry!r} in suite. Valid names: {', '.join(names)}"
                )
            base, opts = variants[entry]
            reg = METRICS.entry(base)
            items.append(_Item(entry, reg.factory, reg.meta, dict(opts)))
        elif isinstance(entry, tuple) and len(entry) == 2 and callable(entry[1]):
            items.append(_Item(str(entry[0]), entry[1], _callable_meta(entry[1])))
        elif callable(entry):
            name = getattr(entry, "__name__", None)
            if not name or name == "<lambda>":
                raise ValueError(
                    f"suite entry {entry!r} has no usable name; pass it as ('my_metric', fn)"
                )
            items.append(_Item(name, entry, _callable_meta(entry)))
        else:
            raise TypeError(
                f"suite entries are metric names, callables or (name, callable) pairs; "
                f"got {entry!r}"
            )
    rows = [item.row for item in items]
    dupes = sorted({r for r in rows if rows.count(r) > 1})
    if dupes:
        raise ValueError(f"suite names these rows more than once: {', '.join(dupes)}")
    return items


def _callable_meta(fn: Callable[..., Any]) -> dict[str, Any]:
    """Metadata of a user callable, from optional attributes of the same names."""
    keys = ("kind", "higher_is_better", "weighted", "reduces_samples", "window", "ensemble")
    meta = {k: getattr(fn, k) for k in keys if hasattr(fn, k)}
    meta.setdefault("kind", "custom")
    return meta


def _spatial_dims(dims: Sequence[str], name: str) -> tuple[str, str]:
    for pair in _SPATIAL_NAMES:
        if all(d in dims for d in pair):
            return pair
    raise ValueError(
        f"variable {name!r} has dims {tuple(dims)}; expected spatial dims (y, x), "
        "(latitude, longitude) or (lat, lon)"
    )


def _field_names(ds: xr.Dataset) -> list[str]:
    """Data variables that are fields (have lead_time); the rest are parameters."""
    return [str(n) for n, da in ds.data_vars.items() if "lead_time" in da.dims]


def _grid_shape(forecast: xr.Dataset) -> tuple[int, int]:
    names = _field_names(forecast)
    if not names:
        raise ValueError("forecast has no data variable with a 'lead_time' dim")
    da = forecast[names[0]]
    sy, sx = _spatial_dims(da.dims, names[0])
    return da.sizes[sy], da.sizes[sx]


def default_suite(
    forecast: xr.Dataset, climatology: xr.Dataset | xr.DataArray | None = None
) -> list[Any]:
    """The suite for a forecast, chosen from its metadata.

    ``SUITES[forecast.attrs["system"]]`` when the system is known, the latitude-weighted
    :data:`LATLON_SUITE` (plus ``acc`` with a climatology) on latitude-longitude grids,
    :data:`GENERIC_SUITE` otherwise; :data:`ENSEMBLE_SUITE` is appended for ensembles.
    Metrics the grid is too small for (SSIM needs 11 x 11) are left out.
    """
    names = _field_names(forecast)
    latlon = bool(names) and _spatial_dims(forecast[names[0]].dims, names[0])[0] != "y"
    system = forecast.attrs.get("system")
    if latlon:
        suite = list(LATLON_SUITE) + (["acc"] if climatology is not None else [])
    else:
        suite = list(SUITES.get(system, GENERIC_SUITE))
    if any("member" in forecast[n].dims for n in names):
        suite += ENSEMBLE_SUITE
    h, w = _grid_shape(forecast)
    return [m for m in suite if not (isinstance(m, str) and min(h, w) < _MIN_SIZE.get(m, 0))]


# ---------------------------------------------------------------- data


def _tensor(da: xr.DataArray) -> torch.Tensor:
    values = np.ascontiguousarray(da.values)
    if not values.flags.writeable:  # torch warns on read-only memory (netCDF, broadcasts)
        values = values.copy()
    return torch.from_numpy(values)


def _canonical(da: xr.DataArray, sy: str, sx: str) -> tuple[xr.DataArray, list[str]]:
    """Transpose to (sample, lead_time, [member], extra..., y, x); return the extra dims."""
    for dim in ("sample", "lead_time"):
        if dim not in da.dims:
            raise ValueError(f"variable {da.name!r} has dims {da.dims}; it needs a {dim!r} dim")
    extra = [d for d in da.dims if d not in (*_RESERVED, sy, sx)]
    lead = [d for d in ("sample", "lead_time", "member") if d in da.dims]
    return da.transpose(*lead, *extra, sy, sx), extra


def _split(da: xr.DataArray, extra: list[str], name: str):
    """Yield (label, DataArray) over the combinations of the extra dims (levels...)."""
    if not extra:
        yield name, da
        return
    stacked = da.stack(_extra=extra)
    for i in range(stacked.sizes["_extra"]):
        sel = stacked.isel(_extra=i)
        values = sel["_extra"].values.item()
        values = values if isinstance(values, tuple) else (values,)
        label = "_".join([name, *(f"{v:g}" if isinstance(v, float) else str(v) for v in values)])
        yield label, sel.drop_vars(["_extra", *extra], errors="ignore")


def _as_dataset(obj: xr.Dataset | xr.DataArray, what: str) -> xr.Dataset:
    if isinstance(obj, xr.DataArray):
        return obj.to_dataset(name=obj.name or "field")
    if not isinstance(obj, xr.Dataset):
        raise TypeError(f"{what} must be an xr.Dataset, got {type(obj).__name__}")
    return obj


def _numeric_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in attrs.items():
        if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def _prepare(
    forecast: xr.Dataset,
    truth: xr.Dataset,
    weights: xr.DataArray | None,
    mask: xr.DataArray | xr.Dataset | None,
    climatology: xr.Dataset | xr.DataArray | None,
) -> _Data:
    names = _field_names(forecast)
    if not names:
        raise ValueError("forecast has no data variable with a 'lead_time' dim")
    fields: dict[str, _Field] = {}
    stored_mask = truth.get(_MASK_VARIABLE, forecast.get(_MASK_VARIABLE))
    lat = None
    n_samples = None
    lead_time = None
    for name in names:
        if name not in truth:
            raise ValueError(f"truth has no variable {name!r} (truth has {list(truth.data_vars)})")
        fda, tda = forecast[name], truth[name]
        if "member" in tda.dims:
            raise ValueError(f"truth variable {name!r} has a 'member' dim; only forecasts may")
        sy, sx = _spatial_dims(fda.dims, name)
        fda, extra = _canonical(fda, sy, sx)
        tda, _ = _canonical(tda, sy, sx)
        expected = {d: n for d, n in fda.sizes.items() if d != "member"}
        if dict(tda.sizes) != expected:
            raise ValueError(
                f"variable {name!r}: forecast sizes {expected} differ from truth sizes "
                f"{dict(tda.sizes)}"
            )
        if sy != "y":
            lat = forecast[sy].values
        n_samples = fda.sizes["sample"]
        lead_time = (
            fda["lead_time"].values
            if "lead_time" in fda.coords
            else np.arange(fda.sizes["lead_time"])
        )
        mda = _mask_for(mask, name, tda, stored_mask)
        cda = _climatology_for(climatology, name, tda)
        parts = zip(
            _split(fda, extra, name),
            _split(tda, extra, name),
            _split(mda, extra, name) if mda is not None else _none(),
            _split(cda, extra, name) if cda is not None else _none(),
        )
        for (label, f), (_, t), (_, m), (_, c) in parts:
            fields[label] = _make_field(f, t, m, c)
    context: dict[str, Any] = _numeric_attrs(forecast.attrs)
    bc = forecast.attrs.get("boundary_conditions")
    if bc is not None:
        context["periodic"] = str(bc).lower() == "periodic"
    per_sample = set()
    for pname, da in forecast.data_vars.items():
        if da.dims == ("sample",):
            keys = [str(pname)] + ([_ALIASES[str(pname)]] if str(pname) in _ALIASES else [])
            for key in keys:
                context[key] = _tensor(da)
                per_sample.add(key)
    for key in list(context):
        if key in _ALIASES and _ALIASES[key] not in context:
            context[_ALIASES[key]] = context[key]
    if weights is not None:
        first = forecast[names[0]]
        sy, sx = _spatial_dims(first.dims, names[0])
        context["weights"] = _tensor(
            weights.broadcast_like(
                first[{d: 0 for d in first.dims if d not in (sy, sx)}]
            ).transpose(sy, sx)
        )
    elif lat is not None:
        context["weights"] = latitude_weights(lat)
    if lat is not None:
        context["latitude"] = torch.from_numpy(np.array(lat, dtype=np.float64, order="C"))
    return _Data(fields, context, np.asarray(lead_time), int(n_samples), per_sample)


def _none():
    while True:
        yield None, None


def _mask_for(
    mask, name: str, tda: xr.DataArray, stored: xr.DataArray | None
) -> xr.DataArray | None:
    """The validity of one variable: the user's mask, the stored ``valid_mask`` and the
    finite points of the truth, combined."""
    parts = []
    if isinstance(mask, xr.Dataset):
        if name in mask:
            parts.append(mask[name])
    elif mask is not None:
        parts.append(mask)
    if stored is not None and "variable" in stored.dims and name in stored["variable"].values:
        parts.append(stored.sel(variable=name, drop=True))
    for part in parts:
        if part.dtype != bool:
            raise TypeError(f"mask for {name!r} must be boolean (True = valid), got {part.dtype}")
    if np.issubdtype(tda.dtype, np.floating) and bool(tda.isnull().any()):
        parts.append(tda.notnull())
    if not parts:
        return None
    m = parts[0]
    for part in parts[1:]:
        m = m & part
    return m.broadcast_like(tda).transpose(*tda.dims)


def _climatology_for(clim, name: str, tda: xr.DataArray) -> xr.DataArray | None:
    if clim is None:
        return None
    if isinstance(clim, xr.Dataset):
        if name not in clim:
            return None
        clim = clim[name]
    return clim.broadcast_like(tda).transpose(*tda.dims).astype(tda.dtype)


def _make_field(
    f: xr.DataArray, t: xr.DataArray, m: xr.DataArray | None, c: xr.DataArray | None
) -> _Field:
    mask = None if m is None else _tensor(m)
    clim = None if c is None else _tensor(c)
    pred = _tensor(f)
    members = None
    if "member" in f.dims:
        members = pred
        pred = members.mean(2)
    return _Field(pred, _tensor(t), mask, members, clim)


# ---------------------------------------------------------------- evaluation


def _call_kwargs(item: _Item, fn_params: dict[str, inspect.Parameter], ctx: dict[str, Any]):
    """Keyword arguments for ``item.fn`` from the context, checking the required ones."""
    accepts_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in fn_params.values())
    kwargs = {}
    for pname, param in fn_params.items():
        if param.kind not in (
            inspect.Parameter.KEYWORD_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            continue
        if pname in ("pred", "target"):
            continue
        if pname in item.options:
            kwargs[pname] = item.options[pname]
        elif ctx.get(pname) is not None:
            kwargs[pname] = ctx[pname]
        elif param.default is inspect.Parameter.empty:
            names = [pname] + [k for k, v in _ALIASES.items() if v == pname]
            hint = _HINTS.get(
                pname,
                f"give the forecast a dataset attribute or a per-sample variable named one "
                f"of {names}",
            )
            raise _Unavailable(f"metric {item.row!r} needs {pname!r}: {hint}")
    if accepts_all:
        kwargs.update({k: v for k, v in ctx.items() if v is not None and k not in kwargs})
        kwargs.update(item.options)
    return kwargs


def _targets(item: _Item, data: _Data) -> list[tuple[str, _Field]]:
    """The (variable label, field) pairs an item is evaluated on; velocity-like groups are
    stacked on dim -3: (S, L, C, H, W)."""
    fields = item.meta.get("fields")
    if not fields:
        return list(data.fields.items())
    chosen = []
    for candidates in fields:
        found = next((c for c in candidates if c in data.fields), None)
        if found is None and len(fields) == 1 and len(data.fields) == 1:
            found = next(iter(data.fields))
        if found is None:
            raise _Unavailable(
                f"metric {item.row!r} needs a variable named one of {list(candidates)}; "
                f"the forecast has {list(data.fields)}"
            )
        chosen.append(found)
    if len(chosen) == 1:
        return [(chosen[0], data.fields[chosen[0]])]
    parts = [data.fields[c] for c in chosen]
    mask = None
    if any(p.mask is not None for p in parts):
        ones = torch.ones_like(parts[0].truth, dtype=torch.bool)
        mask = torch.stack([ones if p.mask is None else p.mask for p in parts], -3)
    group = _Field(
        pred=torch.stack([p.pred for p in parts], -3),
        truth=torch.stack([p.truth for p in parts], -3),
        mask=mask,
    )
    return [(item.meta.get("label", ",".join(chosen)), group)]


def _chunk(fld: _Field, ctx: dict[str, Any], per_sample: set[str], sl: slice):
    """The samples ``sl`` of a field and of the per-sample entries of the context."""
    part = _Field(
        pred=fld.pred[sl],
        truth=fld.truth[sl],
        mask=None if fld.mask is None else fld.mask[sl],
        members=None if fld.members is None else fld.members[sl],
        climatology=None if fld.climatology is None else fld.climatology[sl],
    )
    sub = {
        k: (v[sl] if k in per_sample and isinstance(v, torch.Tensor) else v) for k, v in ctx.items()
    }
    return part, sub


def _evaluate(
    item: _Item, data: _Data, chunk: int | None
) -> list[tuple[str, str, np.ndarray, bool]]:
    """Run one suite item: [(row, variable label, values, is_window)], values (L,) or ().

    Metrics that do not aggregate samples themselves run on ``chunk`` samples at a time
    (small intermediates, less memory traffic); their per-sample values are concatenated.
    """
    meta = item.meta
    params = dict(inspect.signature(item.fn).parameters)
    window = bool(meta.get("window"))
    reduces = bool(meta.get("reduces_samples"))
    ensemble = bool(meta.get("ensemble"))
    step = data.n_samples if reduces or not chunk else chunk
    slices = [slice(i, i + step) for i in range(0, data.n_samples, step)]
    out = []
    for label, fld in _targets(item, data):
        if ensemble and fld.members is None:
            raise _Unavailable(f"metric {item.row!r} needs an ensemble (a 'member' dim)")
        ctx = dict(data.context)
        if not meta.get("weighted", True):
            ctx.pop("weights", None)
        ctx.update(mask=fld.mask, climatology=fld.climatology)
        if reduces:
            ctx["sample_dim"] = 0
        if ensemble:
            ctx["member_dim"] = 2
        kwargs = _call_kwargs(item, params, ctx)  # checks required keywords once
        runs = [(item.row, "members" if ensemble else "pred")]
        if meta.get("reference_free"):
            runs.append((f"{item.row}_truth", "truth"))
        for row, source in runs:
            values = []
            for sl in slices:
                part, sub = _chunk(fld, kwargs, data.per_sample | {"mask", "climatology"}, sl)
                with torch.no_grad():
                    values.append(item.fn(getattr(part, source), part.truth, **sub))
            value = values[0] if len(values) == 1 else torch.cat(values, 0)
            for sub_row, v in _rows(row, value, fld.truth.shape, meta, reduces):
                out.append((sub_row, label, v, window))
    return out


def _rows(row: str, value: torch.Tensor, shape: torch.Size, meta: dict[str, Any], reduces: bool):
    """Check a metric's output shape, reduce samples and split vector outputs into rows.

    A trailing extra dim becomes one row per entry, named by the registered ``outputs``
    (``frmse_low``...) or numbered (``rank_histogram_0``...).
    """
    if not isinstance(value, torch.Tensor):
        value = torch.as_tensor(value)
    expected = tuple(shape[: 1 if meta.get("window") else 2])
    if reduces:
        expected = expected[1:]
    if tuple(value.shape) == expected:
        parts = [(row, value)]
    elif tuple(value.shape[:-1]) == expected:
        names = meta.get("outputs") or range(value.shape[-1])
        parts = [(f"{row}_{n}", value[..., i]) for i, n in enumerate(names)]
    else:
        raise ValueError(
            f"metric {row!r} returned shape {tuple(value.shape)}; expected {expected} "
            f"(sample, lead_time) reduced as its registration says"
        )
    result = []
    for name, v in parts:
        v = v.double()
        if not reduces:
            v = v.mean(0)
        result.append((name, v.cpu().numpy()))
    return result


def score(
    forecast: xr.Dataset,
    truth: xr.Dataset,
    suite: Sequence[Any] | None = None,
    *,
    weights: xr.DataArray | None = None,
    mask: xr.DataArray | xr.Dataset | None = None,
    climatology: xr.Dataset | xr.DataArray | None = None,
    chunk: int | None = 32,
) -> xr.Dataset:
    """Score a forecast against the truth with a suite of metrics.

    Parameters
    ----------
    forecast : xr.Dataset
        Data variables (sample, lead_time, [member], [level...], y, x) (or latitude,
        longitude), per-sample parameters as variables (sample,), the source attrs
        (``system``, ``dx``, ``dy``, ``dt``, ``boundary_conditions``...).
    truth : xr.Dataset
        The same variables without ``member``.
    suite : list, optional
        Metric names (a registered name, or a variant row such as ``"csi_74"``), callables
        ``fn(pred, target, *, weights=None, mask=None, ...)`` or ``(name, callable)`` pairs.
        Default: :func:`default_suite`. A callable receives each variable as (sample,
        lead_time, y, x) tensors plus the keywords its signature names (``dx``, ``dt``,
        parameters such as ``nu``...); it may declare ``higher_is_better`` as an attribute.
    weights : xr.DataArray, optional
        Area weights over the spatial dims; latitude weights by default on lat-lon grids.
    mask : xr.DataArray or xr.Dataset, optional
        Boolean validity (True = valid), broadcastable to the variables (a Dataset gives one
        per variable). NaN points of the truth are always masked.
    climatology : xr.Dataset or xr.DataArray, optional
        For the ACC; broadcastable to the truth.
    chunk : int, optional
        Samples per evaluation of the metrics that score each sample on its own (all at
        once when None). Results do not depend on it.

    Returns
    -------
    xr.Dataset
        ``score (metric, lead_time, variable)`` and ``summary (metric, variable)``.

    Examples
    --------
    >>> card = score(forecast, truth)                     # doctest: +SKIP
    >>> print(format_scorecard(card))                     # doctest: +SKIP
    """
    forecast = _as_dataset(forecast, "forecast")
    truth = _as_dataset(truth, "truth")
    strict = suite is not None
    if suite is None:
        suite = default_suite(forecast, climatology)
    items = _resolve(suite)
    data = _prepare(forecast, truth, weights, mask, climatology)
    results: list[tuple[str, str, np.ndarray, bool]] = []
    metas: dict[str, dict[str, Any]] = {}
    for item in items:
        try:
            rows = _evaluate(item, data, chunk)
        except _Unavailable as err:
            if strict:
                raise ValueError(str(err)) from None
            warnings.warn(f"scorecard: skipping {item.row}: {err}", stacklevel=2)
            continue
        for row, *_ in rows:
            metas.setdefault(row, item.meta)
        results += rows
    return _assemble(results, metas, data, forecast)


def _assemble(results, metas, data: _Data, forecast: xr.Dataset) -> xr.Dataset:
    rows = list(dict.fromkeys(r[0] for r in results))
    variables = list(dict.fromkeys(r[1] for r in results))
    n_lead = len(data.lead_time)
    values = np.full((len(rows), n_lead, len(variables)), np.nan)
    summary = np.full((len(rows), len(variables)), np.nan)
    for row, var, v, window in results:
        i, j = rows.index(row), variables.index(var)
        if window:
            summary[i, j] = float(v)
        else:
            values[i, :, j] = v
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                summary[i, j] = np.nanmean(v) if np.isfinite(v).any() else np.nan
    hib = [metas[r].get("higher_is_better") for r in rows]
    ds = xr.Dataset(
        {
            "score": (("metric", "lead_time", "variable"), values),
            "summary": (("metric", "variable"), summary),
        },
        coords={
            "metric": rows,
            "lead_time": ("lead_time", data.lead_time, {"units": "steps"}),
            "variable": variables,
            "kind": ("metric", [str(metas[r].get("kind", "custom")) for r in rows]),
            "higher_is_better": (
                "metric",
                np.array([np.nan if h is None else float(bool(h)) for h in hib]),
                {"flag_meanings": "1: higher is better, 0: lower is better, NaN: neither"},
            ),
        },
        attrs={
            "title": "physforecast scorecard",
            "system": str(forecast.attrs.get("system", "")),
            "n_samples": data.n_samples,
            "sample_reduction": "mean over samples of per-sample values, except metrics "
            "that aggregate samples themselves (PDEBench fRMSE/cRMSE/max error, categorical "
            "counts, WB2 RMSE, spread-skill)",
        },
    )
    ds["score"].attrs["long_name"] = "metric value per lead time"
    ds["summary"].attrs["long_name"] = "mean over lead times, or the whole-window value"
    for key in ("dx", "dy", "dt", "boundary_conditions"):
        if key in forecast.attrs:
            ds.attrs[key] = forecast.attrs[key]
    return ds


# ---------------------------------------------------------------- output


def _clean(x: Any) -> Any:
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def scorecard_to_json(ds: xr.Dataset) -> dict[str, Any]:
    """The JSON twin of a scorecard (NaN becomes null; all-NaN entries are left out).

    ``{"attrs": {...}, "lead_time": [...], "metrics": {name: {"kind", "higher_is_better",
    "variables": {var: {"by_lead_time": [...], "summary": x}}}}}``.
    """
    metrics = {}
    for i, row in enumerate(ds["metric"].values.tolist()):
        hib = float(ds["higher_is_better"].values[i])
        per_var = {}
        for j, var in enumerate(ds["variable"].values.tolist()):
            series = ds["score"].values[i, :, j]
            summ = ds["summary"].values[i, j]
            if not (np.isfinite(series).any() or np.isfinite(summ)):
                continue
            per_var[str(var)] = {
                "by_lead_time": [_clean(v) for v in series],
                "summary": _clean(summ),
            }
        metrics[str(row)] = {
            "kind": str(ds["kind"].values[i]),
            "higher_is_better": None if math.isnan(hib) else bool(hib),
            "variables": per_var,
        }
    return {
        "attrs": {k: _clean(v) for k, v in ds.attrs.items()},
        "lead_time": [_clean(v) for v in ds["lead_time"].values],
        "metrics": metrics,
    }


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_scorecard(ds: xr.Dataset, run_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``scorecard.nc`` and ``scorecard.json`` into ``run_dir`` atomically.

    Each file is written to a temporary file in the same directory and moved into place
    with ``os.replace``, so a reader never sees half a scorecard.

    Returns
    -------
    (Path, Path)
        The netCDF and JSON paths.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    nc_path, json_path = run_dir / "scorecard.nc", run_dir / "scorecard.json"
    text = json.dumps(scorecard_to_json(ds), indent=2)

    def write_json(tmp: str) -> None:
        Path(tmp).write_text(text + "\n")

    _atomic_write(nc_path, lambda tmp: ds.to_netcdf(tmp))
    _atomic_write(json_path, write_json)
    return nc_path, json_path


def format_scorecard(ds: xr.Dataset, *, max_leads: int = 3, digits: int = 4) -> str:
    """A compact text table: a row per metric and variable, a few lead times and the mean.

    The lead-time columns are the first, middle and last lead (``max_leads`` of them);
    ``mean`` is the ``summary`` (mean over leads, or the whole-window value).
    """
    leads = ds["lead_time"].values
    n = len(leads)
    picks = sorted({round(i * (n - 1) / max(max_leads - 1, 1)) for i in range(min(max_leads, n))})
    header = ["metric", "variable", *[f"lead {leads[i]}" for i in picks], "mean"]
    body = []
    score_v, summ_v = ds["score"].values, ds["summary"].values

    def fmt(v: float) -> str:
        return "-" if not np.isfinite(v) else f"{v:.{digits}g}"

    for i, row in enumerate(ds["metric"].values.tolist()):
        for j, var in enumerate(ds["variable"].values.tolist()):
            if not (np.isfinite(score_v[i, :, j]).any() or np.isfinite(summ_v[i, j])):
                continue
            body.append(
                [str(row), str(var), *[fmt(score_v[i, k, j]) for k in picks], fmt(summ_v[i, j])]
            )
    widths = [max(len(r[c]) for r in [header, *body]) for c in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if k < 2 else c.rjust(w) for k, (c, w) in enumerate(zip(r, widths)))
        for r in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
