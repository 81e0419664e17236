"""DDPM-family training and sampling of a denoiser through diffusers' schedulers.

Training noises ``x0`` with :class:`~diffusers.DDPMScheduler` (``add_noise``) and regresses
the noise (``prediction_type="epsilon"``), ``v`` (``"v_prediction"``, Hunyuan-DiT) or ``x0``
(``"sample"``); sampling steps :class:`~diffusers.DDPMScheduler` (ancestral) or
:class:`~diffusers.DDIMScheduler` (``eta`` = 0: deterministic). ``clip_sample`` is always
off: physical fields are not images in [-1, 1]. The model's timestep input is the
integer step ``0 .. num_train_timesteps - 1``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .guidance import condition_dropout, denoise_fn
from .process import NoiseProcess

__all__ = ["DDPM"]

_PREDICTIONS = ("epsilon", "v_prediction", "sample")


class DDPM(NoiseProcess):
    """Denoising diffusion (DDPM / DDIM sampling) with diffusers' schedulers.

    Parameters
    ----------
    num_train_timesteps : int
        Diffusion steps of training.
    beta_schedule : str
        diffusers' ``beta_schedule`` (``"linear"``, ``"scaled_linear"`` (Hunyuan-DiT,
        0.00085 -> 0.02), ``"squaredcos_cap_v2"``).
    beta_start, beta_end : float
        Ends of the linear schedules.
    prediction_type : {"epsilon", "v_prediction", "sample"}
        What the model predicts.
    timestep_spacing : str
        How fewer sampling steps are spread over the training steps (diffusers'
        ``"leading"``, ``"trailing"``, ``"linspace"``); ``"trailing"`` starts at the
        noisiest step.
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        *,
        beta_schedule: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "trailing",
    ) -> None:
        if prediction_type not in _PREDICTIONS:
            raise ValueError(
                f"prediction_type must be one of {_PREDICTIONS}; got {prediction_type!r}"
            )
        self.config = {
            "num_train_timesteps": int(num_train_timesteps),
            "beta_schedule": beta_schedule,
            "beta_start": float(beta_start),
            "beta_end": float(beta_end),
            "prediction_type": prediction_type,
            "timestep_spacing": timestep_spacing,
            "clip_sample": False,
        }
        self.num_train_timesteps = int(num_train_timesteps)
        self.prediction_type = prediction_type
        self._train = self.scheduler("ddpm")

    def scheduler(self, kind: str = "ddpm") -> Any:
        """A fresh diffusers ``DDPMScheduler`` (``kind="ddpm"``) or ``DDIMScheduler``
        (``"ddim"``) with this process's betas, ``clip_sample=False``."""
        from diffusers import DDIMScheduler, DDPMScheduler

        if kind == "ddpm":
            return DDPMScheduler(**self.config)
        if kind == "ddim":
            return DDIMScheduler(**self.config)
        raise ValueError(f"sampler must be 'ddpm' or 'ddim'; got {kind!r}")

    def corrupt(
        self, x0: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A training example from clean ``x0`` (B, C, ...).

        Returns
        -------
        x_t : Tensor
            (B, C, ...) ``sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``.
        timestep : Tensor
            (B,) int64 steps drawn uniformly.
        target : Tensor
            (B, C, ...) the noise, ``v`` or ``x0`` (``prediction_type``).
        """
        b = x0.shape[0]
        t = torch.randint(0, self.num_train_timesteps, (b,), generator=generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = self._train.add_noise(x0, noise, t)
        if self.prediction_type == "epsilon":
            target = noise
        elif self.prediction_type == "v_prediction":
            target = self._train.get_velocity(x0, noise, t)
        else:
            target = x0
        return x_t, t, target

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
        """MSE between ``model``'s prediction and the target on clean ``x0`` (a scalar);
        ``param_dropout`` as in :meth:`FlowMatching.loss`."""
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

    @torch.no_grad()
    def sample(
        self,
        model: Callable[..., torch.Tensor],
        noise: torch.Tensor,
        *,
        steps: int = 50,
        sampler: str = "ddim",
        eta: float = 0.0,
        params: torch.Tensor | None = None,
        history: torch.Tensor | None = None,
        guidance_scale: float | None = None,
        guidance: float | torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        step_noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Denoise from ``noise`` (B, C, ...) in ``steps`` scheduler steps.

        Parameters
        ----------
        sampler : {"ddpm", "ddim"}
            Ancestral DDPM (stochastic; ``generator`` draws its noise) or DDIM
            (``eta=0`` deterministic).
        eta : float
            DDIM's stochasticity.
        params, history, guidance_scale, guidance
            As in :meth:`FlowMatching.sample`.
        generator : torch.Generator, optional
            For the noise the DDPM / stochastic DDIM steps add.
        step_noise : Tensor, optional
            (steps, B, C, ...) standard normal noise that step ``k`` adds, instead of
            drawing it: the sample is then a deterministic function of ``noise`` and
            ``step_noise`` (what a search over samples sharing their random numbers
            needs). With ``sampler="ddim"`` it is DDIM's ``variance_noise`` (``eta > 0``);
            with ``sampler="ddpm"`` the ancestral step is taken as DDIM with ``eta = 1``
            (the same DDPM posterior step, Song et al. 2021; equal to
            :class:`~diffusers.DDPMScheduler`'s step given that noise when ``steps``
            divides ``num_train_timesteps``). Excludes ``generator``.

        Returns
        -------
        Tensor
            (B, C, ...) samples.
        """
        denoise = denoise_fn(
            model, {"params": params, "history": history, "guidance": guidance}, guidance_scale
        )
        if step_noise is not None:
            if generator is not None:
                raise ValueError("give either step_noise or generator, not both")
            if tuple(step_noise.shape) != (steps, *noise.shape):
                raise ValueError(
                    f"step_noise must have shape (steps, *noise.shape) = "
                    f"{(steps, *noise.shape)}; got {tuple(step_noise.shape)}"
                )
            if sampler == "ddpm":
                sampler, eta = "ddim", 1.0
            elif sampler == "ddim" and eta <= 0:
                raise ValueError(
                    "step_noise needs a stochastic sampler (ddpm, or ddim with eta > 0)"
                )
        scheduler = self.scheduler(sampler)
        scheduler.set_timesteps(steps, device=noise.device)
        x = noise
        b = noise.shape[0]
        for k, t in enumerate(scheduler.timesteps):
            out = denoise(x, t.expand(b))
            if step_noise is not None:
                eps = step_noise[k].to(device=x.device, dtype=x.dtype)
                x = scheduler.step(out, t, x, eta=eta, variance_noise=eps).prev_sample
            elif sampler == "ddim":
                x = scheduler.step(out, t, x, eta=eta, generator=generator).prev_sample
            else:
                x = scheduler.step(out, t, x, generator=generator).prev_sample
        return x
