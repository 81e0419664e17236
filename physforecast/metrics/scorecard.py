"""The scorecard: every metric of a suite on a forecast, per lead time and variable.

:func:`score` evaluates a suite (see :mod:`physforecast.metrics.suites`) on a forecast and
its truth (the forecast convention: data variables ``(sample, lead_time, y, x)``, optionally
with a ``member`` dim, per-sample parameters as variables ``(sample,)``, source attrs
``system``, ``dx``, ``dy``, ``dt``...) and returns an ``xr.Dataset`` with

- ``score (metric, lead_time, variable)``: the sample mean of the per-sample values (or the
  metric's own aggregate over samples for those registered ``reduces_samples``);
- ``summary (metric, variable)``: the mean over lead times, or the single value of a metric
  over the whole forecast window (TKE);

and the coordinates ``kind`` and ``higher_is_better`` (1, 0, NaN = neither) along
``metric``. :mod:`physforecast.metrics.report` writes and prints it.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import xarray as xr

from physforecast.data.layout import spatial_dims

from .suites import SuiteItem, default_suite, field_names, resolve_suite
from .weather import latitude_weights

__all__ = ["score", "ScoreAccumulator"]

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
#: The stored validity mask of physforecast.data.cf: boolean, dims (variable, *spatial).
_MASK_VARIABLE = "valid_mask"


class _Unavailable(Exception):
    """A metric cannot run on this dataset (missing field or parameter)."""


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
    names = field_names(forecast)
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
        sy, sx = spatial_dims(fda.dims, name)
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
        sy, sx = spatial_dims(first.dims, names[0])
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


def _call_kwargs(item: SuiteItem, fn_params: dict[str, inspect.Parameter], ctx: dict[str, Any]):
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


def _targets(item: SuiteItem, data: _Data) -> list[tuple[str, _Field]]:
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


def _runs(item: SuiteItem, data: _Data, fld: Any, params: dict[str, Any], reduces: bool):
    """The keywords of ``item``'s metric on field ``fld`` and its runs [(row, source)]:
    the forecast (or its members) and, for a reference-free metric, the truth too."""
    meta = item.meta
    ensemble = bool(meta.get("ensemble"))
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
    return kwargs, runs


def _evaluate(
    item: SuiteItem, data: _Data, chunk: int | None
) -> list[tuple[str, str, np.ndarray, bool]]:
    """Run one suite item: [(row, variable label, values, is_window)], values (L,) or ().

    Metrics that do not aggregate samples themselves run on ``chunk`` samples at a time
    (small intermediates, less memory traffic); their per-sample values are concatenated.
    """
    meta = item.meta
    params = dict(inspect.signature(item.fn).parameters)
    window = bool(meta.get("window"))
    reduces = bool(meta.get("reduces_samples"))
    step = data.n_samples if reduces or not chunk else chunk
    slices = [slice(i, i + step) for i in range(0, data.n_samples, step)]
    out = []
    for label, fld in _targets(item, data):
        kwargs, runs = _runs(item, data, fld, params, reduces)
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
    items = resolve_suite(suite)
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


# ---------------------------------------------------------------- streaming


class ScoreAccumulator:
    """:func:`score`, fed chunks of samples: memory does not grow with the forecast.

    Each chunk (a forecast and its truth with the same ``sample`` slice, as
    :func:`score` takes them) is scored at once and dropped. What is kept is small: the
    per-sample values of the metrics that average samples ``(S, lead_time)``, and for the
    metrics that pool samples themselves (``reduces_samples``: fRMSE, cRMSE, max error,
    WB2 RMSE, spread-skill) the per-sample statistics they pool (their registered
    ``partial``), combined at the end (``combine``): for the categorical scores, the
    contingency counts of each forecast. A pooling metric registered without that pair
    keeps its chunks' fields until :meth:`result`.

    :meth:`result` equals :func:`score` of the whole forecast (the same per-sample values,
    averaged in the same way).

    Parameters
    ----------
    suite, weights, mask, climatology, chunk
        As for :func:`score`; the default suite is chosen from the first chunk.

    Examples
    --------
    >>> acc = ScoreAccumulator()                                  # doctest: +SKIP
    >>> for f, t in chunks:                                        # doctest: +SKIP
    ...     acc.add(f, t)
    >>> card = acc.result()                                        # doctest: +SKIP
    """

    def __init__(
        self,
        suite: Sequence[Any] | None = None,
        *,
        weights: xr.DataArray | None = None,
        mask: xr.DataArray | xr.Dataset | None = None,
        climatology: xr.Dataset | xr.DataArray | None = None,
        chunk: int | None = 32,
    ) -> None:
        self.suite = suite
        self.strict = suite is not None
        self.weights, self.mask, self.climatology, self.chunk = weights, mask, climatology, chunk
        self.items: list[SuiteItem] | None = None
        self.n_samples = 0
        self._skipped: set[str] = set()
        self._parts: dict[tuple[int, str], list[Any]] = {}
        # what the scorecard needs of the chunks beyond their scores: lead times and attrs
        self._first: tuple[np.ndarray, xr.Dataset] | None = None

    def add(self, forecast: xr.Dataset, truth: xr.Dataset) -> None:
        """Score one chunk of samples (dims as for :func:`score`)."""
        forecast = _as_dataset(forecast, "forecast")
        truth = _as_dataset(truth, "truth")
        if self.items is None:
            suite = self.suite
            if suite is None:
                suite = default_suite(forecast, self.climatology)
            self.items = resolve_suite(suite)
        data = _prepare(forecast, truth, self.weights, self.mask, self.climatology)
        if self._first is None:
            self._first = (data.lead_time, forecast.isel(sample=slice(0, 0)))
        self.n_samples += data.n_samples
        for k, item in enumerate(self.items):
            if item.row in self._skipped:
                continue
            try:
                for label, part in _partials(item, data, self.chunk):
                    self._parts.setdefault((k, label), []).append(part)
            except _Unavailable as err:
                if self.strict:
                    raise ValueError(str(err)) from None
                warnings.warn(f"scorecard: skipping {item.row}: {err}", stacklevel=2)
                self._skipped.add(item.row)

    def result(self) -> xr.Dataset:
        """The scorecard of every chunk added so far."""
        if self._first is None or self.items is None:
            raise ValueError("no forecast chunk was added to the scorecard")
        lead_time, empty = self._first
        data = _Data({}, {}, lead_time, self.n_samples)
        results: list[tuple[str, str, np.ndarray, bool]] = []
        metas: dict[str, dict[str, Any]] = {}
        for k, item in enumerate(self.items):
            if item.row in self._skipped:
                continue
            labels = [label for (kk, label) in self._parts if kk == k]
            for label in labels:
                rows = _finish(item, label, self._parts[(k, label)], self.chunk)
                for row, *_ in rows:
                    metas.setdefault(row, item.meta)
                results += rows
        return _assemble(results, metas, data, empty)


def _partials(item: SuiteItem, data: _Data, chunk: int | None) -> list[tuple[str, Any]]:
    """What a chunk contributes to ``item``: [(variable label, part)] where a part is
    ``("values", [(row, per-sample values, shape)])``, ``("stats", ...)`` or
    ``("fields", (field, context))``."""
    meta = item.meta
    reduces = bool(meta.get("reduces_samples"))
    if reduces and not (meta.get("partial") and meta.get("combine")):
        out = []
        for label, fld in _targets(item, data):
            out.append((label, ("fields", (fld, dict(data.context), data.per_sample))))
        return out
    params = dict(inspect.signature(item.fn).parameters)
    step = data.n_samples if not chunk else chunk
    slices = [slice(i, i + step) for i in range(0, data.n_samples, step)]
    out = []
    for label, fld in _targets(item, data):
        kwargs, runs = _runs(item, data, fld, params, reduces)
        rows = []
        for row, source in runs:
            values = []
            for sl in slices:
                part, sub = _chunk(fld, kwargs, data.per_sample | {"mask", "climatology"}, sl)
                with torch.no_grad():
                    if reduces:
                        sub.pop("sample_dim", None)
                        values.append(meta["partial"](getattr(part, source), part.truth, **sub))
                    else:
                        values.append(item.fn(getattr(part, source), part.truth, **sub))
            options = {k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)}
            options.pop("sample_dim", None)
            value = values[0] if len(values) == 1 else torch.cat(values, 0)
            rows.append((row, value, tuple(fld.truth.shape), options))
        out.append((label, ("stats" if reduces else "values", rows)))
    return out


def _finish(item: SuiteItem, label: str, parts: list[Any], chunk: int | None):
    """Combine the parts of every chunk of one (item, variable) into scorecard rows."""
    meta = item.meta
    reduces = bool(meta.get("reduces_samples"))
    kind = parts[0][0]
    if kind == "fields":  # a pooling metric without partial/combine: all its samples now
        flds = [p[1][0] for p in parts]
        ctx, per_sample = parts[0][1][1], parts[0][1][2]

        def cat(name: str) -> torch.Tensor | None:
            got = [getattr(f, name) for f in flds]
            if all(g is None for g in got):
                return None
            if name == "mask":  # a chunk without invalid points has no mask: all valid
                got = [
                    torch.ones_like(f.truth, dtype=torch.bool) if g is None else g
                    for f, g in zip(flds, got)
                ]
            return torch.cat(got, 0)

        fld = _Field(cat("pred"), cat("truth"), cat("mask"), cat("members"), cat("climatology"))
        ctx = dict(ctx)
        for key in per_sample:
            ctx[key] = torch.cat([p[1][1][key] for p in parts], 0)
        data = _Data({label: fld}, ctx, np.zeros(fld.truth.shape[1]), int(fld.truth.shape[0]))
        data.per_sample = set(per_sample)
        rows = _evaluate(_only(item, label), data, chunk)
        return [(row, label, v, w) for row, _, v, w in rows]
    out = []
    n_rows = len(parts[0][1])
    for r in range(n_rows):
        row, _, shape, options = parts[0][1][r]
        value = torch.cat([p[1][r][1] for p in parts], 0)
        n = sum(int(p[1][r][2][0]) for p in parts)
        shape = (n, *shape[1:])
        if reduces:
            value = meta["combine"](value, grid=tuple(shape[-2:]), **options)
        for sub_row, v in _rows(row, value, torch.Size(shape), meta, reduces):
            out.append((sub_row, label, v, bool(meta.get("window"))))
    return out


def _only(item: SuiteItem, label: str) -> SuiteItem:
    """``item`` evaluated on the one field ``label`` (a group already stacked)."""
    meta = dict(item.meta)
    meta.pop("fields", None)
    return SuiteItem(item.row, item.fn, meta, dict(item.options))
