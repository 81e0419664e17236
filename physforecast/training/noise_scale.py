"""Online gradient noise scale (McCandlish et al. 2018, "An Empirical Model of Large-Batch Training").

The mean gradient of a batch of ``B`` examples, ``G_B``, has
``E|G_B|^2 = |G|^2 + tr(Sigma) / B`` (``G`` the true gradient, ``Sigma`` the per-example
gradient covariance). Squared norms measured at two batch sizes ``b_small < b_large``
give unbiased estimates of both terms,

.. math:: |G|^2 \\approx \\frac{b_{large}|G_{large}|^2 - b_{small}|G_{small}|^2}{b_{large} - b_{small}},
   \\qquad
   \\mathrm{tr}\\,\\Sigma \\approx \\frac{|G_{small}|^2 - |G_{large}|^2}{1/b_{small} - 1/b_{large}},

and the *simple noise scale* ``B_simple = tr(Sigma) / |G|^2`` is the ratio of their
exponential moving averages (:class:`NoiseScaleMonitor`). It estimates the critical
batch size: below it, doubling the batch nearly halves the steps needed. It is a cheap
first guess for the ``b_noise`` of :mod:`physforecast.training.surge`, not the same
quantity (the surge paper's Adam ``B_noise`` weighs curvature differently).

Where the two norms come from:

* under DDP, the per-rank gradient (``b_small`` = the per-rank batch) and the all-reduced
  one (``b_large`` = world size x per-rank batch): wrap the DDP communication hook with
  :class:`GradientStats` and :func:`gradient_stats_hook`;
* on one process with gradient accumulation, the micro-batch gradients and their mean:
  :class:`MicroBatchStats`.

Both norms may be taken of scaled gradients (fp16 loss scaling): the ratio is unchanged.
:class:`NoiseScaleTracker` is what the Trainer uses (``train.noise_scale``): either
source, fed step by step, with the monitor's values in each epoch's ``metrics.jsonl`` record.
"""

# No `from __future__ import annotations` here: DDP checks a hook's annotations against
# the real dist.GradBucket and torch.futures.Future[torch.Tensor] objects.

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "noise_scale_terms",
    "NoiseScaleMonitor",
    "GradientStats",
    "gradient_stats_hook",
    "MicroBatchStats",
    "NoiseScaleTracker",
]


def noise_scale_terms(
    sq_small: float, sq_large: float, b_small: float, b_large: float
) -> tuple[float, float]:
    """Unbiased estimates of ``|G|^2`` and ``tr(Sigma)`` from two squared gradient norms.

    Parameters
    ----------
    sq_small, sq_large : float
        ``|G_small|^2`` and ``|G_large|^2``, squared norms of mean gradients over
        ``b_small`` and ``b_large`` examples.
    b_small, b_large : float
        The two batch sizes, ``0 < b_small < b_large``.

    Returns
    -------
    (float, float)
        ``(|G|^2, tr Sigma)``; single estimates are noisy and may be negative.
    """
    if not 0 < b_small < b_large:
        raise ValueError(f"need 0 < b_small < b_large; got b_small={b_small}, b_large={b_large}")
    g2 = (b_large * sq_large - b_small * sq_small) / (b_large - b_small)
    trace = (sq_small - sq_large) / (1.0 / b_small - 1.0 / b_large)
    return float(g2), float(trace)


class NoiseScaleMonitor:
    """Exponential moving averages of ``|G|^2`` and ``tr(Sigma)`` and their ratio, ``B_simple``.

    Parameters
    ----------
    beta : float
        EMA decay per update, in [0, 1). The averages are bias-corrected (as in Adam),
        so the first updates are not pulled towards zero.

    Examples
    --------
    >>> monitor = NoiseScaleMonitor(beta=0.9)
    >>> monitor.update(sq_small=2.0, sq_large=1.2, b_small=8, b_large=32)
    >>> round(monitor.noise_scale, 3)  # tr / |G|^2 from the one update
    9.143
    """

    def __init__(self, beta: float = 0.99) -> None:
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1); got {beta}")
        self.beta = float(beta)
        self.updates = 0
        self._g2 = 0.0
        self._trace = 0.0

    def update(self, sq_small: float, sq_large: float, b_small: float, b_large: float) -> None:
        """Add one pair of squared norms (see :func:`noise_scale_terms`)."""
        g2, trace = noise_scale_terms(sq_small, sq_large, b_small, b_large)
        if not (math.isfinite(g2) and math.isfinite(trace)):
            return  # an overflowed fp16 step: skip it, as the GradScaler does
        self._g2 = self.beta * self._g2 + (1 - self.beta) * g2
        self._trace = self.beta * self._trace + (1 - self.beta) * trace
        self.updates += 1

    def _corrected(self, value: float) -> float:
        if self.updates == 0:
            return math.nan
        return value / (1 - self.beta**self.updates)

    @property
    def grad_sq_norm(self) -> float:
        """Smoothed ``|G|^2`` (NaN before the first update)."""
        return self._corrected(self._g2)

    @property
    def trace(self) -> float:
        """Smoothed ``tr(Sigma)`` (NaN before the first update)."""
        return self._corrected(self._trace)

    @property
    def noise_scale(self) -> float:
        """``B_simple = tr(Sigma) / |G|^2``; NaN before an update or while ``|G|^2 <= 0``."""
        g2 = self.grad_sq_norm
        return self.trace / g2 if g2 > 0 else math.nan

    def record(self) -> dict[str, float]:
        """Values for a metrics log line (``metrics.jsonl``)."""
        return {
            "grad_noise_scale": self.noise_scale,
            "grad_sq_norm_ema": self.grad_sq_norm,
            "grad_noise_trace_ema": self.trace,
        }

    def state_dict(self) -> dict[str, float | int]:
        """Everything needed to continue exactly after a resume."""
        return {"beta": self.beta, "updates": self.updates, "g2": self._g2, "trace": self._trace}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        """Restore :meth:`state_dict`."""
        self.beta = float(state["beta"])
        self.updates = int(state["updates"])
        self._g2, self._trace = float(state["g2"]), float(state["trace"])


HookFn = Callable[[Any, dist.GradBucket], torch.futures.Future]


class GradientStats:
    """State of :func:`gradient_stats_hook`: an inner DDP hook plus squared-norm accumulators.

    Register with ``ddp.register_comm_hook(stats, gradient_stats_hook)``. Every step, the
    hook adds the squared norm of each bucket before communication (this rank's
    gradient) and after (what the inner hook returns: the all-reduced mean for
    ``allreduce``). Call :meth:`pop_step` after ``backward()`` on every rank.

    Parameters
    ----------
    inner_state, inner_hook :
        The hook to wrap, as passed to ``register_comm_hook`` (default: torch's
        ``allreduce_hook`` with the default process group).
    """

    def __init__(self, inner_state: Any = None, inner_hook: HookFn | None = None) -> None:
        if inner_hook is None:
            from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

            inner_hook = allreduce_hook
        self.inner_state, self.inner_hook = inner_state, inner_hook
        self._local: list[torch.Tensor] = []
        self._reduced: list[torch.Tensor] = []

    @property
    def last_step(self) -> dict[str, float] | None:
        """The inner hook's byte counters of the last step, when it counts."""
        return getattr(self.inner_state, "last_step", None)

    def add_local(self, tensor: torch.Tensor) -> None:
        self._local.append(tensor.detach().to(torch.float64).square().sum())

    def add_reduced(self, tensor: torch.Tensor) -> None:
        self._reduced.append(tensor.detach().to(torch.float64).square().sum())

    def pop_step(self, average_over_ranks: bool = True, process_group=None) -> tuple[float, float]:
        """``(|G_rank|^2, |G_all|^2)`` of the last step; resets the accumulators.

        With ``average_over_ranks`` the per-rank squared norm is averaged over the ranks
        (one all-reduce of one number), so every rank gets the same estimate; a
        collective, so call it on every rank.
        """
        if not self._local or not self._reduced:
            raise RuntimeError(
                "no gradients were recorded since the last pop_step: call it after backward() "
                "of a DDP model whose comm hook is gradient_stats_hook"
            )
        local = torch.stack(self._local).sum()
        reduced = torch.stack(self._reduced).sum()
        self._local.clear()
        self._reduced.clear()
        if average_over_ranks and dist.is_initialized():
            local = local.clone()
            dist.all_reduce(local, group=process_group)
            local /= dist.get_world_size(process_group)
        return float(local), float(reduced)


