"""ST-PAD's model: gradients of the physics, parameter conditioning, condition dropout,
samplers on an analytic case, beam search = exhaustive search, reproducible sampling."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch
from stpad_helpers import fake_prepared, tiny_cfg

from physforecast.stpad.diffusion import DiffusionProcess, LatentDenoiser
from physforecast.stpad.method import build_stpad_model, stpad_spec
from physforecast.stpad.physics import PhysicsConstraints
from physforecast.stpad.upstream import STPADUpstream, upstream_loss


def _spec(cfg, out_steps=2):
    data = SimpleNamespace(
        in_steps=2,
        out_steps=out_steps,
        in_channels=1,
        params=["viscosity"],
        attrs={"boundary_conditions": "periodic"},
    )
    return stpad_spec(cfg, data)


def _randomize(module):
    torch.manual_seed(1)
    for p in module.parameters():
        if p.requires_grad and p.ndim > 1:
            torch.nn.init.normal_(p, std=0.3)


@pytest.fixture
def model(tmp_path):
    cfg = tiny_cfg(tmp_path, **{"stpad.block": 1})
    torch.manual_seed(0)
    m = build_stpad_model(_spec(cfg), cfg)
    _randomize(m.denoiser)
    return m.eval()


def test_physics_gradients_reach_the_encoder():
    torch.manual_seed(0)
    up = STPADUpstream(2, 2, 1, cond_dim=1, hidden=8, dim=4, num_codes=8, prop_hidden=8)
    prep = fake_prepared(
        ["vorticity"],
        system="ns2d",
        params=["viscosity"],
        param_values={"viscosity": [1e-3, 1e-2]},
        attrs={"dx": 1 / 16, "dy": 1 / 16, "dt": 0.1, "boundary_conditions": "periodic"},
    )
    only_physics = PhysicsConstraints(1, 1, {"pde": 1.0, "mass": 1.0}).fill(prep)
    batch = {"x": torch.randn(2, 2, 1, 16, 16), "y": torch.randn(2, 2, 1, 16, 16)}
    batch["params"] = torch.zeros(2, 1)
    pred = up(batch["x"], batch["params"], batch["y"])["pred"]
    loss, logs = only_physics(pred, batch["x"], batch["params"])
    assert set(logs) == {"phys_pde", "phys_mass"}
    loss.backward()
    for name in ("stem.conv.weight", "local.0.conv.weight", "fourier.weight"):
        grad = dict(up.encoder.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    up.zero_grad()
    total, logs = upstream_loss(up, batch, only_physics)
    assert {"rec", "pred", "commit", "phys_pde"} <= set(logs)
    total.backward()
    assert up.encoder.stem.conv.weight.grad.abs().sum() > 0


def test_parameter_conditioning_and_condition_dropout():
    torch.manual_seed(0)
    den = LatentDenoiser(2, 1, 4, cond_dim=1, hidden=16, depth=1, emb_dim=16)
    _randomize(den)
    x_t, t, hist = torch.randn(2, 1, 4, 4, 4), torch.full((2,), 0.5), torch.randn(2, 2, 4, 4, 4)
    low, high = torch.full((2, 1), -1.0), torch.full((2, 1), 1.0)
    assert not torch.allclose(den(x_t, t, hist, low), den(x_t, t, hist, high))
    dropped = torch.ones(2, dtype=torch.bool)
    uncond = den(x_t, t, hist, None)
    torch.testing.assert_close(den(x_t, t, hist, low, dropped), uncond)
    torch.testing.assert_close(den(x_t, t, hist, high, dropped), uncond)
    half = torch.tensor([True, False])
    mixed = den(x_t, t, hist, low, half)
    torch.testing.assert_close(mixed[0], uncond[0])
    torch.testing.assert_close(mixed[1], den(x_t, t, hist, low)[1])


def test_the_same_noise_and_history_with_two_viscosities_give_different_samples(model):
    x = torch.randn(2, 2, 1, 16, 16)
    model.reseed()
    a = model.sample(x, torch.full((2, 1), -1.0), members=2)
    model.reseed()
    b = model.sample(x, torch.full((2, 1), 1.0), members=2)
    assert not torch.allclose(a, b)
    model.reseed()
    again = model.sample(x, torch.full((2, 1), -1.0), members=2)
    torch.testing.assert_close(a, again)  # reproducible under the seed
    c = model.sample(x, torch.full((2, 1), -1.0), members=2)
    assert not torch.allclose(a, c)  # the next forecast draws new noise


@pytest.mark.parametrize("kind", ["ddpm", "ddim", "flow"])
def test_samplers_recover_a_point_mass_with_its_exact_denoiser(kind):
    proc = DiffusionProcess(kind, train_steps=50, sample_steps=10)
    c = torch.tensor([[1.5, -0.5, 2.0]])

    def exact(x_t, t):
        if kind == "flow":
            return (x_t - c) / t.clamp_min(1e-8)[:, None]
        i = (t * proc.train_steps).round().long()
        abar = proc.alpha_bar[i][:, None]
        return (x_t - abar.sqrt() * c) / (1 - abar).sqrt()

    noise = torch.randn(proc.noise_draws, 4, 3, generator=torch.Generator().manual_seed(0))
    out = proc.sample(exact, noise)
    torch.testing.assert_close(out, c.expand(4, 3), atol=1e-4, rtol=1e-4)
    loss = proc.loss(exact, c.expand(4, 3))
    assert float(loss) < 1e-8


def test_the_ddpm_schedule_is_the_cosine_schedule():
    """diffusers' ``squaredcos_cap_v2`` behind ``ddpm``/``ddim`` is Nichol & Dhariwal's
    cosine ``alpha_bar`` (betas capped at 0.999)."""
    import math

    proc = DiffusionProcess("ddim", train_steps=50, sample_steps=10)
    s = 0.008
    steps = torch.arange(51, dtype=torch.float64) / 50
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    torch.testing.assert_close(
        proc.alpha_bar.double(), torch.cumprod(1 - betas, 0), atol=1e-6, rtol=0
    )
    assert DiffusionProcess("flow").alpha_bar is None


@pytest.mark.parametrize("kind", ["ddpm", "ddim", "flow"])
def test_samples_are_a_deterministic_function_of_the_given_noise(kind):
    """No generator or global random state inside the sampler: the beam search needs it."""
    proc = DiffusionProcess(kind, train_steps=50, sample_steps=5)

    def fn(x_t, t):  # not the exact denoiser: the path depends on every noise draw
        return torch.sin(3 * x_t) + t[:, None]

    noise = torch.randn(proc.noise_draws, 4, 3, generator=torch.Generator().manual_seed(0))
    state = torch.get_rng_state()
    out = proc.sample(fn, noise)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)
    torch.testing.assert_close(proc.sample(fn, noise), out, rtol=0, atol=0)
    torch.testing.assert_close(proc.sample(fn, noise[:, :2]), out[:2], rtol=0, atol=0)
    changed = noise.clone()
    changed[1 if kind == "ddpm" else 0] += 1.0  # DDPM: the first step's noise; else the start
    assert not torch.allclose(proc.sample(fn, changed), out)
    with pytest.raises(ValueError, match="noise tensors"):
        proc.sample(fn, torch.randn(proc.noise_draws + 1, 4, 3))


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "flow"])
def test_beam_search_over_diffusion_samples_is_the_best_of_exhaustive_search(tmp_path, sampler):
    cfg = tiny_cfg(
        tmp_path, **{"stpad.block": 1, "stpad.sampler": sampler, "stpad.sample_steps": 4}
    )
    torch.manual_seed(0)
    model = build_stpad_model(_spec(cfg), cfg)
    _randomize(model.denoiser)
    model.eval()
    assert model.process.kind == sampler
    x = torch.randn(2, 2, 1, 16, 16)
    cond = torch.tensor([[-0.5], [0.7]])
    k, steps = 3, 2  # block = 1 lead time, T_out = 2
    assert model.block == 1 and model.out_steps == steps

    def toy(seq, blocks, step):
        return blocks.mean(dim=(2, 3, 4, 5))  # additive over blocks

    model.reseed()
    noise = [model.block_noise(s, 2, k, x) for s in range(steps)]
    model.reseed()
    res = model.search(x, cond, score_fn=toy, width=k ** (steps - 1), candidates=k)
    for b in range(2):
        rows = torch.zeros(1, dtype=torch.long)
        best, best_seq = None, None
        first = model.expand(x[b : b + 1], cond[b : b + 1], rows, noise[0][:, b : b + 1])
        for k1, k2 in itertools.product(range(k), range(k)):
            seq = torch.cat([x[b : b + 1], first[:, k1]], 1)
            second = model.expand(seq, cond[b : b + 1], rows, noise[1][:, b : b + 1])
            total = first[0, k1].mean() + second[0, k2].mean()
            if best is None or total < best:
                best, best_seq = total, torch.cat([first[:, k1], second[:, k2]], 1)[0]
        assert float(res.scores[b, 0]) == pytest.approx(float(best), abs=1e-6)
        torch.testing.assert_close(res.best[b], best_seq)
    # deterministic under the seed
    model.reseed()
    again = model.search(x, cond, score_fn=toy, width=k, candidates=k)
    torch.testing.assert_close(again.sequences, res.sequences)


def test_members_of_the_beam_search_are_the_best_beams(model):
    from physforecast.search.scores import ScoreCombination

    prep = fake_prepared(
        ["vorticity"],
        system="ns2d",
        params=["viscosity"],
        param_values={"viscosity": [1e-3, 1e-2]},
        attrs={"dx": 1 / 16, "dy": 1 / 16, "dt": 1.0, "boundary_conditions": "periodic"},
    )
    prep.dataset.attrs["forcing"] = "0.1*(sin(2*pi*(x+y)) + cos(2*pi*(x+y)))"
    prep.variables = ["vorticity"]
    model.context_fn.fill(prep)
    model.score = ScoreCombination({"vorticity_residual": 1.0, "spectral": 0.5})
    x, cond = torch.randn(2, 2, 1, 16, 16), torch.zeros(2, 1)
    model.reseed()
    ens = model.sample(x, cond, members=2)
    model.reseed()
    res = model.search(x, cond, width=2)
    assert ens.shape == (2, 2, 2, 1, 16, 16)
    torch.testing.assert_close(ens, res.sequences[:, :2])
    assert (res.scores[:, 0] <= res.scores[:, 1]).all()


def test_the_generative_dit_behind_the_latent_denoiser_call():
    from physforecast.stpad.diffusion import DiTLatentDenoiser

    torch.manual_seed(0)
    den = DiTLatentDenoiser(2, 1, 4, cond_dim=1, hidden=16, depth=2, heads=2)
    x_t, t, hist = torch.randn(2, 1, 4, 4, 4), torch.full((2,), 0.5), torch.randn(2, 2, 4, 4, 4)
    assert den(x_t, t, hist, torch.zeros(2, 1)).abs().max() == 0  # AdaLN-zero: fresh = 0
    _randomize(den)
    low, high = torch.full((2, 1), -1.0), torch.full((2, 1), 1.0)
    out = den(x_t, t, hist, low)
    assert out.shape == x_t.shape
    assert not torch.allclose(out, den(x_t, t, hist, high))
    dropped = torch.ones(2, dtype=torch.bool)
    torch.testing.assert_close(den(x_t, t, hist, low, dropped), den(x_t, t, hist, high, dropped))
    torch.testing.assert_close(den(x_t, t, hist, low, dropped), den(x_t, t, hist, None))
