"""Helpers of the BeamVQ tests (importable: pytest puts this folder on sys.path)."""

from __future__ import annotations

from torch import nn

from physforecast.backbones.base import Backbone, Latent


class TinyBackbone(Backbone):
    """Two convs: encode stacks time into channels, decode maps back. Latent (B, D, H, W)."""

    def __init__(
        self, in_steps: int = 2, out_steps: int = 2, in_channels: int = 1, hidden: int = 4
    ):
        super().__init__(in_steps, out_steps, in_channels)
        self.enc = nn.Conv2d(in_steps * in_channels, hidden, 3, padding=1)
        self.dec = nn.Conv2d(hidden, out_steps * in_channels, 3, padding=1)

    def encode(self, x, cond=None):
        b, t, c, h, w = x.shape
        return Latent(self.enc(x.reshape(b, t * c, h, w)), (h, w))

    def decode(self, latent, cond=None):
        y = self.dec(latent.z)
        return y.reshape(y.shape[0], self.out_steps, self.out_channels, *y.shape[-2:])
