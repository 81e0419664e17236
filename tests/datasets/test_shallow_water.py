"""Shallow water: conservation, a lake at rest, and Stoker's dam-break solution."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq

from physforecast.datasets.shallow_water import shallow_water, sw_step, total_mass


@pytest.mark.parametrize("boundary", ["wall", "periodic"])
@pytest.mark.parametrize("ic", ["dam_break", "bumps"])
def test_dataset_conserves_mass(boundary, ic):
    ds = shallow_water(
        n_trajectories=2,
        size=16,
        n_steps=6,
        dt=0.1,
        boundary=boundary,
        initial_condition=ic,
        bathymetry="bumps",
        seed=1,
        progress=False,
    )
    mass = total_mass(ds.h.values, ds.dx, ds.dy)  # (N, T), from float32 storage
    np.testing.assert_allclose(mass, mass[:, :1] * np.ones_like(mass), rtol=1e-6)
    # Something happened: the flow is not still.
    assert float(np.abs(ds.u).max()) > 1e-2
    assert float(ds.h.min()) > 0


@pytest.mark.parametrize("boundary", ["wall", "periodic"])
def test_solver_conserves_mass_to_round_off(boundary):
    rng = np.random.default_rng(0)
    n, size = 2, 16
    b = 0.3 * rng.random((n, size, size))
    U = np.zeros((n, 3, size, size))
    U[:, 0] = 1.5 - b + 0.5 * rng.random((n, size, size))
    U[:, 1:] = 0.2 * rng.standard_normal((n, 2, size, size))
    g = np.array([1.0, 9.81])
    m0 = total_mass(U[:, 0], 0.1, 0.1)
    for _ in range(40):
        U = sw_step(U, b, g, 0.1, 0.1, 0.005, boundary)
    np.testing.assert_allclose(total_mass(U[:, 0], 0.1, 0.1), m0, rtol=1e-13, atol=0)


@pytest.mark.parametrize("boundary", ["wall", "periodic"])
def test_lake_at_rest_stays_at_rest(boundary):
    """A flat free surface over a bumpy bed: the well-balanced scheme keeps it still."""
    ds = shallow_water(n_trajectories=2, size=16, n_steps=1, bathymetry="bumps", progress=False)
    b = ds.bathymetry.values.astype(np.float64)
    assert b.max() > 0.1  # the bed really is bumpy
    U = np.zeros((2, 3, 16, 16))
    U[:, 0] = 1.0 - b
    for _ in range(100):
        U = sw_step(U, b, np.array([1.0, 9.81]), 0.2, 0.2, 0.01, boundary)
    assert np.abs(U[:, 1:]).max() < 1e-12
    np.testing.assert_allclose(U[:, 0] + b, 1.0, atol=1e-12)


def _stoker(x, t, hl, hr, g):
    """Exact depth of the wet dam break (Stoker 1957) with the dam at x = 0."""
    cl = np.sqrt(g * hl)

    def mismatch(hm):  # rarefaction velocity minus shock velocity of the middle state
        return 2 * (cl - np.sqrt(g * hm)) - (hm - hr) * np.sqrt(g * (hm + hr) / (2 * hm * hr))

    hm = brentq(mismatch, hr, hl)
    um = 2 * (cl - np.sqrt(g * hm))
    shock = hm * um / (hm - hr)
    xi = x / t
    fan = (2 * cl - xi) ** 2 / (9 * g)
    h = np.where(xi < -cl, hl, np.where(xi < um - np.sqrt(g * hm), fan, hm))
    return np.where(xi > shock, hr, h), hm


def test_planar_dam_break_matches_stoker():
    nx, ny, length, g, t_end = 200, 3, 10.0, 1.0, 2.0
    dx = length / nx
    x = (np.arange(nx) + 0.5) * dx - length / 2
    U = np.zeros((1, 3, ny, nx))
    U[:, 0] = np.where(x < 0, 2.0, 1.0)
    b = np.zeros((1, ny, nx))
    t = 0.0
    while t < t_end - 1e-12:
        dt = min(0.4 * dx / 2.5, t_end - t)
        U = sw_step(U, b, np.array([g]), dx, dx, dt, "wall")
        t += dt
    exact, hm = _stoker(x, t_end, 2.0, 1.0, g)
    h = U[0, 0, 1]
    assert np.abs(U[0, 2]).max() < 1e-12  # nothing moves across
    assert np.abs(h - exact).mean() < 0.01
    plateau = (x > 0.2) & (x < 1.5)  # between the fan and the shock
    np.testing.assert_allclose(h[plateau], hm, rtol=0.01)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="initial_condition"):
        shallow_water(initial_condition="tsunami", progress=False)
    with pytest.raises(ValueError, match="boundary"):
        shallow_water(boundary="open", progress=False)
