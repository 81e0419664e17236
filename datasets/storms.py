"""Synthetic nowcasting: convective cells on the SEVIR VIL scale (0-255).

A stand-in for SEVIR's vertically integrated liquid (VIL) sequences, for testing
nowcasting models and categorical scores (CSI, POD, FAR) at SEVIR's thresholds
16, 74, 133, 160, 181 and 219 without downloading anything.

Every trajectory has a wind: a uniform mean (speed and direction drawn per trajectory)
plus, optionally, a smooth divergence-free perturbation from a few low Fourier modes of
a stream function. Elliptic Gaussian cells are born at random times and places, ride
the wind (their centres are integrated with RK2), grow and decay over a lifetime
(amplitude ``A sin(pi s)^1.5``, size ``sigma (0.6 + 0.4 sin(pi s))`` for life fraction
``s``), and add up; the sum is modulated by smooth multiplicative noise that moves with
the mean wind, clipped to 0..255 and stored as float32. The domain is periodic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from physforecast.data.cf import simulation_dataset
from physforecast.progress import progress as progress_bar
from physforecast.registry import DATASETS

__all__ = ["storms", "SEVIR_THRESHOLDS", "pixel_shift_per_frame"]

#: VIL thresholds of the SEVIR nowcasting benchmark (0-255 scale).
SEVIR_THRESHOLDS: tuple[int, ...] = (16, 74, 133, 160, 181, 219)


def pixel_shift_per_frame(ds: xr.Dataset) -> np.ndarray:
    """Displacement of the mean wind per saved frame, in pixels.

    Parameters
    ----------
    ds : xr.Dataset
        A dataset made by :func:`storms`.

    Returns
    -------
    np.ndarray, shape (N, 2)
        (shift along y, shift along x) per trajectory.
    """
    metres = float(ds.attrs["dt"]) * 60.0 / (float(ds.attrs["dx"]) * 1000.0)
    return np.stack([ds["wind_v"].values, ds["wind_u"].values], axis=1).astype(np.float64) * metres


def _stream_velocity(rng, n, n_modes, length):
    """Random smooth periodic divergence-free velocity fields, unit max speed scale.

    Returns a function ``(x, y) -> (u, v)`` for arrays of shape (N, M).
    """
    k = rng.integers(1, 3, size=(n, n_modes, 2)) * rng.choice([-1, 1], size=(n, n_modes, 2))
    phase = rng.uniform(0, 2 * np.pi, size=(n, n_modes))
    amp = rng.normal(size=(n, n_modes))
    kx = 2 * np.pi * k[..., 1] / length
    ky = 2 * np.pi * k[..., 0] / length
    # psi = sum a sin(kx x + ky y + phase); u = d psi / dy, v = -d psi / dx.
    scale = 1.0 / np.maximum(np.sum(np.abs(amp) * np.hypot(kx, ky), axis=1, keepdims=True), 1e-12)

    def velocity(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        arg = kx[:, None, :] * x[..., None] + ky[:, None, :] * y[..., None] + phase[:, None, :]
        c = np.cos(arg) * (amp * scale)[:, None, :]
        return (c * ky[:, None, :]).sum(-1), -(c * kx[:, None, :]).sum(-1)

    return velocity


@DATASETS.register(
    "storms",
    kind="simulator",
    description="synthetic SEVIR-like VIL nowcasting (0-255): advected, growing, decaying cells",
)
def storms(
    n_trajectories: int = 8,
    size: int | Sequence[int] = 32,
    n_steps: int = 24,
    dt: float = 5.0,
    seed: int = 0,
    pixel_km: float = 2.0,
    wind_speed_range: tuple[float, float] = (5.0, 20.0),
    wind_variability: float = 0.2,
    cells_alive: float = 4.0,
    lifetime_range: tuple[float, float] = (30.0, 120.0),
    peak_range: tuple[float, float] = (40.0, 255.0),
    radius_range: tuple[float, float] = (3.0, 10.0),
    noise: float = 0.1,
    progress: bool = True,
) -> xr.Dataset:
    """Generate SEVIR-like VIL sequences of advected convective cells.

    Parameters
    ----------
    n_trajectories : int
        Independent sequences N, each with its own wind.
    size : int or (int, int)
        Grid (H, W) in pixels; an int gives a square grid.
    n_steps : int
        Saved frames T.
    dt : float
        Minutes between frames (SEVIR: 5).
    seed : int
        Seed of all random draws.
    pixel_km : float
        Pixel size in km (SEVIR: 1).
    wind_speed_range : (float, float)
        Mean wind speed in m s-1, uniform; the direction is uniform.
    wind_variability : float
        Size of the smooth wind perturbation relative to the mean speed (0: uniform wind).
    cells_alive : float
        Mean number of living cells at any time.
    lifetime_range : (float, float)
        Cell lifetimes in minutes, uniform.
    peak_range : (float, float)
        Peak VIL of a cell (0-255 scale), uniform.
    radius_range : (float, float)
        Cell radius (Gaussian sigma of the long axis at maturity) in km, uniform.
    noise : float
        Relative amplitude of the multiplicative noise.
    progress : bool
        Report progress (a bar on a terminal, a line per tenth of the work in a log).

    Returns
    -------
    xr.Dataset
        ``vil`` (0..255, float32), dims (trajectory, time, y, x); ``wind_u`` and ``wind_v``
        (m s-1, the mean wind) along trajectory; x, y in km, time in minutes.

    Examples
    --------
    >>> ds = storms(n_trajectories=2, size=16, n_steps=3, progress=False)
    >>> float(ds.vil.min()) >= 0 and float(ds.vil.max()) <= 255
    True
    """
    ny, nx = (size, size) if isinstance(size, int) else tuple(size)
    if n_trajectories < 1 or n_steps < 1:
        raise ValueError("need n_trajectories >= 1 and n_steps >= 1")
    rng = np.random.default_rng(seed)
    n = n_trajectories
    lx, ly = nx * pixel_km, ny * pixel_km  # km
    speed = rng.uniform(*wind_speed_range, size=n)
    heading = rng.uniform(0, 2 * np.pi, size=n)
    wind = np.stack([speed * np.cos(heading), speed * np.sin(heading)], axis=1)  # (N, 2) m/s
    km_per_min = 60.0 / 1000.0
    mean_life = 0.5 * sum(lifetime_range)
    span = (n_steps - 1) * dt
    m = max(1, int(np.ceil(cells_alive * (span + mean_life) / mean_life * 1.5)))
    # Per cell: birth, lifetime, peak, radius, aspect, angle, position at birth.
    lifetime = rng.uniform(*lifetime_range, size=(n, m))
    birth = rng.uniform(-lifetime_range[1], span, size=(n, m))
    n_cells = rng.poisson(cells_alive * (span + mean_life) / mean_life, size=n).clip(1, m)
    active = np.arange(m)[None, :] < n_cells[:, None]
    peak = rng.uniform(*peak_range, size=(n, m))
    radius = rng.uniform(*radius_range, size=(n, m))
    aspect = rng.uniform(1.0, 2.5, size=(n, m))
    angle = rng.uniform(0, np.pi, size=(n, m))
    cx = rng.uniform(0, lx, size=(n, m))
    cy = rng.uniform(0, ly, size=(n, m))
    perturb = _stream_velocity(rng, n, 3, max(lx, ly))
    noise_field = rng.normal(size=(n, ny, nx))
    f = np.fft.fft2(noise_field) * np.exp(
        -0.5 * (np.fft.fftfreq(ny)[:, None] ** 2 + np.fft.fftfreq(nx)[None, :] ** 2) * (ny / 3) ** 2
    )
    noise_hat = f / np.maximum(np.fft.ifft2(f).real.std(axis=(-2, -1), keepdims=True), 1e-12)

    def wind_at(px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pu, pv = perturb(px, py)
        s = wind_variability * speed[:, None]
        return wind[:, :1] + s * pu, wind[:, 1:] + s * pv

    # (cx, cy) are the centres at t = 0; a cell shows up wherever its centre is at birth.
    x = (np.arange(nx) + 0.5) * pixel_km
    y = (np.arange(ny) + 0.5) * pixel_km
    X, Y = np.meshgrid(x, y)
    ky = np.fft.fftfreq(ny, d=pixel_km)[:, None]
    kx = np.fft.fftfreq(nx, d=pixel_km)[None, :]
    vil = np.empty((n, n_steps, ny, nx))
    with progress_bar(n_steps, "storms", enabled=progress) as bar:
        for t_idx in range(n_steps):
            t = t_idx * dt
            if t_idx:
                # RK2 (midpoint) for the cell centres over one frame.
                u1, v1 = wind_at(cx, cy)
                hx = cx + 0.5 * dt * km_per_min * u1
                hy = cy + 0.5 * dt * km_per_min * v1
                u2, v2 = wind_at(hx, hy)
                cx = (cx + dt * km_per_min * u2) % lx
                cy = (cy + dt * km_per_min * v2) % ly
            s = (t - birth) / lifetime
            alive = active & (s > 0) & (s < 1)
            bump = np.sin(np.pi * np.clip(s, 0, 1))
            amp = np.where(alive, peak * bump**1.5, 0.0)
            sig = radius * (0.6 + 0.4 * bump)
            ddx = (X[None, None] - cx[..., None, None] + lx / 2) % lx - lx / 2
            ddy = (Y[None, None] - cy[..., None, None] + ly / 2) % ly - ly / 2
            ca, sa = np.cos(angle)[..., None, None], np.sin(angle)[..., None, None]
            along = ca * ddx + sa * ddy
            across = -sa * ddx + ca * ddy
            r2 = (along / sig[..., None, None]) ** 2 + (
                across * aspect[..., None, None] / sig[..., None, None]
            ) ** 2
            field = (amp[..., None, None] * np.exp(-0.5 * r2)).sum(axis=1)
            # Noise that rides the mean wind: a Fourier shift of one smooth field.
            shift_x = wind[:, 0] * km_per_min * t
            shift_y = wind[:, 1] * km_per_min * t
            phase = np.exp(
                -2j
                * np.pi
                * (kx[None] * shift_x[:, None, None] + ky[None] * shift_y[:, None, None])
            )
            mod = np.fft.ifft2(noise_hat * phase).real
            vil[:, t_idx] = np.clip(field * (1.0 + noise * mod), 0.0, 255.0)
            bar.update(1)
    return simulation_dataset(
        {"vil": (vil, "1", "vertically integrated liquid, SEVIR 0-255 scale")},
        time=np.arange(n_steps) * dt,
        y=y,
        x=x,
        parameters={
            "wind_u": (wind[:, 0], "m s-1", "mean eastward wind"),
            "wind_v": (wind[:, 1], "m s-1", "mean northward wind"),
        },
        attrs={
            "system": "storms",
            "dx": pixel_km,
            "dy": pixel_km,
            "dt": dt,
            "boundary_conditions": "periodic",
            "thresholds": ",".join(str(v) for v in SEVIR_THRESHOLDS),
            "valid_range": "0,255",
            "wind_variability": wind_variability,
            "seed": seed,
        },
        space_units="km",
        time_units="minutes",
    )
