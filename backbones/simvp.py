"""SimVP: a CNN encoder, a translator over stacked frames, and a CNN decoder.

Gao et al. 2022, "SimVP: Simpler yet Better Video Prediction" (CVPR) introduced the
Inception-U translator (``translator="incepu"``); Tan et al. 2022, "SimVP: Towards Simple
yet Powerful Spatiotemporal Predictive Learning" (SimVPv2) replaced it by gated spatial
attention blocks (``translator="gsta"``), the large-kernel attention of TAU (Tan et al.
2023, "Temporal Attention Unit", CVPR).

Shapes (``N_S`` encoder layers, ``s = 2**(N_S // 2)``, ``h = H / s``, ``w = W / s``)::

    x (B, T_in, C_in, H, W) -> per frame (B*T_in, C_in, H, W)
    encoder        -> (B*T_in, hid_S, h, w);  first layer (B*T_in, hid_S, H, W) is the skip
    stack time     -> (B, T_in*hid_S, h, w) -> translator -> z (B, T_in*hid_S, h, w)
    decode: 1x1 time map (T_in != T_out) -> (B, T_out*hid_S, h, w) -> per frame decoder
            with the (time-mapped) skip added before its last layer -> y (B, T_out, C_out, H, W)

The latent ``z`` is the translator output, in the encoder's latent space;
``Latent.skips = (skip,)`` with ``skip`` of shape (B, T_in*hid_S, H, W).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import DropPath, GroupNorm1, LayerScale2d
from torch import nn

from physforecast.layers import FiLM, conv3x3, unstack_time

from .base import Backbone, Latent, check_divisible, register_backbone

TRANSLATORS = ("incepu", "gsta")


class ConvSC(nn.Module):
    """Conv + GroupNorm + SiLU; ``resample=-1`` halves the grid (stride 2), ``+1`` doubles it
    (conv to 4x channels + pixel shuffle). (B, c_in, H, W) -> (B, c_out, H', W')."""

    def __init__(self, c_in: int, c_out: int, resample: int = 0, padding_mode: str = "zeros"):
        super().__init__()
        if resample > 0:
            self.conv = nn.Sequential(
                conv3x3(c_in, 4 * c_out, padding_mode=padding_mode, bias=False), nn.PixelShuffle(2)
            )
        else:
            stride = 2 if resample < 0 else 1
            self.conv = conv3x3(c_in, c_out, stride=stride, padding_mode=padding_mode, bias=False)
        self.norm = nn.GroupNorm(math.gcd(2, c_out), c_out)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


# -- Inception-U translator (SimVPv1) ------------------------------------------------
class Inception(nn.Module):
    """1x1 bottleneck, then the sum of grouped convolutions with several kernel sizes,
    each followed by GroupNorm and LeakyReLU. (B, c_in, h, w) -> (B, c_out, h, w)."""

    def __init__(
        self, c_in: int, c_hid: int, c_out: int, kernels: tuple[int, ...], groups: int
    ) -> None:
        super().__init__()
        g = math.gcd(groups, math.gcd(c_hid, c_out))
        self.reduce = nn.Conv2d(c_in, c_hid, kernel_size=1)
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c_hid, c_out, k, padding=k // 2, groups=g, bias=False),
                nn.GroupNorm(g, c_out),
                nn.LeakyReLU(0.2),
            )
            for k in kernels
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.reduce(x)
        return sum(branch(h) for branch in self.branches)


class IncepU(nn.Module):
    """SimVPv1 translator: ``n_layers`` Inception blocks down, ``n_layers`` up, U-Net-style
    channel concatenation of the down outputs. (B, c, h, w) -> (B, c, h, w)."""

    def __init__(
        self, channels: int, hidden: int, n_layers: int, kernels: tuple[int, ...], groups: int
    ) -> None:
        super().__init__()
        if n_layers < 2:
            raise ValueError(f"translator='incepu' needs N_T >= 2; got N_T={n_layers}")
        mid = hidden // 2
        self.enc = nn.ModuleList(
            Inception(channels if i == 0 else hidden, mid, hidden, kernels, groups)
            for i in range(n_layers)
        )
        self.dec = nn.ModuleList(
            Inception(
                hidden if i == 0 else 2 * hidden,
                mid,
                channels if i == n_layers - 1 else hidden,
                kernels,
                groups,
            )
            for i in range(n_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, layer in enumerate(self.enc):
            x = layer(x)
            if i < len(self.enc) - 1:
                skips.append(x)
        x = self.dec[0](x)
        for layer in self.dec[1:]:
            x = layer(torch.cat([x, skips.pop()], dim=1))
        return x


# -- gated spatial attention translator (SimVPv2 / TAU) ----------------------------------
class GatedLKA(nn.Module):
    """Large-kernel attention decomposed into a depthwise conv, a dilated depthwise conv and
    a 1x1 conv giving a value ``f`` and a gate ``g``: ``sigmoid(g) * f``. (B, c, h, w) kept."""

    def __init__(self, dim: int, kernel_size: int = 21, dilation: int = 3) -> None:
        super().__init__()
        local = 2 * dilation - 1
        wide = kernel_size // dilation
        wide += 1 - wide % 2  # odd
        self.local = nn.Conv2d(dim, dim, local, padding=local // 2, groups=dim)
        self.wide = nn.Conv2d(
            dim, dim, wide, padding=dilation * (wide // 2), dilation=dilation, groups=dim
        )
        self.gate = nn.Conv2d(dim, 2 * dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f, g = self.gate(self.wide(self.local(x))).chunk(2, dim=1)
        return torch.sigmoid(g) * f


class GSTABlock(nn.Module):
    """gSTA block: ``x + ls1 * attn(norm1(x))`` then ``x + ls2 * mlp(norm2(x))``, where attn
    is 1x1 -> GELU -> gated LKA -> 1x1 (+ its input) and mlp is 1x1 -> depthwise 3x3 ->
    GELU -> 1x1. GroupNorm(1) replaces SimVPv2's BatchNorm (batch-size independent)."""

    def __init__(
        self, dim: int, kernel_size: int, mlp_ratio: float, drop: float, drop_path: float
    ) -> None:
        super().__init__()
        self.norm1 = GroupNorm1(dim)
        self.proj_in = nn.Conv2d(dim, dim, kernel_size=1)
        self.lka = GatedLKA(dim, kernel_size)
        self.proj_out = nn.Conv2d(dim, dim, kernel_size=1)
        self.ls1 = LayerScale2d(dim, 1e-2)
        self.norm2 = GroupNorm1(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Conv2d(dim, hidden, kernel_size=1),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden),
            nn.GELU(),
            nn.Dropout(drop),
            nn.Conv2d(hidden, dim, kernel_size=1),
            nn.Dropout(drop),
        )
        self.ls2 = LayerScale2d(dim, 1e-2)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        h = self.proj_out(self.lka(F.gelu(self.proj_in(h)))) + h
        x = x + self.drop_path(self.ls1(h))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


