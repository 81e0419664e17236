"""Pointwise metrics: errors, norms, correlation and image-quality scores.

Every function maps ``pred, target`` of shape ``(..., H, W)`` to ``(...)``: the last two
(spatial) dims are reduced, the leading ones (sample, lead time, variable) are kept.
References: PDEBench ``metric_func`` (RMSE, nRMSE, max error), The Well ``spatial.py``
(VRMSE), neuraloperator ``LpLoss`` (relative L2), scikit-image (SSIM, PSNR), xskillscore
(Pearson r).
"""

from __future__ import annotations

from typing import Any

import torch

from physforecast.registry import METRICS

from ._common import leading_dim, prepare, spatial_mean, spatial_sum, weight_sum

__all__ = [
    "mse",
    "rmse",
    "mae",
    "rel_l2",
    "nrmse",
    "vrmse",
    "max_error",
    "psnr",
    "ssim",
    "pearson",
]

Tensor = torch.Tensor


@METRICS.register("mse", kind="pointwise", higher_is_better=False)
def mse(
    pred: Tensor, target: Tensor, *, weights: Tensor | None = None, mask: Tensor | None = None
) -> Tensor:
    """Mean squared error ``sum w (p - t)^2 / sum w`` over space.

    Parameters
    ----------
    pred, target : torch.Tensor
        Fields of shape (..., H, W).
    weights : torch.Tensor, optional
        Area or latitude weights broadcastable to ``pred``.
    mask : torch.Tensor, optional
        Boolean, True = valid point.

    Returns
    -------
    torch.Tensor
        Shape (...).
    """
    p, t, w = prepare(pred, target, weights, mask, name="mse")
    return spatial_mean((p - t) ** 2, w)


@METRICS.register("rmse", kind="pointwise", higher_is_better=False)
def rmse(
    pred: Tensor, target: Tensor, *, weights: Tensor | None = None, mask: Tensor | None = None
) -> Tensor:
    """Root mean squared error over space, ``sqrt(mse)``: (..., H, W) -> (...).

    Identical to xskillscore's ``rmse(a, b, dim=[y, x], weights=w)`` per leading index,
    and to PDEBench's per-sample RMSE before its batch mean.
    """
    return torch.sqrt(mse(pred, target, weights=weights, mask=mask))


@METRICS.register("mae", kind="pointwise", higher_is_better=False)
def mae(
    pred: Tensor, target: Tensor, *, weights: Tensor | None = None, mask: Tensor | None = None
) -> Tensor:
    """Mean absolute error ``sum w |p - t| / sum w``: (..., H, W) -> (...)."""
    p, t, w = prepare(pred, target, weights, mask, name="mae")
    return spatial_mean((p - t).abs(), w)


@METRICS.register("rel_l2", kind="pointwise", higher_is_better=False)
def rel_l2(
    pred: Tensor, target: Tensor, *, weights: Tensor | None = None, mask: Tensor | None = None
) -> Tensor:
    """Relative L2 error ``||p - t|| / ||t||`` (neuraloperator's ``LpLoss.rel``, p=2).

    The norms are weighted sums over space (quadrature with ``weights``):
    ``sqrt(sum w (p - t)^2 / sum w t^2)``. (..., H, W) -> (...); NaN where ``t`` is zero.
    """
    p, t, w = prepare(pred, target, weights, mask, name="rel_l2")
    return torch.sqrt(spatial_sum((p - t) ** 2, w) / spatial_sum(t**2, w))


@METRICS.register("nrmse", kind="pointwise", higher_is_better=False)
def nrmse(
    pred: Tensor, target: Tensor, *, weights: Tensor | None = None, mask: Tensor | None = None
) -> Tensor:
    """PDEBench nRMSE, ``sqrt(mean (p - t)^2) / sqrt(mean t^2)`` per field and time.

    Equal to :func:`rel_l2` (the grid-size factors cancel); kept under PDEBench's name.
    PDEBench then averages this ratio over the batch, which the scorecard does too.
    """
    p, t, w = prepare(pred, target, weights, mask, name="nrmse")
    return torch.sqrt(spatial_mean((p - t) ** 2, w)) / torch.sqrt(spatial_mean(t**2, w))


def _weighted_variance(t: Tensor, w: Tensor | None) -> Tensor:
    """Unbiased (reliability-weighted) spatial variance of ``t``: (..., H, W) -> (...).

    With equal weights this is ``torch.var(correction=1)`` over the grid, as The Well's
    ``torch.std(y) ** 2``.
    """
    mean = spatial_mean(t, w)
    m2 = spatial_mean((t - mean[..., None, None]) ** 2, w)
    if w is None:
        n = t.shape[-2] * t.shape[-1]
        return m2 * n / (n - 1)
    v1 = weight_sum(t, w)
    v2 = weight_sum(t, w**2)
    return m2 * v1**2 / (v1**2 - v2)


