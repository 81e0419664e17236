"""The ``.physforecast`` accessor: thin, lazy on dask data, and its outputs interoperate
(plain ``xr.open_dataset``, xskillscore's RMSE)."""

from __future__ import annotations

import dask
import dask.array as dsa
import numpy as np
import pytest
import torch
import xarray as xr
import xskillscore as xs
from torch import nn

import physforecast as pf
from physforecast.data.io import write_dataset
from physforecast.data.normalization import Normalizer
from physforecast.data.windows import ForecastWindows
from physforecast.forecast import Forecaster
from physforecast.metrics import power_spectrum, score, truth_for, write_scorecard


class _CountingScheduler:
    """A dask scheduler that counts computes and fails past ``max_computes`` (the idea of
    cf_xarray's ``raise_if_dask_computes``)."""

    def __init__(self, max_computes: int = 0) -> None:
        self.total = 0
        self.max_computes = max_computes

    def __call__(self, dsk, keys, **kwargs):
        self.total += 1
        if self.total > self.max_computes:
            raise RuntimeError(f"{self.total} dask computes; at most {self.max_computes} allowed")
        return dask.get(dsk, keys, **kwargs)


def raise_if_dask_computes(max_computes: int = 0):
    return dask.config.set(scheduler=_CountingScheduler(max_computes))


class Damped(nn.Module):
    """``y_k = 0.9^k x_-1``: a stable, nontrivial forecast."""

    in_channels = 1

    def __init__(self, in_steps: int = 2, out_steps: int = 2) -> None:
        super().__init__()
        self.in_steps, self.out_steps = in_steps, out_steps
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        k = torch.arange(1, self.out_steps + 1, dtype=x.dtype).view(1, -1, 1, 1, 1)
        return x[:, -1:] * 0.9**k


def toy_dataset(n_traj: int = 3, n_time: int = 10, size: int = 12) -> xr.Dataset:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(n_traj, n_time, size, size)).astype(np.float32)
    return xr.Dataset(
        {
            "vorticity": (("trajectory", "time", "y", "x"), w, {"units": "s-1"}),
            "viscosity": (("trajectory",), np.full(n_traj, 1e-3), {"units": "m2 s-1"}),
        },
        coords={
            "trajectory": np.arange(n_traj),
            "time": ("time", 0.5 * (1 + np.arange(n_time)), {"units": "s"}),
            "y": np.arange(size) / size,
            "x": np.arange(size) / size,
        },
        attrs={
            "system": "ns2d",
            "dx": 1 / size,
            "dy": 1 / size,
            "dt": 0.5,
            "parameters": "viscosity",
        },
    )


def tracked(ds: xr.Dataset, name: str, chunks: dict[str, int]) -> tuple[xr.Dataset, set]:
    """``ds`` with ``name`` as a dask array that records which blocks get computed."""
    seen: set[tuple[int, ...]] = set()

    def record(block, block_info=None):
        seen.add(tuple(block_info[None]["chunk-location"]))
        return block

    da = ds[name]
    arr = dsa.from_array(da.values, chunks=tuple(chunks.get(d, -1) for d in da.dims))
    arr = dsa.map_blocks(record, arr, dtype=arr.dtype)
    return ds.assign({name: (da.dims, arr, da.attrs)}), seen


@pytest.fixture
def fc() -> Forecaster:
    return Forecaster(Damped(), Normalizer(["vorticity"], [0.1], [1.5]), grid={"y": 12, "x": 12})


def test_accessor_is_registered_and_only_stores_the_object():
    ds = toy_dataset()
    acc = ds.physforecast
    assert vars(acc) == {"_obj": ds}
    assert ds.physforecast is acc  # cached by xarray
    da = ds["vorticity"]
    assert list(vars(da.physforecast)) == ["_obj"] and da.physforecast._obj is da
    assert type(acc).__name__ == "PhysforecastDatasetAccessor"


def test_forecast_matches_the_library_functions(fc):
    ds = toy_dataset()
    xr.testing.assert_identical(ds.physforecast.forecast(fc), pf.predict(fc, ds))
    xr.testing.assert_identical(
        ds.physforecast.forecast(fc, 5, init=[3, 6]), pf.rollout(fc, ds, 5, init=[3, 6])
    )
    from_da = ds["vorticity"].physforecast.forecast(fc, 5, init=[3, 6])
    np.testing.assert_array_equal(
        from_da["vorticity"].values, pf.rollout(fc, ds, 5, init=[3, 6])["vorticity"].values
    )
    # the values: 0.9^k times the last input frame
    out = ds.physforecast.forecast(fc, 3, init=4)
    # 0.9^k acts on normalized values (x - 0.1) / 1.5
    last = ds["vorticity"].values[:, 4, None]
    expected = (last - 0.1) * 0.9 ** np.arange(1, 4)[:, None, None] + 0.1
    np.testing.assert_allclose(out["vorticity"].values, expected, rtol=1e-5, atol=1e-6)


def test_forecast_reads_only_the_history_it_needs_in_one_compute(fc):
    ds, seen = tracked(toy_dataset(), "vorticity", {"trajectory": 1, "time": 1})
    with raise_if_dask_computes(max_computes=1):
        out = ds.physforecast.forecast(fc, 4, init=6)
    # in_steps = 2 frames ending at index 6: time blocks 5 and 6 of every trajectory
    assert seen == {(t, i, 0, 0) for t in range(3) for i in (5, 6)}
    eager = pf.rollout(fc, toy_dataset(), 4, init=6)
    np.testing.assert_array_equal(out["vorticity"].values, eager["vorticity"].values)


