"""Benchmark: training beyond one machine, measured on one.

``physforecast bench scale`` has three parts.

1. **Convergence at equal steps** on ns2d (32 x 32, 4 -> 4 frames), with ``world``
   gloo processes on this CPU running a small FNO under DDP: plain all-reduce, DLCP at
   loss bounds 1 / 5 / 10 %, random chunk dropping at the same rates, and DS-Sync
   (groups of 2, reshuffled every step, final global average). Same initial weights,
   same data order and the same Adam + cosine schedule for every contender; final
   validation RMSE (physical units) and bytes each worker hands to its collectives per
   step. Contenders run one after the other inside the same processes, in alternating
   order over the seeds.
2. **The surge curve**: one process, a smaller FNO, a grid of batch sizes x Adam
   learning rates at an equal budget of training examples; the best learning rate per
   batch size (parabolic refinement in log lr), the fitted Adam (surge) and SGD laws,
   and a PNG plot.
3. **Network-model estimates** of step time at 8 to 1024 workers for all-reduce, DLCP
   and DS-Sync from the bytes, collectives and compute time measured in part 1, with
   the model's assumptions stated. These are model estimates, not measurements.

``quick=True`` runs a tiny version of all three in seconds (a smoke test: its numbers
mean nothing).
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

import physforecast as pf
from physforecast.data import ForecastWindows, Normalizer, open_dataset, split_indices
from physforecast.training.averaging import AVERAGERS
from physforecast.training.comm_hooks import COMM_HOOKS
from physforecast.training.distributed import launch_local
from physforecast.training.dssync import consensus_distance
from physforecast.training.network_model import (
    AllreduceScheme,
    DLCPScheme,
    DSSyncScheme,
    NetworkModel,
    StepProfile,
    estimate_table,
)
from physforecast.training.noise_scale import GradientStats, NoiseScaleMonitor, gradient_stats_hook
from physforecast.training.surge import (
    adam_optimal_lr,
    fit_surge,
    plot_surge,
    run_lr_grid,
    sgd_optimal_lr,
)

__all__ = ["run", "Setup", "FULL", "QUICK"]

FIGURE_NAME = "benchmarks_scale_surge.png"


@dataclass(frozen=True)
class Setup:
    """Sizes of one benchmark run."""

    data: dict[str, Any]
    in_steps: int
    out_steps: int
    backbone: dict[str, Any]
    world: int
    local_batch: int
    steps: int
    lr: float
    bounds: tuple[float, ...]
    stress_bounds: tuple[float, ...]
    chunk_size: int
    seeds: tuple[int, ...]
    surge_backbone: dict[str, Any]
    surge_batches: tuple[int, ...]
    surge_lrs: tuple[float, ...]
    surge_examples: int
    surge_seeds: tuple[int, ...]
    workers: tuple[int, ...] = (8, 32, 128, 512, 1024)
    model_steps: int = 200
    timeout: float = 1800.0
    split: tuple[float, float, float] = (0.75, 0.25, 0.0)


@dataclass(frozen=True)
class Contender:
    """One way to train: a comm hook by name, an averager by name, their options."""

    label: str
    hook: str = "allreduce"
    hook_options: dict[str, Any] = field(default_factory=dict)
    averager: str = "none"
    averager_options: dict[str, Any] = field(default_factory=dict)
    measure_noise: bool = False


FULL = Setup(
    data={"n_trajectories": 32, "size": 32, "n_steps": 20, "dt_save": 0.5, "progress": False},
    in_steps=4,
    out_steps=4,
    backbone={"name": "fno", "hidden": 16, "modes": 8, "n_layers": 2},
    world=4,
    local_batch=8,
    steps=100,
    lr=3e-3,
    bounds=(0.01, 0.05, 0.10),
    stress_bounds=(0.5,),
    chunk_size=64,
    seeds=(0, 1),
    surge_backbone={"name": "fno", "hidden": 8, "modes": 6, "n_layers": 2},
    surge_batches=(2, 4, 8, 16, 32, 64),
    surge_lrs=tuple(float(x) for x in np.geomspace(1e-3, 1e-1, 7)),
    surge_examples=640,
    surge_seeds=(0, 1),
)

QUICK = Setup(
    data={"n_trajectories": 6, "size": 16, "n_steps": 6, "dt_save": 0.1, "progress": False},
    in_steps=2,
    out_steps=2,
    backbone={"name": "fno", "hidden": 4, "modes": 4, "n_layers": 1},
    world=2,
    local_batch=2,
    steps=3,
    lr=3e-3,
    bounds=(0.05,),
    stress_bounds=(),
    chunk_size=16,
    seeds=(0,),
    surge_backbone={"name": "fno", "hidden": 4, "modes": 4, "n_layers": 1},
    surge_batches=(2, 4, 8),
    surge_lrs=(1e-3, 1e-2, 1e-1),
    surge_examples=16,
    surge_seeds=(0,),
    workers=(8, 64),
    model_steps=20,
    timeout=300.0,
)


# -- data and models ----------------------------------------------------------------------


def _windows(setup: Setup) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], float]:
    """Train and validation windows as stacked tensors, and the field's std (for RMSE units)."""
    ds = open_dataset("ns2d", options=setup.data)
    train_sel, val_sel, _ = split_indices(ds, setup.split, seed=0)
    norm = Normalizer.fit(ds, ["vorticity"], selection=train_sel)
    out = []
    for sel in (train_sel, val_sel):
        w = ForecastWindows(
            ds, ["vorticity"], setup.in_steps, setup.out_steps, selection=sel, normalizer=norm
        )
        samples = [w[i] for i in range(len(w))]
        out.append({k: torch.stack([s[k] for s in samples]) for k in ("x", "y")})
    return out[0], out[1], float(norm.std[0])