@METRICS.register("vrmse", kind="pointwise", higher_is_better=False)
def vrmse(
    pred: Tensor,
    target: Tensor,
    *,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    eps: float = 1e-7,
) -> Tensor:
    """The Well's variance-scaled RMSE ``sqrt(mse / (var(t) + eps))``.

    ``var`` is the unbiased spatial variance of the target (``torch.std(t)**2`` in The
    Well), ``eps = 1e-7``. Predicting the target's spatial mean scores about 1.
    (..., H, W) -> (...).
    """
    p, t, w = prepare(pred, target, weights, mask, name="vrmse")
    return torch.sqrt(spatial_mean((p - t) ** 2, w) / (_weighted_variance(t, w) + eps))


@METRICS.register("max_error", kind="pointwise", higher_is_better=False, reduces_samples=True)
def max_error(
    pred: Tensor,
    target: Tensor,
    *,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    sample_dim: int | None = None,
) -> Tensor:
    """Largest absolute error ``max |p - t|`` over space (PDEBench's ``err_Max``).

    Parameters
    ----------
    pred, target : torch.Tensor
        Fields of shape (..., H, W).
    weights : None
        Not used by a maximum; passing weights raises.
    mask : torch.Tensor, optional
        Boolean, True = valid point.
    sample_dim : int, optional
        Also take the maximum over this leading dim, as PDEBench does over its batch.

    Returns
    -------
    torch.Tensor
        Shape (...), without ``sample_dim`` when it is given. NaN where no point is valid.
    """
    out = _max_error_partial(pred, target, weights=weights, mask=mask)
    if sample_dim is not None:
        out = out.amax(leading_dim(sample_dim, pred.ndim, "max_error"))
    return out


def _max_error_partial(
    pred: Tensor,
    target: Tensor,
    *,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    **_: Any,
) -> Tensor:
    """The largest error of each forecast (...): what :func:`max_error` maximizes over."""
    p, t, w = prepare(pred, target, weights, mask, name="max_error", weighted=False)
    err = (p - t).abs()
    out = err.amax((-2, -1))
    if w is not None:
        out = torch.where(weight_sum(err, w) > 0, out, torch.full_like(out, float("nan")))
    return out


def _max_error_combine(stats: Tensor, **_: Any) -> Tensor:
    return stats.amax(0)


METRICS.entry("max_error").meta.update(partial=_max_error_partial, combine=_max_error_combine)


def _frame_range(t: Tensor, mask: Tensor | None) -> Tensor:
    """max - min of each frame over its valid points: (..., H, W) -> (...)."""
    if mask is None:
        return t.amax((-2, -1)) - t.amin((-2, -1))
    mask = torch.broadcast_to(mask, t.shape)
    hi = torch.where(mask, t, torch.full_like(t, -float("inf"))).amax((-2, -1))
    lo = torch.where(mask, t, torch.full_like(t, float("inf"))).amin((-2, -1))
    return hi - lo


@METRICS.register("psnr", kind="pointwise", higher_is_better=True)
def psnr(
    pred: Tensor,
    target: Tensor,
    *,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    data_range: float | Tensor | None = None,
) -> Tensor:
    """Peak signal-to-noise ratio ``10 log10(R^2 / mse)`` in dB, as scikit-image.

    ``R`` is ``data_range``; by default the range (max - min) of each target frame.
    OpenSTL's ``20 log10(1 / sqrt(mse))`` is the case ``data_range=1`` on [0, 1] data.
    (..., H, W) -> (...); +inf where the prediction is exact.
    """
    p, t, w = prepare(pred, target, weights, mask, name="psnr")
    r = _frame_range(t, mask) if data_range is None else torch.as_tensor(data_range, dtype=p.dtype)
    return 10 * torch.log10(r**2 / spatial_mean((p - t) ** 2, w))


