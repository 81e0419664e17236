"""Benchmark: reading forecast windows, in memory and from a zarr store.

``physforecast bench data`` writes a synthetic zarr store (two float32 fields, dims
(trajectory, time, y, x), chunks of one trajectory by ten frames) and measures

1. throughput, every contender in interleaved rounds after a warm-up of each, the same
   windows in the same order (batches of 16, ``x`` and ``y`` as tensors):
   :class:`~physforecast.data.windows.ForecastWindows` through a torch ``DataLoader``
   (as the Trainer builds it) against plain numpy slicing of the arrays and xbatcher's
   ``BatchGenerator`` in memory; out of core, against direct zarr slicing of the store
   and xbatcher on ``xr.open_zarr``, in order and shuffled; ratios are package / peer;
2. memory: on a store ten times larger, the peak resident memory gained while visiting
   every window, for ForecastWindows, a plain xarray ``isel`` loop and xbatcher's
   ``BatchGenerator`` on the same store, each in its own subprocess (the kernel's
   peak-RSS mark, reset just before iterating, against the resident size then). A lazy
   reader stays far below the size of the store.

``quick=True`` is a smoke run (a tiny store, one round, memory traced in this process).
Forked DataLoader workers run dask's synchronous scheduler (see :func:`worker_init`):
dask's thread pool does not survive ``fork``.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

from physforecast.data.windows import worker_init

from ._timing import interleave, machine, median, ratio_cell, smoke_note, spread, status_mb

__all__ = ["run", "make_store", "worker_init", "measure", "throughput"]

IN_STEPS, OUT_STEPS = 4, 4
METHODS = ("windows", "isel", "xbatcher")


def make_store(
    path: str | os.PathLike, n_trajectories: int, n_time: int, size: int, seed: int = 0
) -> Path:
    """Write a synthetic store with fields ``u`` and ``v``, (N, T, size, size) float32.

    Chunks are one trajectory by up to ten frames by the whole grid.
    """
    import xarray as xr

    rng = np.random.default_rng(seed)
    shape = (n_trajectories, n_time, size, size)
    dims = ("trajectory", "time", "y", "x")
    ds = xr.Dataset(
        {
            "u": (
                dims,
                rng.standard_normal(shape, dtype=np.float32),
                {"units": "1", "long_name": "u"},
            ),
            "v": (
                dims,
                rng.standard_normal(shape, dtype=np.float32),
                {"units": "1", "long_name": "v"},
            ),
            "viscosity": (
                ("trajectory",),
                rng.uniform(1e-4, 1e-3, n_trajectories).astype(np.float32),
            ),
        },
        coords={"time": ("time", np.arange(n_time, dtype=np.float64), {"units": "s"})},
        attrs={"system": "bench", "dt": 1.0, "parameters": "viscosity"},
    )
    path = Path(path)
    chunks = {"trajectory": 1, "time": min(10, n_time)}
    ds.chunk(chunks).to_zarr(path, mode="w", zarr_format=2, consolidated=True)
    return path


def _windows(path: Path, workers: int, batch_size: int) -> tuple[int, float, float]:
    """Iterate every window through a DataLoader: (samples, seconds, seconds to 1st batch)."""
    import torch

    from physforecast.data.formats import open_any
    from physforecast.data.windows import ForecastWindows

    ds = open_any(path, mask="none")
    windows = ForecastWindows(ds, ["u", "v"], IN_STEPS, OUT_STEPS, params=["viscosity"])
    loader = torch.utils.data.DataLoader(
        windows,
        batch_size=batch_size,
        num_workers=workers,
        worker_init_fn=worker_init if workers else None,
    )
    n, first = 0, None
    t0 = time.perf_counter()
    for batch in loader:
        n += batch["x"].shape[0]
        if first is None:
            first = time.perf_counter() - t0
    return n, time.perf_counter() - t0, first or 0.0


def _isel(path: Path) -> int:
    """Plain xarray: ``isel`` each window, ``.values`` each variable."""
    import xarray as xr

    ds = xr.open_zarr(path)
    span = IN_STEPS + OUT_STEPS
    n = 0
    for i in range(ds.sizes["trajectory"]):
        for t0 in range(ds.sizes["time"] - span + 1):
            sub = ds.isel(trajectory=i, time=slice(t0, t0 + span))
            np.stack([sub["u"].values, sub["v"].values], axis=1)
            n += 1
    return n


def _xbatcher(path: Path) -> int:
    """xbatcher: one batch per window (full grid, one trajectory, overlapping in time)."""
    import xarray as xr
    import xbatcher

    ds = xr.open_zarr(path)[["u", "v"]]
    span = IN_STEPS + OUT_STEPS
    gen = xbatcher.BatchGenerator(
        ds,
        input_dims={"trajectory": 1, "time": span, "y": ds.sizes["y"], "x": ds.sizes["x"]},
        input_overlap={"time": span - 1},
    )
    n = 0
    for batch in gen:
        np.stack([batch["u"].values, batch["v"].values], axis=-3)
        n += 1
    return n


def _reset_peak() -> bool:
    """Reset this process's peak-RSS mark (Linux ``clear_refs``); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _warm_up(path: Path) -> None:
    """One batch through ForecastWindows on an in-memory copy of a few frames, so that the
    code pages torch touches on first use are not counted as memory of the iteration."""
    import torch
    import xarray as xr

    from physforecast.data.windows import ForecastWindows

    with xr.open_zarr(path) as store:
        tiny = store.isel(trajectory=slice(0, 1), time=slice(0, 2 * (IN_STEPS + OUT_STEPS))).load()
    windows = ForecastWindows(tiny, ["u", "v"], IN_STEPS, OUT_STEPS, params=["viscosity"])
    next(iter(torch.utils.data.DataLoader(windows, batch_size=16)))


