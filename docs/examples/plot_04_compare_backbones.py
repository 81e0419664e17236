"""
Compare backbones
=================

Every backbone follows one contract, ``(B, T_in, C, H, W) -> (B, T_out, C, H, W)``, so
comparing them is a loop over names: only ``model.backbone`` and its options change.
Here four families (a neural operator, a U-Net, SimVP and a ConvLSTM) are trained on the
same small ``ns2d`` set with the same budget and scored on the same unseen trajectories.

The models are tiny and trained for seconds, so the ranking says nothing about the
architectures at scale; :doc:`/benchmarks` has measured comparisons. What carries over
is the recipe.
"""

# %%
# Train each backbone
# -------------------
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import xarray as xr

import physforecast
from physforecast.backbone_table import count_parameters
from physforecast.config import Config, apply_overrides
from physforecast.data import open_dataset
from physforecast.datasets.ns2d import ns2d
from physforecast.training.run import train

backbones = {
    "fno": "{hidden: 16, modes: 6}",
    "unet": "{hidden: 8}",
    "simvp": "{hid_S: 8, hid_T: 32, N_S: 2, N_T: 2}",
    "convlstm": "{hidden: 8, n_layers: 1}",
}
workdir = Path(tempfile.mkdtemp(prefix="physforecast-gallery-"))
base = apply_overrides(
    Config(),
    [
        "data.options={n_trajectories: 8, size: 16, n_steps: 14, progress: false}",
        "data.in_steps=4",
        "data.out_steps=4",
        "data.batch_size=8",
        "train.epochs=3",
        "train.lr=3e-3",
        "train.device=cpu",
    ],
)
open_dataset(base.data.dataset, options=base.data.options)  # simulate (and cache) it once
print(physforecast.list_backbones())  # every registered name (this imports them all)

runs, seconds = {}, {}
for name, options in backbones.items():
    cfg = apply_overrides(
        base, [f"model.backbone={name}", f"model.options={options}", f"out={workdir / name}"]
    )
    start = time.perf_counter()
    runs[name] = physforecast.load(train(cfg, evaluate=False))
    seconds[name] = time.perf_counter() - start

# %%
# Score them on the same unseen trajectories
# ------------------------------------------
# Each model forecasts 8 lead times (two calls of its 4-step horizon) from the same
# initial frames; the scorecards are stacked along a new ``backbone`` dim.
new = ns2d(n_trajectories=4, size=16, n_steps=14, seed=1, progress=False)
suite = ["rmse", "rel_l2", "pearson", "spectral_mse", "ns_vorticity_residual"]
cards = [
    new.physforecast.forecast(model, steps=8, init=[5]).physforecast.score(new, suite=suite)
    for model in runs.values()
]
scores = xr.concat(cards, dim=pd.Index(list(runs), name="backbone"))

print(scores.summary.sel(variable="vorticity").to_pandas().T.round(4).to_string())

# %%
# and what each cost (seconds on the machine that built these pages):
cost = pd.DataFrame(
    {
        "parameters": [count_parameters(model.model) for model in runs.values()],
        "train seconds": [round(seconds[name], 1) for name in runs],
    },
    index=list(runs),
)
print(cost.to_string())

# %%
# Error against lead time
# -----------------------
# Lead times 5 to 8 are beyond the trained horizon: the models feed their own output
# back in, and their errors grow faster there.
fig, axes = plt.subplots(1, 2, figsize=(9, 3.3), constrained_layout=True)
for ax, metric in zip(axes, ["rel_l2", "spectral_mse_high"]):
    for name in runs:
        curve = scores.score.sel(backbone=name, metric=metric, variable="vorticity")
        ax.plot(curve.lead_time, curve, marker="o", label=name)
    ax.axvline(4.5, color="gray", ls=":")
    ax.set_xlabel("lead time [steps]")
    ax.set_title(metric)
axes[0].legend()
