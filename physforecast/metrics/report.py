"""Scorecard output: the JSON twin, atomic files in a run directory, a compact table."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from physforecast.atomic import atomic_write, atomic_write_json

__all__ = ["scorecard_to_json", "write_scorecard", "format_scorecard"]


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
    atomic_write(nc_path, lambda tmp: ds.to_netcdf(tmp))
    atomic_write_json(json_path, scorecard_to_json(ds))
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
