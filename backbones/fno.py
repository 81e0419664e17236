"""Fourier Neural Operator (Li et al. 2021, "Fourier Neural Operator for Parametric
Partial Differential Equations", ICLR), wrapping :class:`neuralop.models.FNO`.

The ``T_in`` input frames are stacked as channels; the operator maps them to the
``T_out`` output frames in one shot, as in the FNO-2D Navier-Stokes benchmark.
The latent is the output of the last Fourier layer, (B, hidden, H, W).
"""

from __future__ import annotations

import torch
from neuralop.models import FNO

from physforecast.layers import FiLM, stack_time, unstack_time

from .base import Backbone, Latent, check_passthrough, register_backbone


class FNOBackbone(Backbone):
    """FNO behind the backbone contract.

    Parameters
    ----------
    in_steps, out_steps, in_channels, out_channels, cond_dim
        See :class:`~physforecast.backbones.base.Backbone`.
    modes : int or tuple of int
        Fourier modes kept per axis (``n_modes``); a tuple ``(m_y, m_x)`` for non-square grids.
    hidden : int
        Width of the Fourier layers.
    n_layers : int
        Number of Fourier layers.
    **fno_kwargs
        Passed to :class:`neuralop.models.FNO` unchanged (``factorization``, ``rank``, ``norm``...).
    """

    paper = "Li et al. 2021, Fourier Neural Operator for Parametric PDEs (ICLR)"

    def __init__(
        self,
        in_steps: int,
        out_steps: int,
        in_channels: int,
        out_channels: int | None = None,
        cond_dim: int = 0,
        modes: int | tuple[int, int] = 12,
        hidden: int = 32,
        n_layers: int = 4,
        **fno_kwargs,
    ) -> None:
        super().__init__(in_steps, out_steps, in_channels, out_channels, cond_dim)
        taken = ("n_modes", "in_channels", "out_channels", "hidden_channels", "n_layers")
        check_passthrough("fno", FNOBackbone.__init__, fno_kwargs, FNO, taken)
        n_modes = (modes, modes) if isinstance(modes, int) else tuple(modes)
        self.fno = FNO(
            n_modes=n_modes,
            in_channels=in_steps * self.in_channels,
            out_channels=out_steps * self.out_channels,
            hidden_channels=hidden,
            n_layers=n_layers,
            **fno_kwargs,
        )
        self.film = FiLM(cond_dim, hidden) if cond_dim else None

    def encode(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> Latent:
        """(B, T_in, C, H, W) -> Latent(z=(B, hidden, H', W')), H' = H plus domain padding."""
        self.check_input(x, cond)
        fno = self.fno
        h = stack_time(x)
        if fno.positional_embedding is not None:
            h = fno.positional_embedding(h)
        h = fno.lifting(h)
        if self.film is not None:
            h = self.film(h, cond)
        if fno.domain_padding is not None:
            h = fno.domain_padding.pad(h)
        for i in range(fno.n_layers):
            h = fno.fno_blocks(h, i)
        return Latent(h)

    def decode(self, latent: Latent, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Latent -> (B, T_out, C_out, H, W)."""
        h = latent.z
        if self.fno.domain_padding is not None:
            h = self.fno.domain_padding.unpad(h)
        return unstack_time(self.fno.projection(h), self.out_steps)


@register_backbone("fno", paper=FNOBackbone.paper, source="neuraloperator")
def fno(**kwargs) -> FNOBackbone:
    """Build an :class:`FNOBackbone`; see its parameters."""
    return FNOBackbone(**kwargs)
