"""The trained ST-PAD model: upstream VQ model + latent diffusion, forecasting ensembles.

:class:`STPADModel` behaves like a backbone for the evaluation code (``forward(x, cond)``
maps ``(B, T_in, C, H, W)`` to ``(B, T_out, C, H, W)``: the ensemble mean) and adds
:meth:`STPADModel.sample`, the ensemble ``(B, M, T_out, C, H, W)``. A forecast is made in
blocks of ``block`` lead times: the last ``T_in`` frames are encoded and quantized, the
denoiser samples the next block's latents (classifier-free guided by the physical
parameters), the samples are snapped to the code bank and decoded. Without a score the
``M`` members are independent chains; with one (``stpad.scores``) every block is a step
of :func:`~physforecast.search.beam.beam_search`: each of ``W`` beams is expanded into
``K`` diffusion samples, the registered reference-free scores rank them, ``W`` are kept,
and the members are the best ``M`` beams.

Random numbers: the noise of block ``s`` comes from a generator seeded by
``(seed, calls, s)`` (``calls`` counts forecasts since :meth:`STPADModel.reseed`) and is
shared by every beam of a sample, so a candidate is a function of its beam's frames, its
index ``k`` and the block alone. Forecasts are reproducible, and the beam search with
``W >= K**(steps - 1)`` is an exhaustive search.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from physforecast.beamvq.context import PhysicsContext
from physforecast.search.beam import BeamResult, beam_search
from physforecast.search.scores import ScoreCombination

from .diffusion import DiffusionProcess, DiTLatentDenoiser, LatentDenoiser
from .physics import PhysicsConstraints
from .upstream import STPADUpstream

__all__ = ["STPADModel"]

ScoreFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


class STPADModel(nn.Module):
    """Upstream VQ model, latent denoiser, physics and the sampling settings.

    Parameters
    ----------
    upstream : STPADUpstream
        Encoder, code bank, propagator, decoder.
    denoiser : LatentDenoiser or DiTLatentDenoiser
        Predicts noise / velocity of a block of ``block`` latent frames.
    process : DiffusionProcess
        Schedule, objective and sampler.
    constraints : PhysicsConstraints
        The physics of the run (loss of the upstream stage).
    context : PhysicsContext
        Builds the score context of the beam search.
    members : int
        Ensemble members ``M`` of :meth:`sample` (and of the mean ``forward`` returns).
    guidance : float
        Classifier-free guidance scale ``g``: ``eps_u + g (eps_c - eps_u)``; 1 is the
        conditional model alone.
    condition : bool
        Whether the denoiser sees the parameters (False: the ablation).
    score : ScoreCombination, optional
        Reference-free ranking of the beam search; None: independent members.
    candidates, width : int
        ``K`` diffusion samples per beam and block, beam width ``W``.
    cond_drop : float
        Probability of dropping the parameters in training (for guidance).
    seed : int
        Seed of the sampling noise.
    """

    #: Forecasts are random draws: ensembles are meaningful.
    stochastic = True

    latent_std: torch.Tensor

    def __init__(
        self,
        upstream: STPADUpstream,
        denoiser: LatentDenoiser | DiTLatentDenoiser,
        process: DiffusionProcess,
        constraints: PhysicsConstraints,
        context: PhysicsContext,
        *,
        members: int = 4,
        guidance: float = 1.0,
        condition: bool = True,
        score: ScoreCombination | None = None,
        candidates: int = 4,
        width: int = 2,
        cond_drop: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if members < 1 or candidates < 1 or width < 1:
            raise ValueError(
                f"members, candidates and width must be >= 1; got {members}, {candidates}, {width}"
            )
        if upstream.out_steps % denoiser.out_steps:
            raise ValueError(
                f"the block ({denoiser.out_steps} lead times) must divide T_out={upstream.out_steps}"
            )
        self.upstream, self.denoiser, self.process = upstream, denoiser, process
        self.constraints, self.context_fn = constraints, context
        self.members, self.guidance, self.condition = int(members), float(guidance), bool(condition)
        self.score, self.candidates, self.width = score, int(candidates), int(width)
        if not 0 <= cond_drop < 1:
            raise ValueError(f"cond_drop must be in [0, 1); got {cond_drop}")
        self.cond_drop = float(cond_drop)
        self.seed = int(seed)
        self.calls = 0
        self.register_buffer("latent_std", torch.ones(()))

    # -- backbone-like attributes ------------------------------------------------------
    @property
    def in_steps(self) -> int:
        return self.upstream.in_steps

    @property
    def out_steps(self) -> int:
        return self.upstream.out_steps

    @property
    def in_channels(self) -> int:
        return self.upstream.in_channels

    @property
    def cond_dim(self) -> int:
        """Parameters ``P`` the model reads (for the physics even when not conditioned)."""
        return int(self.constraints.param_mean.numel())

    @property
    def block(self) -> int:
        """Lead times one diffusion sample covers."""
        return self.denoiser.out_steps

    def reseed(self, seed: int | None = None) -> None:
        """Restart the sampling noise (as after loading), optionally with another seed."""
        if seed is not None:
            self.seed = int(seed)
        self.calls = 0

    # -- latents -----------------------------------------------------------------------
    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """Frames ``(B, T, C, H, W)`` -> quantized latents divided by ``latent_std``;
        the code bank is not updated."""
        q, _, _ = self.upstream.quantize(self.upstream.encode(x), update=False)
        return q / self.latent_std

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``(B, T, D, h, w)`` -> snapped to the code bank and decoded
        frames ``(B, T, C, H, W)``."""
        q, _, _ = self.upstream.quantize(z * self.latent_std, update=False)
        return self.upstream.decode(q)

    def denoise_fn(
        self, history: torch.Tensor, params: torch.Tensor | None
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The guided ``model_fn(x_t, t)`` of the sampler for latent ``history``."""
        params = params if self.condition else None
        g = self.guidance
        den = self.denoiser

        def fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if params is None or g == 1.0:
                return den(x_t, t, history, params)
            b = x_t.shape[0]
            drop = torch.cat([torch.zeros(b), torch.ones(b)]).bool().to(x_t.device)
            both = den(
                torch.cat([x_t, x_t]),
                torch.cat([t, t]),
                torch.cat([history, history]),
                torch.cat([params, params]),
                drop,
            )
            cond, uncond = both[:b], both[b:]
            return uncond + g * (cond - uncond)

        return fn

    def block_noise(self, step: int, batch: int, k: int, like: torch.Tensor) -> torch.Tensor:
        """Noise ``(draws, batch, k, block, D, h, w)`` of block ``step`` of this forecast
        (``like``: the history frames ``(B, T_in, C, H, W)``)."""
        f = 2**self.upstream.down
        lat_shape = (self.block, self.upstream.dim, like.shape[-2] // f, like.shape[-1] // f)
        gen = torch.Generator().manual_seed(
            (self.seed * 1_000_003 + self.calls * 10_007 + step) % (2**63)
        )
        noise = torch.randn((self.process.noise_draws, batch, k, *lat_shape), generator=gen)
        return noise.to(device=like.device, dtype=like.dtype)

    @torch.no_grad()
    def sample_block(
        self, x: torch.Tensor, cond: torch.Tensor | None, noise: torch.Tensor
    ) -> torch.Tensor:
        """One block ``(N, block, C, H, W)`` from history frames ``x`` (N, T_in, C, H, W)
        and the sampler's noise ``(draws, N, block, D, h, w)``."""
        history = self.latents(x[:, -self.in_steps :])
        z = self.process.sample(self.denoise_fn(history, cond), noise)
        return self.decode_latents(z)

    @torch.no_grad()
    def expand(
        self, seq: torch.Tensor, cond: torch.Tensor | None, rows: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """``K`` candidate blocks ``(N, K, block, C, H, W)`` of sequences ``seq`` (N, L, C, H, W).

        ``rows`` (N,) names the batch element of each sequence; its noise
        ``noise[:, rows[n]]`` ``(draws, K, ...)`` is shared by the sequences of one element.
        """
        n, k = seq.shape[0], noise.shape[2]
        x = seq[:, -self.in_steps :].repeat_interleave(k, 0)
        c = None if cond is None else cond[rows].repeat_interleave(k, 0)
        eps = noise[:, rows].flatten(1, 2)  # (draws, N * K, ...)
        out = self.sample_block(x, c, eps)
        return out.reshape(n, k, *out.shape[1:])

    # -- forecasts ---------------------------------------------------------------------
    @torch.no_grad()
    def search(
        self,
        x: torch.Tensor,
        cond: torch.Tensor | None = None,
        *,
        horizon: int | None = None,
        score_fn: ScoreFn | None = None,
        width: int | None = None,
        candidates: int | None = None,
    ) -> BeamResult:
        """Beam search over diffusion samples for ``horizon`` lead times (default ``T_out``).

        Parameters
        ----------
        x : Tensor
            History ``(B, T_in, C, H, W)`` in model units.
        cond : Tensor, optional
            Normalized parameters ``(B, P)``.
        horizon : int, optional
            A multiple of :attr:`block`.
        score_fn : callable, optional
            ``score_fn(seq, blocks (N, K, block, C, H, W), step) -> (N, K)``; default the
            model's :class:`ScoreCombination` with the physics of the run.
        width, candidates : int, optional
            ``W`` and ``K`` (default the model's).
        """
        horizon = int(horizon or self.out_steps)
        if horizon % self.block:
            raise ValueError(f"horizon {horizon} must be a multiple of the block {self.block}")
        width, k = int(width or self.width), int(candidates or self.candidates)
        bsz = x.shape[0]
        if score_fn is None:
            if self.score is None:
                raise ValueError("STPADModel.search needs a score (stpad.scores)")
            score_fn = self._physics_score(cond, bsz)
        noises: dict[int, torch.Tensor] = {}

        def rows(n: int) -> torch.Tensor:
            return torch.arange(bsz, device=x.device).repeat_interleave(n // bsz)

        def step_fn(seq: torch.Tensor, step: int) -> torch.Tensor:
            if step not in noises:
                noises[step] = self.block_noise(step, bsz, k, x)
            return self.expand(seq, cond, rows(seq.shape[0]), noises[step])

        result = beam_search(step_fn, score_fn, x, width, horizon // self.block)
        self.calls += 1
        return result

    def _physics_score(self, cond: torch.Tensor | None, bsz: int) -> ScoreFn:
        score = self.score
        assert score is not None

        def fn(seq: torch.Tensor, blocks: torch.Tensor, step: int) -> torch.Tensor:
            r = torch.arange(bsz, device=seq.device).repeat_interleave(seq.shape[0] // bsz)
            ctx = self.context_fn(seq[:, -self.in_steps :], None if cond is None else cond[r])
            return score(blocks, ctx)

        return fn

    @torch.no_grad()
    def sample(
        self,
        x: torch.Tensor,
        cond: torch.Tensor | None = None,
        *,
        members: int | None = None,
        horizon: int | None = None,
    ) -> torch.Tensor:
        """An ensemble ``(B, M, horizon, C, H, W)`` (default ``M = members``, ``T_out``).

        With a score: the best ``M`` beams of :meth:`search` (``M <= W``); without,
        ``M`` independent chains of blocks.
        """
        m = int(members or self.members)
        horizon = int(horizon or self.out_steps)
        if self.score is not None:
            width = max(self.width, m)
            return self.search(x, cond, horizon=horizon, width=width).sequences[:, :m]
        if horizon % self.block:
            raise ValueError(f"horizon {horizon} must be a multiple of the block {self.block}")
        bsz = x.shape[0]
        seq = x.repeat_interleave(m, 0)  # chain (b, j) at row b * m + j
        c = None if cond is None else cond.repeat_interleave(m, 0)
        out = []
        for step in range(horizon // self.block):
            noise = self.block_noise(step, bsz, m, x).flatten(1, 2)  # (draws, B * M, ...)
            blk = self.sample_block(seq, c, noise)
            out.append(blk)
            seq = torch.cat([seq, blk], 1)[:, -self.in_steps :]
        self.calls += 1
        y = torch.cat(out, 1)
        return y.reshape(bsz, m, *y.shape[1:])

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor | None = None, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The ensemble mean ``(B, T_out, C, H, W)`` (one member when ``members == 1``).

        With ``target`` (B, >= block, C, H, W) the denoiser's training loss instead (a
        scalar, through ``forward`` so that a DDP wrapper sees it): the latents of ``x``
        and of the target's first block (no gradient to the upstream model), parameters
        dropped with probability ``cond_drop``, times and noise from the global random
        state.
        """
        if target is None:
            return self.sample(x, cond).mean(1)
        with torch.no_grad():
            history = self.latents(x)
            future = self.latents(target[:, : self.block])
        params = cond if self.condition else None
        drop = None
        if params is not None:
            drop = torch.rand(x.shape[0], device=x.device) < self.cond_drop
        return self.process.loss(
            lambda x_t, t: self.denoiser(x_t, t, history, params, drop), future
        )

    def extra_repr(self) -> str:
        search = f"beam W={self.width} K={self.candidates}" if self.score is not None else "none"
        return (
            f"members={self.members}, sampler={self.process.kind}, guidance={self.guidance}, "
            f"condition={self.condition}, block={self.block}, search={search}"
        )

    def settings(self) -> dict[str, Any]:
        """The sampling settings, for reports."""
        return {
            "members": self.members,
            "sampler": self.process.kind,
            "sample_steps": self.process.sample_steps,
            "guidance": self.guidance,
            "condition": self.condition,
            "block": self.block,
            "width": self.width if self.score is not None else None,
            "candidates": self.candidates if self.score is not None else None,
        }
