"""Rectified flow matching (HunyuanVideo, SD3): the velocity loss with a uniform or
logit-normal timestep density, the shifted sigma schedule, and sampling through diffusers'
:class:`~diffusers.FlowMatchEulerDiscreteScheduler`.

Convention (diffusers'): ``x_sigma = (1 - sigma) * x0 + sigma * noise``, the model predicts
the velocity ``noise - x0``, sampling integrates from ``sigma = 1`` (pure noise) to 0 with
``x <- x + (sigma_next - sigma) * v``; the model's timestep input is ``1000 * sigma``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .guidance import condition_dropout, denoise_fn
from .process import NoiseProcess

__all__ = ["FlowMatching", "flow_sigmas", "shift_sigmas"]


def shift_sigmas(sigma: torch.Tensor | float, shift: float) -> torch.Tensor:
    """The shifted schedule ``sigma' = s * sigma / (1 + (s - 1) * sigma)``.

    ``s > 1`` spends more of the steps at high noise (slope ``1/s`` at ``sigma = 1``,
    ``s`` at 0); ``s = 1`` is the identity.
    """
    if shift <= 0:
        raise ValueError(f"shift must be positive; got {shift}")
    sigma = torch.as_tensor(sigma)
    return shift * sigma / (1 + (shift - 1) * sigma)


def flow_sigmas(steps: int, shift: float = 1.0, *, num_train_timesteps: int = 1000) -> torch.Tensor:
    """The ``steps + 1`` sigmas of a ``steps``-step flow sampler, last one 0.

    ``steps`` points evenly spaced from 1 down to the smallest training sigma
    (``shift(1 / num_train_timesteps)``), each shifted, then a final 0: the grid
    :class:`~diffusers.FlowMatchEulerDiscreteScheduler` uses (``set_timesteps``).

    Returns
    -------
    Tensor
        (steps + 1,) float32, decreasing from 1 to 0.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    sigma_min = float(
        shift_sigmas(torch.tensor(1.0 / num_train_timesteps, dtype=torch.float64), shift)
    )
    base = torch.linspace(1.0, sigma_min, steps, dtype=torch.float64)
    sigmas = shift_sigmas(base, shift).float()
    return torch.cat([sigmas, torch.zeros(1)])


