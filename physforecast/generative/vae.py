"""Causal 3-D VAE for space-time fields (HunyuanVideo's design, made for physical data).

- :class:`CausalConv3d`: all temporal padding on the past side (the first frame repeated),
  so output frame ``t`` sees input frames ``<= t``; spatial padding by the data's boundary
  condition (``"circular"`` for periodic domains, ``"replicate"`` otherwise).
- :class:`CausalVAE3D`: encoder / decoder with temporal compression ``t`` and spatial
  compression ``s`` (powers of two; HunyuanVideo: 4x time, 8x space, 16 latent channels):
  a clip of ``1 + t*n`` frames ``(B, C, 1 + t*n, H, W)`` maps to latents
  ``(B, z, 1 + n, H/s, W/s)``, latent frame ``k`` depending on frames ``<= t*k`` only.
  Group norms run per frame (statistics over time would let the future leak into the
  past).
- :class:`DiagonalGaussian`: the posterior (``sample``, ``mode``, ``kl``).
- :func:`vae_loss`: ``L1 + kl_weight * KL + spectral_weight * spectral`` (HunyuanVideo's
  KL weight 1e-6; the spectral term, the mean absolute log-ratio of the radially averaged
  power spectra, replaces LPIPS, which means nothing for vorticity).
- :func:`tiled_encode` / :func:`tiled_decode`: spatial and temporal tiles with overlaps,
  blended linearly (in latent space when encoding), for fields too long or too large.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from physforecast.layers import check_padding_mode
from physforecast.metrics.spectral import power_spectrum

__all__ = [
    "CausalConv3d",
    "CausalVAE3D",
    "DiagonalGaussian",
    "padding_for_boundary",
    "spectral_loss",
    "tiled_decode",
    "tiled_encode",
    "vae_loss",
]


def padding_for_boundary(boundary_conditions: str | None) -> str:
    """``"circular"`` for a periodic domain, ``"replicate"`` otherwise."""
    return (
        "circular" if str(boundary_conditions or "").lower().startswith("periodic") else "replicate"
    )


def _triple(value: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(value, int):
        return value, value, value
    value = tuple(int(v) for v in value)
    if len(value) != 3:
        raise ValueError(f"expected one int or three; got {value}")
    return value  # type: ignore[return-value]


class CausalConv3d(nn.Module):
    """3-D convolution, causal in time, 'same'-padded in space.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of ``(B, C_in, T, H, W)`` and of the output.
    kernel_size : int or (kt, kh, kw)
        Odd spatial sizes.
    stride : int or (st, sh, sw)
        ``st = 2`` maps ``1 + 2m`` frames to ``1 + m``; ``sh = sw = 2`` halves even ``H, W``.
    padding_mode : str
        Spatial padding: ``"circular"``, ``"replicate"``, ``"reflect"`` or ``"zeros"``.
        Time is always padded by repeating the first frame ``kt - 1`` times.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        *,
        stride: int | Sequence[int] = 1,
        padding_mode: str = "replicate",
    ) -> None:
        super().__init__()
        kt, kh, kw = _triple(kernel_size)
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"spatial kernel sizes must be odd; got {(kh, kw)}")
        self.time_pad, self.pad_h, self.pad_w = kt - 1, kh // 2, kw // 2
        self.padding_mode = check_padding_mode(padding_mode)
        self.conv = nn.Conv3d(in_channels, out_channels, (kt, kh, kw), stride=_triple(stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, T, H, W) -> (B, C_out, T', H', W')."""
        pad = (self.pad_w, self.pad_w, self.pad_h, self.pad_h, 0, 0)
        if self.padding_mode == "zeros":
            x = F.pad(x, pad)
        else:
            x = F.pad(x, pad, mode=self.padding_mode)
        if self.time_pad:
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.time_pad, -1, -1), x], dim=2)
        return self.conv(x)


