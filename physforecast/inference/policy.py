"""Choosing how many students to run from the load: Academus' adaptive student pruning.

A batch of ``b`` windows with ``n`` students is assumed to cost

    cost(n, b) = fixed_ms + b * (row_ms + n * student_ms)

(:class:`CostModel`, measured by :func:`calibrate`). With ``backlog`` windows waiting and
at most ``max_batch`` per call, the last of them is served after ``ceil(backlog /
max_batch)`` calls; :class:`LoadAdaptivePolicy` picks the largest ``n`` (at least
``min_active``) for which that expected wait fits the latency budget. The students
dropped are the last added (the smallest residuals), and all of them come back as soon as
the backlog allows it.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["CostModel", "LoadAdaptivePolicy", "calibrate"]


@dataclass(frozen=True)
class CostModel:
    """Milliseconds per model call: ``fixed_ms + rows * (row_ms + n * student_ms)``.

    Attributes
    ----------
    fixed_ms : float
        Per-call overhead (dispatch, the batcher).
    row_ms : float
        Per-window cost shared by every ``n`` (normalization, the teacher's decoder).
    student_ms : float
        Per-window cost of one student.
    """

    fixed_ms: float = 0.0
    row_ms: float = 0.0
    student_ms: float = 1.0

    def __post_init__(self) -> None:
        for name in ("fixed_ms", "row_ms", "student_ms"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"CostModel.{name} must be >= 0, got {getattr(self, name)!r}")

    def batch_ms(self, n_active: int, rows: int) -> float:
        """Expected milliseconds of one call on ``rows`` windows with ``n_active`` students."""
        return self.fixed_ms + rows * (self.row_ms + n_active * self.student_ms)


@dataclass(frozen=True)
class LoadAdaptivePolicy:
    """Pick ``n_active`` from the backlog and a latency budget.

    Parameters
    ----------
    n_students : int
        ``K``, the most students to run.
    latency_budget_ms : float
        The wait the last queued window should not exceed.
    max_batch : int
        Windows per model call.
    cost : CostModel
        What a call costs.
    min_active : int
        Never run fewer students than this.

    Examples
    --------
    >>> p = LoadAdaptivePolicy(4, latency_budget_ms=20, max_batch=8, cost=CostModel(student_ms=1))
    >>> p.choose(1), p.choose(8), p.choose(40)
    (4, 2, 1)
    """

    n_students: int
    latency_budget_ms: float
    max_batch: int
    cost: CostModel
    min_active: int = 1

    def __post_init__(self) -> None:
        if self.n_students < 1:
            raise ValueError(f"n_students must be >= 1, got {self.n_students}")
        if not 1 <= self.min_active <= self.n_students:
            raise ValueError(f"min_active must be in 1..{self.n_students}, got {self.min_active}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if not self.latency_budget_ms > 0:
            raise ValueError(f"latency_budget_ms must be > 0, got {self.latency_budget_ms}")

    def expected_ms(self, n_active: int, backlog: int) -> float:
        """When the last of ``backlog`` waiting windows would be served with ``n_active``."""
        backlog = max(int(backlog), 1)
        full, rest = divmod(backlog, self.max_batch)
        ms = full * self.cost.batch_ms(n_active, self.max_batch)
        return ms + (self.cost.batch_ms(n_active, rest) if rest else 0.0)

    def choose(self, backlog: int) -> int:
        """The largest ``n_active`` whose expected wait fits the budget (else ``min_active``)."""
        for n in range(self.n_students, self.min_active - 1, -1):
            if self.expected_ms(n, backlog) <= self.latency_budget_ms:
                return n
        return self.min_active


def _median_ms(fn: Callable[[], object], repeats: int, clock: Callable[[], float]) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append((clock() - t0) * 1e3)
    return statistics.median(times)


@torch.no_grad()
def calibrate(
    run: Callable[[torch.Tensor, torch.Tensor | None, int], torch.Tensor],
    example: torch.Tensor,
    cond: torch.Tensor | None,
    *,
    n_students: int,
    max_batch: int,
    repeats: int = 5,
    clock: Callable[[], float] = time.perf_counter,
) -> CostModel:
    """Measure a :class:`CostModel` by timing ``run(x, cond, n_active)``.

    Times three calls (median of ``repeats`` each): one window with one student, one
    window with all, and ``max_batch`` windows with all, and solves for the three costs.

    Parameters
    ----------
    run : callable
        ``run(x, cond, n_active) -> y``, the model call the server makes.
    example : torch.Tensor
        One window (1, T_in, C, H, W).
    cond : torch.Tensor, optional
        Its parameters (1, P).
    n_students, max_batch : int
        ``K`` and the most windows per call.
    repeats : int
        Timed calls per setting (after one warm-up call).
    clock : callable
        Seconds, monotonic (``time.perf_counter``).
    """
    big = example.expand(max_batch, *example.shape[1:]).contiguous()
    big_cond = cond.expand(max_batch, *cond.shape[1:]).contiguous() if cond is not None else None
    one_1 = _median_ms(lambda: run(example, cond, 1), repeats, clock)
    one_k = _median_ms(lambda: run(example, cond, n_students), repeats, clock)
    many_k = _median_ms(lambda: run(big, big_cond, n_students), repeats, clock)
    per_row = max(many_k - one_k, 0.0) / max(max_batch - 1, 1)  # row_ms + K * student_ms
    if n_students == 1:  # nothing to tell the student from the rest: it is all per student
        student, row = per_row, 0.0
    else:
        student = max(one_k - one_1, 0.0) / (n_students - 1)
        row = max(per_row - n_students * student, 0.0) if max_batch > 1 else 0.0
    fixed = max(one_k - row - n_students * student, 0.0)
    if not math.isfinite(fixed + row + student):
        raise RuntimeError("calibration gave non-finite costs")
    return CostModel(fixed_ms=fixed, row_ms=row, student_ms=max(student, 1e-6))
