"""U-shaped Neural Operator (Rahman, Ross and Azizzadenesheli 2023, "U-NO: U-shaped Neural
Operators", TMLR), wrapping :class:`neuralop.models.UNO`.

The ``T_in`` input frames are stacked as channels, (B, T_in*C, H, W), lifted to
(B, hidden, H, W) and passed through Fourier layers that first contract the grid
(scaling 0.5) and then expand it again (scaling 2), with horizontal skip connections
between layers of equal resolution. The latent is the output of the last operator block
before the projection, (B, channels[-1], H', W') (H' = H plus domain padding, if any);
the projection maps it to (B, T_out*C_out, H, W).

The scalings must multiply to 1 (the forecast lives on the input grid), and H and W
must be divisible by the total contraction (2 for the default scalings) so every level
is an exact coarsening.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence

import torch
from neuralop.layers.resample import resample
from neuralop.models import UNO

from physforecast.layers import FiLM, stack_time, unstack_time

from .base import Backbone, Latent, check_divisible, check_passthrough, register_backbone

__all__ = ["UNOBackbone"]


def _per_layer(value: int | float | Sequence, n_layers: int, what: str) -> list:
    """Broadcast a scalar option to one entry per layer, or check a per-layer sequence."""
    if isinstance(value, (int, float)):
        return [value] * n_layers
    value = list(value)
    if len(value) != n_layers:
        raise ValueError(f"UNO {what} needs one entry per layer ({n_layers}); got {len(value)}")
    return value


class UNOBackbone(Backbone):
    """U-NO behind the backbone contract.

    Parameters
    ----------
    in_steps, out_steps, in_channels, out_channels, cond_dim
        See :class:`~physforecast.backbones.base.Backbone`.
    hidden : int
        Width after lifting.
    channels : sequence of int, optional
        Output width of each operator layer; defaults to
        ``(hidden, 2*hidden, 2*hidden, hidden)`` for four layers.
    scalings : sequence of float
        Grid scaling of each layer (isotropic); must multiply to 1. The number of layers
        is ``len(scalings)``.
    modes : int or sequence
        Fourier modes per axis, one value for all layers or one per layer (an int or a
        ``(m_y, m_x)`` pair each); clipped to what each level's grid holds.
    lifting, projection : int, optional
        Hidden widths of the lifting and projection channel MLPs; ``2 * hidden`` by default.
    **uno_kwargs
        Passed to :class:`neuralop.models.UNO` unchanged (``domain_padding``, ``norm``,
        ``horizontal_skips_map``...); ``channel_mlp_skip`` defaults to ``"linear"``.
    """

    paper = "Rahman, Ross & Azizzadenesheli 2023, U-NO: U-shaped Neural Operators (TMLR)"

    def __init__(
        self,
        in_steps: int,
        out_steps: int,
        in_channels: int,
        out_channels: int | None = None,
        cond_dim: int = 0,
        hidden: int = 16,
        channels: Sequence[int] | None = None,
        scalings: Sequence[float] = (1.0, 0.5, 2.0, 1.0),
        modes: int | Sequence = 6,
        lifting: int | None = None,
        projection: int | None = None,
        **uno_kwargs,
    ) -> None:
        super().__init__(in_steps, out_steps, in_channels, out_channels, cond_dim)
        taken = (
            "in_channels",
            "out_channels",
            "hidden_channels",
            "lifting_channels",
            "projection_channels",
            "n_layers",
            "uno_out_channels",
            "uno_n_modes",
            "uno_scalings",
        )
        check_passthrough("uno", UNOBackbone.__init__, uno_kwargs, UNO, taken)
        scalings = [float(s) for s in scalings]
        n_layers = len(scalings)
        if n_layers < 1:
            raise ValueError("UNO needs at least one layer (a non-empty scalings)")
        if not math.isclose(math.prod(scalings), 1.0):
            raise ValueError(
                f"UNO scalings must multiply to 1 so the forecast lives on the input grid; "
                f"got {scalings} (product {math.prod(scalings):g})"
            )
        if channels is None:
            channels = [hidden * (1 if i in (0, n_layers - 1) else 2) for i in range(n_layers)]
        channels = [int(c) for c in _per_layer(channels, n_layers, "channels")]
        n_modes = [
            [m, m] if isinstance(m, int) else list(m) for m in _per_layer(modes, n_layers, "modes")
        ]
        # coarsest level relative to the input grid, as a divisibility factor
        levels = [math.prod(scalings[: i + 1]) for i in range(n_layers)]
        self.size_factor = max(1, round(1.0 / min(levels)))
        # soft-gating (neuralop's default) needs equal widths in and out of every block,
        # which the concatenated horizontal skips never give; neuralop's own tests use linear
        uno_kwargs.setdefault("channel_mlp_skip", "linear")
        with contextlib.redirect_stdout(io.StringIO()):  # neuralop 2.0 prints its skip types
            self.uno = UNO(
                in_channels=self.in_steps * self.in_channels,
                out_channels=self.out_steps * self.out_channels,
                hidden_channels=hidden,
                lifting_channels=lifting or 2 * hidden,
                projection_channels=projection or 2 * hidden,
                n_layers=n_layers,
                uno_out_channels=channels,
                uno_n_modes=n_modes,
                uno_scalings=[[s, s] for s in scalings],
                **uno_kwargs,
            )
        self.film = FiLM(cond_dim, hidden) if cond_dim else None

    def encode(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> Latent:
        """(B, T_in, C, H, W) -> Latent(z=(B, channels[-1], H', W')), before the projection."""
        self.check_input(x, cond)
        check_divisible("UNO", tuple(x.shape[-2:]), self.size_factor)
        uno = self.uno
        h = stack_time(x)
        if uno.positional_embedding is not None:
            h = uno.positional_embedding(h)
        h = uno.lifting(h)
        if self.film is not None:
            h = self.film(h, cond)
        if uno.domain_padding is not None:
            h = uno.domain_padding.pad(h)
        output_shape = [
            int(round(n * s)) for n, s in zip(h.shape[-2:], uno.end_to_end_scaling_factor)
        ]
        skips: dict[int, torch.Tensor] = {}
        for i in range(uno.n_layers):
            if i in uno.horizontal_skips_map:
                skip = skips[uno.horizontal_skips_map[i]]
                factors = [m / n for m, n in zip(h.shape[-2:], skip.shape[-2:])]
                h = torch.cat([h, resample(skip, factors, [-2, -1])], dim=1)
            h = uno.fno_blocks[i](h, output_shape=output_shape if i == uno.n_layers - 1 else None)
            if i in uno.horizontal_skips_map.values():
                skips[i] = uno.horizontal_skips[str(i)](h)
        return Latent(h)

    def decode(self, latent: Latent, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Latent -> (B, T_out, C_out, H, W)."""
        h = latent.z
        if self.uno.domain_padding is not None:
            h = self.uno.domain_padding.unpad(h)
        return unstack_time(self.uno.projection(h), self.out_steps)


@register_backbone("uno", paper=UNOBackbone.paper, source="neuraloperator")
def uno(**kwargs) -> UNOBackbone:
    """Build a :class:`UNOBackbone`; see its parameters."""
    return UNOBackbone(**kwargs)
