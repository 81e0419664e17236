"""Plots people would rather look at than read: forecast panels and error curves."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

__all__ = ["plot_forecast_panel", "plot_metric_vs_lead", "save_figure"]


def save_figure(fig: plt.Figure, path: str | os.PathLike) -> Path:
    """Save ``fig`` as PNG atomically and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def plot_forecast_panel(
    forecast: xr.Dataset,
    truth: xr.Dataset,
    variable: str | None = None,
    *,
    sample: int = 0,
    leads: list[int] | None = None,
) -> plt.Figure:
    """Truth, forecast and error side by side for a few lead times.

    Parameters
    ----------
    forecast, truth : xr.Dataset
        Forecast-convention datasets (sample, lead_time, y, x).
    variable : str, optional
        Which variable; the first one by default.
    sample : int
        Which sample (window) to show.
    leads : list of int, optional
        Lead-time positions to show; first, middle and last by default.

    Returns
    -------
    matplotlib.figure.Figure
        A 3-row grid: truth, forecast, forecast - truth.
    """
    variable = variable or next(n for n, v in forecast.data_vars.items() if "lead_time" in v.dims)
    f, t = forecast[variable].isel(sample=sample), truth[variable].isel(sample=sample)
    extra = [d for d in f.dims if d not in ("lead_time",) and d not in f.dims[-2:]]
    if extra:
        f, t = f.isel({d: 0 for d in extra}), t.isel({d: 0 for d in extra})
    n = f.sizes["lead_time"]
    leads = leads or sorted({0, n // 2, n - 1})
    fig, axes = plt.subplots(3, len(leads), figsize=(3.2 * len(leads), 8.4), squeeze=False)
    vmin, vmax = float(np.nanmin(t.values)), float(np.nanmax(t.values))
    err = (f - t).values
    emax = float(np.nanmax(np.abs(err))) or 1.0
    units = forecast[variable].attrs.get("units", "")
    for j, lead in enumerate(leads):
        label = int(f["lead_time"].values[lead])
        for i, (data, title, kw) in enumerate(
            (
                (
                    t.values[lead],
                    f"truth, lead {label}",
                    {"vmin": vmin, "vmax": vmax, "cmap": "RdBu_r"},
                ),
                (
                    f.values[lead],
                    f"forecast, lead {label}",
                    {"vmin": vmin, "vmax": vmax, "cmap": "RdBu_r"},
                ),
                (
                    err[lead],
                    f"error, lead {label}",
                    {"vmin": -emax, "vmax": emax, "cmap": "PuOr_r"},
                ),
            )
        ):
            im = axes[i, j].imshow(data, origin="lower", **kw)
            axes[i, j].set_title(title, fontsize=9)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            fig.colorbar(im, ax=axes[i, j], shrink=0.75, label=units)
    fig.suptitle(f"{variable}: sample {sample}")
    return fig


def plot_metric_vs_lead(scorecard: xr.Dataset, metrics: list[str] | None = None) -> plt.Figure:
    """Metric value against lead time, one line per variable, a panel per metric."""
    names = list(scorecard["metric"].values)
    metrics = [m for m in (metrics or ["rmse", "nrmse"]) if m in names] or names[:2]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    leads = scorecard["lead_time"].values
    for ax, metric in zip(axes[0], metrics):
        for var in scorecard["variable"].values:
            ax.plot(
                leads,
                scorecard["score"].sel(metric=metric, variable=var).values,
                marker="o",
                label=str(var),
            )
        ax.set_xlabel("lead time (steps)")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig
