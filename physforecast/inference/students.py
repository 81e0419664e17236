"""The shallow student network of Academus / student parallelism.

A student is a stack of ``depth`` convolutions (SiLU between them) that maps the stacked
history to a residual the ensemble adds up::

    x (B, C_in, H, W)  [+ cond (B, P) broadcast as P constant planes]
      -> conv(k) -> SiLU -> ... -> conv(k)  ->  (B, C_out, H, W)

``C_in`` is ``T_in * C`` (the frames stacked as channels) and ``C_out`` is either the
forecast ``T_out * C_out`` or the width of the teacher's latent. The last convolution
starts at zero (weight and bias), so a new student adds nothing until it is trained and
adding it can never make the ensemble worse.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from physforecast.layers import check_padding_mode, conv3x3

__all__ = ["StudentSpec", "Student"]


@dataclass(frozen=True)
class StudentSpec:
    """The structure of one student (all students of an ensemble share it).

    Attributes
    ----------
    in_channels : int
        Channels of the stacked input, ``T_in * C``.
    out_channels : int
        Channels of the output: ``T_out * C_out``, or the teacher latent's width ``D``.
    width : int
        Channels of the hidden layers.
    depth : int
        Number of convolutions (2: the two-layer student of the paper).
    kernel_size : int
        Odd kernel size of every convolution.
    cond_dim : int
        Physical parameters ``P`` appended to the input as constant planes (0: none).
    padding_mode : str
        ``'zeros'``, ``'circular'`` (periodic domains), ``'reflect'`` or ``'replicate'``.
    """

    in_channels: int
    out_channels: int
    width: int = 32
    depth: int = 2
    kernel_size: int = 3
    cond_dim: int = 0
    padding_mode: str = "zeros"

    def __post_init__(self) -> None:
        for name in ("in_channels", "out_channels", "width", "depth"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"StudentSpec.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(
                f"StudentSpec.kernel_size must be a positive odd number, got {self.kernel_size!r}"
            )
        if self.cond_dim < 0:
            raise ValueError(f"StudentSpec.cond_dim must be >= 0, got {self.cond_dim!r}")
        check_padding_mode(self.padding_mode)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (saved in ``students.json``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StudentSpec:
        """The spec saved by :meth:`to_dict`; unknown keys raise a ``ValueError``."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown student spec key(s) {unknown}; expected {sorted(known)}")
        return cls(**d)


class Student(nn.Module):
    """A ``depth``-layer convolutional student whose last layer starts at zero.

    Parameters
    ----------
    spec : StudentSpec
        Channels, width, depth, kernel, conditioning and padding.

    Examples
    --------
    >>> s = Student(StudentSpec(in_channels=4, out_channels=2, width=8))
    >>> s(torch.randn(3, 4, 16, 16)).abs().max().item()  # zero until trained
    0.0
    """

    def __init__(self, spec: StudentSpec) -> None:
        super().__init__()
        self.spec = spec
        widths = [spec.in_channels + spec.cond_dim] + [spec.width] * (spec.depth - 1)
        widths.append(spec.out_channels)
        self.layers = nn.ModuleList(
            conv3x3(
                widths[i],
                widths[i + 1],
                kernel_size=spec.kernel_size,
                padding_mode=spec.padding_mode,
            )
            for i in range(spec.depth)
        )
        self.act = nn.SiLU()
        nn.init.zeros_(self.layers[-1].weight)
        nn.init.zeros_(self.layers[-1].bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C_in, H, W) and ``cond`` (B, P) -> (B, C_out, H, W)."""
        if self.spec.cond_dim:
            if cond is None:
                raise ValueError(
                    f"this student is conditioned on {self.spec.cond_dim} parameters; pass cond"
                )
            planes = cond[:, :, None, None].to(x.dtype).expand(-1, -1, *x.shape[-2:])
            x = torch.cat([x, planes], dim=1)
        h = x
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = self.act(h)
        return h

    def extra_repr(self) -> str:
        s = self.spec
        return (
            f"depth={s.depth}, width={s.width}, kernel_size={s.kernel_size}, cond_dim={s.cond_dim}"
        )
