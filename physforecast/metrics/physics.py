"""Physics metrics of velocity fields, turbulence statistics and conserved quantities.

Layouts follow the package's ``(B, T, C, H, W)``: a velocity field is ``(..., 2, H, W)``
with ``(u, v)`` on dim -3 (``u`` along x = the last dim, ``v`` along y = dim -2), and a
velocity history is ``(..., T, 2, H, W)``. Derivatives are second-order finite differences:
central inside, second-order one-sided at non-periodic edges (TF-Net's ``field_grad``),
wrapped on periodic grids.

References: TF-Net ``penalty.py`` (divergence, vorticity, TKE and its spectrum), PDEBench
``metric_func`` (``err_BD`` boundary RMSE, ``err_CSV`` conserved-quantity RMSE).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from physforecast.registry import METRICS

from ._common import (
    as_float,
    fd_derivative,
    leading_dim,
    prepare,
    prepare_field,
    spatial_mean,
    spatial_sum,
    weight_sum,
)
from .spectral import power_spectrum

__all__ = [
    "divergence",
    "vorticity",
    "divergence_rms",
    "vorticity_rmse",
    "tke",
    "tke_spectrum",
    "tke_mse",
    "tke_spectrum_mse",
    "conservation_drift",
    "crmse",
    "brmse",
    "VELOCITY_FIELDS",
]

Tensor = torch.Tensor

#: Candidate variable names of the two velocity components, for the scorecard.
VELOCITY_FIELDS = (("u", "velocity_x", "vx", "ux"), ("v", "velocity_y", "vy", "uy"))


def divergence(
    u: Tensor, v: Tensor, *, dx: float = 1.0, dy: float = 1.0, periodic: bool = False
) -> Tensor:
    """Divergence ``du/dx + dv/dy`` of a velocity field.

    Parameters
    ----------
    u, v : torch.Tensor
        Velocity components, shape (..., H, W); x runs along W, y along H.
    dx, dy : float
        Grid spacings.
    periodic : bool
        Wrap the central differences around the edges.

    Returns
    -------
    torch.Tensor
        Shape (..., H, W).
    """
    u, v = as_float(u, "divergence: u"), as_float(v, "divergence: v")
    return fd_derivative(u, dx, -1, periodic) + fd_derivative(v, dy, -2, periodic)


def vorticity(
    u: Tensor, v: Tensor, *, dx: float = 1.0, dy: float = 1.0, periodic: bool = False
) -> Tensor:
    """Vorticity ``dv/dx - du/dy`` of a velocity field, (..., H, W) -> (..., H, W).

    Parameters as :func:`divergence`.
    """
    u, v = as_float(u, "vorticity: u"), as_float(v, "vorticity: v")
    return fd_derivative(v, dx, -1, periodic) - fd_derivative(u, dy, -2, periodic)


def _velocity(x: Tensor, name: str) -> tuple[Tensor, Tensor]:
    if x.ndim < 3 or x.shape[-3] != 2:
        raise ValueError(
            f"{name}: expected a velocity field (..., 2, H, W) with (u, v) on dim -3, "
            f"got shape {tuple(x.shape)}"
        )
    return x[..., 0, :, :], x[..., 1, :, :]


def _component_mask(mask: Tensor | None, shape: torch.Size, dims: tuple[int, ...]) -> Tensor | None:
    """A point is valid when it is valid in every component/frame along ``dims``."""
    return None if mask is None else torch.broadcast_to(mask, shape).all(dim=dims)


@METRICS.register(
    "divergence",
    kind="physics",
    higher_is_better=False,
    fields=VELOCITY_FIELDS,
    label="velocity",
    reference_free=True,
)
def divergence_rms(
    pred: Tensor,
    target: Tensor | None = None,
    *,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    dx: float = 1.0,
    dy: float = 1.0,
    periodic: bool = False,
) -> Tensor:
    """RMS divergence of a predicted velocity field (0 for incompressible flow).

    Parameters
    ----------
    pred : torch.Tensor
        Velocity (..., 2, H, W).
    target : torch.Tensor, optional
        Unused: the score needs no reference.
    weights, mask : torch.Tensor, optional
        Weights (..., H, W) and validity (..., 2, H, W) or broadcastable.
    dx, dy, periodic
        Grid spacings and boundary, as :func:`divergence`.

    Returns
    -------
    torch.Tensor
        Shape (...).
    """
    x, _ = prepare_field(pred, None, mask, name="divergence", min_ndim=3)
    u, v = _velocity(x, "divergence")
    m = _component_mask(mask, x.shape, (-3,))
    _, w = prepare_field(u, weights, m, name="divergence")
    return torch.sqrt(spatial_mean(divergence(u, v, dx=dx, dy=dy, periodic=periodic) ** 2, w))


@METRICS.register(
    "vorticity_rmse",
    kind="physics",
    higher_is_better=False,
    fields=VELOCITY_FIELDS,
    label="velocity",
)
def vorticity_rmse(
    pred: Tensor,
    target: Tensor,
    *,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    dx: float = 1.0,
    dy: float = 1.0,
    periodic: bool = False,
) -> Tensor:
    """RMSE between the vorticities of predicted and true velocity fields (TF-Net's
    ``VorticityLoss`` as a root mean). (..., 2, H, W) -> (...)."""
    p, t, _ = prepare(pred, target, None, mask, name="vorticity_rmse", min_ndim=3)
    up, vp = _velocity(p, "vorticity_rmse")
    ut, vt = _velocity(t, "vorticity_rmse")
    m = _component_mask(mask, p.shape, (-3,))
    _, w = prepare_field(up, weights, m, name="vorticity_rmse")
    err = vorticity(up, vp, dx=dx, dy=dy, periodic=periodic) - vorticity(
        ut, vt, dx=dx, dy=dy, periodic=periodic
    )
    return torch.sqrt(spatial_mean(err**2, w))


def tke(x: Tensor) -> Tensor:
    """Turbulent kinetic energy over a time window, as TF-Net.

    ``TKE = (<u'^2>_t + <v'^2>_t) / 2`` with ``u' = u - <u>_t`` the fluctuation about the
    time mean of the window (population variance over time).

    Parameters
    ----------
    x : torch.Tensor
        Velocity history (..., T, 2, H, W).

    Returns
    -------
    torch.Tensor
        Shape (..., H, W).
    """
    x = as_float(x, "tke: x")
    if x.ndim < 4 or x.shape[-3] != 2:
        raise ValueError(
            f"tke: expected a velocity history (..., T, 2, H, W), got {tuple(x.shape)}"
        )
    fluct = x - x.mean(-4, keepdim=True)
    return 0.5 * (fluct**2).mean(-4).sum(-3)


def tke_spectrum(x: Tensor) -> Tensor:
    """Radially averaged power spectrum of the TKE field (TF-Net's energy spectrum).

    TF-Net averages ``|fftshift(FFT2(TKE))|^2`` over rings around ``(N - 1) / 2``; here
    the rings are integer shells around the zero frequency and the FFT is divided by
    ``H W`` (see :func:`~physforecast.metrics.spectral.power_spectrum`).
    (..., T, 2, H, W) -> (..., K).
    """
    return power_spectrum(tke(x))


def _window_mask(mask: Tensor | None, shape: torch.Size) -> Tensor | None:
    """Validity of a (..., H, W) statistic of a (..., T, 2, H, W) window."""
    return _component_mask(mask, shape, (-4, -3))


@METRICS.register(
    "tke_mse",
    kind="physics",
    higher_is_better=False,
    fields=VELOCITY_FIELDS,
    label="velocity",
    window=True,
)
def tke_mse(
    pred: Tensor, target: Tensor, *, weights: Tensor | None = None, mask: Tensor | None = None
) -> Tensor:
    """MSE between predicted and true TKE fields over the window (TF-Net's ``TKELoss``).

    (..., T, 2, H, W) -> (...): the time dim is consumed by the TKE.
    """
    p, t, _ = prepare(pred, target, None, mask, name="tke_mse", min_ndim=4)
    err = tke(p) - tke(t)
    _, w = prepare_field(err, weights, _window_mask(mask, p.shape), name="tke_mse")
    return spatial_mean(err**2, w)


@METRICS.register(
    "tke_spectrum_mse",
    kind="physics",
    higher_is_better=False,
    weighted=False,
    fields=VELOCITY_FIELDS,
    label="velocity",
    window=True,
)
def tke_spectrum_mse(
    pred: Tensor, target: Tensor, *, weights: Tensor | None = None, mask: Tensor | None = None
) -> Tensor:
    """MSE between the TKE spectra of prediction and truth, averaged over the shells
    (TF-Net's ``SpectrumLoss``). (..., T, 2, H, W) -> (...)."""
    p, t, _ = prepare(pred, target, weights, mask, name="tke_spectrum_mse", weighted=False)
    return ((tke_spectrum(p) - tke_spectrum(t)) ** 2).mean(-1)


_QUANTITIES = {"mass": lambda x: x, "energy": lambda x: 0.5 * x**2}


def conservation_drift(
    pred: Tensor,
    target: Tensor | None = None,
    *,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    quantity: str = "mass",
) -> Tensor:
    """Drift of a conserved quantity over lead time, beyond the true change.

    With ``Q(x)_tau = mean_w q(x_tau)`` the domain mean of ``q = x`` (mass) or
    ``q = x^2 / 2`` (energy) at lead ``tau``, the drift is
    ``|(Q(p)_tau - Q(p)_0) - (Q(t)_tau - Q(t)_0)|``: the forecast's change since its first
    lead minus the true change (zero for an exactly conserved quantity). Without ``target``
    it is the forecast's own change ``|Q(p)_tau - Q(p)_0|``.

    Parameters
    ----------
    pred : torch.Tensor
        Forecast (..., T, H, W).
    target : torch.Tensor, optional
        Truth, same shape.
    weights, mask : torch.Tensor, optional
        Area weights and validity, broadcastable to ``pred``.
    quantity : {"mass", "energy"}
        The conserved quantity.

    Returns
    -------
    torch.Tensor
        Shape (..., T); 0 at the first lead.
    """
    if quantity not in _QUANTITIES:
        raise ValueError(f"conservation_drift: quantity must be one of {list(_QUANTITIES)}")
    q = _QUANTITIES[quantity]
    if target is None:
        p, w = prepare_field(pred, weights, mask, name="conservation_drift", min_ndim=3)
        change = spatial_mean(q(p), w)
    else:
        p, t, w = prepare(pred, target, weights, mask, name="conservation_drift", min_ndim=3)
        change = spatial_mean(q(p), w) - spatial_mean(q(t), w)
    return (change - change[..., :1]).abs()


for _quantity in _QUANTITIES:
    METRICS.register(f"{_quantity}_drift", kind="physics", higher_is_better=False)(
        functools.partial(conservation_drift, quantity=_quantity)
    )


@METRICS.register("crmse", kind="physics", higher_is_better=False, reduces_samples=True)
def crmse(
    pred: Tensor,
    target: Tensor,
    *,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    sample_dim: int | None = None,
) -> Tensor:
    """PDEBench's conserved-quantity RMSE ``sqrt(mean_b (sum_S p - sum_S t)^2) / |S|``.

    Per sample this is ``|sum w (p - t)| / sum w`` (the error of the domain mean); with
    ``sample_dim`` the square, batch mean and root are taken over that dim as PDEBench.
    (..., H, W) -> (...), without ``sample_dim`` when given.
    """
    err = _crmse_partial(pred, target, weights=weights, mask=mask)
    if sample_dim is None:
        return err.abs()
    return torch.sqrt((err**2).mean(leading_dim(sample_dim, pred.ndim, "crmse")))


def _crmse_partial(
    pred: Tensor,
    target: Tensor,
    *,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    **_: Any,
) -> Tensor:
    """The signed error of each forecast's domain mean (...): what :func:`crmse` pools."""
    p, t, w = prepare(pred, target, weights, mask, name="crmse")
    return spatial_sum(p - t, w) / weight_sum(p, w)


def _crmse_combine(stats: Tensor, **_: Any) -> Tensor:
    return torch.sqrt((stats**2).mean(0))


METRICS.entry("crmse").meta.update(partial=_crmse_partial, combine=_crmse_combine)


@METRICS.register("brmse", kind="physics", higher_is_better=False, weighted=False)
def brmse(
    pred: Tensor, target: Tensor, *, weights: Tensor | None = None, mask: Tensor | None = None
) -> Tensor:
    """PDEBench's boundary RMSE over the first and last row and column.

    ``sqrt(sum_edges (p - t)^2 / (2 H + 2 W))``; as in PDEBench the four corners belong to
    both a row and a column and count twice. (..., H, W) -> (...).
    """
    p, t, _ = prepare(pred, target, weights, mask, name="brmse", weighted=False)
    h, w = p.shape[-2:]
    rows = torch.zeros((h, 1), dtype=p.dtype, device=p.device)
    rows[[0, -1]] = 1.0
    cols = torch.zeros((1, w), dtype=p.dtype, device=p.device)
    cols[:, [0, -1]] = 1.0
    edge = rows + cols  # 1 on edges, 2 at corners; the sum is 2H + 2W
    if mask is not None:
        edge = edge * mask.to(p.dtype)
    return torch.sqrt(spatial_sum((p - t) ** 2, edge) / weight_sum(p, edge))
