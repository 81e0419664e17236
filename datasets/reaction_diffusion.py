"""2-D FitzHugh-Nagumo reaction-diffusion, as in PDEBench's diffusion-reaction set.

.. math::

    u_t = D_u \\nabla^2 u + u - u^3 - k - v, \\qquad v_t = D_v \\nabla^2 v + u - v

with activator ``u``, inhibitor ``v`` and ``k = 5e-3`` on ``[-1, 1]^2``, with no-flux
(Neumann) or periodic boundaries. The diffusivities are drawn per trajectory.

Scheme: Strang splitting. Diffusion is solved exactly in the eigenbasis of the Laplacian
(a type-II DCT for Neumann boundaries on the cell-centred grid, an FFT for periodic
ones): a Fourier mode decays exactly as ``exp(-D |k|^2 t)``. The reaction step is RK4.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.fft as sfft
import xarray as xr

from physforecast.data.cf import simulation_dataset
from physforecast.progress import progress as progress_bar
from physforecast.registry import DATASETS

__all__ = ["reaction_diffusion", "laplacian_eigenvalues", "FHN_K"]

#: The constant ``k`` of PDEBench's FitzHugh-Nagumo set.
FHN_K = 5e-3


def laplacian_eigenvalues(shape: tuple[int, int], length: float, boundary: str) -> np.ndarray:
    """``|k|^2`` of every spectral coefficient on a square of side ``length``.

    Parameters
    ----------
    shape : (int, int)
        Grid (H, W).
    length : float
        Domain side.
    boundary : {"neumann", "periodic"}
        Neumann: DCT-II modes ``cos(m pi (x - x0) / L)``, shape (H, W).
        Periodic: rfft2 modes ``exp(2 pi i n x / L)``, shape (H, W // 2 + 1).

    Returns
    -------
    np.ndarray
        Non-negative eigenvalues of ``-laplacian``.
    """
    ny, nx = shape
    if boundary == "neumann":
        ky = np.pi * np.arange(ny) / length
        kx = np.pi * np.arange(nx) / length
    elif boundary == "periodic":
        ky = 2 * np.pi * np.fft.fftfreq(ny, d=1.0 / ny) / length
        kx = 2 * np.pi * np.arange(nx // 2 + 1) / length
    else:
        raise ValueError(f"boundary must be 'neumann' or 'periodic', got {boundary!r}")
    return ky[:, None] ** 2 + kx[None, :] ** 2


def _transforms(boundary: str):
    if boundary == "neumann":
        return (
            lambda a: sfft.dctn(a, type=2, axes=(-2, -1), norm="ortho"),
            lambda a, shape: sfft.idctn(a, type=2, axes=(-2, -1), norm="ortho"),
        )
    return (
        lambda a: np.fft.rfft2(a, axes=(-2, -1)),
        lambda a, shape: np.fft.irfft2(a, s=shape, axes=(-2, -1)),
    )


def _reaction(s: np.ndarray, k: float) -> np.ndarray:
    u, v = s[:, 0], s[:, 1]
    return np.stack([u - u**3 - k - v, u - v], axis=1)


def _smooth_noise(
    rng: np.random.Generator, n: int, shape: tuple[int, int], corr: float
) -> np.ndarray:
    """Gaussian random fields with correlation length ``corr`` (in grid cells), unit std."""
    white = rng.normal(size=(n, 2) + shape)
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.fftfreq(shape[1])[None, :]
    filt = np.exp(-2 * (np.pi * corr) ** 2 * (ky**2 + kx**2))
    field = np.fft.ifft2(np.fft.fft2(white, axes=(-2, -1)) * filt, axes=(-2, -1)).real
    field -= field.mean(axis=(-2, -1), keepdims=True)
    return field / field.std(axis=(-2, -1), keepdims=True)


@DATASETS.register(
    "reaction_diffusion",
    kind="simulator",
    description="2-D FitzHugh-Nagumo reaction-diffusion (u, v), PDEBench-like, Du and Dv per trajectory",
)
def reaction_diffusion(
    n_trajectories: int = 8,
    size: int | Sequence[int] = 32,
    n_steps: int = 40,
    dt: float = 0.125,
    seed: int = 0,
    length: float = 2.0,
    diffusivity_u_range: tuple[float, float] = (5e-4, 2e-3),
    diffusivity_v_range: tuple[float, float] = (2.5e-3, 1e-2),
    k: float = FHN_K,
    boundary: str = "neumann",
    reactions: bool = True,
    initial_state: np.ndarray | None = None,
    max_substep: float = 0.025,
    progress: bool = True,
) -> xr.Dataset:
    """Simulate the 2-D FitzHugh-Nagumo system.

    Parameters
    ----------
    n_trajectories : int
        Trajectories N, each with its own diffusivities and initial state.
    size : int or (int, int)
        Grid (H, W); an int gives a square grid.
    n_steps : int
        Saved frames T, the first being the initial state.
    dt : float
        Time between saved frames.
    seed : int
        Seed of all random draws.
    length : float
        Side of the square domain, centred on 0 (PDEBench: [-1, 1]).
    diffusivity_u_range, diffusivity_v_range : (float, float)
        Log-uniform ranges of ``D_u`` and ``D_v`` (PDEBench uses 1e-3 and 5e-3).
    k : float
        Reaction constant.
    boundary : {"neumann", "periodic"}
        No-flux walls or a periodic domain.
    reactions : bool
        False turns the reaction terms off (pure diffusion; for checks).
    initial_state : np.ndarray, optional
        Initial (u, v), shape (2, H, W) or (N, 2, H, W); smooth random fields with unit
        standard deviation when omitted.
    max_substep : float
        Largest splitting step.
    progress : bool
        Report progress (a bar on a terminal, a line per tenth of the work in a log).

    Returns
    -------
    xr.Dataset
        ``u`` and ``v``, dims (trajectory, time, y, x), float32; ``diffusivity_u`` and
        ``diffusivity_v`` along trajectory.

    Examples
    --------
    >>> ds = reaction_diffusion(n_trajectories=2, size=16, n_steps=3, progress=False)
    >>> ds.attrs["parameters"]
    'diffusivity_u,diffusivity_v'
    """
    ny, nx = (size, size) if isinstance(size, int) else tuple(size)
    if boundary not in ("neumann", "periodic"):
        raise ValueError(f"boundary must be 'neumann' or 'periodic', got {boundary!r}")
    if n_trajectories < 1 or n_steps < 1:
        raise ValueError("need n_trajectories >= 1 and n_steps >= 1")
    rng = np.random.default_rng(seed)
    n = n_trajectories
    du = np.exp(rng.uniform(*np.log(diffusivity_u_range), size=n))
    dv = np.exp(rng.uniform(*np.log(diffusivity_v_range), size=n))
    if initial_state is None:
        state = _smooth_noise(rng, n, (ny, nx), corr=max(1.0, min(ny, nx) / 16))
    else:
        state = np.broadcast_to(np.asarray(initial_state, np.float64), (n, 2, ny, nx)).copy()
    forward, inverse = _transforms(boundary)
    lam = laplacian_eigenvalues((ny, nx), length, boundary)
    substeps = max(1, int(np.ceil(dt / max_substep - 1e-9)))
    h = dt / substeps
    # Half-step diffusion factors, (N, 2, H, W') per trajectory and species.
    diff = np.stack([du, dv], axis=1)[:, :, None, None]
    half = np.exp(-diff * lam * (h / 2))
    full = half * half

    def diffuse(s: np.ndarray, factor: np.ndarray) -> np.ndarray:
        return inverse(forward(s) * factor, (ny, nx))

    def react(s: np.ndarray) -> np.ndarray:
        if not reactions:
            return s
        a = _reaction(s, k)
        b = _reaction(s + 0.5 * h * a, k)
        c = _reaction(s + 0.5 * h * b, k)
        d = _reaction(s + h * c, k)
        return s + h / 6 * (a + 2 * b + 2 * c + d)

    frames = np.empty((n, n_steps, 2, ny, nx))
    frames[:, 0] = state
    with progress_bar(n_steps - 1, "reaction_diffusion", enabled=progress) as bar:
        for t in range(1, n_steps):
            # Strang splitting with the inner half-steps of diffusion merged.
            state = diffuse(state, half)
            for i in range(substeps):
                state = diffuse(react(state), half if i == substeps - 1 else full)
            frames[:, t] = state
            bar.update(1)
    x = (np.arange(nx) + 0.5) * (length / nx) - length / 2
    y = (np.arange(ny) + 0.5) * (length / ny) - length / 2
    return simulation_dataset(
        {
            "u": (frames[:, :, 0], "1", "activator concentration"),
            "v": (frames[:, :, 1], "1", "inhibitor concentration"),
        },
        time=np.arange(n_steps) * dt,
        y=y,
        x=x,
        parameters={
            "diffusivity_u": (du, "m2 s-1", "activator diffusivity D_u"),
            "diffusivity_v": (dv, "m2 s-1", "inhibitor diffusivity D_v"),
        },
        attrs={
            "system": "reaction_diffusion",
            "model": "fitzhugh_nagumo",
            "k": k,
            "reactions": int(reactions),
            "dt": dt,
            "boundary_conditions": boundary,
            "scheme": "Strang splitting: exact spectral diffusion, RK4 reactions",
            "seed": seed,
        },
    )
