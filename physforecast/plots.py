"""Plots people would rather look at than read.

Forecast / truth / error panels for chosen lead times, metrics against lead time, energy
spectra of forecast and truth, and a GIF animation of a rollout. Every ``plot_*`` function
returns a ``matplotlib`` figure; :func:`save_figure` writes one as PNG atomically and
:func:`save_forecast_plots` writes the whole set into a directory (``RUN_DIR/plots``).
Forecasts use the forecast layout: (sample | init_time, lead_time, [level], y, x).
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from physforecast.atomic import atomic_write
from physforecast.metrics.verification import spectrum

__all__ = [
    "plot_forecast_panel",
    "plot_metric_vs_lead",
    "plot_spectra",
    "animate_rollout",
    "save_forecast_plots",
    "save_figure",
]


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Save ``fig`` as PNG atomically and return the path."""
    return atomic_write(
        path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    )


def plot_forecast_panel(
    forecast: xr.Dataset,
    truth: xr.Dataset,
    variable: str | None = None,
    *,
    sample: int = 0,
    leads: list[int] | None = None,
    lead_times: list[int] | None = None,
) -> Figure:
    """Truth, forecast and error side by side for a few lead times.

    Parameters
    ----------
    forecast, truth : xr.Dataset
        Forecast-convention datasets (sample | init_time, lead_time, y, x).
    variable : str, optional
        Which variable; the first one by default.
    sample : int
        Which sample (window) to show.
    leads : list of int, optional
        Lead-time positions to show; by default the first, middle and last of those the
        truth covers (a rollout may run past the end of the truth, which is NaN there).
    lead_times : list of int, optional
        Lead times to show, as values of the ``lead_time`` coordinate (instead of ``leads``).

    Returns
    -------
    matplotlib.figure.Figure
        A 3-row grid: truth, forecast, forecast - truth.
    """
    variable = variable or _first_field(forecast)
    f, t = _one_sample(forecast[variable], sample), _one_sample(truth[variable], sample)
    f, t = f.compute(), t.compute()
    n = f.sizes["lead_time"]
    if lead_times is not None:
        leads = _lead_positions(forecast, lead_times)
    if not leads:
        # first, middle and last of the leads the truth covers (a rollout may outrun it)
        have = np.flatnonzero(np.isfinite(t.values).reshape(n, -1).any(1))
        have = have if have.size else np.arange(n)
        leads = sorted({int(have[0]), int(have[len(have) // 2]), int(have[-1])})
    fig = Figure(figsize=(3.2 * len(leads), 8.4))
    axes = fig.subplots(3, len(leads), squeeze=False)
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


def _first_field(ds: xr.Dataset) -> str:
    names = [str(n) for n, v in ds.data_vars.items() if "lead_time" in v.dims]
    if not names:
        raise ValueError("the forecast has no data variable with a 'lead_time' dim")
    return names[0]


def _one_sample(da: xr.DataArray, sample: int) -> xr.DataArray:
    """(lead_time, H, W) of one sample; extra dims (levels) at their first index."""
    sdim = next((d for d in ("sample", "init_time") if d in da.dims), None)
    if sdim is None:
        raise ValueError(f"variable {da.name!r} has dims {da.dims}; expected a 'sample' dim")
    da = da.isel({sdim: sample})
    extra = [d for d in da.dims if d != "lead_time" and d not in da.dims[-2:]]
    return da.isel({d: 0 for d in extra}) if extra else da


def _lead_positions(forecast: xr.Dataset, lead_times: list[int]) -> list[int]:
    values = list(np.asarray(forecast["lead_time"].values).tolist())
    missing = [v for v in lead_times if v not in values]
    if missing:
        raise ValueError(f"lead times {missing} not in the forecast (lead_time = {values})")
    return [values.index(v) for v in lead_times]


def plot_metric_vs_lead(scorecard: xr.Dataset, metrics: list[str] | None = None) -> Figure:
    """Metric value against lead time, one line per variable, a panel per metric."""
    names = list(scorecard["metric"].values)
    metrics = [m for m in (metrics or ["rmse", "nrmse"]) if m in names] or names[:2]
    fig = Figure(figsize=(4.2 * len(metrics), 3.4))
    axes = fig.subplots(1, len(metrics), squeeze=False)
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


def _mean_spectrum(da: xr.DataArray) -> xr.DataArray:
    """Power spectrum averaged over everything but lead_time: (lead_time, wavenumber)."""
    spec = spectrum(da)
    return spec.mean([d for d in spec.dims if d not in ("lead_time", "wavenumber")]).compute()


def plot_spectra(
    forecast: xr.Dataset,
    truth: xr.Dataset | None = None,
    variable: str | None = None,
    *,
    leads: list[int] | None = None,
    lead_times: list[int] | None = None,
) -> Figure:
    """Radially averaged power spectra of forecast (solid) and truth (dashed), log-log.

    Averaged over samples (and levels); one colour per lead time. A forecast that
    smooths out the small scales falls below the truth at high wavenumbers.

    Parameters
    ----------
    forecast : xr.Dataset
        Forecast layout (sample | init_time, lead_time, y, x).
    truth : xr.Dataset, optional
        The same layout; its spectra are drawn dashed.
    variable : str, optional
        Which variable; the first field by default.
    leads, lead_times : list of int, optional
        Lead positions or ``lead_time`` values; first, middle and last by default.

    Returns
    -------
    matplotlib.figure.Figure
        One axis; the lines' data are the spectra (wavenumber >= 1).
    """
    variable = variable or _first_field(forecast)
    n = forecast.sizes["lead_time"]
    if lead_times is not None:
        leads = _lead_positions(forecast, lead_times)
    leads = leads or sorted({0, n // 2, n - 1})
    spec_f = _mean_spectrum(forecast[variable])
    spec_t = _mean_spectrum(truth[variable]) if truth is not None else None
    k = spec_f["wavenumber"].values[1:]
    fig = Figure(figsize=(5.2, 3.8))
    ax = fig.subplots()
    colors = matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, len(leads)))
    for color, lead in zip(colors, leads):
        label = int(forecast["lead_time"].values[lead])
        ax.loglog(k, spec_f.values[lead, 1:], color=color, label=f"forecast, lead {label}")
        if spec_t is not None:
            ax.loglog(k, spec_t.values[lead, 1:], "--", color=color, label=f"truth, lead {label}")
    units = forecast[variable].attrs.get("units")
    ax.set_xlabel("wavenumber k (cycles per domain)")
    ax.set_ylabel(f"power ({units})$^2$" if units else "power")
    ax.set_title(f"{variable}: power spectrum")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def animate_rollout(
    forecast: xr.Dataset,
    path: str | os.PathLike,
    truth: xr.Dataset | None = None,
    variable: str | None = None,
    *,
    sample: int = 0,
    fps: int = 4,
    dpi: int = 80,
) -> Path:
    """Write a GIF of a rollout, one frame per lead time (matplotlib's PillowWriter).

    Parameters
    ----------
    forecast : xr.Dataset
        Forecast layout (sample | init_time, lead_time, y, x).
    path : path
        The ``.gif`` to write (atomically: a temporary file renamed into place).
    truth : xr.Dataset, optional
        The same layout; adds truth and error panels beside the forecast.
    variable : str, optional
        Which variable; the first field by default.
    sample : int
        Which sample to animate.
    fps, dpi : int
        Frames per second and resolution.

    Returns
    -------
    Path
        The written GIF (``lead_time`` frames).
    """
    from matplotlib.animation import PillowWriter

    path = Path(path)
    if path.suffix.lower() != ".gif":
        raise ValueError(f"animate_rollout writes a .gif, not {path.name!r}")
    variable = variable or _first_field(forecast)
    f = _one_sample(forecast[variable], sample).values
    panels = [("forecast", f)]
    if truth is not None:
        t = _one_sample(truth[variable], sample).values
        panels = [("truth", t), ("forecast", f), ("error", f - t)]
    finite = np.concatenate([p[1][np.isfinite(p[1])] for p in panels[:2]] or [np.zeros(1)])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    emax = float(np.nanmax(np.abs(panels[-1][1]))) if truth is not None else 1.0
    emax = emax if np.isfinite(emax) and emax > 0 else 1.0
    leads = forecast["lead_time"].values
    fig = Figure(figsize=(3.2 * len(panels), 3.3))
    axes = fig.subplots(1, len(panels), squeeze=False)
    images = []
    for ax, (name, data) in zip(axes[0], panels):
        kw = (
            {"vmin": -emax, "vmax": emax, "cmap": "PuOr_r"}
            if name == "error"
            else {"vmin": vmin, "vmax": vmax, "cmap": "RdBu_r"}
        )
        images.append(ax.imshow(data[0], origin="lower", **kw))
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    title = fig.suptitle("")

    def write(tmp: Path) -> None:
        writer = PillowWriter(fps=fps)
        with writer.saving(fig, str(tmp), dpi):
            for i, lead in enumerate(leads):
                for image, (_, data) in zip(images, panels):
                    image.set_data(data[i])
                title.set_text(f"{variable}, sample {sample}: lead {int(lead)}")
                writer.grab_frame()

    return atomic_write(path, write)


def save_forecast_plots(
    forecast: xr.Dataset,
    out_dir: str | os.PathLike,
    truth: xr.Dataset | None = None,
    scorecard: xr.Dataset | None = None,
    *,
    variable: str | None = None,
    sample: int = 0,
    prefix: str = "rollout",
) -> dict[str, Path]:
    """Write the plots of a forecast into ``out_dir`` (``RUN_DIR/plots``, say).

    ``<prefix>_spectra.png`` and ``<prefix>.gif`` always; ``<prefix>_panel.png`` with a
    truth, ``<prefix>_error_vs_lead.png`` with a scorecard.

    Returns
    -------
    dict
        Plot name -> written path.
    """
    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    figures = {"spectra": plot_spectra(forecast, truth, variable)}
    if truth is not None:
        figures["panel"] = plot_forecast_panel(forecast, truth, variable, sample=sample)
    if scorecard is not None:
        figures["error_vs_lead"] = plot_metric_vs_lead(scorecard)
    for name, fig in figures.items():
        written[name] = save_figure(fig, out_dir / f"{prefix}_{name}.png")
    written["animation"] = animate_rollout(
        forecast, out_dir / f"{prefix}.gif", truth, variable, sample=sample
    )
    return written


__all__ += ["plot_ensemble"]


def plot_ensemble(
    forecast: xr.Dataset,
    truth: xr.Dataset,
    variable: str | None = None,
    *,
    sample: int = 0,
    leads: list[int] | None = None,
    members: int = 3,
) -> Figure:
    """An ensemble forecast: truth, ensemble mean, spread and a few members per lead time.

    Parameters
    ----------
    forecast : xr.Dataset
        Forecast-convention dataset with a ``member`` dim (sample, lead_time, member, y, x).
    truth : xr.Dataset
        The same variables without ``member``.
    variable : str, optional
        Which variable; the first one by default.
    sample : int
        Which sample (window) to show.
    leads : list of int, optional
        Lead-time positions (default: first, middle and last).
    members : int
        Members shown below the mean and spread.

    Returns
    -------
    matplotlib.figure.Figure
        Rows: truth, ensemble mean, ensemble standard deviation, then the members; a
        column per lead time.
    """
    variable = variable or _first_field(forecast)
    da = forecast[variable]
    if "member" not in da.dims:
        raise ValueError(f"variable {variable!r} has no 'member' dim; it is not an ensemble")
    ens = [_one_sample(da.isel(member=m), sample).compute() for m in range(da.sizes["member"])]
    t = _one_sample(truth[variable], sample).compute().values
    stack = np.stack([e.values for e in ens])  # (M, L, H, W)
    n = stack.shape[1]
    leads = leads or sorted({0, n // 2, n - 1})
    shown = min(members, stack.shape[0])
    rows = [("truth", t), ("ensemble mean", stack.mean(0)), ("spread (std)", stack.std(0))]
    rows += [(f"member {m}", stack[m]) for m in range(shown)]
    vmin, vmax = float(np.nanmin(t)), float(np.nanmax(t))
    smax = float(np.nanmax(stack.std(0))) or 1.0
    fig = Figure(figsize=(3.0 * len(leads), 2.7 * len(rows)))
    axes = fig.subplots(len(rows), len(leads), squeeze=False)
    labels = ens[0]["lead_time"].values
    for i, (title, data) in enumerate(rows):
        spread = title.startswith("spread")
        if spread:
            kw = {"vmin": 0.0, "vmax": smax, "cmap": "viridis"}
        else:
            kw = {"vmin": vmin, "vmax": vmax, "cmap": "RdBu_r"}
        for j, lead in enumerate(leads):
            im = axes[i, j].imshow(data[lead], origin="lower", **kw)
            axes[i, j].set_title(f"{title}, lead {int(labels[lead])}", fontsize=9)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            fig.colorbar(im, ax=axes[i, j], shrink=0.75)
    fig.suptitle(f"{variable}: sample {sample}, {stack.shape[0]} members")
    return fig