class _FrameGroupNorm(nn.GroupNorm):
    """GroupNorm with statistics per frame: (B, C, T, H, W) normalized as (B*T, C, H, W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        out = super().forward(frames)
        return out.reshape(b, t, c, h, w).transpose(1, 2)


def _norm(channels: int) -> _FrameGroupNorm:
    return _FrameGroupNorm(math.gcd(8, channels), channels, eps=1e-6)


class _ResBlock3d(nn.Module):
    def __init__(self, cin: int, cout: int, padding_mode: str) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), CausalConv3d(cin, cout, padding_mode=padding_mode)
        self.norm2, self.conv2 = _norm(cout), CausalConv3d(cout, cout, padding_mode=padding_mode)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class _Upsample(nn.Module):
    """Causal upsampling: time ``1 + m -> 1 + 2m`` (the first frame alone, the others
    repeated), space nearest x2, then a causal convolution."""

    def __init__(self, channels: int, time: bool, space: bool, padding_mode: str) -> None:
        super().__init__()
        self.time, self.space = time, space
        self.conv = CausalConv3d(channels, channels, padding_mode=padding_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.time and x.shape[2] > 1:
            x = torch.cat([x[:, :, :1], x[:, :, 1:].repeat_interleave(2, dim=2)], dim=2)
        if self.space:
            x = x.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)
        return self.conv(x)


class DiagonalGaussian:
    """A diagonal Gaussian posterior over latents.

    Parameters
    ----------
    mean, logvar : Tensor
        (B, z, T', H', W'); ``logvar`` is clamped to [-30, 20].
    """

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor) -> None:
        self.mean = mean
        self.logvar = logvar.clamp(-30.0, 20.0)

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """A reparameterized draw ``mean + std * eps``."""
        eps = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        """The mean."""
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL to N(0, I), summed over the latent elements: (B,)."""
        kl = 0.5 * (self.mean**2 + self.logvar.exp() - 1.0 - self.logvar)
        return kl.flatten(1).sum(dim=1)


def _log2(value: int, name: str) -> int:
    n = int(round(math.log2(value))) if value >= 1 else -1
    if n < 0 or 2**n != value:
        raise ValueError(f"{name} must be a power of two; got {value}")
    return n


class CausalVAE3D(nn.Module):
    """Causal 3-D VAE (see the module docstring).

    Parameters
    ----------
    in_channels : int
        Channels ``C`` of the fields.
    latent_channels : int
        Latent channels ``z`` (HunyuanVideo: 16).
    spatial_compression, temporal_compression : int
        Powers of two (HunyuanVideo: 8 and 4); each needs that many halvings, i.e.
        ``len(block_channels) - 1 >= log2(factor)``.
    block_channels : sequence of int
        Widths of the encoder levels (the decoder mirrors them).
    layers_per_block : int
        Residual blocks per level.
    padding_mode : str
        Spatial padding of every convolution (:func:`padding_for_boundary`).
    """

    def __init__(
        self,
        in_channels: int,
        *,
        latent_channels: int = 16,
        spatial_compression: int = 8,
        temporal_compression: int = 4,
        block_channels: Sequence[int] = (32, 64, 128, 128),
        layers_per_block: int = 1,
        padding_mode: str = "replicate",
    ) -> None:
        super().__init__()
        block_channels = [int(c) for c in block_channels]
        levels = len(block_channels)
        n_space = _log2(spatial_compression, "spatial_compression")
        n_time = _log2(temporal_compression, "temporal_compression")
        if max(n_space, n_time) > levels - 1:
            raise ValueError(
                f"{levels} levels allow {levels - 1} halvings; compression "
                f"{spatial_compression}x space / {temporal_compression}x time needs more block_channels"
            )
        self.in_channels, self.latent_channels = in_channels, latent_channels
        self.spatial_compression, self.temporal_compression = (
            spatial_compression,
            temporal_compression,
        )
        self.padding_mode = check_padding_mode(padding_mode)
        pm = padding_mode
        # downsampling after level j (j < levels - 1): space early, time late (HunyuanVideo)
        flags = [(j < n_space, j >= levels - 1 - n_time) for j in range(levels - 1)]

        self.conv_in = CausalConv3d(in_channels, block_channels[0], padding_mode=pm)
        self.down = nn.ModuleList()
        cin = block_channels[0]
        for j, cout in enumerate(block_channels):
            level = nn.Module()
            level.blocks = nn.Sequential(
                *[_ResBlock3d(cin if i == 0 else cout, cout, pm) for i in range(layers_per_block)]
            )
            if j < levels - 1 and any(flags[j]):
                space, time = flags[j]
                level.sample = CausalConv3d(
                    cout,
                    cout,
                    stride=(2 if time else 1, 2 if space else 1, 2 if space else 1),
                    padding_mode=pm,
                )
            else:
                level.sample = nn.Identity()
            self.down.append(level)
            cin = cout
        top = block_channels[-1]
        self.mid_enc = nn.Sequential(_ResBlock3d(top, top, pm), _ResBlock3d(top, top, pm))
        self.norm_enc = _norm(top)
        self.conv_enc = CausalConv3d(top, 2 * latent_channels, padding_mode=pm)

        self.conv_dec = CausalConv3d(latent_channels, top, padding_mode=pm)
        self.mid_dec = nn.Sequential(_ResBlock3d(top, top, pm), _ResBlock3d(top, top, pm))
        self.up = nn.ModuleList()
        reversed_channels = block_channels[::-1]
        cin = top
        for i, cout in enumerate(reversed_channels):
            level = nn.Module()
            level.blocks = nn.Sequential(
                *[
                    _ResBlock3d(cin if k == 0 else cout, cout, pm)
                    for k in range(layers_per_block + 1)
                ]
            )
            j = levels - 2 - i
            if i < levels - 1 and any(flags[j]):
                space, time = flags[j]
                level.sample = _Upsample(cout, time, space, pm)
            else:
                level.sample = nn.Identity()
            self.up.append(level)
            cin = cout
        self.norm_dec = _norm(block_channels[0])
        self.conv_out = CausalConv3d(block_channels[0], in_channels, padding_mode=pm)

    def latent_shape(self, shape: Sequence[int]) -> tuple[int, int, int, int, int]:
        """The latent shape of an input ``(B, C, T, H, W)``."""
        b, _, t, h, w = shape
        s, r = self.spatial_compression, self.temporal_compression
        return b, self.latent_channels, 1 + (t - 1) // r, h // s, w // s

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (B, {self.in_channels}, T, H, W); got {tuple(x.shape)}")
        t, h, w = x.shape[2:]
        r, s = self.temporal_compression, self.spatial_compression
        if (t - 1) % r:
            raise ValueError(
                f"a clip needs 1 + {r}*n frames for {r}x temporal compression; got {t}"
            )
        if h % s or w % s:
            raise ValueError(f"H, W = {h}, {w} must be divisible by the spatial compression {s}")

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """(B, C, 1 + t*n, H, W) -> posterior over (B, z, 1 + n, H/s, W/s)."""
        self._check(x)
        h = self.conv_in(x)
        for level in self.down:
            h = level.sample(level.blocks(h))
        h = self.conv_enc(F.silu(self.norm_enc(self.mid_enc(h))))
        mean, logvar = h.chunk(2, dim=1)
        return DiagonalGaussian(mean, logvar)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, z, 1 + n, h, w) -> (B, C, 1 + t*n, h*s, w*s)."""
        if z.ndim != 5 or z.shape[1] != self.latent_channels:
            raise ValueError(
                f"z must be (B, {self.latent_channels}, T', H', W'); got {tuple(z.shape)}"
            )
        h = self.mid_dec(self.conv_dec(z))
        for level in self.up:
            h = level.sample(level.blocks(h))
        return self.conv_out(F.silu(self.norm_dec(h)))

    def forward(
        self, x: torch.Tensor, *, sample: bool = True, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, DiagonalGaussian]:
        """Reconstruction (B, C, T, H, W) of ``x`` through a posterior draw (or its mean),
        and the posterior."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample else posterior.mode()
        return self.decode(z), posterior


