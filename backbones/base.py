"""The backbone contract shared by every model in :mod:`physforecast.backbones`.

Every backbone maps a history of ``T_in`` frames to ``T_out`` future frames::

    forward(x, cond=None): (B, T_in, C_in, H, W) -> (B, T_out, C_out, H, W)

and splits at its natural latent, the place a VQ code bank can sit::

    encode(x, cond=None) -> Latent(z, skips)     z: (B, D, h, w) or (B, N, D)
    decode(latent, cond=None) -> (B, T_out, C_out, H, W)
    forward(x, cond) == decode(encode(x, cond), cond)

``cond`` is a ``(B, P)`` tensor of physical parameters (viscosity, Rayleigh number...);
models built with ``cond_dim=P > 0`` inject it by FiLM modulation. ``Latent.skips``
carries whatever the decoder needs besides ``z`` (U-Net skip connections, the input
grid size); a quantizer replaces ``z`` only (``latent._replace(z=q)``).

Backbones register themselves with :func:`register_backbone` and are built with
:func:`physforecast.create_backbone`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from physforecast.errors import check_options
from physforecast.registry import BACKBONES

__all__ = ["Backbone", "Latent", "register_backbone", "check_divisible", "check_passthrough"]


class Latent(NamedTuple):
    """A backbone's latent: the quantizable tensor ``z`` and pass-through ``skips``."""

    z: torch.Tensor
    skips: tuple[Any, ...] = ()


class Backbone(nn.Module):
    """Base class of all backbones.

    Parameters
    ----------
    in_steps, out_steps : int
        Number of input frames ``T_in`` and output frames ``T_out``.
    in_channels : int
        Variables per input frame ``C_in``.
    out_channels : int, optional
        Variables per output frame ``C_out``; defaults to ``in_channels``.
    cond_dim : int
        Number of physical parameters ``P`` in ``cond``; 0 means unconditioned.
    """

    paper: str = ""

    def __init__(
        self,
        in_steps: int,
        out_steps: int,
        in_channels: int,
        out_channels: int | None = None,
        cond_dim: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_steps", in_steps),
            ("out_steps", out_steps),
            ("in_channels", in_channels),
        ):
            if int(value) < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.in_steps = int(in_steps)
        self.out_steps = int(out_steps)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels if out_channels is not None else in_channels)
        self.cond_dim = int(cond_dim)
        self.n_spatial_dims = 2

    # -- the contract -------------------------------------------------------------
    def encode(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> Latent:
        """Map ``x`` (B, T_in, C_in, H, W) to the model's latent."""
        raise NotImplementedError

    def decode(self, latent: Latent, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Map a latent back to the forecast (B, T_out, C_out, H, W)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Forecast ``T_out`` frames from ``x`` (B, T_in, C_in, H, W)."""
        return self.decode(self.encode(x, cond), cond)

    # -- helpers for subclasses ---------------------------------------------------
    def check_input(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> None:
        """Raise a ``ValueError`` naming the mismatch when ``x`` or ``cond`` has the wrong shape."""
        name = type(self).__name__
        if x.ndim != 5:
            raise ValueError(f"{name} expects x of shape (B, T_in, C, H, W); got {tuple(x.shape)}")
        if x.shape[1] != self.in_steps or x.shape[2] != self.in_channels:
            raise ValueError(
                f"{name} was built for T_in={self.in_steps}, C={self.in_channels}; "
                f"got x of shape {tuple(x.shape)}"
            )
        if cond is not None:
            if self.cond_dim == 0:
                raise ValueError(
                    f"{name} was built with cond_dim=0 but received cond; build it with cond_dim=P"
                )
            if cond.ndim != 2 or cond.shape != (x.shape[0], self.cond_dim):
                raise ValueError(
                    f"{name} expects cond of shape (B, {self.cond_dim}) = ({x.shape[0]}, {self.cond_dim}); "
                    f"got {tuple(cond.shape)}"
                )

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Tensors only: drops the non-tensor ``_metadata`` entries neuraloperator models add."""
        state = super().state_dict(*args, **kwargs)
        for key in [k for k, v in state.items() if not isinstance(v, torch.Tensor)]:
            del state[key]
        return state

    def extra_repr(self) -> str:
        return (
            f"in_steps={self.in_steps}, out_steps={self.out_steps}, "
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, cond_dim={self.cond_dim}"
        )


def register_backbone(
    name: str, *, paper: str = "", **meta: Any
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a backbone factory under ``name`` with the paper it implements."""
    return BACKBONES.register(name, paper=paper, **meta)


def check_divisible(name: str, size: tuple[int, int], factor: int) -> None:
    """Raise a ``ValueError`` naming the allowed sizes when ``size`` is not divisible by ``factor``."""
    h, w = size
    if h % factor or w % factor:
        raise ValueError(
            f"{name} needs H and W divisible by {factor}; got H={h}, W={w}. "
            f"Allowed sizes are multiples of {factor}, e.g. {factor * max(1, h // factor)}x{factor * max(1, w // factor)}."
        )


def check_passthrough(
    name: str,
    own: Callable[..., Any],
    given: Mapping[str, Any],
    target: Callable[..., Any],
    taken: Iterable[str] = (),
) -> None:
    """Refuse an option that neither a backbone nor the library class it wraps takes.

    A backbone that passes ``**kwargs`` on to a library class (neuraloperator's ``FNO``)
    would otherwise fail with the library's ``TypeError``; this names the backbone, the
    config key and the closest valid option instead.

    Parameters
    ----------
    name : str
        The registered backbone name.
    own : callable
        The backbone's ``__init__`` (its named parameters are valid options).
    given : mapping
        The options passed on to ``target``.
    target : callable
        The wrapped class.
    taken : iterable of str
        ``target`` parameters the backbone sets itself (not options of the backbone).

    Raises
    ------
    OptionError
        Listing the valid options, with a suggestion.
    """
    taken = set(taken)
    mine = [p for p in inspect.signature(own).parameters if p not in ("self", "args", "kwargs")]
    theirs = [
        p.name
        for p in inspect.signature(target).parameters.values()
        if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    if any(p.kind is p.VAR_KEYWORD for p in inspect.signature(target).parameters.values()):
        return  # open-ended: the library decides
    valid = [p for p in mine if not p.endswith("_kwargs")] + [p for p in theirs if p not in taken]
    check_options(f"backbone {name!r}", given, valid, key="model.options")
