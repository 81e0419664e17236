"""Benchmark: ST-PAD and its ablations against a deterministic backbone, in and out of
distribution.

``physforecast bench stpad`` simulates ns2d (32x32) with viscosities drawn log-uniformly
over [1e-4, 1e-2] and splits it with ``data.ood``: train / val / test on the trajectories
with viscosity in the training range [3e-4, 3e-3], test out of distribution on those
below and above it. For each seed it trains, with the same ``train.epochs``:

* **fno**: the FNO backbone alone (``supervised``), conditioned on the viscosity;
* **stpad**: ST-PAD (physics-constrained VQ upstream, viscosity-conditioned latent
  diffusion, an ensemble of independent members);
* **stpad, no conditioning**: ``stpad.condition=false``;
* **stpad, no physics**: every ``stpad.constraints`` weight 0;
* **stpad + beam search**: ``stpad.scores`` = the vorticity residual with the run's
  viscosity + spectral consistency; the members are the best beams.

Reported per lead time, in and out of distribution (``scorecard_ood.json`` of each run,
mean and spread over seeds): RMSE, rel-L2, SSIM, high-band fRMSE, the NS vorticity
residual, CRPS and the spread-skill ratio (ensembles only), with parameter counts.
``quick=True`` runs one tiny configuration in about a minute.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["run", "Setup", "CONTENDERS", "METRICS"]

#: (label, overrides) of every contender; ``{stpad}`` marks the ST-PAD ones.
CONTENDERS: list[tuple[str, dict[str, str]]] = [
    ("fno", {"method": "supervised"}),
    ("stpad", {"method": "stpad"}),
    ("stpad, no conditioning", {"method": "stpad", "stpad.condition": "false"}),
    (
        "stpad, no physics",
        {
            "method": "stpad",
            "stpad.constraints": "{pde: 0.0, heat: 0.0, divergence: 0.0, mass: 0.0, energy: 0.0}",
        },
    ),
    (
        "stpad + beam search",
        {"method": "stpad", "stpad.scores": "{vorticity_residual: 1.0, spectral: 0.5}"},
    ),
]
#: Scorecard rows reported (those a grid or a deterministic model lacks show "-").
METRICS = [
    "rmse",
    "rel_l2",
    "ssim",
    "frmse_high",
    "ns_vorticity_residual",
    "crps",
    "spread_skill_ratio",
]


@dataclass
class Setup:
    """Sizes of one benchmark run."""

    data_options: dict[str, Any]
    train_range: tuple[float, float]
    in_steps: int
    out_steps: int
    epochs: int
    upstream_epochs: int
    seeds: list[int]
    batch_size: int = 16
    stride: int = 1
    max_steps: int | None = None
    fno: dict[str, Any] = field(default_factory=lambda: {"modes": 8, "hidden": 24, "n_layers": 3})
    stpad: dict[str, Any] = field(default_factory=dict)


FULL = Setup(
    data_options={
        "n_trajectories": 48,
        "size": 32,
        "n_steps": 16,
        "dt_save": 0.5,
        "viscosity_range": [1e-4, 1e-2],
        "seed": 0,
        "progress": False,
    },
    train_range=(3e-4, 3e-3),
    in_steps=4,
    out_steps=4,
    epochs=10,
    upstream_epochs=5,
    seeds=[0, 1, 2],
    stride=2,
    stpad={
        "members": 4,
        "width": 4,
        "candidates": 12,
        "sample_steps": 10,
        "block": 2,
        "hidden": 16,
        "prop_hidden": 32,
    },
)
QUICK = Setup(
    data_options={
        "n_trajectories": 16,
        "size": 32,
        "n_steps": 8,
        "dt_save": 0.5,
        "viscosity_range": [1e-4, 1e-2],
        "seed": 0,
        "progress": False,
    },
    train_range=(3e-4, 3e-3),
    in_steps=2,
    out_steps=2,
    epochs=2,
    upstream_epochs=1,
    seeds=[0],
    max_steps=2,
    fno={"modes": 4, "hidden": 8, "n_layers": 1},
    stpad={
        "members": 2,
        "width": 2,
        "candidates": 3,
        "sample_steps": 2,
        "hidden": 8,
        "dim": 4,
        "num_codes": 16,
        "prop_hidden": 8,
        "den_hidden": 8,
        "den_depth": 1,
        "emb_dim": 8,
    },
)


def _config(setup: Setup, overrides: dict[str, str], seed: int, out: Path):
    from physforecast.config import Config, apply_overrides

    opts = json.dumps(setup.data_options)
    lo, hi = setup.train_range
    items = {
        "data.dataset": "ns2d",
        "data.options": opts,
        "data.in_steps": setup.in_steps,
        "data.out_steps": setup.out_steps,
        "data.batch_size": setup.batch_size,
        "data.stride": setup.stride,
        "data.params": "[viscosity]",
        "data.split": "[0.7, 0.15, 0.15]",
        "data.ood": f"{{param: viscosity, train_range: [{lo}, {hi}]}}",
        "model.backbone": "fno",
        "model.options": json.dumps(setup.fno),
        "train.epochs": setup.epochs,
        "train.seed": seed,
        "train.device": "cpu",
        "out": str(out),
    }
    if setup.max_steps:
        items["train.max_steps_per_epoch"] = setup.max_steps
    if overrides.get("method") == "stpad":
        items["stpad.upstream_epochs"] = setup.upstream_epochs
        for key, value in setup.stpad.items():
            items[f"stpad.{key}"] = value
    items.update(overrides)
    return apply_overrides(Config(), [f"{k}={v}" for k, v in items.items()])


def _series(card: dict[str, Any], metric: str) -> list[float] | None:
    entry = card["metrics"].get(metric, {}).get("variables", {}).get("vorticity")
    if entry is None:
        return None
    return [np.nan if v is None else float(v) for v in entry["by_lead_time"]]


def _fmt(values: list[float]) -> str:
    v = np.asarray([x for x in values if np.isfinite(x)])
    if v.size == 0:
        return "-"
    if v.size == 1:
        return f"{v[0]:.4g}"
    return f"{v.mean():.4g} ± {v.std(ddof=1):.2g}"


def run(quick: bool = False) -> str:
    """Train every contender for every seed; a Markdown report of the OOD scorecards."""
    from physforecast.run_dir import RunDir
    from physforecast.training.run import train

    torch.set_num_threads(1)
    setup = QUICK if quick else FULL
    start = time.time()
    load_before = os.getloadavg()
    results: dict[str, dict[str, list]] = {label: {} for label, _ in CONTENDERS}
    params: dict[str, int] = {}
    times: dict[str, list[float]] = {label: [] for label, _ in CONTENDERS}
    with tempfile.TemporaryDirectory(prefix="bench-stpad-") as tmp:
        for seed in setup.seeds:  # contenders interleaved within each seed
            for label, overrides in CONTENDERS:
                out = Path(tmp) / f"{label.replace(' ', '_').replace(',', '')}-{seed}"
                cfg = _config(setup, overrides, seed, out)
                t0 = time.time()
                with contextlib.redirect_stdout(io.StringIO()):  # the runs' own scorecards
                    train(cfg)
                times[label].append(time.time() - t0)
                cards = json.loads((out / "scorecard_ood.json").read_text())
                for split, card in cards.items():
                    for metric in METRICS:
                        series = _series(card, metric)
                        if series is not None:
                            results[label].setdefault((split, metric), []).append(series)
                model = RunDir(out).load_model("best").model
                params[label] = sum(p.numel() for p in model.parameters())
    load_after = os.getloadavg()
    total = time.time() - start
    leads = list(range(1, setup.out_steps + 1))
    lines = [
        "# ST-PAD benchmark: in and out of distribution (ns2d, viscosity split)",
        "",
        f"ns2d {setup.data_options['size']}x{setup.data_options['size']}, "
        f"{setup.data_options['n_trajectories']} trajectories of "
        f"{setup.data_options['n_steps']} frames (dt = {setup.data_options['dt_save']}), "
        f"viscosity log-uniform in {setup.data_options['viscosity_range']}; trained on "
        f"viscosity in [{setup.train_range[0]:g}, {setup.train_range[1]:g}], "
        f"{setup.in_steps} -> {setup.out_steps} frames (windows every {setup.stride} "
        f"steps), {setup.epochs} epochs each "
        f"(ST-PAD: {setup.upstream_epochs} upstream + {setup.epochs - setup.upstream_epochs} "
        f"diffusion), seeds {setup.seeds}. Values: mean ± std over seeds, physical units. "
        "`in`: the in-range test split; `ood`: every trajectory outside the range "
        "(`below` / `above`: the two sides).",
        "",
        "| contender | parameters | train time per seed (s) |",
        "|---|---|---|",
    ]
    for label, _ in CONTENDERS:
        lines.append(f"| {label} | {params.get(label, 0):,} | {np.mean(times[label]):.0f} |")
    splits = ["in", "test_ood", "test_ood_below", "test_ood_above"]
    names = {"in": "in", "test_ood": "ood", "test_ood_below": "below", "test_ood_above": "above"}
    for metric in METRICS:
        rows = []
        for label, _ in CONTENDERS:
            cells = []
            for split in splits:
                runs = results[label].get((split, metric))
                if runs is None:
                    cells += ["-"] * len(leads)
                    continue
                arr = np.asarray(runs, dtype=float)  # (seeds, leads)
                cells += [_fmt(arr[:, i].tolist()) for i in range(len(leads))]
            if any(c != "-" for c in cells):
                rows.append(f"| {label} | " + " | ".join(cells) + " |")
        if not rows:
            continue
        head = [f"{names[s]} {lead}" for s in splits for lead in leads]
        lines += [
            "",
            f"## {metric} per lead time",
            "",
            "| contender | " + " | ".join(head) + " |",
            "|---|" + "---|" * len(head),
            *rows,
        ]
    lines += [
        "",
        f"Total wall time: {total:.0f} s. Load average (1, 5, 15 min) before: "
        f"{', '.join(f'{v:.2f}' for v in load_before)}; after: "
        f"{', '.join(f'{v:.2f}' for v in load_after)}.",
        f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads.",
        f"Command: `physforecast bench stpad{' --quick' if quick else ''}`",
    ]
    return "\n".join(lines)
