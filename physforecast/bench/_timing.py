"""Shared by the benches: interleaved timing with warm-up, repeats and spread; the
machine line (with its load); ratio formatting (always package / peer); this process's
memory from ``/proc``."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any


def interleave(
    contenders: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds of each contender per round: every contender warmed up ``warmup`` times,
    then ``repeats`` rounds, each running every contender once, in an order that
    rotates from round to round (no contender always runs first or after another)."""
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def status_mb(field: str) -> float:
    """A memory line of ``/proc/self/status`` in MB: ``VmRSS`` (now) or ``VmHWM`` (the
    peak of this process image since its ``exec``, unlike ``ru_maxrss``, which also
    counts the parent's memory at ``fork``)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise OSError(f"no {field} in /proc/self/status")


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def spread(values: list[float]) -> str:
    """``min-max`` of a list of seconds."""
    return f"{min(values):.3g}-{max(values):.3g}"


def ratios(package: list[float], peer: list[float]) -> tuple[float, float, float]:
    """(median, min, max) of the per-round ratios package / peer (> 1: the package is slower)."""
    r = [a / b for a, b in zip(package, peer)]
    return float(statistics.median(r)), min(r), max(r)


def ratio_cell(package: list[float], peer: list[float]) -> str:
    mid, lo, hi = ratios(package, peer)
    return f"{mid:.2f}x ({lo:.2f}-{hi:.2f})"


def machine(threads: int | None = None) -> str:
    """Platform, cores, torch threads and the load (``uptime``) right now."""
    import torch

    try:
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "n/a"
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = os.cpu_count()
    n = threads if threads is not None else torch.get_num_threads()
    return (
        f"{platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} logical CPUs ({allowed} allowed), load average {load} "
        f"(1, 5, 15 min); Python {platform.python_version()}, torch {torch.__version__}, "
        f"{n} intra-op thread(s)"
    )


def smoke_note(quick: bool) -> list[str]:
    """The caveat every quick report starts with."""
    if not quick:
        return []
    return [
        "> **Smoke run** (`quick=True`): tiny sizes and one or two repeats, to check that "
        "the bench runs. Its numbers say nothing about performance; rerun without "
        "`--quick` for the real measurement.",
        "",
    ]
