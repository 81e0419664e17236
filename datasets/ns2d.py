"""2-D incompressible Navier-Stokes in vorticity form on the periodic unit torus.

.. math::

    \\partial_t \\omega + u \\cdot \\nabla \\omega = \\nu \\Delta \\omega + f, \\qquad
    \\Delta \\psi = -\\omega, \\quad u = \\partial_y \\psi, \\quad v = -\\partial_x \\psi

with the forcing of the FNO benchmark (Li et al. 2021),
``f = 0.1 (sin 2pi(x+y) + cos 2pi(x+y))``, and random Gaussian initial vorticity
drawn from N(0, 7^{3/2} (-Delta + 49 I)^{-2.5}). Pseudo-spectral in space with 2/3
dealiasing; Crank-Nicolson for diffusion and Heun (RK2) for the advection and forcing
terms. All trajectories advance together as one batch of FFTs.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import xarray as xr

from physforecast.progress import progress as progress_bar
from physforecast.registry import DATASETS

__all__ = ["simulate_vorticity", "ns2d", "ns_forcing"]


def _wavenumbers(n: int, real: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer wavenumbers (ky, kx) of an n x n grid; for ``rfft2`` layouts when ``real``."""
    k = torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64)
    kx = torch.fft.rfftfreq(n, d=1.0 / n, dtype=torch.float64) if real else k
    ky, kx = torch.meshgrid(k, kx, indexing="ij")
    return ky, kx


def ns_forcing(n: int) -> torch.Tensor:
    """The FNO forcing on an ``n x n`` grid x_i = i/n, shape (n, n) indexed (y, x)."""
    grid = torch.arange(n, dtype=torch.float64) / n
    y, x = torch.meshgrid(grid, grid, indexing="ij")
    return 0.1 * (torch.sin(2 * math.pi * (x + y)) + torch.cos(2 * math.pi * (x + y)))


def simulate_vorticity(
    w0: torch.Tensor,
    viscosity: torch.Tensor,
    t_save: np.ndarray,
    *,
    dt: float = 1e-2,
    cfl: float = 0.5,
    forcing: torch.Tensor | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Integrate the vorticity equation and return the states at ``t_save``.

    Parameters
    ----------
    w0 : torch.Tensor
        Initial vorticity, shape (B, N, N).
    viscosity : torch.Tensor
        Kinematic viscosity per trajectory, shape (B,).
    t_save : array of float
        Increasing times (> 0) at which to record the state.
    dt : float
        Largest time step. Each interval between saves is split into equal steps no
        longer than ``dt`` and than ``cfl * dx / max|u|``, so every save time is hit exactly.
    cfl : float
        Courant number bound for the explicit advection step.
    forcing : torch.Tensor, optional
        Forcing field (N, N); zero when omitted.
    progress : bool
        Report progress (a bar on a terminal, a line per tenth of the work in a log).

    Returns
    -------
    torch.Tensor
        Vorticity at each save time, shape (B, len(t_save), N, N), float64.
    """
    b, n, _ = w0.shape
    ky, kx = _wavenumbers(n, real=True)
    k2 = 4 * math.pi**2 * (kx**2 + ky**2)
    inv_lap = torch.where(k2 > 0, 1.0 / k2.clamp_min(1e-30), torch.zeros_like(k2))
    kmax = n // 3
    dealias = ((kx.abs() <= kmax) & (ky.abs() <= kmax)).to(torch.float64)
    dyk, dxk = 2j * math.pi * ky, 2j * math.pi * kx
    nu = viscosity.to(torch.float64).reshape(b, 1, 1)
    f_hat = (
        torch.fft.rfft2(forcing.to(torch.float64)) if forcing is not None else torch.zeros_like(k2)
    )

    def velocity(w_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        psi_hat = w_hat * inv_lap  # lap psi = -w  ->  psi_hat = w_hat / |k|^2
        return torch.fft.irfft2(dyk * psi_hat, s=(n, n)), torch.fft.irfft2(-dxk * psi_hat, s=(n, n))

    def rhs(w_hat: torch.Tensor) -> torch.Tensor:
        u, v = velocity(w_hat)
        wx = torch.fft.irfft2(dxk * w_hat, s=(n, n))
        wy = torch.fft.irfft2(dyk * w_hat, s=(n, n))
        return f_hat - torch.fft.rfft2(u * wx + v * wy) * dealias

    w_hat = torch.fft.rfft2(w0.to(torch.float64))
    out = torch.empty((b, len(t_save), n, n), dtype=torch.float64)
    t = 0.0
    bar = progress_bar(len(t_save), "ns2d", enabled=progress, unit="frames")
    for i, target in enumerate(np.asarray(t_save, dtype=float)):
        if target <= t:
            raise ValueError(f"t_save must be increasing and > 0; got {t_save}")
        u, v = velocity(w_hat)
        umax = float(torch.sqrt(u**2 + v**2).max()) + 1e-12
        h_max = min(dt, cfl / (n * umax))
        steps = max(1, math.ceil((target - t) / h_max - 1e-9))
        h = (target - t) / steps
        denom = 1 + 0.5 * h * nu * k2
        implicit = (1 - 0.5 * h * nu * k2) / denom
        for _ in range(steps):
            r1 = rhs(w_hat)
            w_pred = w_hat * implicit + h * r1 / denom
            w_hat = w_hat * implicit + 0.5 * h * (r1 + rhs(w_pred)) / denom
        if not torch.isfinite(w_hat.real).all():
            raise FloatingPointError(f"ns2d blew up before t={target}; decrease dt (now {dt})")
        t = float(target)
        out[:, i] = torch.fft.irfft2(w_hat, s=(n, n))
        bar.update()
    bar.close()
    return out


def _random_vorticity(b: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """Gaussian random field N(0, 7^{3/2} (-Delta + 49 I)^{-2.5}) on the unit torus, (B, N, N)."""
    ky, kx = _wavenumbers(n)
    k2 = 4 * math.pi**2 * (kx**2 + ky**2)
    sqrt_eig = n * n * math.sqrt(2.0) * 7**1.5 * (k2 + 49.0) ** (-2.5 / 2)
    sqrt_eig[0, 0] = 0.0
    noise = torch.randn((b, n, n), dtype=torch.float64, generator=generator)
    noise = noise + 1j * torch.randn((b, n, n), dtype=torch.float64, generator=generator)
    return torch.fft.ifft2(sqrt_eig * noise / math.sqrt(2.0)).real


@DATASETS.register(
    "ns2d",
    kind="simulator",
    description="2-D Navier-Stokes vorticity on the periodic unit torus (FNO benchmark forcing)",
)
def ns2d(
    n_trajectories: int = 40,
    size: int = 32,
    n_steps: int = 30,
    dt_save: float = 0.5,
    viscosity: float = 1e-3,
    viscosity_range: list[float] | None = None,
    solver_size: int | None = None,
    dt: float = 1e-2,
    seed: int = 0,
    progress: bool = True,
) -> xr.Dataset:
    """Simulate the ``ns2d`` dataset.

    Parameters
    ----------
    n_trajectories : int
        Number of independent trajectories.
    size : int
        Output grid points per side N (the grid is N x N on [0, 1)^2).
    n_steps : int
        Saved frames per trajectory (at t = dt_save, 2 dt_save, ...).
    dt_save : float
        Time between saved frames.
    viscosity : float
        Viscosity of every trajectory when ``viscosity_range`` is not given.
    viscosity_range : [low, high], optional
        Draw each trajectory's viscosity log-uniformly from this range (for
        parameter-conditioned and out-of-distribution experiments).
    solver_size : int, optional
        Grid of the solver (default ``size``). A larger grid (``2 * size``) resolves the
        small scales better; the output is then its spectral truncation to ``size`` points.
    dt : float
        Largest solver time step (a CFL bound may shorten it).
    seed : int
        Seed of the initial conditions and viscosities.
    progress : bool
        Report progress (a bar on a terminal, a line per tenth of the work in a log).

    Returns
    -------
    xr.Dataset
        ``vorticity(trajectory, time, y, x)`` and ``viscosity(trajectory)``.
    """
    if size < 8 or n_steps < 1 or n_trajectories < 1:
        raise ValueError(
            f"need size >= 8, n_steps >= 1, n_trajectories >= 1; got {size}, {n_steps}, {n_trajectories}"
        )
    n_solver = int(solver_size or size)
    if n_solver < size:
        raise ValueError(f"solver_size ({n_solver}) must be >= size ({size})")
    gen = torch.Generator().manual_seed(int(seed))
    w0 = _random_vorticity(n_trajectories, n_solver, gen)
    if viscosity_range is not None:
        lo, hi = (float(v) for v in viscosity_range)
        if not 0 < lo <= hi:
            raise ValueError(f"viscosity_range must satisfy 0 < low <= high; got {viscosity_range}")
        u = torch.rand(n_trajectories, dtype=torch.float64, generator=gen)
        nu = torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
    else:
        nu = torch.full((n_trajectories,), float(viscosity), dtype=torch.float64)
    t_save = dt_save * np.arange(1, n_steps + 1)
    w = simulate_vorticity(w0, nu, t_save, dt=dt, forcing=ns_forcing(n_solver), progress=progress)
    if n_solver != size:
        w = _spectral_downsample(w, size)
    grid = np.arange(size) / size
    ds = xr.Dataset(
        {
            "vorticity": (
                ("trajectory", "time", "y", "x"),
                w.numpy().astype(np.float32),
                {
                    "units": "s-1",
                    "long_name": "vorticity",
                    "standard_name": "atmosphere_relative_vorticity",
                },
            ),
            "viscosity": (
                ("trajectory",),
                nu.numpy(),
                {"units": "m2 s-1", "long_name": "kinematic viscosity"},
            ),
        },
        coords={
            "trajectory": np.arange(n_trajectories),
            "time": ("time", t_save, {"units": "s", "long_name": "time"}),
            "y": ("y", grid, {"units": "m", "long_name": "y", "axis": "Y"}),
            "x": ("x", grid, {"units": "m", "long_name": "x", "axis": "X"}),
        },
        attrs={
            "system": "ns2d",
            "title": "2-D incompressible Navier-Stokes, vorticity form, periodic unit torus",
            "dx": 1.0 / size,
            "dy": 1.0 / size,
            "dt": float(dt_save),
            "boundary_conditions": "periodic",
            "parameters": "viscosity",
            "forcing": "0.1*(sin(2*pi*(x+y)) + cos(2*pi*(x+y)))",
            "solver": f"pseudo-spectral {n_solver}x{n_solver}, 2/3 dealiasing, Crank-Nicolson + Heun, dt={dt}",
            "seed": int(seed),
            "Conventions": "CF-1.8",
        },
    )
    return ds


def _spectral_downsample(w: torch.Tensor, size: int) -> torch.Tensor:
    """Truncate the Fourier series of (..., N, N) periodic fields to (..., size, size)."""
    n = w.shape[-1]
    w_hat = torch.fft.fft2(w)
    keep = torch.fft.fftfreq(size, d=1.0 / size).long() % n
    w_hat = w_hat[..., keep, :][..., keep]
    return torch.fft.ifft2(w_hat).real * (size * size) / (n * n)
