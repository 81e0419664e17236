"""A backbone + top-K VQ head that forecasts by beam search and self-ensemble.

:class:`BeamVQForecaster` behaves like a backbone (``forward(x, cond)`` maps
(B, T_in, C, H, W) to (B, T_out, C, H, W)) so that evaluation code scores it like any
model. Its forecast is a beam search over the head's candidates, in blocks of
``block`` lead times (an autoregressive rollout: each block's context is the last
``T_in`` frames of history + chosen blocks), ranked by a reference-free
:class:`~.scores.ScoreCombination`, and the mean of the top-``ensemble`` beams.

Without a score it averages the ``ensemble`` nearest-code candidates (candidate order
is code distance), which is the top-1 forecast for ``ensemble == 1``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from physforecast.search.beam import BeamResult, beam_search, self_ensemble
from physforecast.search.scores import ScoreCombination, ScoreContext

from .head import TopKVQHead

__all__ = ["BeamVQForecaster", "ContextFn"]

ContextFn = Callable[[torch.Tensor, torch.Tensor | None], ScoreContext]


def _default_context(history: torch.Tensor, cond: torch.Tensor | None) -> ScoreContext:
    return ScoreContext(history=history)


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
        Lead times per beam-search step; must divide ``T_out``. Default ``T_out`` (one step).
    score : ScoreCombination, optional
        Reference-free penalty used to rank beams at inference.
    context_fn : callable, optional
        ``context_fn(history (N,T_in,C,H,W), cond (N,P) or None) -> ScoreContext``: the
        physics and units the score needs (built by the pipeline from the dataset).
    seed : int
        Seed of the candidate sampling (forecasts are reproducible).
    """

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
        self.context_fn = context_fn or _default_context
        self.seed = int(seed)

    @property
    def backbone(self) -> nn.Module:
        return self.head.backbone

    @contextlib.contextmanager
    def _frozen_bank(self):
        """Run the head in eval mode: inference never updates the code bank."""
        was_training = self.head.training
        self.head.eval()
        try:
            yield
        finally:
            self.head.train(was_training)

    def candidates(
        self, x: torch.Tensor, cond: torch.Tensor | None = None, k: int | None = None
    ) -> torch.Tensor:
        """K candidate forecasts ``(B, K, T_out, C, H, W)`` (candidate 0 = top-1)."""
        gen = (
            torch.Generator(device=x.device).manual_seed(self.seed)
            if self.temperature > 0
            else None
        )
        with self._frozen_bank():
            out = self.head(x, cond, k=k or self.top_k, temperature=self.temperature, generator=gen)
        return out.candidates

    def search(
        self,
        x: torch.Tensor,
        cond: torch.Tensor | None = None,
        *,
        horizon: int | None = None,
        score: ScoreCombination | None = None,
        target: torch.Tensor | None = None,
        width: int | None = None,
    ) -> BeamResult:
        """Beam search over ``horizon`` lead times (default ``T_out``) in blocks of ``block``.

        Parameters
        ----------
        x : Tensor
            History ``(B, T_in, C, H, W)``.
        cond : Tensor, optional
            Physical parameters ``(B, P)``.
        horizon : int, optional
            Lead times to generate; a multiple of ``block``.
        score : ScoreCombination, optional
            Penalty to rank by (default: the forecaster's). A reference score needs ``target``.
        target : Tensor, optional
            Truth ``(B, horizon, C, H, W)`` for reference scores (pseudo-labelling).
        width : int, optional
            Beam width (default: the forecaster's).
        """
        score = score or self.score
        if score is None:
            raise ValueError("BeamVQForecaster.search needs a score (ScoreCombination)")
        horizon = int(horizon or self.out_steps)
        if horizon % self.block:
            raise ValueError(f"horizon {horizon} must be a multiple of block={self.block}")
        steps = horizon // self.block
        if score.reference and (target is None or target.shape[1] < horizon):
            raise ValueError(
                f"score {sorted(score.weights)} compares with the truth; pass target with "
                f">= {horizon} lead times"
            )
        bsz, t_in = x.shape[0], self.in_steps
        gen = (
            torch.Generator(device=x.device).manual_seed(self.seed)
            if self.temperature > 0
            else None
        )

        def rows(n: int) -> torch.Tensor:
            return torch.arange(bsz, device=x.device).repeat_interleave(n // bsz)

        def step_fn(seq: torch.Tensor, step: int) -> torch.Tensor:
            c = None if cond is None else cond[rows(seq.shape[0])]
            out = self.head(
                seq[:, -t_in:], c, k=self.top_k, temperature=self.temperature, generator=gen
            )
            return out.candidates[:, :, : self.block]

        def score_fn(seq: torch.Tensor, blocks: torch.Tensor, step: int) -> torch.Tensor:
            r = rows(seq.shape[0])
            ctx = self.context_fn(seq[:, -t_in:], None if cond is None else cond[r])
            if target is not None:
                tgt = target[r, step * self.block : (step + 1) * self.block]
                ctx.target = tgt
            return score(blocks, ctx)

        with self._frozen_bank(), torch.no_grad():
            return beam_search(step_fn, score_fn, x, width or self.width, steps)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The self-ensembled beam-search forecast ``(B, T_out, C, H, W)``."""
        if self.score is None or self.top_k == 1:
            # no score to rank by: the candidates are in code-distance order
            m = min(self.ensemble, self.top_k)
            return self.candidates(x, cond, k=m)[:, :m].mean(1)
        result = self.search(x, cond)
        return self_ensemble(result, self.ensemble)

    def top1(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The head's nearest-code forecast ``(B, T_out, C, H, W)``."""
        with self._frozen_bank():
            return self.head(x, cond, k=1).candidates[:, 0]

    def base(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The backbone's own forecast ``(B, T_out, C, H, W)``."""
        return self.head.backbone(x, cond)
