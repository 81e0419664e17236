"""DS-Sync: schedules, the mixing simulator, and the averagers on four gloo processes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from physforecast.training.averaging import AVERAGERS
from physforecast.training.distributed import launch_local
from physforecast.training.dssync import (
    GROUP_SCHEDULES,
    DSSyncAverager,
    GridSchedule,
    ShuffleSchedule,
    consensus_distance,
    mixing_matrix,
    simulate_mixing,
)

# -- schedules and the simulator --------------------------------------------------------


def _is_partition(partition, n, g):
    members = [r for group in partition for r in group]
    return sorted(members) == list(range(n)) and all(len(group) == g for group in partition)


def test_grid_schedule_is_rows_then_columns():
    assert GridSchedule(4, 2).partitions() == [((0, 2), (1, 3)), ((0, 1), (2, 3))]
    cube = GridSchedule(8, 2, seed=5)
    assert len(cube.partitions()) == 3 and all(_is_partition(p, 8, 2) for p in cube.partitions())
    assert cube.partition(4) == cube.partition(1)
    with pytest.raises(ValueError, match="power"):
        GridSchedule(6, 2)
    with pytest.raises(ValueError, match="multiple"):
        ShuffleSchedule(6, 4)


def test_shuffle_schedule_is_seeded_and_made_of_partitions():
    a, b = ShuffleSchedule(8, 2, seed=1), ShuffleSchedule(8, 2, seed=1)
    assert a.partitions() == b.partitions() != ShuffleSchedule(8, 2, seed=2).partitions()
    assert len(a.partitions()) == 6  # max(4, 2 * ceil(log2 8))
    assert all(_is_partition(p, 8, 2) for p in a.partitions())
    assert GROUP_SCHEDULES.create("shuffle", world_size=8, group_size=4, seed=0).group_size == 4


@pytest.mark.parametrize("n,g", [(4, 2), (8, 2), (9, 3)])
def test_grid_reaches_exact_consensus_after_d_rounds(n, g):
    schedule = GridSchedule(n, g, seed=0)
    x = torch.randn(n, 5, dtype=torch.float64)
    states = simulate_mixing(x, schedule.partitions())
    d = consensus_distance(states)
    assert d[0] > 0.1 and d[-2] > 1e-3  # not done one round early
    assert d[-1] < 1e-28
    assert torch.allclose(states[-1], x.mean(0).expand(n, 5), atol=1e-14)
    product = torch.eye(n, dtype=torch.float64)
    for p in schedule.partitions():
        product = mixing_matrix(p, n) @ product
    assert torch.allclose(product, torch.full((n, n), 1.0 / n, dtype=torch.float64))


def test_random_shuffles_contract_consensus_geometrically():
    """N = 8, pairs: each round multiplies the distance by (N - 2) / (2 (N - 1)) = 3/7 on average.

    For a random perfect matching, E[sum_pairs e_i e_j] = -D / (2 (N - 1)) for centred
    deviations e with sum of squares D, so E[D'] = D / 2 - D / (2 (N - 1)).
    """
    n, rounds, trials = 8, 8, 200
    ratios, slopes = [], []
    for trial in range(trials):
        schedule = ShuffleSchedule(n, 2, seed=trial, cycle=rounds)
        x = torch.randn(n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(trial))
        d = consensus_distance(simulate_mixing(x, schedule.partitions()))
        assert torch.all(d[1:] <= d[:-1] * (1 + 1e-12))  # averaging never increases it
        live = (d > 1e-20).numpy()  # some shuffles reach exact consensus (a hypercube)
        ratios.extend((d[1:] / d[:-1]).numpy()[live[:-1]])
        slopes.append(np.polyfit(np.arange(rounds + 1)[live], np.log(d.numpy()[live]), 1)[0])
    mean_ratio = float(np.mean(ratios))
    assert mean_ratio == pytest.approx(3 / 7, abs=0.03)
    rate = float(np.exp(np.median(slopes)))
    assert rate < 0.6  # geometric: a fitted rate well below 1


def test_mixing_matrix_rejects_a_partial_partition():
    with pytest.raises(ValueError, match="exactly once"):
        mixing_matrix(((0, 1),), 4)


# -- four processes ----------------------------------------------------------------------


def _flat(params) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in params])


def _dssync_worker(rank: int, world: int) -> dict:
    out: dict = {}
    # 1. the 2 x 2 grid: exact consensus after two rounds, no gradient steps
    torch.manual_seed(100 + rank)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2))
    start = _flat(model.parameters())
    everyone = [torch.zeros_like(start) for _ in range(world)]
    dist.all_gather(everyone, start)
    global_mean = torch.stack(everyone).mean(0)
    averager = DSSyncAverager(GridSchedule(world, 2))
    out["group_round0"] = averager.current_group()
    averager.average_parameters(model.parameters())
    after_one = _flat(model.parameters())
    averager.average_parameters(model.parameters())
    after_two = _flat(model.parameters())
    for name, value in (("one", after_one), ("two", after_two)):
        gathered = [torch.zeros_like(value) for _ in range(world)]
        dist.all_gather(gathered, value)
        out[f"identical_after_{name}"] = all(torch.equal(gathered[0], v) for v in gathered)
    out["err_to_mean"] = float((after_two - global_mean).abs().max())
    out["state"] = averager.state_dict()

    # 2. DDP with the averager's comm hook keeps gradients local; training diverges the
    #    ranks; the final average brings them to one model
    torch.manual_seed(0)
    model, twin = nn.Linear(4, 3), nn.Linear(4, 3)
    twin.load_state_dict(model.state_dict())
    ddp = nn.parallel.DistributedDataParallel(model)
    averager = AVERAGERS.create("dssync", group_size=2, seed=3)
    averager.comm_hook().register(ddp)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(rank)
    x, y = torch.randn(16, 4, generator=g), torch.randn(16, 3, generator=g)
    nn.functional.mse_loss(ddp(x), y).backward()
    nn.functional.mse_loss(twin(x), y).backward()
    out["grads_local"] = torch.equal(
        _flat(p.grad for p in model.parameters()), _flat(p.grad for p in twin.parameters())
    )
    opt.step()
    averager.average_parameters(model.parameters())
    for _ in range(3):
        opt.zero_grad()
        nn.functional.mse_loss(ddp(x), y).backward()
        opt.step()
        averager.average_parameters(model.parameters())
    mid = _flat(model.parameters())
    gathered = [torch.zeros_like(mid) for _ in range(world)]
    dist.all_gather(gathered, mid)
    out["distinct_before_final"] = len({tuple(v.tolist()) for v in gathered})
    averager.final_average(model.parameters())
    final = _flat(model.parameters())
    dist.all_gather(gathered, final)
    out["identical_after_final"] = all(torch.equal(gathered[0], v) for v in gathered)
    out["bytes"] = averager.bytes_per_average(model.parameters())

    # 2b. complex parameters (an FNO's spectral weights) average as complex numbers
    spectral = nn.ParameterList(
        [nn.Parameter(torch.full((3,), complex(rank, -rank))), nn.Parameter(torch.ones(2) * rank)]
    )
    averager.final_average(spectral.parameters())
    out["complex_mean"] = spectral[0].detach().tolist()
    out["complex_dtypes"] = [str(p.dtype) for p in spectral.parameters()]
    out["real_mean"] = spectral[1].detach().tolist()

    # 3. periodic averaging (local SGD): average on steps 0, 2, 4 ...
    torch.manual_seed(rank)
    model = nn.Linear(3, 1)
    periodic = AVERAGERS.create("periodic", period=2)
    spreads = []
    for _ in range(4):
        with torch.no_grad():
            model.weight.add_(float(rank))  # a rank-dependent local step
        periodic.average_parameters(model.parameters())
        w = model.weight.detach().clone()
        all_w = [torch.zeros_like(w) for _ in range(world)]
        dist.all_gather(all_w, w)
        spreads.append(float(torch.stack(all_w).std(0).max()))
    out["periodic_spreads"] = spreads
    out["none"] = AVERAGERS.create("none") is None
    return out


@pytest.fixture(scope="module")
def dssync_results():
    return launch_local(_dssync_worker, 4, timeout=180, start_method="fork")


def test_two_by_two_grid_reaches_exact_consensus_after_two_rounds(dssync_results):
    assert [r["group_round0"] for r in dssync_results] == [(0, 2), (1, 3), (0, 2), (1, 3)]
    for r in dssync_results:
        assert not r["identical_after_one"]  # one round mixes pairs only
        assert r["identical_after_two"]  # bitwise the same model everywhere
        assert r["err_to_mean"] < 1e-6
        assert r["state"] == {"step": 2}


def test_dssync_keeps_gradients_local_and_final_average_agrees(dssync_results):
    for r in dssync_results:
        assert r["grads_local"]  # DDP did not all-reduce
        assert r["distinct_before_final"] > 1
        assert r["identical_after_final"]
        assert r["bytes"] == (4 * 3 + 3) * 4
        assert r["complex_mean"] == [complex(1.5, -1.5)] * 3
        assert r["complex_dtypes"] == ["torch.complex64", "torch.float32"]
        assert r["real_mean"] == [1.5, 1.5]


def test_periodic_averaging_every_second_step(dssync_results):
    for r in dssync_results:
        spreads = r["periodic_spreads"]
        assert spreads[0] < 1e-6 and spreads[2] < 1e-6  # averaged
        assert spreads[1] > 0.1 and spreads[3] > 0.1  # local steps in between
        assert r["none"]
