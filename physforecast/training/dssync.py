"""DS-Sync: divide-and-shuffle parameter averaging (Zhao et al., arXiv 2007.03298, INFOCOM'22).

Instead of averaging gradients over all ``N`` workers every step, DS-Sync splits the
workers into non-overlapping groups of ``g`` that average their *parameters* only within
the group, and reshuffles the groups so that information still spreads to everyone.
Each step is a multiplication of the stacked parameters by a block-diagonal, doubly
stochastic mixing matrix ``W_t``; the workers reach consensus when the product of the
``W_t`` over a few rounds mixes all of them.

Two schedules of partitions:

* :class:`GridSchedule`: ranks on a ``g x g x ... x g`` grid (``N = g^d``); round ``r``
  averages along grid axis ``r mod d``. After ``d`` rounds every worker holds the exact
  global mean (for ``N = 4 = 2 x 2``: rows, then columns).
* :class:`ShuffleSchedule`: a seeded random partition per round, drawn from a cycle of
  ``cycle`` partitions (every process group is created once, up front).

:class:`DSSyncAverager` (a torch ``ModelAverager``) runs a schedule on real processes,
averaging within ``torch.distributed.new_group`` subgroups with
:func:`average_parameters`, :func:`simulate_mixing` on stacked tensors without processes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, TypeAlias

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.algorithms.model_averaging.averagers import ModelAverager

from physforecast.registry import Registry

__all__ = [
    "GridSchedule",
    "ShuffleSchedule",
    "GROUP_SCHEDULES",
    "DSSyncAverager",
    "mixing_matrix",
    "simulate_mixing",
    "consensus_distance",
    "params_to_average",
    "average_parameters",
]

# A partition of ranks 0..N-1 into disjoint groups, each a sorted tuple of ranks.
Partition: TypeAlias = tuple[tuple[int, ...], ...]

#: Group schedules by name; ``GROUP_SCHEDULES.create(name, world_size=, group_size=, seed=)``.
GROUP_SCHEDULES = Registry("group schedule")


def _check_sizes(world_size: int, group_size: int) -> None:
    if world_size < 1 or group_size < 1:
        raise ValueError(f"world_size and group_size must be >= 1; got {world_size}, {group_size}")
    if world_size % group_size:
        raise ValueError(
            f"world size {world_size} is not a multiple of the DS-Sync group size {group_size}; "
            "choose a group size that divides the number of processes"
        )


class GridSchedule:
    """Average along one axis of a ``g x ... x g`` grid of ranks per round.

    Parameters
    ----------
    world_size : int
        ``N``, a power of ``group_size``.
    group_size : int
        ``g`` >= 2.
    seed : int, optional
        Place the ranks on the grid in a seeded random order (``None``: rank order).
    """

    def __init__(self, world_size: int, group_size: int, seed: int | None = None) -> None:
        _check_sizes(world_size, group_size)
        if group_size < 2:
            raise ValueError("a grid schedule needs group_size >= 2")
        dims = round(math.log(world_size, group_size))
        if dims < 1 or group_size**dims != world_size:
            raise ValueError(
                f"a grid schedule needs world_size = group_size ** d; {world_size} is not a power "
                f"of {group_size} (use ShuffleSchedule)"
            )
        self.world_size, self.group_size, self.dims = world_size, group_size, dims
        order = np.arange(world_size)
        if seed is not None:
            order = np.random.default_rng(seed).permutation(world_size)
        grid = order.reshape((group_size,) * dims)
        self._partitions: list[Partition] = []
        for axis in range(self.dims):
            lines = np.moveaxis(grid, axis, -1).reshape(-1, group_size)
            self._partitions.append(tuple(sorted(tuple(sorted(map(int, g))) for g in lines)))

    def partitions(self) -> list[Partition]:
        """The distinct partitions, in round order (one per grid axis)."""
        return list(self._partitions)

    def partition(self, round_index: int) -> Partition:
        """The partition of round ``round_index``."""
        return self._partitions[round_index % len(self._partitions)]


class ShuffleSchedule:
    """A seeded random partition into groups of ``group_size`` per round.

    Parameters
    ----------
    world_size, group_size : int
        ``group_size`` must divide ``world_size``.
    seed : int
        Seed shared by all ranks (the same partitions everywhere).
    cycle : int, optional
        Number of distinct partitions drawn, repeated in turn; every group of them is
        a process group created once. Default ``max(4, 2 * ceil(log_g N))``.
    """

    def __init__(
        self, world_size: int, group_size: int, seed: int = 0, cycle: int | None = None
    ) -> None:
        _check_sizes(world_size, group_size)
        if cycle is None:
            depth = math.ceil(math.log(world_size, group_size)) if group_size > 1 else 1
            cycle = max(4, 2 * depth)
        if cycle < 1:
            raise ValueError(f"cycle must be >= 1; got {cycle}")
        self.world_size, self.group_size, self.seed = world_size, group_size, seed
        rng = np.random.default_rng(seed)
        self._partitions = []
        for _ in range(cycle):
            perm = rng.permutation(world_size).reshape(-1, group_size)
            self._partitions.append(tuple(sorted(tuple(sorted(map(int, g))) for g in perm)))

    def partitions(self) -> list[Partition]:
        """The ``cycle`` partitions, in round order."""
        return list(self._partitions)

    def partition(self, round_index: int) -> Partition:
        """The partition of round ``round_index``."""
        return self._partitions[round_index % len(self._partitions)]


@GROUP_SCHEDULES.register("grid", summary="axes of a g x ... x g grid in turn (exact in d rounds)")
def grid(world_size: int, group_size: int, seed: int | None = None) -> GridSchedule:
    """:class:`GridSchedule` by name."""
    return GridSchedule(world_size, group_size, seed)


@GROUP_SCHEDULES.register("shuffle", summary="seeded random groups, reshuffled every round")
def shuffle(
    world_size: int, group_size: int, seed: int | None = None, cycle: int | None = None
) -> ShuffleSchedule:
    """:class:`ShuffleSchedule` by name."""
    return ShuffleSchedule(world_size, group_size, 0 if seed is None else seed, cycle)


def params_to_average(params: Iterable[Any]) -> list[torch.Tensor]:
    """The trainable tensors of ``params``: parameters, or optimizer param groups (dicts).

    Unlike torch's ``get_params_to_average`` this does not look at ``.grad``, so an
    average also works right after ``zero_grad(set_to_none=True)``.
    """
    out: list[torch.Tensor] = []
    for item in params:
        if isinstance(item, dict):
            out.extend(p for p in item["params"] if p.requires_grad)
        elif isinstance(item, torch.Tensor):
            if item.requires_grad:
                out.append(item)
        else:
            raise TypeError(f"expected parameters or param-group dicts; got {type(item).__name__}")
    return out


def average_parameters(params: Iterable[Any], process_group: dist.ProcessGroup | None) -> None:
    """Average ``params`` in place over ``process_group`` with one all-reduce.

    The same flattening as torch's ``model_averaging.utils.average_parameters``, except
    that complex tensors travel as pairs of reals and the values are copied back in
    place. torch's version concatenates the raw tensors, so a single complex parameter
    (the spectral weights of an FNO) turns the whole buffer complex: every real
    parameter then travels at twice its size, and each call warns about discarded
    imaginary parts.

    Parameters
    ----------
    params : iterable
        Parameters or optimizer param groups (see :func:`params_to_average`).
    process_group : ProcessGroup or None
        The group to average over (``None``: the default group).
    """
    tensors = params_to_average(params)
    if not tensors:
        return
    views = [torch.view_as_real(p.data) if p.is_complex() else p.data for p in tensors]
    flat = torch.cat([v.reshape(-1) for v in views])
    flat /= dist.get_world_size(process_group)
    dist.all_reduce(flat, group=process_group)
    offset = 0
    for v in views:
        v.copy_(flat[offset : offset + v.numel()].view_as(v))
        offset += v.numel()


class DSSyncAverager(ModelAverager):
    """Average parameters within shuffled groups after every optimizer step.

    Use it like torch's ``PeriodicModelAverager``: build it once on every rank after
    ``init_process_group`` (it creates every subgroup of the schedule with
    ``torch.distributed.new_group``, a collective), register the comm hook from
    :meth:`comm_hook` on the DDP model (so DDP no longer all-reduces gradients), and call
    :meth:`average_parameters` after each ``optimizer.step()``. At the end,
    :meth:`final_average` averages over all ranks once.

    Parameters
    ----------
    schedule : GridSchedule or ShuffleSchedule
        The partitions, identical on every rank.
    period : int
        Steps between reshuffles: round ``r`` (partition ``r``) lasts ``period`` steps.
    warmup_steps : int
        Steps of plain global gradient all-reduce before group averaging starts
        (the comm hook does the all-reduce; this averager does nothing then).
    process_group : ProcessGroup, optional
        The group the schedule's ranks index (default: the whole world).

    Attributes
    ----------
    step : int
        Calls of :meth:`average_parameters` so far (as in torch's averagers).
    groups : dict
        ``ranks tuple -> ProcessGroup`` for every group of the schedule.
    """

    def __init__(
        self,
        schedule: GridSchedule | ShuffleSchedule,
        period: int = 1,
        warmup_steps: int = 0,
        process_group: dist.ProcessGroup | None = None,
    ) -> None:
        super().__init__(process_group)
        if period < 1 or warmup_steps < 0:
            raise ValueError(
                f"need period >= 1 and warmup_steps >= 0; got {period}, {warmup_steps}"
            )
        world = dist.get_world_size(self.process_group)
        if schedule.world_size != world:
            raise ValueError(
                f"the schedule is for {schedule.world_size} ranks but the process group has {world}"
            )
        self.schedule, self.period, self.warmup_steps = schedule, int(period), int(warmup_steps)
        self.rank = dist.get_rank(self.process_group)
        global_ranks = dist.get_process_group_ranks(self.process_group)
        self.groups: dict[tuple[int, ...], dist.ProcessGroup] = {}
        for partition in schedule.partitions():  # same order on every rank
            for members in partition:
                if members not in self.groups:
                    self.groups[members] = dist.new_group([global_ranks[r] for r in members])

    def current_group(self) -> tuple[int, ...]:
        """The ranks this rank averages with at the current step."""
        round_index = max(self.step - self.warmup_steps, 0) // self.period
        for members in self.schedule.partition(round_index):
            if self.rank in members:
                return members
        raise RuntimeError(f"rank {self.rank} is in no group of round {round_index}")

    def average_parameters(self, params: Iterable[Any]) -> None:
        """Average ``params`` within this step's group (after the warm-up); advance the step."""
        if self.step >= self.warmup_steps:
            members = self.current_group()
            if len(members) > 1:
                average_parameters(params, self.groups[members])
        self.step += 1

    def final_average(self, params: Iterable[Any]) -> None:
        """Average ``params`` over all ranks of the process group (the final global average)."""
        average_parameters(params, self.process_group)

    def comm_hook(self):
        """The DDP comm hook to use with this averager: all-reduce during warm-up, then none."""
        from .comm_hooks import local_sgd_hook

        return local_sgd_hook(self.process_group, self.warmup_steps)

    def bytes_per_average(self, params: Iterable[Any]) -> int:
        """Bytes each rank hands to its group's all-reduce per averaging step."""
        return sum(p.numel() * p.element_size() for p in params_to_average(params))

    def state_dict(self) -> dict[str, int]:
        """The step counter (the round follows from it), for an exact resume."""
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore :meth:`state_dict`."""
        self.step = int(state["step"])


# -- the mixing without processes ---------------------------------------------------------


def mixing_matrix(partition: Partition, world_size: int) -> torch.Tensor:
    """(N, N) float64 matrix averaging within each group: ``W[i, j] = 1/|g|`` for i, j in g."""
    w = torch.zeros(world_size, world_size, dtype=torch.float64)
    seen: set[int] = set()
    for members in partition:
        idx = torch.tensor(members)
        w[idx.unsqueeze(1), idx.unsqueeze(0)] = 1.0 / len(members)
        seen.update(members)
    if seen != set(range(world_size)):
        raise ValueError(f"the partition does not cover ranks 0..{world_size - 1} exactly once")
    return w


def simulate_mixing(x: torch.Tensor, partitions: Sequence[Partition]) -> torch.Tensor:
    """Apply group averaging round by round to stacked worker states.

    Parameters
    ----------
    x : torch.Tensor
        (N, D) one row of parameters per worker.
    partitions : sequence of Partition
        One partition per round.

    Returns
    -------
    torch.Tensor
        (R + 1, N, D): the states before the first round and after each round.
    """
    if x.ndim != 2:
        raise ValueError(f"x must be (N, D); got shape {tuple(x.shape)}")
    states = [x]
    for partition in partitions:
        states.append(mixing_matrix(partition, x.shape[0]).to(x.dtype) @ states[-1])
    return torch.stack(states)


def consensus_distance(x: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of the workers to their average: ``mean_i |x_i - mean(x)|^2``.

    ``x`` is (..., N, D); the result has the leading shape.
    """
    return (x - x.mean(-2, keepdim=True)).square().sum(-1).mean(-1)
