"""Gradient noise scale: the two-batch estimator, the EMA monitor, micro-batch and DDP norms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from physforecast.training.distributed import launch_local
from physforecast.training.noise_scale import (
    GradientStats,
    MicroBatchStats,
    NoiseScaleMonitor,
    gradient_stats_hook,
    noise_scale_terms,
)


def test_terms_invert_the_expected_squared_norms_exactly():
    g2, tr = 0.7, 23.0
    for b_small, b_large in [(1, 2), (4, 64), (8, 24)]:
        got = noise_scale_terms(g2 + tr / b_small, g2 + tr / b_large, b_small, b_large)
        assert got == pytest.approx((g2, tr), rel=1e-12)
    with pytest.raises(ValueError, match="b_small < b_large"):
        noise_scale_terms(1.0, 0.5, 8, 8)


def test_monitor_is_bias_corrected_and_restores_its_state():
    mon = NoiseScaleMonitor(beta=0.99)
    assert math.isnan(mon.noise_scale)
    for _ in range(3):  # constant inputs: the corrected EMA is exact from the first update
        mon.update(2.0 + 12.0 / 4, 2.0 + 12.0 / 16, 4, 16)
        assert mon.noise_scale == pytest.approx(6.0, rel=1e-12)
    mon.update(float("inf"), 1.0, 4, 16)  # an overflowed step is skipped
    assert mon.updates == 3
    other = NoiseScaleMonitor()
    other.load_state_dict(mon.state_dict())
    assert other.record() == mon.record()
    with pytest.raises(ValueError, match="beta"):
        NoiseScaleMonitor(beta=1.0)


def test_noise_scale_on_linear_regression_is_within_10_percent_of_the_analytic_value():
    """Per-sample loss 0.5 (x.w - y)^2 with x ~ N(0, I_d), y = x.w* + sigma eps, at a fixed w.

    With delta = w - w*, the mean gradient is G = delta and the per-sample gradient
    covariance is Sigma = delta delta^T + (|delta|^2 + sigma^2) I (Isserlis), so
    B_simple = tr(Sigma) / |G|^2 = 1 + d + d sigma^2 / |delta|^2.
    """
    rng = np.random.default_rng(0)
    d, sigma, b_small, n_micro, steps = 8, 1.0, 4, 4, 2000
    delta = rng.standard_normal(d)
    delta /= np.linalg.norm(delta)
    analytic = 1 + d + d * sigma**2 / (delta @ delta)
    x = rng.standard_normal((steps, n_micro, b_small, d))
    residual = x @ delta - sigma * rng.standard_normal((steps, n_micro, b_small))
    per_sample = x * residual[..., None]  # gradients of the per-sample losses
    micro = per_sample.mean(2)  # (steps, n_micro, d)
    sq_small = (micro**2).sum(-1).mean(1)
    sq_large = (micro.mean(1) ** 2).sum(-1)
    mon = NoiseScaleMonitor(beta=0.999)
    for s, big in zip(sq_small, sq_large):
        mon.update(float(s), float(big), b_small, n_micro * b_small)
    assert mon.noise_scale == pytest.approx(analytic, rel=0.10)
    assert mon.grad_sq_norm == pytest.approx(1.0, rel=0.15)
    # one update alone is far noisier: the smoothing is doing the work
    single = noise_scale_terms(float(sq_small[0]), float(sq_large[0]), b_small, 16)
    assert abs(single[1] / single[0] - analytic) > 0.10 * analytic


def test_micro_batch_stats_match_the_per_micro_batch_gradients():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 1))
    batches = [(torch.randn(3, 5), torch.randn(3, 1)) for _ in range(4)]

    def grad_of(x, y):
        model.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()]).double()

    grads = [grad_of(x, y) for x, y in batches]
    model.zero_grad(set_to_none=True)
    stats = MicroBatchStats(model.parameters())
    stats.start()
    for x, y in batches:
        (nn.functional.mse_loss(model(x), y) / 4).backward()
        stats.after_backward()
    sq_small, sq_large = stats.finish()
    assert sq_small == pytest.approx(float(torch.stack([g.square().sum() for g in grads]).mean()))
    assert sq_large == pytest.approx(float(torch.stack(grads).mean(0).square().sum()))
    with pytest.raises(RuntimeError, match="not zero"):
        stats.start()  # the accumulated gradients are still there
    model.zero_grad()
    stats.start()
    stats.after_backward()
    with pytest.raises(RuntimeError, match="two micro-batches"):
        stats.finish()


def _ddp_stats_worker(rank: int, world: int) -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    plain = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    plain.load_state_dict(model.state_dict())
    ddp = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=1e-4)  # several buckets
    stats = GradientStats()
    ddp.register_comm_hook(stats, gradient_stats_hook)
    out = {}
    for step in range(3):
        g = torch.Generator().manual_seed(100 * step + rank)
        x, y = torch.randn(4, 6, generator=g), torch.randn(4, 2, generator=g)
        ddp.zero_grad()
        nn.functional.mse_loss(ddp(x), y).backward()
        plain.zero_grad()
        nn.functional.mse_loss(plain(x), y).backward()
        local = torch.cat([p.grad.flatten() for p in plain.parameters()]).double()
        everyone = [torch.zeros_like(local) for _ in range(world)]
        dist.all_gather(everyone, local)
        reduced = torch.cat([p.grad.flatten() for p in model.parameters()]).double()
        small, large = stats.pop_step()
        out[step] = {
            "small": small,
            "large": large,
            "expect_small": float(torch.stack([e.square().sum() for e in everyone]).mean()),
            "expect_large": float(torch.stack(everyone).mean(0).square().sum()),
            "mean_grad_ok": bool(torch.allclose(reduced, torch.stack(everyone).mean(0), atol=1e-7)),
        }
    return out


def test_ddp_hook_records_per_rank_and_all_reduced_norms():
    results = launch_local(_ddp_stats_worker, 2, timeout=120, start_method="fork")
    for rank_result in results:
        for step in rank_result.values():
            assert step["mean_grad_ok"]  # the wrapped hook still all-reduces
            assert step["small"] == pytest.approx(step["expect_small"], rel=1e-6)
            assert step["large"] == pytest.approx(step["expect_large"], rel=1e-6)
            assert step["small"] > step["large"]  # averaging removes noise
    assert results[0] == results[1]  # the same estimate on both ranks
