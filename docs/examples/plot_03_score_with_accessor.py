"""
Forecast and score with the xarray accessor
===========================================

``import physforecast`` registers a ``.physforecast`` accessor on every ``xr.Dataset``
and ``xr.DataArray``. It is a thin layer: each method calls one library function
(:func:`physforecast.rollout <physforecast.forecast.rollout.rollout>`, :func:`physforecast.metrics.verify`,
:func:`physforecast.metrics.score`...), so scripts can use either.

Here we train a small model, forecast trajectories it has never seen, further ahead than
it was trained for, score the forecast against the truth and against a persistence
baseline, and add a metric of our own to the scorecard.
"""

# %%
# A trained model
# ---------------
# A quick run as in :doc:`plot_02_train_and_scorecard`; :func:`physforecast.load` turns
# its run directory into a :class:`~physforecast.forecast.Forecaster` that takes and returns
# physical units.
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

import physforecast
from physforecast.config import Config, apply_overrides
from physforecast.datasets.ns2d import ns2d
from physforecast.metrics import format_scorecard
from physforecast.training.run import train

workdir = Path(tempfile.mkdtemp(prefix="physforecast-gallery-"))
cfg = apply_overrides(
    Config(),
    [
        "data.options={n_trajectories: 16, size: 16, n_steps: 14, progress: false}",
        "data.in_steps=4",
        "data.out_steps=4",
        "data.batch_size=8",
        "model.options={hidden: 16, modes: 6}",
        "train.epochs=6",
        "train.lr=3e-3",
        "train.device=cpu",
        f"out={workdir / 'ns2d-fno'}",
    ],
)
run_dir = train(cfg, evaluate=False)
model = physforecast.load(run_dir)
print(model.variables, model.in_steps, model.out_steps, model.grid)

# %%
# Forecast new trajectories
# -------------------------
# Four trajectories from another seed, on the training grid. ``forecast(model, steps)``
# starts from the frame ``init`` (here the 6th, index 5) and rolls the model out
# autoregressively: 12 lead times from a model that predicts 4 per call.
new = ns2d(n_trajectories=4, size=16, n_steps=18, seed=1, progress=False)
forecast = new.physforecast.forecast(model, steps=12, init=[5])
forecast

# %%
# Score it
# --------
# ``score(truth)`` accepts the source dataset (the frames that verify each lead time are
# cut out of it) or a truth already in the forecast layout. Without a ``suite`` the
# default one for the dataset's ``system`` is used; here we pick a few metrics. The
# vorticity-equation residual needs no truth: it measures how far the forecast is
# from satisfying the PDE, next to the same residual of the true fields.
suite = ["rmse", "rel_l2", "pearson", "spectral_mse", "ns_vorticity_residual"]
card = forecast.physforecast.score(new, suite=suite)
print(format_scorecard(card, max_leads=4))

# %%
# The accessor is a shortcut; the same numbers come from the functions it calls:
from physforecast.metrics import score, truth_for

truth = truth_for(forecast, new)  # (sample, lead_time, y, x), like the forecast
same = score(forecast, truth, suite)
print(bool((same.score == card.score).all()))

# %%
# Against a baseline
# ------------------
# Persistence (the last input frame, repeated) is the baseline every forecast should
# beat. It is built in the forecast layout, so it is scored in exactly the same way.
last_input = new.vorticity.isel(
    trajectory=forecast.trajectory, time=forecast.init_index
)  # (sample, y, x)
persistence = forecast.copy()
persistence["vorticity"] = last_input.broadcast_like(forecast.vorticity).transpose(
    *forecast.vorticity.dims
)
baseline = persistence.physforecast.score(new, suite=suite)

fig, ax = plt.subplots(figsize=(5, 3.2), constrained_layout=True)
for name, result in [("FNO", card), ("persistence", baseline)]:
    result.score.sel(metric="rel_l2", variable="vorticity").plot(ax=ax, marker="o", label=name)
ax.axvline(model.out_steps + 0.5, color="gray", ls=":", label="trained horizon")
ax.set_title("")
ax.set_ylabel("relative L2 error")
ax.legend()


# %%
# A metric of your own
# --------------------
# A metric is a plain function on torch tensors that reduces the last two (spatial)
# dims, ``fn(pred, target, *, weights=None, mask=None)``; pass it with a name in the
# suite. This one compares the enstrophy (mean squared vorticity) of forecast and truth:
# a value below 1 means the forecast has lost small-scale activity.
def enstrophy_ratio(pred, target, *, weights=None, mask=None):
    return (pred**2).mean(dim=(-2, -1)) / (target**2).mean(dim=(-2, -1))


enstrophy_ratio.higher_is_better = None  # neither: 1 is best
card = forecast.physforecast.score(new, suite=["rmse", ("enstrophy_ratio", enstrophy_ratio)])
print(format_scorecard(card, max_leads=4))

# %%
# Quick looks
# -----------
# Truth, forecast and error at a few lead times, straight from the accessor:
fig = forecast.physforecast.plot_forecast(new, lead_times=[1, 4, 12])
