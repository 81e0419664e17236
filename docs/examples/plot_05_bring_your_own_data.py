"""
Bring your own data: a gridded field with land
==============================================

Your data are most likely a netCDF or zarr file of a field on a latitude-longitude grid,
with dims named however the producer liked, and missing values over land. This example
writes such a file (a synthetic sea-surface temperature anomaly carried east by a
current), opens it the way ``physforecast train --dataset FILE`` does, and trains on it.
Nothing here is specific to the synthetic data: point ``data.dataset`` at your file.
"""

# %%
# A file as it might come from elsewhere
# --------------------------------------
# Dims ``time, lat, lon`` (not physforecast's names), CF attributes on the coordinates,
# NaN over a block of "land", and a real calendar.
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import xarray as xr

from physforecast.config import Config, apply_overrides
from physforecast.data import open_dataset
from physforecast.training.run import train

rng = np.random.default_rng(0)
lat = np.linspace(-60, 60, 16)
lon = np.arange(0, 360, 360 / 32)
n_time = 120
t = np.arange(n_time)[:, None, None]
la, lo = np.deg2rad(lat)[None, :, None], np.deg2rad(lon)[None, None, :]
sst = np.cos(la) * (
    np.sin(2 * lo - 0.15 * t) + 0.5 * np.sin(3 * lo - 0.25 * t + 1.0) * np.cos(2 * la)
)
sst = sst + 0.05 * rng.standard_normal(sst.shape)
land = (lat[:, None] > 10) & (lat[:, None] < 45) & (lon[None, :] > 60) & (lon[None, :] < 130)
sst = np.where(land[None], np.nan, sst).astype("float32")

raw = xr.Dataset(
    {"sst_anom": (("time", "lat", "lon"), sst, {"units": "K", "long_name": "SST anomaly"})},
    coords={
        "time": pd.date_range("2000-01-01", periods=n_time, freq="D"),
        "lat": ("lat", lat, {"units": "degrees_north", "standard_name": "latitude"}),
        "lon": ("lon", lon, {"units": "degrees_east", "standard_name": "longitude"}),
    },
)
path = Path(tempfile.mkdtemp(prefix="physforecast-gallery-")) / "sst.nc"
raw.to_netcdf(path)

# %%
# Open it
# -------
# :func:`physforecast.data.open_dataset` sniffs the format (netCDF, zarr, PDEBench or The
# Well HDF5), reads lazily, recognises the dims from their CF attributes and renames them
# to ``latitude`` / ``longitude``, and turns the NaN of the first frame into a boolean
# ``valid_mask`` (True = ocean) that training losses and metrics use.
ds = open_dataset(path)
ds

# %%
fig, ax = plt.subplots(1, 2, figsize=(10, 2.6), constrained_layout=True)
ds.sst_anom.isel(time=0).plot(ax=ax[0], cmap="RdBu_r")
ds.valid_mask.sel(variable="sst_anom").plot(ax=ax[1], cmap="Greys_r", add_colorbar=False)
ax[1].set_title("valid_mask (white = valid)")

# %%
# Train on it
# -----------
# Only ``data.dataset`` (the path) and ``data.variables`` change. A reanalysis-like
# dataset has no trajectories, so the train / validation / test splits are contiguous
# blocks of time (training first). On a latitude-longitude grid the scorecard weights
# every metric by the cosine of latitude and adds the WeatherBench-style ``lat_rmse``.
cfg = apply_overrides(
    Config(),
    [
        f"data.dataset={path}",
        "data.variables=[sst_anom]",
        "data.in_steps=4",
        "data.out_steps=4",
        "data.batch_size=16",
        "model.backbone=unet",
        "model.options={hidden: 8}",
        "train.epochs=3",
        "train.lr=3e-3",
        "train.device=cpu",
        f"out={path.parent / 'sst-unet'}",
    ],
)
run_dir = train(cfg)

# %%
# Land stays land
# ---------------
# The forecasts in ``forecasts.nc`` are NaN wherever the input was, and the scores only
# count valid points.
forecasts = xr.open_dataset(run_dir / "forecasts.nc")
forecasts.sst_anom.isel(sample=0, lead_time=[0, 3]).plot(
    col="lead_time", cmap="RdBu_r", size=2.6, aspect=2
)
