"""The micro-batcher, the load-adaptive policy and the serving counters, without HTTP."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from physforecast.inference.batching import BatchedModel, MicroBatcher, QueueFullError
from physforecast.inference.policy import CostModel, LoadAdaptivePolicy, calibrate
from physforecast.inference.stats import ServeStats

pytestmark = pytest.mark.timeout(60)


class Recorder:
    """``run(x, cond, n)``: y = 2 x + n (checkable), remembering every call's size and n."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[tuple[int, int | None]] = []
        self.delay = delay
        self.release = threading.Event()
        self.release.set()

    def __call__(self, x, cond, n):
        self.release.wait(10)
        time.sleep(self.delay)
        self.calls.append((x.shape[0], n))
        return 2 * x + (n or 0)


def test_concurrent_submissions_share_a_call_and_get_their_own_rows():
    run = Recorder()
    stats = ServeStats()
    with MicroBatcher(run, max_batch=16, max_wait_ms=300, stats=stats) as batcher:
        xs = [torch.full((i + 1, 2, 1, 4, 4), float(i)) for i in range(4)]  # 1+2+3+4 rows
        futures = [batcher.submit(x) for x in xs]
        outs = [f.result(10) for f in futures]
    for x, y in zip(xs, outs):
        assert torch.equal(y, 2 * x)
    assert run.calls == [(10, None)]
    snap = stats.snapshot()
    assert snap["batches"] == {
        "count": 1,
        "rows": 10,
        "mean_size": 10.0,
        "max_size": 10,
        "sizes": {"10": 1},
    }


def test_a_call_never_exceeds_max_batch_and_order_is_kept():
    run = Recorder()
    run.release.clear()  # hold the worker so that everything queues up
    with MicroBatcher(run, max_batch=4, max_wait_ms=0, capacity=100) as batcher:
        futures = [batcher.submit(torch.full((1, 1, 1, 2, 2), float(i))) for i in range(10)]
        run.release.set()
        outs = [f.result(10) for f in futures]
    assert [float(y.flatten()[0]) for y in outs] == [2.0 * i for i in range(10)]
    assert all(rows <= 4 for rows, _ in run.calls) and sum(r for r, _ in run.calls) == 10
    assert len(run.calls) <= 4  # one may run alone before the others arrive, then full calls


def test_max_wait_bounds_how_long_a_lonely_request_waits():
    with MicroBatcher(Recorder(), max_batch=64, max_wait_ms=50) as batcher:
        t0 = time.perf_counter()
        batcher.submit(torch.zeros(1, 1, 1, 2, 2)).result(10)
        assert time.perf_counter() - t0 < 5.0


def test_the_queue_is_bounded():
    run = Recorder()
    run.release.clear()
    with MicroBatcher(run, max_batch=1, max_wait_ms=0, capacity=2) as batcher:
        first = batcher.submit(torch.zeros(1, 1, 1, 2, 2))
        deadline = time.monotonic() + 10
        while batcher.pending:  # the worker took it and is held in run()
            assert time.monotonic() < deadline
            time.sleep(0.005)
        waiting = [batcher.submit(torch.zeros(1, 1, 1, 2, 2)) for _ in range(2)]
        with pytest.raises(QueueFullError, match="queue is full"):
            batcher.submit(torch.zeros(1, 1, 1, 2, 2))
        run.release.set()
        for f in [first, *waiting]:
            f.result(10)
        batcher.submit(torch.zeros(1, 1, 1, 2, 2)).result(10)  # room again


def test_close_runs_what_is_queued_without_waiting_for_more():
    run = Recorder()
    batcher = MicroBatcher(run, max_batch=64, max_wait_ms=60_000).start()
    future = batcher.submit(torch.ones(1, 1, 1, 2, 2))
    t0 = time.perf_counter()
    batcher.close(timeout=10)
    assert time.perf_counter() - t0 < 5.0 and torch.equal(
        future.result(1), 2 * torch.ones(1, 1, 1, 2, 2)
    )
    with pytest.raises(RuntimeError, match="not running"):
        batcher.submit(torch.ones(1, 1, 1, 2, 2))


def test_a_failing_call_fails_every_caller_of_its_batch():
    def run(x, cond, n):
        raise RuntimeError("model exploded")

    with MicroBatcher(run, max_batch=8, max_wait_ms=200) as batcher:
        futures = [batcher.submit(torch.zeros(1, 1, 1, 2, 2)) for _ in range(3)]
        for f in futures:
            with pytest.raises(RuntimeError, match="model exploded"):
                f.result(10)
        # and the worker lives on
        assert batcher.running