def _model(spec: dict[str, Any], setup: Setup, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    options = {k: v for k, v in spec.items() if k != "name"}
    return pf.create_backbone(
        spec["name"], in_steps=setup.in_steps, out_steps=setup.out_steps, in_channels=1, **options
    )


def _rmse(model: nn.Module, val: dict[str, torch.Tensor], std: float, batch: int = 64) -> float:
    model.eval()
    sq, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(val["x"]), batch):
            pred = model(val["x"][i : i + batch])
            sq += float((pred - val["y"][i : i + batch]).double().square().sum())
            n += pred.numel()
    model.train()
    return math.sqrt(sq / n) * std


# -- part 1: convergence at equal steps -------------------------------------------------------


def _contenders(setup: Setup) -> list[Contender]:
    chunks = {"chunk_size": setup.chunk_size}
    bounds = (*setup.bounds, *setup.stress_bounds)
    return [
        Contender("allreduce", measure_noise=True),
        *(Contender(f"DLCP {b:.0%}", "dlcp", {"loss_bound": b, **chunks}) for b in bounds),
        *(
            Contender(f"random drop {b:.0%}", "random_drop", {"loss_bound": b, **chunks})
            for b in bounds
        ),
        Contender("DS-Sync g=2", averager="dssync", averager_options={"group_size": 2}),
    ]


def _real(t: torch.Tensor) -> torch.Tensor:
    """A complex tensor as its (..., 2) real view; a real tensor unchanged."""
    return torch.view_as_real(t) if t.is_complex() else t