def test_windows_and_spectrum_stay_lazy():
    ds, seen = tracked(toy_dataset(), "vorticity", {"trajectory": 1, "time": 2})
    with raise_if_dask_computes(max_computes=0):
        spec = ds.physforecast.spectrum()
        spec_da = ds["vorticity"].physforecast.spectrum(reduction="sum")
        forecast_like = truth_for(
            pf.rollout(
                Forecaster(Damped(), Normalizer(["vorticity"], [0.0], [1.0])),
                toy_dataset(),
                2,
                init=3,
            ),
            ds,
        )
    assert isinstance(spec.data, dsa.Array) and isinstance(
        forecast_like["vorticity"].data, dsa.Array
    )
    assert seen == set()
    windows = ds.physforecast.windows(2, 3)
    assert isinstance(windows, ForecastWindows) and len(windows) == 3 * (10 - 5 + 1)
    # building the windows reads only the first frame (its mask); a sample its own frames
    assert seen <= {(0, 0, 0, 0)}
    seen.clear()
    sample = windows[len(windows) - 1]  # trajectory 2, frames 5..9
    assert seen == {(2, 2, 0, 0), (2, 3, 0, 0), (2, 4, 0, 0)}
    np.testing.assert_allclose(sample["y"][:, 0].numpy(), toy_dataset()["vorticity"].values[2, 7:])
    # the spectrum equals the metrics package's power spectrum
    w = torch.from_numpy(toy_dataset()["vorticity"].values.astype(np.float64))
    np.testing.assert_allclose(spec.values, power_spectrum(w).numpy(), rtol=1e-12)
    np.testing.assert_allclose(spec_da.values, power_spectrum(w, reduction="sum").numpy())
    assert spec.dims == ("trajectory", "time", "wavenumber")
    np.testing.assert_array_equal(spec["wavenumber"].values, np.arange(7))


def test_spectrum_puts_a_fourier_mode_in_its_shell_and_names_variables():
    y, x = np.meshgrid(np.arange(16) / 16, np.arange(16) / 16, indexing="ij")
    da = xr.DataArray(np.cos(2 * np.pi * (3 * x + 4 * y)), dims=("y", "x"), name="u")
    spec = da.physforecast.spectrum(reduction="sum")
    assert int(np.argmax(spec.values)) == 5 and float(spec.sum()) == pytest.approx(0.5)
    ds = xr.Dataset({"u": da, "v": 2 * da})
    with pytest.raises(ValueError, match=r"fields \['u', 'v'\]; name one"):
        ds.physforecast.spectrum()
    np.testing.assert_allclose(
        ds.physforecast.spectrum("v").values, 4 * da.physforecast.spectrum().values
    )


def test_score_equals_xskillscore_and_files_open_with_plain_xarray(fc, tmp_path):
    ds = toy_dataset()
    forecast = ds.physforecast.forecast(fc, 3, init=[2, 5])
    card = forecast.physforecast.score(ds, suite=["rmse", "mae"])
    truth = truth_for(forecast, ds)
    xr.testing.assert_identical(card, score(forecast, truth, ["rmse", "mae"]))
    ref = xs.rmse(forecast["vorticity"], truth["vorticity"], dim=["y", "x"]).mean("sample")
    np.testing.assert_allclose(
        card["score"].sel(metric="rmse", variable="vorticity"), ref, rtol=1e-5
    )
    ref_mae = xs.mae(forecast["vorticity"], truth["vorticity"], dim=["y", "x"]).mean("sample")
    np.testing.assert_allclose(
        card["score"].sel(metric="mae", variable="vorticity"), ref_mae, rtol=1e-5
    )
    # the forecast and the scorecard round-trip through plain xarray
    write_dataset(forecast, tmp_path / "forecast.nc")
    write_dataset(forecast, tmp_path / "forecast.zarr")
    for opened in (
        xr.open_dataset(tmp_path / "forecast.nc"),
        xr.open_dataset(tmp_path / "forecast.zarr", engine="zarr"),
    ):
        xr.testing.assert_allclose(opened.load(), forecast)
        again = opened.physforecast.score(ds, suite=["rmse"])
        np.testing.assert_allclose(again["score"].values, card["score"].values[:1], rtol=1e-6)
    write_scorecard(card, tmp_path)
    reopened = xr.open_dataset(tmp_path / "scorecard.nc")
    np.testing.assert_allclose(reopened["score"].values, card["score"].values)
    # truth already in forecast layout is used as given
    xr.testing.assert_identical(
        forecast.physforecast.score(truth, suite=["rmse"]), card.isel(metric=[0])
    )


def test_plot_forecast_and_bad_input(fc):
    import matplotlib.pyplot as plt

    ds = toy_dataset()
    forecast = ds.physforecast.forecast(fc, 4, init=[3])
    fig = forecast.physforecast.plot_forecast(ds, lead_times=[1, 4])
    assert len(fig.axes) == 3 * 2 * 2  # 3 rows x 2 leads, each with a colorbar
    titles = [a.get_title() for a in fig.axes[:6]]
    assert titles == [
        "truth, lead 1",
        "truth, lead 4",
        "forecast, lead 1",
        "forecast, lead 4",
        "error, lead 1",
        "error, lead 4",
    ]
    image = fig.axes[3].get_images()[0].get_array()
    np.testing.assert_allclose(image, forecast["vorticity"].values[0, 3])
    plt.close(fig)
    with pytest.raises(ValueError, match=r"lacks variable\(s\) \['vorticity'\]"):
        ds.rename(vorticity="w").physforecast.forecast(fc)
    with pytest.raises(ValueError, match="no name"):
        xr.DataArray(
            np.zeros((2, 3, 12, 12)), dims=("trajectory", "time", "y", "x")
        ).physforecast.forecast(fc)
