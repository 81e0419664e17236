"""Reaction-diffusion: exact heat-equation decay without reactions, the reaction ODE
without diffusion."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from physforecast.datasets.reaction_diffusion import FHN_K, reaction_diffusion


@pytest.mark.parametrize("boundary", ["neumann", "periodic"])
def test_heat_equation_decay_of_a_mode(boundary):
    """With reactions off, a Laplacian eigenmode decays as exp(-D |k|^2 t), per trajectory."""
    n, size, length = 3, 16, 2.0
    x = (np.arange(size) + 0.5) * length / size - length / 2
    X, Y = np.meshgrid(x, x)
    if boundary == "neumann":  # cos(m pi (x + 1) / L): zero normal derivative at the walls
        mx, my = 2, 3
        mode = np.cos(mx * np.pi * (X + 1) / length) * np.cos(my * np.pi * (Y + 1) / length)
        k2 = (np.pi / length) ** 2 * (mx**2 + my**2)
    else:
        mode = np.sin(2 * np.pi * 2 * X / length) * np.cos(2 * np.pi * Y / length)
        k2 = (2 * np.pi / length) ** 2 * (2**2 + 1**2)
    state = np.stack([mode, 0.5 * mode])
    ds = reaction_diffusion(
        n_trajectories=n,
        size=size,
        n_steps=4,
        dt=1.5,
        reactions=False,
        boundary=boundary,
        initial_state=state,
        diffusivity_u_range=(1e-3, 1e-2),
        seed=2,
        progress=False,
    )
    t = ds.time.values[:, None, None]
    for i in range(n):
        for var, amp, d in (("u", 1.0, "diffusivity_u"), ("v", 0.5, "diffusivity_v")):
            exact = amp * mode * np.exp(-float(ds[d][i]) * k2 * t)
            np.testing.assert_allclose(ds[var].values[i], exact, atol=2e-6)
    # The decay is visible: the test would notice a wrong wavenumber.
    assert float(np.abs(ds.u.values[:, -1]).max()) < 0.9


def test_reactions_follow_the_ode_when_uniform():
    """A uniform state does not feel diffusion: it follows du = u - u^3 - k - v, dv = u - v."""
    u0, v0 = 0.8, -0.3
    ds = reaction_diffusion(
        n_trajectories=1,
        size=8,
        n_steps=6,
        dt=0.5,
        initial_state=np.stack([np.full((8, 8), u0), np.full((8, 8), v0)]),
        progress=False,
    )

    def f(_, s):
        return [s[0] - s[0] ** 3 - FHN_K - s[1], s[0] - s[1]]

    ref = solve_ivp(f, (0, 2.5), [u0, v0], t_eval=ds.time.values, rtol=1e-10, atol=1e-12).y
    np.testing.assert_allclose(ds.u.values[0, :, 3, 3], ref[0], atol=1e-5)
    np.testing.assert_allclose(ds.v.values[0, :, 3, 3], ref[1], atol=1e-5)
    assert np.ptp(ds.u.values[0, -1]) < 1e-5  # still uniform


def test_default_is_pdebench_like():
    ds = reaction_diffusion(n_trajectories=2, size=16, n_steps=3, progress=False)
    assert ds.attrs["k"] == FHN_K and ds.attrs["boundary_conditions"] == "neumann"
    assert float(ds.x.min()) > -1 and float(ds.x.max()) < 1
    assert ((ds.diffusivity_u >= 5e-4) & (ds.diffusivity_u <= 2e-3)).all()
    # Random initial states, different per trajectory, with unit spread.
    assert not np.allclose(ds.u[0, 0], ds.u[1, 0])
    np.testing.assert_allclose(ds.u[:, 0].std(("y", "x")), 1.0, rtol=1e-5)
