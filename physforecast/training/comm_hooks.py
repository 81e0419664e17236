"""DDP communication hooks by name: ``allreduce``, ``fp16``, ``powersgd``, ``dlcp``, ``random_drop``, ``local``.

Each entry of :data:`COMM_HOOKS` builds a :class:`CommHook`, the ``(state, hook)`` pair that
``DistributedDataParallel.register_comm_hook`` takes, plus how to save and restore the
hook's state for an exact resume. torch provides the hooks themselves where it has them
(``allreduce_hook``, ``fp16_compress_hook``, ``powerSGD_hook``, ``post_localSGD_hook``);
``dlcp`` and ``random_drop`` are :func:`~physforecast.training.dlcp.dlcp_hook`.

Usage::

    hook = COMM_HOOKS.create("dlcp", module=model, loss_bound=0.05)
    ddp = DistributedDataParallel(model)
    hook.register(ddp)
    ...
    hook.counters()      # bytes sent and dropped in the last step (when the hook counts)

The hooks that move whole buckets (``allreduce``, ``fp16``) are wrapped by
:func:`counted_hook`, which counts the bytes each rank hands to the all-reduce per step
without changing the result.
"""

# No `from __future__ import annotations` here: DDP checks a hook's annotations against
# the real dist.GradBucket and torch.futures.Future[torch.Tensor] objects.

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
from torch.distributed.algorithms.ddp_comm_hooks.post_localSGD_hook import (
    PostLocalSGDState,
    post_localSGD_hook,
)

from physforecast.registry import Registry

from .dlcp import DLCPState, PriorityDrop, RandomDrop, dlcp_hook

__all__ = [
    "COMM_HOOKS",
    "CommHook",
    "CountedState",
    "counted_hook",
    "local_sgd_hook",
    "GatedState",
    "gated_hook",
]

#: Communication hooks by name; ``COMM_HOOKS.create(name, module=model, **options)``.
COMM_HOOKS = Registry("comm hook")

HookFn = Callable[[Any, dist.GradBucket], torch.futures.Future]


def _no_state(_: Any) -> dict[str, Any]:
    return {}


def _ignore(_: Any, __: dict[str, Any]) -> None:
    return None


