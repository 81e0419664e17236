"""Spectral metrics: radially averaged power spectra and errors by wavenumber band.

All functions take fields of shape ``(..., H, W)`` on a uniform grid and reduce the last two
dims. Masked points are set to zero before the FFT (in both fields, so they add no error);
weights have no meaning for a Fourier transform and raise. FFTs run in at least float32.

References: PDEBench ``metric_func`` (fRMSE bands), The Well ``spectral.py``
(``binned_spectral_mse``), Earth2Studio ``log_spectral_distance`` (with physicsnemo's
``power_spectrum`` bins).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from physforecast.registry import METRICS

from ._common import as_float, check_mask, leading_dim, prepare

__all__ = [
    "power_spectrum",
    "frmse",
    "spectral_mse",
    "spectral_nmse",
    "lsd",
    "FRMSE_BANDS",
]

Tensor = torch.Tensor

#: PDEBench's fRMSE bands over the radial index k: low k < 4, mid 4 <= k < 12, high k >= 12.
FRMSE_BANDS = {"low": (0, 4), "mid": (4, 12), "high": (12, None)}
_BAND_VARIANTS = {name: {"band": name} for name in FRMSE_BANDS}
_BIN_NAMES = ("low", "mid", "high")
_BIN_VARIANTS = {name: {"bin": i} for i, name in enumerate(_BIN_NAMES)}


def _integer_wavenumbers(h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Integer wavenumbers (cycles per domain) of the FFT layout: ky (H, 1), kx (1, W)."""
    ky = torch.fft.fftfreq(h, d=1.0 / h, dtype=torch.float64, device=device)
    kx = torch.fft.fftfreq(w, d=1.0 / w, dtype=torch.float64, device=device)
    return ky[:, None], kx[None, :]


def _bin_sum(values: Tensor, index: Tensor, n_bins: int) -> Tensor:
    """Sum ``values`` (..., H, W) into ``n_bins`` bins given by ``index`` (H, W), -1 = drop.

    Returns (..., n_bins).
    """
    keep = (index >= 0) & (index < n_bins)
    onehot = torch.zeros(index.numel(), n_bins, dtype=values.dtype, device=values.device)
    flat = index.reshape(-1)
    rows = torch.nonzero(keep.reshape(-1)).squeeze(-1)
    onehot[rows, flat[rows]] = 1.0
    return values.reshape(*values.shape[:-2], -1) @ onehot


