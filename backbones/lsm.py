"""Latent Spectral Models (Wu, Hu, Luo, Wang and Long 2023, "Solving High-Dimensional PDEs
with Latent Spectral Models", ICML).

LSM solves the PDE in a small latent space instead of on the grid. A convolutional U-Net
extracts features at several scales (hierarchical projection); at every scale a
*neural spectral block* splits the feature map into patches and, per patch,

1. projects the ``L`` grid points onto ``M`` learned latent tokens by cross-attention
   (tokens attend to points),
2. evolves each token value ``t`` with a learned trigonometric expansion,
   ``t + sum_k a_k sin(k pi t / K) + b_k cos(k pi t / K)`` (the latent spectral solver),
3. projects the tokens back onto the points by cross-attention (points attend to
   tokens), residually.

Shapes: the ``T_in`` frames are stacked as channels, (B, T_in*C, H, W), and with the grid
coordinates lifted to (B, D, H, W). Level ``l`` holds (B, D_l, H/2^l, W/2^l) with
``D_l = D * 2^l``. The latent is the processed coarsest level,
(B, D_L, H/2^L, W/2^L); ``Latent.skips`` holds the processed finer levels for the
decoder. H and W must be divisible by ``2^levels * patches``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import Mlp, trunc_normal_
from torch import nn

from physforecast.layers import FiLM, append_coordinates, stack_time, unstack_time

from .base import Backbone, Latent, check_divisible, register_backbone

__all__ = ["NeuralSpectralBlock", "LSMBackbone"]


def _group_norm(channels: int) -> nn.GroupNorm:
    groups = math.gcd(channels, 8)
    return nn.GroupNorm(groups, channels)


class _DoubleConv(nn.Sequential):
    """(conv 3x3, GroupNorm, GELU) twice: (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            _group_norm(c_out),
            nn.GELU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            _group_norm(c_out),
            nn.GELU(),
        )


class _Up(nn.Module):
    """Bilinear x2 upsampling, concatenation with the skip, double convolution."""

    def __init__(self, c_in: int, c_skip: int, c_out: int) -> None:
        super().__init__()
        self.conv = _DoubleConv(c_in + c_skip, c_out)

    def forward(self, h: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([skip, h], dim=1))


