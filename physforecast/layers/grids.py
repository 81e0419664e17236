"""Reshaping between the layouts models use: time stacked into channels, grids and tokens,
and grid coordinates as extra channels."""

from __future__ import annotations

import torch

__all__ = [
    "append_coordinates",
    "grid_coordinates",
    "grid_to_tokens",
    "stack_time",
    "tokens_to_grid",
    "unstack_time",
]


def grid_coordinates(
    height: int,
    width: int,
    *,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Normalized point coordinates of an ``H x W`` grid, shape (2, H, W).

    Channel 0 is ``y = i / H`` and channel 1 is ``x = j / W``, both in ``[0, 1)``, so the
    same physical point gets the same coordinate at every resolution of a periodic domain.
    """
    y = torch.arange(height, device=device, dtype=dtype) / height
    x = torch.arange(width, device=device, dtype=dtype) / width
    return torch.stack(torch.meshgrid(y, x, indexing="ij"))


def append_coordinates(h: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C + 2, H, W): the grid coordinates appended as two channels."""
    b, _, height, width = h.shape
    grid = grid_coordinates(height, width, device=h.device, dtype=h.dtype)
    return torch.cat([h, grid.expand(b, -1, -1, -1)], dim=1)


def grid_to_tokens(h: torch.Tensor) -> torch.Tensor:
    """(B, D, H, W) -> (B, H*W, D), row-major over the grid."""
    return h.flatten(2).transpose(1, 2)


def tokens_to_grid(tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H*W, D) -> (B, D, H, W); the inverse of :func:`grid_to_tokens`."""
    b, n, d = tokens.shape
    height, width = size
    if n != height * width:
        raise ValueError(
            f"{n} tokens do not fill a {height}x{width} grid ({height * width} points)"
        )
    return tokens.transpose(1, 2).reshape(b, d, height, width)


def stack_time(x: torch.Tensor) -> torch.Tensor:
    """(B, T, C, H, W) -> (B, T*C, H, W)."""
    b, t, c, h, w = x.shape
    return x.reshape(b, t * c, h, w)


def unstack_time(x: torch.Tensor, steps: int) -> torch.Tensor:
    """(B, T*C, H, W) -> (B, T, C, H, W)."""
    b, tc, h, w = x.shape
    return x.reshape(b, steps, tc // steps, h, w)
