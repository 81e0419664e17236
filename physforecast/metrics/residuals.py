"""PDE residuals of forecasts: reference-free physics scores with the dataset's parameters.

Each function takes a forecast history ``(..., T, H, W)`` (or ``(..., T, C, H, W)`` for
systems of several fields), computes the residual of its equation at every frame, and
returns its RMS over space, ``(..., T)``. Time derivatives are central differences over the
saved frames (second-order one-sided at the first and last frame); space derivatives are
spectral on periodic grids and second-order finite differences otherwise. Physical
parameters are floats or tensors that broadcast to the leading dims ``(...)``, e.g. one
viscosity per sample.

A residual is never exactly zero for data saved every ``dt``: the time differences carry
an ``O(dt^2)`` truncation error. Compare a forecast's residual with the truth's.
"""

from __future__ import annotations

import math

import torch

from physforecast.registry import METRICS

from ._common import (
    fd_derivative,
    prepare_field,
    reshape_param,
    spatial_mean,
    time_derivative,
)

__all__ = [
    "ns_forcing",
    "ns_vorticity_residual",
    "advection_diffusion_residual",
    "shallow_water_continuity_residual",
    "VORTICITY_FIELDS",
    "SHALLOW_WATER_FIELDS",
]

Tensor = torch.Tensor

VORTICITY_FIELDS = (("vorticity", "omega", "w", "vort"),)
SHALLOW_WATER_FIELDS = (
    ("h", "height", "depth", "eta"),
    ("u", "velocity_x", "vx"),
    ("v", "velocity_y", "vy"),
)


def ns_forcing(
    h: int, w: int, *, dx: float, dy: float, dtype: torch.dtype = torch.float32
) -> Tensor:
    """The forcing of the ns2d system, ``0.1 (sin 2 pi (x + y) + cos 2 pi (x + y))``.

    On the grid ``x_j = j dx``, ``y_i = i dy``; shape (H, W) indexed (y, x).
    """
    y = torch.arange(h, dtype=torch.float64)[:, None] * dy
    x = torch.arange(w, dtype=torch.float64)[None, :] * dx
    phase = 2 * math.pi * (x + y)
    return (0.1 * (torch.sin(phase) + torch.cos(phase))).to(dtype)


