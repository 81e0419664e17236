"""Scores: analytic zeros of the physics residuals, reference scores, the combination."""

from __future__ import annotations

import math

import pytest
import torch

from physforecast.metrics import ns_forcing
from physforecast.registry import SCORES
from physforecast.search.scores import PhysicsSpec, ScoreCombination, ScoreContext


def fno_forcing(n: int) -> torch.Tensor:
    return ns_forcing(n, n, dx=1 / n, dy=1 / n)


N = 16


def _grid() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.arange(N, dtype=torch.float32) / N
    return torch.meshgrid(g, g, indexing="ij")  # y, x


def _score(name: str, pred: torch.Tensor, ctx: ScoreContext) -> torch.Tensor:
    return SCORES.entry(name).factory(pred, ctx)


def test_vorticity_residual_vanishes_on_steady_forced_solution():
    # w = f / (nu |k|^2) with the FNO forcing (|k|^2 = 8 pi^2) is a steady solution:
    # the forcing is an eigenfunction of the Laplacian, so u . grad w = 0 as well
    nu = 1e-3
    steady = fno_forcing(N) / (nu * 8 * math.pi**2)
    hist = steady.expand(1, 3, 1, N, N).clone()
    good = steady.expand(1, 1, 4, 1, N, N).clone()
    bad = good + 0.05 * steady.std() * torch.randn(
        1, 1, 4, 1, N, N, generator=torch.Generator().manual_seed(0)
    )
    phys = PhysicsSpec(
        dx=1 / N, dy=1 / N, dt=0.5, viscosity=nu, forcing=fno_forcing(N), vorticity=0
    )
    res = _score("vorticity_residual", torch.cat([good, bad], 1), ScoreContext(hist, physics=phys))
    assert res[0, 0] < 1e-4 * res[0, 1]
    assert res[0, 1] > 0.01


def test_vorticity_residual_of_decaying_mode_is_small_and_uses_the_history_frame():
    # unforced: w = exp(-lam t) sin(2 pi x), lam = nu |k|^2, solves the equation exactly
    # (u . grad w = 0): the residual is only the O(dt^2) time-difference error. Dropping
    # the history frame (a jump in time) makes it large.
    y, x = _grid()
    nu, dt = 0.05, 0.1
    lam = nu * 4 * math.pi**2
    mode = torch.sin(2 * math.pi * x)
    w = torch.exp(-lam * dt * torch.arange(8, dtype=torch.float32))[:, None, None] * mode
    phys = PhysicsSpec(dx=1 / N, dy=1 / N, dt=dt, viscosity=torch.tensor([nu]), vorticity=0)
    pred = w[None, None, 3:, None]  # leads 3..7
    good = _score("vorticity_residual", pred, ScoreContext(w[None, :3, None], physics=phys))
    gap = _score("vorticity_residual", pred, ScoreContext(w[None, :1, None], physics=phys))
    assert good < 0.01 * lam * 0.5  # terms are of size lam * |w| ~ lam * 0.5
    assert gap > 20 * good


def test_vorticity_residual_uses_denormalize_and_per_sample_viscosity():
    nu = torch.tensor([1e-3, 2e-3])
    steady = torch.stack([fno_forcing(N) / (v * 8 * math.pi**2) for v in nu])[:, None, None]
    mean, std = 3.0, 7.0
    hist = ((steady - mean) / std).expand(2, 2, 1, N, N)
    pred = hist[:, None, :1].expand(2, 1, 3, 1, N, N)
    phys = PhysicsSpec(
        dx=1 / N, dy=1 / N, dt=1.0, viscosity=nu, forcing=fno_forcing(N), vorticity=0
    )
    ctx = ScoreContext(hist, physics=phys, denormalize=lambda t: t * std + mean)
    assert _score("vorticity_residual", pred, ctx).max() < 1e-5
    swapped = ScoreContext(
        hist,
        physics=PhysicsSpec(**{**phys.__dict__, "viscosity": nu.flip(0)}),
        denormalize=ctx.denormalize,
    )
    assert _score("vorticity_residual", pred, swapped).min() > 1e-3


def test_divergence_zero_for_discrete_curl():
    y, x = _grid()
    psi = torch.sin(2 * math.pi * x) * torch.cos(4 * math.pi * y) + 0.3 * torch.cos(
        2 * math.pi * (x + 2 * y)
    )
    d = 1 / N
    u = (psi.roll(-1, 0) - psi.roll(1, 0)) / (2 * d)  # d psi / dy
    v = -(psi.roll(-1, 1) - psi.roll(1, 1)) / (2 * d)  # -d psi / dx
    field = torch.stack([u, v])[None, None, None]  # (1, 1, 1, 2, N, N)
    noisy = field + 0.1 * torch.randn_like(field)
    hist = field[:, 0]
    phys = PhysicsSpec(dx=d, dy=d, velocity=(0, 1))
    div = _score("divergence", torch.cat([field, noisy], 1), ScoreContext(hist, physics=phys))
    assert div[0, 0] < 1e-4 and div[0, 1] > 1.0


