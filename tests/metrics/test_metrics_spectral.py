"""Spectral metrics: analytic spectra and loop-by-loop versions of the reference formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import physforecast.metrics as M


def grid(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    c = torch.arange(n, dtype=torch.float64) / n
    return torch.meshgrid(c, c, indexing="ij")  # y, x


@pytest.mark.parametrize("a, b", [(3, 4), (1, 1), (2, 3), (0, 5), (7, 0), (6, 6)])
def test_spectrum_of_a_single_mode_peaks_at_its_wavenumber(a, b):
    y, x = grid(32)
    field = torch.cos(2 * math.pi * (a * x + b * y) + 0.3)
    spectrum = M.power_spectrum(field)
    k = round(math.hypot(a, b))
    assert spectrum.argmax().item() == k
    others = torch.cat([spectrum[:k], spectrum[k + 1 :]])
    assert others.abs().max() < 1e-20 * spectrum[k]
    # the shell sums hold all the energy: mean(f^2) = 1/2
    assert M.power_spectrum(field, reduction="sum").sum().item() == pytest.approx(0.5)


def pdebench_frmse(p: np.ndarray, t: np.ndarray, lx=1.0, ly=1.0) -> np.ndarray:
    """PDEBench's fRMSE written out with loops: p, t (batch, H, W) -> (3,) bands."""
    nb, nx, ny = p.shape
    err = np.abs(np.fft.fftn(p, axes=(1, 2)) - np.fft.fftn(t, axes=(1, 2))) ** 2
    n = min(nx // 2, ny // 2)
    shells = np.zeros((nb, n))
    for i in range(nx // 2):
        for j in range(ny // 2):
            k = math.floor(math.sqrt(i * i + j * j))
            if k <= n - 1:
                shells[:, k] += err[:, i, j]
    per_k = np.sqrt(shells.mean(0)) / (nx * ny) * lx * ly
    return np.array([per_k[:4].mean(), per_k[4:12].mean(), per_k[12:].mean()])


def test_frmse_matches_pdebench_loops():
    rng = np.random.default_rng(0)
    t = rng.standard_normal((5, 32, 28))
    p = t + rng.standard_normal(t.shape) * np.linspace(0.1, 1, 28)
    expected = pdebench_frmse(p, t)
    got = M.frmse(torch.tensor(p), torch.tensor(t), sample_dim=0)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    one = M.frmse(torch.tensor(p), torch.tensor(t), band="mid", sample_dim=0)
    assert one.item() == pytest.approx(expected[1], rel=1e-12)
    # per sample: batch of one; domain lengths from the grid spacing
    per = M.frmse(torch.tensor(p), torch.tensor(t), dx=0.5, dy=2.0)
    np.testing.assert_allclose(per[2].numpy(), pdebench_frmse(p[2:3], t[2:3], 14.0, 64.0))


def test_frmse_high_band_is_nan_on_small_grids():
    x = torch.randn(16, 16)
    out = M.frmse(x, x + 1)
    assert torch.isfinite(out[:2]).all() and torch.isnan(out[2])
    with pytest.raises(ValueError, match="band"):
        M.frmse(x, x, band="top")


def well_binned_mse(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The Well's binned spectral MSE written out mode by mode: (H, W) -> (3,)."""
    h, w = p.shape
    edges = np.logspace(np.log10(2 * np.pi / max(h, w)), np.log10(np.pi * np.sqrt(2) + 1e-6), 4)
    edges[0] = 0.0
    power = np.abs(np.fft.fft2(p - t)) ** 2
    out = np.zeros(3)
    for i, ky in enumerate(2 * np.pi * np.fft.fftfreq(h)):
        for j, kx in enumerate(2 * np.pi * np.fft.fftfreq(w)):
            k = np.sqrt(ky**2 + kx**2)
            b = np.searchsorted(edges, k, side="right") - 1
            out[b] += power[i, j]
    return out / (h * w) ** 2


def test_spectral_mse_matches_the_well_and_sums_to_the_mse():
    rng = np.random.default_rng(1)
    t = rng.standard_normal((24, 20))
    p = t + rng.standard_normal(t.shape)
    got = M.spectral_mse(torch.tensor(p), torch.tensor(t))
    np.testing.assert_allclose(got.numpy(), well_binned_mse(p, t), rtol=1e-10)
    assert got.sum().item() == pytest.approx(float(((p - t) ** 2).mean()), rel=1e-12)
    assert M.spectral_mse(torch.tensor(p), torch.tensor(t), bin=2).item() == got[2].item()
    nmse = M.spectral_nmse(torch.tensor(p), torch.tensor(t))
    target_energy = well_binned_mse(t, np.zeros_like(t))
    np.testing.assert_allclose(nmse.numpy(), got.numpy() / (target_energy + 1e-7), rtol=1e-10)


def test_lsd_is_zero_for_equal_spectra_and_6db_for_double_amplitude():
    x = torch.randn(3, 32, 32, dtype=torch.float64)
    assert torch.allclose(M.lsd(x, x), torch.zeros(3, dtype=torch.float64))
    np.testing.assert_allclose(M.lsd(2 * x, x).numpy(), 20 * np.log10(2), rtol=1e-10)
    # a shift in space leaves the power spectrum, hence the LSD, unchanged
    assert M.lsd(torch.roll(x, 5, -1), x).abs().max() < 1e-10


def test_spectral_metrics_refuse_weights_and_zero_masked_points():
    x = torch.randn(2, 16, 16)
    with pytest.raises(ValueError, match="takes no weights"):
        M.spectral_mse(x, x, weights=torch.ones(16, 16))
    mask = torch.ones(16, 16, dtype=torch.bool)
    mask[:4] = False
    y = x.clone()
    y[:, :4] = float("nan")
    assert torch.isfinite(M.frmse(x, y, mask=mask)[:, :2]).all()
    assert M.spectral_mse(x, y, mask=mask).abs().max() == 0
