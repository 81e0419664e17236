"""DLCP: bounded-loss gradient dropping with layer and magnitude priorities, as a DDP comm hook.

DLCP (Wang et al., arXiv 2008.08445; MLT at NSDI'24) rests on an observation about SGD:
training tolerates losing a small, bounded fraction of gradient values each step
without harming the final model. The network can then drop packets instead of waiting
for retransmissions, and it drops the *least important* ones: gradients of layers far
from the input (needed last by the next forward pass) and of small magnitude.

Packets live below PyTorch, so this module applies the drop *policy* at the level of
fixed-size chunks of each DDP gradient bucket, inside a communication hook:

1. split the bucket into chunks of ``chunk_size`` elements (the last one may be shorter);
2. give each chunk a priority from the layer it belongs to and its RMS magnitude
   (:class:`PriorityDrop`; :class:`RandomDrop` ignores both, as a baseline);
3. zero the lowest-priority chunks until at most ``loss_bound`` of the bucket's elements
   are dropped (or less, when a congestion signal asks for less);
4. all-reduce the values and a per-chunk contribution count (one byte per chunk), and
   divide each chunk by the number of ranks that sent it (a chunk no rank sent stays
   zero).

With ``loss_bound=0`` nothing is dropped and the result is bit-for-bit torch's
``allreduce_hook``. The all-reduce still carries the zeros (the transport has no notion
of a missing packet); :class:`DLCPState` counts the bytes that DLCP would send and drop,
and :mod:`physforecast.training.network_model` turns them into step-time estimates.
Per-packet load balancing, the other half of DLCP, happens in switches and is out of
scope here.

Usage::

    state = DLCPState(model, loss_bound=0.05)
    ddp.register_comm_hook(state, dlcp_hook)
"""

# No `from __future__ import annotations` here: DDP checks a hook's annotations against
# the real dist.GradBucket and torch.futures.Future[torch.Tensor] objects.

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DropPolicy",
    "PriorityDrop",
    "RandomDrop",
    "BucketRecord",
    "DLCPState",
    "dlcp_hook",
    "layer_index",
]


class DropPolicy(Protocol):
    """Chooses the chunks to keep in one bucket.

    Called as ``policy(norms, layers, sizes, n_layers, budget)`` with ``norms`` (K,) float
    RMS magnitudes, ``layers`` (K,) long layer positions (0 = the layer nearest the
    input), ``sizes`` (K,) long element counts, the model's layer count and the largest
    number of elements that may be dropped; returns ``kept`` (K,) bool. Runs on every
    rank separately, on its own gradients.
    """

    def __call__(
        self,
        norms: torch.Tensor,
        layers: torch.Tensor,
        sizes: torch.Tensor,
        n_layers: int,
        budget: int,
    ) -> torch.Tensor: ...


def _drop_lowest(
    priority: torch.Tensor, candidates: torch.Tensor, sizes: torch.Tensor, budget: int
) -> torch.Tensor:
    """Keep mask dropping the lowest-``priority`` candidates while the dropped size fits ``budget``."""
    kept = torch.ones(priority.numel(), dtype=torch.bool)
    idx = candidates.nonzero().flatten()
    if budget <= 0 or idx.numel() == 0:
        return kept
    order = idx[torch.argsort(priority[idx], stable=True)]
    fits = torch.cumsum(sizes[order], 0) <= budget
    kept[order[fits]] = False
    return kept


