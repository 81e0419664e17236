"""
Train a backbone and read its scorecard
=======================================

``physforecast train`` is one Python call, :func:`physforecast.training.run.train`, on a
typed :class:`~physforecast.config.Config`. It simulates (or opens) the data, fits the
normalization on the training trajectories only, trains the backbone, scores the best
checkpoint on held-out trajectories and writes everything into a run directory.

This example trains a small Fourier Neural Operator on a tiny ``ns2d`` set for a few
epochs (seconds on a CPU), then reads what the run directory holds: the learning
curve, the scorecard and the test forecasts.
"""

# %%
# Configure the run
# -----------------
# :func:`~physforecast.config.apply_overrides` takes the same dotted ``key=value``
# strings as ``physforecast train --set``. ``data.options`` are the simulator's
# arguments, ``model.options`` the backbone's.
import json
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import xarray as xr

from physforecast.config import Config, ConfigError, apply_overrides
from physforecast.metrics import format_scorecard
from physforecast.plots import plot_forecast_panel
from physforecast.training.run import train

workdir = Path(tempfile.mkdtemp(prefix="physforecast-gallery-"))
cfg = apply_overrides(
    Config(),
    [
        "data.dataset=ns2d",
        "data.options={n_trajectories: 16, size: 16, n_steps: 14, progress: false}",
        "data.in_steps=4",
        "data.out_steps=4",
        "data.batch_size=8",
        "model.backbone=fno",
        "model.options={hidden: 16, modes: 6}",
        "train.epochs=6",
        "train.lr=3e-3",
        "train.device=cpu",
        f"out={workdir / 'ns2d-fno'}",
    ],
)
print(cfg.data)
print(cfg.model)

# %%
# A misspelt key is refused with a suggestion, before any work is done:
try:
    apply_overrides(cfg, ["train.learning_rate=1e-3"])
except ConfigError as err:
    print(err)

# %%
# Train
# -----
# The call prints the scorecard of the best checkpoint on the test split.
run_dir = train(cfg)

# %%
# What the run directory holds
# ----------------------------
# ``config.yaml`` is the resolved config (rerun with ``physforecast train --config``),
# ``model.json`` the backbone's arguments, ``normalization.json`` the training-split
# statistics, ``checkpoints/`` the last and best weights (load them with
# :func:`physforecast.load`), ``metrics.jsonl`` one line per epoch,
# ``forecasts.nc`` the test forecasts next to their truth, ``scorecard.{json,nc}`` the
# scores and ``plots/`` two quick-look figures.
for path in sorted(run_dir.rglob("*")):
    if path.is_file():
        print(f"{str(path.relative_to(run_dir)):28s} {path.stat().st_size:>9d} bytes")

# %%
# The learning curve
# ------------------
history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
print(history[-1])
fig, ax = plt.subplots(figsize=(5, 3.2), constrained_layout=True)
ax.plot([h["epoch"] for h in history], [h["train_loss"] for h in history], "o-", label="train")
ax.plot([h["epoch"] for h in history], [h["val_loss"] for h in history], "s--", label="validation")
ax.set_xlabel("epoch")
ax.set_ylabel("loss (normalized units)")
ax.set_yscale("log")
ax.legend()

# %%
# The scorecard
# -------------
# ``scorecard.nc`` holds ``score (metric, lead_time, variable)`` and ``summary (metric,
# variable)``; the ``kind`` and ``higher_is_better`` coordinates say how to read each
# row. Every metric reduces the two spatial dims of each sample first, then averages
# over samples (a few, such as PDEBench's fRMSE, aggregate samples their own way; the
# ``sample_reduction`` attribute says so). Definitions: :doc:`/metrics`.
card = xr.open_dataset(run_dir / "scorecard.nc")
print(card.sizes, card.attrs["sample_reduction"])

# %%
# A few rows, every lead time. The vorticity-equation residual needs no truth; its
# ``_truth`` row is the residual of the true fields (time discretisation at the saving
# interval), the scale against which the forecast's residual should be read.
rows = ["rmse", "rel_l2", "pearson", "ns_vorticity_residual", "ns_vorticity_residual_truth"]
print(format_scorecard(card.sel(metric=rows), max_leads=4))

# %%
# Errors grow with lead time:
fig, ax = plt.subplots(figsize=(5, 3.2), constrained_layout=True)
for metric in ["rmse", "mae", "brmse"]:
    card.score.sel(metric=metric, variable="vorticity").plot(ax=ax, marker="o", label=metric)
ax.set_title("")
ax.set_ylabel("error [1/s]")
ax.legend()

# %%
# The test forecasts
# ------------------
# ``forecasts.nc`` follows the forecast convention, dims ``(sample, lead_time, y, x)`` in
# physical units, with the truth stored beside each variable as ``<name>_truth``.
forecasts = xr.open_dataset(run_dir / "forecasts.nc")
forecast = forecasts[["vorticity"]]
truth = forecasts[["vorticity_truth"]].rename(vorticity_truth="vorticity")
fig = plot_forecast_panel(forecast, truth)
