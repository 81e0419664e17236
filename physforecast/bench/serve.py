"""Benchmark: Academus students against their deep teacher, in-process and over HTTP.

``physforecast bench serve`` trains a deep teacher (a residual CNN, 8 blocks) briefly on
ns2d, distils it twice into ``K`` two-layer students (boosting on the teacher's forecast,
and stacking on its latent with the teacher's decoder on top) and measures, side by side
in one run:

1. **batch-1 latency** of one model call (median and p99 over interleaved repeats, one CPU
   thread) of the teacher and of the students for ``n_active = 1 .. K``, and the
   vectorized (``vmap``) call against the loop;
2. **accuracy** on the test split, in physical units: RMSE and relative L2 against the
   truth and against the teacher, for every ``n_active``;
3. **HTTP**: ``physforecast serve``'s application on 127.0.0.1 with each model, batch-1
   requests one after another, then a bounded burst from a load generator (client threads
   in another process, on loopback): throughput, latency percentiles, batch sizes and the
   ``n_active`` the load-adaptive policy chose.

The goal from the Academus paper is >= 1.6x lower latency than the teacher at <= 10 %
accuracy loss; the report says which contender meets it. ``quick=True`` runs a tiny
setting in seconds (a smoke test, not a measurement).
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import physforecast as pf

__all__ = ["run"]


@dataclass(frozen=True)
class _Setting:
    data: dict[str, Any]  # ns2d options
    in_steps: int
    out_steps: int
    stride: int
    split: tuple[float, float, float]
    teacher: dict[str, Any]  # resnet options
    teacher_epochs: int
    students: int
    width: int
    kernel_output: int  # kernel of the output-boosting students
    kernel_stacked: int  # kernel of the stacked students
    student_epochs: int
    repeats: int  # timed model calls per contender
    http_requests: int  # batch-1 requests one after another
    burst: int  # requests in the burst
    clients: int  # concurrent client threads of the load generator
    max_batch: int = 16
    max_wait_ms: float = 10.0
    threads: int = 1


_FULL = _Setting(
    data={"n_trajectories": 40, "size": 32, "n_steps": 30},
    in_steps=4,
    out_steps=4,
    stride=2,
    split=(0.8, 0.1, 0.1),
    teacher={"hidden": 32, "n_blocks": 8, "padding_mode": "circular"},
    teacher_epochs=6,
    students=4,
    width=32,
    kernel_output=5,
    kernel_stacked=3,
    student_epochs=4,
    repeats=200,
    http_requests=60,
    burst=96,
    clients=16,
)
_QUICK = _Setting(
    data={"n_trajectories": 4, "size": 16, "n_steps": 8},
    in_steps=2,
    out_steps=2,
    stride=1,
    split=(0.5, 0.25, 0.25),
    teacher={"hidden": 8, "n_blocks": 2, "padding_mode": "circular"},
    teacher_epochs=1,
    students=2,
    width=4,
    kernel_output=3,
    kernel_stacked=3,
    student_epochs=1,
    repeats=3,
    http_requests=3,
    burst=6,
    clients=3,
)


def _machine() -> str:
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return (
        f"{platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} logical CPUs{load}, Python {platform.python_version()}, "
        f"torch {torch.__version__} with {torch.get_num_threads()} thread(s)"
    )


def _interleaved(calls: list[Callable[[], object]], repeats: int) -> list[list[float]]:
    """Milliseconds of each callable: one warm-up each, then ``repeats`` rounds that call each
    once, in alternating order, so slow drifts of a shared machine hit all alike."""
    for call in calls:
        call()
    times: list[list[float]] = [[] for _ in calls]
    for r in range(repeats):
        order = range(len(calls)) if r % 2 == 0 else reversed(range(len(calls)))
        for i in order:
            t0 = time.perf_counter()
            calls[i]()
            times[i].append((time.perf_counter() - t0) * 1e3)
    return times


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


# ------------------------------------------------------------------ models


def _train_teacher(s: _Setting, root: Path) -> Path:
    from physforecast.config import Config, apply_overrides
    from physforecast.training.run import train

    overrides = [
        "data.dataset=ns2d",
        *(f"data.options.{k}={v}" for k, v in s.data.items()),
        "data.options.progress=false",
        f"data.in_steps={s.in_steps}",
        f"data.out_steps={s.out_steps}",
        f"data.stride={s.stride}",
        f"data.split=[{','.join(str(f) for f in s.split)}]",
        "model.backbone=resnet",
        *(f"model.options.{k}={v}" for k, v in s.teacher.items()),
        f"train.epochs={s.teacher_epochs}",
        "train.device=cpu",
        f"out={root / 'teacher'}",
    ]
    return train(apply_overrides(Config(), overrides), evaluate=False)


#: The student sets: label -> (stack on the teacher's latent, latent weight).
_SETS = {
    "output": (False, 0.0),
    "stacked": (True, 0.01),
    "stacked, latent weight 1": (True, 1.0),
}


def _distil(s: _Setting, teacher_run: Path, root: Path, label: str) -> tuple[Path, list[dict]]:
    from physforecast.inference.runs import distill_run

    stack, weight = _SETS[label]
    return distill_run(
        teacher_run,
        out=root / f"students-{len(list(root.glob('students-*')))}",
        n_students=s.students,
        width=s.width,
        kernel_size=s.kernel_stacked if stack else s.kernel_output,
        stack=stack,
        latent_weight=weight,
        epochs=s.student_epochs,
        device="cpu",
    )


# ------------------------------------------------------------------ measurements


@torch.no_grad()
def _latency(s: _Setting, teacher: torch.nn.Module, sets: dict[str, Any], x: torch.Tensor):
    """Batch-1 model-call milliseconds of the teacher, every n_active, and the loop."""
    names: list[tuple[str, int | None, bool]] = [("teacher", None, True)]
    calls: list[Callable[[], object]] = [lambda: teacher(x)]
    for label, model in sets.items():
        for n in range(1, model.n_students + 1):
            names.append((label, n, True))
            calls.append(lambda m=model, n=n: m(x, n_active=n))
        names.append((label, model.n_students, False))
        calls.append(lambda m=model: m(x, vectorize=False))
    times = _interleaved(calls, s.repeats)
    return {key: t for key, t in zip(names, times)}


def _window_body(ds: Any, s: _Setting) -> bytes:
    """One request: the last ``T_in`` frames of one trajectory, as netCDF3 bytes."""
    one = ds.isel(trajectory=[0], time=slice(-s.in_steps, None))
    return bytes(one.to_netcdf(engine="scipy"))


# The load generator runs in its own Python process (httpx only, no torch), so that its
# threads do not compete with the server's for the interpreter lock.
_LOADGEN = r"""
import json, sys, threading, time
import httpx

