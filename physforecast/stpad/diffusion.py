"""ST-PAD's downstream stage: a parameter-conditioned denoiser in the upstream latent space,
trained and sampled as DDPM / DDIM or as flow matching.

:class:`LatentDenoiser` predicts the noise (DDPM/DDIM) or the velocity (flow matching) of
a future latent block ``(B, T_out, D, h, w)`` from its noisy version, the diffusion time,
the history latents ``(B, T_in, D, h, w)`` (concatenated as channels) and an embedding
of the physical parameters ``(B, P)``, added to the time embedding and injected by FiLM
into every residual block. Dropping the condition (``drop``) replaces the parameter
embedding by a learned null embedding, which trains the unconditional model that
classifier-free guidance needs.

:class:`DiffusionProcess` is the objective and the sampler of ``stpad.sampler``, a thin
adapter over :mod:`physforecast.generative`'s processes (diffusers' schedulers):

- ``ddpm`` / ``ddim``: :class:`~physforecast.generative.diffusion.DDPM` with a cosine
  ``alpha_bar`` schedule (Nichol & Dhariwal 2021; diffusers' ``squaredcos_cap_v2``) of
  ``train_steps`` steps, epsilon prediction, and ``sample_steps`` ``trailing`` steps of
  diffusers' DDIM update (Song et al. 2021) with ``eta = 1`` (ancestral DDPM sampling,
  the DDPM posterior step) or ``eta = 0`` (deterministic DDIM);
- ``flow``: :class:`~physforecast.generative.flow.FlowMatching`, rectified flow / flow
  matching (Lipman et al. 2023, Liu et al. 2023), ``x_t = (1 - t) x_0 + t eps``, velocity
  target ``eps - x_0``, Euler steps of diffusers' ``FlowMatchEulerDiscreteScheduler``
  from ``t = 1`` to ``0``.

Every random number of a sample is in the noise it is given (DDPM's per-step noise
included), so the beams of one search share them.

(The authors' sketch uses ``z <- (z - beta_t eps) / (1 - beta_t)``, which is none of
these; it is not reproduced.)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from physforecast.generative import DDPM, FlowMatching
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
    """ST-PAD's ``stpad.sampler`` over :mod:`physforecast.generative`'s diffusers processes.

    A thin adapter: training examples come from the process's ``corrupt`` and sampling
    from its ``sample`` (diffusers' schedulers); this class keeps ST-PAD's conventions,
    a ``model_fn(x_t, t)`` with ``t`` in [0, 1] (the diffusers timestep divided by
    ``num_train_timesteps``) and all the sampler's randomness in the ``noise`` it is given.

    Parameters
    ----------
    kind : {"ddpm", "ddim", "flow"}
        ``ddpm`` and ``ddim``: :class:`~physforecast.generative.diffusion.DDPM` with the cosine
        schedule (diffusers' ``squaredcos_cap_v2``) of ``train_steps`` steps, epsilon
        prediction and ``trailing`` step spacing; ``ddim`` samples with DDIM at
        ``eta = 0``, ``ddpm`` ancestrally (DDIM at ``eta = 1``, the DDPM posterior step)
        with the per-step noise taken from ``noise``. ``flow``:
        :class:`~physforecast.generative.flow.FlowMatching` (uniform times, no shift), Euler
        steps of diffusers' ``FlowMatchEulerDiscreteScheduler``.
    train_steps : int
        Discrete diffusion steps of the DDPM schedule (unused by ``flow``).
    sample_steps : int
        Steps of the sampler.
    """

    alpha_bar: torch.Tensor | None

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
        self.generative: FlowMatching | DDPM
        if kind == "flow":
            self.generative = FlowMatching()
            abar = None
        else:
            self.generative = DDPM(
                self.train_steps,
                beta_schedule="squaredcos_cap_v2",
                prediction_type="epsilon",
                timestep_spacing="trailing",
            )
            abar = self.generative.scheduler("ddim").alphas_cumprod.float()
        #: (train_steps,) the DDPM schedule's ``alpha_bar`` (None for ``flow``).
        self.register_buffer("alpha_bar", abar, persistent=False)

    @property
    def noise_draws(self) -> int:
        """Noise tensors one sample uses: the start, plus one per step for DDPM."""
        return 1 + (self.sample_steps if self.kind == "ddpm" else 0)

    def _unit_time(self, timestep: torch.Tensor) -> torch.Tensor:
        """diffusers' timestep (B,) -> ST-PAD's diffusion time (B,) in [0, 1]."""
        return timestep.float() / self.generative.num_train_timesteps

    # -- training --------------------------------------------------------------------
    def loss(
        self, model_fn: ModelFn, x0: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The denoising (or flow-matching) MSE of one batch of clean latents ``x0`` (B, ...).

        Times and noise come from the global random state (the process's ``corrupt``).
        ``weight`` (B,) weighs samples.
        """
        x_t, timestep, target = self.generative.corrupt(x0)
        pred = model_fn(x_t, self._unit_time(timestep))
        err = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
        return (
            (err * weight).sum() / weight.sum().clamp_min(1e-12)
            if weight is not None
            else err.mean()
        )

    # -- sampling --------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, model_fn: ModelFn, noise: torch.Tensor) -> torch.Tensor:
        """Clean samples ``(B, ...)`` from the noise ``(noise_draws, B, ...)``.

        ``noise[0]`` is the starting point; DDPM adds ``noise[1 + k]`` at step ``k``. The
        result is a deterministic function of ``noise`` (and the model): no generator or
        global random state is read, which the beam search relies on.
        """
        if noise.shape[0] != self.noise_draws:
            raise ValueError(
                f"{self.kind} needs {self.noise_draws} noise tensors; got {noise.shape[0]}"
            )

        def model(x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            return model_fn(x, self._unit_time(timestep))

        if self.kind == "flow":
            return self.generative.sample(model, noise[0], steps=self.sample_steps)
        return self.generative.sample(
            model,
            noise[0],
            steps=self.sample_steps,
            sampler=self.kind,
            step_noise=noise[1:] if self.kind == "ddpm" else None,
        )
