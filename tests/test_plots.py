"""Plots: the figures show the data they claim to (spectra, panels), the GIF has a frame
per lead time, files are written into the plots directory."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import xarray as xr
from PIL import Image

from physforecast.metrics import power_spectrum, score
from physforecast.plots import (
    animate_rollout,
    plot_forecast_panel,
    plot_metric_vs_lead,
    plot_spectra,
    save_forecast_plots,
)


def forecast_pair(n_sample: int = 2, n_lead: int = 4, size: int = 16, dim: str = "sample"):
    """A forecast whose lead l is the mode cos(2 pi l x) and a truth of mode 2 at every lead."""
    y, x = np.meshgrid(np.arange(size) / size, np.arange(size) / size, indexing="ij")
    f = np.stack([np.cos(2 * np.pi * lead * x) for lead in range(1, n_lead + 1)])
    t = np.stack([np.cos(2 * np.pi * 2 * y)] * n_lead)
    f = np.broadcast_to(f, (n_sample, *f.shape)).astype(np.float32)
    t = np.broadcast_to(t, (n_sample, *t.shape)).astype(np.float32)
    coords = {dim: np.arange(n_sample), "lead_time": ("lead_time", np.arange(1, n_lead + 1))}
    dims = (dim, "lead_time", "y", "x")
    attrs = {"units": "s-1"}
    return (
        xr.Dataset({"w": (dims, f, attrs)}, coords=coords),
        xr.Dataset({"w": (dims, t, attrs)}, coords=coords),
    )


def test_plot_spectra_draws_the_power_spectra_of_forecast_and_truth():
    forecast, truth = forecast_pair()
    fig = plot_spectra(forecast, truth, lead_times=[1, 3])
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["forecast, lead 1", "truth, lead 1", "forecast, lead 3", "truth, lead 3"]
    f_lead3 = ax.get_lines()[2]
    expected = power_spectrum(torch.from_numpy(forecast["w"].values[0, 2]).double()).numpy()
    np.testing.assert_allclose(f_lead3.get_xdata(), np.arange(1, 9))
    np.testing.assert_allclose(f_lead3.get_ydata(), expected[1:], rtol=1e-6)
    # a single Fourier mode: the peak sits at its wavenumber
    assert f_lead3.get_xdata()[np.argmax(f_lead3.get_ydata())] == 3
    truth_line = ax.get_lines()[1]
    assert truth_line.get_xdata()[np.argmax(truth_line.get_ydata())] == 2
    assert truth_line.get_linestyle() == "--"
    plt.close(fig)


def test_forecast_panel_picks_lead_times_and_handles_init_time():
    forecast, truth = forecast_pair(dim="init_time")
    fig = plot_forecast_panel(forecast, truth, lead_times=[2, 4])
    assert [a.get_title() for a in fig.axes[:2]] == ["truth, lead 2", "truth, lead 4"]
    err = fig.axes[5].get_images()[0].get_array()
    np.testing.assert_allclose(err, forecast["w"].values[0, 3] - truth["w"].values[0, 3])
    plt.close(fig)
    # by default: first, middle and last of the leads the truth covers
    truth["w"][:, 2:] = np.nan
    fig = plot_forecast_panel(forecast, truth)
    assert [a.get_title() for a in fig.axes[:2]] == ["truth, lead 1", "truth, lead 2"]
    plt.close(fig)
    with pytest.raises(ValueError, match=r"lead times \[7\] not in the forecast"):
        plot_forecast_panel(forecast, truth, lead_times=[7])


def test_animate_rollout_writes_a_frame_per_lead(tmp_path):
    forecast, truth = forecast_pair(n_lead=5)
    path = animate_rollout(forecast, tmp_path / "plots" / "rollout.gif", truth)
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == 5
        assert gif.size[0] > gif.size[1]  # three panels side by side
    assert sorted(p.name for p in path.parent.iterdir()) == ["rollout.gif"]  # no temp file left
    with pytest.raises(ValueError, match=r"writes a \.gif"):
        animate_rollout(forecast, tmp_path / "rollout.mp4")


def test_save_forecast_plots_writes_the_set(tmp_path):
    forecast, truth = forecast_pair()
    card = score(forecast, truth, ["rmse", "mae"])
    written = save_forecast_plots(forecast, tmp_path / "plots", truth, card)
    assert {k: p.name for k, p in written.items()} == {
        "spectra": "rollout_spectra.png",
        "panel": "rollout_panel.png",
        "error_vs_lead": "rollout_error_vs_lead.png",
        "animation": "rollout.gif",
    }
    for p in written.values():
        with Image.open(p) as image:
            assert image.size[0] > 100
    only = save_forecast_plots(forecast, tmp_path / "alone", prefix="f")
    assert sorted(p.name for p in only.values()) == ["f.gif", "f_spectra.png"]


def test_metric_vs_lead_plots_the_scorecard():
    forecast, truth = forecast_pair()
    card = score(forecast, truth, ["rmse", "mae"])
    fig = plot_metric_vs_lead(card)
    line = fig.axes[0].get_lines()[0]
    np.testing.assert_allclose(line.get_ydata(), card["score"].sel(metric="rmse", variable="w"))
    plt.close(fig)
