"""Conditioning on physical parameters: FiLM on feature maps and on token sequences."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FiLM", "film_tokens"]


class FiLM(nn.Module):
    """Feature-wise linear modulation by physical parameters.

    ``h * (1 + scale(cond)) + shift(cond)`` with ``scale, shift`` from a small MLP.
    With ``cond=None`` it is the identity, so an unconditioned call of a conditioned
    model is still well defined.

    Parameters
    ----------
    cond_dim : int
        Number of physical parameters ``P``.
    channels : int
        Channels ``D`` of the modulated feature map.
    """

    def __init__(self, cond_dim: int, channels: int, hidden: int = 64) -> None:
        super().__init__()
        self.cond_dim = cond_dim
        self.net = nn.Sequential(
            nn.Linear(cond_dim, hidden), nn.SiLU(), nn.Linear(hidden, 2 * channels)
        )

    def forward(self, h: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """Modulate ``h`` (B, D, ...) channel-wise with ``cond`` (B, P)."""
        if cond is None:
            return h
        scale, shift = self.net(cond.to(h.dtype)).chunk(2, dim=-1)
        shape = (h.shape[0], -1) + (1,) * (h.ndim - 2)
        return h * (1 + scale.reshape(shape)) + shift.reshape(shape)


def film_tokens(
    film: nn.Module | None, tokens: torch.Tensor, cond: torch.Tensor | None
) -> torch.Tensor:
    """Apply a channel-wise :class:`~FiLM` to tokens (B, N, D).

    ``FiLM`` modulates dim 1 of a (B, D, ...) map; tokens carry their channels last, so
    they are transposed around the call. ``film=None`` or ``cond=None`` is the identity.
    """
    if film is None or cond is None:
        return tokens
    return film(tokens.transpose(1, 2), cond).transpose(1, 2)