@dataclass
class PriorityDrop:
    """DLCP's priority: front layers first, then large magnitudes.

    Chunks of the first ``protected_layers`` layers are never dropped. Every other
    chunk gets the priority ``m + layer_weight * f``, where ``m`` in [0, 1] is its
    magnitude rank among the droppable chunks of the bucket (0 the smallest, 1 the
    largest) and ``f`` in [0, 1] the front-ness of its layer (1 the first layer,
    0 the last). The lowest priorities are dropped first.

    Guarantee: if ``k`` of the ``m_c`` droppable chunks are dropped, no chunk whose
    magnitude rank is at least ``layer_weight + k / m_c`` is dropped (at least that many
    chunks have a lower priority). With ``layer_weight=0`` the drops are exactly the
    smallest chunks.

    Parameters
    ----------
    layer_weight : float
        Weight of the layer position against the magnitude rank, >= 0.
    protected_layers : int
        Number of front layers that are never dropped.
    """

    layer_weight: float = 0.5
    protected_layers: int = 1

    def __post_init__(self) -> None:
        if self.layer_weight < 0 or self.protected_layers < 0:
            raise ValueError(
                f"layer_weight and protected_layers must be >= 0; got {self.layer_weight}, "
                f"{self.protected_layers}"
            )

    def __call__(self, norms, layers, sizes, n_layers, budget):
        candidates = layers >= self.protected_layers
        priority = torch.zeros(norms.numel(), dtype=torch.float64)
        idx = candidates.nonzero().flatten()
        if idx.numel():
            ranks = torch.empty(idx.numel(), dtype=torch.float64)
            ranks[torch.argsort(norms[idx].to(torch.float64), stable=True)] = torch.arange(
                idx.numel(), dtype=torch.float64
            )
            magnitude = ranks / max(idx.numel() - 1, 1)
            front = 1.0 - layers[idx].to(torch.float64) / max(n_layers - 1, 1)
            priority[idx] = magnitude + self.layer_weight * front
        return _drop_lowest(priority, candidates, sizes, budget)


