"""Parameter averagers by name: ``none``, ``periodic`` (local SGD) and ``dssync``.

An averager mixes the models of the ranks *after* the optimizer step, instead of (or
besides) DDP averaging gradients before it. Every averager here has the interface of
torch's ``PeriodicModelAverager``, plus what a trainer needs around it:

* ``average_parameters(params)`` after each ``optimizer.step()``;
* ``comm_hook()``: the DDP comm hook to register with it (gradients stay local after
  the warm-up, so DDP must not all-reduce them);
* ``final_average(params)``: one global average at the end of training;
* ``state_dict()`` / ``load_state_dict()``: for an exact resume.

``AVERAGERS.create(name, **options)`` must be called on every rank after
``init_process_group`` (averagers create process groups). ``none`` returns ``None``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch.distributed as dist
from torch.distributed.algorithms.model_averaging.averagers import PeriodicModelAverager

from physforecast.registry import Registry

from .dssync import GROUP_SCHEDULES, DSSyncAverager, average_parameters

__all__ = ["AVERAGERS", "PeriodicAveraging"]

#: Parameter averagers by name; ``AVERAGERS.create(name, **options)``.
AVERAGERS = Registry("averager")


class PeriodicAveraging(PeriodicModelAverager):
    """Local SGD: torch's ``PeriodicModelAverager`` with a comm hook, a final average and a state.

    For ``warmup_steps`` steps DDP all-reduces gradients as usual; after that each rank
    steps on its own gradients and all ranks average parameters every ``period`` steps.

    Parameters
    ----------
    period : int
        Steps between global parameter averages (>= 2; 1 would be plain DDP).
    warmup_steps : int
        Steps of ordinary gradient all-reduce first.
    process_group : ProcessGroup, optional
        The averaging group (default: the whole world).
    """

    def __init__(
        self, period: int = 4, warmup_steps: int = 0, process_group: dist.ProcessGroup | None = None
    ) -> None:
        if period < 2:
            raise ValueError(
                f"periodic averaging needs period >= 2 (got {period}); period 1 is plain DDP"
            )
        super().__init__(period=period, warmup_steps=warmup_steps, process_group=process_group)

    def average_parameters(self, params: Iterable[Any]) -> None:
        """Average every ``period`` steps after the warm-up.

        Unlike torch's version, parameters without ``.grad`` are included and complex
        parameters travel as real pairs (see
        :func:`~physforecast.training.dssync.average_parameters`).
        """
        if self.step >= self.warmup_steps and (self.step - self.warmup_steps) % self.period == 0:
            average_parameters(params, self.process_group)
        self.step += 1

    def final_average(self, params: Iterable[Any]) -> None:
        """One global average of ``params``."""
        average_parameters(params, self.process_group)

    def comm_hook(self):
        """The DDP comm hook to use with this averager: all-reduce during warm-up, then none."""
        from .comm_hooks import local_sgd_hook

        return local_sgd_hook(self.process_group, self.warmup_steps)

    def state_dict(self) -> dict[str, int]:
        """The step counter, for an exact resume."""
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore :meth:`state_dict`."""
        self.step = int(state["step"])


@AVERAGERS.register("none", summary="no parameter averaging (DDP's gradient all-reduce only)")
def none() -> None:
    """No averager: the trainer relies on the gradient all-reduce of its comm hook."""
    return None


@AVERAGERS.register("periodic", summary="local SGD: global parameter average every `period` steps")
def periodic(period: int = 4, warmup_steps: int = 0) -> PeriodicAveraging:
    """:class:`PeriodicAveraging` by name."""
    return PeriodicAveraging(period=period, warmup_steps=warmup_steps)


@AVERAGERS.register(
    "dssync", summary="DS-Sync: parameter average within shuffled groups every step"
)
def dssync(
    group_size: int = 2,
    schedule: str = "shuffle",
    period: int = 1,
    warmup_steps: int = 0,
    seed: int = 0,
) -> DSSyncAverager:
    """:class:`~physforecast.training.dssync.DSSyncAverager` with a schedule from ``GROUP_SCHEDULES``."""
    if not dist.is_initialized():
        raise RuntimeError("the dssync averager needs torch.distributed to be initialized first")
    plan = GROUP_SCHEDULES.create(
        schedule, world_size=dist.get_world_size(), group_size=group_size, seed=seed
    )
    return DSSyncAverager(plan, period=period, warmup_steps=warmup_steps)
