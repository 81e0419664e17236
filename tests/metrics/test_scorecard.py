"""The scorecard: suites from metadata, parity with xskillscore, masks, files, table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import xskillscore as xs

import physforecast.metrics as M
from physforecast.registry import METRICS

S, L, N = 3, 4, 16


def make_pair(
    variables=("vorticity",),
    *,
    system="ns2d",
    spatial=("y", "x"),
    shape=(N, N),
    seed=0,
    noise=0.3,
    members=None,
    **attrs,
):
    rng = np.random.default_rng(seed)
    coords = {"lead_time": ("lead_time", np.arange(1, L + 1), {"units": "steps"})}
    if spatial[0] == "latitude":
        coords["latitude"] = np.linspace(-80, 80, shape[0])
        coords["longitude"] = np.arange(shape[1]) * 360.0 / shape[1]
    dims = ("sample", "lead_time", *spatial)
    truth, fc = {}, {}
    for v in variables:
        t = rng.standard_normal((S, L, *shape))
        truth[v] = (dims, t)
        if members:
            f = t[:, :, None] + noise * rng.standard_normal((S, L, members, *shape))
            fc[v] = (("sample", "lead_time", "member", *spatial), f)
        else:
            fc[v] = (dims, t + noise * rng.standard_normal(t.shape))
    base = {"system": system, "dx": 1 / shape[1], "dy": 1 / shape[0], "dt": 1.0, **attrs}
    params = {"viscosity": (("sample",), np.full(S, 1e-3))}
    return (
        xr.Dataset({**fc, **params}, coords=coords, attrs=base),
        xr.Dataset({**truth, **params}, coords=coords, attrs=base),
    )


def test_every_registered_metric_declares_kind_and_orientation():
    for name in METRICS.names():
        meta = METRICS.entry(name).meta
        assert meta["kind"] in {
            "pointwise",
            "spectral",
            "physics",
            "categorical",
            "weather",
            "probabilistic",
        }, name
        assert "higher_is_better" in meta, name


def test_scorecard_rmse_equals_xskillscore():
    fc, truth = make_pair(boundary_conditions="periodic")
    card = M.score(fc, truth)
    expected = xs.rmse(fc["vorticity"], truth["vorticity"], dim=["y", "x"]).mean("sample")
    got = card["score"].sel(metric="rmse", variable="vorticity")
    np.testing.assert_allclose(got.values, expected.values, rtol=1e-12)
    assert card["score"].dims == ("metric", "lead_time", "variable")
    assert card["lead_time"].values.tolist() == [1, 2, 3, 4]
    np.testing.assert_allclose(
        card["summary"].sel(metric="rmse", variable="vorticity"), expected.values.mean()
    )
    assert card["kind"].sel(metric="ssim").item() == "pointwise"
    assert card["higher_is_better"].sel(metric="ssim").item() == 1.0
    assert card["higher_is_better"].sel(metric="rmse").item() == 0.0
    assert card.attrs["system"] == "ns2d" and card.attrs["dx"] == 1 / N


def test_default_suites_follow_the_metadata():
    fc, _ = make_pair()
    suite = M.default_suite(fc)
    assert "ns_vorticity_residual" in suite and "lsd" in suite and "ssim" in suite
    rb, _ = make_pair(("temperature", "u", "v"), system="rayleigh_benard")
    assert {"divergence", "tke_mse", "tke_spectrum_mse"} <= set(M.default_suite(rb))
    storms, _ = make_pair(("vil",), system="storms")
    assert "csi" in M.default_suite(storms)
    other, _ = make_pair(system="somewhere_else", shape=(8, 8))
    assert M.default_suite(other) == [m for m in M.GENERIC_SUITE if m != "ssim"]
    era, _ = make_pair(("z",), system="era5", spatial=("latitude", "longitude"), shape=(8, 16))
    assert "acc" not in M.default_suite(era) and "lat_rmse" in M.default_suite(era)
    assert "acc" in M.default_suite(era, climatology=xr.Dataset())
    ens, _ = make_pair(members=3)
    assert M.default_suite(ens)[-2:] == ["crps", "spread_skill_ratio"]


def test_ns2d_residual_uses_each_samples_viscosity():
    h = w = N
    y = np.arange(h)[:, None] / h
    x = np.arange(w)[None, :] / w
    t = np.arange(1, L + 1)[:, None, None] * 0.05
    forcing = 0.1 * (np.sin(2 * np.pi * (x + y)) + np.cos(2 * np.pi * (x + y)))
    nus = np.array([1e-3, 2e-3, 4e-3])
    frames = []
    for nu in nus:
        lam = 8 * np.pi**2 * nu
        frames.append(forcing / lam + np.exp(-lam * t) * 0.5 * np.sin(2 * np.pi * (x - y)))
    data = xr.Dataset(
        {
            "vorticity": (("sample", "lead_time", "y", "x"), np.stack(frames)),
            "viscosity": (("sample",), nus),
        },
        coords={"lead_time": np.arange(1, L + 1)},
        attrs={"system": "ns2d", "dx": 1 / w, "dy": 1 / h, "dt": 0.05},
    )
    card = M.score(data, data, ["ns_vorticity_residual"])
    assert list(card["metric"].values) == ["ns_vorticity_residual", "ns_vorticity_residual_truth"]
    assert card["score"].max() < 1e-4  # O(dt^2) of the time differences; fields ~ 1
    wrong = data.assign(viscosity=("sample", nus[::-1].copy()))
    assert M.score(wrong, data, ["ns_vorticity_residual"])["score"].min() > 1e-2


def test_velocity_metrics_and_window_metrics_on_rayleigh_benard():
    fc, truth = make_pair(("temperature", "u", "v"), system="rayleigh_benard")
    card = M.score(fc, truth)
    assert "velocity" in card["variable"].values
    div = card["score"].sel(metric="divergence", variable="velocity")
    assert np.isfinite(div).all()
    assert np.isnan(card["score"].sel(metric="divergence", variable="u")).all()
    # TKE metrics consume the lead-time window: a summary only
    assert np.isnan(card["score"].sel(metric="tke_mse")).all()
    vel = lambda ds: torch.tensor(np.stack([ds["u"].values, ds["v"].values], 2))  # noqa: E731
    expected = M.tke_mse(vel(fc), vel(truth)).mean()
    assert card["summary"].sel(metric="tke_mse", variable="velocity").item() == pytest.approx(
        expected.item()
    )


def test_storm_suite_aggregates_counts_over_samples():
    fc, truth = make_pair(("vil",), system="storms")
    fc["vil"] = fc["vil"] * 60 + 100
    truth["vil"] = truth["vil"] * 60 + 100
    card = M.score(fc, truth)
    assert {"csi_16", "csi_219", "pod_74", "far_133", "hss_160", "fss_181", "csi_m"} <= set(
        card["metric"].values
    )
    expected = M.csi(
        torch.tensor(fc["vil"].values),
        torch.tensor(truth["vil"].values),
        threshold=133,
        sample_dim=0,
    )
    np.testing.assert_allclose(card["score"].sel(metric="csi_133", variable="vil"), expected)


def test_user_suites():
    fc, truth = make_pair()

    def bias(pred, target, *, weights=None, mask=None):
        return (pred - target).mean((-2, -1))

    def mean_viscosity(pred, target, *, nu):
        return nu[:, None].expand(pred.shape[:2])

    mean_viscosity.higher_is_better = False
    card = M.score(fc, truth, ["rmse", "csi_74", bias, ("nu", mean_viscosity)])
    assert list(card["metric"].values) == ["rmse", "csi_74", "bias", "nu"]
    assert card["higher_is_better"].sel(metric="nu").item() == 0.0
    assert math.isnan(card["higher_is_better"].sel(metric="bias").item())
    np.testing.assert_allclose(card["score"].sel(metric="nu", variable="vorticity"), 1e-3)
    with pytest.raises(ValueError, match="unknown metric 'rmsee'.*rmse"):
        M.score(fc, truth, ["rmsee"])
    with pytest.raises(ValueError, match="no usable name"):
        M.score(fc, truth, [lambda p, t: p.mean((-2, -1))])
    with pytest.raises(ValueError, match="more than once: rmse"):
        M.score(fc, truth, ["rmse", "rmse"])
    with pytest.raises(ValueError, match="one of \\['u'"):
        M.score(fc, truth, ["divergence"])
    with pytest.raises(ValueError, match="needs 'kappa'.*diffusivity"):
        M.score(fc, truth, ["advection_diffusion_residual"])
    with pytest.raises(ValueError, match="needs 'climatology': pass climatology="):
        M.score(fc, truth, ["acc"])


def test_default_suite_skips_what_the_data_cannot_feed():
    fc, truth = make_pair(system="advection_diffusion")
    with pytest.warns(UserWarning, match="skipping advection_diffusion_residual.*kappa"):
        card = M.score(fc, truth)
    assert "mass_drift" in card["metric"].values
    assert "advection_diffusion_residual" not in card["metric"].values
    fc2 = fc.assign(diffusivity=("sample", np.full(S, 0.1)))
    assert "advection_diffusion_residual" in M.score(fc2, truth)["metric"].values


def test_nan_in_the_truth_and_masks_are_left_out():
    fc, truth = make_pair()
    land = xr.DataArray(np.ones((N, N), dtype=bool), dims=("y", "x"))
    land[:5, :] = False
    holes = truth.copy(deep=True)
    holes["vorticity"] = holes["vorticity"].where(land)
    card = M.score(fc, holes, ["rmse", "mae"])
    expected = M.rmse(
        torch.tensor(fc["vorticity"].values),
        torch.tensor(truth["vorticity"].values),
        mask=torch.tensor(land.values),
    ).mean(0)
    np.testing.assert_allclose(card["score"].sel(metric="rmse", variable="vorticity"), expected)
    explicit = M.score(fc, truth, ["rmse"], mask=land)
    np.testing.assert_allclose(explicit["score"].sel(metric="rmse", variable="vorticity"), expected)
    # weights over (y, x) as a DataArray: here zero over the "land" rows
    weighted = M.score(fc, truth, ["rmse"], weights=land.astype(float))
    np.testing.assert_allclose(weighted["score"].sel(metric="rmse", variable="vorticity"), expected)
    stored = truth.assign(valid_mask=land.expand_dims(variable=["vorticity"]))
    from_stored = M.score(fc, stored, ["rmse"])
    np.testing.assert_allclose(
        from_stored["score"].sel(metric="rmse", variable="vorticity"), expected
    )


def test_lat_lon_grids_get_latitude_weights_and_acc():
    fc, truth = make_pair(("z",), system="era5", spatial=("latitude", "longitude"), shape=(8, 16))
    clim = xr.Dataset({"z": truth["z"].mean(("sample", "lead_time"))})
    card = M.score(fc, truth, climatology=clim)
    w = xr.DataArray(
        M.latitude_weights(fc["latitude"].values).expand(8, 16).numpy(),
        dims=("latitude", "longitude"),
    )
    expected = xs.rmse(fc["z"], truth["z"], dim=["latitude", "longitude"], weights=w).mean("sample")
    np.testing.assert_allclose(card["score"].sel(metric="rmse", variable="z"), expected, rtol=1e-12)
    acc = M.acc(
        torch.tensor(fc["z"].values),
        torch.tensor(truth["z"].values),
        climatology=torch.tensor(clim["z"].values),
        weights=M.latitude_weights(fc["latitude"].values),
    ).mean(0)
    np.testing.assert_allclose(card["score"].sel(metric="acc", variable="z"), acc, rtol=1e-12)


def test_levels_become_variables():
    fc, truth = make_pair(("t",), system="era5")
    fc = xr.concat([fc["t"], fc["t"] * 2], dim=xr.DataArray([500, 850], dims="level"))
    truth = xr.concat([truth["t"], truth["t"] * 2], dim=xr.DataArray([500, 850], dims="level"))
    card = M.score(fc.to_dataset(name="t"), truth.to_dataset(name="t"), ["rmse"])
    assert list(card["variable"].values) == ["t_500", "t_850"]
    r500, r850 = card["score"].sel(metric="rmse").values.T
    np.testing.assert_allclose(r850, 2 * r500)


def test_ensembles():
    fc, truth = make_pair(members=4)
    card = M.score(fc, truth)
    pred = torch.tensor(fc["vorticity"].values)
    obs = torch.tensor(truth["vorticity"].values)
    np.testing.assert_allclose(
        card["score"].sel(metric="crps", variable="vorticity"),
        M.crps(pred, obs, member_dim=2).mean(0),
    )
    np.testing.assert_allclose(
        card["score"].sel(metric="rmse", variable="vorticity"), M.rmse(pred.mean(2), obs).mean(0)
    )


def test_write_json_and_table(tmp_path, monkeypatch):
    fc, truth = make_pair()
    card = M.score(fc, truth, ["rmse", "frmse", "ssim"])
    nc, js = M.write_scorecard(card, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "scorecard.json",
        "scorecard.nc",
    ]
    back = xr.open_dataset(nc)
    np.testing.assert_allclose(back["score"].values, card["score"].values)
    assert list(back["metric"].values) == list(card["metric"].values)
    back.close()
    doc = json.loads(js.read_text())
    assert doc["lead_time"] == [1, 2, 3, 4]
    rmse = doc["metrics"]["rmse"]
    assert rmse["higher_is_better"] is False and rmse["kind"] == "pointwise"
    assert rmse["variables"]["vorticity"]["by_lead_time"] == pytest.approx(
        card["score"].sel(metric="rmse", variable="vorticity").values.tolist()
    )
    assert doc["metrics"]["frmse_high"]["variables"] == {}  # NaN on 16x16: left out
    # a failed write leaves the previous scorecard in place and no temporary file
    before = nc.read_bytes()

    def broken_write(self, path):
        Path(path).write_text("half a file")
        raise ZeroDivisionError

    monkeypatch.setattr(xr.Dataset, "to_netcdf", broken_write)
    with pytest.raises(ZeroDivisionError):
        M.write_scorecard(card, tmp_path / "run")
    assert nc.read_bytes() == before
    assert len(list((tmp_path / "run").iterdir())) == 2
    table = M.format_scorecard(card)
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "variable", "lead", "1", "lead", "3", "lead", "4", "mean"]
    assert any(line.startswith("rmse") for line in lines)
    assert not any(line.startswith("frmse_high") for line in lines)


def test_bad_inputs():
    fc, truth = make_pair()
    with pytest.raises(ValueError, match="truth has no variable 'vorticity'"):
        M.score(fc, truth.rename(vorticity="w"))
    with pytest.raises(ValueError, match="needs a 'sample' dim"):
        M.score(fc.rename(sample="case"), truth.rename(sample="case"))
    with pytest.raises(ValueError, match="spatial dims"):
        M.score(fc.rename(x="member"), truth.rename(x="member"))
    with pytest.raises(ValueError, match="differ from truth sizes"):
        M.score(fc, truth.isel(lead_time=slice(0, 2)))
    with pytest.raises(TypeError, match="suite entries"):
        M.score(fc, truth, [3])
