"""Dynamic micro-batching: concurrent requests share one model call.

Callers :meth:`MicroBatcher.submit` a few windows ``x`` (b, T_in, C, H, W) and get a
:class:`~concurrent.futures.Future`. One worker thread takes the oldest waiting item,
waits up to ``max_wait_ms`` for more to arrive (or until ``max_batch`` windows are
there), concatenates them, runs the model once and hands each caller its slice. The queue
holds at most ``capacity`` items; :meth:`~MicroBatcher.submit` raises
:class:`QueueFullError` beyond that instead of letting the backlog grow without bound.
An optional policy picks the number of students of each call from the backlog.

:class:`BatchedModel` puts the batcher behind the ``(x, cond) -> y`` contract, so a
:class:`physforecast.Forecaster` built on it (and :func:`physforecast.predict` on that)
batches its model calls with everybody else's.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from .stats import ServeStats

__all__ = ["QueueFullError", "MicroBatcher", "BatchedModel", "RunFn"]

#: ``run(x, cond, n_active) -> y``: one model call on a batch (``n_active`` is ``None``
#: when there is no policy or the model has no students).
RunFn = Callable[[torch.Tensor, "torch.Tensor | None", "int | None"], torch.Tensor]


class QueueFullError(RuntimeError):
    """The batcher's queue is full; the caller should answer 503 and let the client retry."""


class _Policy(Protocol):
    def choose(self, backlog: int) -> int: ...


@dataclass
class _Item:
    x: torch.Tensor
    cond: torch.Tensor | None
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.perf_counter)

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])


class MicroBatcher:
    """Group concurrent model calls into batches, in one worker thread.

    Parameters
    ----------
    run : callable
        ``run(x, cond, n_active) -> y`` on a whole batch.
    max_batch : int
        Most windows per call (an item larger than this runs alone).
    max_wait_ms : float
        How long the oldest waiting item may wait for others to join it.
    capacity : int
        Most items waiting; :meth:`submit` raises :class:`QueueFullError` beyond it.
    policy : object, optional
        With ``choose(backlog) -> n_active`` (a
        :class:`~physforecast.inference.policy.LoadAdaptivePolicy`); ``backlog`` is the
        windows of the call plus those still waiting.
    n_active : int, optional
        Fixed ``n_active`` when there is no policy (``None``: the model's default).
    stats : ServeStats, optional
        Records every call's size and ``n_active``.
    demand : callable, optional
        ``demand() -> int``: windows known to be on their way (a server's requests in
        flight, some still being decoded); the policy's backlog is at least this.
    """

    def __init__(
        self,
        run: RunFn,
        *,
        max_batch: int = 16,
        max_wait_ms: float = 5.0,
        capacity: int = 64,
        policy: _Policy | None = None,
        n_active: int | None = None,
        stats: ServeStats | None = None,
        demand: Callable[[], int] | None = None,
    ) -> None:
        if max_batch < 1 or capacity < 1 or max_wait_ms < 0:
            raise ValueError(
                f"need max_batch >= 1, capacity >= 1 and max_wait_ms >= 0; got {max_batch}, "
                f"{capacity}, {max_wait_ms}"
            )
        self.run = run
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1e3
        self.capacity = int(capacity)
        self.policy = policy
        self.n_active = n_active
        self.stats = stats
        self.demand = demand
        self._queue: deque[_Item] = deque()
        self._cv = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None

    # -- state ----------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Items waiting (not yet taken into a call)."""
        with self._cv:
            return len(self._queue)

    @property
    def pending_rows(self) -> int:
        """Windows waiting."""
        with self._cv:
            return sum(item.rows for item in self._queue)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> MicroBatcher:
        """Start the worker thread (idempotent)."""
        with self._cv:
            if self.running:
                return self
            self._closing = False
            self._thread = threading.Thread(
                target=self._loop, name="physforecast-batcher", daemon=True
            )
            self._thread.start()
        return self

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop taking items, run what is queued (without waiting for more) and stop."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"the batcher did not finish its queue within {timeout} s")
        self._thread = None

    def __enter__(self) -> MicroBatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls ----------------------------------------------------------------------
    def submit(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> Future:
        """Queue windows ``x`` (b, T_in, C, H, W) and their ``cond`` (b, P).

        Returns
        -------
        Future
            Resolves to the model's output for these windows (b, T_out, C, H, W).

        Raises
        ------
        QueueFullError
            When ``capacity`` items are already waiting.
        RuntimeError
            When the batcher is closed or not started.
        """
        item = _Item(x, cond)
        with self._cv:
            if self._closing or not self.running:
                raise RuntimeError("the batcher is not running; start() it first")
            if len(self._queue) >= self.capacity:
                raise QueueFullError(
                    f"the forecast queue is full ({self.capacity} waiting); retry shortly"
                )
            self._queue.append(item)
            self._cv.notify_all()
        return item.future

    def __call__(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Submit and wait for the result."""
        return self.submit(x, cond).result()

    # -- worker ---------------------------------------------------------------------
    def _take(self) -> tuple[list[_Item], int] | None:
        """Wait for a batch; ``None`` when closing with nothing left."""
        with self._cv:
            while not self._queue and not self._closing:
                self._cv.wait()
            if not self._queue:
                return None
            deadline = self._queue[0].arrived + self.max_wait
            while not self._closing:
                rows = sum(item.rows for item in self._queue)
                left = deadline - time.perf_counter()
                if rows >= self.max_batch or left <= 0:
                    break
                self._cv.wait(left)
            batch = [self._queue.popleft()]
            rows = batch[0].rows
            while self._queue and rows + self._queue[0].rows <= self.max_batch:
                item = self._queue.popleft()
                batch.append(item)
                rows += item.rows
            backlog = rows + sum(item.rows for item in self._queue)
        return batch, backlog

    def _loop(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            batch, backlog = taken
            items = [item for item in batch if item.future.set_running_or_notify_cancel()]
            if not items:
                continue
            if self.demand is not None:
                backlog = max(backlog, int(self.demand()))
            n_active = self.policy.choose(backlog) if self.policy is not None else self.n_active
            try:
                x = torch.cat([item.x for item in items])
                conds = [item.cond for item in items]
                cond = torch.cat(conds) if conds[0] is not None else None
                with torch.no_grad():
                    y = self.run(x, cond, n_active)
                if self.stats is not None:
                    self.stats.record_batch(x.shape[0], n_active)
                start = 0
                for item in items:
                    item.future.set_result(y[start : start + item.rows].clone())
                    start += item.rows
            except Exception as err:  # hand the failure to every caller of this batch
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(err)


class BatchedModel(nn.Module):
    """A model stand-in that sends every call through a :class:`MicroBatcher`.

    Parameters
    ----------
    batcher : MicroBatcher
        Runs the real model.
    like : nn.Module
        The real model; its ``in_steps``, ``out_steps``, ``in_channels``, ``out_channels``
        and ``cond_dim`` are copied, so :class:`physforecast.Forecaster` and the dataset
        checks see the same model.
    """

    def __init__(self, batcher: MicroBatcher, like: nn.Module) -> None:
        super().__init__()
        self.batcher = batcher
        for name in ("in_steps", "out_steps", "in_channels", "out_channels", "cond_dim"):
            value = getattr(like, name, None)
            if value is not None:
                setattr(self, name, value)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T_in, C, H, W) -> (B, T_out, C, H, W), batched with concurrent callers."""
        return self.batcher(x, cond)
