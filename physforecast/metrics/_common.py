"""Shared plumbing of the metrics: input checks, masks and weights, weighted spatial means,
finite differences.

Conventions (all public metrics follow them):

- ``pred`` and ``target`` have the same shape ``(..., H, W)``; the last two dims are space.
- ``weights`` (area or latitude weights) broadcast to ``pred``; typically ``(H, W)`` or
  ``(H, 1)``. Only their ratios matter: a weighted mean divides by the sum of the weights.
- ``mask`` is a boolean tensor that broadcasts to ``pred``; True marks a valid point. Values
  at invalid points (NaN over land, say) are replaced by zeros before any arithmetic, so
  they never leak into a result.
- Half-precision inputs are upcast to float32; float64 stays float64.
"""

from __future__ import annotations

import torch

__all__ = [
    "as_float",
    "prepare",
    "prepare_field",
    "check_mask",
    "spatial_mean",
    "spatial_sum",
    "weight_sum",
    "time_derivative",
    "fd_derivative",
    "reshape_param",
    "leading_dim",
    "zero_invalid",
]

_SPATIAL = (-2, -1)


def as_float(x: torch.Tensor, name: str = "input") -> torch.Tensor:
    """Return ``x`` as a floating tensor of at least float32 precision."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_complex():
        raise TypeError(f"{name} must be real, got dtype {x.dtype}")
    if x.dtype in (torch.float32, torch.float64):
        return x
    return x.to(torch.float32)


def check_mask(mask: torch.Tensor | None, shape: torch.Size, name: str) -> torch.Tensor | None:
    """Validate a boolean mask that broadcasts to ``shape``."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"{name}: mask must be a boolean tensor (True = valid point), got {got}")
    _check_broadcast(mask.shape, shape, f"{name}: mask")
    return mask


def _check_broadcast(small: torch.Size, shape: torch.Size, what: str) -> None:
    try:
        out = torch.broadcast_shapes(small, shape)
    except RuntimeError:
        out = None
    if out != shape:
        raise ValueError(f"{what} of shape {tuple(small)} does not broadcast to {tuple(shape)}")


