"""Metric suites: which metrics a scorecard computes, chosen from a forecast's metadata.

A suite is a list of registered metric names (``"rmse"``), variant rows (``"csi_74"``,
``"frmse_low"``), callables and ``(name, callable)`` pairs. :data:`SUITES` maps a dataset's
``system`` attribute to its default suite and may be extended.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import xarray as xr

from physforecast.data.layout import spatial_dims
from physforecast.registry import METRICS

__all__ = [
    "GENERIC_SUITE",
    "LATLON_SUITE",
    "ENSEMBLE_SUITE",
    "SUITES",
    "default_suite",
    "resolve_suite",
    "SuiteItem",
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

_MIN_SIZE = {"ssim": 11, "lsd": 4}


@dataclass(frozen=True)
class SuiteItem:
    """One scorecard row (or a family of rows): a metric function, its registry metadata
    and fixed options."""

    row: str
    fn: Callable[..., torch.Tensor]
    meta: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)


def _variant_index() -> dict[str, tuple[str, dict[str, Any]]]:
    index = {}
    for name in METRICS.names():
        for suffix, options in (METRICS.entry(name).meta.get("variants") or {}).items():
            index[f"{name}_{suffix}"] = (name, options)
    return index


def resolve_suite(suite: Iterable[Any]) -> list[SuiteItem]:
    """Turn a suite (names, callables, (name, callable) pairs) into rows."""
    items: list[SuiteItem] = []
    variants = None
    for entry in suite:
        if isinstance(entry, str):
            if entry in METRICS:
                reg = METRICS.entry(entry)
                expand = reg.meta.get("variants")
                if expand and not reg.meta.get("outputs"):
                    items += [
                        SuiteItem(f"{entry}_{suffix}", reg.factory, reg.meta, dict(opts))
                        for suffix, opts in expand.items()
                    ]
                else:
                    items.append(SuiteItem(entry, reg.factory, reg.meta))
                continue
            variants = variants if variants is not None else _variant_index()
            if entry not in variants:
                names = sorted(set(METRICS.names()) | set(variants))
                raise ValueError(
                    f"unknown metric {entry!r} in suite. Valid names: {', '.join(names)}"
                )
            base, opts = variants[entry]
            reg = METRICS.entry(base)
            items.append(SuiteItem(entry, reg.factory, reg.meta, dict(opts)))
        elif isinstance(entry, tuple) and len(entry) == 2 and callable(entry[1]):
            items.append(SuiteItem(str(entry[0]), entry[1], _callable_meta(entry[1])))
        elif callable(entry):
            name = getattr(entry, "__name__", None)
            if not name or name == "<lambda>":
                raise ValueError(
                    f"suite entry {entry!r} has no usable name; pass it as ('my_metric', fn)"
                )
            items.append(SuiteItem(name, entry, _callable_meta(entry)))
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


def field_names(ds: xr.Dataset) -> list[str]:
    """Data variables that are fields (have lead_time); the rest are parameters."""
    return [str(n) for n, da in ds.data_vars.items() if "lead_time" in da.dims]


def _grid_shape(forecast: xr.Dataset) -> tuple[int, int]:
    names = field_names(forecast)
    if not names:
        raise ValueError("forecast has no data variable with a 'lead_time' dim")
    da = forecast[names[0]]
    sy, sx = spatial_dims(da.dims, names[0])
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
    names = field_names(forecast)
    latlon = bool(names) and spatial_dims(forecast[names[0]].dims, names[0])[0] != "y"
    system = forecast.attrs.get("system")
    if latlon:
        suite = list(LATLON_SUITE) + (["acc"] if climatology is not None else [])
    else:
        suite = list(SUITES.get(system, GENERIC_SUITE))
    if any("member" in forecast[n].dims for n in names):
        suite += ENSEMBLE_SUITE
    h, w = _grid_shape(forecast)
    return [m for m in suite if not (isinstance(m, str) and min(h, w) < _MIN_SIZE.get(m, 0))]
