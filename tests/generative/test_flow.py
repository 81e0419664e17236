"""Flow matching: the shifted schedule against diffusers, the timestep densities, and an
exact-velocity Gaussian -> Gaussian flow sampled through the diffusers scheduler."""

from __future__ import annotations

import math

import pytest
import torch

from physforecast.generative import FlowMatching, flow_sigmas, shift_sigmas

diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize("steps", [50, 10])
@pytest.mark.parametrize("shift", [7.0, 1.0, 17.0])
def test_shifted_sigmas_equal_diffusers(steps, shift):
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(steps)
    ours = flow_sigmas(steps, shift)
    assert ours.shape == scheduler.sigmas.shape == (steps + 1,)
    torch.testing.assert_close(ours, scheduler.sigmas, atol=1e-6, rtol=0)


def test_shift_map_slopes_and_identity():
    sigma = torch.linspace(0, 1, 11, dtype=torch.float64)
    torch.testing.assert_close(shift_sigmas(sigma, 1.0), sigma)
    eps = 1e-6
    s = 7.0
    slope_one = (
        shift_sigmas(torch.tensor(1.0, dtype=torch.float64), s)
        - shift_sigmas(torch.tensor(1 - eps, dtype=torch.float64), s)
    ) / eps
    slope_zero = shift_sigmas(torch.tensor(eps, dtype=torch.float64), s) / eps
    assert abs(float(slope_one) - 1 / s) < 1e-4
    assert abs(float(slope_zero) - s) < 1e-4
    with pytest.raises(ValueError):
        shift_sigmas(0.5, 0.0)


def test_timestep_densities():
    g = torch.Generator().manual_seed(0)
    uniform = FlowMatching(density="uniform").draw_sigmas(200_000, generator=g)
    assert abs(float(uniform.mean()) - 0.5) < 5e-3
    assert abs(float(uniform.var()) - 1 / 12) < 2e-3
    logit = FlowMatching(density="logit_normal").draw_sigmas(200_000, generator=g)
    # sigmoid(N(0, 1)) lies in (1/4, 3/4) when |z| < log 3: probability erf(log 3 / sqrt 2)
    inside = float(((logit > 0.25) & (logit < 0.75)).float().mean())
    assert abs(inside - math.erf(math.log(3) / math.sqrt(2))) < 5e-3
    assert abs(float(((uniform > 0.25) & (uniform < 0.75)).float().mean()) - 0.5) < 5e-3
    with pytest.raises(ValueError):
        FlowMatching(density="cosine")


def _exact_gaussian_velocity(mean: torch.Tensor, std: torch.Tensor):
    """E[noise - x0 | x_sigma = x] for x0 ~ N(mean, std^2), noise ~ N(0, 1)."""

    def velocity(x, timestep):
        sigma = (timestep / 1000.0).reshape(-1, *([1] * (x.ndim - 1)))
        var = (1 - sigma) ** 2 * std**2 + sigma**2
        cov = sigma - (1 - sigma) * std**2
        return -mean + cov / var * (x - (1 - sigma) * mean)

    return velocity


def _standard_noise(n: int, channels: int, seed: int) -> torch.Tensor:
    noise = torch.randn(
        n, channels, 1, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    # exactly standard moments: the flow map is affine, so what is left is the solver's error
    return (noise - noise.mean(dim=0)) / noise.std(dim=0)


MEAN = torch.tensor([2.0, -1.0, 0.5]).reshape(1, 3, 1, 1).double()
STD = torch.tensor([0.5, 1.5, 0.1]).reshape(1, 3, 1, 1).double()


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_exact_velocity_gaussian_flow_heun_50_steps(shift):
    """50 steps of diffusers' flow Heun scheduler recover mean and variance to 1e-2."""
    noise = _standard_noise(20_000, 3, 1)
    samples = FlowMatching(shift=shift).sample(
        _exact_gaussian_velocity(MEAN, STD), noise, steps=50, solver="heun"
    )
    torch.testing.assert_close(samples.mean(dim=0).flatten(), MEAN.flatten(), atol=1e-2, rtol=0)
    torch.testing.assert_close(samples.var(dim=0).flatten(), (STD**2).flatten(), atol=1e-2, rtol=0)


def test_exact_velocity_gaussian_flow_euler_is_first_order():
    """50 Euler steps: the mean to 1e-2; the variance is off by O(1/N) (about 5 % here,
    more than 1e-2) and the error halves from 50 to 100 steps."""
    noise = _standard_noise(20_000, 3, 1)
    velocity = _exact_gaussian_velocity(MEAN, STD)
    errors = {}
    for steps in (50, 100):
        samples = FlowMatching().sample(velocity, noise, steps=steps)
        torch.testing.assert_close(samples.mean(dim=0).flatten(), MEAN.flatten(), atol=1e-2, rtol=0)
        errors[steps] = (samples.var(dim=0).flatten() - (STD**2).flatten()).abs()
    ratio = errors[50] / errors[100]
    assert bool(((ratio > 1.8) & (ratio < 2.2)).all()), ratio
    assert float(errors[50].max()) > 1e-2


def test_corrupt_interpolates_and_targets_the_velocity():
    x0 = torch.randn(8, 2, 4, 4)
    g = torch.Generator().manual_seed(3)
    flow = FlowMatching(density="logit_normal")
    x_t, timestep, target = flow.corrupt(x0, generator=g)
    sigma = (timestep / 1000).reshape(-1, 1, 1, 1)
    noise = target + x0
    torch.testing.assert_close(x_t, (1 - sigma) * x0 + sigma * noise)
    assert timestep.shape == (8,) and bool(((timestep > 0) & (timestep < 1000)).all())
    # the same generator seed gives the same example
    again = flow.corrupt(x0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(again[0], x_t)
