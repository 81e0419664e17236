"""Embeddings of what a denoiser is conditioned on: the noise level, the physical
parameters (with a learned "no condition" vector for classifier-free guidance) and a
guidance scale (for guidance-distilled students)."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["FP32LayerNorm", "ParamEmbedder", "TimestepEmbedder", "timestep_embedding"]


def timestep_embedding(
    timestep: torch.Tensor, dim: int, *, max_period: float = 10000.0
) -> torch.Tensor:
    """Sinusoidal features of a scalar per sample (DDPM / DiT convention).

    Parameters
    ----------
    timestep : Tensor
        (B,) noise levels in scheduler units (flow matching: ``1000 * sigma``; DDPM: the
        integer step), or any other scalar such as a guidance scale.
    dim : int
        Number of features (even).
    max_period : float
        The longest period of the sinusoids.

    Returns
    -------
    Tensor
        (B, dim): ``cos`` features followed by ``sin`` features, in float32.
    """
    if dim % 2:
        raise ValueError(f"timestep_embedding needs an even dim; got {dim}")
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period)
        * torch.arange(half, dtype=torch.float32, device=timestep.device)
        / half
    )
    args = timestep.float().reshape(-1, 1) * freqs.reshape(1, -1)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of a scalar followed by an MLP: (B,) -> (B, hidden).

    Parameters
    ----------
    hidden : int
        Output width ``D``.
    frequency_dim : int
        Width of the sinusoidal features.
    """

    def __init__(self, hidden: int, frequency_dim: int = 256) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(
            nn.Linear(frequency_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
        )

    def forward(self, timestep: torch.Tensor) -> torch.Tensor:
        """(B,) scalars -> (B, hidden)."""
        features = timestep_embedding(timestep, self.frequency_dim)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class ParamEmbedder(nn.Module):
    """Embedding of physical parameters, with a learned null vector for "unconditioned".

    A sample whose parameters are dropped (condition dropout in training, the
    unconditional branch of classifier-free guidance) gets the null vector instead of
    ``MLP(params)``.

    Parameters
    ----------
    cond_dim : int
        Number of physical parameters ``P``.
    hidden : int
        Output width ``D``.
    """

    def __init__(self, cond_dim: int, hidden: int) -> None:
        super().__init__()
        self.cond_dim = cond_dim
        self.mlp = nn.Sequential(nn.Linear(cond_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.null = nn.Parameter(torch.zeros(hidden))

    def forward(
        self, params: torch.Tensor | None, drop: torch.Tensor | None, batch: int
    ) -> torch.Tensor:
        """Embed ``params`` (B, P); ``drop`` (B,) bool selects the null vector.

        ``params=None`` gives the null vector for all ``batch`` samples.
        """
        null = self.null.reshape(1, -1).expand(batch, -1)
        if params is None:
            return null
        if params.ndim != 2 or params.shape[1] != self.cond_dim:
            raise ValueError(
                f"params must have shape (B, {self.cond_dim}); got {tuple(params.shape)}"
            )
        embedded = self.mlp(params.to(self.null.dtype))
        if drop is None:
            return embedded
        return torch.where(drop.reshape(-1, 1).to(torch.bool), null, embedded)


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype (Hunyuan-DiT's fix for
    fp16 overflow), the result cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        out = nn.functional.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)
        return out.to(x.dtype)
