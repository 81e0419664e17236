"""ST-PAD's constraints: ~0 on exact solutions, clearly not on perturbed ones, and the
same numbers as the metrics they come from."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from stpad_helpers import TWO_PI, fake_prepared, torus

import physforecast.metrics as M
from physforecast.metrics.residuals import boussinesq_residual, heat_residual
from physforecast.stpad.physics import PhysicsConstraints


def _taylor_green(n=32, steps=6, dt=0.01, nu=0.01):
    y, x, dx = torus(n)
    rate = nu * 2 * TWO_PI**2  # |k|^2 = 2 (2 pi)^2
    t = dt * np.arange(steps)
    w = 2 * TWO_PI * np.sin(TWO_PI * x) * np.sin(TWO_PI * y)
    frames = np.exp(-rate * t)[:, None, None] * w[None]
    return torch.tensor(frames)[None, :, None], dx, dt  # (1, T, 1, H, W)


def _ns_constraints(nu, dx, dt, weights=None):
    prep = fake_prepared(
        ["vorticity"],
        system="ns2d",
        params=["viscosity"],
        param_values={"viscosity": [nu, 10 * nu]},
        attrs={"dx": dx, "dy": dx, "dt": dt, "boundary_conditions": "periodic"},
    )
    pc = PhysicsConstraints(1, 1, weights or {"pde": 1.0}).fill(prep)
    p = (math.log10(nu) - prep.normalizer.param_mean[0]) / prep.normalizer.param_std[0]
    return pc, torch.tensor([[p]])


def test_ns_vorticity_constraint_vanishes_on_taylor_green_and_matches_the_metric():
    seq, dx, dt = _taylor_green()
    pc, params = _ns_constraints(0.01, dx, dt)
    assert pc.active == ["pde"]
    torch.testing.assert_close(pc.parameter("viscosity", params), torch.tensor([0.01]).double())
    r = pc.residuals(seq, params)["pde"]
    scale = 1.0 / dt  # std 1 in the fake normalizer
    metric = M.ns_vorticity_residual(seq[:, :, 0], dx=dx, dy=dx, dt=dt, nu=0.01, forcing=0.0)
    torch.testing.assert_close(r.double(), metric / scale)
    amplitude = seq.abs().max() / dt
    assert r.max() * scale < 1e-4 * amplitude
    # perturbed: a wrong decay rate (the viscosity of another flow)
    wrong = seq * torch.exp(-0.5 * torch.arange(seq.shape[1]) * dt)[None, :, None, None, None]
    assert pc.residuals(wrong, params)["pde"].max() * scale > 0.05 * seq.abs().max()


def test_heat_constraint_vanishes_on_a_decaying_fourier_mode():
    n, dt, kappa = 32, 0.001, 0.1
    y, x, dx = torus(n)
    t = dt * np.arange(5)
    mode = np.sin(TWO_PI * x) * np.cos(2 * TWO_PI * y)
    frames = np.exp(-kappa * 5 * TWO_PI**2 * t)[:, None, None] * mode[None]
    seq = torch.tensor(frames)[None, :, None]
    prep = fake_prepared(["c"], attrs={"dx": dx, "dy": dx, "dt": dt})
    pc = PhysicsConstraints(1, 0, {"heat": 1.0}, heat_kappa=kappa).fill(prep)
    r = pc.residuals(seq)["heat"]
    assert r.max() < 1e-5
    metric = heat_residual(seq[:, :, 0], dx=dx, dy=dx, dt=dt, kappa=kappa)
    torch.testing.assert_close(r.double(), metric * dt)
    other = PhysicsConstraints(1, 0, {"heat": 1.0}, heat_kappa=2 * kappa).fill(prep)
    assert other.residuals(seq)["heat"].max() > 1e-3


def test_divergence_constraint_on_a_divergence_free_field_and_a_perturbed_one():
    n = 32
    y, x, dx = torus(n)
    u = np.sin(TWO_PI * x) * np.cos(TWO_PI * y)
    v = -np.cos(TWO_PI * x) * np.sin(TWO_PI * y)
    seq = torch.tensor(np.stack([u, v]))[None, None].repeat(1, 3, 1, 1, 1)
    prep = fake_prepared(["u", "v"], attrs={"dx": dx, "dy": dx, "dt": 1.0})
    pc = PhysicsConstraints(2, 0, {"divergence": 1.0}).fill(prep)
    assert pc.active == ["divergence"]
    assert pc.residuals(seq)["divergence"].max() < 1e-12
    bad = seq.clone()
    bad[:, :, 0] += 0.1 * torch.tensor(np.sin(TWO_PI * x))
    assert pc.residuals(bad)["divergence"].min() > 1e-3


def test_mass_and_energy_constraints():
    n = 16
    y, x, dx = torus(n)
    base = torch.tensor(np.sin(TWO_PI * x))
    shifted = torch.stack([base + 0.0, base.roll(3, -1), base.roll(5, -2)])  # same mean, energy
    seq = shifted[None, :, None]
    prep = fake_prepared(["c"], attrs={"dx": dx, "dy": dx, "dt": 1.0})
    pc = PhysicsConstraints(1, 0, {"mass": 1.0, "energy": 1.0}).fill(prep)
    res = pc.residuals(seq)
    assert res["mass"].max() < 1e-12 and res["energy"].max() < 1e-12
    drifting = seq + torch.tensor([0.0, 0.1, 0.2]).double()[None, :, None, None, None]
    res = pc.residuals(drifting)
    assert res["mass"][0, -1] == pytest.approx(0.2, rel=1e-6)
    assert res["energy"][0, -1] > 0.01


def test_boussinesq_residual_vanishes_on_a_decaying_shear_flow_and_conduction():
    nz, nx, dt, ra, pr = 64, 16, 0.01, 1e4, 1.0
    z = (np.arange(nz) + 0.5) / nz
    dz, dx = 1.0 / nz, 2.0 / nx
    nu = math.sqrt(pr / ra)
    k = 2 * math.pi
    t = dt * np.arange(4)
    u = 0.1 * np.exp(-nu * k**2 * t)[:, None, None] * np.sin(k * z)[None, :, None]
    u = np.broadcast_to(u, (4, nz, nx))
    temp = np.broadcast_to((1 - z)[None, :, None], (4, nz, nx))
    fields = torch.tensor(np.stack([temp, u, np.zeros_like(u)], 1))  # (T, 3, H, W)
    interior = torch.zeros(nz, nx, dtype=torch.float64)
    interior[4:-4] = 1.0  # weights: nested one-sided stencils are first order at walls
    r = boussinesq_residual(fields, weights=interior, dx=dx, dy=dz, dt=dt, rayleigh=ra, prandtl=pr)
    d_omega_dt = 0.1 * k**3 * nu
    assert r.max() < 1e-2 * d_omega_dt
    hot = fields.clone()
    hot[:, 0] += 0.05 * torch.tensor(np.sin(2 * math.pi * np.arange(nx) / nx))[None, None]
    r_hot = boussinesq_residual(hot, weights=interior, dx=dx, dy=dz, dt=dt, rayleigh=ra, prandtl=pr)
    assert r_hot.min() > 0.2 * d_omega_dt  # buoyancy of a horizontal temperature gradient


def test_constraint_loss_is_weighted_switchable_and_differentiable():
    seq, dx, dt = _taylor_green()
    noisy = (seq + 0.05 * torch.randn_like(seq)).float().requires_grad_(True)
    pc, params = _ns_constraints(0.01, dx, dt, {"pde": 2.0, "mass": 0.0})
    loss, logs = pc(noisy[:, 1:], noisy[:, :1].detach(), params)
    assert set(logs) == {"phys_pde"} and loss > 0
    loss.backward()
    assert noisy.grad is not None and noisy.grad.abs().sum() > 0
    half, _ = _ns_constraints(0.01, dx, dt, {"pde": 1.0})
    loss_half, _ = half(noisy[:, 1:].detach(), noisy[:, :1].detach(), params)
    assert float(loss_half) == pytest.approx(float(loss.detach()) / 2, rel=1e-5)
    off, _ = _ns_constraints(0.01, dx, dt, {"pde": 0.0})
    assert off.active == [] and float(off(noisy[:, 1:], noisy[:, :1], params)[0]) == 0.0
    # only the residual above the truth's counts: the truth itself costs nothing
    zero, _ = pc(seq[:, 1:].float(), seq[:, :1].float(), params, target=seq[:, 1:].float())
    assert float(zero) == 0.0


def test_unknown_constraint_and_missing_parameter_are_errors():
    with pytest.raises(ValueError, match="unknown physics constraint"):
        PhysicsConstraints(1, 0, {"pdee": 1.0})
    seq, dx, dt = _taylor_green()
    prep = fake_prepared(["vorticity"], system="ns2d", attrs={"dx": dx, "dy": dx, "dt": dt})
    pc = PhysicsConstraints(1, 0, {"pde": 1.0}).fill(prep)
    with pytest.raises(ValueError, match="viscosity"):
        pc.residuals(seq)


@pytest.mark.slow
def test_boussinesq_residual_of_the_rayleigh_benard_simulator_is_small_against_perturbed_fields():
    from physforecast.data.io import open_dataset

    opts = {"n_trajectories": 2, "n_steps": 6, "dt": 0.1, "progress": False}
    ds = open_dataset("rayleigh_benard", options=opts).load()
    f = torch.tensor(np.stack([ds[v].values for v in ("temperature", "u", "v")], 2))
    ra, pr = torch.tensor(ds["rayleigh"].values), torch.tensor(ds["prandtl"].values)
    interior = torch.zeros(f.shape[-2:], dtype=torch.float64)
    interior[2:-2] = 1.0

    def res(fields):
        kw = dict(dx=ds.attrs["dx"], dy=ds.attrs["dy"], dt=0.1, rayleigh=ra, prandtl=pr)
        return boussinesq_residual(fields, weights=interior, **kw)

    truth = res(f)
    reversed_flow = f.clone()
    reversed_flow[:, :, 1:] *= -1
    upside_down = f.clone()
    upside_down[:, :, 0] = upside_down[:, :, 0].flip(-2)
    assert (res(reversed_flow) > 3 * truth).all()
    assert (res(upside_down) > 2 * truth).all()
