"""ns2d: the solver against exact solutions, and the dataset's layout."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from physforecast.datasets.ns2d import ns2d, simulate_vorticity


@pytest.mark.parametrize("nu,m", [(1e-2, 1), (5e-3, 2)])
def test_taylor_green_decays_exactly(nu, m):
    """Unforced Taylor-Green vortex: the nonlinear term vanishes, w = w0 exp(-2 nu k^2 t)."""
    n = 32
    grid = torch.arange(n, dtype=torch.float64) / n
    y, x = torch.meshgrid(grid, grid, indexing="ij")
    k = 2 * math.pi * m
    w0 = (2 * k * torch.cos(k * x) * torch.cos(k * y))[None]
    times = np.array([0.5, 1.0, 2.0])
    w = simulate_vorticity(w0, torch.tensor([nu]), times, dt=2.5e-3)
    for i, t in enumerate(times):
        exact = w0[0] * math.exp(-2 * nu * k**2 * t)
        err = (w[0, i] - exact).abs().max() / exact.abs().max()
        assert err < 1e-5, (t, float(err))


def test_forcing_and_advection_change_the_flow():
    """A perturbed state evolves differently from pure decay (the solver is not linear)."""
    n = 32
    g = torch.Generator().manual_seed(1)
    w0 = torch.randn(1, n, n, dtype=torch.float64, generator=g)
    lin = simulate_vorticity(w0 * 1e-6, torch.tensor([1e-3]), np.array([1.0]))[0, 0] / 1e-6
    full = simulate_vorticity(w0, torch.tensor([1e-3]), np.array([1.0]))[0, 0]
    assert (lin - full).abs().max() > 1e-3


def test_dataset_layout_and_metadata():
    ds = ns2d(
        n_trajectories=3, size=16, n_steps=4, viscosity_range=[1e-4, 1e-2], seed=3, progress=False
    )
    assert ds.vorticity.dims == ("trajectory", "time", "y", "x")
    assert ds.vorticity.shape == (3, 4, 16, 16)
    assert ds.vorticity.dtype == np.float32
    assert ds.vorticity.attrs["units"] and ds.vorticity.attrs["long_name"]
    assert ds.viscosity.dims == ("trajectory",)
    assert ((ds.viscosity >= 1e-4) & (ds.viscosity <= 1e-2)).all()
    assert len(np.unique(ds.viscosity)) == 3
    assert (
        ds.attrs["system"] == "ns2d"
        and ds.attrs["dx"] == 1 / 16
        and ds.attrs["parameters"] == "viscosity"
    )
    assert np.isfinite(ds.vorticity).all()
    # spatial mean of vorticity on the torus stays zero (no mean forcing)
    assert abs(float(ds.vorticity.mean(("y", "x")).max())) < 1e-4


def test_deterministic_by_seed():
    a = ns2d(n_trajectories=2, size=16, n_steps=2, seed=7, progress=False)
    b = ns2d(n_trajectories=2, size=16, n_steps=2, seed=7, progress=False)
    c = ns2d(n_trajectories=2, size=16, n_steps=2, seed=8, progress=False)
    np.testing.assert_array_equal(a.vorticity.values, b.vorticity.values)
    assert not np.allclose(a.vorticity.values, c.vorticity.values)


def test_bad_options():
    with pytest.raises(ValueError, match="viscosity_range"):
        ns2d(n_trajectories=2, size=16, n_steps=2, viscosity_range=[1e-2, 1e-4], progress=False)