def spectral_loss(
    recon: torch.Tensor, target: torch.Tensor, *, floor: float = 1e-8
) -> torch.Tensor:
    """Mean absolute log-ratio of the radially averaged power spectra of every frame.

    ``recon, target`` (..., H, W); the spectra come from
    :func:`physforecast.metrics.spectral.power_spectrum` and are floored at ``floor``
    times the target's mean power. A scalar.
    """
    pr, pt = power_spectrum(recon.float()), power_spectrum(target.float())
    eps = floor * pt.mean(dim=-1, keepdim=True).detach() + torch.finfo(torch.float32).tiny
    return torch.mean(torch.abs(torch.log(pr + eps) - torch.log(pt + eps)))


def vae_loss(
    recon: torch.Tensor,
    target: torch.Tensor,
    posterior: DiagonalGaussian,
    *,
    kl_weight: float = 1e-6,
    spectral_weight: float = 0.1,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``L1 + kl_weight * KL + spectral_weight * spectral`` and its parts.

    Parameters
    ----------
    recon, target : Tensor
        (B, C, T, H, W) reconstruction and input.
    posterior : DiagonalGaussian
        The encoder's posterior (KL summed over latent elements, averaged over the batch).
    kl_weight, spectral_weight : float
        Weights of the KL and spectral terms.
    """
    l1 = torch.mean(torch.abs(recon.float() - target.float()))
    kl = posterior.kl().mean()
    spectral = (
        spectral_loss(recon, target) if spectral_weight else torch.zeros((), device=recon.device)
    )
    loss = l1 + kl_weight * kl + spectral_weight * spectral
    return loss, {
        "l1": float(l1.detach()),
        "kl": float(kl.detach()),
        "spectral": float(spectral.detach()),
    }


def _ramp(n: int, overlap: int, at_start: bool, at_end: bool, device: torch.device) -> torch.Tensor:
    """Blending weights of one tile along one axis: linear ramps over the overlaps that
    are shared with a neighbour."""
    w = torch.ones(n, device=device)
    if overlap > 0:
        ramp = (torch.arange(overlap, device=device, dtype=torch.float32) + 1) / (overlap + 1)
        if not at_start:
            w[:overlap] = torch.minimum(w[:overlap], ramp)
        if not at_end:
            w[-overlap:] = torch.minimum(w[-overlap:], ramp.flip(0))
    return w


def _starts(length: int, tile: int, overlap: int, step_unit: int) -> list[int]:
    if tile >= length:
        return [0]
    stride = tile - overlap
    if stride <= 0 or stride % step_unit:
        raise ValueError(
            f"tile {tile} with overlap {overlap} needs a stride that is a positive multiple of {step_unit}"
        )
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def tiled_encode(
    vae: CausalVAE3D,
    x: torch.Tensor,
    *,
    tile: int = 64,
    overlap: int = 16,
    tile_frames: int | None = None,
    frame_overlap: int = 1,
) -> DiagonalGaussian:
    """Encode ``x`` (B, C, 1 + t*n, H, W) in overlapping tiles, blended in latent space.

    Parameters
    ----------
    tile, overlap : int
        Spatial tile side and overlap in grid points (multiples of the spatial
        compression; the last tile is moved back to end at the border).
    tile_frames : int, optional
        Frames per temporal tile (``1 + t*m``); None: the whole clip at once.
    frame_overlap : int
        Overlap of temporal tiles in latent frames.

    Returns
    -------
    DiagonalGaussian
        Over the latent shape of ``x``; mean and log-variance are the weighted averages
        of the tiles' (linear ramps over the overlaps).
    """
    vae._check(x)
    s, r = vae.spatial_compression, vae.temporal_compression
    b, _, t, h, w = x.shape
    shape = vae.latent_shape(x.shape)
    mean = torch.zeros(shape, device=x.device, dtype=x.dtype)
    logvar = torch.zeros_like(mean)
    weight = torch.zeros(shape[2:], device=x.device)
    lt = shape[2]
    if tile_frames is None:
        t_starts, t_len = [0], lt
    else:
        if (tile_frames - 1) % r:
            raise ValueError(f"tile_frames must be 1 + {r}*m; got {tile_frames}")
        t_len = 1 + (tile_frames - 1) // r
        t_starts = _starts(lt, t_len, frame_overlap, 1)
    th, tw = min(tile, h), min(tile, w)
    h_starts = _starts(h, th, overlap, s)
    w_starts = _starts(w, tw, overlap, s)
    for t0 in t_starts:
        t_len_here = min(t_len, lt - t0)
        frames = x[:, :, r * t0 : r * (t0 + t_len_here - 1) + 1]
        wt = _ramp(
            t_len_here,
            frame_overlap if len(t_starts) > 1 else 0,
            t0 == 0,
            t0 + t_len_here >= lt,
            x.device,
        )
        for h0 in h_starts:
            wh = _ramp(th // s, overlap // s, h0 == 0, h0 + th >= h, x.device)
            for w0 in w_starts:
                ww = _ramp(tw // s, overlap // s, w0 == 0, w0 + tw >= w, x.device)
                post = vae.encode(frames[..., h0 : h0 + th, w0 : w0 + tw])
                wgt = wt.reshape(-1, 1, 1) * wh.reshape(1, -1, 1) * ww.reshape(1, 1, -1)
                region = (
                    slice(None),
                    slice(None),
                    slice(t0, t0 + t_len_here),
                    slice(h0 // s, (h0 + th) // s),
                    slice(w0 // s, (w0 + tw) // s),
                )
                mean[region] += post.mean * wgt
                logvar[region] += post.logvar * wgt
                weight[region[2:]] += wgt
    return DiagonalGaussian(mean / weight, logvar / weight)


def tiled_decode(
    vae: CausalVAE3D, z: torch.Tensor, *, tile: int = 8, overlap: int = 2
) -> torch.Tensor:
    """Decode latents ``z`` (B, z, T', h, w) in overlapping spatial tiles (``tile`` and
    ``overlap`` in latent grid points), blended linearly in field space."""
    s = vae.spatial_compression
    b, _, lt, h, w = z.shape
    out_t = 1 + (lt - 1) * vae.temporal_compression
    out = torch.zeros(b, vae.in_channels, out_t, h * s, w * s, device=z.device, dtype=z.dtype)
    weight = torch.zeros(h * s, w * s, device=z.device)
    th, tw = min(tile, h), min(tile, w)
    for h0 in _starts(h, th, overlap, 1):
        wh = _ramp(th * s, overlap * s, h0 == 0, h0 + th >= h, z.device)
        for w0 in _starts(w, tw, overlap, 1):
            ww = _ramp(tw * s, overlap * s, w0 == 0, w0 + tw >= w, z.device)
            part = vae.decode(z[..., h0 : h0 + th, w0 : w0 + tw])
            wgt = wh.reshape(-1, 1) * ww.reshape(1, -1)
            out[..., h0 * s : (h0 + th) * s, w0 * s : (w0 + tw) * s] += part * wgt
            weight[h0 * s : (h0 + th) * s, w0 * s : (w0 + tw) * s] += wgt
    return out / weight
