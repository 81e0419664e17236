"""U-Net (Ronneberger et al. 2015, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI) over stacked time steps, in the modern form of the PDEArena
U-Net baselines (Gupta & Brandstetter 2022): GroupNorm residual blocks, FiLM/AdaGN
conditioning on physical parameters.

The ``T_in`` input frames are stacked as channels. The encoder is either the built-in
residual down path or any timm model as a ``features_only`` feature pyramid
(``encoder="resnet18"``; built with ``pretrained=False``, nothing is ever downloaded).

Shapes (built-in encoder, ``levels = L``, widths ``w_i = hidden * channel_mult**i``)::

    x (B, T_in, C_in, H, W) -> stack (B, T_in*C_in, H, W)
    skips[i]: (B, w_i, H / 2**i, W / 2**i),  i = 0..L-1
    z: (B, w_L, H / 2**L, W / 2**L)            the bottleneck
    decode: up, concatenate skip, residual block, ... -> y (B, T_out, C_out, H, W)

``H`` and ``W`` must be divisible by ``2**L`` (by the deepest feature stride of a timm
encoder); other sizes raise a ``ValueError`` naming the allowed sizes.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn

from physforecast.layers import FiLM, ResBlock, conv3x3, group_norm, stack_time, unstack_time

from .base import Backbone, Latent, check_divisible, register_backbone


class UNetBackbone(Backbone):
    """U-Net behind the backbone contract; the latent is the bottleneck, skips ride along.

    Parameters
    ----------
    in_steps, out_steps, in_channels, out_channels, cond_dim
        See :class:`~physforecast.backbones.base.Backbone`.
    hidden : int
        Channels at full resolution (``w_0``).
    levels : int
        Number of 2x down-samplings of the built-in encoder.
    channel_mult : int
        Width factor per level, ``w_i = hidden * channel_mult**i``.
    n_res : int
        Residual blocks per level, in the encoder and in the decoder.
    encoder : str, optional
        Name of a timm model used as the encoder through
        ``timm.create_model(encoder, features_only=True, pretrained=False, in_chans=T_in*C_in)``;
        ``None`` (default) uses the built-in residual encoder.
    encoder_depth : int
        With ``encoder``: how many feature stages to use (``out_indices = 0..depth-1``).
    padding_mode : str
        Padding of the built-in convolutions; ``'circular'`` for periodic domains.
    dropout : float
        Dropout inside residual blocks.
    """

    paper = "Ronneberger et al. 2015, U-Net (MICCAI); PDEArena variant, Gupta & Brandstetter 2022"

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
        encoder: str | None = None,
        encoder_depth: int = 2,
        padding_mode: str = "zeros",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_steps, out_steps, in_channels, out_channels, cond_dim)
        if levels < 1 or n_res < 1:
            raise ValueError(f"levels and n_res must be >= 1; got levels={levels}, n_res={n_res}")
        c_in = in_steps * self.in_channels
        self.stem = conv3x3(c_in, hidden, padding_mode=padding_mode)
        self.film_in = FiLM(cond_dim, hidden) if cond_dim else None

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, cond_dim, padding_mode=padding_mode, dropout=dropout)

        if encoder is None:
            widths = [hidden * channel_mult**i for i in range(levels + 1)]
            self.enc_blocks = nn.ModuleList(
                nn.ModuleList(res(w, w) for _ in range(n_res)) for w in widths[:-1]
            )
            self.downs = nn.ModuleList(
                conv3x3(widths[i], widths[i + 1], stride=2, padding_mode=padding_mode)
                for i in range(levels)
            )
            self.timm_encoder = None
            skip_widths, neck = widths[:-1], widths[-1]
            self.factor = 2**levels
        else:
            self.timm_encoder = _timm_features(encoder, c_in, encoder_depth)
            chans = list(self.timm_encoder.feature_info.channels())
            skip_widths, neck = [hidden, *chans[:-1]], chans[-1]
            self.factor = int(self.timm_encoder.feature_info.reduction()[-1])
        self.neck = res(neck, neck)
        # decoder, deepest level first: upsample, concatenate the skip, residual blocks
        self.dec_blocks = nn.ModuleList()
        width = neck
        for w in reversed(skip_widths):
            self.dec_blocks.append(
                nn.ModuleList(res(width + w if i == 0 else w, w) for i in range(n_res))
            )
            width = w
        self.head = nn.Sequential(
            group_norm(width),
            nn.SiLU(),
            nn.Conv2d(width, out_steps * self.out_channels, kernel_size=1),
        )

    def encode(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> Latent:
        """(B, T_in, C_in, H, W) -> Latent(z=bottleneck, skips=(full-res, ..., deepest skip))."""
        self.check_input(x, cond)
        check_divisible(type(self).__name__, tuple(x.shape[-2:]), self.factor)
        xs = stack_time(x)
        h = self.stem(xs)
        if self.film_in is not None:
            h = self.film_in(h, cond)
        skips = []
        if self.timm_encoder is None:
            for blocks, down in zip(self.enc_blocks, self.downs):
                for block in blocks:
                    h = block(h, cond)
                skips.append(h)
                h = down(h)
        else:
            feats = self.timm_encoder(xs)
            skips = [h, *feats[:-1]]
            h = feats[-1]
        return Latent(self.neck(h, cond), tuple(skips))

    def decode(self, latent: Latent, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Latent(z, skips) -> (B, T_out, C_out, H, W)."""
        h = latent.z
        for blocks, skip in zip(self.dec_blocks, reversed(latent.skips)):
            h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = torch.cat([h, skip], dim=1)
            for block in blocks:
                h = block(h, cond)
        return unstack_time(self.head(h), self.out_steps)


def _timm_features(name: str, in_chans: int, depth: int) -> nn.Module:
    """A timm feature pyramid with random weights (``pretrained=False``: no download)."""
    if depth < 1:
        raise ValueError(f"encoder_depth must be >= 1; got {depth}")
    return timm.create_model(
        name,
        features_only=True,
        pretrained=False,
        in_chans=in_chans,
        out_indices=tuple(range(depth)),
    )


@register_backbone("unet", paper=UNetBackbone.paper, source="physforecast; timm encoders")
def unet(**kwargs) -> UNetBackbone:
    """Build a :class:`UNetBackbone`; see its parameters."""
    return UNetBackbone(**kwargs)
