"""ST-PAD's downstream stage: a parameter-conditioned denoiser in the upstream latent space,
trained and sampled as DDPM / DDIM or as flow matching.

:class:`LatentDenoiser` predicts the noise (DDPM/DDIM) or the velocity (flow matching) of
a future latent block ``(B, T_out, D, h, w)`` from its noisy version, the diffusion time,
the history latents ``(B, T_in, D, h, w)`` (concatenated as channels) and an embedding
of the physical parameters ``(B, P)``, added to the time embedding and injected by FiLM
into every residual block. Dropping the condition (``drop``) replaces the parameter
embedding by a learned null embedding, which trains the unconditional model that
classifier-free guidance needs.

:class:`DiffusionProcess` holds the schedule and implements the standard updates:

- ``ddpm`` / ``ddim``: a cosine ``alpha_bar`` schedule (Nichol & Dhariwal 2021) of
  ``train_steps`` steps, epsilon prediction, and the DDIM update of Song et al. (2021) on
  ``sample_steps`` evenly spaced steps, with ``eta = 1`` (ancestral DDPM sampling; on
  every training step it is the DDPM posterior) or ``eta = 0`` (deterministic DDIM);
- ``flow``: rectified flow / flow matching (Lipman et al. 2023, Liu et al. 2023),
  ``x_t = (1 - t) x_0 + t eps``, velocity target ``eps - x_0``, Euler integration from
  ``t = 1`` to ``0``.

(The authors' sketch uses ``z <- (z - beta_t eps) / (1 - beta_t)``, which is none of
these; it is not reproduced.)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from physforecast.layers import ResBlock

__all__ = [
    "SAMPLERS",
    "DENOISERS",
    "timestep_embedding",
    "LatentDenoiser",
    "DiTLatentDenoiser",
    "DiffusionProcess",
]

#: The ``stpad.sampler`` choices.
SAMPLERS = ("ddpm", "ddim", "flow")
#: The ``stpad.denoiser`` choices: this module's convolutional network, or the DiT of
#: :mod:`physforecast.generative.dit` behind :class:`DiTLatentDenoiser`.
DENOISERS = ("conv", "dit")

#: ``model_fn(x_t (B, ...), t (B,) in [0, 1]) -> prediction (B, ...)``
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def timestep_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Sinusoidal embedding ``(B, dim)`` of diffusion times ``t`` (B,) in [0, 1]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / max(half, 1))
    angles = scale * t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return F.pad(emb, (0, dim % 2))


class LatentDenoiser(nn.Module):
    """Noise / velocity prediction on latent blocks, conditioned on history and parameters.

    Parameters
    ----------
    in_steps, out_steps, dim : int
        ``T_in``, ``T_out`` and the latent dimension ``D``.
    cond_dim : int
        Parameters ``P``; 0 builds an unconditioned denoiser (the ablation).
    hidden, depth, emb_dim : int
        Feature channels, residual blocks and embedding size.
    padding_mode : str
        ``circular`` on periodic domains.
    """

    def __init__(
        self,
        in_steps: int,
        out_steps: int,
        dim: int,
        *,
        cond_dim: int = 0,
        hidden: int = 64,
        depth: int = 3,
        emb_dim: int = 64,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        self.in_steps, self.out_steps, self.dim = int(in_steps), int(out_steps), int(dim)
        self.cond_dim, self.emb_dim = int(cond_dim), int(emb_dim)
        self.inp = nn.Conv2d(
            (in_steps + out_steps) * dim, hidden, 3, padding=1, padding_mode=padding_mode
        )
        self.time_mlp = nn.Sequential(
            nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.param_mlp = (
            nn.Sequential(nn.Linear(cond_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            if cond_dim
            else None
        )
        self.null = nn.Parameter(torch.zeros(emb_dim))
        self.blocks = nn.ModuleList(
            ResBlock(hidden, hidden, emb_dim, padding_mode=padding_mode) for _ in range(depth)
        )
        self.out = nn.Conv2d(hidden, out_steps * dim, 3, padding=1, padding_mode=padding_mode)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def embedding(
        self, t: torch.Tensor, params: torch.Tensor | None, drop: torch.Tensor | None
    ) -> torch.Tensor:
        """Time + parameter embedding ``(B, emb_dim)``; dropped rows use the null embedding."""
        emb = self.time_mlp(timestep_embedding(t, self.emb_dim))
        if self.param_mlp is None or params is None:
            return emb + self.null
        p = self.param_mlp(params.to(emb.dtype))
        if drop is not None:
            p = torch.where(drop.reshape(-1, 1).bool(), self.null.expand_as(p), p)
        return emb + p

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        history: torch.Tensor,
        params: torch.Tensor | None = None,
        drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Prediction ``(B, T_out, D, h, w)``.

        Parameters
        ----------
        x_t : Tensor
            Noisy latent block ``(B, T_out, D, h, w)``.
        t : Tensor
            Diffusion times ``(B,)`` in [0, 1].
        history : Tensor
            History latents ``(B, T_in, D, h, w)``.
        params : Tensor, optional
            Normalized physical parameters ``(B, P)``.
        drop : Tensor, optional
            ``(B,)`` bool: use the null parameter embedding for these rows.
        """
        b, _, d, h, w = x_t.shape
        inp = torch.cat([x_t, history.to(x_t.dtype)], 1).reshape(b, -1, h, w)
        emb = self.embedding(t, params, drop)
        z = self.inp(inp)
        for block in self.blocks:
            z = block(z, emb)
        return self.out(z).reshape(b, self.out_steps, d, h, w)


