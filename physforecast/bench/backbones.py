"""Benchmark: training throughput of every registered backbone on CPU, and the cost of our
adapters over the raw neuraloperator models.

``physforecast bench backbones`` times one training step (forward, MSE loss, backward) of
each backbone, built with its default options for 10 input and 10 output frames of one
variable on a 64 x 64 grid, batch 4, with the thread count a training job would use
(:func:`physforecast.threads.auto_threads`),
and reports samples per second. For ``fno`` and ``uno`` it also times the adapter
against the neuraloperator model it wraps, with the same configuration and the same
weights (a deep copy of the wrapped module), side by side in one run with interleaved
repeats, and checks that both give the same forecast. ``quick=True`` runs a tiny setting
in seconds (used by a test).
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import physforecast as pf
from physforecast.backbone_table import count_parameters
from physforecast.layers import stack_time, unstack_time

__all__ = ["run", "ADAPTED"]

#: Backbones that wrap a neuraloperator model: name -> attribute holding the raw model.
ADAPTED = {"fno": "fno", "uno": "uno"}


@dataclass(frozen=True)
class _Setting:
    batch: int
    steps: int
    size: int
    repeats: int  # timed steps per backbone in the throughput table
    pairs: int  # interleaved (adapter, raw) pairs in the overhead table


_FULL = _Setting(batch=4, steps=10, size=64, repeats=5, pairs=30)
_QUICK = _Setting(batch=1, steps=2, size=16, repeats=1, pairs=2)


def _machine() -> str:
    load = (
        f", load average {os.getloadavg()[0]:.1f} at the start" if hasattr(os, "getloadavg") else ""
    )
    return (
        f"{platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} logical CPUs{load}, Python {platform.python_version()}, "
        f"torch {torch.__version__} with {torch.get_num_threads()} thread(s)"
    )


def _train_step(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(x).square().mean().backward()

    return step


def _interleaved(steps: list[Callable[[], None]], repeats: int) -> list[list[float]]:
    """Seconds of each step callable: one warm-up each, then ``repeats`` rounds that run
    every callable once, in alternating order, so slow drifts of the machine hit all alike."""
    for step in steps:
        step()
    times: list[list[float]] = [[] for _ in steps]
    for r in range(repeats):
        order = range(len(steps)) if r % 2 == 0 else reversed(range(len(steps)))
        for i in order:
            t0 = time.perf_counter()
            steps[i]()
            times[i].append(time.perf_counter() - t0)
    return times


def _throughput_rows(s: _Setting) -> list[str]:
    rows = []
    x = torch.randn(s.batch, s.steps, 1, s.size, s.size)
    for name in pf.list_backbones():
        torch.manual_seed(0)
        model = pf.create_backbone(name, in_steps=s.steps, out_steps=s.steps, in_channels=1)
        try:
            (times,) = _interleaved([_train_step(model, x)], s.repeats)
        except ValueError as err:  # a size the model does not accept
            rows.append(f"| {name} | {count_parameters(model):,} | n/a | n/a ({err}) |")
            continue
        sec = statistics.median(times)
        rows.append(
            f"| {name} | {count_parameters(model):,} | {sec * 1e3:.1f} | {s.batch / sec:.1f} |"
        )
    return rows


def _overhead_rows(s: _Setting) -> list[str]:
    rows = []
    x = torch.randn(s.batch, s.steps, 1, s.size, s.size)
    x_raw = stack_time(x).contiguous()
    for name, attr in ADAPTED.items():
        if name not in pf.list_backbones():
            continue
        torch.manual_seed(0)
        adapter = pf.create_backbone(name, in_steps=s.steps, out_steps=s.steps, in_channels=1)
        raw = copy.deepcopy(getattr(adapter, attr))  # same configuration, same weights
        with torch.no_grad():
            diff = (adapter.eval()(x) - unstack_time(raw.eval()(x_raw), s.steps)).abs().max()
        adapter.train(), raw.train()
        pair = [_train_step(adapter, x), _train_step(raw, x_raw)]
        t_adapter, t_raw = _interleaved(pair, s.pairs)
        paired = statistics.median(a / b for a, b in zip(t_adapter, t_raw))
        best = min(t_adapter) / min(t_raw)
        rows.append(
            f"| {name} | {type(raw).__module__}.{type(raw).__name__} "
            f"| {min(t_adapter) * 1e3:.1f} | {min(t_raw) * 1e3:.1f} "
            f"| {100 * (best - 1):+.1f} % | {100 * (paired - 1):+.1f} % | {diff.item():.1e} |"
        )
    return rows


def run(quick: bool = False) -> str:
    """Measure and return the Markdown report.

    Parameters
    ----------
    quick : bool
        Batch 1, 2 frames in and out, 16 x 16, one repeat: seconds, for tests.

    Returns
    -------
    str
        Markdown: the setting, a throughput table for every backbone, the adapter
        overhead table, the machine and the command to rerun.
    """
    s = _QUICK if quick else _FULL
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    from physforecast.threads import auto_threads

    used = auto_threads()
    torch.set_num_threads(used)
    try:
        machine = _machine()
        throughput = _throughput_rows(s)
        overhead = _overhead_rows(s)
    finally:
        torch.set_num_threads(threads)
    from ._timing import smoke_note

    lines = [
        "# Backbones: training throughput on CPU",
        "",
        *smoke_note(quick),
        f"One training step = forward, MSE loss, backward; batch {s.batch}, "
        f"{s.steps} frames in and {s.steps} out, 1 variable, {s.size} x {s.size} grid, fp32, "
        f"{used} CPU thread(s) (the training job's thread policy), default options of every backbone. Median of {s.repeats} timed steps after one "
        f"warm-up step.",
        "",
        "| backbone | parameters | ms / step | samples / s |",
        "|---|---:|---:|---:|",
        *throughput,
        "",
        "## Adapter overhead against the raw neuraloperator model",
        "",
        "The raw model is a deep copy of the module the adapter wraps (same configuration "
        "and weights), fed the same frames stacked as channels. The two are timed side by "
        f"side: one warm-up step each, then {s.pairs} rounds of one step each in "
        "alternating order. Times are the fastest step (the least disturbed by other "
        "load); `overhead (fastest)` compares those, `overhead (paired median)` is the "
        "median of the per-round ratios. Target: at most 5 %. `max abs diff` compares the "
        "two forecasts in eval mode.",
        "",
        "| backbone | raw model | adapter ms / step | raw ms / step "
        "| overhead (fastest) | overhead (paired median) | max abs diff |",
        "|---|---|---:|---:|---:|---:|---:|",
        *overhead,
        "",
        f"Machine: {machine}.",
        "",
        f"Command: `physforecast bench backbones` "
        f"({'quick setting, ' if quick else ''}took {time.perf_counter() - t0:.0f} s).",
        "",
    ]
    return "\n".join(lines)
