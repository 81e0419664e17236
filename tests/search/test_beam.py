"""beam_search: exactness against exhaustive search, bookkeeping, self-ensemble, errors."""

from __future__ import annotations

import itertools

import pytest
import torch

from physforecast.search.beam import beam_search, self_ensemble

K, STEPS, LB = 3, 3, 2
A = torch.tensor([0.9, -0.5, 1.3])
B = torch.tensor([0.2, 0.7, -0.4])


def step_fn(seq: torch.Tensor, step: int) -> torch.Tensor:
    """K candidate blocks that depend nonlinearly on the last frame and the step."""
    last = seq[:, -1:]  # (N, 1, D)
    cands = [torch.tanh(A[k] * last + B[k] * (step + 1)).expand(-1, LB, -1) for k in range(K)]
    cands = [c + 0.1 * k * torch.arange(LB).reshape(1, LB, 1) for k, c in enumerate(cands)]
    return torch.stack(cands, 1)  # (N, K, LB, D)


def score_fn(seq: torch.Tensor, blocks: torch.Tensor, step: int) -> torch.Tensor:
    """A penalty that depends on the history and the block (not just the block)."""
    ref = seq[:, -1:].unsqueeze(1)  # (N, 1, 1, D)
    return ((blocks - 0.3 * ref) ** 2).flatten(2).sum(-1) + 0.05 * blocks.flatten(2).sum(-1)


def exhaustive(init: torch.Tensor) -> tuple[torch.Tensor, list[tuple[int, ...]]]:
    """Total penalty of every one of the K**STEPS sequences, per batch element."""
    totals, paths = [], list(itertools.product(range(K), repeat=STEPS))
    for path in paths:
        seq, total = init, torch.zeros(init.shape[0])
        for step, k in enumerate(path):
            blocks = step_fn(seq, step)
            total = total + score_fn(seq, blocks, step)[:, k]
            seq = torch.cat([seq, blocks[:, k]], 1)
        totals.append(total)
    return torch.stack(totals, 1), paths


def test_full_width_beam_search_equals_exhaustive_search():
    torch.manual_seed(0)
    init = torch.randn(4, 3, 2)  # (B, L0, D)
    totals, paths = exhaustive(init)
    res = beam_search(step_fn, score_fn, init, width=K ** (STEPS - 1), steps=STEPS)
    best = totals.argmin(1)
    for b in range(init.shape[0]):
        assert tuple(res.choices[b, 0].tolist()) == paths[best[b]]
        torch.testing.assert_close(res.scores[b, 0], totals[b, best[b]])
    # and the W surviving beams are the W best sequences overall, in order
    ranked = totals.sort(1).values[:, : res.scores.shape[1]]
    torch.testing.assert_close(res.scores, ranked)


def test_beam_bookkeeping_is_consistent():
    torch.manual_seed(1)
    init = torch.randn(2, 3, 2)
    res = beam_search(step_fn, score_fn, init, width=4, steps=STEPS)
    assert res.sequences.shape == (2, 4, STEPS * LB, 2)
    assert (res.scores[:, 1:] >= res.scores[:, :-1]).all()
    torch.testing.assert_close(res.step_scores.sum(-1), res.scores)
    # replaying the choices reproduces each beam's sequence
    for b in range(2):
        for w in range(4):
            seq = init[b : b + 1]
            for step, k in enumerate(res.choices[b, w].tolist()):
                seq = torch.cat([seq, step_fn(seq, step)[:, k]], 1)
            torch.testing.assert_close(seq[0, 3:], res.sequences[b, w])
    assert torch.equal(res.best, res.sequences[:, 0])


def test_width_one_is_greedy():
    torch.manual_seed(2)
    init = torch.randn(3, 3, 2)
    res = beam_search(step_fn, score_fn, init, width=1, steps=STEPS)
    seq = init
    for step in range(STEPS):
        blocks = step_fn(seq, step)
        k = score_fn(seq, blocks, step).argmin(1)
        seq = torch.cat([seq, blocks[torch.arange(3), k]], 1)
    torch.testing.assert_close(res.sequences[:, 0], seq[:, 3:])


def test_non_accumulated_scores_rank_by_last_step():
    init = torch.zeros(1, 1, 1)

    def step(seq, i):
        return torch.stack([seq[:, -1:] + 1, seq[:, -1:] - 1], 1)

    def last_value(seq, blocks, i):  # penalty = -(value of the new block)
        return -blocks[:, :, 0, 0]

    res = beam_search(step, last_value, init, width=2, steps=3, accumulate=False)
    assert res.sequences[0, 0, :, 0].tolist() == [1.0, 2.0, 3.0]
    assert res.scores[0].tolist() == [-3.0, -1.0]


def test_self_ensemble():
    init = torch.zeros(1, 1, 1)

    def step(seq, i):
        return torch.stack([seq[:, -1:] + 1, seq[:, -1:] + 3], 1)

    def pen(seq, blocks, i):
        return blocks[:, :, 0, 0]

    res = beam_search(step, pen, init, width=2, steps=1)
    assert self_ensemble(res, 1).tolist() == [[[1.0]]]
    assert self_ensemble(res, 2).tolist() == [[[2.0]]]
    assert self_ensemble(res, 10).tolist() == [[[2.0]]]  # clipped to the beams there are
    weighted = self_ensemble(res, 2, weighted=True)
    w = torch.softmax(torch.tensor([-1.0, -3.0]), 0)
    torch.testing.assert_close(weighted[0, 0, 0], w[0] * 1 + w[1] * 3)
    with pytest.raises(ValueError, match="m >= 1"):
        self_ensemble(res, 0)


def test_clear_errors():
    init = torch.zeros(2, 1, 3)
    good_step = lambda s, i: torch.stack([s[:, -1:]] * 2, 1)  # noqa: E731
    with pytest.raises(ValueError, match="width"):
        beam_search(good_step, lambda s, b, i: b.sum((2, 3)), init, width=0, steps=1)
    with pytest.raises(ValueError, match=r"step_fn must return \(N, K, Lb, \.\.\.\)"):
        beam_search(lambda s, i: s, lambda s, b, i: b, init, width=1, steps=1)
    with pytest.raises(ValueError, match=r"score_fn must return \(N, K\)"):
        beam_search(good_step, lambda s, b, i: b.sum(-1), init, width=1, steps=1)
