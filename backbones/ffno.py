"""Factorized Fourier Neural Operator (Tran, Mathews, Xie and Ong 2023, "Factorized Fourier
Neural Operators", ICLR).

F-FNO replaces FNO's dense 2-D spectral convolution by one 1-D spectral convolution per
axis, summed, and moves the nonlinearity into a residual feed-forward network::

    K(z)  = sum_d IFFT_d( R_d . FFT_d(z) )          d in {y, x}, R_d: (D, D, m_d) complex
    z'    = z + W_2 act(W_1 K(z) + b_1) + b_2

Shapes: the ``T_in`` input frames are stacked as channels, (B, T_in*C, H, W); with the
grid coordinates appended they are lifted to (B, D, H, W), pass ``n_layers`` factorized
layers and are projected to (B, T_out*C_out, H, W). The latent is the output of the last
factorized layer, (B, D, H, W). Any grid size works (modes are clipped to what the grid
holds), and the spectral layers are discretization-invariant on band-limited inputs.
"""

from __future__ import annotations

import math

import torch
from timm.layers import Mlp
from torch import nn

from physforecast.layers import FiLM, append_coordinates, stack_time, unstack_time

from .base import Backbone, Latent, register_backbone

__all__ = ["FactorizedSpectralConv2d", "FFNOLayer", "FFNOBackbone"]


class FactorizedSpectralConv2d(nn.Module):
    """The factorized spectral operator ``K`` of F-FNO on (B, D, H, W) maps.

    Along each axis separately: real FFT, keep the lowest ``m`` modes, mix channels with
    a complex weight per mode, inverse FFT; the two axis results are summed. The FFTs run
    in fp32 whatever the input dtype.

    Parameters
    ----------
    channels : int
        Feature width ``D`` (input and output).
    modes : tuple of int
        Fourier modes kept along ``(y, x)``; clipped to ``size // 2 + 1`` of the grid.
    """

    def __init__(self, channels: int, modes: tuple[int, int]) -> None:
        super().__init__()
        self.channels = channels
        self.modes = tuple(int(m) for m in modes)
        # xavier-like scale for a (D_in, D_out, m) complex kernel
        self.weight_y = nn.Parameter(self._init(channels, self.modes[0]))
        self.weight_x = nn.Parameter(self._init(channels, self.modes[1]))

    @staticmethod
    def _init(channels: int, modes: int) -> torch.Tensor:
        std = math.sqrt(1.0 / (2 * channels * modes))
        return torch.randn(channels, channels, modes, 2) * std

    def _filter_axis(self, z: torch.Tensor, weight: torch.Tensor, dim: int) -> torch.Tensor:
        """Filter (B, D, H, W) along ``dim`` (-1: x, -2: y) with ``weight`` (D, D, m, 2)."""
        line = z if dim == -1 else z.transpose(-1, -2)  # filtered axis last: (B, D, L, n)
        n = line.shape[-1]
        spec = torch.fft.rfft(line, dim=-1)  # (B, D, L, n // 2 + 1)
        b, d, length, n_freq = spec.shape
        m = min(weight.shape[2], n_freq)
        # one (B*L, D_in) @ (D_in, D_out) product per kept mode
        s = spec[..., :m].permute(3, 0, 2, 1).reshape(m, b * length, d)
        w = torch.view_as_complex(weight[:, :, :m].permute(2, 0, 1, 3).contiguous())
        out = torch.bmm(s, w).reshape(m, b, length, -1).permute(1, 3, 2, 0)  # (B, D, L, m)
        # irfft zero-pads the truncated spectrum back to n // 2 + 1 modes
        out = torch.fft.irfft(out, n=n, dim=-1)
        return out if dim == -1 else out.transpose(-1, -2)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W) -> (B, D, H, W)."""
        dtype = z.dtype
        z = z.float()
        out = self._filter_axis(z, self.weight_y, -2) + self._filter_axis(z, self.weight_x, -1)
        return out.to(dtype)


class FFNOLayer(nn.Module):
    """One F-FNO layer, ``z + FF(K(z))`` with a pointwise two-layer feed-forward ``FF``.

    Parameters
    ----------
    channels : int
        Feature width ``D``.
    modes : tuple of int
        Fourier modes kept along ``(y, x)``.
    expansion : float
        Hidden width of the feed-forward network as a multiple of ``D``.
    """

    def __init__(self, channels: int, modes: tuple[int, int], expansion: float = 2.0) -> None:
        super().__init__()
        self.spectral = FactorizedSpectralConv2d(channels, modes)
        self.ff = Mlp(channels, int(channels * expansion), channels, use_conv=True)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W) -> (B, D, H, W)."""
        return z + self.ff(self.spectral(z))


class FFNOBackbone(Backbone):
    """F-FNO behind the backbone contract.

    Parameters
    ----------
    in_steps, out_steps, in_channels, out_channels, cond_dim
        See :class:`~physforecast.backbones.base.Backbone`.
    modes : int or tuple of int
        Fourier modes kept per axis; a tuple ``(m_y, m_x)`` for non-square grids.
    hidden : int
        Feature width ``D`` of the factorized layers.
    n_layers : int
        Number of factorized layers.
    expansion : float
        Feed-forward width as a multiple of ``hidden``.
    projection : int
        Hidden width of the pointwise output projection.
    """

    paper = "Tran et al. 2023, Factorized Fourier Neural Operators (ICLR)"

    def __init__(
        self,
        in_steps: int,
        out_steps: int,
        in_channels: int,
        out_channels: int | None = None,
        cond_dim: int = 0,
        modes: int | tuple[int, int] = 8,
        hidden: int = 32,
        n_layers: int = 4,
        expansion: float = 2.0,
        projection: int = 64,
    ) -> None:
        super().__init__(in_steps, out_steps, in_channels, out_channels, cond_dim)
        n_modes = (modes, modes) if isinstance(modes, int) else tuple(modes)
        if len(n_modes) != 2 or min(n_modes) < 1:
            raise ValueError(
                f"FFNO modes must be a positive int or a pair (m_y, m_x); got {modes!r}"
            )
        self.hidden = hidden
        self.lifting = nn.Conv2d(self.in_steps * self.in_channels + 2, hidden, kernel_size=1)
        self.film = FiLM(cond_dim, hidden) if cond_dim else None
        self.layers = nn.ModuleList(FFNOLayer(hidden, n_modes, expansion) for _ in range(n_layers))
        self.projection = Mlp(hidden, projection, self.out_steps * self.out_channels, use_conv=True)

    def encode(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> Latent:
        """(B, T_in, C, H, W) -> Latent(z=(B, hidden, H, W)), the last layer's features."""
        self.check_input(x, cond)
        h = self.lifting(append_coordinates(stack_time(x)))
        if self.film is not None:
            h = self.film(h, cond)
        for layer in self.layers:
            h = layer(h)
        return Latent(h)

    def decode(self, latent: Latent, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Latent -> (B, T_out, C_out, H, W) by the pointwise projection."""
        return unstack_time(self.projection(latent.z), self.out_steps)


@register_backbone("ffno", paper=FFNOBackbone.paper, source="physforecast")
def ffno(**kwargs) -> FFNOBackbone:
    """Build an :class:`FFNOBackbone`; see its parameters."""
    return FFNOBackbone(**kwargs)