def _fold(
    weights: torch.Tensor | None,
    mask: torch.Tensor | None,
    x: torch.Tensor,
    name: str,
    weighted: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Check ``weights`` and ``mask`` against ``x``; return (mask, combined weights)."""
    mask = check_mask(mask, x.shape, name)
    w = None
    if weights is not None:
        if not weighted:
            raise ValueError(f"{name} is defined on a uniform grid and takes no weights")
        weights = as_float(weights, f"{name}: weights").to(dtype=x.dtype, device=x.device)
        _check_broadcast(weights.shape, x.shape, f"{name}: weights")
        if bool((weights < 0).any()):
            raise ValueError(f"{name}: weights must be non-negative")
        w = weights
    if mask is not None:
        mask = mask.to(x.device)
        m = mask.to(x.dtype)
        w = m if w is None else w * m
    return mask, w


def zero_invalid(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``x`` with zeros where ``mask`` (broadcastable, True = valid) is False."""
    if mask is None:
        return x
    return torch.where(mask.to(x.device), x, torch.zeros((), dtype=x.dtype, device=x.device))


def prepare(
    pred: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    *,
    name: str = "metric",
    weighted: bool = True,
    min_ndim: int = 2,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Check a (pred, target) pair and fold ``weights`` and ``mask`` into one weight tensor.

    Parameters
    ----------
    pred, target : torch.Tensor
        Same shape ``(..., H, W)``.
    weights : torch.Tensor, optional
        Non-negative weights broadcastable to ``pred``.
    mask : torch.Tensor, optional
        Boolean, broadcastable to ``pred``; True = valid.
    name : str
        Metric name used in error messages.
    weighted : bool
        False for metrics where weights have no meaning; passing weights then raises.
    min_ndim : int
        Minimum number of dims of ``pred``.

    Returns
    -------
    pred, target : torch.Tensor
        Floating tensors with invalid points set to zero.
    w : torch.Tensor or None
        Weights (zero at invalid points), broadcastable to ``pred``; None when neither
        ``weights`` nor ``mask`` was given.
    """
    pred = as_float(pred, f"{name}: pred")
    target = as_float(target, f"{name}: target")
    if pred.shape != target.shape:
        raise ValueError(
            f"{name}: pred and target must have the same shape, "
            f"got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    dtype = torch.promote_types(pred.dtype, target.dtype)
    pred, target = pred.to(dtype), target.to(dtype)
    pred, w = prepare_field(pred, weights, mask, name=name, weighted=weighted, min_ndim=min_ndim)
    target = zero_invalid(target, mask)
    return pred, target, w


def prepare_field(
    x: torch.Tensor,
    weights: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    *,
    name: str = "metric",
    weighted: bool = True,
    min_ndim: int = 2,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The one-field version of :func:`prepare`: returns ``(x, w)``."""
    x = as_float(x, f"{name}: pred")
    if x.ndim < min_ndim:
        raise ValueError(f"{name}: expected at least {min_ndim} dims, got shape {tuple(x.shape)}")
    mask, w = _fold(weights, mask, x, name, weighted)
    return zero_invalid(x, mask), w


def spatial_sum(x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """Weighted sum over the last two dims: (..., H, W) -> (...)."""
    return x.sum(_SPATIAL) if w is None else (x * w).sum(_SPATIAL)


def weight_sum(x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """Sum of the weights over the last two dims, broadcast like ``x``: -> (...)."""
    if w is None:
        return torch.full(x.shape[:-2], x.shape[-2] * x.shape[-1], dtype=x.dtype, device=x.device)
    shape = torch.broadcast_shapes(w.shape, x.shape)
    return w.expand(shape).sum(_SPATIAL)


def spatial_mean(x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """Weighted mean over the last two dims: (..., H, W) -> (...). NaN where no weight."""
    if w is None:
        return x.mean(_SPATIAL)
    return spatial_sum(x, w) / weight_sum(x, w)


def leading_dim(dim: int, ndim: int, name: str) -> int:
    """Index of ``dim`` among the leading (non-spatial) dims of an ``ndim``-d (..., H, W)
    tensor; the same index addresses the result once space is reduced."""
    d = dim + ndim if dim < 0 else dim
    if not 0 <= d < ndim - 2:
        raise ValueError(f"{name}: sample_dim {dim} is not a leading dim of a {ndim}-d field")
    return d


def reshape_param(
    value: float | torch.Tensor, lead: torch.Size, like: torch.Tensor, name: str, trailing: int
) -> torch.Tensor:
    """Broadcast a physical parameter over the leading dims ``lead`` of a field.

    A float, or a tensor broadcastable to ``lead`` (per-sample viscosity of shape (S,) for a
    field (S, T, H, W) has ``lead = (S,)``), becomes a tensor with ``trailing`` singleton
    dims appended, ready to multiply the field.
    """
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    try:
        torch.broadcast_shapes(t.shape, lead)
    except RuntimeError:
        raise ValueError(
            f"parameter {name} of shape {tuple(t.shape)} does not broadcast to the "
            f"leading dims {tuple(lead)}"
        ) from None
    if t.ndim > len(lead):
        raise ValueError(f"parameter {name} has more dims than the leading dims {tuple(lead)}")
    return t.reshape(t.shape + (1,) * trailing)


def time_derivative(x: torch.Tensor, dt: float, dim: int) -> torch.Tensor:
    """d/dt along ``dim``: central differences inside, one-sided at the ends.

    Second order everywhere when there are at least three frames (one-sided second-order
    stencils at the ends), first order with two frames.
    """
    n = x.shape[dim]
    if n < 2:
        raise ValueError(f"a time derivative needs at least 2 frames along dim {dim}, got {n}")
    if not dt > 0:
        raise ValueError(f"dt must be positive, got {dt}")
    return torch.gradient(x, spacing=float(dt), dim=dim, edge_order=2 if n >= 3 else 1)[0]


def fd_derivative(x: torch.Tensor, spacing: float, dim: int, periodic: bool) -> torch.Tensor:
    """Second-order finite-difference derivative along ``dim``.

    Periodic: central differences with wrap-around. Otherwise central differences inside
    and second-order one-sided stencils at the two edges (as ``numpy.gradient(edge_order=2)``
    and TF-Net's ``field_grad``).
    """
    if periodic:
        return (torch.roll(x, -1, dim) - torch.roll(x, 1, dim)) / (2.0 * spacing)
    if x.shape[dim] < 3:
        raise ValueError(f"a non-periodic derivative needs at least 3 points along dim {dim}")
    return torch.gradient(x, spacing=float(spacing), dim=dim, edge_order=2)[0]
