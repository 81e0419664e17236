"""Launch detection (torchrun, SLURM, one process) and local multi-process runs."""

from __future__ import annotations

import multiprocessing
import os
import time

import pytest
import torch
import torch.distributed as dist

from physforecast.training.distributed import (
    detect_launch,
    first_slurm_host,
    free_port,
    init_distributed,
    launch_local,
)


@pytest.mark.parametrize(
    "nodelist,host",
    [
        ("node7", "node7"),
        ("gpu[01-04,07],cpu3", "gpu01"),
        ("a1,b2", "a1"),
        ("rack[2-3]-n[08-09]", "rack2-n08"),
        ("cn[0009,0011-0012]", "cn0009"),
    ],
)
def test_first_slurm_host(nodelist, host):
    assert first_slurm_host(nodelist) == host


def test_first_slurm_host_rejects_garbage():
    with pytest.raises(ValueError, match="empty"):
        first_slurm_host(" ")
    with pytest.raises(ValueError, match="cannot read"):
        first_slurm_host("node[01")


def test_single_process_by_default():
    launch = detect_launch({})
    assert launch.launcher == "single" and launch.world_size == 1 and not launch.distributed


def test_torchrun_environment():
    env = {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "n0",
        "MASTER_PORT": "29400",
        "TORCHELASTIC_RUN_ID": "abc",
        # srun started torchrun: torchrun's variables win over SLURM's
        "SLURM_PROCID": "1",
        "SLURM_STEP_NUM_TASKS": "2",
    }
    launch = detect_launch(env)
    assert (launch.launcher, launch.rank, launch.world_size, launch.local_rank) == (
        "torchrun",
        5,
        8,
        1,
    )
    assert (launch.master_addr, launch.master_port) == ("n0", 29400)
    assert detect_launch({"RANK": "0", "WORLD_SIZE": "2"}).launcher == "env"


def test_srun_environment():
    env = {
        "SLURM_PROCID": "6",
        "SLURM_STEP_NUM_TASKS": "8",
        "SLURM_NTASKS": "8",
        "SLURM_LOCALID": "2",
        "SLURM_STEP_NODELIST": "gpu[12-13]",
        "SLURM_JOB_ID": "123456",
    }
    launch = detect_launch(env)
    assert (launch.launcher, launch.rank, launch.world_size, launch.local_rank) == (
        "slurm",
        6,
        8,
        2,
    )
    assert launch.master_addr == "gpu12"
    assert launch.master_port == 15000 + 123456 % 20000  # the same on every task of the job
    chosen = detect_launch({**env, "MASTER_ADDR": "login1", "MASTER_PORT": "4000"})
    assert (chosen.master_addr, chosen.master_port) == ("login1", 4000)


def test_batch_script_without_srun_is_one_process_with_a_warning():
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_NODELIST": "n[1-2]"}
    with pytest.warns(UserWarning, match="not started by srun"):
        assert detect_launch(env).launcher == "single"


def test_bad_values_are_named():
    with pytest.raises(ValueError, match="RANK='x'"):
        detect_launch({"RANK": "x", "WORLD_SIZE": "2"})


def _sum_ranks(rank: int, world: int, scale: float) -> dict:
    t = torch.tensor([float(rank)])
    dist.all_reduce(t)
    return {"rank": rank, "sum": float(t) * scale, "env": os.environ["WORLD_SIZE"]}


def _fail_on_one(rank: int, world: int) -> None:
    if rank == 1:
        raise ValueError("rank one says no")
    dist.barrier()


def _sleep(rank: int, world: int) -> None:
    time.sleep(60)


def test_launch_local_returns_each_rank_result():
    out = launch_local(_sum_ranks, 3, args=(2.0,), timeout=60, start_method="fork")
    assert out == [{"rank": r, "sum": 6.0, "env": "3"} for r in range(3)]


def test_launch_local_reports_a_failing_rank_with_its_traceback():
    with pytest.raises(RuntimeError, match="rank 1 failed(.|\n)*rank one says no"):
        launch_local(_fail_on_one, 2, timeout=60, start_method="fork")


def _dask_sum(rank: int, world: int) -> float:
    import dask.array as da

    return float(da.ones(100, chunks=10).sum().compute())


def test_forked_ranks_compute_with_dask_after_the_parent_did():
    """The parent's dask thread pool has no threads in a forked child (it hung forever)."""
    import dask.array as da

    assert float(da.ones(100, chunks=10).sum().compute()) == 100.0  # the pool now exists
    assert launch_local(_dask_sum, 2, timeout=60, start_method="fork") == [100.0, 100.0]


def test_launch_local_kills_processes_that_overrun():
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="did not finish within 3 s"):
        launch_local(_sleep, 2, timeout=3, start_method="fork")
    assert time.monotonic() - t0 < 20


def _slurm_task(procid: int, port: int, results) -> None:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(key, None)
    os.environ.update(
        SLURM_PROCID=str(procid),
        SLURM_STEP_NUM_TASKS="2",
        SLURM_LOCALID=str(procid),
        SLURM_STEP_NODELIST="127.0.0.1",
        MASTER_PORT=str(port),
    )
    info = init_distributed("cpu")
    t = torch.tensor([1.0 + info.rank])
    dist.all_reduce(t)
    results.put((info.rank, info.world_size, info.local_rank, float(t)))
    dist.destroy_process_group()


def test_init_distributed_under_srun_variables():
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_slurm_task, args=(r, port, results)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        got = sorted(results.get(timeout=60) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    assert got == [(0, 2, 0, 3.0), (1, 2, 1, 3.0)]
