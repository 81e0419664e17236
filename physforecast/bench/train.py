"""Benchmark: what training costs around the model, and its memory by store size.

``physforecast bench train`` measures

1. epoch time of :class:`~physforecast.training.trainer.Trainer` over
   :class:`~physforecast.data.windows.ForecastWindows` against a hand-written loop (the
   same model, optimizer and batches: windows cut from the in-memory array by numpy
   slicing in the same shuffled order), by number of trajectories and by grid size,
   interleaved rounds after a warm-up; a cost linear in the trajectories gives a flat
   ratio;
2. the peak resident memory of the whole ``physforecast train`` job (training,
   validation and the streamed evaluation of the test split) on zarr stores of
   growing size, each in its own process (``data.in_memory_mb=0`` so that every store
   is read lazily: a store under ``in_memory_mb`` is read into memory by design);
3. the same Trainer steps with torch's default intra-op threads and with the automatic
   choice (:func:`~physforecast.threads.auto_threads`), while one busy process per core
   competes for the machine.

The contenders of 1 run with the job's own thread setting. ``quick=True`` is a smoke run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ._timing import interleave, machine, median, ratio_cell, smoke_note, spread

__all__ = ["run", "epoch_times", "peak_rss", "contended_steps", "torch_default_threads"]

IN_STEPS, OUT_STEPS, BATCH = 4, 4, 16


def _dataset(n_traj: int, n_time: int, size: int, seed: int = 0):
    import xarray as xr

    rng = np.random.default_rng(seed)
    u = rng.standard_normal((n_traj, n_time, size, size), dtype=np.float32)
    return xr.Dataset(
        {"u": (("trajectory", "time", "y", "x"), u, {"units": "1"})},
        coords={"time": np.arange(n_time, dtype=float)},
    )


def _fno():
    import torch

    import physforecast as pf

    torch.manual_seed(0)
    return pf.create_backbone(
        "fno", in_steps=IN_STEPS, out_steps=OUT_STEPS, in_channels=1, hidden=16, modes=8
    )


def _trainer_steps(ds, steps: int) -> Callable[[], None]:
    """``steps`` Trainer steps of a fresh FNO over the windows of ``ds``."""
    from physforecast.data import ForecastWindows
    from physforecast.training import Trainer

    windows = ForecastWindows(ds, ["u"], IN_STEPS, OUT_STEPS)
    cfg = _train_config(steps)

    def fit() -> None:
        Trainer(_fno(), cfg, batch_size=BATCH).fit(windows)

    return fit


def _train_config(steps: int):
    from physforecast.config import TrainConfig

    return TrainConfig(
        epochs=1, max_steps_per_epoch=steps, device="cpu", schedule="constant", grad_clip=0.0
    )


def epoch_times(n_traj: int, size: int, steps: int, rounds: int) -> dict[str, list[float]]:
    """Seconds of ``steps`` training steps: the Trainer and a hand loop, interleaved."""
    import torch

    from physforecast.training.trainer import default_optimizer

    n_time = 30
    ds = _dataset(n_traj, n_time, size)
    array = ds["u"].values
    span = IN_STEPS + OUT_STEPS
    starts = n_time - span + 1
    cfg = _train_config(steps)
    package = _trainer_steps(ds, steps)

    def hand() -> None:
        net = _fno()
        opt = default_optimizer(cfg)(net)  # the same AdamW and parameter groups
        order = torch.randperm(n_traj * starts, generator=torch.Generator().manual_seed(0))
        for s in range(steps):
            picks = order[s * BATCH : (s + 1) * BATCH].numpy()
            frames = np.stack([array[i // starts, i % starts : i % starts + span] for i in picks])
            batch = torch.from_numpy(frames[:, :, None])
            x, y = batch[:, :IN_STEPS], batch[:, IN_STEPS:]
            loss = torch.nn.functional.mse_loss(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

    return interleave({"package": package, "hand": hand}, rounds, warmup=1)


def torch_default_threads() -> int:
    """The intra-op threads torch starts with in a fresh process (no ``OMP_NUM_THREADS``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        capture_output=True, text=True, check=True, env=env,
    )  # fmt: skip
    return int(out.stdout.split()[-1])


def contended_steps(
    threads: dict[str, int], steps: int, rounds: int, busy: int
) -> dict[str, list[float]]:
    """Seconds of ``steps`` Trainer steps (40 trajectories, 32x32) with each thread count
    of ``threads`` (label -> count), interleaved, while ``busy`` processes spin."""
    import torch

    fit = _trainer_steps(_dataset(40, 30, 32), steps)

    def with_threads(n: int) -> Callable[[], None]:
        def go() -> None:
            torch.set_num_threads(n)
            fit()

        return go

    before = torch.get_num_threads()
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        return interleave({k: with_threads(n) for k, n in threads.items()}, rounds, warmup=1)
    finally:
        for p in spinners:
            p.kill()
        for p in spinners:
            p.wait()
        torch.set_num_threads(before)


_RSS_JOB = """
import json, os, sys
from physforecast.config import Config, apply_overrides
from physforecast.training.run import train
store, out = sys.argv[1], sys.argv[2]
cfg = apply_overrides(Config(), [
    f"data.dataset={store}", "data.variables=[u, v]", "data.in_steps=4", "data.out_steps=4",
    "data.in_memory_mb=0", "train.epochs=1", "train.max_steps_per_epoch=4",
    "train.max_val_steps=4", "train.device=cpu", "eval.save_samples=16",
    "model.options={hidden: 16, modes: 8}", f"out={out}",
])
train(cfg)
from physforecast.bench._timing import status_mb
print("peak_mb", status_mb("VmHWM"))
"""