class RandomDrop:
    """Drop uniformly random chunks up to the budget (the policy-free baseline).

    Each rank draws from its own generator, seeded with ``seed + rank`` on first use, as
    independent packet losses would be.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        self._gen: torch.Generator | None = None

    def _generator(self) -> torch.Generator:
        if self._gen is None:
            rank = dist.get_rank() if dist.is_initialized() else 0
            self._gen = torch.Generator().manual_seed(self.seed + rank)
        return self._gen

    def __call__(self, norms, layers, sizes, n_layers, budget):
        priority = torch.rand(norms.numel(), generator=self._generator(), dtype=torch.float64)
        return _drop_lowest(priority, torch.ones_like(layers, dtype=torch.bool), sizes, budget)

    def state_dict(self) -> dict[str, Any]:
        """The generator state, for an exact resume."""
        return {"seed": self.seed, "rng": self._generator().get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.seed = int(state["seed"])
        self._generator().set_state(state["rng"])


def layer_index(module: nn.Module) -> dict[int, tuple[str, int]]:
    """``id(parameter) -> (name, layer position)`` for the trainable parameters of ``module``.

    A layer is the module that owns the parameter (``enc.0.conv.weight`` and
    ``enc.0.conv.bias`` share layer ``enc.0.conv``); layers are numbered in the order
    of :meth:`~torch.nn.Module.named_parameters`, which is the order the modules were
    registered in, the forward order for most models.
    """
    out: dict[int, tuple[str, int]] = {}
    layers: dict[str, int] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        out[id(p)] = (name, layers.setdefault(owner, len(layers)))
    if not out:
        raise ValueError("the module has no trainable parameters")
    return out


@dataclass
class BucketRecord:
    """What DLCP did to one bucket in the last step (this rank).

    Attributes
    ----------
    index : int
        ``GradBucket.index()``.
    params : list of (str, int, int)
        ``(name, offset, length)`` of each parameter's gradient in the bucket buffer, in
        buffer elements (a complex parameter takes two real elements per value).
    chunk_size : int
        Elements per chunk.
    kept : torch.Tensor
        (K,) bool, the chunks this rank sent.
    layers : torch.Tensor
        (K,) long, the front-most layer each chunk touches.
    """

    index: int
    params: list[tuple[str, int, int]]
    chunk_size: int
    kept: torch.Tensor
    layers: torch.Tensor

    def element_mask(self) -> torch.Tensor:
        """(numel,) bool: which elements of the bucket buffer were sent."""
        n = sum(numel for _, _, numel in self.params)
        return self.kept.repeat_interleave(self.chunk_size)[:n]


class DLCPState:
    """State of :func:`dlcp_hook`: the loss bound, the policy and the byte counters.

    Parameters
    ----------
    module : nn.Module
        The model (or its DDP wrapper): names the layers of the gradients.
    loss_bound : float
        Largest fraction of each bucket's elements dropped per step, in [0, 1).
    chunk_size : int
        Elements per chunk (the emulated packet; 1024 fp32 values = 4 KiB).
    policy : DropPolicy, optional
        :class:`PriorityDrop` by default.
    congestion : callable, optional
        ``congestion(step) -> fraction`` requested drop rate this step (a congestion
        signal); the rate used is ``min(congestion(step), loss_bound)``. Without it the
        full bound is used every step.
    process_group : ProcessGroup, optional
        The group to all-reduce over (the default group when omitted).

    Attributes
    ----------
    step : int
        Steps completed (a step ends with the bucket whose ``is_last()`` is true).
    totals : dict
        ``bytes_total``, ``bytes_sent``, ``bytes_dropped``, ``mask_bytes``,
        ``collectives`` summed over all steps.
    last_step : dict
        The same counters for the last completed step, plus ``drop_rate``.
    last_buckets : list of BucketRecord
        Per-bucket details of the last (or current) step.
    """

    def __init__(
        self,
        module: nn.Module,
        loss_bound: float = 0.05,
        chunk_size: int = 1024,
        policy: DropPolicy | None = None,
        congestion: Callable[[int], float] | None = None,
        process_group: dist.ProcessGroup | None = None,
    ) -> None:
        if not 0.0 <= loss_bound < 1.0:
            raise ValueError(f"loss_bound must be in [0, 1); got {loss_bound}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
        self.loss_bound = float(loss_bound)
        self.chunk_size = int(chunk_size)
        self.policy: DropPolicy = policy if policy is not None else PriorityDrop()
        self.congestion = congestion
        self.process_group = process_group
        self.layers = layer_index(module)
        self.n_layers = 1 + max(layer for _, layer in self.layers.values())
        self.step = 0
        self.totals = dict.fromkeys(_COUNTERS, 0)
        self.last_step: dict[str, float] = {}
        self.last_buckets: list[BucketRecord] = []
        self._current = dict.fromkeys(_COUNTERS, 0)
        self._new_step = True

    def drop_rate(self) -> float:
        """The fraction to drop this step: the bound, or less when congestion asks for less."""
        if self.congestion is None:
            return self.loss_bound
        return min(max(float(self.congestion(self.step)), 0.0), self.loss_bound)

    def _record(self, counts: dict[str, int], last: bool, rate: float) -> None:
        for key, value in counts.items():
            self._current[key] += value
        if last:
            for key, value in self._current.items():
                self.totals[key] += value
            self.last_step = {**self._current, "drop_rate": rate}
            self._current = dict.fromkeys(_COUNTERS, 0)
            self.step += 1
            self._new_step = True

    def sent_fraction(self) -> float:
        """Gradient bytes sent / gradient bytes over all steps so far (1 before any step)."""
        total = self.totals["bytes_total"]
        return self.totals["bytes_sent"] / total if total else 1.0

    def state_dict(self) -> dict[str, Any]:
        """Counters and the policy's state (when it has one), for an exact resume."""
        state: dict[str, Any] = {"step": self.step, "totals": dict(self.totals)}
        if hasattr(self.policy, "state_dict"):
            state["policy"] = self.policy.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.step = int(state["step"])
        self.totals = {k: int(v) for k, v in state["totals"].items()}
        if "policy" in state and hasattr(self.policy, "load_state_dict"):
            self.policy.load_state_dict(state["policy"])


_COUNTERS = ("bytes_total", "bytes_sent", "bytes_dropped", "mask_bytes", "collectives")


