"""Convolutional Neural Operator (Raonic et al. 2023, "Convolutional Neural Operators for
robust and accurate learning of PDEs", NeurIPS).

A U-shaped CNN whose every nonlinearity is anti-aliased, so that the discrete network
stays (approximately) equivalent to an operator on band-limited functions: an
activation is applied on a grid of twice the output resolution and the result is
low-pass filtered down to the output grid ("CNO LReLU"); down- and up-sampling go
through the same filtered resampling. Two resampling filters are offered:

``resample="bicubic"``
    antialiased bicubic interpolation (the torch-only CNO variant; any boundary condition).
``resample="fft"``
    ideal low-pass by truncating / zero-padding the Fourier spectrum; exact for periodic,
    band-limited fields (use it for periodic domains).

Shapes (``L = levels``, ``w_i = hidden * channel_mult**i``)::

    x (B, T_in, C_in, H, W) -> stack (B, T_in*C_in, H, W) -> lift (B, w_0, H, W)
    level i: skip_i = res_i(h) (B, w_i, H/2**i, W/2**i);  h = down_i(h) (B, w_{i+1}, ...)
    z = neck(h)  (B, w_L, H/2**L, W/2**L)      the bottleneck latent
    decode: band-limited 2x upsampling, concatenate skip_i, CNO block, ...
            -> project -> y (B, T_out, C_out, H, W)

``H`` and ``W`` must be divisible by ``2**L``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from physforecast.layers import FiLM, conv3x3, group_norm, stack_time, unstack_time

from .base import Backbone, Latent, check_divisible, register_backbone

RESAMPLE_MODES = ("bicubic", "fft")


def fourier_resample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Band-limited resampling of periodic fields by spectral truncation / zero padding.

    Per axis, the Fourier modes representable on both grids are kept and all others are
    dropped (an ideal low-pass at the smaller grid's Nyquist frequency). The Nyquist mode
    of an even grid is split over ``+-k`` when upsampling and folded from ``+-k`` when
    downsampling, so samples are reproduced exactly and down(up(x)) == x. Runs in fp32.

    Parameters
    ----------
    x : Tensor
        (..., H, W) samples of a periodic field.
    size : (int, int)
        Output grid ``(H', W')``.

    Returns
    -------
    Tensor
        (..., H', W'), same dtype as ``x``.
    """
    y = _fourier_resample_1d(x.float(), int(size[1]), dim=-1)
    return _fourier_resample_1d(y, int(size[0]), dim=-2).to(x.dtype)


