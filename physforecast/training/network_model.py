"""A small network model: step-time *estimates* for all-reduce, DLCP and DS-Sync at many workers.

One machine cannot time a 1024-worker run. What it can measure is what each scheme moves
per step (bytes, number of collectives) and how long one step computes; this module
turns those measurements into step-time estimates with a deliberately simple model.
The estimates are only as good as its assumptions, which are all here:

* **Links (alpha-beta).** Sending ``m`` bytes over one link takes
  ``latency + m / bandwidth``, times a slowdown ``1 + Z`` drawn for every link and
  round, with ``Z`` heavy-tailed (Lomax / Pareto II: ``P(Z > z) = (1 + z/scale)^-shape``)
  for background congestion.
* **Ring all-reduce.** ``M`` bytes over ``k`` workers: ``2 (k - 1)`` rounds, each sending
  ``M / k`` bytes on every link at once; a round ends when its slowest link does. One
  ring per collective (a DDP bucket); no tree or hierarchical algorithms, no overlap of
  communication with the backward pass (both make the real numbers smaller).
* **Packet loss.** Each link loses a packet in a round with probability ``loss_prob``;
  TCP-like transports then wait a retransmission timeout ``rto``. DLCP tolerates the
  loss (it counts against its bound), so it never waits for a timeout.
* **Stragglers.** A worker's compute time per step is ``compute_s * (1 + Z)`` with its
  own heavy-tailed ``Z``; a collective starts when its slowest member is done.
* **Schemes.** *allreduce*: one global ring per bucket over the gradient bytes.
  *DLCP*: the same rings over the bytes it actually sent (:class:`StepProfile` records
  them), plus one ring per bucket for the contribution counts (or none, when the counts
  are assumed to ride in packet headers), and no timeouts.
  *DS-Sync*: one ring per group of ``g`` over the parameter bytes; the groups are
  reshuffled every step, so a worker waits only for its current group (a max-plus
  recurrence over the steps, simulated per worker).

The model says nothing about convergence: DLCP's lost gradients and DS-Sync's partial
mixing cost accuracy per step, measured separately (``physforecast bench scale``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "NetworkModel",
    "StepProfile",
    "StepEstimate",
    "AllreduceScheme",
    "DLCPScheme",
    "DSSyncScheme",
    "DEFAULT_SCHEMES",
    "ring_allreduce_time",
    "estimate_table",
]


@dataclass(frozen=True)
class NetworkModel:
    """Parameters of the network and straggler model (see the module docstring).

    Attributes
    ----------
    bandwidth : float
        Bytes per second per link (default 12.5e9: 100 Gb/s).
    latency : float
        Seconds per message and round (default 10 us).
    link_tail_shape, link_tail_scale : float
        Lomax shape and scale of the per-link, per-round slowdown ``Z`` (mean
        ``scale / (shape - 1)``; defaults 2.5 and 0.05: 3 % on average, heavy tail).
    loss_prob : float
        Probability that a link loses a packet in one round (default 1e-6).
    rto : float
        Retransmission timeout in seconds paid by a loss-intolerant transport (1 ms).
    compute_tail_shape, compute_tail_scale : float
        Lomax shape and scale of the per-worker compute slowdown (defaults 3 and 0.05).
    """

    bandwidth: float = 12.5e9
    latency: float = 10e-6
    link_tail_shape: float = 2.5
    link_tail_scale: float = 0.05
    loss_prob: float = 1e-6
    rto: float = 1e-3
    compute_tail_shape: float = 3.0
    compute_tail_scale: float = 0.05

    def __post_init__(self) -> None:
        for name in ("bandwidth", "link_tail_shape", "compute_tail_shape"):
            if getattr(self, name) <= 0:
                raise ValueError(f"NetworkModel.{name} must be > 0; got {getattr(self, name)}")
        for name in ("latency", "link_tail_scale", "rto", "compute_tail_scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"NetworkModel.{name} must be >= 0; got {getattr(self, name)}")
        if not 0 <= self.loss_prob < 1:
            raise ValueError(f"NetworkModel.loss_prob must be in [0, 1); got {self.loss_prob}")


@dataclass(frozen=True)
class StepProfile:
    """What one worker computes and moves per step, as measured on one machine.

    Attributes
    ----------
    compute_s : float
        Forward + backward + optimizer seconds per step.
    grad_bytes : int
        Gradient bytes per step (all DDP buckets).
    buckets : int
        All-reduce calls per step for the gradients (DDP buckets).
    param_bytes : int
        Bytes of the averaged parameters (what DS-Sync all-reduces).
    dlcp_sent_fraction : float
        Gradient bytes DLCP sent / gradient bytes (``DLCPState.sent_fraction()``).
    dlcp_mask_bytes : int
        Bytes of DLCP's contribution counts per step.
    """

    compute_s: float
    grad_bytes: int
    buckets: int
    param_bytes: int
    dlcp_sent_fraction: float = 1.0
    dlcp_mask_bytes: int = 0


@dataclass(frozen=True)
class StepEstimate:
    """Estimated seconds per step of one scheme at one worker count (a model estimate)."""

    scheme: str
    workers: int
    mean_s: float
    p99_s: float
    comm_s: float


def _lomax_max(rng: np.random.Generator, shape: float, scale: float, n, size) -> np.ndarray:
    """Samples of the maximum of ``n`` iid Lomax variables (inverse CDF of ``F^n``)."""
    u = rng.random(size)
    tail = -np.expm1(np.log(u) / np.asarray(n, dtype=np.float64))  # 1 - u^(1/n), stable
    return scale * (np.power(np.maximum(tail, 1e-300), -1.0 / shape) - 1.0)


def ring_allreduce_time(
    nbytes: float,
    workers: int,
    net: NetworkModel,
    rng: np.random.Generator,
    *,
    samples: int = 1,
    loss_tolerant: bool = False,
) -> np.ndarray:
    """Seconds of one ring all-reduce of ``nbytes`` over ``workers``, ``samples`` draws.

    ``2 (k - 1)`` rounds of ``nbytes / k`` bytes per link; each round waits for the
    slowest of the ``k`` links and, unless ``loss_tolerant``, for a retransmission
    timeout when any link lost a packet. Returns ``(samples,)``; zeros for one worker.
    """
    k = int(workers)
    if k <= 1:
        return np.zeros(samples)
    rounds = 2 * (k - 1)
    per_link = nbytes / k / net.bandwidth
    slow = _lomax_max(rng, net.link_tail_shape, net.link_tail_scale, k, (samples, rounds))
    t = rounds * net.latency + per_link * (1.0 + slow).sum(1)
    if not loss_tolerant and net.loss_prob > 0:
        p_round = -math.expm1(k * math.log1p(-net.loss_prob))  # any of k links lost a packet
        t = t + net.rto * rng.binomial(rounds, p_round, size=samples)
    return t


def _compute_times(profile: StepProfile, net: NetworkModel, rng, size) -> np.ndarray:
    z = _lomax_max(rng, net.compute_tail_shape, net.compute_tail_scale, 1, size)
    return profile.compute_s * (1.0 + z)


def _global_sync(
    profile: StepProfile,
    net: NetworkModel,
    workers: int,
    steps: int,
    rng: np.random.Generator,
    collectives: list[tuple[float, bool]],
) -> tuple[np.ndarray, np.ndarray]:
    """Per-step durations and communication times of a fully synchronous scheme."""
    z_max = _lomax_max(rng, net.compute_tail_shape, net.compute_tail_scale, workers, steps)
    compute = profile.compute_s * (1.0 + z_max)  # the slowest worker of each step
    comm = np.zeros(steps)
    for nbytes, tolerant in collectives:
        comm += ring_allreduce_time(
            nbytes, workers, net, rng, samples=steps, loss_tolerant=tolerant
        )
    return compute + comm, comm


def _estimate(name: str, workers: int, durations: np.ndarray, comm: np.ndarray) -> StepEstimate:
    return StepEstimate(
        name,
        workers,
        float(durations.mean()),
        float(np.quantile(durations, 0.99)),
        float(comm.mean()),
    )


@dataclass(frozen=True)
class AllreduceScheme:
    """DDP's gradient all-reduce: one global ring per bucket, loss-intolerant."""

    name: str = "allreduce"

    def estimate(self, profile, workers, net, steps, rng) -> StepEstimate:
        per_bucket = profile.grad_bytes / max(profile.buckets, 1)
        plan = [(per_bucket, False)] * profile.buckets
        return _estimate(self.name, workers, *_global_sync(profile, net, workers, steps, rng, plan))