def gradient_stats_hook(
    state: GradientStats, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook that records squared gradient norms around ``state.inner_hook``."""
    state.add_local(bucket.buffer())
    fut = state.inner_hook(state.inner_state, bucket)

    def record(f: torch.futures.Future) -> torch.Tensor:
        value = f.value()
        out = value[0] if isinstance(value, list | tuple) else value
        state.add_reduced(out)
        return out

    return fut.then(record)


class MicroBatchStats:
    """Squared norms of micro-batch gradients and of their mean, under gradient accumulation.

    Keeps one copy of the gradients. Usage, with ``n`` micro-batches whose losses are
    each multiplied by ``loss_scale`` (``1/n`` in the usual accumulation)::

        stats.start()
        for micro in micro_batches:
            (loss_fn(model, micro) / n).backward()
            stats.after_backward()
        sq_small, sq_large = stats.finish()
        monitor.update(sq_small, sq_large, b_small=micro_batch_size, b_large=n * micro_batch_size)

    Parameters
    ----------
    params : iterable of tensors
        The parameters whose ``.grad`` accumulates.
    """

    def __init__(self, params: Iterable[torch.Tensor]) -> None:
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("MicroBatchStats needs at least one parameter that requires grad")
        self._prev: list[torch.Tensor] | None = None
        self._sq_micro: list[torch.Tensor] = []

    def _grads(self) -> list[torch.Tensor]:
        return [p.grad.detach() if p.grad is not None else torch.zeros_like(p) for p in self.params]

    def start(self) -> None:
        """Begin an accumulation; the gradients must be zero or unset (call ``zero_grad`` first)."""
        grads = self._grads()
        if any(bool(g.any()) for g in grads):
            raise RuntimeError(
                "MicroBatchStats.start(): gradients are not zero; call optimizer.zero_grad() "
                "before the first micro-batch of an accumulation"
            )
        self._prev = [g.clone() for g in grads]
        self._sq_micro = []

    def after_backward(self) -> None:
        """Record the micro-batch just backpropagated (its gradient = grad now - before)."""
        if self._prev is None:
            raise RuntimeError("call start() before the first micro-batch")
        sq = torch.zeros((), dtype=torch.float64, device=self._prev[0].device)
        for prev, g in zip(self._prev, self._grads()):
            sq += (g.to(torch.float64) - prev.to(torch.float64)).square().sum()
            prev.copy_(g)
        self._sq_micro.append(sq)

    def reset(self) -> None:
        """Drop the accumulation in progress (a step with a single micro-batch)."""
        self._prev = None
        self._sq_micro = []

    def finish(self, loss_scale: float | None = None) -> tuple[float, float]:
        """``(mean micro-batch |g_i|^2, |mean of the g_i|^2)`` of this accumulation.

        ``loss_scale`` is the factor each micro-batch loss was multiplied by before
        ``backward`` (default ``1/n`` for ``n`` micro-batches).
        """
        n = len(self._sq_micro)
        if n < 2:
            raise RuntimeError(f"need at least two micro-batches for a noise scale; got {n}")
        scale = 1.0 / n if loss_scale is None else float(loss_scale)
        if scale <= 0:
            raise ValueError(f"loss_scale must be > 0; got {loss_scale}")
        sq_small = float(torch.stack(self._sq_micro).mean()) / scale**2
        # the accumulated gradient is scale * sum_i g_i = scale * n * (mean of the g_i)
        total = sum(float(g.to(torch.float64).square().sum()) for g in self._grads())
        sq_large = total / (scale * n) ** 2
        self._prev = None
        self._sq_micro = []
        return sq_small, sq_large


class NoiseScaleTracker:
    """Feed a :class:`NoiseScaleMonitor` from a training loop, step by step.

    One of two sources: ``ddp_stats`` (a :class:`GradientStats` registered as the DDP comm
    hook: per-rank against all-reduced gradients, ``b_large = world_size x b_small``) or
    ``micro`` (a :class:`MicroBatchStats`: the micro-batches of a gradient accumulation
    against their mean). Call :meth:`before_backward` and :meth:`after_backward` around
    every micro-batch's backward and :meth:`step` once per optimizer step, after the last
    backward and before gradients are clipped or zeroed (on every rank: under DDP it is
    a collective).

    Parameters
    ----------
    monitor : NoiseScaleMonitor
        Where the estimates go.
    ddp_stats : GradientStats, optional
        The DDP source.
    micro : MicroBatchStats, optional
        The single-process source.
    world_size : int
        Processes (for ``b_large`` under DDP).
    """

    def __init__(
        self,
        monitor: NoiseScaleMonitor,
        *,
        ddp_stats: GradientStats | None = None,
        micro: MicroBatchStats | None = None,
        world_size: int = 1,
    ) -> None:
        if (ddp_stats is None) == (micro is None):
            raise ValueError("NoiseScaleTracker needs exactly one of ddp_stats and micro")
        self.monitor, self.ddp_stats, self.micro = monitor, ddp_stats, micro
        self.world_size = int(world_size)
        self._sizes: list[int] = []
        self._active = False

    def before_backward(self) -> None:
        """Before a micro-batch's backward (starts the accumulation on the first one)."""
        if self.micro is not None and not self._active:
            self.micro.start()
            self._active = True

    def after_backward(self, n: int) -> None:
        """After a micro-batch's backward; ``n`` examples were in it on this rank."""
        self._sizes.append(int(n))
        if self.micro is not None:
            self.micro.after_backward()

    def step(self, loss_scale: float | None = None) -> dict[str, float]:
        """Update the monitor with this optimizer step's norms; returns :meth:`record`.

        ``loss_scale`` is the factor each micro-batch loss was multiplied by (``1/n``
        by default). A step of one micro-batch on one process carries no estimate.
        """
        sizes, self._sizes = self._sizes, []
        if self.ddp_stats is not None:
            small, large = self.ddp_stats.pop_step()
            b_small = float(sum(sizes))
            if self.world_size > 1 and b_small > 0:
                self.monitor.update(small, large, b_small, b_small * self.world_size)
        else:
            self._active = False
            if len(sizes) >= 2:
                small, large = self.micro.finish(loss_scale)
                b_small = sum(sizes) / len(sizes)
                self.monitor.update(small, large, b_small, float(sum(sizes)))
            else:
                self.micro.reset()
        return self.record()

    def record(self) -> dict[str, float]:
        """The monitor's values (:meth:`NoiseScaleMonitor.record`)."""
        return self.monitor.record()

    def state_dict(self) -> dict[str, float | int]:
        """The monitor's state, for an exact resume."""
        return self.monitor.state_dict()

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        """Restore :meth:`state_dict`."""
        self.monitor.load_state_dict(state)
