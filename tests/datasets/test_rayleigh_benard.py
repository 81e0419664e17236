"""Rayleigh-Benard: onset of convection at the critical Rayleigh number, heat transport,
and an exactly divergence-free velocity."""

from __future__ import annotations

import numpy as np
import pytest

from physforecast.datasets.rayleigh_benard import (
    CRITICAL_RAYLEIGH,
    BoussinesqSolver,
    nusselt_number,
    rayleigh_benard,
)


def _run(ra, nz, nx, times, amplitude=0.05):
    """Integrate from conduction plus a roll-shaped perturbation; record (KE, Nu, max|div|)."""
    ra = np.asarray(ra, float)
    pr = np.ones_like(ra)
    s = BoussinesqSolver(nx, nz, 2.0, ra, pr)
    x = (np.arange(nx) + 0.5) * s.dx
    z = s.z_center
    T = (1 - z)[:, None] + amplitude * np.sin(np.pi * z)[:, None] * np.cos(np.pi * x)[None, :]
    T = np.repeat(T[None], ra.size, axis=0)
    u = np.zeros((ra.size, nz, nx))
    w = np.zeros((ra.size, nz + 1, nx))
    t, out = 0.0, []
    for target in times:
        while t < target - 1e-12:
            h = min(s.max_dt(u, w, 0.9), target - t)
            T, u, w = s.step(T, u, w, h)
            t += h
        uc, wc = s.centred(u, w)
        ke = (uc**2 + wc**2).mean(axis=(1, 2))
        out.append((ke, nusselt_number(T, wc, ra, pr), np.abs(s.divergence(u, w)).max()))
    return out


def test_growth_above_and_decay_below_onset():
    """Ra = 1000 < 1708: the perturbation decays, Nu -> 1. Ra = 1e4: rolls grow, Nu > 1.5."""
    (ke4, nu4, _), (ke8, nu8, _), (ke12, nu12, div) = _run([1000.0, 1e4], 8, 16, [4.0, 8.0, 12.0])
    assert ke8[0] < 0.5 * ke4[0] and ke12[0] < 0.5 * ke8[0]
    assert ke8[1] > 5 * ke4[1]
    assert abs(nu12[0] - 1) < 1e-3
    assert nu12[1] > 1.5
    assert div < 1e-10


def test_projection_is_exact():
    """After projection the discrete divergence is zero to round-off, for any input."""
    rng = np.random.default_rng(0)
    s = BoussinesqSolver(16, 8, 2.0, np.array([1e4, 1e5]), np.array([1.0, 0.7]))
    u = rng.standard_normal((2, 8, 16))
    w = rng.standard_normal((2, 9, 16))
    w[:, 0] = w[:, -1] = 0
    assert np.abs(s.divergence(u, w)).max() > 1
    u2, w2 = s.project(u, w)
    assert np.abs(s.divergence(u2, w2)).max() < 1e-12
    # Projecting twice changes nothing; the walls stay impermeable.
    u3, w3 = s.project(u2, w2)
    np.testing.assert_allclose(u3, u2, atol=1e-12)
    assert np.all(w2[:, 0] == 0) and np.all(w2[:, -1] == 0)


def test_conduction_is_a_steady_state():
    s = BoussinesqSolver(16, 8, 2.0, np.array([5e4]), np.array([1.0]))
    T = np.repeat((1 - s.z_center)[None, :, None], 16, axis=2)
    dT, du, dw = s.rhs(T, np.zeros((1, 8, 16)), np.zeros((1, 9, 16)))
    assert max(np.abs(dT).max(), np.abs(du).max(), np.abs(dw).max()) < 1e-12


def test_dataset_convects():
    ds = rayleigh_benard(
        n_trajectories=2,
        size=(8, 16),
        n_steps=3,
        dt=1.0,
        spinup=12.0,
        rayleigh_range=(2e4, 4e4),
        seed=0,
        progress=False,
    )
    nu = nusselt_number(ds.temperature, ds.v, ds.rayleigh, ds.prandtl)
    assert (nu > 1.5).all()
    assert float(ds.temperature.min()) > -0.1 and float(ds.temperature.max()) < 1.1
    assert ds.attrs["parameters"] == "rayleigh,prandtl"


@pytest.mark.slow
def test_onset_brackets_the_critical_rayleigh_number():
    """On a 16x32 grid, Ra = 0.85 Ra_c decays and Ra = 1.2 Ra_c grows (slow growth rates)."""
    ra = [0.85 * CRITICAL_RAYLEIGH, 1.2 * CRITICAL_RAYLEIGH]
    (ke_a, _, _), (ke_b, _, div) = _run(ra, 16, 32, [20.0, 50.0], amplitude=0.01)
    assert ke_b[0] < ke_a[0]
    assert ke_b[1] > ke_a[1]
    assert div < 1e-10