def power_spectrum(x: Tensor, *, mask: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """Radially averaged power spectrum of each (H, W) frame.

    The power ``|FFT(x) / (H W)|^2`` of every Fourier mode is collected into integer shells
    ``k = round(sqrt(kx^2 + ky^2))``, with ``kx, ky`` in cycles per domain, for
    ``k = 0 .. min(H, W) // 2`` (the shells inside the Nyquist circle; corner modes are
    left out). A single Fourier mode ``cos(2 pi (a x + b y))`` puts all its power in the
    shell ``round(sqrt(a^2 + b^2))``.

    Parameters
    ----------
    x : torch.Tensor
        Fields of shape (..., H, W).
    mask : torch.Tensor, optional
        Boolean, True = valid; invalid points are set to zero first.
    reduction : {"mean", "sum"}
        Average the power over each shell (the azimuthal average, as TF-Net's energy
        spectrum) or sum it (an energy spectrum E(k) whose total is ``mean(x^2)``).

    Returns
    -------
    torch.Tensor
        Shape (..., K) with ``K = min(H, W) // 2 + 1``; entry ``k`` is shell ``k``.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    x = as_float(x, "power_spectrum: x")
    if x.ndim < 2:
        raise ValueError(f"power_spectrum: expected (..., H, W), got shape {tuple(x.shape)}")
    mask = check_mask(mask, x.shape, "power_spectrum")
    if mask is not None:
        x = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
    h, w = x.shape[-2:]
    ky, kx = _integer_wavenumbers(h, w, x.device)
    shell = torch.round(torch.sqrt(ky**2 + kx**2)).long()
    n_shells = min(h, w) // 2 + 1
    power = torch.fft.fft2(x).abs() ** 2 / float(h * w) ** 2
    total = _bin_sum(power, shell, n_shells)
    if reduction == "sum":
        return total
    counts = _bin_sum(torch.ones((h, w), dtype=x.dtype, device=x.device), shell, n_shells)
    return total / counts


def _pdebench_shells(h: int, w: int, device: torch.device) -> tuple[Tensor, int]:
    """PDEBench's shell index ``floor(sqrt(i^2 + j^2))`` on the quadrant i < H/2, j < W/2."""
    n = min(h // 2, w // 2)
    i = torch.arange(h, device=device)[:, None]
    j = torch.arange(w, device=device)[None, :]
    shell = torch.floor(torch.sqrt((i**2 + j**2).double())).long()
    inside = (i < h // 2) & (j < w // 2) & (shell <= n - 1)
    return torch.where(inside, shell, torch.full_like(shell, -1)), n


@METRICS.register(
    "frmse",
    kind="spectral",
    higher_is_better=False,
    weighted=False,
    reduces_samples=True,
    variants=_BAND_VARIANTS,
    outputs=tuple(FRMSE_BANDS),
)
def frmse(
    pred: Tensor,
    target: Tensor,
    *,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    band: str | None = None,
    dx: float | None = None,
    dy: float | None = None,
    sample_dim: int | None = None,
) -> Tensor:
    """PDEBench's Fourier-space RMSE in low, mid and high wavenumber bands.

    ``|FFT(p) - FFT(t)|^2`` (unnormalised FFT) is summed into shells
    ``k = floor(sqrt(i^2 + j^2))`` over the quadrant ``i < H/2, j < W/2`` of non-negative
    frequencies, ``k < min(H, W) // 2``. Per shell: ``sqrt(E_k) * Lx Ly / (H W)`` (with
    ``sample_dim``, ``sqrt(mean_samples E_k)`` as PDEBench's batch mean inside the root),
    then averaged over the shells of each band: low ``k < 4``, mid ``4 <= k < 12``, high
    ``k >= 12``. A band with no shell (H or W < 26 for the high band) is NaN.

    Parameters
    ----------
    pred, target : torch.Tensor
        Fields of shape (..., H, W).
    weights : None
        Not supported (uniform grid).
    mask : torch.Tensor, optional
        Boolean, True = valid; the error is zero at invalid points.
    band : {"low", "mid", "high"}, optional
        One band; all three stacked on a last dim when omitted.
    dx, dy : float, optional
        Grid spacings; the domain lengths are ``Lx = W dx``, ``Ly = H dy`` (1 by default,
        as PDEBench's ``Lx = Ly = 1``).
    sample_dim : int, optional
        A leading dim averaged inside the square root, as PDEBench's batch.

    Returns
    -------
    torch.Tensor
        Shape (...) for one band, (..., 3) for all; without ``sample_dim`` when given.
    """
    if band is not None and band not in FRMSE_BANDS:
        raise ValueError(f"frmse: band must be one of {list(FRMSE_BANDS)}, got {band!r}")
    p, t, _ = prepare(pred, target, weights, mask, name="frmse", weighted=False)
    h, w = p.shape[-2:]
    shell, n = _pdebench_shells(h, w, p.device)
    err = torch.fft.fft2(p - t).abs() ** 2  # = |FFT(p) - FFT(t)|^2, one FFT
    per_shell = _bin_sum(err, shell, n)
    if sample_dim is not None:
        per_shell = per_shell.mean(leading_dim(sample_dim, p.ndim, "frmse"))
    return _frmse_bands(per_shell, (h, w), band, dx, dy)


def _frmse_bands(
    per_shell: Tensor, grid: tuple[int, int], band: str | None, dx: float | None, dy: float | None
) -> Tensor:
    """Mean squared shell errors (..., n) -> the band RMSEs of :func:`frmse`."""
    h, w = grid
    lx = 1.0 if dx is None else w * float(dx)
    ly = 1.0 if dy is None else h * float(dy)
    per_shell = torch.sqrt(per_shell) / (h * w) * lx * ly
    names = [band] if band is not None else list(FRMSE_BANDS)
    out = [per_shell[..., slice(*FRMSE_BANDS[b])].mean(-1) for b in names]
    return out[0] if band is not None else torch.stack(out, -1)


def _frmse_partial(
    pred: Tensor,
    target: Tensor,
    *,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    **_: Any,
) -> Tensor:
    """Per-sample squared shell errors (S, ..., n): what :func:`frmse` averages over samples."""
    p, t, _w = prepare(pred, target, weights, mask, name="frmse", weighted=False)
    shell, n = _pdebench_shells(*p.shape[-2:], p.device)
    return _bin_sum(torch.fft.fft2(p - t).abs() ** 2, shell, n)


def _frmse_combine(
    stats: Tensor,
    *,
    grid: tuple[int, int],
    band: str | None = None,
    dx: float | None = None,
    dy: float | None = None,
    **_: Any,
) -> Tensor:
    """:func:`frmse` over all samples from the concatenated :func:`_frmse_partial` values."""
    return _frmse_bands(stats.mean(0), grid, band, dx, dy)


METRICS.entry("frmse").meta.update(partial=_frmse_partial, combine=_frmse_combine)


def _well_bins(h: int, w: int, device: torch.device) -> Tensor:
    """The Well's default bin index of every FFT mode: 3 log-spaced bins, (H, W) in 0..2.

    Edges ``logspace(log10(2 pi / max(H, W)), log10(pi sqrt(2) + 1e-6), 4)`` with the first
    set to 0, against the isotropic wavenumber in radians per grid step. Both are formed in
    float32 as The Well does, so modes lying exactly on an edge fall the same way.
    """
    edges = torch.logspace(
        np.log10(2 * np.pi / max(h, w)), np.log10(np.pi * np.sqrt(2) + 1e-6), 4
    ).to(torch.float32)
    edges[0] = 0.0
    ky = (2 * np.pi * torch.fft.fftfreq(h, d=1.0)).to(torch.float32)
    kx = (2 * np.pi * torch.fft.fftfreq(w, d=1.0)).to(torch.float32)
    wn = torch.zeros((h, w), dtype=torch.float32)
    wn = wn + ky[:, None] ** 2
    wn = wn + kx[None, :] ** 2
    wn = torch.sqrt(wn)
    index = torch.bucketize(wn, edges, right=True) - 1
    return index.to(device)


def _binned_power(x: Tensor, bins: Tensor) -> Tensor:
    """``sum_{bin} |FFT(x)|^2 / (H W)^2``: the part of ``mean(x^2)`` in each bin, (..., 3)."""
    h, w = x.shape[-2:]
    return _bin_sum(torch.fft.fft2(x).abs() ** 2, bins, 3) / float(h * w) ** 2


@METRICS.register(
    "spectral_mse",
    kind="spectral",
    higher_is_better=False,
    weighted=False,
    variants=_BIN_VARIANTS,
    outputs=_BIN_NAMES,
)
def spectral_mse(
    pred: Tensor,
    target: Tensor,
    *,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    bin: int | None = None,
) -> Tensor:
    """The Well's ``binned_spectral_mse``: the MSE carried by each of 3 wavenumber bins.

    The residual's power ``|FFT(p - t)|^2`` is summed over the modes of each bin (low, mid,
    high; see :func:`_well_bins`) and divided by ``(H W)^2``; by Parseval the three bins add
    up to the MSE. The Well computes the bin mean times the count, the same number.

    Parameters
    ----------
    pred, target : torch.Tensor
        Fields of shape (..., H, W).
    weights : None
        Not supported (uniform grid).
    mask : torch.Tensor, optional
        Boolean, True = valid; the error is zero at invalid points.
    bin : {0, 1, 2}, optional
        One bin; all three stacked on a last dim when omitted.

    Returns
    -------
    torch.Tensor
        Shape (...) for one bin, (..., 3) for all.
    """
    p, t, _ = prepare(pred, target, weights, mask, name="spectral_mse", weighted=False)
    out = _binned_power(p - t, _well_bins(*p.shape[-2:], p.device))
    return _pick_bin(out, bin, "spectral_mse")


def _pick_bin(out: Tensor, bin: int | None, name: str) -> Tensor:
    if bin is None:
        return out
    if bin not in (0, 1, 2):
        raise ValueError(f"{name}: bin must be 0, 1 or 2, got {bin!r}")
    return out[..., bin]


@METRICS.register(
    "spectral_nmse",
    kind="spectral",
    higher_is_better=False,
    weighted=False,
    variants=_BIN_VARIANTS,
    outputs=_BIN_NAMES,
)
def spectral_nmse(
    pred: Tensor,
    target: Tensor,
    *,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    bin: int | None = None,
    eps: float = 1e-7,
) -> Tensor:
    """The Well's normalised binned spectral error: :func:`spectral_mse` divided by the
    target's energy in the same bin plus ``eps = 1e-7``. Shapes as :func:`spectral_mse`."""
    p, t, _ = prepare(pred, target, weights, mask, name="spectral_nmse", weighted=False)
    bins = _well_bins(*p.shape[-2:], p.device)
    out = _binned_power(p - t, bins) / (_binned_power(t, bins) + eps)
    return _pick_bin(out, bin, "spectral_nmse")


def _physicsnemo_spectrum(x: Tensor) -> Tensor:
    """physicsnemo's azimuthally averaged power (ortho FFT) in ``min(H, W)//2 - 1`` linear
    bins of the radius ``|k|`` from 0 to ``max|k| + 1``: (..., H, W) -> (..., n_bins)."""
    h, w = x.shape[-2:]
    n_bins = min(h // 2, w // 2) - 1
    if n_bins < 1:
        raise ValueError(f"lsd: a {h}x{w} grid is too small for a radial spectrum")
    ky, kx = _integer_wavenumbers(h, w, x.device)
    radius = torch.sqrt(ky**2 + kx**2).to(torch.float32)
    index = torch.floor(radius * n_bins / (radius.max() + 1)).long()
    power = torch.fft.fft2(x, norm="ortho").abs() ** 2
    counts = _bin_sum(torch.ones((h, w), dtype=x.dtype, device=x.device), index, n_bins)
    return _bin_sum(power, index, n_bins) / counts


@METRICS.register("lsd", kind="spectral", higher_is_better=False, weighted=False)
def lsd(
    pred: Tensor, target: Tensor, *, weights: Tensor | None = None, mask: Tensor | None = None
) -> Tensor:
    """Log spectral distance in dB, as Earth2Studio: ``10 sqrt(mean_k log10(P_p / P_t)^2)``.

    ``P`` is physicsnemo's radially averaged power spectrum (see
    :func:`_physicsnemo_spectrum`); the mean runs over its bins. Scale-aware: a field
    with twice the amplitude scores ``20 log10(2) ~ 6 dB``. (..., H, W) -> (...).

    A bin where one field has no power at all (a smooth or constant forecast, a short
    lead of a field with few scales) would make the ratio 0 or infinite and the distance
    infinite; both spectra are floored at ``1e-12`` of their mean power per bin (-120 dB)
    first, so such a bin counts as a large but finite distance, and a bin empty in both
    counts as 0 dB.
    """
    p, t, _ = prepare(pred, target, weights, mask, name="lsd", weighted=False)
    sp, st = _physicsnemo_spectrum(p), _physicsnemo_spectrum(t)
    tiny = torch.finfo(sp.dtype).tiny
    floor = 1e-12 * (sp.mean(-1, keepdim=True) + st.mean(-1, keepdim=True)) + tiny
    ratio = (sp + floor) / (st + floor)
    return 10 * torch.sqrt((torch.log10(ratio) ** 2).mean(-1))
