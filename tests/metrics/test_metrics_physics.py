"""Physics metrics: exact derivatives of known fields, TKE, conservation, PDE residuals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import physforecast.metrics as M


def grid(h: int, w: int | None = None, length: float = 1.0):
    w = w or h
    y = torch.arange(h, dtype=torch.float64)[:, None] * (length / h)
    x = torch.arange(w, dtype=torch.float64)[None, :] * (length / w)
    return y.expand(h, w), x.expand(h, w), length / w, length / h


def test_divergence_and_vorticity_of_quadratic_fields_are_exact_at_the_walls_too():
    y, x, dx, dy = grid(12, 9)
    # second-order central and one-sided stencils differentiate quadratics exactly
    div = M.divergence(x**2, y**2, dx=dx, dy=dy)
    torch.testing.assert_close(div, 2 * x + 2 * y, rtol=0, atol=1e-12)
    vort = M.vorticity(-(y**2), x**2, dx=dx, dy=dy)
    torch.testing.assert_close(vort, 2 * x + 2 * y, rtol=0, atol=1e-12)


def test_periodic_divergence_free_field_and_its_vorticity():
    y, x, dx, dy = grid(32)
    u = torch.sin(2 * math.pi * x) * torch.cos(2 * math.pi * y)
    v = -torch.cos(2 * math.pi * x) * torch.sin(2 * math.pi * y)
    assert M.divergence(u, v, dx=dx, dy=dy, periodic=True).abs().max() < 1e-12
    exact = 4 * math.pi * torch.sin(2 * math.pi * x) * torch.sin(2 * math.pi * y)
    vort = M.vorticity(u, v, dx=dx, dy=dy, periodic=True)
    # central differences: error factor sin(2 pi dx) / (2 pi dx) - 1 ~ -(2 pi dx)^2 / 6
    assert (vort - exact).abs().max() < 0.01 * exact.abs().max()
    field = torch.stack([u, v])[None]  # (1, 2, H, W)
    assert M.divergence_rms(field, dx=dx, dy=dy, periodic=True).item() < 1e-12
    grad = torch.stack([x, y])[None]  # div = 2 inside, 1-sided edges still exact
    assert M.divergence_rms(grad, dx=dx, dy=dy).item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match=r"\(\.\.\., 2, H, W\)"):
        M.divergence_rms(torch.zeros(1, 3, 8, 8))


def test_vorticity_rmse_is_zero_for_equal_fields_and_scales():
    vel = torch.randn(2, 2, 16, 16, dtype=torch.float64)
    assert M.vorticity_rmse(vel, vel).abs().max() == 0
    a = M.vorticity_rmse(2 * vel, vel)
    b = M.vorticity_rmse(vel, torch.zeros_like(vel))
    torch.testing.assert_close(a, b)


def test_tke_of_known_fluctuations():
    y, x, _, _ = grid(8)
    t = torch.arange(4, dtype=torch.float64)
    sign = (-1.0) ** t  # +1, -1, +1, -1: zero time mean
    u = 3.0 + 2.0 * sign[:, None, None] * torch.ones(8, 8)
    v = torch.ones(4, 8, 8) * x  # steady: no fluctuation
    hist = torch.stack([u, v], dim=1)  # (T, 2, H, W)
    torch.testing.assert_close(M.tke(hist), torch.full((8, 8), 2.0, dtype=torch.float64))
    assert M.tke_mse(hist[None], hist[None]).item() == 0
    assert M.tke_mse(hist[None], torch.zeros_like(hist)[None]).item() == pytest.approx(4.0)
    assert M.tke_spectrum(hist).shape == (5,)
    assert M.tke_spectrum_mse(hist[None], hist[None]).item() == 0


def test_conservation_drift():
    base = torch.randn(3, 16, 16, dtype=torch.float64)
    frames = torch.stack([base[0] * (1 + 0.1 * k) for k in range(4)])[None]  # (1, T, H, W)
    drift = M.conservation_drift(frames, quantity="mass")
    expected = 0.1 * torch.arange(4, dtype=torch.float64) * base[0].mean()
    torch.testing.assert_close(drift[0], expected.abs())
    # the same change in the truth is no drift
    assert M.conservation_drift(frames, frames).abs().max() == 0
    moved = torch.roll(frames, 3, -1)  # redistribution conserves mass and energy
    assert M.conservation_drift(moved, frames, quantity="energy").abs().max() < 1e-12
    with pytest.raises(ValueError, match="quantity"):
        M.conservation_drift(frames, quantity="momentum")


def test_crmse_matches_pdebench():
    rng = np.random.default_rng(0)
    p, t = rng.standard_normal((2, 6, 3, 8, 10))
    expected = np.sqrt(((p.sum((-2, -1)) - t.sum((-2, -1))) ** 2).mean(0)) / 80
    got = M.crmse(torch.tensor(p), torch.tensor(t), sample_dim=0)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    per = M.crmse(torch.tensor(p), torch.tensor(t))
    np.testing.assert_allclose(per.numpy(), np.abs((p - t).mean((-2, -1))), rtol=1e-12)


def test_brmse_counts_corners_twice_as_pdebench():
    rng = np.random.default_rng(1)
    p, t = rng.standard_normal((2, 4, 7, 5))
    e = (p - t) ** 2
    edges = e[:, 0, :].sum(-1) + e[:, -1, :].sum(-1) + e[:, :, 0].sum(-1) + e[:, :, -1].sum(-1)
    expected = np.sqrt(edges / (2 * 7 + 2 * 5))
    np.testing.assert_allclose(M.brmse(torch.tensor(p), torch.tensor(t)).numpy(), expected)


# ---------------------------------------------------------------- residuals

N = 32
NU = 1e-3
DT = 0.05


def taylor_green(t: torch.Tensor, nu: float = NU) -> torch.Tensor:
    """Exact unforced NS vorticity: sin(2 pi x) sin(2 pi y) exp(-8 pi^2 nu t), (T, N, N)."""
    y, x, _, _ = grid(N)
    decay = torch.exp(-8 * math.pi**2 * nu * t)[:, None, None]
    return torch.sin(2 * math.pi * x) * torch.sin(2 * math.pi * y) * decay


def test_ns_residual_of_exact_taylor_green_is_near_zero_and_of_a_perturbed_one_is_not():
    t = torch.arange(6, dtype=torch.float64) * DT
    w = taylor_green(t)
    kw = dict(dx=1 / N, dy=1 / N, dt=DT, nu=NU, forcing=0.0)
    exact = M.ns_vorticity_residual(w, **kw)
    assert exact.shape == (6,)
    assert exact.max() < 1e-5
    perturbed = M.ns_vorticity_residual(w + 0.01 * torch.randn_like(w), **kw)
    assert perturbed.min() > 1e-2
    wrong_nu = M.ns_vorticity_residual(w, **{**kw, "nu": 1e-2})
    assert wrong_nu.min() > 100 * exact.max()


def test_ns_residual_with_the_ns2d_forcing_and_per_sample_viscosity():
    """omega = f / (8 pi^2 nu) + decaying modes on the same shell is an exact forced solution."""
    y, x, _, _ = grid(N)
    t = torch.arange(5, dtype=torch.float64)[:, None, None] * DT
    forcing = M.ns_forcing(N, N, dx=1 / N, dy=1 / N, dtype=torch.float64)
    runs = []
    for nu in (1e-3, 2e-3):
        lam = 8 * math.pi**2 * nu
        decay = torch.exp(-lam * t)
        w = forcing / lam + decay * (
            0.5 * torch.sin(2 * math.pi * (x + y)) + 0.3 * torch.cos(2 * math.pi * (x - y))
        )
        runs.append(w)
    w = torch.stack(runs)  # (S=2, T, N, N)
    nu = torch.tensor([1e-3, 2e-3])
    r = M.ns_vorticity_residual(w, dx=1 / N, dy=1 / N, dt=DT, nu=nu)
    assert r.shape == (2, 5)
    assert r.max() < 1e-5 * w.abs().max()
    swapped = M.ns_vorticity_residual(w, dx=1 / N, dy=1 / N, dt=DT, nu=nu.flip(0))
    assert swapped.min() > 1e-2
    with pytest.raises(ValueError, match="broadcast"):
        M.ns_vorticity_residual(w, dx=1 / N, dy=1 / N, dt=DT, nu=torch.ones(3))


def test_advection_diffusion_residual_of_an_exact_solution():
    y, x, dx, dy = grid(N)
    kappa, cx, cy = 2e-3, 0.7, -0.3
    t = torch.arange(5, dtype=torch.float64)[:, None, None] * DT
    k2 = 2 * (2 * math.pi) ** 2
    c = torch.exp(-kappa * k2 * t) * torch.sin(2 * math.pi * ((x - cx * t) + (y - cy * t)))
    r = M.advection_diffusion_residual(c, dx=dx, dy=dy, dt=DT, kappa=kappa, cx=cx, cy=cy)
    assert r.max() < 0.02  # the O(dt^2) error of the time differences; terms are ~ 5
    still = M.advection_diffusion_residual(c, dx=dx, dy=dy, dt=DT, kappa=kappa)
    assert still.min() > 1.0  # the advection term is missing


def test_shallow_water_continuity_of_a_travelling_wave():
    y, x, dx, dy = grid(N)
    speed = 0.5
    t = torch.arange(4, dtype=torch.float64)[:, None, None] * 0.01
    h = 1 + 0.1 * torch.sin(2 * math.pi * (x - speed * t))
    u = torch.full_like(h, speed)
    v = torch.zeros_like(h)
    state = torch.stack([h, u, v], dim=1)  # (T, 3, H, W)
    r = M.shallow_water_continuity_residual(state, dx=dx, dy=dy, dt=0.01)
    assert r.max() < 1e-3
    still = torch.stack([h, torch.zeros_like(h), v], dim=1)
    assert M.shallow_water_continuity_residual(still, dx=dx, dy=dy, dt=0.01).min() > 0.1
    with pytest.raises(ValueError, match="3 fields"):
        M.shallow_water_continuity_residual(state[:, :2], dx=dx, dy=dy, dt=0.01)


def test_time_derivative_needs_two_frames():
    with pytest.raises(ValueError, match="at least 2 frames"):
        M.ns_vorticity_residual(torch.zeros(1, 8, 8), dx=0.1, dy=0.1, dt=0.1, nu=1e-3)