url, path = sys.argv[1], sys.argv[2]
sequential, burst, clients = (int(v) for v in sys.argv[3:6])
body = open(path, "rb").read()
headers = {"content-type": "application/x-netcdf"}


def one(client):
    t0 = time.perf_counter()
    r = client.post(url + "/forecast", content=body, headers=headers)
    return (time.perf_counter() - t0) * 1e3, r.status_code


with httpx.Client(timeout=120) as c:
    for _ in range(2):
        one(c)
    single = [one(c) for _ in range(sequential)]
results, left, lock = [], [burst], threading.Lock()
barrier = threading.Barrier(clients + 1)


def work():
    with httpx.Client(timeout=120) as c:
        barrier.wait()
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            out = one(c)
            with lock:
                results.append(out)


threads = [threading.Thread(target=work) for _ in range(clients)]
for t in threads:
    t.start()
barrier.wait()
t0 = time.perf_counter()
for t in threads:
    t.join()
print(json.dumps({"single": single, "burst": results, "wall": time.perf_counter() - t0}))
"""


def _http(s: _Setting, forecaster: Any, config: Any, body_path: Path) -> dict[str, Any]:
    import json
    import subprocess
    import sys

    import httpx

    from physforecast.inference.server import BackgroundServer, create_app

    with BackgroundServer(create_app(forecaster, config)) as server:
        before = httpx.get(server.url + "/metrics", timeout=60).json()
        args = [str(body_path), str(s.http_requests), str(s.burst), str(s.clients)]
        done = subprocess.run(
            [sys.executable, "-c", _LOADGEN, server.url, *args],
            capture_output=True,
            text=True,
            timeout=1800,
            check=True,
        )
        after = httpx.get(server.url + "/metrics", timeout=60).json()
    load = json.loads(done.stdout)
    single = [ms for ms, code in load["single"] if code == 200]
    ok = [ms for ms, code in load["burst"] if code == 200]
    rejected = sum(code == 503 for _, code in load["burst"])

    def delta(key: str) -> float:
        return after["batches"][key] - before["batches"][key]

    used = {
        k: v - before["n_active"]["counts"].get(k, 0)
        for k, v in after["n_active"]["counts"].items()
        if v - before["n_active"]["counts"].get(k, 0)
    }
    return {
        "single": single,
        "burst": ok,
        "burst_rejected": rejected,
        "throughput": len(ok) / load["wall"],
        "mean_batch": delta("rows") / delta("count") if delta("count") else 0.0,
        "n_active": used,
    }


# ------------------------------------------------------------------ report


def _row_accuracy(rows: list[dict], n: int | None) -> dict:
    return next(r for r in rows if r["n_active"] == n)


def run(quick: bool = False) -> str:
    """Measure and return the Markdown report.

    Parameters
    ----------
    quick : bool
        A tiny ns2d set, a 2-block teacher trained one epoch, two students, a few repeats:
        seconds, for tests (not a measurement).

    Returns
    -------
    str
        Markdown: the setting, latency and accuracy side by side for every ``n_active``,
        the goal check, the HTTP table, the machine and the command to rerun.
    """
    from physforecast.data import open_dataset
    from physforecast.inference.policy import calibrate
    from physforecast.inference.runs import load_student_model, load_students
    from physforecast.inference.server import ServeConfig, model_runner

    s = _QUICK if quick else _FULL
    t_start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(s.threads)
    try:
        with tempfile.TemporaryDirectory(prefix="physforecast-bench-serve-") as tmp:
            root = Path(tmp)
            t0 = time.perf_counter()
            teacher_run = _train_teacher(s, root)
            t_teacher = time.perf_counter() - t0
            runs, accuracy, t_distil = {}, {}, {}
            for label in _SETS:
                t0 = time.perf_counter()
                runs[label], accuracy[label] = _distil(s, teacher_run, root, label)
                t_distil[label] = time.perf_counter() - t0
            teacher_fc = pf.load(teacher_run)
            models = {label: load_student_model(path) for label, path in runs.items()}
            cfg = teacher_fc.config
            ds = open_dataset(cfg.data.dataset, options=cfg.data.options).load()
            frames = ds["vorticity"].isel(trajectory=[0], time=slice(-s.in_steps, None))
            x = teacher_fc.normalizer.normalize(
                torch.from_numpy(frames.values.astype(np.float32))[:, :, None]
            )  # one window (1, T_in, 1, H, W), normalized
            machine = _machine()
            latency = _latency(s, teacher_fc.model.eval(), models, x)

            body = root / "request.nc"
            body.write_bytes(_window_body(ds, s))
            k = s.students
            students_fc = load_students(runs["output"])
            cost = calibrate(
                model_runner(students_fc.model), x, None, n_students=k, max_batch=s.max_batch
            )
            budget = cost.batch_ms(k, 4)
            base = dict(max_batch=s.max_batch, max_wait_ms=s.max_wait_ms, queue=s.burst + s.clients)
            http = {
                "teacher": _http(s, teacher_fc, ServeConfig(**base), body),
                f"students (output), all {k}": _http(s, students_fc, ServeConfig(**base), body),
                f"students (output), adaptive, budget {budget:.1f} ms": _http(
                    s,
                    students_fc,
                    ServeConfig(**base, latency_budget_ms=budget, cost=cost),
                    body,
                ),
            }
    finally:
        torch.set_num_threads(threads)
    return _report(s, quick, latency, accuracy, http, machine, t_teacher, t_distil, t_start)


def _report(
    s: _Setting,
    quick: bool,
    latency: dict,
    accuracy: dict[str, list[dict]],
    http: dict[str, dict],
    machine: str,
    t_teacher: float,
    t_distil: dict[str, float],
    t_start: float,
) -> str:
    teacher_ms = statistics.median(latency[("teacher", None, True)])
    lines = [
        "# Serving: Academus students against their teacher",
        "",
        *(
            ["**Quick setting: a smoke run on a tiny set, not a measurement.**", ""]
            if quick
            else []
        ),
        f"ns2d ({s.data['n_trajectories']} trajectories, {s.data['size']} x {s.data['size']}, "
        f"{s.data['n_steps']} frames), {s.in_steps} frames in, {s.out_steps} out, window stride "
        f"{s.stride}. Teacher: ResNet backbone ({s.teacher['n_blocks']} residual blocks of "
        f"{s.teacher['hidden']} channels, {2 * s.teacher['n_blocks'] + 3} convolutions deep), "
        f"trained {s.teacher_epochs} epochs ({t_teacher:.0f} s). Students: {s.students} of depth 2, "
        f"width {s.width}, distilled {s.student_epochs} epochs each on the training split, in "
        f"three ways: **output** (boosting on the teacher's forecast, kernel {s.kernel_output}, "
        f"{t_distil['output']:.0f} s), **stacked** (boosting on the teacher's latent, decoded by "
        f"the teacher's own head, kernel {s.kernel_stacked}, latent-matching weight 0.01, the "
        f"default, {t_distil['stacked']:.0f} s) and the same with latent weight 1 "
        f"({t_distil['stacked, latent weight 1']:.0f} s).",
        "",
        "## Latency and accuracy, side by side",
        "",
        f"Latency: one model call on one window, fp32, {s.threads} CPU thread, median and p99 of "
        f"{s.repeats} calls per row, all rows interleaved in one loop (one warm-up each). "
        "Speedup = teacher median / row median. Accuracy: the test split, physical units, "
        "mean over windows, lead times and variables; RMSE change is against the teacher's RMSE "
        "(vs truth).",
        "",
        "| model | n_active | median ms | p99 ms | speedup | RMSE | rel-L2 | RMSE vs teacher "
        "| rel-L2 vs teacher | RMSE change |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    t_row = _row_accuracy(accuracy["output"], None)
    t_times = latency[("teacher", None, True)]
    lines.append(
        f"| teacher | - | {teacher_ms:.2f} | {_p(t_times, 99):.2f} | 1.00x | {t_row['rmse']:.4g} "
        f"| {t_row['rel_l2']:.4g} | 0 | 0 | 0 % |"
    )
    verdicts = []
    for label in _SETS:
        best = None
        for n in range(1, s.students + 1):
            times = latency[(label, n, True)]
            med = statistics.median(times)
            acc = _row_accuracy(accuracy[label], n)
            speed = teacher_ms / med
            lines.append(
                f"| students ({label}) | {n} | {med:.2f} | {_p(times, 99):.2f} | {speed:.2f}x "
                f"| {acc['rmse']:.4g} | {acc['rel_l2']:.4g} | {acc['rmse_vs_teacher']:.3g} "
                f"| {acc['rel_l2_vs_teacher']:.3g} | {100 * acc['rmse_change']:+.1f} % |"
            )
            if speed >= 1.6 and acc["rmse_change"] <= 0.10 and best is None:
                best = (n, speed, acc["rmse_change"])
        loop = statistics.median(latency[(label, s.students, False)])
        vec = statistics.median(latency[(label, s.students, True)])
        verdicts.append(
            f"- **students ({label})**: "
            + (
                f"the goal holds from n_active = {best[0]} ({best[1]:.2f}x faster, RMSE change "
                f"{100 * best[2]:+.1f} %)."
                if best
                else "the goal (>= 1.6x faster at <= 10 % RMSE loss) does not hold at any n_active."
            )
            + f" All {s.students} students: vmap call {vec:.2f} ms, loop {loop:.2f} ms "
            f"(loop / vmap = {loop / vec:.2f})."
        )
    lines += ["", "Goal (Academus: 1.6-4.1x lower latency): >= 1.6x at <= 10 % accuracy loss.", ""]
    lines += verdicts
    lines += [
        "",
        "## Over HTTP",
        "",
        f"`physforecast serve`'s application (uvicorn on 127.0.0.1 in a thread of this "
        f"process, max batch {s.max_batch}, max wait {s.max_wait_ms:g} ms); the load generator "
        "is another process (httpx) on loopback. Batch-1: "
        f"{s.http_requests} requests of one window (netCDF3 in and out, {s.in_steps} frames of "
        f"{s.data['size']} x {s.data['size']}) one after another. Burst: "
        f"{s.burst} such requests from {s.clients} client threads at once, timed from the first "
        "to the last answer. The adaptive server's latency budget is the calibrated time of a "
        "4-window call with all students.",
        "",
        "| server | batch-1 median ms | batch-1 p99 ms | burst req/s | burst p50 ms | burst p99 ms "
        "| mean batch | n_active used (calls) | 503 |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for name, h in http.items():
        used = ", ".join(f"{k}: {v}" for k, v in sorted(h["n_active"].items())) or "-"
        burst = h["burst"] or [float("nan")]
        lines.append(
            f"| {name} | {statistics.median(h['single']):.1f} | {_p(h['single'], 99):.1f} "
            f"| {h['throughput']:.1f} | {_p(burst, 50):.1f} | {_p(burst, 99):.1f} "
            f"| {h['mean_batch']:.1f} | {used} | {h['burst_rejected']} |"
        )
    teacher_http = statistics.median(http["teacher"]["single"])
    students_http = statistics.median(http[next(k for k in http if "all" in k)]["single"])
    lines += [
        "",
        f"Over HTTP the batch-1 speedup is {teacher_http / students_http:.2f}x (teacher / all "
        "students, medians).",
        "",
        "Notes. On one CPU thread the students do not run at the same time: the vectorized "
        "call turns them into grouped convolutions, so the gain is fewer operations in two "
        "sequential layers, not concurrency. The stacked students also run the teacher's "
        "decoder head after their sum. The machine is shared by other jobs (load average "
        "above); ratios within this report are more reliable than absolute times.",
        "",
        f"Machine: {machine}.",
        "",
        f"Command: `physforecast bench serve{' --quick' if quick else ''}` (took "
        f"{time.perf_counter() - t_start:.0f} s).",
        "",
    ]
    return "\n".join(lines)