class GSTA(nn.Module):
    """SimVPv2 translator: ``n_layers`` gSTA blocks, 1x1 convs changing width between
    ``channels`` and ``hidden``. (B, channels, h, w) -> (B, channels, h, w)."""

    def __init__(
        self,
        channels: int,
        hidden: int,
        n_layers: int,
        kernel_size: int,
        mlp_ratio: float,
        drop: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        rates = (
            torch.linspace(1e-2, drop_path, n_layers).tolist() if drop_path else [0.0] * n_layers
        )
        layers: list[nn.Module] = []
        for i in range(n_layers):
            c_in = channels if i == 0 else hidden
            c_out = channels if i == n_layers - 1 else hidden
            layers.append(GSTABlock(c_in, kernel_size, mlp_ratio, drop, rates[i]))
            if c_in != c_out:
                layers.append(nn.Conv2d(c_in, c_out, kernel_size=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class SimVPBackbone(Backbone):
    """SimVP behind the backbone contract.

    Parameters
    ----------
    in_steps, out_steps, in_channels, out_channels, cond_dim
        See :class:`~physforecast.backbones.base.Backbone`.
    hid_S : int
        Channels of the spatial encoder/decoder.
    hid_T : int
        Channels inside the translator.
    N_S : int
        Encoder (and decoder) layers; every second one resamples by 2, so ``H, W`` must be
        divisible by ``2**(N_S // 2)``.
    N_T : int
        Translator layers.
    translator : {"gsta", "incepu"}
        Gated spatial attention (SimVPv2/TAU) or Inception-U (SimVPv1).
    incep_kernels : tuple of int
        Inception-U kernel sizes.
    groups : int
        Inception-U convolution groups (reduced to a divisor of the widths when needed).
    attn_kernel : int
        gSTA large-kernel attention size.
    mlp_ratio, drop, drop_path : float
        gSTA MLP expansion, dropout and stochastic-depth rate.
    padding_mode : str
        Padding of the encoder/decoder convolutions; ``'circular'`` for periodic domains.
    """

    paper = "Gao et al. 2022, SimVP (CVPR); Tan et al. 2022, SimVPv2 (gSTA); Tan et al. 2023, TAU"

    def __init__(
        self,
        in_steps: int,
        out_steps: int,
        in_channels: int,
        out_channels: int | None = None,
        cond_dim: int = 0,
        hid_S: int = 16,
        hid_T: int = 64,
        N_S: int = 2,
        N_T: int = 2,
        translator: str = "gsta",
        incep_kernels: tuple[int, ...] = (3, 5, 7, 11),
        groups: int = 8,
        attn_kernel: int = 21,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__(in_steps, out_steps, in_channels, out_channels, cond_dim)
        if translator not in TRANSLATORS:
            raise ValueError(f"translator must be one of {TRANSLATORS}; got {translator!r}")
        if N_S < 1 or N_T < 1:
            raise ValueError(f"N_S and N_T must be >= 1; got N_S={N_S}, N_T={N_T}")
        self.hid_S = hid_S
        self.factor = 2 ** (N_S // 2)
        # resampling pattern as in SimVP: layers 1, 3, 5, ... halve; decoder mirrors it
        down = [-(i % 2) for i in range(N_S)]
        self.enc = nn.ModuleList(
            ConvSC(self.in_channels if i == 0 else hid_S, hid_S, r, padding_mode)
            for i, r in enumerate(down)
        )
        self.dec = nn.ModuleList(ConvSC(hid_S, hid_S, -r, padding_mode) for r in reversed(down))
        self.readout = nn.Conv2d(hid_S, self.out_channels, kernel_size=1)

        channels = in_steps * hid_S
        self.film_in = FiLM(cond_dim, channels) if cond_dim else None
        if translator == "incepu":
            self.translator = IncepU(channels, hid_T, N_T, tuple(incep_kernels), groups)
        else:
            self.translator = GSTA(channels, hid_T, N_T, attn_kernel, mlp_ratio, drop, drop_path)
        same = in_steps == out_steps
        out_ch = out_steps * hid_S
        self.time_map = nn.Identity() if same else nn.Conv2d(channels, out_ch, kernel_size=1)
        self.skip_map = nn.Identity() if same else nn.Conv2d(channels, out_ch, kernel_size=1)
        self.film_out = FiLM(cond_dim, out_ch) if cond_dim else None

    def encode(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> Latent:
        """(B, T_in, C_in, H, W) -> Latent(z, (skip,)).

        ``z`` is (B, T_in*hid_S, h, w), ``skip`` is (B, T_in*hid_S, H, W).
        """
        self.check_input(x, cond)
        check_divisible(type(self).__name__, tuple(x.shape[-2:]), self.factor)
        b, t = x.shape[:2]
        h = x.flatten(0, 1)
        h = self.enc[0](h)
        skip = h
        for layer in self.enc[1:]:
            h = layer(h)
        h = h.reshape(b, t * self.hid_S, *h.shape[-2:])
        if self.film_in is not None:
            h = self.film_in(h, cond)
        skip = skip.reshape(b, t * self.hid_S, *skip.shape[-2:])
        return Latent(self.translator(h), (skip,))

    def decode(self, latent: Latent, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Latent(z, (skip,)) -> (B, T_out, C_out, H, W)."""
        h = self.time_map(latent.z)
        if self.film_out is not None:
            h = self.film_out(h, cond)
        skip = self.skip_map(latent.skips[0])
        h = unstack_time(h, self.out_steps).flatten(0, 1)
        for layer in self.dec[:-1]:
            h = layer(h)
        h = self.dec[-1](h + unstack_time(skip, self.out_steps).flatten(0, 1))
        y = self.readout(h)
        return y.reshape(-1, self.out_steps, *y.shape[1:])


@register_backbone("simvp", paper=SimVPBackbone.paper, source="physforecast")
def simvp(**kwargs) -> SimVPBackbone:
    """Build a :class:`SimVPBackbone`; see its parameters."""
    return SimVPBackbone(**kwargs)