def measure(method: str, path: str | os.PathLike, *, traced: bool = False) -> dict[str, Any]:
    """Visit every window of ``path`` with ``method``; time it and record memory.

    Parameters
    ----------
    method : {"windows", "isel", "xbatcher"}
    path : str or path
        A store made by :func:`make_store`.
    traced : bool
        Also trace Python allocations (``tracemalloc``; slows the loop).

    Returns
    -------
    dict
        ``samples``, ``seconds``, ``rss_peak_gain_mb`` (peak resident memory above the
        resident size before iterating: the peak mark is reset through Linux
        ``/proc/self/clear_refs``, ``rss_peak_reset`` says whether that worked) and
        ``traced_peak_mb`` (or None).
    """
    path = Path(path)
    # Imports out of the way: only the iteration should count.
    for module in ("xarray", "zarr", "dask.array", "torch.utils.data", "xbatcher", "h5py"):
        __import__(module)
    import physforecast.data.formats  # noqa: F401
    import physforecast.data.windows  # noqa: F401

    if method == "windows":
        _warm_up(path)

    reset = _reset_peak()
    before = status_mb("VmRSS")
    if traced:
        tracemalloc.start()
    t0 = time.perf_counter()
    if method == "windows":
        samples = _windows(path, 0, 16)[0]
    elif method == "isel":
        samples = _isel(path)
    elif method == "xbatcher":
        samples = _xbatcher(path)
    else:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    seconds = time.perf_counter() - t0
    traced_peak = None
    if traced:
        traced_peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    if reset:
        peak = status_mb("VmHWM")
    else:  # the lifetime peak, imports included: an upper bound
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "samples": samples,
        "seconds": seconds,
        "rss_peak_gain_mb": max(0.0, peak - before),
        "rss_peak_reset": reset,
        "traced_peak_mb": traced_peak,
    }