class DiTLatentDenoiser(nn.Module):
    """:class:`~physforecast.generative.dit.DiTDenoiser` with :class:`LatentDenoiser`'s call.

    The latent block ``(B, T_out, D, h, w)`` is the DiT's clip ``(B, D, T_out, h, w)``, the
    history latents its history condition (``D * T_in`` channels), ``1000 t`` its
    timestep, ``drop`` its ``drop_params``. ``h`` and ``w`` must be even (2x2 patches).

    Parameters
    ----------
    in_steps, out_steps, dim, cond_dim : int
        As :class:`LatentDenoiser`.
    hidden, depth, heads : int
        Token width, blocks (long skips when even) and attention heads of the DiT.
    """

    def __init__(
        self,
        in_steps: int,
        out_steps: int,
        dim: int,
        *,
        cond_dim: int = 0,
        hidden: int = 64,
        depth: int = 4,
        heads: int = 4,
    ) -> None:
        super().__init__()
        from physforecast.generative.dit import DiTDenoiser

        self.in_steps, self.out_steps, self.dim = int(in_steps), int(out_steps), int(dim)
        self.cond_dim = int(cond_dim)
        self.dit = DiTDenoiser(
            dim,
            cond_dim=cond_dim,
            history_channels=dim * in_steps,
            hidden=hidden,
            depth=depth,
            heads=heads,
            long_skip=depth % 2 == 0,
        )

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        history: torch.Tensor,
        params: torch.Tensor | None = None,
        drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Prediction ``(B, T_out, D, h, w)``; arguments as :meth:`LatentDenoiser.forward`."""
        kw = {}
        if self.cond_dim and params is not None:
            kw["params"] = params
            if drop is not None:
                kw["drop_params"] = drop.bool()
        out = self.dit(x_t.movedim(1, 2), 1000.0 * t.float(), history=history.movedim(1, 2), **kw)
        return out.movedim(2, 1)


class DiffusionProcess(nn.Module):
    """The noise schedule, the training objective and the sampler of one ``kind``.

    Parameters
    ----------
    kind : {"ddpm", "ddim", "flow"}
        The training objective and sampler (``ddpm`` and ``ddim`` train alike).
    train_steps : int
        Discrete diffusion steps of the DDPM schedule.
    sample_steps : int
        Steps of the sampler.
    """

    alpha_bar: torch.Tensor

    def __init__(self, kind: str = "ddim", train_steps: int = 100, sample_steps: int = 20) -> None:
        super().__init__()
        if kind not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}; got {kind!r}")
        if train_steps < 2 or not 1 <= sample_steps <= train_steps:
            raise ValueError(
                f"need train_steps >= 2 and 1 <= sample_steps <= train_steps; got "
                f"{train_steps}, {sample_steps}"
            )
        self.kind, self.train_steps, self.sample_steps = kind, int(train_steps), int(sample_steps)
        s = 0.008
        steps = torch.arange(train_steps + 1, dtype=torch.float64) / train_steps
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        abar = f / f[0]
        betas = (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
        self.register_buffer("alpha_bar", torch.cumprod(1 - betas, 0).float(), persistent=False)

    @property
    def noise_draws(self) -> int:
        """Noise tensors one sample uses: the start, plus one per step for DDPM."""
        return 1 + (self.sample_steps if self.kind == "ddpm" else 0)

    # -- training --------------------------------------------------------------------
    def loss(
        self, model_fn: ModelFn, x0: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The denoising (or flow-matching) MSE of one batch of clean latents ``x0`` (B, ...).

        Times and noise come from the global random state. ``weight`` (B,) weighs samples.
        """
        b = x0.shape[0]
        noise = torch.randn_like(x0)
        shape = (b,) + (1,) * (x0.ndim - 1)
        if self.kind == "flow":
            t = torch.rand(b, device=x0.device)
            tt = t.reshape(shape)
            x_t = (1 - tt) * x0 + tt * noise
            target = noise - x0
        else:
            i = torch.randint(self.train_steps, (b,), device=x0.device)
            abar = self.alpha_bar.to(x0.device)[i].reshape(shape)
            x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
            target = noise
            t = i.float() / self.train_steps
        err = (model_fn(x_t, t) - target).pow(2).flatten(1).mean(1)
        return (
            (err * weight).sum() / weight.sum().clamp_min(1e-12)
            if weight is not None
            else err.mean()
        )

    # -- sampling --------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, model_fn: ModelFn, noise: torch.Tensor) -> torch.Tensor:
        """Clean samples ``(B, ...)`` from the noise ``(noise_draws, B, ...)``.

        ``noise[0]`` is the starting point; DDPM draws ``noise[1:]`` at its steps. The
        result is a deterministic function of ``noise`` (and the model).
        """
        if noise.shape[0] != self.noise_draws:
            raise ValueError(
                f"{self.kind} needs {self.noise_draws} noise tensors; got {noise.shape[0]}"
            )
        x = noise[0]
        b = x.shape[0]
        if self.kind == "flow":
            ts = torch.linspace(1.0, 0.0, self.sample_steps + 1, device=x.device)
            for k in range(self.sample_steps):
                t = ts[k].expand(b)
                x = x + (ts[k + 1] - ts[k]) * model_fn(x, t)
            return x
        eta = 1.0 if self.kind == "ddpm" else 0.0
        abar = self.alpha_bar.to(x.device)
        steps = torch.linspace(self.train_steps - 1, 0, self.sample_steps).round().long().tolist()
        for k, i in enumerate(steps):
            a_t = abar[i]
            a_prev = abar[steps[k + 1]] if k + 1 < len(steps) else torch.ones((), device=x.device)
            eps = model_fn(x, torch.full((b,), i / self.train_steps, device=x.device))
            x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp_min(0).sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp_min(0).sqrt() * eps
            if eta > 0 and k + 1 < len(steps):
                x = x + sigma * noise[1 + k]
        return x