def _fourier_resample_1d(x: torch.Tensor, n_out: int, dim: int) -> torch.Tensor:
    """Resample the real periodic signal ``x`` along ``dim`` onto ``n_out`` points."""
    n = x.shape[dim]
    if n == n_out:
        return x
    spec = torch.fft.rfft(x.movedim(dim, -1), norm="forward")
    out = spec.new_zeros(*spec.shape[:-1], n_out // 2 + 1)
    m = min(n, n_out)
    keep = (m + 1) // 2  # modes below the Nyquist frequency of the smaller grid
    out[..., :keep] = spec[..., :keep]
    if m % 2 == 0:  # the smaller grid's Nyquist mode
        nyq = spec[..., m // 2]
        out[..., m // 2] = 2 * nyq.real if n_out < n else nyq / 2
    return torch.fft.irfft(out, n=n_out, norm="forward").movedim(-1, dim)


def resample(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Anti-aliased resampling of (B, C, H, W) to ``(B, C, *size)`` (``mode`` in RESAMPLE_MODES)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "fft":
        return fourier_resample(x, size)
    return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)


class FilteredLReLU(nn.Module):
    """The CNO activation: upsample to twice the larger of the input and output grids,
    apply LeakyReLU there, low-pass resample to the output grid.

    (B, C, H, W) -> ``(B, C, *out_size)``; ``out_size=None`` keeps ``(H, W)``.
    """

    def __init__(self, mode: str = "bicubic", negative_slope: float = 0.2) -> None:
        super().__init__()
        if mode not in RESAMPLE_MODES:
            raise ValueError(f"resample must be one of {RESAMPLE_MODES}; got {mode!r}")
        self.mode, self.negative_slope = mode, negative_slope

    def forward(self, x: torch.Tensor, out_size: tuple[int, int] | None = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        out = (h, w) if out_size is None else tuple(out_size)
        fine = (2 * max(h, out[0]), 2 * max(w, out[1]))
        x = F.leaky_relu(resample(x, fine, self.mode), self.negative_slope)
        return resample(x, out, self.mode)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, negative_slope={self.negative_slope}"


class CNOBlock(nn.Module):
    """Conv -> GroupNorm -> filtered activation onto the grid scaled by ``scale``
    (0.5: down-sampling block, 1: invariant block).
    (B, c_in, H, W) -> (B, c_out, H*scale, W*scale)."""

    def __init__(self, c_in: int, c_out: int, scale: float, mode: str, padding_mode: str):
        super().__init__()
        self.conv = conv3x3(c_in, c_out, padding_mode=padding_mode, bias=False)
        self.norm = group_norm(c_out)
        self.act = FilteredLReLU(mode)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        out = (round(h * self.scale), round(w * self.scale))
        return self.act(self.norm(self.conv(x)), out)


class CNOResBlock(nn.Module):
    """``x + norm2(conv2(act(film(norm1(conv1(x))))))`` with the filtered activation.
    (B, c, H, W) -> (B, c, H, W); ``cond`` (B, P) enters by FiLM."""

    def __init__(self, channels: int, cond_dim: int, mode: str, padding_mode: str) -> None:
        super().__init__()
        self.conv1 = conv3x3(channels, channels, padding_mode=padding_mode, bias=False)
        self.norm1 = group_norm(channels)
        self.film = FiLM(cond_dim, channels) if cond_dim else None
        self.act = FilteredLReLU(mode)
        self.conv2 = conv3x3(channels, channels, padding_mode=padding_mode, bias=False)
        self.norm2 = group_norm(channels)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(self.conv1(x))
        if self.film is not None:
            h = self.film(h, cond)
        return x + self.norm2(self.conv2(self.act(h)))


class CNOBackbone(Backbone):
    """CNO behind the backbone contract; the latent is the bottleneck, skips ride along.

    Parameters
    ----------
    in_steps, out_steps, in_channels, out_channels, cond_dim
        See :class:`~physforecast.backbones.base.Backbone`.
    hidden : int
        Channels at full resolution (``w_0``).
    levels : int
        Number of 2x down-samplings; ``H, W`` must be divisible by ``2**levels``.
    channel_mult : int
        Width factor per level.
    n_res : int
        Residual blocks on each skip connection.
    n_res_neck : int
        Residual blocks in the bottleneck.
    resample : {"bicubic", "fft"}
        Anti-aliasing filter (see the module docstring); ``"fft"`` for periodic domains.
    padding_mode : str
        Convolution padding; ``'circular'`` for periodic domains.
    """

    paper = "Raonic et al. 2023, Convolutional Neural Operators (NeurIPS)"

    def __init__(
        self,
        in_steps: int,
        out_steps: int,
        in_channels: int,
        out_channels: int | None = None,
        cond_dim: int = 0,
        hidden: int = 16,
        levels: int = 2,
        channel_mult: int = 2,
        n_res: int = 1,
        n_res_neck: int = 1,
        resample: str = "bicubic",
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__(in_steps, out_steps, in_channels, out_channels, cond_dim)
        if resample not in RESAMPLE_MODES:
            raise ValueError(f"resample must be one of {RESAMPLE_MODES}; got {resample!r}")
        self.factor = 2**levels
        widths = [hidden * channel_mult**i for i in range(levels + 1)]
        kw = dict(mode=resample, padding_mode=padding_mode)
        self.lift = CNOBlock(in_steps * self.in_channels, hidden, 1, **kw)
        self.film_in = FiLM(cond_dim, hidden) if cond_dim else None
        self.skip_res = nn.ModuleList(
            nn.ModuleList(CNOResBlock(w, cond_dim, **kw) for _ in range(n_res)) for w in widths[:-1]
        )
        self.down = nn.ModuleList(
            CNOBlock(widths[i], widths[i + 1], 0.5, **kw) for i in range(levels)
        )
        self.neck = nn.ModuleList(
            CNOResBlock(widths[-1], cond_dim, **kw) for _ in range(n_res_neck)
        )
        self.film_out = FiLM(cond_dim, widths[-1]) if cond_dim else None
        self.resample = resample
        self.fuse = nn.ModuleList(
            CNOBlock(widths[i + 1] + widths[i], widths[i], 1, **kw) for i in range(levels)
        )
        self.project = conv3x3(hidden, out_steps * self.out_channels, padding_mode=padding_mode)

    def encode(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> Latent:
        """(B, T_in, C_in, H, W) -> Latent(z=(B, w_L, H/2**L, W/2**L), skips=(skip_0, ...))."""
        self.check_input(x, cond)
        check_divisible(type(self).__name__, tuple(x.shape[-2:]), self.factor)
        h = self.lift(stack_time(x))
        if self.film_in is not None:
            h = self.film_in(h, cond)
        skips = []
        for blocks, down in zip(self.skip_res, self.down):
            s = h
            for block in blocks:
                s = block(s, cond)
            skips.append(s)
            h = down(h)
        for block in self.neck:
            h = block(h, cond)
        return Latent(h, tuple(skips))

    def decode(self, latent: Latent, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Latent(z, skips) -> (B, T_out, C_out, H, W)."""
        h = latent.z
        if self.film_out is not None:
            h = self.film_out(h, cond)
        for i in reversed(range(len(self.fuse))):
            skip = latent.skips[i]
            h = resample(h, tuple(skip.shape[-2:]), self.resample)
            h = self.fuse[i](torch.cat([h, skip], dim=1))
        return unstack_time(self.project(h), self.out_steps)


@register_backbone("cno", paper=CNOBackbone.paper, source="physforecast")
def cno(**kwargs) -> CNOBackbone:
    """Build a :class:`CNOBackbone`; see its parameters."""
    return CNOBackbone(**kwargs)