class FlowMatching(NoiseProcess):
    """Flow-matching training and sampling of a denoiser (see the module docstring).

    Parameters
    ----------
    shift : float
        Sampling shift ``s`` of the sigma schedule (HunyuanVideo: 7 at 50 steps, 17 below
        20 steps).
    density : {"uniform", "logit_normal"}
        Density of the training timesteps ``u``: uniform on (0, 1), or
        ``sigmoid(N(logit_mean, logit_std))`` (SD3), drawn by diffusers'
        ``compute_density_for_timestep_sampling``.
    logit_mean, logit_std : float
        Parameters of the logit-normal density.
    train_shift : float
        Shift applied to the training sigmas (``sigma = shift(u)``); 1 leaves them as drawn.
    num_train_timesteps : int
        Scale of the model's timestep input (``num_train_timesteps * sigma``).
    """

    def __init__(
        self,
        shift: float = 1.0,
        *,
        density: str = "uniform",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        train_shift: float = 1.0,
        num_train_timesteps: int = 1000,
    ) -> None:
        if density not in ("uniform", "logit_normal"):
            raise ValueError(f"density must be 'uniform' or 'logit_normal'; got {density!r}")
        if shift <= 0 or train_shift <= 0:
            raise ValueError("shift and train_shift must be positive")
        self.shift, self.density = float(shift), density
        self.logit_mean, self.logit_std = float(logit_mean), float(logit_std)
        self.train_shift = float(train_shift)
        self.num_train_timesteps = int(num_train_timesteps)

    def draw_sigmas(
        self,
        batch: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | None = None,
    ) -> torch.Tensor:
        """(B,) training sigmas from the timestep density (then ``train_shift``)."""
        from diffusers.training_utils import compute_density_for_timestep_sampling

        u = compute_density_for_timestep_sampling(
            weighting_scheme=self.density,
            batch_size=batch,
            logit_mean=self.logit_mean,
            logit_std=self.logit_std,
            device="cpu" if device is None else device,
            generator=generator,
        )
        return shift_sigmas(u.float(), self.train_shift)

    def corrupt(
        self, x0: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A training example from clean ``x0`` (B, C, ...).

        Returns
        -------
        x_t : Tensor
            (B, C, ...) ``(1 - sigma) x0 + sigma * noise``.
        timestep : Tensor
            (B,) the model's timestep input, ``num_train_timesteps * sigma``.
        target : Tensor
            (B, C, ...) the velocity ``noise - x0``.
        """
        b = x0.shape[0]
        sigma = self.draw_sigmas(b, generator=generator, device=x0.device).to(x0.dtype)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        s = sigma.reshape(-1, *([1] * (x0.ndim - 1)))
        return (1 - s) * x0 + s * noise, sigma * self.num_train_timesteps, noise - x0

    def loss(
        self,
        model: Callable[..., torch.Tensor],
        x0: torch.Tensor,
        *,
        params: torch.Tensor | None = None,
        history: torch.Tensor | None = None,
        param_dropout: float = 0.0,
        generator: torch.Generator | None = None,
        **cond: Any,
    ) -> torch.Tensor:
        """The velocity MSE of ``model`` on clean ``x0`` (B, C, ...) (a scalar).

        ``param_dropout`` drops each sample's parameters with that probability (condition
        dropout, what classifier-free guidance needs).
        """
        x_t, timestep, target = self.corrupt(x0, generator=generator)
        bound = {
            k: v for k, v in {"params": params, "history": history, **cond}.items() if v is not None
        }
        if params is not None and param_dropout > 0:
            bound["drop_params"] = condition_dropout(
                x0.shape[0], param_dropout, generator=generator, device=x0.device
            )
        prediction = model(x_t, timestep, **bound)
        return torch.mean((prediction.float() - target.float()) ** 2)

    def scheduler(self, shift: float | None = None, solver: str = "euler") -> Any:
        """A fresh diffusers ``FlowMatchEulerDiscreteScheduler`` (``solver="euler"``) or
        ``FlowMatchHeunDiscreteScheduler`` (``"heun"``: second order, ``2 * steps - 1``
        calls, the last step Euler) with this shift."""
        from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler

        options = {
            "num_train_timesteps": self.num_train_timesteps,
            "shift": self.shift if shift is None else float(shift),
        }
        if solver == "euler":
            return FlowMatchEulerDiscreteScheduler(**options)
        if solver == "heun":
            return FlowMatchHeunDiscreteScheduler(**options)
        raise ValueError(f"solver must be 'euler' or 'heun'; got {solver!r}")

    @torch.no_grad()
    def sample(
        self,
        model: Callable[..., torch.Tensor],
        noise: torch.Tensor,
        *,
        steps: int = 50,
        shift: float | None = None,
        solver: str = "euler",
        params: torch.Tensor | None = None,
        history: torch.Tensor | None = None,
        guidance_scale: float | None = None,
        guidance: float | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Integrate from ``noise`` (B, C, ...) at sigma 1 to a sample at sigma 0.

        Parameters
        ----------
        model : callable
            The denoiser (velocity prediction).
        noise : Tensor
            (B, C, ...) standard normal starting points (draw them with a seeded
            ``torch.Generator`` for reproducible members).
        steps : int
            Steps of the scheduler.
        shift : float, optional
            Overrides the sampling shift.
        solver : {"euler", "heun"}
            diffusers' flow-matching Euler or Heun scheduler.
        params, history : Tensor, optional
            Conditions passed to every call.
        guidance_scale : float, optional
            Classifier-free guidance (two calls per step) over ``params``.
        guidance : float or Tensor, optional
            The scale given to a guidance-distilled student (one call per step).

        Returns
        -------
        Tensor
            (B, C, ...) samples.
        """
        denoise = denoise_fn(
            model, {"params": params, "history": history, "guidance": guidance}, guidance_scale
        )
        scheduler = self.scheduler(shift, solver)
        scheduler.set_timesteps(steps, device=noise.device)
        x = noise
        b = noise.shape[0]
        for t in scheduler.timesteps:
            out = denoise(x, t.expand(b))
            x = scheduler.step(out, t, x).prev_sample
        return x