def _relative_consensus(model: nn.Module, world: int) -> float:
    """Mean squared distance of the workers' parameters to their mean, over its squared norm."""
    flat = torch.cat([_real(p.detach()).flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    stacked = torch.stack(gathered).double()
    return float(consensus_distance(stacked) / stacked.mean(0).square().sum())


def _seeded(registry, name: str, options: dict[str, Any], seed: int) -> dict[str, Any]:
    """``options`` plus ``seed`` when the registry entry takes one."""
    takes_seed = "seed" in (registry.options(name) or [])
    return {**options, "seed": seed} if takes_seed else dict(options)


def _train_one(
    rank: int,
    world: int,
    setup: Setup,
    seed: int,
    contender: Contender,
    train: dict[str, torch.Tensor],
    val: dict[str, torch.Tensor],
    std: float,
) -> dict[str, Any]:
    model = _model(setup.backbone, setup, seed)
    ddp = nn.parallel.DistributedDataParallel(model)
    averager = AVERAGERS.create(
        contender.averager,
        **_seeded(AVERAGERS, contender.averager, contender.averager_options, seed),
    )
    if averager is not None:
        hook = averager.comm_hook()  # gradients stay local; the averager mixes the models
    else:
        options = _seeded(COMM_HOOKS, contender.hook, contender.hook_options, seed)
        hook = COMM_HOOKS.create(contender.hook, module=model, **options)
    stats = monitor = None
    if contender.measure_noise:  # per-worker vs all-reduced norms around the same hook
        stats = GradientStats(hook.state, hook.hook)
        monitor = NoiseScaleMonitor(beta=0.95)
        ddp.register_comm_hook(stats, gradient_stats_hook)
    else:
        hook.register(ddp)
    opt = torch.optim.Adam(model.parameters(), lr=setup.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=setup.steps)
    shard = torch.arange(rank, len(train["x"]), world)
    gen = torch.Generator().manual_seed(1000 * seed + rank)  # same data order for every contender
    times = []
    consensus: list[float] = []
    for step in range(setup.steps):
        if averager is not None and step == setup.steps // 2:
            consensus.append(_relative_consensus(model, world))
        idx = shard[torch.randint(len(shard), (setup.local_batch,), generator=gen)]
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(ddp(train["x"][idx]), train["y"][idx])
        loss.backward()
        if stats is not None:
            small, large = stats.pop_step()
            monitor.update(small, large, setup.local_batch, setup.local_batch * world)
        opt.step()
        sched.step()
        if averager is not None:
            averager.average_parameters(model.parameters())
        times.append(time.perf_counter() - t0)
    result: dict[str, Any] = {
        "label": contender.label,
        "hook": contender.hook,
        "averager": contender.averager,
        "ms_per_step": 1e3 * statistics.median(times),
    }
    if averager is not None:
        result["consensus"] = [*consensus, _relative_consensus(model, world)]
        averager.final_average(model.parameters())
        result["bytes_per_step"] = averager.bytes_per_average(model.parameters())
        result["collectives_per_step"] = 1.0
        result["sent_fraction"] = 1.0
    else:
        totals = hook.state.totals
        result["bytes_per_step"] = (
            totals["bytes_sent"] + totals.get("mask_bytes", 0)
        ) / setup.steps
        result["grad_bytes_per_step"] = totals["bytes_total"] / setup.steps
        result["collectives_per_step"] = totals["collectives"] / setup.steps
        result["sent_fraction"] = totals["bytes_sent"] / max(totals["bytes_total"], 1)
        result["mask_bytes_per_step"] = totals.get("mask_bytes", 0) / setup.steps
    if monitor is not None:
        result["noise_scale"] = monitor.noise_scale
    result["rmse"] = _rmse(model, val, std)  # every rank holds the same model here
    return result


def _compute_seconds(setup: Setup, train: dict[str, torch.Tensor], repeats: int) -> float:
    """Fastest seconds of forward + backward + Adam step of the bare model (no communication).

    The fastest of ``repeats`` is the least disturbed by other load on a shared machine.
    """
    model = _model(setup.backbone, setup, 0)
    opt = torch.optim.Adam(model.parameters(), lr=setup.lr)
    x, y = train["x"][: setup.local_batch], train["y"][: setup.local_batch]
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return min(times[1:])


def _convergence_worker(rank: int, world: int, setup: Setup) -> dict[str, Any]:
    train, val, std = _windows(setup)
    runs = []
    contenders = _contenders(setup)
    for i, seed in enumerate(setup.seeds):
        order = contenders if i % 2 == 0 else contenders[::-1]
        for contender in order:
            result = _train_one(rank, world, setup, seed, contender, train, val, std)
            runs.append({**result, "seed": seed})
    out: dict[str, Any] = {"runs": runs if rank == 0 else []}
    if rank == 0:
        model = _model(setup.backbone, setup, 0)
        out["params"] = sum(p.numel() for p in model.parameters())
        out["param_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
        out["compute_repeats"] = max(3, min(30, setup.steps))
        out["compute_s"] = _compute_seconds(setup, train, repeats=out["compute_repeats"])
        out["windows"] = (len(train["x"]), len(val["x"]))
    return out


# -- part 2: the surge curve -----------------------------------------------------------------


def _surge(setup: Setup) -> dict[str, Any]:
    train, val, std = _windows(setup)

    def train_eval(batch: int, lr: float) -> float:
        losses = []
        for seed in setup.surge_seeds:
            model = _model(setup.surge_backbone, setup, seed)
            opt = torch.optim.Adam(model.parameters(), lr=lr)
            gen = torch.Generator().manual_seed(seed)
            for _ in range(max(1, setup.surge_examples // batch)):
                idx = torch.randint(len(train["x"]), (batch,), generator=gen)
                opt.zero_grad(set_to_none=True)
                loss = nn.functional.mse_loss(model(train["x"][idx]), train["y"][idx])
                if not torch.isfinite(loss):
                    return math.inf
                loss.backward()
                opt.step()
            losses.append(_rmse(model, val, std) ** 2)
        return float(np.mean(losses))

    grid = run_lr_grid(train_eval, setup.surge_batches, setup.surge_lrs, progress=False)
    best = grid.best_lrs()
    adam = fit_surge(grid.batch_sizes, best, law=adam_optimal_lr)
    sgd = fit_surge(grid.batch_sizes, best, law=sgd_optimal_lr)
    return {"grid": grid, "best": best, "adam": adam, "sgd": sgd}


# -- the report -------------------------------------------------------------------------------


def _machine() -> str:
    load = (
        f", load average {os.getloadavg()[0]:.1f} at the start" if hasattr(os, "getloadavg") else ""
    )
    return (
        f"{platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} logical CPUs{load}, Python {platform.python_version()}, "
        f"torch {torch.__version__}"
    )


def _spread(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def _convergence_table(runs: list[dict[str, Any]], setup: Setup) -> list[str]:
    labels = [c.label for c in _contenders(setup)]
    by: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
    for r in runs:
        by[r["label"]].append(r)
    base_rmse = statistics.mean(r["rmse"] for r in by["allreduce"])
    base_bytes = statistics.mean(r["bytes_per_step"] for r in by["allreduce"])
    rows = [
        "| contender | gradient bytes sent | val RMSE | RMSE / allreduce | bytes per step per worker "
        "| bytes / allreduce | collectives per step | ms per step (this machine) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label in labels:
        rs = by[label]
        rmse = [r["rmse"] for r in rs]
        nbytes = statistics.mean(r["bytes_per_step"] for r in rs)
        sent = statistics.mean(r["sent_fraction"] for r in rs)
        rows.append(
            f"| {label} | {sent:.1%} | {_spread(rmse)} | {statistics.mean(rmse) / base_rmse:.3f} "
            f"| {nbytes:,.0f} | {nbytes / base_bytes:.3f} "
            f"| {statistics.mean(r['collectives_per_step'] for r in rs):.1f} "
            f"| {statistics.mean(r['ms_per_step'] for r in rs):.0f} |"
        )
    return rows


def _profile(conv: dict[str, Any], setup: Setup) -> StepProfile:
    runs = conv["runs"]
    ar = [r for r in runs if r["label"] == "allreduce"]
    mid = sorted(setup.bounds)[len(setup.bounds) // 2]
    dl = [r for r in runs if r["label"] == f"DLCP {mid:.0%}"]
    return StepProfile(
        compute_s=conv["compute_s"],
        grad_bytes=int(statistics.mean(r["grad_bytes_per_step"] for r in ar)),
        buckets=max(1, round(statistics.mean(r["collectives_per_step"] for r in ar))),
        param_bytes=conv["param_bytes"],
        dlcp_sent_fraction=statistics.mean(r["sent_fraction"] for r in dl),
        dlcp_mask_bytes=int(statistics.mean(r["mask_bytes_per_step"] for r in dl)),
    )


def _model_rows(profile: StepProfile, setup: Setup, net: NetworkModel) -> list[str]:
    schemes = [
        AllreduceScheme(),
        DLCPScheme(),
        DLCPScheme(counts_collective=False),
        DSSyncScheme(2),
    ]
    rows_by: dict[int, dict[str, Any]] = {}
    for est in estimate_table(
        profile, setup.workers, net, schemes=schemes, steps=setup.model_steps
    ):
        rows_by.setdefault(est.workers, {})[est.scheme] = est
    lines = [
        "| workers | allreduce ms (p99) | DLCP ms (p99) | DLCP, counts in packets, ms "
        "| DS-Sync g=2 ms (p99) | DLCP / allreduce | DS-Sync / allreduce |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, row in rows_by.items():
        a, d, d2, s = (row[k.name] for k in schemes)
        lines.append(
            f"| {n} | {1e3 * a.mean_s:.2f} ({1e3 * a.p99_s:.2f}) | {1e3 * d.mean_s:.2f} "
            f"({1e3 * d.p99_s:.2f}) | {1e3 * d2.mean_s:.2f} | {1e3 * s.mean_s:.2f} "
            f"({1e3 * s.p99_s:.2f}) | {d.mean_s / a.mean_s:.2f} | {s.mean_s / a.mean_s:.2f} |"
        )
    return lines


def _sensitivity_rows(profile: StepProfile, setup: Setup) -> list[str]:
    lines = [
        "| loss probability per link and round | workers | allreduce ms | DLCP ms | DLCP / allreduce |",
        "|---:|---:|---:|---:|---:|",
    ]
    for q in (0.0, 1e-6, 1e-5, 1e-4):
        net = NetworkModel(loss_prob=q)
        for n in sorted({setup.workers[len(setup.workers) // 2], setup.workers[-1]}):
            a, d = estimate_table(
                profile,
                [n],
                net,
                schemes=[AllreduceScheme(), DLCPScheme()],
                steps=setup.model_steps,
            )
            lines.append(
                f"| {q:g} | {n} | {1e3 * a.mean_s:.2f} | {1e3 * d.mean_s:.2f} | {d.mean_s / a.mean_s:.2f} |"
            )
    return lines


def run(quick: bool = False, figure_dir: str | os.PathLike | None = None) -> str:
    """Measure and return the Markdown report.

    Parameters
    ----------
    quick : bool
        A tiny setting that runs in seconds (a smoke test; the numbers mean nothing).
    figure_dir : path, optional
        Where to write the surge plot (``benchmarks_scale_surge.png``); the report links
        it by file name. No plot is written when omitted.

    Returns
    -------
    str
        Markdown: the three parts, the machine and the command to rerun.
    """
    setup = QUICK if quick else FULL
    t0 = time.perf_counter()
    machine = _machine()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        open_dataset("ns2d", options=setup.data)  # simulate once; the processes read the cache
        method = "fork" if sys.platform.startswith("linux") else "spawn"
        t1 = time.perf_counter()
        conv = launch_local(
            _convergence_worker,
            setup.world,
            args=(setup,),
            timeout=setup.timeout,
            start_method=method,
        )[0]
        t_conv = time.perf_counter() - t1
        t1 = time.perf_counter()
        surge = _surge(setup)
        t_surge = time.perf_counter() - t1
    finally:
        torch.set_num_threads(threads)
    profile = _profile(conv, setup)
    net = NetworkModel()
    figure_line = "(pass `figure_dir` to `run` to draw the plot)"
    if figure_dir is not None:
        fig = plot_surge(
            surge["grid"].batch_sizes,
            surge["best"],
            [surge["adam"], surge["sgd"]],
            title=f"best Adam lr at {setup.surge_examples} training examples",
        )
        path = Path(figure_dir) / FIGURE_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, dpi=110, format="png")
        os.replace(tmp, path)
        figure_line = f"![surge curve]({FIGURE_NAME})"
    grid, adam, sgd = surge["grid"], surge["adam"], surge["sgd"]
    noise = [r["noise_scale"] for r in conv["runs"] if "noise_scale" in r]
    dssync_consensus = [r["consensus"] for r in conv["runs"] if "consensus" in r]
    spec = ", ".join(f"{k}={v}" for k, v in setup.backbone.items() if k != "name")
    surge_spec = ", ".join(f"{k}={v}" for k, v in setup.surge_backbone.items() if k != "name")
    d = setup.data
    lines = [
        "# Training at scale: DLCP, DS-Sync and the surge of the best learning rate",
        "",
        *(["**Quick setting: a smoke run; the numbers below mean nothing.**", ""] if quick else []),
        f"ns2d, {d['n_trajectories']} trajectories of {d['n_steps']} frames on a "
        f"{d['size']} x {d['size']} grid, {setup.in_steps} -> {setup.out_steps} frames, "
        f"{conv['windows'][0]} training and {conv['windows'][1]} validation windows. "
        f"RMSE is of the vorticity on the validation windows, in physical units (1/s).",
        "",
        "## 1. Convergence at equal steps",
        "",
        f"{setup.world} gloo processes on this CPU, one thread each, DDP over a "
        f"{setup.backbone['name']} ({spec}; {conv['params']:,} parameters, complex ones "
        f"counted once, {conv['param_bytes']:,} bytes), per-worker "
        f"batch {setup.local_batch}, {setup.steps} steps of Adam (lr {setup.lr:g}, cosine "
        f"schedule), seeds {list(setup.seeds)} (mean ± standard deviation over seeds). "
        f"DLCP and random dropping split every bucket into chunks of {setup.chunk_size} "
        "values; DLCP protects the first layer and ranks the rest by magnitude and layer. "
        "DS-Sync averages parameters in random pairs after every step (no gradient "
        "all-reduce) and once over all workers at the end. *Bytes per step* is what one "
        "worker hands to its collectives (gradient values sent plus DLCP's contribution "
        "counts; DS-Sync: its parameters); a ring moves about twice that over the wire. "
        "*ms per step* is wall time here, with "
        f"{setup.world} processes sharing {os.cpu_count()} cores: only its ratios mean much.",
        "",
        *_convergence_table(conv["runs"], setup),
        "",
        f"Gradient noise scale B_simple measured online during the all-reduce runs "
        f"(per-worker vs all-reduced gradient norms, EMA 0.95): "
        f"{', '.join(f'{x:.2g}' for x in noise)} examples per seed, at the end of training. "
        "DS-Sync's relative consensus distance (mean squared distance of the workers' "
        "parameters to their mean, over the mean's squared norm) half-way and at the end, "
        "before the final average, per seed: "
        f"{'; '.join(', '.join(f'{x:.1e}' for x in c) for c in dssync_consensus)}.",
        "",
        "## 2. The surge curve",
        "",
        f"One process, {setup.surge_backbone['name']} ({surge_spec}), Adam at constant "
        f"learning rate for {setup.surge_examples} training examples (so "
        f"{setup.surge_examples // max(setup.surge_batches)} to "
        f"{setup.surge_examples // min(setup.surge_batches)} steps), validation MSE "
        f"averaged over seeds {list(setup.surge_seeds)}; learning rates "
        f"{', '.join(f'{x:.2g}' for x in grid.lrs)}. Best learning rate per batch size by "
        "a parabola in log lr through the best grid point and its neighbours.",
        "",
        "| batch size | best lr | Adam law | SGD law | best validation MSE |",
        "|---:|---:|---:|---:|---:|",
        *(
            f"| {b} | {lr:.3g} | {adam.lr(b):.3g} | {sgd.lr(b):.3g} | {np.min(row):.4g} |"
            for b, lr, row in zip(grid.batch_sizes, surge["best"], grid.losses)
        ),
        "",
        f"Fitted Adam (surge) law: lr_max = {adam.lr_max:.3g}, B_noise = {adam.b_noise:.3g} "
        f"({'inside' if adam.b_noise_in_range else 'outside'} the measured batch sizes), "
        f"rms log error {adam.rms_log_error:.3f}. Fitted SGD law: lr_max = {sgd.lr_max:.3g}, "
        f"B_noise = {sgd.b_noise:.3g}, rms log error {sgd.rms_log_error:.3f}.",
        "",
        figure_line,
        "",
        "## 3. Step time at 8 to 1024 workers: model estimates",
        "",
        "**These are estimates of a simple network model, not measurements** "
        "(`physforecast.training.network_model`). Inputs measured in part 1: "
        f"{profile.grad_bytes:,} gradient bytes per step in {profile.buckets} bucket(s), "
        f"{profile.param_bytes:,} parameter bytes, {1e3 * profile.compute_s:.1f} ms of "
        "compute per step (forward, backward, Adam; one thread; the fastest of "
        f"{conv['compute_repeats']} steps), "
        "DLCP at the middle bound "
        f"sending {profile.dlcp_sent_fraction:.1%} of the gradient bytes plus "
        f"{profile.dlcp_mask_bytes:,} bytes of counts.",
        "",
        "Assumptions: each link moves "
        f"{net.bandwidth / 1e9:g} GB/s with {1e6 * net.latency:g} us per message; ring "
        "all-reduce in 2(k-1) rounds that each wait for the slowest of k links; per link and "
        f"round a Lomax slowdown (shape {net.link_tail_shape:g}, scale {net.link_tail_scale:g}); "
        f"a packet loss with probability {net.loss_prob:g} per link and round costs a "
        f"loss-intolerant transport a {1e3 * net.rto:g} ms retransmission timeout (DLCP "
        "tolerates it); per-worker compute slowed by a Lomax straggler factor (shape "
        f"{net.compute_tail_shape:g}, scale {net.compute_tail_scale:g}); no overlap of "
        "communication with backward, no tree or hierarchical all-reduce; DS-Sync groups "
        "reshuffled every step, a worker waiting only for its group. "
        f"{setup.model_steps} simulated steps per entry.",
        "",
        *_model_rows(profile, setup, net),
        "",
        "How much of DLCP's modelled gain depends on the assumed loss rate (same model, "
        "the loss probability varied):",
        "",
        *_sensitivity_rows(profile, setup),
        "",
        f"Machine: {machine}.",
        "",
        f"Command: `physforecast bench scale{' --quick' if quick else ''}` "
        f"(part 1 took {t_conv:.0f} s, part 2 {t_surge:.0f} s, "
        f"{time.perf_counter() - t0:.0f} s in all). The plot comes from "
        "`python -c \"from physforecast.bench import scale; print(scale.run(figure_dir='docs'))\"`.",
        "",
    ]
    return "\n".join(lines)