def _measure_in_subprocess(method: str, path: Path) -> dict[str, Any]:
    code = (
        "import json, sys; from physforecast.bench.data import measure; "
        "print(json.dumps(measure(sys.argv[1], sys.argv[2])))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, method, str(path)], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"benchmark subprocess for {method!r} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _store_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def _versions() -> str:
    import dask
    import xarray as xr
    import xbatcher
    import zarr

    return f"{xr.__version__}, {zarr.__version__}, {dask.__version__}, {xbatcher.__version__}"


def _batches(n_windows: int, shuffled: bool) -> list[np.ndarray]:
    order = np.arange(n_windows)
    if shuffled:
        order = np.random.default_rng(0).permutation(n_windows)
    return [order[i : i + 16] for i in range(0, n_windows, 16)]


def throughput(
    path: Path, rounds: int, n_traj: int, n_time: int
) -> dict[str, dict[str, list[float]]]:
    """Seconds per pass over every window, per contender, per round (see the module)."""
    import torch
    import xarray as xr
    import xbatcher
    import zarr

    from physforecast.data.formats import open_any
    from physforecast.data.windows import ForecastWindows, collate_windows

    span = IN_STEPS + OUT_STEPS
    starts = n_time - span + 1
    loaded = xr.open_zarr(path).load()
    lazy = open_any(path, mask="none")
    group = zarr.open_group(str(path), mode="r")

    def package(ds: xr.Dataset, shuffled: bool = False):
        # built once, as a training run builds its splits once (the peers' arrays and
        # store handles are opened once too); the warm-up round fills nothing that the
        # rounds reuse except what a second epoch would (the chunk cache is cleared)
        windows = ForecastWindows(ds, ["u", "v"], IN_STEPS, OUT_STEPS, params=["viscosity"])
        sampler = np.concatenate(_batches(len(windows), shuffled)).tolist()

        def go() -> None:
            windows.cache.clear()  # every round decodes its chunks again, like the peers
            loader = torch.utils.data.DataLoader(
                windows, batch_size=16, sampler=sampler, collate_fn=collate_windows
            )
            for _ in loader:
                pass

        return go

    def sliced(u: Any, v: Any, shuffled: bool = False):
        def go() -> None:
            for picks in _batches(n_traj * starts, shuffled):
                frames = np.stack(
                    [
                        np.stack([u[i // starts, i % starts : i % starts + span],
                                  v[i // starts, i % starts : i % starts + span]], 1)
                        for i in picks
                    ]
                )  # fmt: skip
                batch = torch.from_numpy(frames)
                batch[:, :IN_STEPS], batch[:, IN_STEPS:]

        return go

    def batcher(ds: xr.Dataset):
        def go() -> None:
            gen = xbatcher.BatchGenerator(
                ds[["u", "v"]],
                input_dims={"trajectory": 1, "time": span, "y": ds.sizes["y"], "x": ds.sizes["x"]},
                input_overlap={"time": span - 1},
            )
            for b in gen:
                torch.from_numpy(np.stack([b["u"].values, b["v"].values], axis=-3))

        return go

    memory = {
        "package": package(loaded),
        "numpy": sliced(loaded["u"].values, loaded["v"].values),
        "xbatcher": batcher(loaded),
    }
    out_of_core = {
        "package": package(lazy),
        "zarr": sliced(group["u"], group["v"]),
        "xbatcher": batcher(xr.open_zarr(path)),
    }
    shuffled = {
        "package": package(lazy, shuffled=True),
        "zarr": sliced(group["u"], group["v"], shuffled=True),
    }
    return {
        "in memory": interleave(memory, rounds),
        "zarr, in order": interleave(out_of_core, rounds),
        "zarr, shuffled": interleave(shuffled, rounds),
    }


def run(quick: bool = False) -> str:
    """Measure, and return a Markdown report.

    Parameters
    ----------
    quick : bool
        A smoke run: tiny stores, one round, memory traced in this process (seconds).

    Returns
    -------
    str
        Markdown: the stores, the throughput table (package / peer ratios), the memory
        table for the three readers side by side, the machine and the command to rerun.
    """
    import torch

    from physforecast.threads import auto_threads

    threads = auto_threads()
    torch.set_num_threads(threads)
    if quick:
        n_traj, n_time, size, factor, rounds = 2, 10, 8, 2, 1
    else:
        n_traj, n_time, size, factor, rounds = 16, 40, 64, 10, 5
    with tempfile.TemporaryDirectory(prefix="pf-bench-data-") as tmp:
        small = make_store(Path(tmp) / "default.zarr", n_traj, n_time, size)
        large = make_store(Path(tmp) / "large.zarr", n_traj * factor, n_time, size, seed=1)
        speed = throughput(small, rounds, n_traj, n_time)
        memory = {}
        for method in METHODS:
            if quick:
                memory[method] = measure(method, large, traced=True)
            else:
                memory[method] = _measure_in_subprocess(method, large)
        small_mb, large_mb = _store_mb(small), _store_mb(large)
    span = IN_STEPS + OUT_STEPS
    n_windows = n_traj * (n_time - span + 1)
    lines = [
        "# Data loading benchmark",
        "",
        *smoke_note(quick),
        f"Windows of T_in={IN_STEPS}, T_out={OUT_STEPS} frames of two float32 fields (u, v) "
        f"on a {size}x{size} grid, stride 1, from zarr stores chunked by one trajectory x "
        f"10 frames. Default store: {n_traj} trajectories x {n_time} frames ({small_mb:.1f} MB "
        f"on disk, {n_windows} windows); large store: {n_traj * factor} trajectories "
        f"({large_mb:.1f} MB).",
        "",
        "## Throughput: every window once, batches of 16",
        "",
        f"{rounds} interleaved rounds after a warm-up of each contender; seconds per pass are "
        "medians (min-max over rounds); ratios are package / peer per round, median (range): "
        "below 1 the package is faster.",
        "",
        "| data | contender | seconds | windows/s | package / contender |",
        "|---|---|---:|---:|---:|",
    ]
    for where, times in speed.items():
        for name, t in times.items():
            ratio = "" if name == "package" else ratio_cell(times["package"], t)
            label = "physforecast ForecastWindows + DataLoader" if name == "package" else name
            lines.append(
                f"| {where} | {label} | {median(t):.3f} ({spread(t)}) | "
                f"{n_windows / median(t):.0f} | {ratio} |"
            )
    how = "tracemalloc peak in this process" if quick else "peak RSS gain, one subprocess each"
    lines += [
        "",
        f"## Memory: every window of the large store ({large_mb:.1f} MB), one process",
        "",
        f"Memory is the {how}; a reader that loaded the store would need at least its size.",
        "",
        "| reader | windows | seconds | windows/s | peak memory (MB) | memory / isel |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    key = "traced_peak_mb" if quick else "rss_peak_gain_mb"
    ref = memory["isel"]
    names = {
        "windows": "physforecast ForecastWindows",
        "isel": "plain xarray isel loop",
        "xbatcher": "xbatcher BatchGenerator",
    }
    for method in METHODS:
        m = memory[method]
        rate = m["samples"] / m["seconds"]
        mem = m[key] / ref[key] if ref[key] > 0 else float("nan")
        lines.append(
            f"| {names[method]} | {m['samples']} | {m['seconds']:.2f} | {rate:.0f} | "
            f"{m[key]:.1f} | {mem:.2f}x |"
        )
    if not quick and not all(m.get("rss_peak_reset") for m in memory.values()):
        lines += ["", "Peak RSS could not be reset here: the numbers include the imports."]
    lines += [
        "",
        f"Each window is {span} frames x 2 fields x {size}x{size} float32 = "
        f"{span * 2 * size * size * 4 / 2**20:.2f} MB.",
        "",
        f"Machine: {machine(threads)}; xarray, zarr, dask, xbatcher: {_versions()}.",
        "",
        "Rerun: `physforecast bench data" + (" --quick`" if quick else "`"),
    ]
    return "\n".join(lines) + "\n"