@dataclass
class CommHook:
    """A DDP communication hook ready to register, with its saved state.

    Attributes
    ----------
    name : str
        The registry name.
    state, hook :
        What ``ddp.register_comm_hook(state, hook)`` takes.
    save, load : callable
        ``save(state) -> dict`` and ``load(state, dict)``: the hook's state for an exact
        resume (counters, error feedback, random generators).
    layout_sensitive : bool
        Whether the result depends on how DDP lays the gradients out in buckets (chunks
        across parameters, per-bucket error feedback), not only on each element. DDP
        lays the buckets out anew after the first backward of every wrapper; a trainer
        fixes the layout before its first step (:class:`GatedState`) for such hooks, so
        a resumed run uses the layout of the uninterrupted one.
    """

    name: str
    state: Any
    hook: HookFn
    save: Callable[[Any], dict[str, Any]] = field(default=_no_state, repr=False)
    load: Callable[[Any, dict[str, Any]], None] = field(default=_ignore, repr=False)
    layout_sensitive: bool = False

    def register(self, ddp: nn.parallel.DistributedDataParallel) -> None:
        """``ddp.register_comm_hook(self.state, self.hook)`` (once, before the first backward)."""
        ddp.register_comm_hook(self.state, self.hook)

    def state_dict(self) -> dict[str, Any]:
        """The hook's state, for a checkpoint."""
        return self.save(self.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.load(self.state, state)

    def counters(self) -> dict[str, float] | None:
        """Bytes of the last completed step (``None`` when this hook does not count)."""
        last = getattr(self.state, "last_step", None)
        return dict(last) if last else None


class CountedState:
    """State of :func:`counted_hook`: an inner hook and byte counters.

    Parameters
    ----------
    inner_state, inner_hook :
        The hook to count, as for ``register_comm_hook``.
    wire_bytes_per_element : int, optional
        Bytes per element on the wire (2 for ``fp16_compress_hook``); the bucket's
        element size when omitted.
    """

    def __init__(
        self, inner_state: Any, inner_hook: HookFn, wire_bytes_per_element: int | None = None
    ) -> None:
        self.inner_state, self.inner_hook = inner_state, inner_hook
        self.wire_bytes_per_element = wire_bytes_per_element
        self.step = 0
        self.totals = {"bytes_total": 0, "bytes_sent": 0, "collectives": 0}
        self.last_step: dict[str, float] = {}
        self._current = dict.fromkeys(self.totals, 0)

    def count(self, bucket: dist.GradBucket) -> None:
        buf = bucket.buffer()
        es = self.wire_bytes_per_element or buf.element_size()
        for key, value in (("bytes_total", buf.numel() * es), ("bytes_sent", buf.numel() * es)):
            self._current[key] += value
        self._current["collectives"] += 1
        if bucket.is_last():
            for key, value in self._current.items():
                self.totals[key] += value
            self.last_step = dict(self._current)
            self._current = dict.fromkeys(self.totals, 0)
            self.step += 1

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "totals": dict(self.totals)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.totals = {k: int(v) for k, v in state["totals"].items()}


def counted_hook(
    state: CountedState, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """Count the bucket's bytes, then run ``state.inner_hook`` unchanged."""
    state.count(bucket)
    return state.inner_hook(state.inner_state, bucket)


def _save_counted(state: CountedState) -> dict[str, Any]:
    return state.state_dict()


def _load_counted(state: CountedState, saved: dict[str, Any]) -> None:
    state.load_state_dict(saved)


@COMM_HOOKS.register(
    "allreduce", summary="torch's allreduce_hook: the mean gradient (DDP's default)"
)
def allreduce(module: nn.Module | None = None, process_group=None) -> CommHook:
    """Plain all-reduce of each bucket (identical to DDP without a hook), with byte counters."""
    state = CountedState(process_group, default_hooks.allreduce_hook)
    return CommHook("allreduce", state, counted_hook, _save_counted, _load_counted)


@COMM_HOOKS.register("fp16", summary="torch's fp16_compress_hook: all-reduce in half precision")
def fp16(module: nn.Module | None = None, process_group=None) -> CommHook:
    """Cast each bucket to float16, all-reduce, cast back (half the bytes), with byte counters."""
    state = CountedState(process_group, default_hooks.fp16_compress_hook, wire_bytes_per_element=2)
    return CommHook("fp16", state, counted_hook, _save_counted, _load_counted)


def _save_powersgd(state: powerSGD_hook.PowerSGDState) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = state.rng.get_state()
    return {
        "iter": state.iter,
        "error_dict": dict(state.error_dict),
        "p_memory_dict": dict(state.p_memory_dict),
        "q_memory_dict": dict(state.q_memory_dict),
        "rng_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "rng_pos": int(pos),
        "rng_has_gauss": int(has_gauss),
        "rng_cached": float(cached),
        "numel_before": state.total_numel_before_compression,
        "numel_after": state.total_numel_after_compression,
    }


def _load_powersgd(state: powerSGD_hook.PowerSGDState, saved: dict[str, Any]) -> None:
    state.iter = int(saved["iter"])
    state.error_dict = dict(saved["error_dict"])
    state.p_memory_dict = dict(saved["p_memory_dict"])
    state.q_memory_dict = dict(saved["q_memory_dict"])
    keys = saved["rng_keys"].numpy().astype(np.uint32)
    state.rng.set_state(
        ("MT19937", keys, saved["rng_pos"], saved["rng_has_gauss"], saved["rng_cached"])
    )
    state.total_numel_before_compression = int(saved["numel_before"])
    state.total_numel_after_compression = int(saved["numel_after"])


@COMM_HOOKS.register("powersgd", summary="torch's PowerSGD: low-rank gradient compression")
def powersgd(
    module: nn.Module | None = None,
    process_group=None,
    rank: int = 1,
    start_iter: int = 10,
    seed: int = 0,
) -> CommHook:
    """torch's ``powerSGD_hook`` (rank-``rank`` compression with error feedback after ``start_iter`` plain steps).

    torch's hook cannot compress complex gradients (the ranks' collectives go out of
    step), so a ``module`` with complex parameters (an FNO's spectral weights) is refused.
    """
    if module is not None:
        complex_names = [n for n, p in module.named_parameters() if p.is_complex()]
        if complex_names:
            raise ValueError(
                f"torch's PowerSGD hook cannot compress complex parameters ({complex_names[0]}"
                f"{' and others' if len(complex_names) > 1 else ''}); use the fp16 or dlcp "
                "comm hook with this model, or a backbone with real parameters only"
            )
    state = powerSGD_hook.PowerSGDState(
        process_group=process_group,
        matrix_approximation_rank=rank,
        start_powerSGD_iter=start_iter,
        random_seed=seed,
    )
    return CommHook(
        "powersgd",
        state,
        powerSGD_hook.powerSGD_hook,
        _save_powersgd,
        _load_powersgd,
        layout_sensitive=True,
    )


def _save_dlcp(state: DLCPState) -> dict[str, Any]:
    return state.state_dict()


def _load_dlcp(state: DLCPState, saved: dict[str, Any]) -> None:
    state.load_state_dict(saved)


@COMM_HOOKS.register("dlcp", summary="DLCP: drop low-priority gradient chunks within a loss bound")
def dlcp(
    module: nn.Module,
    process_group=None,
    loss_bound: float = 0.05,
    chunk_size: int = 1024,
    layer_weight: float = 0.5,
    protected_layers: int = 1,
) -> CommHook:
    """:func:`~physforecast.training.dlcp.dlcp_hook` with :class:`~physforecast.training.dlcp.PriorityDrop`."""
    if module is None:
        raise ValueError("the dlcp comm hook needs module=<the model> to know its layers")
    state = DLCPState(
        module,
        loss_bound=loss_bound,
        chunk_size=chunk_size,
        policy=PriorityDrop(layer_weight=layer_weight, protected_layers=protected_layers),
        process_group=process_group,
    )
    return CommHook("dlcp", state, dlcp_hook, _save_dlcp, _load_dlcp, layout_sensitive=True)


@COMM_HOOKS.register(
    "random_drop", summary="drop random gradient chunks at the same rate (baseline)"
)
def random_drop(
    module: nn.Module,
    process_group=None,
    loss_bound: float = 0.05,
    chunk_size: int = 1024,
    seed: int = 0,
) -> CommHook:
    """:func:`~physforecast.training.dlcp.dlcp_hook` with :class:`~physforecast.training.dlcp.RandomDrop`."""
    if module is None:
        raise ValueError("the random_drop comm hook needs module=<the model> to know its layers")
    state = DLCPState(
        module,
        loss_bound=loss_bound,
        chunk_size=chunk_size,
        policy=RandomDrop(seed),
        process_group=process_group,
    )
    return CommHook("random_drop", state, dlcp_hook, _save_dlcp, _load_dlcp, layout_sensitive=True)


def _save_local(state: PostLocalSGDState) -> dict[str, Any]:
    return {"iter": state.iter}


def _load_local(state: PostLocalSGDState, saved: dict[str, Any]) -> None:
    state.iter = int(saved["iter"])


def local_sgd_hook(process_group=None, warmup_steps: int = 0) -> CommHook:
    """torch's ``post_localSGD_hook``: global all-reduce for ``warmup_steps`` steps, then none.

    After the warm-up each rank keeps its own gradient; a parameter averager
    (:mod:`physforecast.training.averaging`) then mixes the models after the optimizer
    step. This is the hook every averager asks for.
    """
    state = PostLocalSGDState(
        process_group=process_group,
        subgroup=None,
        start_localSGD_iter=warmup_steps,
        post_local_gradient_allreduce=False,
    )
    return CommHook("local", state, post_localSGD_hook, _save_local, _load_local)


@COMM_HOOKS.register("local", summary="no gradient communication (for parameter averaging)")
def local(module: nn.Module | None = None, process_group=None, warmup_steps: int = 0) -> CommHook:
    """:func:`local_sgd_hook` by name."""
    return local_sgd_hook(process_group, warmup_steps)


class GatedState:
    """State of :func:`gated_hook`: a :class:`CommHook` that can be bypassed.

    While ``priming`` is set, buckets skip the inner hook (no communication, no change to
    its state) and keep this rank's gradient. A trainer primes once: one forward and
    backward that makes DDP lay its buckets out as it will for the rest of training,
    before the first real step.
    """

    def __init__(self, inner: CommHook) -> None:
        self.inner = inner
        self.priming = False


def gated_hook(state: GatedState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Run ``state.inner``'s hook, or, while priming, return the bucket unchanged."""
    if state.priming:
        fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
        fut.set_result(bucket.buffer())
        return fut
    return state.inner.hook(state.inner.state, bucket)
