"""Weather and ensemble metrics: WeatherBench 2 formulas and xskillscore parity."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import xarray as xr
import xskillscore as xs

import physforecast.metrics as M


def test_latitude_weights_are_cell_areas_with_mean_one():
    lat = np.array([-60.0, 0.0, 60.0])
    # bounds -90, -30, 30, 90: areas (sin -30 - sin -90, ...) = (0.5, 1, 0.5)
    expected = np.array([0.5, 1.0, 0.5]) / (2 / 3)
    np.testing.assert_allclose(M.latitude_weights(lat)[:, 0].numpy(), expected)
    both = np.linspace(-90, 90, 19)
    w = M.latitude_weights(both)[:, 0]
    assert w.mean().item() == pytest.approx(1.0) and w[0].item() > 0
    np.testing.assert_allclose(M.latitude_weights(both[::-1])[:, 0].numpy(), w.flip(0).numpy())
    with pytest.raises(ValueError, match=r"\[-90, 90\]"):
        M.latitude_weights([0.0, 10.0, 95.0])


def test_latitude_weighted_rmse_parity_with_xskillscore():
    rng = np.random.default_rng(0)
    lat = np.linspace(-87.5, 87.5, 8)
    p, t = rng.standard_normal((2, 4, 3, 8, 16))
    w = M.latitude_weights(lat)
    wd = xr.DataArray(w.expand(8, 16).numpy(), dims=("latitude", "longitude"))
    dims = ("sample", "lead_time", "latitude", "longitude")
    expected = xs.rmse(
        xr.DataArray(p, dims=dims),
        xr.DataArray(t, dims=dims),
        dim=["latitude", "longitude"],
        weights=wd,
    ).values
    np.testing.assert_allclose(
        M.rmse(torch.tensor(p), torch.tensor(t), weights=w).numpy(), expected, rtol=1e-12
    )
    # WB2 form: the square root after averaging the weighted MSE over forecasts
    wb2 = M.lat_rmse(torch.tensor(p), torch.tensor(t), latitude=lat, sample_dim=0)
    np.testing.assert_allclose(wb2.numpy(), np.sqrt((expected**2).mean(0)), rtol=1e-12)
    with pytest.raises(ValueError, match="latitude"):
        M.lat_rmse(torch.tensor(p), torch.tensor(t))


def test_acc():
    rng = np.random.default_rng(1)
    clim = torch.tensor(rng.standard_normal((6, 12)))
    truth = clim + torch.tensor(rng.standard_normal((3, 6, 12)))
    w = M.latitude_weights(np.linspace(-75, 75, 6))
    assert torch.allclose(
        M.acc(truth, truth, climatology=clim, weights=w), torch.ones(3, dtype=torch.float64)
    )
    flipped = 2 * clim - truth  # anomaly with the opposite sign
    assert torch.allclose(
        M.acc(flipped, truth, climatology=clim), -torch.ones(3, dtype=torch.float64)
    )
    fa, oa = (truth[0] - clim).numpy(), (flipped[0] * 0.5 + truth[0] - clim).numpy()
    wn = w.numpy()
    expected = (wn * fa * oa).sum() / np.sqrt((wn * fa**2).sum() * (wn * oa**2).sum())
    got = M.acc(truth[0], flipped[0] * 0.5 + truth[0], climatology=clim, weights=w)
    assert got.item() == pytest.approx(expected)


@pytest.fixture
def ensemble():
    rng = np.random.default_rng(2)
    obs = rng.standard_normal((3, 2, 6, 5))
    members = obs[:, :, None] + rng.standard_normal((3, 2, 4, 6, 5))  # member dim 2
    return members, obs


def test_crps_parity_with_xskillscore(ensemble):
    members, obs = ensemble
    dims = ("sample", "lead_time", "y", "x")
    fc = xr.DataArray(members, dims=("sample", "lead_time", "member", "y", "x"))
    w = xr.DataArray(np.random.default_rng(3).random((6, 5)), dims=("y", "x"))
    expected = xs.crps_ensemble(xr.DataArray(obs, dims=dims), fc, dim=["y", "x"], weights=w).values
    got = M.crps(
        torch.tensor(members),
        torch.tensor(obs),
        member_dim=2,
        fair=False,
        weights=torch.tensor(w.values),
    )
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)


def test_fair_crps_by_brute_force(ensemble):
    members, obs = ensemble
    m = members.shape[2]
    skill = np.abs(members - obs[:, :, None]).mean(2)
    pairs = sum(
        np.abs(members[:, :, i] - members[:, :, j])
        for i, j in itertools.product(range(m), repeat=2)
    )
    expected = (skill - pairs / (2 * m * (m - 1))).mean((-2, -1))
    got = M.crps(torch.tensor(members), torch.tensor(obs), member_dim=2)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    perfect = torch.tensor(obs)[:, :, None].expand(-1, -1, 3, -1, -1)
    assert M.crps(perfect, torch.tensor(obs), member_dim=2).abs().max() < 1e-12
    with pytest.raises(ValueError, match="spatial dim"):
        M.crps(torch.tensor(members), torch.tensor(obs), member_dim=-1)


def test_spread_skill_ratio(ensemble):
    members, obs = ensemble
    spread = members.var(2, ddof=1).mean((-2, -1))
    skill = ((members.mean(2) - obs) ** 2).mean((-2, -1))
    got = M.spread_skill_ratio(torch.tensor(members), torch.tensor(obs), member_dim=2)
    np.testing.assert_allclose(got.numpy(), np.sqrt(spread / skill), rtol=1e-12)
    agg = M.spread_skill_ratio(torch.tensor(members), torch.tensor(obs), member_dim=2, sample_dim=0)
    np.testing.assert_allclose(agg.numpy(), np.sqrt(spread.mean(0) / skill.mean(0)), rtol=1e-12)


def test_rank_histogram_parity_with_xskillscore(ensemble):
    members, obs = ensemble
    fc = xr.DataArray(members, dims=("sample", "lead_time", "member", "y", "x"))
    ob = xr.DataArray(obs, dims=("sample", "lead_time", "y", "x"))
    expected = xs.rank_histogram(ob, fc, dim=["sample", "y", "x"]).values  # (lead_time, rank)
    freq = M.rank_histogram(torch.tensor(members), torch.tensor(obs), member_dim=2)
    assert freq.shape == (3, 2, 5)
    torch.testing.assert_close(freq.sum(-1), torch.ones(3, 2, dtype=torch.float64))
    np.testing.assert_allclose((freq * 30).sum(0).numpy(), expected, rtol=1e-12)