def _chunk_layers(
    state: DLCPState, bucket: dist.GradBucket, numel: int
) -> tuple[torch.Tensor, list[tuple[str, int, int]]]:
    cs = state.chunk_size
    n_chunks = math.ceil(numel / cs)
    layers = torch.full((n_chunks,), state.n_layers, dtype=torch.long)
    params, offset = [], 0
    width = bucket.buffer().element_size()
    for p in bucket.parameters():
        try:
            name, layer = state.layers[id(p)]
        except KeyError:
            raise RuntimeError(
                f"DLCPState does not know a parameter of shape {tuple(p.shape)} in bucket "
                f"{bucket.index()}: build DLCPState with the model that DDP wraps"
            ) from None
        n = p.numel() * p.element_size() // width  # a complex value is two real ones
        first, last = offset // cs, (offset + n - 1) // cs
        layers[first : last + 1] = layers[first : last + 1].clamp(max=layer)
        params.append((name, offset, n))
        offset += n
    if offset != numel:
        raise RuntimeError(
            f"bucket {bucket.index()} holds {numel} elements but its parameters {offset}; "
            "dlcp_hook needs the flat bucket layout of DDP's single-device mode"
        )
    return layers, params


def dlcp_hook(state: DLCPState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: drop low-priority chunks within the loss bound, then average.

    Returns a future of the bucket buffer holding, per chunk, the mean of the gradients
    of the ranks that sent that chunk (zero where none did).
    """
    group = state.process_group if state.process_group is not None else dist.group.WORLD
    world = dist.get_world_size(group)
    buf = bucket.buffer()
    numel, cs = buf.numel(), state.chunk_size
    if state._new_step:
        state.last_buckets = []
        state._new_step = False
    layers, params = _chunk_layers(state, bucket, numel)
    n_full = numel // cs
    x = buf.detach().to(torch.float32)
    ms = [x[: n_full * cs].view(n_full, cs).square().mean(1)]
    if numel > n_full * cs:
        ms.append(x[n_full * cs :].square().mean().reshape(1))
    norms = torch.cat(ms).sqrt().cpu()
    sizes = torch.full((norms.numel(),), cs, dtype=torch.long)
    sizes[-1] = numel - (norms.numel() - 1) * cs
    rate = state.drop_rate()
    budget = int(math.floor(rate * numel))
    kept = state.policy(norms, layers, sizes, state.n_layers, budget).to(torch.bool)
    if kept.shape != norms.shape:
        raise RuntimeError(
            f"drop policy returned shape {tuple(kept.shape)}; expected {tuple(norms.shape)}"
        )
    sizes_dev = sizes.to(buf.device)
    if not bool(kept.all()):
        buf.masked_fill_(~kept.to(buf.device).repeat_interleave(sizes_dev), 0)
    # one byte per chunk while the count cannot overflow it
    counts = kept.to(device=buf.device, dtype=torch.uint8 if world < 256 else torch.int32)
    buf.div_(world)
    values_fut = dist.all_reduce(buf, group=group, async_op=True).get_future()
    counts_fut = dist.all_reduce(counts, group=group, async_op=True).get_future()

    sent = int(sizes[kept].sum())
    state.last_buckets.append(BucketRecord(bucket.index(), params, cs, kept, layers))
    es = buf.element_size()
    state._record(
        {
            "bytes_total": numel * es,
            "bytes_sent": sent * es,
            "bytes_dropped": (numel - sent) * es,
            "mask_bytes": counts.numel() * counts.element_size(),
            "collectives": 2,
        },
        bucket.is_last(),
        rate,
    )

    def average(_: torch.futures.Future) -> torch.Tensor:
        if bool((counts == world).all()):
            return buf  # every rank sent every chunk: exactly the allreduce mean
        c = counts.to(torch.float32)
        factor = torch.where(c > 0, world / c.clamp(min=1), torch.zeros_like(c))
        buf.mul_(factor.to(buf.dtype).repeat_interleave(sizes_dev))
        return buf

    return torch.futures.collect_all([values_fut, counts_fut]).then(average)
