"""Pointwise metrics: parity with xskillscore and scikit-image, reference formulas, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
import xskillscore as xs
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import physforecast.metrics as M

DIMS = ("sample", "lead_time", "y", "x")


@pytest.fixture
def pair():
    rng = np.random.default_rng(3)
    t = rng.standard_normal((3, 2, 14, 12))
    p = t + 0.4 * rng.standard_normal(t.shape) + 0.1
    w = rng.random((14, 12)) + 0.1
    return p, t, w


@pytest.mark.parametrize(
    "ours, theirs",
    [(M.rmse, xs.rmse), (M.mse, xs.mse), (M.mae, xs.mae), (M.pearson, xs.pearson_r)],
)
@pytest.mark.parametrize("weighted", [False, True])
def test_parity_with_xskillscore(pair, ours, theirs, weighted):
    p, t, w = pair
    a, b = xr.DataArray(p, dims=DIMS), xr.DataArray(t, dims=DIMS)
    wd = xr.DataArray(w, dims=("y", "x")) if weighted else None
    expected = theirs(a, b, dim=["y", "x"], weights=wd).values
    got = ours(torch.tensor(p), torch.tensor(t), weights=torch.tensor(w) if weighted else None)
    assert got.shape == (3, 2)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sample_covariance", [True, False])
def test_ssim_matches_scikit_image(sample_covariance):
    rng = np.random.default_rng(0)
    t = rng.random((2, 3, 24, 19)).astype(np.float32)
    p = (t + 0.3 * rng.standard_normal(t.shape)).astype(np.float32)
    got = M.ssim(
        torch.tensor(p), torch.tensor(t), data_range=1.0, sample_covariance=sample_covariance
    )
    expected = np.array(
        [
            [
                structural_similarity(
                    t[i, j],
                    p[i, j],
                    gaussian_weights=True,
                    sigma=1.5,
                    data_range=1.0,
                    use_sample_covariance=sample_covariance,
                )
                for j in range(3)
            ]
            for i in range(2)
        ]
    )
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-4)


def test_ssim_default_range_is_the_target_range():
    rng = np.random.default_rng(1)
    t = rng.random((16, 16)) * 5 - 2
    p = t + 0.5 * rng.standard_normal(t.shape)
    expected = structural_similarity(t, p, gaussian_weights=True, data_range=np.ptp(t))
    assert M.ssim(torch.tensor(p), torch.tensor(t)).item() == pytest.approx(expected, abs=1e-10)


def test_ssim_rejects_frames_smaller_than_the_window():
    with pytest.raises(ValueError, match="smaller than the 11x11 window"):
        M.ssim(torch.zeros(8, 8), torch.zeros(8, 8), data_range=1.0)


def test_psnr_matches_scikit_image(pair):
    p, t, _ = pair
    got = M.psnr(torch.tensor(p), torch.tensor(t), data_range=4.0)
    expected = [peak_signal_noise_ratio(t[0, 1], p[0, 1], data_range=4.0)]
    assert got[0, 1].item() == pytest.approx(expected[0], rel=1e-12)
    # default range: max - min of each target frame
    auto = M.psnr(torch.tensor(p), torch.tensor(t))
    assert auto[2, 0].item() == pytest.approx(
        peak_signal_noise_ratio(t[2, 0], p[2, 0], data_range=np.ptp(t[2, 0])), rel=1e-12
    )


def test_vrmse_is_the_well_formula_and_scores_one_for_the_mean():
    rng = np.random.default_rng(2)
    t = torch.tensor(rng.standard_normal((4, 10, 10)))
    p = torch.tensor(rng.standard_normal((4, 10, 10)))
    mse = ((p - t) ** 2).mean((-2, -1))
    expected = torch.sqrt(mse / (torch.std(t, dim=(-2, -1)) ** 2 + 1e-7))
    torch.testing.assert_close(M.vrmse(p, t), expected, rtol=1e-12, atol=0)
    mean_forecast = t.mean((-2, -1), keepdim=True).expand_as(t)
    # population MSE of the mean over the unbiased variance: (n-1)/n
    np.testing.assert_allclose(M.vrmse(mean_forecast, t).numpy(), np.sqrt(99 / 100), rtol=1e-6)


def test_nrmse_is_pdebench_ratio_and_equals_rel_l2(pair):
    p, t, _ = pair
    pt, tt = torch.tensor(p), torch.tensor(t)
    expected = np.sqrt(((p - t) ** 2).mean((-2, -1))) / np.sqrt((t**2).mean((-2, -1)))
    np.testing.assert_allclose(M.nrmse(pt, tt).numpy(), expected, rtol=1e-12)
    torch.testing.assert_close(M.rel_l2(pt, tt), M.nrmse(pt, tt), rtol=1e-12, atol=0)


def test_max_error_with_mask_and_sample_dim():
    t = torch.zeros(2, 3, 4, 4)
    p = torch.zeros(2, 3, 4, 4)
    p[0, 1, 2, 2] = 5.0
    p[1, 1, 0, 0] = -7.0  # masked out below
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[0, 0] = False
    per_sample = M.max_error(p, t, mask=mask)
    assert per_sample[0, 1].item() == 5.0 and per_sample[1, 1].item() == 0.0
    assert M.max_error(p, t, sample_dim=0).tolist() == [0.0, 7.0, 0.0]
    with pytest.raises(ValueError, match="takes no weights"):
        M.max_error(p, t, weights=torch.ones(4, 4))


def test_half_precision_is_upcast():
    x = torch.randn(2, 16, 16).half()
    assert M.mse(x, x + 1).dtype == torch.float32
    assert M.ssim(x, x).dtype == torch.float32


def test_bad_input_gets_a_clear_error():
    a = torch.zeros(2, 8, 8)
    with pytest.raises(ValueError, match=r"same shape.*\(2, 8, 8\) and \(2, 8, 9\)"):
        M.rmse(a, torch.zeros(2, 8, 9))
    with pytest.raises(TypeError, match="boolean"):
        M.rmse(a, a, mask=torch.ones(8, 8))
    with pytest.raises(ValueError, match="does not broadcast"):
        M.rmse(a, a, weights=torch.ones(7, 8))
    with pytest.raises(ValueError, match="non-negative"):
        M.rmse(a, a, weights=-torch.ones(8, 8))
    with pytest.raises(TypeError, match="torch.Tensor"):
        M.rmse(np.zeros((8, 8)), a[0])
