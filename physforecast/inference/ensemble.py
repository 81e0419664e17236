"""A boosted ensemble of shallow students behind the teacher's ``(x, cond) -> y`` contract.

The students are summed (the boosting ensemble) and the sum is either the forecast itself
or, with stacking, a stand-in for the teacher's latent that the teacher's own decoder maps
to the forecast::

    h = S_1(x) + ... + S_n(x)                          (B, D, H, W), one parallel call
    y = unstack(h)                                      output mode: D = T_out * C_out
    y = teacher.decode(Latent(h), cond)                 stacking: D = the latent's width

Shapes are those of a backbone: ``x`` (B, T_in, C, H, W) and ``cond`` (B, P) in, ``y``
(B, T_out, C_out, H, W) out, all in normalized units, so a
:class:`physforecast.Forecaster` wraps the ensemble like any backbone. ``n_active`` (an
attribute, or an argument of :meth:`StudentEnsemble.forward`) keeps the first ``n``
students: those added last, which fit the smallest residuals, are dropped first.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from physforecast.backbones.base import Latent
from physforecast.layers import stack_time, unstack_time

from .parallel import StudentGroup, select_members
from .students import Student, StudentSpec

__all__ = ["StudentEnsemble"]


class StudentEnsemble(nn.Module):
    """Shallow students summed in one parallel call, optionally decoded by the teacher.

    Parameters
    ----------
    spec : StudentSpec
        The structure every student shares. ``spec.in_channels`` must be
        ``in_steps * in_channels``; ``spec.out_channels`` must be ``out_steps *
        out_channels`` without a decoder, the latent width with one.
    in_steps, out_steps : int
        ``T_in`` and ``T_out``.
    in_channels : int
        Variables per frame ``C``.
    out_channels : int, optional
        Output variables per frame; ``in_channels`` by default.
    n_students : int
        Students to create now (zero output until trained); more come with
        :meth:`add_student`.
    decoder : nn.Module, optional
        A backbone whose ``decode(Latent(h), cond)`` maps the students' sum to the forecast
        (stacking distillation). Frozen: its parameters do not require gradients.
    vectorize : bool
        Run the students with ``vmap`` (``True``) or in a loop; both give the same sum.

    Attributes
    ----------
    n_active : int or None
        Students used by default (the first ``n_active``); ``None`` uses all.
    """

    def __init__(
        self,
        spec: StudentSpec,
        *,
        in_steps: int,
        out_steps: int,
        in_channels: int,
        out_channels: int | None = None,
        n_students: int = 0,
        decoder: nn.Module | None = None,
        vectorize: bool = True,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.in_steps, self.out_steps = int(in_steps), int(out_steps)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels if out_channels is not None else in_channels)
        self.cond_dim = int(spec.cond_dim)
        if spec.in_channels != self.in_steps * self.in_channels:
            raise ValueError(
                f"the students take {spec.in_channels} input channels; T_in * C = "
                f"{self.in_steps} * {self.in_channels} = {self.in_steps * self.in_channels}"
            )
        if decoder is None and spec.out_channels != self.out_steps * self.out_channels:
            raise ValueError(
                f"without a decoder the students must give T_out * C_out = "
                f"{self.out_steps * self.out_channels} channels, not {spec.out_channels}"
            )
        if decoder is not None:
            if not callable(getattr(decoder, "decode", None)):
                raise TypeError(
                    f"the decoder must have decode(latent, cond) (a backbone); got "
                    f"{type(decoder).__name__}"
                )
            decoder.requires_grad_(False)
            decoder.eval()
        self.decoder = decoder
        self.group = StudentGroup(vectorize=vectorize)
        self._n_active: int | None = None
        for _ in range(int(n_students)):
            self.add_student()

    # -- students -------------------------------------------------------------------
    @property
    def n_students(self) -> int:
        """Number of students ``K``."""
        return len(self.group)

    @property
    def stacked(self) -> bool:
        """Whether the students stand in for the teacher's latent (a decoder is attached)."""
        return self.decoder is not None

    @property
    def n_active(self) -> int | None:
        return self._n_active

    @n_active.setter
    def n_active(self, value: int | None) -> None:
        if value is not None:
            select_members(self.n_students, int(value))  # validates the range
            value = int(value)
        self._n_active = value

    @property
    def students(self) -> Sequence[Student]:
        """The students in the order they were added."""
        return list(self.group.students)

    def add_student(self) -> Student:
        """Append a new student (its output is zero until it is trained) and return it."""
        student = Student(self.spec)
        self.group.append(student)
        return student

    def train(self, mode: bool = True) -> StudentEnsemble:
        """Set train/eval mode of the students; the decoder stays in eval mode."""
        super().train(mode)
        if self.decoder is not None:
            self.decoder.eval()
        return self

    # -- forward --------------------------------------------------------------------
    def latent(
        self,
        x: torch.Tensor,
        cond: torch.Tensor | None = None,
        *,
        n_active: int | None = None,
        members: Sequence[int] | None = None,
        vectorize: bool | None = None,
    ) -> torch.Tensor:
        """The students' sum ``h`` (B, D, H, W) for ``x`` (B, T_in, C, H, W), before decoding."""
        if x.ndim != 5 or x.shape[1] != self.in_steps or x.shape[2] != self.in_channels:
            raise ValueError(
                f"StudentEnsemble expects x of shape (B, {self.in_steps}, {self.in_channels}, H, W); "
                f"got {tuple(x.shape)}"
            )
        if members is None and n_active is None:
            n_active = self._n_active
        chosen = select_members(self.n_students, n_active, members)
        xs = stack_time(x)
        cond = cond if self.cond_dim else None
        if not chosen:
            return xs.new_zeros(xs.shape[0], self.spec.out_channels, *xs.shape[-2:])
        return self.group(xs, cond, members=chosen, vectorize=vectorize)

    def decode(self, h: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The forecast (B, T_out, C_out, H, W) from a students' sum ``h`` (B, D, H, W)."""
        if self.decoder is None:
            return unstack_time(h, self.out_steps)
        return self.decoder.decode(Latent(h), cond if self.cond_dim else None)

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor | None = None,
        *,
        n_active: int | None = None,
        members: Sequence[int] | None = None,
        vectorize: bool | None = None,
    ) -> torch.Tensor:
        """Forecast (B, T_out, C_out, H, W) from ``x`` (B, T_in, C, H, W) and ``cond`` (B, P).

        Parameters
        ----------
        n_active : int, optional
            Use the first ``n_active`` students (default: the attribute, else all).
        members : sequence of int, optional
            Use exactly these students instead (for ablations).
        vectorize : bool, optional
            One ``vmap`` call or a loop (default: the group's setting).
        """
        h = self.latent(x, cond, n_active=n_active, members=members, vectorize=vectorize)
        return self.decode(h, cond)

    def extra_repr(self) -> str:
        return (
            f"n_students={self.n_students}, n_active={self._n_active}, stacked={self.stacked}, "
            f"in_steps={self.in_steps}, out_steps={self.out_steps}, in_channels={self.in_channels}"
        )