def test_spectral_and_conservation_zero_when_forecast_repeats_input():
    torch.manual_seed(0)
    hist = torch.randn(2, 3, 2, N, N)
    same = hist[:, -1:].unsqueeze(1).expand(2, 1, 4, 2, N, N)
    rough = same + torch.randn_like(same)
    shifted = same + 1.0
    pred = torch.cat([same, rough, shifted], 1)
    ctx = ScoreContext(hist)
    spec = _score("spectral", pred, ctx)
    cons = _score("conservation", pred, ctx)
    assert spec[:, 0].abs().max() < 1e-5 and (spec[:, 1] > 0.1).all()
    assert cons[:, 0].abs().max() < 1e-5 and (cons[:, 2] > 0.5).all()


def test_reference_scores():
    torch.manual_seed(0)
    y = torch.randn(2, 3, 1, N, N)
    hist = torch.randn(2, 2, 1, N, N)
    pred = torch.stack([y, y + 0.5, -y], 1)
    ctx = ScoreContext(hist, target=y)
    rmse = _score("rmse", pred, ctx)
    torch.testing.assert_close(rmse[:, 1], torch.full((2,), 0.5))
    assert rmse[:, 0].abs().max() == 0
    csi = _score("csi", pred, ctx)
    assert csi[:, 0].abs().max() == 0 and (csi[:, 2] > 0.9).all()
    spec = _score("spectral_error", pred, ctx)
    assert spec[:, 0].abs().max() < 1e-6
    torch.testing.assert_close(spec[:, 2], spec[:, 0])  # -y has y's spectrum
    with pytest.raises(ValueError, match="H, W >= 26"):
        _score("frmse_high", pred, ctx)
    big = torch.randn(2, 1, 1, 32, 32)
    big_pred = torch.stack([big, big + 0.1 * torch.randn_like(big)], 1)
    fr = _score("frmse_high", big_pred, ScoreContext(big, target=big))
    assert fr[:, 0].abs().max() == 0 and (fr[:, 1] > 0).all()
    with pytest.raises(ValueError, match="target is None"):
        _score("rmse", pred, ScoreContext(hist))


def test_mask_excludes_points_from_rmse():
    y = torch.zeros(1, 1, 1, N, N)
    pred = y.clone().unsqueeze(1)
    pred[..., :, :4] = 10.0  # wrong only where masked out
    mask = torch.ones(1, 1, N, N, dtype=torch.bool)
    mask[..., :, :4] = False
    assert _score("rmse", pred, ScoreContext(y[:, :1], target=y, mask=mask)).item() == 0.0


def test_combination_weights_calibration_and_errors():
    torch.manual_seed(0)
    y = torch.randn(4, 2, 1, N, N)
    hist = torch.randn(4, 2, 1, N, N)
    pred = torch.stack([y + 0.1 * k * torch.randn_like(y) for k in range(3)], 1)
    ctx = ScoreContext(hist, target=y)
    comb = ScoreCombination({"rmse": 1.0, "spectral_error": 0.5})
    terms = comb.terms(pred, ctx)
    torch.testing.assert_close(comb(pred, ctx), terms["rmse"] + 0.5 * terms["spectral_error"])
    scales = comb.calibrate(pred, ctx)
    torch.testing.assert_close(
        comb(pred, ctx),
        terms["rmse"] / scales["rmse"] + 0.5 * terms["spectral_error"] / scales["spectral_error"],
    )
    assert comb.reference
    assert not ScoreCombination({"spectral": 1.0}).reference
    with pytest.raises(ValueError, match="Did you mean 'rmse'"):
        ScoreCombination({"rmsee": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        ScoreCombination({"rmse": -1.0})
    with pytest.raises(ValueError, match="at least one"):
        ScoreCombination({})


def test_physics_scores_name_missing_context():
    pred = torch.zeros(1, 1, 1, 1, N, N)
    with pytest.raises(ValueError, match="physics.vorticity"):
        _score("vorticity_residual", pred, ScoreContext(torch.zeros(1, 1, 1, N, N)))
    with pytest.raises(ValueError, match="physics.velocity"):
        _score("divergence", pred, ScoreContext(torch.zeros(1, 1, 1, N, N)))
    with pytest.raises(ValueError, match=r"\(N, K, T, C, H, W\)"):
        _score("spectral", pred[0], ScoreContext(torch.zeros(1, 1, 1, N, N)))
