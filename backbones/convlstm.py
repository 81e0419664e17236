"""ConvLSTM encoder-forecaster (Shi et al. 2015, "Convolutional LSTM Network: A Machine
Learning Approach for Precipitation Nowcasting", NeurIPS).

A stack of ConvLSTM cells (the encoder) reads the ``T_in`` frames; its final states
initialise a second stack (the forecaster), which unrolls ``T_out`` steps without input,
and a 1x1 convolution over the concatenated hidden states of all forecaster layers
emits each frame, as in the paper. Frames may first be folded into ``patch x patch``
patches (space-to-depth), as the paper does for its radar data. Peephole terms are
omitted (as in most modern implementations), which keeps the model grid-size agnostic.

Shapes (``L = n_layers``, ``p = patch``, ``h = H / p``, ``w = W / p``)::

    x (B, T_in, C_in, H, W) -> frames (B, C_in*p*p, h, w) -> embed (B, hidden, h, w)
    encoder stack over T_in steps -> z = cat(h_1, c_1, ..., h_L, c_L)  (B, 2*L*hidden, h, w)
    forecaster stack from z over T_out steps -> head -> y (B, T_out, C_out, H, W)

The latent ``z`` holds the final hidden and cell states of every encoder layer, so the
forecast is a function of ``z`` (and ``cond``) alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from physforecast.layers import FiLM, conv3x3

from .base import Backbone, Latent, check_divisible, register_backbone


class ConvLSTMCell(nn.Module):
    """One ConvLSTM cell (Shi et al. 2015, eq. 3 without peepholes).

    ``[i, f, g, o] = conv([x, h])``;  ``c' = sigmoid(f) * c + sigmoid(i) * tanh(g)``;
    ``h' = sigmoid(o) * tanh(c')``. ``x`` may be ``None`` (a forecaster cell without input).

    Parameters
    ----------
    in_channels : int
        Channels of the input ``x`` (B, in_channels, h, w); 0 for an input-free cell.
    hidden : int
        Channels of ``h`` and ``c`` (B, hidden, h, w).
    kernel_size : int
        Odd kernel size of the gate convolution.
    padding_mode : str
        Padding of the gate convolution; ``'circular'`` for periodic domains.
    """

    def __init__(
        self, in_channels: int, hidden: int, kernel_size: int = 3, padding_mode: str = "zeros"
    ) -> None:
        super().__init__()
        self.in_channels, self.hidden = in_channels, hidden
        self.gates = conv3x3(
            in_channels + hidden, 4 * hidden, kernel_size=kernel_size, padding_mode=padding_mode
        )
        with torch.no_grad():  # forget-gate bias 1: remember by default (Jozefowicz et al. 2015)
            self.gates.bias[hidden : 2 * hidden].fill_(1.0)

    def forward(
        self, x: torch.Tensor | None, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: ``x`` (B, in_channels, h, w) or None, ``(h, c)`` -> new ``(h, c)``."""
        h, c = state
        inp = h if x is None else torch.cat([x, h], dim=1)
        i, f, g, o = self.gates(inp).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class ConvLSTMBackbone(Backbone):
    """ConvLSTM encoder-forecaster behind the backbone contract.

    Parameters
    ----------
    in_steps, out_steps, in_channels, out_channels, cond_dim
        See :class:`~physforecast.backbones.base.Backbone`.
    hidden : int
        Channels of every ConvLSTM layer's state.
    n_layers : int
        Cells per stack (encoder and forecaster).
    kernel_size : int
        Gate convolution size.
    patch : int
        Space-to-depth factor; ``H`` and ``W`` must be divisible by it.
    padding_mode : str
        Convolution padding; ``'circular'`` for periodic domains.
    """

    paper = "Shi et al. 2015, Convolutional LSTM Network (NeurIPS)"

    def __init__(
        self,
        in_steps: int,
        out_steps: int,
        in_channels: int,
        out_channels: int | None = None,
        cond_dim: int = 0,
        hidden: int = 16,
        n_layers: int = 2,
        kernel_size: int = 3,
        patch: int = 1,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__(in_steps, out_steps, in_channels, out_channels, cond_dim)
        if n_layers < 1 or patch < 1:
            raise ValueError(f"n_layers and patch must be >= 1; got {n_layers}, {patch}")
        self.hidden, self.n_layers, self.patch = hidden, n_layers, patch
        self.embed = conv3x3(self.in_channels * patch**2, hidden, padding_mode=padding_mode)
        self.film_in = FiLM(cond_dim, hidden) if cond_dim else None
        self.encoder = nn.ModuleList(
            ConvLSTMCell(hidden, hidden, kernel_size, padding_mode) for _ in range(n_layers)
        )
        self.forecaster = nn.ModuleList(
            ConvLSTMCell(0 if i == 0 else hidden, hidden, kernel_size, padding_mode)
            for i in range(n_layers)
        )
        self.film_out = FiLM(cond_dim, n_layers * hidden) if cond_dim else None
        self.head = nn.Conv2d(n_layers * hidden, self.out_channels * patch**2, kernel_size=1)

    def encode(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> Latent:
        """(B, T_in, C_in, H, W) -> Latent(z=(B, 2*n_layers*hidden, H/patch, W/patch))."""
        self.check_input(x, cond)
        check_divisible(type(self).__name__, tuple(x.shape[-2:]), self.patch)
        e = self.embed(F.pixel_unshuffle(x.flatten(0, 1), self.patch))
        e = e.reshape(x.shape[0], x.shape[1], *e.shape[1:])
        zeros = e.new_zeros(e.shape[0], self.hidden, *e.shape[-2:])
        states = [(zeros, zeros)] * self.n_layers
        for t in range(self.in_steps):
            inp = e[:, t] if self.film_in is None else self.film_in(e[:, t], cond)
            for i, cell in enumerate(self.encoder):
                states[i] = cell(inp, states[i])
                inp = states[i][0]
        return Latent(torch.cat([s for hc in states for s in hc], dim=1))

    def decode(self, latent: Latent, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Latent(z=(B, 2*n_layers*hidden, h, w)) -> (B, T_out, C_out, H, W)."""
        hc = latent.z.chunk(2 * self.n_layers, dim=1)
        states = [(hc[2 * i], hc[2 * i + 1]) for i in range(self.n_layers)]
        frames = []
        for _ in range(self.out_steps):
            inp = None
            for i, cell in enumerate(self.forecaster):
                states[i] = cell(inp, states[i])
                inp = states[i][0]
            h = torch.cat([s[0] for s in states], dim=1)
            if self.film_out is not None:
                h = self.film_out(h, cond)
            frames.append(F.pixel_shuffle(self.head(h), self.patch))
        return torch.stack(frames, dim=1)


@register_backbone("convlstm", paper=ConvLSTMBackbone.paper, source="physforecast")
def convlstm(**kwargs) -> ConvLSTMBackbone:
    """Build a :class:`ConvLSTMBackbone`; see its parameters."""
    return ConvLSTMBackbone(**kwargs)
