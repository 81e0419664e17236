"""2-D Rayleigh-Benard convection: Boussinesq flow between a hot floor and a cold lid.

In free-fall units (height H, temperature drop dT, velocity sqrt(g alpha dT H)):

.. math::

    \\mathbf u_t + (\\mathbf u\\cdot\\nabla)\\mathbf u = -\\nabla p + \\sqrt{Pr/Ra}\\,\\nabla^2\\mathbf u
    + \\theta\\,\\hat z, \\qquad \\nabla\\cdot\\mathbf u = 0, \\qquad
    T_t + \\mathbf u\\cdot\\nabla T = \\frac{1}{\\sqrt{Ra\\,Pr}}\\nabla^2 T

on ``0 <= x < aspect`` (periodic) and ``0 <= z <= 1`` with no-slip walls, ``T = 1`` at
the floor and ``T = 0`` at the lid; ``theta = T - (1 - z)`` is the departure from
conduction. The vertical axis ``z`` is stored as the dataset's ``y``.

Scheme: a staggered (MAC) grid, second-order energy-conserving central differences,
SSP-RK3 in time with a projection after every stage. The pressure Poisson equation is
solved exactly for the discrete operator: an FFT in x and an eigen-decomposition of the
Neumann second difference in z. The velocity is therefore divergence-free to round-off.

Below the critical Rayleigh number (1707.76 for no-slip walls) perturbations decay;
above it convection rolls grow and the Nusselt number exceeds 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from physforecast.data.cf import simulation_dataset
from physforecast.progress import progress as progress_bar
from physforecast.registry import DATASETS

__all__ = ["rayleigh_benard", "BoussinesqSolver", "nusselt_number", "CRITICAL_RAYLEIGH"]

#: Critical Rayleigh number between two no-slip, fixed-temperature walls.
CRITICAL_RAYLEIGH = 1707.76


def _next(q: np.ndarray) -> np.ndarray:
    """q[..., i + 1] with periodic wrap (``np.roll(q, -1, -1)``, faster)."""
    return np.concatenate([q[..., 1:], q[..., :1]], axis=-1)


def _prev(q: np.ndarray) -> np.ndarray:
    """q[..., i - 1] with periodic wrap."""
    return np.concatenate([q[..., -1:], q[..., :-1]], axis=-1)


def _dz(q: np.ndarray) -> np.ndarray:
    """First difference along z (axis -2)."""
    return q[..., 1:, :] - q[..., :-1, :]


class BoussinesqSolver:
    """MAC-grid solver for 2-D Boussinesq convection, batched over trajectories.

    Parameters
    ----------
    nx, nz : int
        Cells along x (periodic) and z (walls).
    aspect : float
        Domain width over height.
    rayleigh, prandtl : np.ndarray, shape (N,)
        Parameters per trajectory.

    Notes
    -----
    State: ``T`` (N, nz, nx) at cell centres; ``u`` (N, nz, nx) on the x-faces (face i
    is the left face of cell i); ``w`` (N, nz + 1, nx) on the z-faces, zero on the walls.
    """

    def __init__(
        self, nx: int, nz: int, aspect: float, rayleigh: np.ndarray, prandtl: np.ndarray
    ) -> None:
        if nx < 4 or nz < 4 or nx % 2:
            raise ValueError(f"need an even nx >= 4 and nz >= 4, got nx={nx}, nz={nz}")
        self.nx, self.nz = nx, nz
        self.dx, self.dz = aspect / nx, 1.0 / nz
        ra = np.asarray(rayleigh, np.float64).reshape(-1, 1, 1)
        pr = np.asarray(prandtl, np.float64).reshape(-1, 1, 1)
        self.nu = np.sqrt(pr / ra)
        self.kappa = 1.0 / np.sqrt(ra * pr)
        self.z_center = (np.arange(nz) + 0.5) * self.dz
        self.z_face = np.arange(nz + 1) * self.dz
        # Poisson operator: FFT in x (eigenvalues of the periodic second difference) and
        # the eigenvectors of the Neumann second difference in z.
        k = np.arange(nx // 2 + 1)
        lam_x = -4.0 / self.dx**2 * np.sin(np.pi * k / nx) ** 2
        az = (
            np.diag(-2.0 * np.ones(nz)) + np.diag(np.ones(nz - 1), 1) + np.diag(np.ones(nz - 1), -1)
        )
        az[0, 0] = az[-1, -1] = -1.0
        lam_z, self.vz = np.linalg.eigh(az / self.dz**2)
        lam_z[np.argmin(np.abs(lam_z))] = 0.0
        denom = lam_z[:, None] + lam_x[None, :]
        self.inv = np.where(np.abs(denom) > 1e-12, 1.0 / np.where(denom == 0, 1.0, denom), 0.0)

    # -- discrete operators -------------------------------------------------------------
    def divergence(self, u: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Discrete divergence at cell centres, shape (N, nz, nx)."""
        return (_next(u) - u) / self.dx + _dz(w) / self.dz

    def project(self, u: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Remove the gradient part of (u, w): solve D G phi = D u exactly, subtract G phi."""
        div_hat = np.fft.rfft(self.divergence(u, w), axis=-1)
        phi_hat = self.vz @ ((self.vz.T @ div_hat) * self.inv)
        phi = np.fft.irfft(phi_hat, n=self.nx, axis=-1)
        u = u - (phi - _prev(phi)) / self.dx
        w = w.copy()
        w[:, 1:-1] -= _dz(phi) / self.dz
        return u, w

    def _lap_x(self, q: np.ndarray) -> np.ndarray:
        return (_next(q) - 2 * q + _prev(q)) / self.dx**2

    def rhs(self, T: np.ndarray, u: np.ndarray, w: np.ndarray):
        """Tendencies (dT, du, dw) without the pressure gradient; dw is zero on the walls."""
        dx, dz = self.dx, self.dz
        wi = w[:, 1:-1]
        # Temperature: flux-form advection and diffusion with fixed wall temperatures.
        fx = u * 0.5 * (_prev(T) + T)
        fz = np.zeros_like(w)
        fz[:, 1:-1] = wi * 0.5 * (T[:, :-1] + T[:, 1:])
        tp = np.concatenate([2.0 - T[:, :1], T, -T[:, -1:]], axis=-2)
        lap_t = self._lap_x(T) + np.diff(tp, 2, axis=-2) / dz**2
        dT = -(_next(fx) - fx) / dx - _dz(fz) / dz + self.kappa * lap_t
        # Corner fluxes u*w at (z-face, x-face), zero on the walls.
        w_c = 0.5 * (wi + _prev(wi))
        u_c = 0.5 * (u[:, :-1] + u[:, 1:])
        corner = np.zeros_like(w)
        corner[:, 1:-1] = u_c * w_c
        # u on x-faces.
        uc = 0.5 * (u + _next(u))
        up = np.concatenate([-u[:, :1], u, -u[:, -1:]], axis=-2)
        lap_u = self._lap_x(u) + np.diff(up, 2, axis=-2) / dz**2
        du = -((uc**2 - _prev(uc**2)) / dx + _dz(corner) / dz)
        du += self.nu * lap_u
        # w on interior z-faces, with the buoyancy of theta = T - (1 - z).
        cw = corner[:, 1:-1]
        wc = 0.5 * (w[:, :-1] + w[:, 1:])
        lap_w = self._lap_x(wi) + np.diff(w, 2, axis=-2) / dz**2
        theta = 0.5 * (T[:, :-1] + T[:, 1:]) - (1.0 - self.z_face[1:-1, None])
        dw = np.zeros_like(w)
        dw[:, 1:-1] = -((_next(cw) - cw) / dx + _dz(wc**2) / dz) + self.nu * lap_w + theta
        return dT, du, dw

    def max_dt(self, u: np.ndarray, w: np.ndarray, cfl: float = 0.5) -> float:
        """Largest stable step for the whole batch (advective CFL and diffusive limit)."""
        adv = np.max(np.abs(u)) / self.dx + np.max(np.abs(w)) / self.dz
        diff = max(self.nu.max(), self.kappa.max()) * (1 / self.dx**2 + 1 / self.dz**2)
        return min(cfl / max(adv, 1e-12), 0.45 / diff)

    def step(self, T, u, w, dt):
        """One SSP-RK3 step of size ``dt`` with a projection after every stage."""

        def stage(T0, u0, w0, a, T1, u1, w1):
            dT, du, dw = self.rhs(T1, u1, w1)
            Tn = a * T0 + (1 - a) * (T1 + dt * dT)
            un, wn = self.project(
                a * u0 + (1 - a) * (u1 + dt * du), a * w0 + (1 - a) * (w1 + dt * dw)
            )
            return Tn, un, wn

        s1 = stage(T, u, w, 0.0, T, u, w)
        s2 = stage(T, u, w, 0.75, *s1)
        return stage(T, u, w, 1.0 / 3.0, *s2)

    def centred(self, u: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Velocities interpolated to the cell centres, each (N, nz, nx)."""
        return 0.5 * (u + _next(u)), 0.5 * (w[:, :-1] + w[:, 1:])


def nusselt_number(
    temperature: np.ndarray | xr.DataArray,
    vertical_velocity: np.ndarray | xr.DataArray,
    rayleigh: np.ndarray | xr.DataArray,
    prandtl: np.ndarray | xr.DataArray,
) -> np.ndarray:
    """Nusselt number ``1 + sqrt(Ra Pr) <w T>`` (free-fall units), per leading index.

    Parameters
    ----------
    temperature, vertical_velocity : array, shape (N, ..., H, W)
        Cell-centred fields; the average runs over the last two dims.
    rayleigh, prandtl : array, shape (N,)

    Returns
    -------
    np.ndarray, shape (N, ...)
        1 for pure conduction; larger when convection carries heat.
    """
    t = np.asarray(temperature, np.float64)
    w = np.asarray(vertical_velocity, np.float64)
    scale = np.sqrt(np.asarray(rayleigh, np.float64) * np.asarray(prandtl, np.float64))
    flux = (w * t).mean(axis=(-2, -1))
    return 1.0 + scale.reshape((-1,) + (1,) * (flux.ndim - 1)) * flux


def _log_uniform(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
    return np.exp(rng.uniform(np.log(lo), np.log(hi), size=n))


@DATASETS.register(
    "rayleigh_benard",
    kind="simulator",
    description="2-D Rayleigh-Benard convection (temperature, u, v), Ra and Pr per trajectory",
)
def rayleigh_benard(
    n_trajectories: int = 8,
    size: int | Sequence[int] = (16, 32),
    n_steps: int = 30,
    dt: float = 0.5,
    seed: int = 0,
    aspect: float = 2.0,
    rayleigh_range: tuple[float, float] = (1e4, 1e5),
    prandtl_range: tuple[float, float] = (0.5, 2.0),
    spinup: float = 15.0,
    amplitude: float = 0.05,
    cfl: float = 0.9,
    progress: bool = True,
) -> xr.Dataset:
    """Simulate 2-D Rayleigh-Benard convection.

    Parameters
    ----------
    n_trajectories : int
        Trajectories N, each with its own Rayleigh and Prandtl number.
    size : int or (int, int)
        Grid (H, W) = (nz, nx); an int gives (size // 2, size). nx must be even.
    n_steps : int
        Saved frames T.
    dt : float
        Free-fall times between saved frames.
    seed : int
        Seed of all random draws.
    aspect : float
        Width over height of the domain.
    rayleigh_range, prandtl_range : (float, float)
        Log-uniform ranges of Ra and Pr.
    spinup : float
        Free-fall times simulated before the first saved frame (onset of convection).
    amplitude : float
        Size of the random initial temperature perturbation.
    cfl : float
        Advective Courant number (SSP-RK3 with central differences is stable to about 1.7).
    progress : bool
        Report progress (a bar on a terminal, a line per tenth of the work in a log).

    Returns
    -------
    xr.Dataset
        ``temperature``, ``u`` (horizontal) and ``v`` (vertical velocity), dims
        (trajectory, time, y, x), float32, y being height; ``rayleigh`` and ``prandtl``
        along trajectory.

    Examples
    --------
    >>> ds = rayleigh_benard(n_trajectories=1, size=(8, 16), n_steps=2, spinup=0.0, progress=False)
    >>> sorted(ds.data_vars)
    ['prandtl', 'rayleigh', 'temperature', 'u', 'v']
    """
    nz, nx = (size // 2, size) if isinstance(size, int) else tuple(size)
    if n_trajectories < 1 or n_steps < 1:
        raise ValueError("need n_trajectories >= 1 and n_steps >= 1")
    rng = np.random.default_rng(seed)
    n = n_trajectories
    ra = _log_uniform(rng, *rayleigh_range, n)
    pr = _log_uniform(rng, *prandtl_range, n)
    solver = BoussinesqSolver(nx, nz, aspect, ra, pr)
    x = (np.arange(nx) + 0.5) * solver.dx
    z = solver.z_center
    # Smooth random perturbation, zero on the walls: a few x-modes times sin(pi z).
    modes = np.arange(1, 5)
    phase = rng.uniform(0, 2 * np.pi, (n, modes.size))
    amp = rng.normal(size=(n, modes.size)) / modes
    pert = np.einsum(
        "nm,nmx->nx", amp, np.cos(2 * np.pi * modes[None, :, None] * x / aspect + phase[..., None])
    )
    pert /= np.abs(pert).max(axis=1, keepdims=True)
    T = (1.0 - z)[None, :, None] + amplitude * np.sin(np.pi * z)[None, :, None] * pert[:, None, :]
    u = np.zeros((n, nz, nx))
    w = np.zeros((n, nz + 1, nx))

    def advance(T, u, w, span):
        t = 0.0
        while t < span - 1e-12:
            h = min(solver.max_dt(u, w, cfl), span - t)
            T, u, w = solver.step(T, u, w, h)
            t += h
        return T, u, w

    fields = np.empty((3, n, n_steps, nz, nx))
    n_chunks = int(np.ceil(spinup / dt)) if spinup > 0 else 0
    with progress_bar(n_chunks + n_steps - 1, "rayleigh_benard", enabled=progress) as bar:
        for _ in range(n_chunks):
            T, u, w = advance(T, u, w, spinup / n_chunks)
            bar.update(1)
        for k in range(n_steps):
            if k:
                T, u, w = advance(T, u, w, dt)
                bar.update(1)
            uc, wc = solver.centred(u, w)
            fields[0, :, k], fields[1, :, k], fields[2, :, k] = T, uc, wc
    return simulation_dataset(
        {
            "temperature": (fields[0], "1", "temperature (0 at the lid, 1 at the floor)"),
            "u": (fields[1], "1", "horizontal velocity (free-fall units)"),
            "v": (fields[2], "1", "vertical velocity (free-fall units)"),
        },
        time=spinup + np.arange(n_steps) * dt,
        y=z,
        x=x,
        parameters={
            "rayleigh": (ra, "1", "Rayleigh number"),
            "prandtl": (pr, "1", "Prandtl number"),
        },
        attrs={
            "system": "rayleigh_benard",
            "dx": solver.dx,
            "dy": solver.dz,
            "dt": dt,
            "boundary_conditions": "x: periodic; y: no-slip walls, T=1 (bottom), T=0 (top)",
            "units_description": "free-fall units: height, temperature drop, sqrt(g alpha dT H)",
            "scheme": "MAC grid, central differences, SSP-RK3, exact FFT/eigen projection",
            "seed": seed,
        },
        space_units="1",
        time_units="1",
    )
