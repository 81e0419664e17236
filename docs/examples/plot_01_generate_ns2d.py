"""
Simulate 2-D Navier-Stokes and look at it
=========================================

physforecast ships small simulators so that every example, test and tutorial has data
without a download. ``ns2d`` is the incompressible Navier-Stokes equation in vorticity
form on the periodic unit square, with the forcing of the FNO benchmark
(Li et al. 2021):

.. math::

    \\partial_t \\omega + u \\cdot \\nabla \\omega = \\nu \\Delta \\omega + f .

Here we simulate eight short trajectories, look at the dataset convention every
simulator and file reader follows, and plot the fields and their power spectra.
"""

# %%
# Simulate
# --------
# Every simulator is a plain function returning an ``xr.Dataset``; it is also
# registered by name, which is how ``physforecast train --dataset ns2d`` finds it.
import matplotlib.pyplot as plt
import numpy as np

import physforecast
from physforecast.datasets.ns2d import ns2d

print(physforecast.list_datasets())

ds = ns2d(n_trajectories=8, size=32, n_steps=14, progress=False)
ds

# %%
# The dataset convention
# ----------------------
# A simulation has dims ``(trajectory, time, y, x)``. Each field carries ``units`` and
# ``long_name``; the physical parameters of each trajectory (here the viscosity) are
# data variables along ``trajectory`` and listed in the ``parameters`` attribute; the
# grid spacing, the time between frames and the boundary conditions are attributes.
# Models, metrics and the scorecard read all of this, so your own data should carry
# it too (see :doc:`/bring_your_own_data`).
print(ds.vorticity.dims, ds.vorticity.attrs["units"], ds.vorticity.attrs["long_name"])
print(ds.viscosity.values)
print({key: ds.attrs[key] for key in ("system", "dx", "dy", "dt", "boundary_conditions")})

# %%
# Snapshots of one trajectory
# ---------------------------
# The forcing drives the flow towards large diagonal bands while the small eddies of the
# random initial condition decay.
frames = ds.vorticity.isel(trajectory=0)
vmax = float(np.abs(frames).max())
fig, axes = plt.subplots(1, 4, figsize=(10, 2.8), constrained_layout=True)
for ax, t in zip(axes, [0, 4, 9, 13]):
    frame = frames.isel(time=t)
    image = ax.imshow(
        frame, origin="lower", extent=(0, 1, 0, 1), cmap="RdBu_r", vmin=-vmax, vmax=vmax
    )
    ax.set_title(f"t = {float(frame.time):.1f} s")
    ax.set_xlabel("x [m]")
axes[0].set_ylabel("y [m]")
fig.colorbar(image, ax=axes, label="vorticity [1/s]")

# %%
# Power spectra
# -------------
# The ``.physforecast`` accessor (registered by ``import physforecast``) gives the
# radially averaged power spectrum of every frame, lazily on dask-backed data. The
# spectrum loses its small scales (high wavenumbers) as the flow evolves.
spectra = ds.vorticity.physforecast.spectrum()  # dims (trajectory, time, wavenumber)
mean_spectra = spectra.mean("trajectory").isel(wavenumber=slice(1, None))
fig, ax = plt.subplots(figsize=(5, 3.5), constrained_layout=True)
for t in [0, 4, 13]:
    curve = mean_spectra.isel(time=t)
    ax.loglog(curve.wavenumber, curve, marker="o", ms=3, label=f"t = {float(curve.time):.1f} s")
ax.set_xlabel("wavenumber [cycles per domain]")
ax.set_ylabel("power [s$^{-2}$]")
ax.legend()

# %%
# By name, cached on disk
# -----------------------
# :func:`physforecast.data.open_dataset` opens a registered simulator by name (generated
# once, then read lazily from ``$PHYSFORECAST_CACHE``, by default
# ``~/.cache/physforecast``) or any netCDF, zarr or HDF5 file by path. From the
# command line, ``physforecast generate ns2d --out ns2d.nc --set n_trajectories=8``
# writes the same data to a file.
from physforecast.data import open_dataset

cached = open_dataset(
    "ns2d", options={"n_trajectories": 8, "size": 32, "n_steps": 14, "progress": False}
)
print(cached.vorticity.chunks is not None, bool((cached.vorticity == ds.vorticity).all()))
