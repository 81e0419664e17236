"""Benchmark: forecasting from a trained run, against what a user would write by hand.

``physforecast bench forecast`` trains a small ns2d FNO run (a few steps: the weights do
not matter for timing), writes its data to a netCDF file and measures, interleaved, with
warm-ups, after one thread policy for both (:func:`physforecast.threads.auto_threads`):

1. :func:`physforecast.rollout` of every trajectory for ``steps`` lead times from the
   file, against a raw loop: the same model (``Forecaster.model``) called on the last
   ``T_in`` frames read by numpy slicing, normalized and fed back by hand;
2. the ``physforecast forecast`` command (a new process: imports, loading the run,
   reading, rollout, writing the file), against a plain script doing the same by hand
   (torch, xarray, ``physforecast.create_backbone`` for the model and the checkpoint's
   weights, a raw loop, ``to_netcdf``).

Ratios are package / peer, per round, median and range. ``quick=True`` is a smoke run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ._timing import interleave, machine, median, ratio_cell, smoke_note, spread

__all__ = ["run", "make_run", "PLAIN_SCRIPT"]

#: The hand-written forecast script the command is compared with.
PLAIN_SCRIPT = """
import json, sys
import numpy as np, torch, xarray as xr
import physforecast
from physforecast.threads import auto_threads
torch.set_num_threads(auto_threads())
run, src, steps, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
spec = json.load(open(run + "/model.json"))
norm = json.load(open(run + "/normalization.json"))
model = physforecast.create_backbone(spec.pop("name"), **spec)
state = torch.load(run + "/checkpoints/best.pt", weights_only=True)
model.load_state_dict(state.get("ema", state["model"]))
model.eval()
ds = xr.open_dataset(src)
t_in = model.in_steps
x = torch.from_numpy(ds["vorticity"].values[:, -t_in:, None].astype(np.float32))
mean, std = float(norm["mean"][0]), float(norm["std"][0])
z, outs, made = (x - mean) / std, [], 0
with torch.no_grad():
    while made < steps:
        y = model(z[:, -t_in:])
        outs.append(y)
        z = torch.cat([z, y], 1)
        made += y.shape[1]
fc = (torch.cat(outs, 1)[:, :steps] * std + mean)[:, :, 0].numpy()
xr.Dataset({"vorticity": (("sample", "lead_time", "y", "x"), fc)}).to_netcdf(out)
"""


def make_run(folder: Path, n_traj: int, size: int, n_time: int) -> tuple[Path, Path]:
    """A small trained ns2d FNO run and its data as netCDF: (run dir, input file)."""
    from physforecast.config import Config, apply_overrides
    from physforecast.data.io import open_dataset, write_dataset
    from physforecast.training.run import train

    options = {"n_trajectories": n_traj, "size": size, "n_steps": n_time, "progress": False}
    cfg = apply_overrides(
        Config(),
        [
            f"data.options={json.dumps(options)}",
            "train.epochs=1",
            "train.max_steps_per_epoch=2",
            "train.max_val_steps=1",
            "model.options={hidden: 16, modes: 8}",
            "train.device=cpu",
            f"out={folder / 'run'}",
        ],
    )
    path = train(cfg, evaluate=False)
    src = write_dataset(open_dataset("ns2d", options=options).load(), folder / "input.nc")
    return path, src


def _raw_loop(fc: Any, src: Path, steps: int) -> np.ndarray:
    """The model called by hand on the file's last frames."""
    import torch
    import xarray as xr

    with xr.open_dataset(src) as ds:
        x = torch.from_numpy(ds["vorticity"].values[:, -fc.in_steps :, None].astype(np.float32))
    mean, std = fc.normalizer.mean[0], fc.normalizer.std[0]
    z, outs, made = (x - mean) / std, [], 0
    with torch.no_grad():
        while made < steps:
            y = fc.model(z[:, -fc.in_steps :])
            outs.append(y)
            z = torch.cat([z, y], 1)
            made += y.shape[1]
    return (torch.cat(outs, 1)[:, :steps] * std + mean).numpy()


def run(quick: bool = False) -> str:
    """Measure, and return a Markdown report.

    Parameters
    ----------
    quick : bool
        A smoke run: tiny sizes, one round.
    """
    import torch
    import xarray as xr

    import physforecast as pf
    from physforecast.threads import auto_threads

    n_traj, size, n_time, steps, rounds = (4, 16, 24, 5, 1) if quick else (16, 32, 40, 30, 5)
    threads = auto_threads()
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="pf-bench-forecast-") as tmp:
        folder = Path(tmp)
        run_dir, src = make_run(folder, n_traj, size, n_time)
        fc = pf.load(run_dir)

        def package() -> None:
            with xr.open_dataset(src) as ds:
                pf.rollout(fc, ds, steps)

        inproc = interleave(
            {"rollout": package, "raw": lambda: _raw_loop(fc, src, steps)}, rounds, warmup=1
        )
        with xr.open_dataset(src) as ds:
            ours = pf.rollout(fc, ds, steps)["vorticity"].values
        theirs = _raw_loop(fc, src, steps)[:, :, 0]
        same = float(np.max(np.abs(ours - theirs)))

        def command() -> None:
            subprocess.run(
                [sys.executable, "-m", "physforecast.cli", "forecast", str(run_dir), "--input",
                 str(src), "--steps", str(steps), "--out", str(folder / "cli.nc")],
                check=True, capture_output=True,
            )  # fmt: skip

        def plain() -> None:
            subprocess.run(
                [sys.executable, "-c", PLAIN_SCRIPT, str(run_dir), str(src), str(steps),
                 str(folder / "plain.nc")],
                check=True, capture_output=True,
            )  # fmt: skip

        procs = interleave({"command": command, "plain": plain}, rounds, warmup=1)
    lines = [
        "# Forecast benchmark",
        "",
        *smoke_note(quick),
        f"A small ns2d FNO run ({n_traj} trajectories on a {size}x{size} grid, {n_time} frames "
        f"in the input netCDF), every trajectory forecast {steps} lead times from its last "
        f"frames. {rounds} interleaved rounds after a warm-up of each contender; seconds are "
        "medians (min-max over rounds); ratios are package / peer per round, median (range).",
        "",
        "| what | package (s) | peer (s) | package / peer |",
        "|---|---:|---:|---:|",
        f"| `pf.rollout` vs a raw model loop (in process) | {median(inproc['rollout']):.3f} "
        f"({spread(inproc['rollout'])}) | {median(inproc['raw']):.3f} ({spread(inproc['raw'])}) "
        f"| {ratio_cell(inproc['rollout'], inproc['raw'])} |",
        f"| `physforecast forecast` vs a plain script (new process each) | "
        f"{median(procs['command']):.2f} ({spread(procs['command'])}) | "
        f"{median(procs['plain']):.2f} ({spread(procs['plain'])}) | "
        f"{ratio_cell(procs['command'], procs['plain'])} |",
        "",
        f"Largest difference between the rollout and the raw loop's forecast: {same:.2e} "
        "(the same model, in physical units).",
        "",
        f"Machine: {machine(threads)}.",
        "",
        "Rerun: `physforecast bench forecast" + (" --quick`" if quick else "`"),
    ]
    return "\n".join(lines) + "\n"