def _reflect_index(n: int, r: int, device: torch.device) -> Tensor:
    """Indices padding ``n`` points by ``r`` on each side, mirrored about the edge
    (scipy.ndimage ``mode='reflect'``: d c b a | a b c d | d c b a)."""
    i = torch.arange(-r, n + r, device=device) % (2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def _filter_matrix(n: int, k: Tensor) -> Tensor:
    """The (n, n) matrix of correlating with ``k`` under mirror padding (folded into it)."""
    r = (k.numel() - 1) // 2
    padded = _reflect_index(n, r, k.device)
    rows = torch.arange(n)[:, None].expand(n, 2 * r + 1)
    cols = padded[torch.arange(n)[:, None] + torch.arange(2 * r + 1)[None, :]]
    m = torch.zeros(n, n, dtype=k.dtype)
    return m.index_put_((rows, cols), k.expand(n, 2 * r + 1), accumulate=True)


def _gaussian_filter(x: Tensor, sigma: float, truncate: float) -> Tensor:
    """Separable Gaussian filter of every (H, W) frame, as ``scipy.ndimage.gaussian_filter``.

    Each axis is one matrix product with the banded filter matrix (mirror padding folded
    in), which BLAS runs much faster on CPU than an 11-tap single-channel convolution.
    """
    r = int(truncate * sigma + 0.5)
    taps = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (taps / sigma) ** 2)
    k = k / k.sum()
    h, w = x.shape[-2:]
    gh = _filter_matrix(h, k).to(dtype=x.dtype, device=x.device)
    gw = _filter_matrix(w, k).to(dtype=x.dtype, device=x.device)
    return gh @ x @ gw.T


@METRICS.register("ssim", kind="pointwise", higher_is_better=True)
def ssim(
    pred: Tensor,
    target: Tensor,
    *,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    data_range: float | Tensor | None = None,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    sample_covariance: bool = True,
) -> Tensor:
    """Structural similarity with a Gaussian window, as scikit-image.

    Matches ``skimage.metrics.structural_similarity(t, p, gaussian_weights=True,
    sigma=1.5, data_range=R)`` per frame: local means and (co)variances from a Gaussian
    filter (truncated at 3.5 sigma, mirror-reflected edges), the covariances scaled by
    ``n / (n - 1)`` with ``n`` the window area when ``sample_covariance`` (scikit-image's
    default; pass False for Wang et al. 2004), and the SSIM map averaged after cropping
    the window radius from every edge.

    Parameters
    ----------
    pred, target : torch.Tensor
        Frames of shape (..., H, W) with H, W at least the window size (11 by default).
    weights : torch.Tensor, optional
        Weights for the average of the cropped SSIM map.
    mask : torch.Tensor, optional
        Boolean, True = valid. Invalid points are zero in both images before filtering,
        and left out of the average.
    data_range : float or torch.Tensor, optional
        Dynamic range ``R`` (``C1 = (k1 R)^2``, ``C2 = (k2 R)^2``); by default the range of
        each target frame.
    sigma, k1, k2 : float
        Window width and the stabilising constants.
    sample_covariance : bool
        Scale the covariances by ``n / (n - 1)``.

    Returns
    -------
    torch.Tensor
        Shape (...); 1 for identical frames.
    """
    p, t, w = prepare(pred, target, weights, mask, name="ssim")
    truncate = 3.5
    radius = int(truncate * sigma + 0.5)
    win = 2 * radius + 1
    h, wd = p.shape[-2:]
    if h < win or wd < win:
        raise ValueError(f"ssim: frames of {h}x{wd} are smaller than the {win}x{win} window")
    r = _frame_range(t, mask) if data_range is None else torch.as_tensor(data_range, dtype=p.dtype)
    r = r.to(p.device)[..., None, None] if r.ndim else r.to(p.device)
    cov_norm = win * win / (win * win - 1) if sample_covariance else 1.0
    stacked = torch.stack([p, t, p * p, t * t, p * t])
    up, ut, upp, utt, upt = _gaussian_filter(stacked, sigma, truncate)
    vp = cov_norm * (upp - up * up)
    vt = cov_norm * (utt - ut * ut)
    vpt = cov_norm * (upt - up * ut)
    c1 = (k1 * r) ** 2
    c2 = (k2 * r) ** 2
    s = (2 * up * ut + c1) * (2 * vpt + c2) / ((up**2 + ut**2 + c1) * (vp + vt + c2))
    crop = (..., slice(radius, h - radius), slice(radius, wd - radius))
    if w is not None:
        w = torch.broadcast_to(w, torch.broadcast_shapes(w.shape, s.shape))[crop]
    return spatial_mean(s[crop], w)


@METRICS.register("pearson", kind="pointwise", higher_is_better=True)
def pearson(
    pred: Tensor, target: Tensor, *, weights: Tensor | None = None, mask: Tensor | None = None
) -> Tensor:
    """Pearson correlation over space, weighted as xskillscore's ``pearson_r``.

    ``sum w p' t' / sqrt(sum w p'^2 sum w t'^2)`` with ``p' = p - mean_w p``.
    (..., H, W) -> (...); NaN for a constant field.
    """
    p, t, w = prepare(pred, target, weights, mask, name="pearson")
    pa = p - spatial_mean(p, w)[..., None, None]
    ta = t - spatial_mean(t, w)[..., None, None]
    num = spatial_sum(pa * ta, w)
    return num / torch.sqrt(spatial_sum(pa * pa, w) * spatial_sum(ta * ta, w))