class _Spectral:
    """Spectral derivatives of real periodic (..., H, W) fields with spacings (dy, dx).

    Real FFTs (half the work of complex ones). The Nyquist modes of an even grid are
    left out of first derivatives, where their sign is ambiguous.
    """

    def __init__(self, like: Tensor, dx: float, dy: float) -> None:
        h, w = like.shape[-2:]
        opts = {"dtype": like.dtype, "device": like.device}
        ky = 2 * math.pi * torch.fft.fftfreq(h, d=dy, **opts)
        kx = 2 * math.pi * torch.fft.rfftfreq(w, d=dx, **opts)
        self.shape = (h, w)
        self.k2 = ky[:, None] ** 2 + kx[None, :] ** 2
        if h % 2 == 0:
            ky[h // 2] = 0.0
        if w % 2 == 0:
            kx[-1] = 0.0
        self.ky, self.kx = ky[:, None], kx[None, :]

    def fft(self, f: Tensor) -> Tensor:
        return torch.fft.rfft2(f)

    def grad(self, f_hat: Tensor) -> tuple[Tensor, Tensor]:
        """(df/dx, df/dy) from the real FFT of f."""
        fx = torch.fft.irfft2(1j * self.kx * f_hat, s=self.shape)
        fy = torch.fft.irfft2(1j * self.ky * f_hat, s=self.shape)
        return fx, fy

    def laplacian(self, f_hat: Tensor) -> Tensor:
        return torch.fft.irfft2(-self.k2 * f_hat, s=self.shape)


def _field(pred: Tensor, weights, mask, name: str, n_fields: int = 0):
    min_ndim = 3 if n_fields == 0 else 4
    x, w = prepare_field(pred, weights, mask, name=name, min_ndim=min_ndim)
    if n_fields and x.shape[-3] != n_fields:
        raise ValueError(
            f"{name}: expected {n_fields} fields on dim -3 of (..., T, {n_fields}, H, W), "
            f"got shape {tuple(x.shape)}"
        )
    if n_fields and w is not None:
        w = torch.broadcast_to(w, x.shape).amin(-3)  # valid only where every field is
    return x, w


@METRICS.register(
    "ns_vorticity_residual",
    kind="physics",
    higher_is_better=False,
    fields=VORTICITY_FIELDS,
    reference_free=True,
)
def ns_vorticity_residual(
    pred: Tensor,
    target: Tensor | None = None,
    *,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    dx: float,
    dy: float,
    dt: float,
    nu: float | Tensor,
    forcing: str | float | Tensor = "ns2d",
    time_scheme: str = "central",
) -> Tensor:
    """RMS residual of the 2-D incompressible Navier-Stokes vorticity equation.

    ``r = d omega/dt + u . grad(omega) - nu lap(omega) - f`` on a periodic grid, with the
    velocity from the stream function: ``lap(psi) = -omega``, ``u = d psi/dy``,
    ``v = -d psi/dx`` (spectral). This is the PINO-style score of the BeamVQ notebook.

    Parameters
    ----------
    pred : torch.Tensor
        Vorticity history (..., T, H, W), frames ``dt`` apart, T >= 2.
    target : torch.Tensor, optional
        Unused: the score needs no reference.
    weights, mask : torch.Tensor, optional
        Weights and validity for the spatial mean of ``r^2``.
    dx, dy, dt : float
        Grid spacings and time between frames (dataset attrs ``dx``, ``dy``, ``dt``).
    nu : float or torch.Tensor
        Viscosity, broadcastable to (...), e.g. (S,) per sample.
    forcing : "ns2d", float or torch.Tensor
        ``"ns2d"`` is :func:`ns_forcing`; a number or a tensor broadcastable to (H, W) or
        to ``pred`` gives any other forcing (0 for the unforced equation).
    time_scheme : {"central", "midpoint"}
        ``central``: the residual at every frame, with central time differences inside
        and one-sided ones at the two ends. ``midpoint``: the residual halfway between
        consecutive frames, ``(w_t - w_{t-1}) / dt`` against the spatial terms of
        ``(w_t + w_{t-1}) / 2`` (Crank-Nicolson): the same second-order stencil for every
        pair, so no end frame is differenced differently from the others.

    Returns
    -------
    torch.Tensor
        Shape (..., T) (``central``) or (..., T - 1) (``midpoint``: pair ``t`` is frames
        ``t`` and ``t + 1``).
    """
    if time_scheme not in ("central", "midpoint"):
        raise ValueError(
            f"ns_vorticity_residual: time_scheme must be 'central' or 'midpoint'; got {time_scheme!r}"
        )
    if time_scheme == "midpoint":
        if pred.shape[-3] < 2:
            raise ValueError("ns_vorticity_residual(midpoint) needs at least 2 frames")
        dw = (pred[..., 1:, :, :] - pred[..., :-1, :, :]) / float(dt)
        mid = 0.5 * (pred[..., 1:, :, :] + pred[..., :-1, :, :])
        return _vorticity_residual(mid, dw, weights, mask, dx, dy, nu, forcing)
    if pred.shape[-3] < 2:
        raise ValueError(
            f"a time derivative needs at least 2 frames along dim -3, got {pred.shape[-3]}"
        )
    w_field, _ = _field(pred, weights, mask, "ns_vorticity_residual")
    return _vorticity_residual(
        pred, time_derivative(w_field, dt, dim=-3), weights, mask, dx, dy, nu, forcing
    )


def _vorticity_residual(pred, dw_dt, weights, mask, dx, dy, nu, forcing) -> Tensor:
    """RMS of ``dw_dt + u . grad(w) - nu lap(w) - f`` for the vorticity ``pred`` (..., T, H, W)."""
    w_field, w = _field(pred, weights, mask, "ns_vorticity_residual")
    h, wd = w_field.shape[-2:]
    ops = _Spectral(w_field, dx, dy)
    w_hat = ops.fft(w_field)
    psi_hat = torch.where(ops.k2 > 0, w_hat / ops.k2.clamp_min(1e-30), torch.zeros_like(w_hat))
    psi_x, psi_y = ops.grad(psi_hat)
    u, v = psi_y, -psi_x
    wx, wy = ops.grad(w_hat)
    nu_t = reshape_param(nu, w_field.shape[:-3], w_field, "nu", trailing=3)
    if isinstance(forcing, str):
        if forcing != "ns2d":
            raise ValueError(f"ns_vorticity_residual: unknown forcing {forcing!r} (use 'ns2d')")
        f = ns_forcing(h, wd, dx=dx, dy=dy, dtype=w_field.dtype).to(w_field.device)
    else:
        f = torch.as_tensor(forcing, dtype=w_field.dtype, device=w_field.device)
    r = dw_dt.to(w_field.dtype) + u * wx + v * wy - nu_t * ops.laplacian(w_hat) - f
    return torch.sqrt(spatial_mean(r**2, w))


def _grad(c: Tensor, dx: float, dy: float, periodic: bool) -> tuple[Tensor, Tensor]:
    """(dc/dx, dc/dy) of (..., H, W) fields: spectral if periodic, else finite differences."""
    if periodic:
        ops = _Spectral(c, dx, dy)
        return ops.grad(ops.fft(c))
    return fd_derivative(c, dx, -1, False), fd_derivative(c, dy, -2, False)


def _laplacian(c: Tensor, dx: float, dy: float, periodic: bool) -> Tensor:
    """lap c of (..., H, W) fields: spectral if periodic, else finite differences."""
    if periodic:
        ops = _Spectral(c, dx, dy)
        return ops.laplacian(ops.fft(c))
    c_x, c_y = _grad(c, dx, dy, False)
    return fd_derivative(c_x, dx, -1, False) + fd_derivative(c_y, dy, -2, False)


@METRICS.register(
    "advection_diffusion_residual",
    kind="physics",
    higher_is_better=False,
    reference_free=True,
)
def advection_diffusion_residual(
    pred: Tensor,
    target: Tensor | None = None,
    *,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    dx: float,
    dy: float,
    dt: float,
    kappa: float | Tensor,
    cx: float | Tensor = 0.0,
    cy: float | Tensor = 0.0,
    source: float | Tensor = 0.0,
    periodic: bool = True,
) -> Tensor:
    """RMS residual of ``dc/dt + cx dc/dx + cy dc/dy - kappa lap(c) - source``.

    The heat equation is the case ``cx = cy = 0``.

    Parameters
    ----------
    pred : torch.Tensor
        Scalar history (..., T, H, W), frames ``dt`` apart.
    target : torch.Tensor, optional
        Unused.
    weights, mask : torch.Tensor, optional
        Weights and validity of the spatial mean.
    dx, dy, dt : float
        Grid spacings and time between frames.
    kappa, cx, cy : float or torch.Tensor
        Diffusivity and constant advection velocity, broadcastable to (...).
    source : float or torch.Tensor
        Source term, broadcastable to ``pred``.
    periodic : bool
        Spectral derivatives on a periodic grid, else finite differences.

    Returns
    -------
    torch.Tensor
        Shape (..., T).
    """
    c, w = _field(pred, weights, mask, "advection_diffusion_residual")
    lead = c.shape[:-3]
    k, ax, ay = (
        reshape_param(p, lead, c, n, 3) for p, n in ((kappa, "kappa"), (cx, "cx"), (cy, "cy"))
    )
    c_x, c_y = _grad(c, dx, dy, periodic)
    lap = _laplacian(c, dx, dy, periodic)
    src = torch.as_tensor(source, dtype=c.dtype, device=c.device)
    r = time_derivative(c, dt, dim=-3) + ax * c_x + ay * c_y - k * lap - src
    return torch.sqrt(spatial_mean(r**2, w))


@METRICS.register(
    "shallow_water_continuity_residual",
    kind="physics",
    higher_is_better=False,
    fields=SHALLOW_WATER_FIELDS,
    label="h,u,v",
    reference_free=True,
)
def shallow_water_continuity_residual(
    pred: Tensor,
    target: Tensor | None = None,
    *,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    dx: float,
    dy: float,
    dt: float,
    periodic: bool = True,
) -> Tensor:
    """RMS residual of the shallow-water continuity equation ``dh/dt + div(h u) = 0``.

    Parameters
    ----------
    pred : torch.Tensor
        History of (h, u, v) stacked on dim -3: (..., T, 3, H, W).
    target : torch.Tensor, optional
        Unused.
    weights, mask : torch.Tensor, optional
        Weights and validity of the spatial mean.
    dx, dy, dt : float
        Grid spacings and time between frames.
    periodic : bool
        Spectral derivatives on a periodic grid, else finite differences.

    Returns
    -------
    torch.Tensor
        Shape (..., T).
    """
    x, w = _field(pred, weights, mask, "shallow_water_continuity_residual", n_fields=3)
    h, u, v = x.unbind(-3)
    flux_x, _ = _grad(h * u, dx, dy, periodic)
    _, flux_y = _grad(h * v, dx, dy, periodic)
    r = time_derivative(h, dt, dim=-3) + flux_x + flux_y
    return torch.sqrt(spatial_mean(r**2, w))
