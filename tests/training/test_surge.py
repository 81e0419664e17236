"""Surge law of Adam and the SGD law: shape, fit recovery, grid refinement, LR rescaling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from physforecast.training.surge import (
    LRGrid,
    SurgeLRRule,
    adam_optimal_lr,
    fit_surge,
    plot_surge,
    run_lr_grid,
    sgd_optimal_lr,
)


def test_adam_law_peaks_at_b_noise_with_value_lr_max():
    b = np.geomspace(1, 10_000, 2001)
    lr = adam_optimal_lr(b, 3e-3, 100.0)
    assert adam_optimal_lr(100.0, 3e-3, 100.0) == pytest.approx(3e-3, rel=1e-12)
    assert b[np.argmax(lr)] == pytest.approx(100.0, rel=0.01)
    assert lr.max() <= 3e-3 * (1 + 1e-12)
    # rises before the peak, falls after it: the surge
    assert np.all(np.diff(lr[b < 100]) > 0) and np.all(np.diff(lr[b > 100]) < 0)


@pytest.mark.parametrize("k", [1.5, 4.0, 37.0, 1e3])
def test_adam_law_is_symmetric_in_log_batch(k):
    assert adam_optimal_lr(50.0 * k, 1e-3, 50.0) == pytest.approx(
        adam_optimal_lr(50.0 / k, 1e-3, 50.0), rel=1e-12
    )


def test_small_batch_limits_sqrt_for_adam_and_linear_for_sgd():
    lr_max, bn = 2e-3, 256.0
    b = 1e-4 * bn
    assert adam_optimal_lr(b, lr_max, bn) / (2 * lr_max * math.sqrt(b / bn)) == pytest.approx(
        1.0, abs=0.01
    )
    assert sgd_optimal_lr(b, lr_max, bn) / (lr_max * b / bn) == pytest.approx(1.0, abs=0.01)
    # and the ratio is not 1 near the peak, so the check can fail
    assert adam_optimal_lr(bn / 4, lr_max, bn) / (2 * lr_max * 0.5) < 0.9


def test_sgd_law_increases_and_saturates_at_lr_max():
    b = np.geomspace(1, 1e7, 50)
    lr = sgd_optimal_lr(b, 0.1, 64.0)
    assert np.all(np.diff(lr) > 0)
    assert lr[-1] == pytest.approx(0.1, rel=1e-4)
    assert sgd_optimal_lr(64.0, 0.1, 64.0) == pytest.approx(0.05)


@pytest.mark.parametrize("lr_max,b_noise", [(1e-3, 40.0), (3e-2, 300.0), (5e-4, 9.0)])
def test_fit_recovers_parameters_from_noiseless_points(lr_max, b_noise):
    b = np.array([2, 4, 8, 16, 32, 64, 128, 256, 512, 1024], dtype=float)
    fit = fit_surge(b, adam_optimal_lr(b, lr_max, b_noise))
    assert fit.lr_max == pytest.approx(lr_max, rel=0.02)
    assert fit.b_noise == pytest.approx(b_noise, rel=0.02)
    assert fit.rms_log_error < 1e-6 and fit.b_noise_in_range


@pytest.mark.parametrize("seed", range(5))
def test_fit_recovers_parameters_within_15_percent_under_10_percent_noise(seed):
    rng = np.random.default_rng(seed)
    b = np.geomspace(2, 2048, 12)
    noisy = adam_optimal_lr(b, 2e-3, 64.0) * np.exp(0.1 * rng.standard_normal(b.size))
    fit = fit_surge(b, noisy)
    assert fit.lr_max == pytest.approx(2e-3, rel=0.15)
    assert fit.b_noise == pytest.approx(64.0, rel=0.15)
    assert 0.03 < fit.rms_log_error < 0.2  # the noise is seen, not fitted away


def test_fit_of_the_sgd_law_and_the_wrong_law_is_visible():
    b = np.geomspace(1, 4096, 14)
    lr = sgd_optimal_lr(b, 0.05, 128.0)
    fit = fit_surge(b, lr, law=sgd_optimal_lr)
    assert fit.lr_max == pytest.approx(0.05, rel=0.02) and fit.b_noise == pytest.approx(
        128, rel=0.02
    )
    assert fit.law_name == "sgd_optimal_lr"
    # Adam's law cannot follow a saturating curve: a clearly worse fit
    assert fit_surge(b, lr).rms_log_error > 100 * max(fit.rms_log_error, 1e-9)


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="> 0"):
        fit_surge([4, -8], [1e-3, 2e-3])
    with pytest.raises(ValueError, match="2 batch sizes but 3"):
        fit_surge([4, 8], [1e-3, 2e-3, 3e-3])
    with pytest.raises(ValueError, match="two distinct"):
        fit_surge([8, 8], [1e-3, 2e-3])


def test_grid_best_lr_refines_a_parabola_in_log_lr_exactly():
    lrs = list(np.geomspace(1e-4, 1e-1, 7))
    centre = [math.log(2e-3), math.log(2e-2)]
    losses = np.array([[(math.log(x) - c) ** 2 + 1.0 for x in lrs] for c in centre])
    grid = LRGrid([8, 64], lrs, losses)
    assert grid.best_lrs() == pytest.approx([2e-3, 2e-2], rel=1e-9)
    coarse = grid.best_lrs(refine=False)  # the nearest grid points, 1.6x away
    assert coarse == pytest.approx([lrs[3], lrs[5]], rel=1e-12)


def test_run_lr_grid_then_fit_recovers_the_law_and_counts_divergence_as_inf():
    truth = {"lr_max": 1e-2, "b_noise": 32.0}

    def train_eval(batch, lr):
        if lr > 0.5:
            raise FloatingPointError("diverged")
        best = adam_optimal_lr(batch, **truth)
        return (math.log(lr) - math.log(best)) ** 2

    lrs = list(np.geomspace(1e-4, 1.0, 13))
    batches = [2, 4, 8, 16, 32, 64, 128, 256, 512]
    grid = run_lr_grid(train_eval, batches, lrs, progress=False)
    assert np.isinf(grid.losses[:, -1]).all() and np.isfinite(grid.losses[:, :-1]).all()
    fit = fit_surge(grid.batch_sizes, grid.best_lrs())
    assert fit.lr_max == pytest.approx(1e-2, rel=0.02) and fit.b_noise == pytest.approx(
        32, rel=0.02
    )


def test_lr_rule_scales_like_sqrt_below_the_peak_and_updates_optimizer_and_scheduler():
    rule = SurgeLRRule(b_noise=1e6)
    assert rule.factor(16, 64) == pytest.approx(2.0, rel=1e-4)  # sqrt(4)
    assert SurgeLRRule(b_noise=1e6, law=sgd_optimal_lr).factor(16, 64) == pytest.approx(
        4.0, rel=1e-4
    )
    assert SurgeLRRule(b_noise=64).factor(64, 256) == pytest.approx(
        adam_optimal_lr(256, 1, 64), rel=1e-12
    )
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.Adam([p], lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
    opt.step(), sched.step()  # lr = 1e-3 / 2
    f = SurgeLRRule(b_noise=32).apply(opt, 8, 32, scheduler=sched)
    assert f == pytest.approx(1 / adam_optimal_lr(8, 1, 32), rel=1e-12)
    assert opt.param_groups[0]["lr"] == pytest.approx(f * 1e-3 / 2)
    opt.step(), sched.step()  # the schedule continues from the rescaled base
    assert opt.param_groups[0]["lr"] == pytest.approx(f * 1e-3 / 3)


def test_plot_surge_draws_points_and_one_line_per_fit():
    b = np.geomspace(4, 256, 6)
    lr = adam_optimal_lr(b, 1e-3, 32)
    fits = [fit_surge(b, lr), fit_surge(b, lr, law=sgd_optimal_lr)]
    fig = plot_surge(b, lr, fits)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    # points, a curve per fit, a peak line per fit whose B_noise lies in the plotted range
    peaks = sum(2 <= f.b_noise <= 512 for f in fits)
    assert fits[0].b_noise == pytest.approx(32) and peaks >= 1
    assert ax.get_xscale() == "log" and len(ax.get_lines()) == 1 + 2 + peaks
    # a highlighted point widens the range and is drawn
    fig = plot_surge(b, lr, fits[:1], highlight=(1024, 2e-4))
    lines = fig.axes[0].get_lines()
    assert len(lines) == 1 + 1 + 1 + 1 and lines[-1].get_xdata()[0] == 1024
    assert fig.axes[0].get_lines()[1].get_xdata().max() >= 1024
