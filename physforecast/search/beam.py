"""Beam search over an autoregressive rollout in blocks, as a pure function.

:func:`beam_search` never touches a model: it calls ``step_fn`` for candidate next
blocks and ``score_fn`` for their penalties, and keeps the ``width`` best partial
sequences of every batch element. Sequences grow along dim 1 (time), so a forecast
rollout of blocks of lead times is the natural use::

    init: (B, L0, ...)                      the history
    step_fn(seq (N, L, ...), step) -> (N, K, Lb, ...)   K candidate next blocks
    score_fn(seq, blocks (N, K, Lb, ...), step) -> (N, K)  penalties, lower is better

A beam's score is the sum of its blocks' penalties (``accumulate=True``) or the penalty
of its last block alone (``accumulate=False``, for scores of the whole sequence).
Ties are broken by the lower (parent, candidate) index, so the result is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["BeamResult", "beam_search", "self_ensemble"]

StepFn = Callable[[torch.Tensor, int], torch.Tensor]
ScoreFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass
class BeamResult:
    """The surviving beams, best first.

    Attributes
    ----------
    sequences : Tensor
        Generated blocks of each beam concatenated along time, ``(B, W, L, ...)``
        with ``L`` the sum of the blocks' lengths (the history ``init`` is not included).
    scores : Tensor
        Beam penalties ``(B, W)``, ascending (lower is better).
    choices : Tensor
        Candidate index picked at each step, ``(B, W, steps)`` (int64).
    step_scores : Tensor
        Penalty of each picked block, ``(B, W, steps)``.
    """

    sequences: torch.Tensor
    scores: torch.Tensor
    choices: torch.Tensor
    step_scores: torch.Tensor

    @property
    def best(self) -> torch.Tensor:
        """The best sequence of every batch element, ``(B, L, ...)``."""
        return self.sequences[:, 0]


def beam_search(
    step_fn: StepFn,
    score_fn: ScoreFn,
    init: torch.Tensor,
    width: int,
    steps: int,
    *,
    accumulate: bool = True,
) -> BeamResult:
    """Keep the ``width`` best of ``width * K`` expansions at each of ``steps`` steps.

    Parameters
    ----------
    step_fn : callable
        ``step_fn(seq, step)`` maps the sequences so far, ``(N, L, ...)`` (history and
        chosen blocks, concatenated along dim 1), to ``K`` candidate next blocks
        ``(N, K, Lb, ...)``. ``K`` must not change between steps; the block length
        ``Lb`` may (a shorter last block).
    score_fn : callable
        ``score_fn(seq, blocks, step)`` gives the penalty ``(N, K)`` of each candidate
        block (lower is better).
    init : Tensor
        The history ``(B, L0, ...)``.
    width : int
        Beam width ``W >= 1``.
    steps : int
        Number of blocks to generate.
    accumulate : bool
        Sum penalties over steps (True) or rank by the last step's penalty (False).

    Returns
    -------
    BeamResult
        ``min(W, K**steps)`` beams per batch element, best first.

    Examples
    --------
    >>> step = lambda seq, i: torch.stack([seq[:, -1:] + 1, seq[:, -1:] - 1], 1)
    >>> score = lambda seq, blk, i: blk.abs().flatten(2).sum(-1)
    >>> res = beam_search(step, score, torch.zeros(1, 1), width=2, steps=3)
    >>> res.scores.shape
    torch.Size([1, 2])
    """
    if width < 1:
        raise ValueError(f"beam width must be >= 1; got {width}")
    if steps < 1:
        raise ValueError(f"beam search needs steps >= 1; got {steps}")
    if init.ndim < 2:
        raise ValueError(f"init must be (B, L0, ...) with a time dim; got {tuple(init.shape)}")
    bsz = init.shape[0]
    seq = init.unsqueeze(1)  # (B, W=1, L0, ...)
    score = init.new_zeros(bsz, 1, dtype=torch.float32)
    choices = torch.zeros(bsz, 1, 0, dtype=torch.long, device=init.device)
    step_scores = torch.zeros(bsz, 1, 0, dtype=torch.float32, device=init.device)
    l0 = init.shape[1]
    for step in range(steps):
        w_cur = seq.shape[1]
        flat = seq.reshape(bsz * w_cur, *seq.shape[2:])
        blocks = step_fn(flat, step)
        if blocks.ndim != flat.ndim + 1 or blocks.shape[0] != flat.shape[0]:
            raise ValueError(
                f"step_fn must return (N, K, Lb, ...) with N={flat.shape[0]} and "
                f"{flat.ndim + 1} dims; got {tuple(blocks.shape)}"
            )
        if blocks.shape[3:] != flat.shape[2:]:
            raise ValueError(
                f"candidate blocks {tuple(blocks.shape)} do not match the sequence "
                f"{tuple(flat.shape)} beyond the time dim"
            )
        k = blocks.shape[1]
        pen = score_fn(flat, blocks, step).float()
        if pen.shape != (flat.shape[0], k):
            raise ValueError(
                f"score_fn must return (N, K) = {(flat.shape[0], k)}; got {tuple(pen.shape)}"
            )
        pen = pen.reshape(bsz, w_cur, k)
        total = (score.unsqueeze(-1) + pen if accumulate else pen).reshape(bsz, w_cur * k)
        keep = min(width, w_cur * k)
        order = torch.sort(total, dim=1, stable=True).indices[:, :keep]  # (B, keep)
        parent, cand = order // k, order % k
        blocks = blocks.reshape(bsz, w_cur, k, *blocks.shape[2:])
        rows = torch.arange(bsz, device=init.device)[:, None]
        new_blocks = blocks[rows, parent, cand]  # (B, keep, Lb, ...)
        seq = torch.cat([_gather2(seq, parent), new_blocks.to(seq.dtype)], dim=2)
        score = torch.gather(total, 1, order)
        choices = torch.cat([_gather2(choices, parent), cand.unsqueeze(-1)], dim=2)
        picked = pen[rows, parent, cand].unsqueeze(-1)
        step_scores = torch.cat([_gather2(step_scores, parent), picked], dim=2)
    return BeamResult(seq[:, :, l0:], score, choices, step_scores)


def _gather2(t: torch.Tensor, parent: torch.Tensor) -> torch.Tensor:
    """``t[b, parent[b, j]]`` for (B, W, ...) and parent (B, W')."""
    return t[torch.arange(t.shape[0], device=t.device)[:, None], parent]


def self_ensemble(result: BeamResult, m: int = 1, *, weighted: bool = False) -> torch.Tensor:
    """Mean of the top-``m`` beams ``(B, L, ...)``.

    Parameters
    ----------
    result : BeamResult
        Output of :func:`beam_search`.
    m : int
        Members; clipped to the number of beams.
    weighted : bool
        Weight members by ``softmax(-score)`` instead of equally.
    """
    if m < 1:
        raise ValueError(f"self-ensemble needs m >= 1 members; got {m}")
    m = min(m, result.sequences.shape[1])
    members = result.sequences[:, :m]
    if not weighted or m == 1:
        return members.mean(1) if m > 1 else members[:, 0]
    w = torch.softmax(-result.scores[:, :m], dim=1).to(members.dtype)
    return (members * w.reshape(*w.shape, *([1] * (members.ndim - 2)))).sum(1)
