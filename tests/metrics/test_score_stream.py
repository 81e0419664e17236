"""ScoreAccumulator: a scorecard fed in chunks of samples equals score() of the whole."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from physforecast.metrics import ScoreAccumulator, score
from physforecast.metrics.suites import ENSEMBLE_SUITE, GENERIC_SUITE


def pair(n=11, lead=3, h=16, w=16, members=0, latlon=False, seed=0):
    rng = np.random.default_rng(seed)
    sy, sx = ("latitude", "longitude") if latlon else ("y", "x")
    truth = rng.standard_normal((n, lead, h, w))
    dims = ("sample", "lead_time", sy, sx)
    coords = {"lead_time": np.arange(1, lead + 1)}
    if latlon:
        coords |= {"latitude": np.linspace(-80, 80, h), "longitude": np.linspace(0, 350, w)}
    attrs = {"dx": 0.1, "dy": 0.1, "dt": 0.5, "boundary_conditions": "periodic"}
    if members:
        fc = truth[:, :, None] + 0.3 * rng.standard_normal((n, lead, members, h, w))
        fdims = ("sample", "lead_time", "member", sy, sx)
    else:
        fc, fdims = truth + 0.3 * rng.standard_normal(truth.shape), dims
    truth[0, 0, 0, 0] = np.nan  # a masked point
    nu = ("sample", np.geomspace(1e-3, 1e-2, n))
    forecast = xr.Dataset({"u": (fdims, fc), "viscosity": nu}, coords=coords, attrs=attrs)
    return forecast, xr.Dataset({"u": (dims, truth), "viscosity": nu}, coords=coords, attrs=attrs)


def streamed(forecast, truth, step, keep=False, **kw):
    acc = ScoreAccumulator(**kw)
    for i in range(0, forecast.sizes["sample"], step):
        sl = slice(i, i + step)
        acc.add(forecast.isel(sample=sl), truth.isel(sample=sl))
    return acc if keep else acc.result()


@pytest.mark.parametrize(
    ("kind", "suite"),
    [
        ("generic", None),
        ("ensemble", [*GENERIC_SUITE, *ENSEMBLE_SUITE]),
        ("latlon", None),
        ("categorical", ["csi_m", "pod", "far", "hss", "fss", "rmse"]),
    ],
)
@pytest.mark.parametrize("step", [1, 4, 11])
def test_chunks_give_the_whole_scorecard(kind, suite, step):
    forecast, truth = pair(
        members=4 if kind == "ensemble" else 0, latlon=kind == "latlon", seed=step
    )
    if kind == "categorical":  # onto the 0-255 VIL scale, so every SEVIR threshold has events
        forecast, truth = 60 * forecast + 120, 60 * truth + 120
    whole = score(forecast, truth, suite, chunk=5)
    acc = streamed(forecast, truth, step, suite=suite, chunk=5, keep=True)
    parts = acc.result()
    assert list(parts["metric"].values) == list(whole["metric"].values)
    assert parts.attrs["n_samples"] == whole.attrs["n_samples"] == 11
    np.testing.assert_allclose(parts["score"].values, whole["score"].values, rtol=1e-12, atol=0)
    np.testing.assert_allclose(parts["summary"].values, whole["summary"].values, rtol=1e-12)
    assert np.isfinite(whole["summary"].sel(metric=["rmse"]).values).all()
    # every pooling metric keeps statistics per sample, never the chunks' fields
    assert all(part[0] != "fields" for parts_ in acc._parts.values() for part in parts_)
    if kind == "categorical":
        assert np.isfinite(whole["summary"].values).all()
        assert len(whole["metric"]) == 1 + 4 * 6 + 1  # csi_m, 4 scores x 6 thresholds, rmse
    # pooled metrics really pool: fRMSE of all samples is not the mean of per-chunk fRMSEs
    if kind == "generic" and step == 4:
        naive = np.mean(
            [
                score(forecast.isel(sample=slice(i, i + 4)), truth.isel(sample=slice(i, i + 4)))[
                    "score"
                ]
                .sel(metric="crmse")
                .values
                for i in (0, 4)
            ],
            axis=0,
        )
        assert not np.allclose(naive, whole["score"].sel(metric="crmse").values, rtol=1e-6)


def test_nothing_added_is_an_error():
    with pytest.raises(ValueError, match="no forecast chunk"):
        ScoreAccumulator().result()