@dataclass(frozen=True)
class DLCPScheme:
    """DLCP: global rings over the bytes sent; tolerates loss, so no retransmission timeouts.

    With ``counts_collective`` (as :func:`~physforecast.training.dlcp.dlcp_hook` does on a
    lossless transport) every bucket also all-reduces its contribution counts, a second
    ring of rounds; without it the counts are assumed to travel in packet headers, as in
    the paper's in-network design.
    """

    counts_collective: bool = True

    @property
    def name(self) -> str:
        return "dlcp" if self.counts_collective else "dlcp (counts in packets)"

    def estimate(self, profile, workers, net, steps, rng) -> StepEstimate:
        buckets = max(profile.buckets, 1)
        values = [(profile.grad_bytes / buckets * profile.dlcp_sent_fraction, True)]
        counts = [(profile.dlcp_mask_bytes / buckets, True)] if self.counts_collective else []
        plan = (values + counts) * profile.buckets
        return _estimate(self.name, workers, *_global_sync(profile, net, workers, steps, rng, plan))


@dataclass(frozen=True)
class DSSyncScheme:
    """DS-Sync: a ring per group of ``group_size`` over the parameters, groups reshuffled each step."""

    group_size: int = 2

    @property
    def name(self) -> str:
        return f"dssync(g={self.group_size})"

    def estimate(self, profile, workers, net, steps, rng) -> StepEstimate:
        g = self.group_size
        if workers % g:
            raise ValueError(f"DS-Sync group size {g} does not divide {workers} workers")
        ready = np.zeros(workers)
        durations, comms = [], []
        for _ in range(steps):
            done = ready + _compute_times(profile, net, rng, workers)
            groups = rng.permutation(workers).reshape(workers // g, g)
            comm = ring_allreduce_time(profile.param_bytes, g, net, rng, samples=workers // g)
            new_ready = np.empty(workers)
            new_ready[groups] = (done[groups].max(1) + comm)[:, None]
            durations.append(new_ready - ready)
            comms.append(comm.mean())
            ready = new_ready
        d = np.concatenate(durations)
        return StepEstimate(
            self.name,
            workers,
            float(ready.mean() / steps),
            float(np.quantile(d, 0.99)),
            float(np.mean(comms)),
        )


#: The three modelled schemes with their default settings.
DEFAULT_SCHEMES = (AllreduceScheme(), DLCPScheme(), DSSyncScheme(2))


def estimate_table(
    profile: StepProfile,
    workers: Sequence[int] = (8, 32, 128, 512, 1024),
    net: NetworkModel | None = None,
    *,
    schemes: Sequence = DEFAULT_SCHEMES,
    steps: int = 200,
    seed: int = 0,
) -> list[StepEstimate]:
    """Model estimates of every scheme's step time at every worker count.

    Parameters
    ----------
    profile : StepProfile
        Measured bytes, collectives and compute of one step.
    workers : sequence of int
        Worker counts.
    net : NetworkModel, optional
        The defaults of :class:`NetworkModel` when omitted.
    schemes : sequence
        Objects with ``name`` and ``estimate(profile, workers, net, steps, rng)``
        (:class:`AllreduceScheme`, :class:`DLCPScheme`, :class:`DSSyncScheme`).
    steps : int
        Simulated steps per estimate (more: steadier means and tails).
    seed : int
        Seed of the random draws; each (scheme, workers) pair gets its own stream.

    Returns
    -------
    list of StepEstimate
        In order of ``workers``, then ``schemes``.
    """
    net = net or NetworkModel()
    rows = []
    for n in workers:
        for i, scheme in enumerate(schemes):
            rng = np.random.default_rng([seed, int(n), i])
            rows.append(scheme.estimate(profile, int(n), net, steps, rng))
    return rows
