"""Faults of real processes (issue 13): kill -9 and SIGTERM during ``generate`` and
``train``, two trainings into one directory, a rank of a distributed run that dies.

Each test starts real processes (the ``physforecast`` command, or gloo ranks on 127.0.0.1),
waits for them with a bound, and stops them itself.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from reliability_helpers import TINY, cli, finish, temporaries

from physforecast.cli import main
from physforecast.run_dir import RunDir, RunLock

#: ``physforecast`` with a netCDF write that pauses once the temporary is complete, before
#: the rename: the moment a kill leaves an orphan.
SLOW_WRITE = """
import sys, time
import xarray as xr
write = xr.Dataset.to_netcdf
def slow(self, path, *args, **kwargs):
    out = write(self, path, *args, **kwargs)
    print("written", path, flush=True)
    time.sleep(120)
    return out
xr.Dataset.to_netcdf = slow
from physforecast.cli import main
sys.exit(main(sys.argv[1:]))
"""

GENERATE = ["generate", "ns2d", "--set", "n_trajectories=2", "n_steps=2", "size=16"]


def _start_slow_generate(out: Path):
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITE, *GENERATE, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    line = proc.stdout.readline()  # bounded by the test's timeout
    assert line.startswith("written"), proc.stderr.read()
    return proc


def _wait_for(predicate, timeout: float, what: str, proc=None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the process ended before {what}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.1)
    pytest.fail(f"no {what} within {timeout} s")


@pytest.mark.timeout(240)
def test_kill_9_during_generate_leaves_an_orphan_the_next_write_removes(tmp_path):
    out = tmp_path / "ns.nc"
    proc = _start_slow_generate(out)
    proc.kill()  # SIGKILL: nothing can clean up
    proc.wait(timeout=60)
    orphans = temporaries(tmp_path)
    assert len(orphans) == 1 and orphans[0].startswith(".ns.") and not out.exists()
    os.utime(tmp_path / orphans[0], (time.time() - 60, time.time() - 60))
    assert main([*GENERATE, "progress=false", "--out", str(out)]) == 0
    assert temporaries(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["ns.nc"]


@pytest.mark.timeout(240)
def test_sigterm_during_generate_removes_its_temporary(tmp_path):
    out = tmp_path / "ns.nc"
    proc = _start_slow_generate(out)
    proc.send_signal(signal.SIGTERM)
    rc, _, err = finish(proc, timeout=120)
    assert rc == 128 + signal.SIGTERM and "stopped by SIGTERM; stopped cleanly" in err
    assert list(tmp_path.iterdir()) == []  # no temporary, no half file


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_two_trainings_into_one_directory_then_kill_9_then_resume(tmp_path, capsys):
    out = tmp_path / "run"
    first = cli("train", "--epochs", "40", "--out", str(out), "--set", *TINY)
    metrics = out / "metrics.jsonl"
    _wait_for(
        lambda: metrics.exists() and metrics.read_text().count("\n") >= 1, 200, "first epoch", first
    )
    # a second writer fails at once, naming the first
    second = cli("train", "--epochs", "40", "--out", str(out), "--set", *TINY)
    rc, _, err = finish(second, timeout=200)
    assert rc == 2 and f"is in use by pid {first.pid} on " in err, err
    assert err.count("physforecast: error:") == 1 and "Traceback" not in err
    # kill -9 the first mid-training: its lock dies with it
    first.kill()
    first.wait(timeout=60)
    epochs = [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()]
    assert epochs == list(range(1, len(epochs) + 1))  # one run's records only
    done = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["epoch"]
    assert main(["train", "--resume", str(out), "--epochs", str(done + 1)]) == 0
    err = capsys.readouterr().err
    assert f"took over the stale lock of {out} (pid {first.pid}" in err
    assert f"resuming training at epoch {done + 1}/{done + 1}" in err
    final = [r["epoch"] for r in RunDir(out).read_metrics()]
    assert final == list(range(1, done + 2))  # no epoch twice, none lost
    assert temporaries(out) == []
    assert (out / "scorecard.json").exists()


def _rank(rank: int, world: int, port: int, out: str, queue) -> None:
    """One rank of a 2-process training; rank 1 dies at the start of its second epoch."""
    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    from physforecast.config import Config, apply_overrides
    from physforecast.training import trainer as trainer_module
    from physforecast.training.run import train

    if rank == 1:
        original = trainer_module.Trainer._run_epoch

        def die(self, *args, **kwargs):
            if self.epoch >= 1:
                os._exit(17)  # no cleanup, no goodbye: a crashed node
            return original(self, *args, **kwargs)

        trainer_module.Trainer._run_epoch = die
    cfg = apply_overrides(Config(), [*TINY, "train.epochs=5", "train.device=cpu", f"out={out}"])
    start = time.monotonic()
    try:
        train(cfg, evaluate=False)
        queue.put((rank, ("finished", "", time.monotonic() - start)))
    except Exception as err:  # what rank 0 reports
        queue.put((rank, (type(err).__name__, str(err), time.monotonic() - start)))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_dead_ddp_rank_stops_the_others_with_a_clear_error(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "run"
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    from physforecast.training.distributed import free_port

    port = free_port()
    procs = [ctx.Process(target=_rank, args=(r, 2, port, str(out), queue)) for r in (0, 1)]
    for p in procs:
        p.start()
    try:
        rank, (kind, message, took) = queue.get(timeout=240)
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    assert rank == 0 and procs[1].exitcode == 17
    assert kind == "DistributedRunError", message
    assert "another process of the distributed run stopped" in message
    assert f"--resume {out}" in message
    assert took < 200  # it did not wait for the 30-minute collective timeout
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1  # the last good checkpoint is intact
    assert temporaries(out) == []
    RunLock(out).acquire().release()  # the lock went with rank 0's exit