class NeuralSpectralBlock(nn.Module):
    """Patch-wise latent spectral processing of a feature map (B, D, H, W) -> (B, D, H, W).

    Parameters
    ----------
    channels : int
        Feature width ``D``; must be divisible by ``heads``.
    patches : tuple of int
        Number of patches along ``(y, x)``; H and W must be divisible by them.
    tokens : int
        Latent tokens ``M`` per patch.
    basis : int
        Number ``K`` of frequencies of the trigonometric expansion.
    heads : int
        Attention heads of the two projections.
    """

    def __init__(
        self,
        channels: int,
        patches: tuple[int, int] = (2, 2),
        tokens: int = 4,
        basis: int = 12,
        heads: int = 4,
    ) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"LSM width {channels} must be divisible by heads={heads}")
        self.channels, self.heads, self.patches = channels, heads, tuple(patches)
        head_dim = channels // heads
        self.latent = nn.Parameter(trunc_normal_(torch.empty(heads, tokens, head_dim), std=0.5))
        self.to_kv = nn.Conv2d(channels, 2 * channels, 1)
        self.to_q = nn.Conv2d(channels, channels, 1)
        self.basis_weight = nn.Parameter(torch.zeros(channels, 2 * basis))
        trunc_normal_(self.basis_weight, std=0.02)
        self.register_buffer(
            "frequencies",
            math.pi * torch.arange(basis, dtype=torch.float32) / basis,
            persistent=False,
        )

    def _heads(self, h: torch.Tensor) -> torch.Tensor:
        """(N, D, ph, pw) -> (N, heads, ph*pw, D/heads)."""
        n, d = h.shape[:2]
        return h.reshape(n, self.heads, d // self.heads, -1).transpose(-1, -2)

    def transition(self, t: torch.Tensor) -> torch.Tensor:
        """Evolve token values by the trigonometric expansion; t is (N, heads, M, D/heads)."""
        n, heads, m, dh = t.shape
        values = t.transpose(1, 2).reshape(n, m, heads * dh)  # channel c = head * dh + i
        phase = values.unsqueeze(-1) * self.frequencies  # (N, M, D, K)
        features = torch.cat([torch.sin(phase), torch.cos(phase)], dim=-1)  # (N, M, D, 2K)
        values = values + (features * self.basis_weight).sum(-1)
        return values.reshape(n, m, heads, dh).transpose(1, 2)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W) -> (B, D, H, W)."""
        b, d, height, width = h.shape
        gy, gx = self.patches
        ph, pw = height // gy, width // gx
        # patchify: (B, D, gy, ph, gx, pw) -> (B*gy*gx, D, ph, pw)
        x = h.reshape(b, d, gy, ph, gx, pw).permute(0, 2, 4, 1, 3, 5).reshape(-1, d, ph, pw)
        k, v = self.to_kv(x).chunk(2, dim=1)
        latent = self.latent.expand(x.shape[0], -1, -1, -1)
        tokens = latent + F.scaled_dot_product_attention(latent, self._heads(k), self._heads(v))
        tokens = self.transition(tokens)
        out = F.scaled_dot_product_attention(self._heads(self.to_q(x)), tokens, tokens)
        out = out.transpose(-1, -2).reshape(-1, d, ph, pw)
        x = x + out
        return (
            x.reshape(b, gy, gx, d, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(b, d, height, width)
        )


class LSMBackbone(Backbone):
    """LSM behind the backbone contract.

    Parameters
    ----------
    in_steps, out_steps, in_channels, out_channels, cond_dim
        See :class:`~physforecast.backbones.base.Backbone`.
    hidden : int
        Width ``D`` of the finest level; level ``l`` has ``D * 2^l``.
    levels : int
        Number of 2x downsamplings of the U-Net.
    patches : int or tuple of int
        Patches per axis of every level's neural spectral block.
    tokens, basis, heads : int
        Latent tokens per patch, trigonometric frequencies and attention heads.
    projection : int
        Hidden width of the pointwise output projection.
    """

    paper = "Wu et al. 2023, Solving High-Dimensional PDEs with Latent Spectral Models (ICML)"

    def __init__(
        self,
        in_steps: int,
        out_steps: int,
        in_channels: int,
        out_channels: int | None = None,
        cond_dim: int = 0,
        hidden: int = 16,
        levels: int = 2,
        patches: int | tuple[int, int] = 2,
        tokens: int = 4,
        basis: int = 12,
        heads: int = 4,
        projection: int = 64,
    ) -> None:
        super().__init__(in_steps, out_steps, in_channels, out_channels, cond_dim)
        self.patches = (patches, patches) if isinstance(patches, int) else tuple(patches)
        self.levels = int(levels)
        # every level splits into whole patches: H, W divisible by 2^levels * lcm(patches)
        self.size_factor = 2**self.levels * math.lcm(*self.patches)
        widths = [hidden * 2**level for level in range(self.levels + 1)]
        self.lifting = nn.Conv2d(self.in_steps * self.in_channels + 2, hidden, 1)
        self.film = FiLM(cond_dim, hidden) if cond_dim else None
        self.inc = _DoubleConv(hidden, hidden)
        self.down = nn.ModuleList(_DoubleConv(widths[i], widths[i + 1]) for i in range(self.levels))
        self.spectral = nn.ModuleList(
            NeuralSpectralBlock(w, self.patches, tokens, basis, heads) for w in widths
        )
        self.up = nn.ModuleList(
            _Up(widths[i + 1], widths[i], widths[i]) for i in reversed(range(self.levels))
        )
        self.projection = Mlp(hidden, projection, self.out_steps * self.out_channels, use_conv=True)

    def encode(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> Latent:
        """(B, T_in, C, H, W) -> Latent(z=(B, D_L, H/2^L, W/2^L), skips=finer levels)."""
        self.check_input(x, cond)
        check_divisible("LSM", tuple(x.shape[-2:]), self.size_factor)
        h = self.lifting(append_coordinates(stack_time(x)))
        if self.film is not None:
            h = self.film(h, cond)
        h = self.inc(h)
        features = [h]
        for down in self.down:
            h = down(F.max_pool2d(h, 2))
            features.append(h)
        processed = [block(f) for block, f in zip(self.spectral, features)]
        return Latent(processed[-1], tuple(processed[:-1]))

    def decode(self, latent: Latent, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Latent -> (B, T_out, C_out, H, W) through the U-Net's upsampling path."""
        h = latent.z
        for up, skip in zip(self.up, reversed(latent.skips)):
            h = up(h, skip)
        return unstack_time(self.projection(h), self.out_steps)


@register_backbone("lsm", paper=LSMBackbone.paper, source="physforecast")
def lsm(**kwargs) -> LSMBackbone:
    """Build an :class:`LSMBackbone`; see its parameters."""
    return LSMBackbone(**kwargs)
