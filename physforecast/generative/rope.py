"""Rotary position embeddings on space-time token grids.

Two position conventions over one rotation:

- :class:`RoPE3D` (HunyuanVideo): the head dimension split into groups for ``(t, h, w)``
  (HunyuanVideo: 16/56/56 of 128, theta 256), integer positions on the token grid;
- :func:`centered_positions` (Hunyuan-DiT's centralised interpolative positions): a grid of
  any size is fitted, aspect kept, into a square base grid and centred, and its positions
  are spread over that region, so every resolution of a domain covers the same coordinate
  range (``mode="extend"`` gives plain ``0..N-1`` positions instead).

Rotation convention: channel pairs ``(2i, 2i+1)`` of each head are rotated by the angle
``position * theta ** (-2i / d_axis)`` of their axis, as a complex multiplication.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "RoPE3D",
    "apply_rope",
    "centered_positions",
    "default_split",
    "grid_positions",
    "rope_angles",
]


def default_split(head_dim: int) -> tuple[int, int, int]:
    """HunyuanVideo's ``(t, h, w)`` split scaled to ``head_dim``: 16/56/56 of 128.

    Every group is even; ``head_dim`` must be even and at least 6.
    """
    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"3-D RoPE needs an even head_dim >= 6; got {head_dim}")
    t = max(2, 2 * round(head_dim / 16))
    rest = head_dim - t
    h = 2 * ((rest // 2 + 1) // 2)
    w = rest - h
    if w < 2:
        t, h, w = head_dim - 4, 2, 2
    return t, h, w


def grid_positions(
    size: Sequence[int],
    *,
    offset: Sequence[float] | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Integer positions of a token grid, row-major (last axis fastest).

    Parameters
    ----------
    size : sequence of int
        Grid size per axis, e.g. ``(T, H, W)``.
    offset : sequence of float, optional
        Added to each axis (e.g. negative times for history tokens).

    Returns
    -------
    Tensor
        (prod(size), len(size)) float32 positions.
    """
    axes = [torch.arange(n, dtype=torch.float32, device=device) for n in size]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(size))
    if offset is not None:
        grid = grid + torch.as_tensor(offset, dtype=torch.float32, device=device)
    return grid


def centered_positions(
    size: tuple[int, int],
    base: int,
    *,
    mode: str = "centered",
    device: torch.device | None = None,
) -> torch.Tensor:
    """Hunyuan-DiT's 2-D positions of an ``h x w`` token grid on a ``base x base`` grid.

    ``mode="centered"``: the grid is resized (aspect ratio kept) to fit the base square,
    centred in it, and its ``n`` points per axis are placed at
    ``start + (stop - start) * i / n``; so a 32x64 and a 64x128 grid span the same range.
    ``mode="extend"``: plain positions ``0..n-1``.

    Returns
    -------
    Tensor
        (h * w, 2) float32 positions ``(row, column)``, row-major.
    """
    height, width = size
    if mode == "extend":
        return grid_positions((height, width), device=device)
    if mode != "centered":
        raise ValueError(f"mode must be 'centered' or 'extend'; got {mode!r}")
    if height / width > 1:
        rh, rw = base, int(round(base / height * width))
    else:
        rh, rw = int(round(base / width * height)), base
    top, left = int(round((base - rh) / 2.0)), int(round((base - rw) / 2.0))
    rows = top + rh * torch.arange(height, dtype=torch.float32, device=device) / height
    cols = left + rw * torch.arange(width, dtype=torch.float32, device=device) / width
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)


def rope_angles(
    positions: torch.Tensor, dims: Sequence[int], theta: float = 10000.0
) -> torch.Tensor:
    """Rotation angles of every channel pair for tokens at ``positions``.

    Parameters
    ----------
    positions : Tensor
        (N, A) positions of N tokens along A axes.
    dims : sequence of int
        Head channels given to each axis (even, summing to the head dim ``d``).
    theta : float
        Base of the frequencies.

    Returns
    -------
    Tensor
        (N, d // 2) angles in float32, the axes' groups one after the other.
    """
    if positions.ndim != 2 or positions.shape[1] != len(dims):
        raise ValueError(
            f"positions must be (N, {len(dims)}) for {len(dims)} axes; got {tuple(positions.shape)}"
        )
    parts = []
    for axis, dim in enumerate(dims):
        if dim % 2:
            raise ValueError(f"every RoPE group must be even; got {tuple(dims)}")
        exponent = torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim
        inv_freq = (1.0 / theta**exponent).float()
        parts.append(positions[:, axis : axis + 1].float() * inv_freq.reshape(1, -1))
    return torch.cat(parts, dim=-1)


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs ``(2i, 2i+1)`` of ``x`` by ``angles``.

    Parameters
    ----------
    x : Tensor
        (..., N, d) queries or keys (e.g. (B, heads, N, d)).
    angles : Tensor
        (N, d // 2) from :func:`rope_angles`; with fewer than ``d // 2`` columns only
        the leading channels are rotated.

    Returns
    -------
    Tensor
        Same shape and dtype as ``x``; computed in float32.
    """
    rotated = angles.shape[-1] * 2
    head, tail = x[..., :rotated], x[..., rotated:]
    pairs = head.float().reshape(*head.shape[:-1], -1, 2)
    cos, sin = torch.cos(angles), torch.sin(angles)
    even, odd = pairs[..., 0], pairs[..., 1]
    out = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
    out = out.reshape(head.shape).to(x.dtype)
    return torch.cat([out, tail], dim=-1) if tail.shape[-1] else out


class RoPE3D(nn.Module):
    """3-D rotary embedding over ``(t, h, w)`` head-dim groups (HunyuanVideo).

    Parameters
    ----------
    head_dim : int
        Channels per attention head ``d``.
    split : tuple of int, optional
        Channels given to ``(t, h, w)``; :func:`default_split` (16/56/56 of 128) by default.
    theta : float
        Frequency base (HunyuanVideo: 256).
    """

    def __init__(
        self, head_dim: int, split: Sequence[int] | None = None, theta: float = 256.0
    ) -> None:
        super().__init__()
        split = tuple(split) if split is not None else default_split(head_dim)
        if sum(split) != head_dim or len(split) != 3:
            raise ValueError(f"split {split} must be three groups summing to head_dim {head_dim}")
        self.head_dim, self.split, self.theta = head_dim, split, float(theta)

    def angles(self, positions: torch.Tensor) -> torch.Tensor:
        """(N, 3) positions -> (N, head_dim // 2) angles."""
        return rope_angles(positions, self.split, self.theta)

    def forward(
        self,
        grid: Sequence[int],
        *,
        offset: Sequence[float] | None = None,
        device: torch.device | None = None,
    ) -> torch.Tensor:
        """Angles of a ``(T, H, W)`` token grid: (T*H*W, head_dim // 2)."""
        return self.angles(grid_positions(grid, offset=offset, device=device))

    def rotate(
        self, q: torch.Tensor, k: torch.Tensor, grid: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate q and k (..., T*H*W, head_dim) of tokens on the grid ``(T, H, W)``."""
        angles = self(grid, device=q.device)
        return apply_rope(q, angles), apply_rope(k, angles)
