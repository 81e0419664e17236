"""Property tests (hypothesis): identity, symmetry, masks and equal weights."""

from __future__ import annotations

import functools

import numpy as np
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import physforecast.metrics as M

SETTINGS = settings(max_examples=25, deadline=None)
SHAPE = st.tuples(st.just(2), st.integers(11, 14), st.integers(11, 14))
VALUES = st.floats(-50, 50, allow_nan=False, allow_infinity=False, width=64)


def fields(n: int = 2):
    """n float64 arrays of one random (2, H, W) shape."""
    return SHAPE.flatmap(lambda s: st.tuples(*[arrays(np.float64, s, elements=VALUES)] * n))


def varied(x: np.ndarray) -> bool:
    return bool(np.all(x.std((-2, -1)) > 1e-3))


# metric(x, x) is zero
ZERO = {
    "mse": M.mse,
    "rmse": M.rmse,
    "mae": M.mae,
    "rel_l2": M.rel_l2,
    "nrmse": M.nrmse,
    "vrmse": M.vrmse,
    "max_error": M.max_error,
    "frmse": functools.partial(M.frmse, band="mid"),  # the high band is NaN on small grids
    "spectral_mse": M.spectral_mse,
    "lsd": M.lsd,
    "crmse": M.crmse,
    "brmse": M.brmse,
}
# metric(x, y) == metric(y, x)
SYMMETRIC = {
    "mse": M.mse,
    "rmse": M.rmse,
    "mae": M.mae,
    "max_error": M.max_error,
    "pearson": M.pearson,
    "ssim": functools.partial(M.ssim, data_range=100.0),
    "frmse": M.frmse,
    "spectral_mse": M.spectral_mse,
    "crmse": M.crmse,
    "brmse": M.brmse,
    "csi": functools.partial(M.csi, threshold=0.0),
    "fss": functools.partial(M.fss, threshold=0.0, scale=3),
}
# metrics with a mask argument whose value must not see invalid points
MASKED = {
    **ZERO,
    "pearson": M.pearson,
    "psnr": functools.partial(M.psnr, data_range=100.0),
    "ssim": functools.partial(M.ssim, data_range=100.0),
    "hss": functools.partial(M.hss, threshold=0.0),
    "acc": functools.partial(M.acc, climatology=torch.tensor(1.0, dtype=torch.float64)),
}
# metrics with meaningful weights: all-equal weights change nothing
WEIGHTED = {
    "mse": M.mse,
    "rmse": M.rmse,
    "mae": M.mae,
    "rel_l2": M.rel_l2,
    "nrmse": M.nrmse,
    "vrmse": M.vrmse,
    "pearson": M.pearson,
    "psnr": M.psnr,
    "ssim": M.ssim,
    "crmse": M.crmse,
    "csi": functools.partial(M.csi, threshold=0.0),
    "hss": functools.partial(M.hss, threshold=0.0),
    "acc": functools.partial(M.acc, climatology=torch.tensor(-1.0, dtype=torch.float64)),
}


def same(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-9, atol: float = 1e-9) -> bool:
    return torch.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True)


@SETTINGS
@given(fields(1))
def test_metric_of_a_field_with_itself(xs):
    (x,) = xs
    assume(varied(x))
    t = torch.tensor(x)
    for name, metric in ZERO.items():
        out = metric(t, t)
        assert torch.all(out == 0), name
    assert torch.allclose(M.pearson(t, t), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(M.ssim(t, t), torch.ones(2, dtype=torch.float64))
    assert M.tke_mse(torch.stack([t, t], 1)[None], torch.stack([t, t], 1)[None]).item() == 0


@SETTINGS
@given(fields(2))
def test_symmetric_metrics(xy):
    x, y = (torch.tensor(a) for a in xy)
    for name, metric in SYMMETRIC.items():
        assert same(metric(x, y), metric(y, x)), name


@SETTINGS
@given(fields(2), st.data())
def test_masks_ignore_the_masked_values(xy, data):
    x, y = (torch.tensor(a) for a in xy)
    mask = torch.tensor(data.draw(arrays(np.bool_, x.shape[-2:])))
    assume(mask.sum() >= 4)
    garbage = torch.tensor(data.draw(arrays(np.float64, x.shape, elements=VALUES)))
    x2 = torch.where(mask, x, garbage)
    y2 = torch.where(mask, y, torch.full_like(y, float("nan")))  # NaN over "land"
    for name, metric in MASKED.items():
        expected = metric(x, y, mask=mask)
        got = metric(x2, y2, mask=mask)
        assert same(got, expected), name


@SETTINGS
@given(fields(2), st.floats(0.01, 100))
def test_equal_weights_change_nothing(xy, c):
    assume(varied(xy[0]) and varied(xy[1]))  # correlations of constant fields are 0/0
    x, y = (torch.tensor(a) for a in xy)
    weights = torch.full(x.shape[-2:], c, dtype=torch.float64)
    for name, metric in WEIGHTED.items():
        assert same(metric(x, y, weights=weights), metric(x, y), rtol=1e-7), name
    lat = M.lat_rmse(x, y, weights=weights)
    assert same(lat, M.rmse(x, y), rtol=1e-7)
