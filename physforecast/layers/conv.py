"""Convolutional blocks shared by the CNN backbones (ResNet, U-Net, SimVP, ConvLSTM, CNO) and
the methods' heads.

Every block works on channel-first maps ``(B, C, H, W)`` of any ``H, W``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .conditioning import FiLM

__all__ = ["PADDING_MODES", "ResBlock", "check_padding_mode", "conv3x3", "group_norm"]

PADDING_MODES = ("zeros", "circular", "reflect", "replicate")


def check_padding_mode(padding_mode: str) -> str:
    """Return ``padding_mode`` or raise a ``ValueError`` listing the allowed ones."""
    if padding_mode not in PADDING_MODES:
        raise ValueError(
            f"padding_mode must be one of {PADDING_MODES} "
            f"('circular' for periodic domains); got {padding_mode!r}"
        )
    return padding_mode


def group_norm(channels: int, max_groups: int = 8) -> nn.GroupNorm:
    """GroupNorm with the largest group count ``<= max_groups`` that divides ``channels``.

    Batch-size independent, so a model behaves the same for batch 1 and batch 64.
    """
    return nn.GroupNorm(math.gcd(max_groups, channels), channels)


def conv3x3(
    in_channels: int,
    out_channels: int,
    *,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
    kernel_size: int = 3,
    padding_mode: str = "zeros",
    bias: bool = True,
) -> nn.Conv2d:
    """A 'same'-padded convolution (odd ``kernel_size``); ``stride=2`` halves ``H, W``.

    Use ``bias=False`` when a normalization follows (it would cancel the bias).
    """
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd for 'same' padding; got {kernel_size}")
    return nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=dilation * (kernel_size // 2),
        dilation=dilation,
        groups=groups,
        padding_mode=check_padding_mode(padding_mode),
        bias=bias,
    )


class ResBlock(nn.Module):
    """Pre-activation residual block with FiLM (AdaGN-style) conditioning.

    ``y = skip(x) + conv2(drop(act(film(norm2(conv1(act(norm1(x))))))))``, as in the
    residual blocks of PDEArena's ResNet/U-Net baselines (Gupta & Brandstetter 2022),
    where the physical parameters modulate the normalized features.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of the input ``(B, in_channels, H, W)`` and output ``(B, out_channels, H, W)``.
    cond_dim : int
        Number of physical parameters ``P``; 0 builds no FiLM.
    dilation : int
        Dilation of both 3x3 convolutions (dilated ResNets).
    padding_mode : str
        ``'zeros'``, ``'circular'`` (periodic domains), ``'reflect'`` or ``'replicate'``.
    dropout, drop_path : float
        Dropout between the convolutions; stochastic depth on the residual branch.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        cond_dim: int = 0,
        *,
        dilation: int = 1,
        padding_mode: str = "zeros",
        dropout: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = conv3x3(
            in_channels, out_channels, dilation=dilation, padding_mode=padding_mode, bias=False
        )
        self.norm2 = group_norm(out_channels)
        self.film = FiLM(cond_dim, out_channels) if cond_dim else None
        self.conv2 = conv3x3(
            out_channels, out_channels, dilation=dilation, padding_mode=padding_mode
        )
        self.act = nn.SiLU()
        self.drop = nn.Dropout(dropout)
        if drop_path > 0:
            from timm.layers import DropPath  # timm only for the models that use it

            self.drop_path: nn.Module = DropPath(drop_path)
        else:
            self.drop_path = nn.Identity()
        self.skip = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, kernel_size=1)
        )

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """(B, in_channels, H, W), cond (B, P) or None -> (B, out_channels, H, W)."""
        h = self.conv1(self.act(self.norm1(x)))
        h = self.norm2(h)
        if self.film is not None:
            h = self.film(h, cond)
        h = self.conv2(self.drop(self.act(h)))
        return self.skip(x) + self.drop_path(h)
