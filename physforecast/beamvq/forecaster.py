"""A backbone + top-K VQ head that forecasts by beam search and self-ensemble.

:class:`BeamVQForecaster` behaves like a backbone (``forward(x, cond)`` maps
(B, T_in, C, H, W) to (B, T_out, C, H, W)) so that evaluation code scores it like any
model. Its forecast is a beam search over the head's candidates, in blocks of
``block`` lead times (an autoregressive rollout: each block's context is the last
``T_in`` frames of history + chosen blocks; a last, shorter block takes the remainder),
so ``K**N`` paths over ``N`` blocks are pruned to the ``W`` best after every block. Beams
are ranked by a reference-free :class:`~physforecast.search.scores.ScoreCombination`
whose per-term scales live in the model's buffers (``score_scales``: the level of each
term on the training truth; ``score_active``: the terms this data supports), so a
reloaded checkpoint ranks exactly as the trained model did. The forecast is the mean of
the top-``ensemble`` beams.

Without a usable score it averages the ``ensemble`` nearest-code candidates (candidate
order is code distance), which is the top-1 forecast for ``ensemble == 1``;
:attr:`BeamVQForecaster.inference_score` is then None, and BeamVQ's evaluation report
says so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from physforecast.search.beam import BeamResult, beam_search, self_ensemble
from physforecast.search.scores import ScoreCombination, ScoreContext

from .head import TopKVQHead

__all__ = ["BeamVQForecaster", "ContextFn", "block_lengths"]

ContextFn = Callable[[torch.Tensor, torch.Tensor | None], ScoreContext]


def _default_context(history: torch.Tensor, cond: torch.Tensor | None) -> ScoreContext:
    return ScoreContext(history=history)


def block_lengths(horizon: int, block: int) -> list[int]:
    """Lead times of each beam-search step: ``block`` each, the remainder last.

    >>> block_lengths(10, 4)
    [4, 4, 2]
    """
    if block < 1 or horizon < 1:
        raise ValueError(f"block and horizon must be >= 1; got {block}, {horizon}")
    full, rest = divmod(horizon, block)
    return [block] * full + ([rest] if rest else [])


class BeamVQForecaster(nn.Module):
    """Beam-searched, self-ensembled forecasts from a :class:`TopKVQHead`.

    Parameters
    ----------
    head : TopKVQHead
        The trained head (it holds the backbone).
    top_k : int
        Candidates per expansion ``K``.
    width : int
        Beam width ``W``.
    ensemble : int
        Members ``m`` of the self-ensemble (the best ``m`` beams); clipped to ``W``.
    temperature : float
        Candidate sampling temperature (0: the K nearest codes).
    block : int, optional
        Lead times per beam-search step, in ``[1, T_out]``; a remainder becomes a shorter
        last block. Default ``T_out`` (one step).
    score : ScoreCombination, optional
        Reference-free penalty used to rank beams at inference. Its terms' scales are
        copied into the ``score_scales`` buffer (see :meth:`set_score_scales`).
    context_fn : callable, optional
        ``context_fn(history (N,T_in,C,H,W), cond (N,P) or None) -> ScoreContext``: the
        physics and units the score needs (built by the pipeline from the dataset).
    seed : int
        Seed of the candidate sampling (forecasts are reproducible).
    critic : nn.Module, optional
        A :class:`~physforecast.search.critic.ContextCritic` over blocks of ``block``
        frames, given to the scores as ``ScoreContext.critic`` (the ``critic`` term).
    """

    score_scales: torch.Tensor
    score_active: torch.Tensor

    def __init__(
        self,
        head: TopKVQHead,
        *,
        top_k: int = 10,
        width: int = 3,
        ensemble: int = 1,
        temperature: float = 0.0,
        block: int | None = None,
        score: ScoreCombination | None = None,
        context_fn: ContextFn | None = None,
        seed: int = 0,
        critic: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.head = head
        bb = head.backbone
        self.in_steps, self.out_steps = int(bb.in_steps), int(bb.out_steps)
        self.in_channels, self.out_channels = int(bb.in_channels), int(bb.out_channels)
        self.cond_dim = int(getattr(bb, "cond_dim", 0))
        self.top_k, self.width, self.ensemble = int(top_k), int(width), int(ensemble)
        self.temperature = float(temperature)
        self.block = int(block or self.out_steps)
        if self.block < 1 or self.block > self.out_steps:
            raise ValueError(f"block must be in [1, T_out={self.out_steps}]; got {self.block}")
        self.score = score
        self.score_names = list(score.weights) if score is not None else []
        scales = [score.scales[n] for n in self.score_names] if score is not None else []
        self.register_buffer("score_scales", torch.tensor(scales, dtype=torch.float32))
        self.register_buffer("score_active", torch.ones(len(scales), dtype=torch.bool))
        self.context_fn = context_fn or _default_context
        self.seed = int(seed)
        self.critic = critic

    @property
    def backbone(self) -> nn.Module:
        return self.head.backbone

    # -- the inference score ----------------------------------------------------------
    @property
    def inference_score(self) -> ScoreCombination | None:
        """The reference-free ranking: the active terms of ``score`` with the buffered scales."""
        if self.score is None:
            return None
        active = [n for n, a in zip(self.score_names, self.score_active.tolist()) if a]
        if not active:
            return None
        scales = dict(zip(self.score_names, self.score_scales.tolist(), strict=True))
        return ScoreCombination(
            {n: self.score.weights[n] for n in active},
            {n: scales[n] for n in active},
            relative=self.score.relative,
        )

    @torch.no_grad()
    def set_score_scales(self, scales: dict[str, float]) -> None:
        """Store the scale of each score term (e.g. its level on the training truth)."""
        for i, name in enumerate(self.score_names):
            if name in scales:
                self.score_scales[i] = float(scales[name])

    @torch.no_grad()
    def deactivate_scores(self, names: list[str]) -> None:
        """Leave out score terms this data cannot compute (e.g. no vorticity variable)."""
        for i, name in enumerate(self.score_names):
            if name in names:
                self.score_active[i] = False

    @contextlib.contextmanager
    def _frozen_bank(self):
        """Run the head in eval mode: inference never updates the code bank."""
        was_training = self.head.training
        self.head.eval()
        try:
            yield
        finally:
            self.head.train(was_training)

    def _generator(self, x: torch.Tensor) -> torch.Generator | None:
        if self.temperature <= 0:
            return None
        return torch.Generator(device=x.device).manual_seed(self.seed)

    def candidates(
        self, x: torch.Tensor, cond: torch.Tensor | None = None, k: int | None = None
    ) -> torch.Tensor:
        """K candidate forecasts ``(B, K, T_out, C, H, W)`` (candidate 0 = top-1)."""
        with self._frozen_bank():
            out = self.head(
                x,
                cond,
                k=k or self.top_k,
                temperature=self.temperature,
                generator=self._generator(x),
            )
        return out.candidates

    def critic_penalty(self, history: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        """The critic's penalty ``(N, K)`` of candidate blocks ``(N, K, L, C, H, W)``.

        A block shorter than the critic's ``steps`` is padded with its last frame.
        """
        if self.critic is None:
            raise ValueError("this BeamVQForecaster has no critic")
        steps = self.critic.steps
        if blocks.shape[2] < steps:
            pad = blocks[:, :, -1:].expand(-1, -1, steps - blocks.shape[2], -1, -1, -1)
            blocks = torch.cat([blocks, pad], 2)
        return self.critic(history, blocks[:, :, :steps])

    def search(
        self,
        x: torch.Tensor,
        cond: torch.Tensor | None = None,
        *,
        horizon: int | None = None,
        score: ScoreCombination | None = None,
        target: torch.Tensor | None = None,
        width: int | None = None,
        block: int | None = None,
        top_k: int | None = None,
    ) -> BeamResult:
        """Beam search over ``horizon`` lead times (default ``T_out``) in blocks of ``block``.

        Parameters
        ----------
        x : Tensor
            History ``(B, T_in, C, H, W)``.
        cond : Tensor, optional
            Physical parameters ``(B, P)``.
        horizon : int, optional
            Lead times to generate; the last block takes the remainder of ``block``.
        score : ScoreCombination, optional
            Penalty to rank by (default: :attr:`inference_score`). A reference score
            needs ``target``.
        target : Tensor, optional
            Truth ``(B, horizon, C, H, W)`` for reference scores (an oracle beam).
        width, block, top_k : int, optional
            Beam width, block length and candidates per expansion (default: the
            forecaster's).
        """
        score = score or self.inference_score
        if score is None:
            raise ValueError("BeamVQForecaster.search needs a score (ScoreCombination)")
        horizon = int(horizon or self.out_steps)
        lengths = block_lengths(horizon, int(block or self.block))
        if max(lengths) > self.out_steps:
            raise ValueError(f"block must be <= T_out={self.out_steps}; got {max(lengths)}")
        starts = [sum(lengths[:i]) for i in range(len(lengths))]
        if score.reference and (target is None or target.shape[1] < horizon):
            raise ValueError(
                f"score {sorted(score.weights)} compares with the truth; pass target with "
                f">= {horizon} lead times"
            )
        bsz, t_in, k = x.shape[0], self.in_steps, int(top_k or self.top_k)
        gen = self._generator(x)
        critic = self.critic_penalty if self.critic is not None else None

        def rows(n: int) -> torch.Tensor:
            return torch.arange(bsz, device=x.device).repeat_interleave(n // bsz)

        def step_fn(seq: torch.Tensor, step: int) -> torch.Tensor:
            c = None if cond is None else cond[rows(seq.shape[0])]
            out = self.head(seq[:, -t_in:], c, k=k, temperature=self.temperature, generator=gen)
            return out.candidates[:, :, : lengths[step]]

        def score_fn(seq: torch.Tensor, blocks: torch.Tensor, step: int) -> torch.Tensor:
            r = rows(seq.shape[0])
            ctx = self.context_fn(seq[:, -t_in:], None if cond is None else cond[r])
            ctx.observed = x[r]
            ctx.critic = critic
            if target is not None:
                ctx.target = target[r, starts[step] : starts[step] + lengths[step]]
            return score(blocks, ctx)

        with self._frozen_bank(), torch.no_grad():
            return beam_search(step_fn, score_fn, x, width or self.width, len(lengths))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The self-ensembled beam-search forecast ``(B, T_out, C, H, W)``."""
        if self.inference_score is None or self.top_k == 1:
            # no score to rank by: the candidates are in code-distance order
            m = min(self.ensemble, self.top_k)
            return self.candidates(x, cond, k=m)[:, :m].mean(1)
        result = self.search(x, cond)
        return self_ensemble(result, self.ensemble)

    def top1(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The head's nearest-code forecast ``(B, T_out, C, H, W)``."""
        with self._frozen_bank():
            return self.head(x, cond, k=1).candidates[:, 0]

    @torch.no_grad()
    def top1_blocks(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The head's nearest-code forecast rolled out in the beam's blocks ``(B, T_out, C, H, W)``
        (a beam of width 1 over K = 1: what the beam search adds to this is the search)."""
        seq = x
        with self._frozen_bank():
            for length in block_lengths(self.out_steps, self.block):
                nxt = self.head(seq[:, -self.in_steps :], cond, k=1).candidates[:, 0, :length]
                seq = torch.cat([seq, nxt], 1)
        return seq[:, self.in_steps :]

    def base(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The backbone's own forecast ``(B, T_out, C, H, W)``."""
        return self.head.backbone(x, cond)