def peak_rss(store: Path, out: Path) -> float:
    """Peak resident memory (MB) of one ``train`` job on ``store``, in its own process.

    The job reports its own ``VmHWM``: the child's ``ru_maxrss`` would include this
    process's memory at the ``fork`` before ``exec`` (having just written a large store,
    say), which is not the job's.
    """
    proc = subprocess.run(
        [sys.executable, "-c", _RSS_JOB, str(store), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"train job on {store} failed:\n{proc.stderr[-2000:]}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("peak_mb "))
    return float(line.split()[1])


def _store_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def run(quick: bool = False) -> str:
    """Measure, and return a Markdown report.

    Parameters
    ----------
    quick : bool
        A smoke run: tiny sizes, one round.
    """
    import torch

    from physforecast.bench.data import make_store
    from physforecast.threads import auto_threads, available_cores

    threads = auto_threads()
    torch.set_num_threads(threads)
    if quick:
        trajs, sizes, steps, rounds, stores = (4, 8), (16,), 2, 1, (4, 8)
    else:
        trajs, sizes, steps, rounds, stores = (40, 160, 640), (32, 64), 10, 3, (16, 96, 384, 768)
    rows: list[tuple[str, dict[str, Any]]] = []
    for n in trajs:
        rows.append(
            (f"{n} trajectories, {sizes[0]}x{sizes[0]}", epoch_times(n, sizes[0], steps, rounds))
        )
    for size in sizes[1:]:
        rows.append(
            (f"{trajs[0]} trajectories, {size}x{size}", epoch_times(trajs[0], size, steps, rounds))
        )
    memory = []
    with tempfile.TemporaryDirectory(prefix="pf-bench-train-") as tmp:
        for i, n in enumerate(stores):
            store = make_store(Path(tmp) / f"store{i}.zarr", n, 40, 64 if not quick else 16, seed=i)
            mb = _store_mb(store)
            memory.append((n, mb, peak_rss(store, Path(tmp) / f"run{i}")))
    where = machine(threads)  # before the busy processes below raise the load
    busy = available_cores()
    default = torch_default_threads()
    chosen = auto_threads(load=busy + 1.0)  # what the policy reads once the load shows them
    contended_rounds = 1 if quick else max(rounds, 3)
    contended = contended_steps({"default": default, "auto": chosen}, steps, contended_rounds, busy)
    torch.set_num_threads(threads)
    lines = [
        "# Training benchmark",
        "",
        *smoke_note(quick),
        "## Steps of training: Trainer + ForecastWindows vs a hand loop",
        "",
        f"{steps} optimizer steps (batch {BATCH}, windows of {IN_STEPS} + {OUT_STEPS} frames of "
        "one float32 field in memory, 30 frames per trajectory) of an FNO (hidden 16, modes 8) "
        f"with AdamW. {rounds} interleaved rounds after a warm-up of each; seconds are medians "
        "(min-max); ratios are package / hand loop per round, median (range).",
        "",
        "| data | Trainer (s) | hand loop (s) | Trainer / hand |",
        "|---|---:|---:|---:|",
    ]
    for label, t in rows:
        lines.append(
            f"| {label} | {median(t['package']):.3f} ({spread(t['package'])}) | "
            f"{median(t['hand']):.3f} ({spread(t['hand'])}) | {ratio_cell(t['package'], t['hand'])} |"
        )
    lines += [
        "",
        "## Peak memory of a whole `train` job by store size",
        "",
        "One process per store: training (4 steps), validation (4 batches) and the streamed "
        "evaluation of the whole test split (forecasts.nc keeps 16 samples), reading the zarr "
        "store lazily (`data.in_memory_mb=0`; two float32 fields, chunks of 1 trajectory x "
        "10 frames). Peak RSS is the kernel's high-water mark of the process.",
        "",
        "| trajectories | store (MB) | peak RSS (MB) | vs smallest |",
        "|---:|---:|---:|---:|",
    ]
    for n, mb, rss in memory:
        lines.append(f"| {n} | {mb:.0f} | {rss:.0f} | {rss / memory[0][2]:.2f}x |")
    lines += [
        "",
        "What bounds it: the evaluation holds one chunk of `eval.chunk` samples at a time "
        "(forecast, truth and the metrics' intermediates); all lazy splits of a process share "
        "one cache of decoded blocks (`physforecast.data.windows.SHARED_CACHE_MB`); after each "
        "chunk the collector frees its reference cycles and glibc's free heap pages go back "
        "to the system (`physforecast.memory.chunked_work`). What still grows with the store "
        "is the bookkeeping of its chunks (the dask graph that fitting the normalization "
        "statistics builds over every chunk of the training split).",
        "",
        "## Threads on a busy machine",
        "",
        f"{steps} Trainer steps (40 trajectories of 32x32, as above) while {busy} other "
        f"processes each keep a core busy, with torch's default intra-op threads ({default}, "
        f"what a fresh process gets) and with the automatic choice ({chosen}: "
        "`physforecast.threads.auto_threads` once the 1-minute load average shows the "
        f"competitors; it lags a load that has just started). {contended_rounds} interleaved "
        "rounds after a warm-up of each; ratio automatic / default per round.",
        "",
        "| threads | seconds | automatic / default |",
        "|---|---:|---:|",
        f"| torch's default ({default}) | {median(contended['default']):.3f} "
        f"({spread(contended['default'])}) | |",
        f"| automatic ({chosen}) | {median(contended['auto']):.3f} ({spread(contended['auto'])}) "
        f"| {ratio_cell(contended['auto'], contended['default'])} |",
        "",
        f"Machine: {where}.",
        "",
        "Rerun: `physforecast bench train" + (" --quick`" if quick else "`"),
    ]
    return "\n".join(lines) + "\n"
