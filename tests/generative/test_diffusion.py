"""DDPM / DDIM through diffusers' schedulers with the exact noise / v prediction of a
Gaussian target."""

from __future__ import annotations

import pytest
import torch

from physforecast.generative import DDPM

pytest.importorskip("diffusers")

MEAN = torch.tensor([1.5, -0.5]).reshape(1, 2, 1, 1).double()
STD = torch.tensor([0.5, 1.2]).reshape(1, 2, 1, 1).double()


def _exact(process: DDPM):
    """The exact epsilon / v / x0 prediction for x0 ~ N(MEAN, STD^2)."""
    abar = process.scheduler().alphas_cumprod.double()

    def predict(x, timestep):
        a = abar[timestep.long()].sqrt().reshape(-1, 1, 1, 1)
        b = (1 - abar[timestep.long()]).sqrt().reshape(-1, 1, 1, 1)
        var = a**2 * STD**2 + b**2
        eps = b * (x - a * MEAN) / var
        x0 = MEAN + a * STD**2 * (x - a * MEAN) / var
        if process.prediction_type == "epsilon":
            return eps
        if process.prediction_type == "v_prediction":
            return a * eps - b * x0
        return x0

    return predict


def _noise(n, seed):
    noise = torch.randn(
        n, 2, 1, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    return (noise - noise.mean(dim=0)) / noise.std(dim=0)


def test_ddim_with_the_exact_noise_prediction_recovers_the_gaussian():
    """1000 DDIM steps from N(0, 1) recover the target to 1e-2 (the start is not exactly
    the t = 999 marginal, which costs about 5e-3)."""
    process = DDPM()
    samples = process.sample(_exact(process), _noise(4_000, 0), steps=1000, sampler="ddim")
    torch.testing.assert_close(samples.mean(dim=0).flatten(), MEAN.flatten(), atol=1e-2, rtol=0)
    torch.testing.assert_close(samples.var(dim=0).flatten(), (STD**2).flatten(), atol=1e-2, rtol=0)


@pytest.mark.parametrize("prediction", ["v_prediction", "sample"])
def test_ddim_prediction_types_agree(prediction):
    """With exact predictions, DDIM from v or x0 takes the same path as from the noise."""
    noise = _noise(2_000, 0)
    reference = DDPM()
    expected = reference.sample(_exact(reference), noise, steps=20, sampler="ddim")
    process = DDPM(prediction_type=prediction)
    got = process.sample(_exact(process), noise, steps=20, sampler="ddim")
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_ddpm_ancestral_sampling_is_seeded_and_recovers_the_gaussian():
    process = DDPM()

    def run(noise, steps, seed):
        generator = torch.Generator().manual_seed(seed)
        return process.sample(
            _exact(process), noise, steps=steps, sampler="ddpm", generator=generator
        )

    small = _noise(64, 2)
    first, again, other = run(small, 20, 5), run(small, 20, 5), run(small, 20, 6)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(first, other)
    samples = run(_noise(20_000, 1), 1000, 5)
    torch.testing.assert_close(samples.mean(dim=0).flatten(), MEAN.flatten(), atol=3e-2, rtol=0)
    torch.testing.assert_close(samples.var(dim=0).flatten(), (STD**2).flatten(), atol=5e-2, rtol=0)


def test_schedulers_do_not_clip_physical_fields():
    process = DDPM()
    for kind in ("ddpm", "ddim"):
        assert process.scheduler(kind).config.clip_sample is False
    big = 50.0 * torch.ones(4, 2, 1, 1, dtype=torch.float64)
    # x0-prediction of 50 would be clipped to 1 by an image scheduler
    out = DDPM(prediction_type="sample").sample(lambda x, t: big, big, steps=5, sampler="ddim")
    torch.testing.assert_close(out, big)


def test_corrupt_targets():
    x0 = torch.randn(6, 2, 4, 4)
    process = DDPM(prediction_type="v_prediction")
    x_t, t, v = process.corrupt(x0, generator=torch.Generator().manual_seed(0))
    abar = process.scheduler().alphas_cumprod[t].reshape(-1, 1, 1, 1)
    # x_t = a x0 + b eps and v = a eps - b x0 give x0 = a x_t - b v
    torch.testing.assert_close(abar.sqrt() * x_t - (1 - abar).sqrt() * v, x0, atol=1e-5, rtol=0)
    assert t.dtype == torch.int64 and int(t.max()) < 1000
    with pytest.raises(ValueError):
        DDPM(prediction_type="score")


def test_given_step_noise_is_the_ancestral_ddpm_step():
    """Ancestral DDPM with explicit per-step noise equals diffusers' DDPMScheduler drawing
    the same noise from a generator, and is a deterministic function of the noise."""
    process = DDPM()
    noise, steps = _noise(64, 3), 20
    drawn = process.sample(
        _exact(process),
        noise,
        steps=steps,
        sampler="ddpm",
        generator=torch.Generator().manual_seed(7),
    )
    gen = torch.Generator().manual_seed(7)  # DDPMScheduler draws one tensor per step
    step_noise = torch.stack(
        [torch.randn(noise.shape, generator=gen, dtype=noise.dtype) for _ in range(steps)]
    )
    given = process.sample(
        _exact(process), noise, steps=steps, sampler="ddpm", step_noise=step_noise
    )
    # the schedulers hold float32 alphas: the two formulas agree to float32 rounding
    torch.testing.assert_close(given, drawn, atol=1e-5, rtol=1e-5)
    again = process.sample(
        _exact(process), noise, steps=steps, sampler="ddpm", step_noise=step_noise
    )
    torch.testing.assert_close(again, given, atol=0, rtol=0)
    other = process.sample(
        _exact(process), noise, steps=steps, sampler="ddpm", step_noise=step_noise.flip(0)
    )
    assert not torch.allclose(other, given)
    ddim = process.sample(
        _exact(process), noise, steps=steps, sampler="ddim", eta=1.0, step_noise=step_noise
    )
    torch.testing.assert_close(ddim, given, atol=0, rtol=0)


def test_step_noise_errors():
    process = DDPM()
    noise = torch.randn(4, 2, 1, 1)
    with pytest.raises(ValueError, match="shape"):
        process.sample(
            _exact(process), noise, steps=5, sampler="ddpm", step_noise=torch.randn(4, 4, 2, 1, 1)
        )
    with pytest.raises(ValueError, match="stochastic"):
        process.sample(
            _exact(process), noise, steps=5, sampler="ddim", step_noise=torch.randn(5, 4, 2, 1, 1)
        )
    with pytest.raises(ValueError, match="not both"):
        process.sample(
            _exact(process),
            noise,
            steps=5,
            sampler="ddpm",
            step_noise=torch.randn(5, 4, 2, 1, 1),
            generator=torch.Generator(),
        )
