"""The network model: its deterministic limits, its tails, and the three schemes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from physforecast.training.network_model import (
    AllreduceScheme,
    DLCPScheme,
    DSSyncScheme,
    NetworkModel,
    StepProfile,
    estimate_table,
    ring_allreduce_time,
)

CALM = NetworkModel(
    bandwidth=1e9,
    latency=1e-5,
    link_tail_scale=0.0,
    loss_prob=0.0,
    compute_tail_scale=0.0,
)
PROFILE = StepProfile(
    compute_s=0.01,
    grad_bytes=4_000_000,
    buckets=2,
    param_bytes=4_000_000,
    dlcp_sent_fraction=0.9,
    dlcp_mask_bytes=4000,
)


def test_ring_allreduce_without_noise_is_the_alpha_beta_formula():
    rng = np.random.default_rng(0)
    for k in (2, 8, 64):
        t = ring_allreduce_time(1e6, k, CALM, rng, samples=3)
        assert t == pytest.approx(2 * (k - 1) * (1e-5 + 1e6 / k / 1e9), rel=1e-12)
    assert ring_allreduce_time(1e6, 1, CALM, rng).tolist() == [0.0]


def test_slowest_link_follows_the_order_statistic_of_the_lomax_tail():
    net = NetworkModel(
        bandwidth=1.0, latency=0.0, link_tail_shape=2.0, link_tail_scale=1.0, loss_prob=0
    )
    rng = np.random.default_rng(1)
    k = 16  # one ring of 2 workers has 2 rounds; use k workers, rounds = 2 (k - 1)
    t = ring_allreduce_time(k, k, net, rng, samples=4000)  # 1 byte per link per round
    rounds = 2 * (k - 1)
    # mean of the max of k Lomax(2, 1): integral of 1 - F^k, F(z) = 1 - (1 + z)^-2
    z = np.linspace(0, 2000, 400001)
    mean_max = np.trapezoid(1 - (1 - (1 + z) ** -2.0) ** k, z)
    assert t.mean() / rounds == pytest.approx(1 + mean_max, rel=0.03)


def test_packet_loss_costs_timeouts_unless_the_scheme_tolerates_loss():
    net = NetworkModel(latency=0.0, link_tail_scale=0.0, loss_prob=1e-3, rto=1.0)
    rng = np.random.default_rng(2)
    k = 32
    t = ring_allreduce_time(0.0, k, net, rng, samples=2000)
    p_round = 1 - (1 - 1e-3) ** k
    assert t.mean() == pytest.approx(2 * (k - 1) * p_round, rel=0.05)
    assert ring_allreduce_time(0.0, k, net, rng, samples=10, loss_tolerant=True).max() == 0.0


def test_schemes_without_noise_match_their_formulas():
    n = 16
    rows = {r.scheme: r for r in estimate_table(PROFILE, [n], CALM, steps=5)}
    ring = lambda m, k: 2 * (k - 1) * (1e-5 + m / k / 1e9)  # noqa: E731
    allreduce = 0.01 + 2 * ring(2e6, n)
    dlcp = 0.01 + 2 * (ring(2e6 * 0.9, n) + ring(2000, n))
    dssync = 0.01 + ring(4e6, 2)
    assert rows["allreduce"].mean_s == pytest.approx(allreduce, rel=1e-9)
    assert rows["dlcp"].mean_s == pytest.approx(dlcp, rel=1e-9)
    assert rows["dssync(g=2)"].mean_s == pytest.approx(dssync, rel=1e-9)
    in_net = estimate_table(PROFILE, [n], CALM, schemes=[DLCPScheme(counts_collective=False)])[0]
    assert in_net.mean_s == pytest.approx(0.01 + 2 * ring(2e6 * 0.9, n), rel=1e-9)
    assert rows["allreduce"].p99_s == pytest.approx(allreduce, rel=1e-9)


def test_stragglers_slow_global_sync_more_than_group_sync_as_workers_grow():
    net = NetworkModel(compute_tail_scale=0.2, link_tail_scale=0.0, loss_prob=0.0)
    tiny = StepProfile(compute_s=0.01, grad_bytes=1000, buckets=1, param_bytes=1000)
    rows = estimate_table(
        tiny, [8, 512], net, schemes=[AllreduceScheme(), DSSyncScheme(2)], steps=300
    )
    by = {(r.scheme, r.workers): r.mean_s for r in rows}
    assert by[("allreduce", 512)] > 1.5 * by[("allreduce", 8)]  # waits for the slowest of 512
    assert by[("dssync(g=2)", 512)] < by[("allreduce", 512)]
    # compute alone costs at least compute_s * E[1 + Z] = 0.01 * (1 + 0.2 / 2)
    assert all(r.mean_s >= 0.01 * 1.1 * 0.95 for r in rows)
    assert all(r.p99_s >= r.mean_s * 0.99 for r in rows)


def test_bad_model_parameters_and_group_sizes_are_rejected():
    with pytest.raises(ValueError, match="bandwidth"):
        NetworkModel(bandwidth=0)
    with pytest.raises(ValueError, match="loss_prob"):
        NetworkModel(loss_prob=1.0)
    with pytest.raises(ValueError, match="does not divide"):
        estimate_table(PROFILE, [6], schemes=[DSSyncScheme(4)])
    assert math.isfinite(estimate_table(PROFILE, [8], steps=3)[0].mean_s)
