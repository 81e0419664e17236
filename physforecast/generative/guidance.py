"""Classifier-free guidance over the physical-parameter condition, condition dropout,
and guidance distillation (a student that takes the guidance scale as an input and
matches the teacher's guided output in one call).

Every function here works on any denoiser that follows the protocol of
:mod:`physforecast.generative.dit` (``params``/``drop_params`` keywords).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = [
    "GuidanceDistiller",
    "cfg_output",
    "condition_dropout",
    "denoise_fn",
]


def condition_dropout(
    batch: int,
    p: float,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> torch.Tensor | None:
    """(B,) bool mask of the samples whose parameters are dropped in training (rate ``p``);
    None when ``p == 0``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"condition dropout must be in [0, 1]; got {p}")
    if p == 0.0:
        return None
    return torch.rand(batch, generator=generator, device=device) < p


def cfg_output(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    timestep: torch.Tensor,
    scale: float | torch.Tensor,
    **cond: Any,
) -> torch.Tensor:
    """Classifier-free guidance: ``u + w * (c - u)`` from two calls of ``model``.

    Parameters
    ----------
    model : callable
        A denoiser ``model(x, timestep, params=..., drop_params=..., **cond)``.
    x : Tensor
        (B, C, ...) noisy samples.
    timestep : Tensor
        (B,) noise levels.
    scale : float or Tensor
        Guidance scale ``w`` (1: the conditional output); a (B,) tensor gives one per sample.
    **cond
        ``params`` (B, P) and any other condition (``history``), passed to both calls; the
        unconditional call has every sample's parameters dropped.

    Returns
    -------
    Tensor
        The guided output, shape of ``model``'s output.
    """
    conditional = model(x, timestep, **cond)
    drop = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    unconditional = model(x, timestep, **{**cond, "drop_params": drop})
    w = torch.as_tensor(scale, dtype=conditional.dtype, device=x.device)
    if w.ndim == 1:
        w = w.reshape(-1, *([1] * (conditional.ndim - 1)))
    return unconditional + w * (conditional - unconditional)


def denoise_fn(
    model: Callable[..., torch.Tensor],
    cond: dict[str, Any],
    guidance_scale: float | None = None,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``f(x, timestep)`` for a sampler: the model with its conditions bound, guided
    (two calls) when ``guidance_scale`` is given and not 1.

    Conditions that are None are left out, so a denoiser that takes no ``history`` is
    never passed one.
    """
    bound = {k: v for k, v in cond.items() if v is not None}
    if guidance_scale is None or float(guidance_scale) == 1.0:
        return lambda x, t: model(x, t, **bound)
    return lambda x, t: cfg_output(model, x, t, guidance_scale, **bound)


class GuidanceDistiller(nn.Module):
    """Guidance distillation: the student, given ``w`` as an input, matches the teacher's
    classifier-free-guided output, so sampling takes one call per step instead of two.

    The loss on a training batch draws a noise level and a noisy sample the way
    ``process`` trains, ``w ~ U[w_min, w_max]`` per sample, and is
    ``|| student(x_t, t, params, guidance=w) - cfg(teacher, x_t, t, params, w) ||^2``.

    Parameters
    ----------
    teacher : nn.Module
        A trained denoiser (frozen here).
    student : nn.Module
        A denoiser built with ``guidance_embed=True`` (typically initialised from the
        teacher with ``load_state_dict(..., strict=False)``).
    process : FlowMatching or DDPM
        The noise process (its ``corrupt``).
    w_range : tuple of float
        The guidance scales drawn in training (HunyuanVideo: [1, 8]).
    """

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        process: Any,
        w_range: tuple[float, float] = (1.0, 8.0),
    ) -> None:
        super().__init__()
        self.teacher, self.student, self.process = teacher, student, process
        self.w_range = (float(w_range[0]), float(w_range[1]))
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def loss(
        self,
        x0: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        **cond: Any,
    ) -> torch.Tensor:
        """Distillation loss on clean samples ``x0`` (B, C, ...) with their conditions."""
        bound = {k: v for k, v in cond.items() if v is not None}
        x_t, timestep, _ = self.process.corrupt(x0, generator=generator)
        lo, hi = self.w_range
        w = lo + (hi - lo) * torch.rand(x0.shape[0], generator=generator, device=x0.device)
        with torch.no_grad():
            target = cfg_output(self.teacher, x_t, timestep, w, **bound)
        pred = self.student(x_t, timestep, guidance=w, **bound)
        return torch.mean((pred.float() - target.float()) ** 2)
