"""Running a group of students at once: one vectorized call, or a loop that gives the same sum.

Students of the same structure are evaluated together with
:func:`torch.func.stack_module_state` (their weights stacked along a new leading dim) and
:func:`torch.vmap` over :func:`torch.func.functional_call`, so the whole group is one call
whose depth is a single student's (convolutions become grouped convolutions). The loop
runs the students one after another and is the reference the vectorized path is tested
against; it is also what runs when gradients are needed (stacked weights are copies, so a
loss would not reach the students' own parameters).

Members are addressed by position: ``n_active=k`` is the first ``k`` (the students added
last are dropped first); ``members=[...]`` picks any subset.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state

__all__ = ["StudentGroup", "select_members"]


def select_members(
    n_students: int, n_active: int | None = None, members: Sequence[int] | None = None
) -> list[int]:
    """Positions of the students to run: ``members``, else the first ``n_active``, else all.

    Raises
    ------
    ValueError
        When both are given, ``n_active`` is outside ``0..n_students`` or a member is out
        of range.
    """
    if members is not None and n_active is not None:
        raise ValueError("pass n_active (a prefix) or members (a subset), not both")
    if members is not None:
        chosen = [int(m) for m in members]
        bad = [m for m in chosen if not 0 <= m < n_students]
        if bad:
            raise ValueError(f"student index(es) {bad} out of range for {n_students} students")
        return chosen
    if n_active is None:
        return list(range(n_students))
    if not 0 <= int(n_active) <= n_students:
        raise ValueError(f"n_active must be in 0..{n_students}, got {n_active}")
    return list(range(int(n_active)))


class StudentGroup(nn.Module):
    """Students of one structure, evaluated in parallel and summed.

    Parameters
    ----------
    students : iterable of nn.Module
        Modules with the same parameters and buffers (names and shapes), each mapping
        ``(x, cond)`` to a tensor of one shape.
    vectorize : bool
        Default for :meth:`forward`: one ``vmap`` call (``True``) or a loop.

    Examples
    --------
    >>> from physforecast.inference.students import Student, StudentSpec
    >>> spec = StudentSpec(in_channels=2, out_channels=2, width=4)
    >>> group = StudentGroup([Student(spec) for _ in range(3)])
    >>> group(torch.randn(5, 2, 8, 8), n_active=2).shape
    torch.Size([5, 2, 8, 8])
    """

    def __init__(self, students: Iterable[nn.Module] = (), *, vectorize: bool = True) -> None:
        super().__init__()
        self.students = nn.ModuleList()
        self.vectorize = bool(vectorize)
        # a parameter-free copy of one student that functional_call runs with stacked weights;
        # kept in a tuple so that it is not a submodule (not saved, not moved by .to())
        self._skeleton: tuple[nn.Module, ...] = ()
        for student in students:
            self.append(student)

    def __len__(self) -> int:
        return len(self.students)

    def append(self, student: nn.Module) -> None:
        """Add a student; it must have the structure of the ones already there."""
        if len(self.students):
            want = {k: tuple(v.shape) for k, v in self.students[0].state_dict().items()}
            got = {k: tuple(v.shape) for k, v in student.state_dict().items()}
            if want != got:
                raise ValueError(
                    "all students of a group need the same structure to run in one call; "
                    f"the new student's tensors {got} differ from {want}"
                )
        else:
            self._skeleton = (copy.deepcopy(student).to("meta"),)
        self.students.append(student)

    def outputs(
        self,
        x: torch.Tensor,
        cond: torch.Tensor | None = None,
        *,
        n_active: int | None = None,
        members: Sequence[int] | None = None,
        vectorize: bool | None = None,
    ) -> torch.Tensor:
        """Each chosen student's output, stacked: ``(N, *out_shape)`` for ``N`` chosen students."""
        chosen = select_members(len(self.students), n_active, members)
        if not chosen:
            raise ValueError("no student is chosen; the group has nothing to stack")
        vectorize = self.vectorize if vectorize is None else vectorize
        needs_grad = torch.is_grad_enabled() and any(
            p.requires_grad for i in chosen for p in self.students[i].parameters()
        )
        if not vectorize or needs_grad:
            return torch.stack([self.students[i](x, cond) for i in chosen])
        params, buffers = stack_module_state([self.students[i] for i in chosen])
        (skeleton,) = self._skeleton

        def one(p: dict, b: dict, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
            return functional_call(skeleton, (p, b), (x, cond))

        return torch.vmap(one, in_dims=(0, 0, None, None))(params, buffers, x, cond)

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor | None = None,
        *,
        n_active: int | None = None,
        members: Sequence[int] | None = None,
        vectorize: bool | None = None,
    ) -> torch.Tensor:
        """The sum of the chosen students' outputs, ``out_shape``; at least one must be chosen."""
        return self.outputs(x, cond, n_active=n_active, members=members, vectorize=vectorize).sum(0)
