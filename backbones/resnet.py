"""Residual CNN baseline for PDE surrogates, as in PDEArena (Gupta & Brandstetter 2022,
"Towards Multi-spatiotemporal-scale Generalized PDE Modeling", TMLR) and the ResNet
baseline of TF-Net (Wang et al. 2020, "Towards Physics-informed Deep Learning for
Turbulent Flow Prediction", KDD); the residual block is He et al. 2016.

The ``T_in`` input frames are stacked as channels, lifted to ``hidden`` channels, passed
through ``n_blocks`` full-resolution residual blocks (optionally dilated, as in the
dilated ResNet of Stachenfeld et al. 2022) and projected to the ``T_out`` output frames
by two 1x1 convolutions. There is no down-sampling, so any grid ``H x W`` works.

Shapes::

    x (B, T_in, C_in, H, W) -> stack (B, T_in*C_in, H, W) -> z (B, hidden, H, W)
    z -> head -> (B, T_out*C_out, H, W) -> y (B, T_out, C_out, H, W)

The latent ``z`` is the output of the residual stack: one ``hidden``-vector per grid point.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from physforecast.layers import FiLM, ResBlock, conv3x3, group_norm, stack_time, unstack_time

from .base import Backbone, Latent, register_backbone


class ResNetBackbone(Backbone):
    """PDEArena-style residual CNN behind the backbone contract.

    Parameters
    ----------
    in_steps, out_steps, in_channels, out_channels, cond_dim
        See :class:`~physforecast.backbones.base.Backbone`.
    hidden : int
        Channels of every residual block.
    n_blocks : int
        Number of residual blocks.
    dilations : sequence of int, optional
        Dilation of each block (length ``n_blocks``), e.g. ``(1, 2, 4, 8, 4, 2, 1)``
        for a dilated ResNet; all 1 by default.
    padding_mode : str
        Convolution padding; ``'circular'`` for periodic domains.
    dropout, drop_path : float
        Dropout inside blocks; stochastic-depth rate rising linearly to ``drop_path``.
    """

    paper = (
        "Gupta & Brandstetter 2022, Towards Multi-spatiotemporal-scale Generalized PDE Modeling "
        "(PDEArena ResNet)"
    )

    def __init__(
        self,
        in_steps: int,
        out_steps: int,
        in_channels: int,
        out_channels: int | None = None,
        cond_dim: int = 0,
        hidden: int = 16,
        n_blocks: int = 4,
        dilations: Sequence[int] | None = None,
        padding_mode: str = "zeros",
        dropout: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__(in_steps, out_steps, in_channels, out_channels, cond_dim)
        dilations = tuple(dilations) if dilations is not None else (1,) * n_blocks
        if len(dilations) != n_blocks:
            raise ValueError(
                f"dilations must have one entry per block (n_blocks={n_blocks}); got {dilations}"
            )
        self.stem = conv3x3(in_steps * self.in_channels, hidden, padding_mode=padding_mode)
        self.film_in = FiLM(cond_dim, hidden) if cond_dim else None
        rates = torch.linspace(0, drop_path, n_blocks).tolist() if n_blocks else []
        self.blocks = nn.ModuleList(
            ResBlock(
                hidden,
                hidden,
                cond_dim,
                dilation=d,
                padding_mode=padding_mode,
                dropout=dropout,
                drop_path=r,
            )
            for d, r in zip(dilations, rates)
        )
        self.head_norm = group_norm(hidden)
        self.film_out = FiLM(cond_dim, hidden) if cond_dim else None
        self.head = nn.Sequential(
            nn.SiLU(),
            nn.Conv2d(hidden, hidden, kernel_size=1),
            nn.SiLU(),
            nn.Conv2d(hidden, out_steps * self.out_channels, kernel_size=1),
        )

    def encode(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> Latent:
        """(B, T_in, C_in, H, W) -> Latent(z=(B, hidden, H, W))."""
        self.check_input(x, cond)
        h = self.stem(stack_time(x))
        if self.film_in is not None:
            h = self.film_in(h, cond)
        for block in self.blocks:
            h = block(h, cond)
        return Latent(h)

    def decode(self, latent: Latent, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Latent(z=(B, hidden, H, W)) -> (B, T_out, C_out, H, W)."""
        h = self.head_norm(latent.z)
        if self.film_out is not None:
            h = self.film_out(h, cond)
        return unstack_time(self.head(h), self.out_steps)


@register_backbone("resnet", paper=ResNetBackbone.paper, source="physforecast")
def resnet(**kwargs) -> ResNetBackbone:
    """Build a :class:`ResNetBackbone`; see its parameters."""
    return ResNetBackbone(**kwargs)