def test_the_policy_sees_the_backlog():
    run = Recorder()
    run.release.clear()
    policy = LoadAdaptivePolicy(3, latency_budget_ms=10, max_batch=2, cost=CostModel(student_ms=2))
    with MicroBatcher(run, max_batch=2, max_wait_ms=0, capacity=50, policy=policy) as batcher:
        futures = [batcher.submit(torch.zeros(1, 1, 1, 2, 2)) for _ in range(8)]
        run.release.set()
        for f in futures:
            f.result(10)
        batcher.submit(torch.zeros(1, 1, 1, 2, 2)).result(10)
    ns = [n for _, n in run.calls]
    assert min(ns) == 1 and ns[-1] == 3  # squeezed under the backlog, all back when alone


def test_the_policy_counts_the_demand_still_on_its_way():
    run = Recorder()
    policy = LoadAdaptivePolicy(3, latency_budget_ms=10, max_batch=8, cost=CostModel(student_ms=2))
    coming = [20]  # e.g. requests admitted by a server, still being decoded
    with MicroBatcher(
        run, max_batch=8, max_wait_ms=0, policy=policy, demand=lambda: coming[0]
    ) as b:
        b.submit(torch.zeros(1, 1, 1, 2, 2)).result(10)
        coming[0] = 1
        b.submit(torch.zeros(1, 1, 1, 2, 2)).result(10)
    assert [n for _, n in run.calls] == [1, 3]


def test_batched_model_copies_the_contract_attributes():
    class Net(torch.nn.Module):
        in_steps, out_steps, in_channels, out_channels, cond_dim = 2, 3, 1, 1, 0

    with MicroBatcher(Recorder()) as batcher:
        model = BatchedModel(batcher, Net())
        assert (model.in_steps, model.out_steps, model.in_channels, model.cond_dim) == (2, 3, 1, 0)
        assert torch.equal(model(torch.ones(2, 2, 1, 3, 3)), 2 * torch.ones(2, 2, 1, 3, 3))
        assert list(model.parameters()) == []


@pytest.mark.parametrize("bad", [{"max_batch": 0}, {"capacity": 0}, {"max_wait_ms": -1}])
def test_batcher_rejects_bad_settings(bad):
    with pytest.raises(ValueError, match="need max_batch >= 1"):
        MicroBatcher(Recorder(), **bad)


# ------------------------------------------------------------------ policy


def test_policy_is_monotone_in_the_backlog_and_restores_all_students():
    policy = LoadAdaptivePolicy(
        4, latency_budget_ms=30, max_batch=8, cost=CostModel(fixed_ms=1, row_ms=0.5, student_ms=1)
    )
    chosen = [policy.choose(b) for b in range(1, 65)]
    assert chosen[0] == 4 and chosen[-1] == 1
    assert all(a >= b for a, b in zip(chosen, chosen[1:]))
    for backlog, n in zip(range(1, 65), chosen):
        if n > 1:  # the choice fits the budget, one more student would not
            assert policy.expected_ms(n, backlog) <= 30
        if n < 4:
            assert policy.expected_ms(n + 1, backlog) > 30
    # expected wait: 2 full calls of 8 and one of 3, with n = 2
    assert policy.expected_ms(2, 19) == pytest.approx(2 * (1 + 8 * 2.5) + (1 + 3 * 2.5))


def test_policy_rejects_bad_settings():
    with pytest.raises(ValueError, match="latency_budget_ms must be > 0"):
        LoadAdaptivePolicy(2, latency_budget_ms=0, max_batch=4, cost=CostModel())
    with pytest.raises(ValueError, match="min_active must be in 1..2"):
        LoadAdaptivePolicy(2, latency_budget_ms=5, max_batch=4, cost=CostModel(), min_active=3)
    with pytest.raises(ValueError, match="student_ms must be >= 0"):
        CostModel(student_ms=-1)


def test_calibrate_recovers_a_known_cost():
    fixed, row, student = 3.0, 0.5, 2.0
    now = [0.0]  # a clock the fake model advances by exactly its cost

    def run(x, cond, n):
        now[0] += (fixed + x.shape[0] * (row + n * student)) / 1e3
        return x

    cost = calibrate(
        run, torch.zeros(1, 1, 1, 2, 2), None, n_students=4, max_batch=6, clock=lambda: now[0]
    )
    assert cost.fixed_ms == pytest.approx(fixed)
    assert cost.row_ms == pytest.approx(row)
    assert cost.student_ms == pytest.approx(student)
