"""CriticFilter rules and the SAMIA-style learned critic."""

from __future__ import annotations

import pytest
import torch

from physforecast.search.critic import ContextCritic, CriticFilter, fit_critic
from physforecast.search.scores import ScoreContext

PEN = torch.tensor(
    [
        [0.5, 0.1, 0.9],
        [0.3, 0.8, 0.2],
        [0.7, 0.6, 0.4],
        [0.05, float("nan"), 1.0],
    ]
)


def test_per_sample_best():
    keep = CriticFilter(per_sample=1).select(PEN)
    assert keep.tolist() == [
        [False, True, False],
        [False, False, True],
        [False, False, True],
        [True, False, False],
    ]
    two = CriticFilter(per_sample=2).select(PEN)
    assert two.sum(1).tolist() == [2, 2, 2, 2]
    assert not two[3, 1]  # NaN penalties never pass


def test_keep_fraction_and_threshold():
    # per-sample bests are 0.1, 0.2, 0.4, 0.05; keeping half keeps 0.05 and 0.1
    half = CriticFilter(per_sample=1, keep_fraction=0.5).select(PEN)
    assert torch.nonzero(half).tolist() == [[0, 1], [3, 0]]
    thr = CriticFilter(per_sample=None, threshold=0.3).select(PEN)
    assert torch.nonzero(thr).tolist() == [[0, 1], [1, 0], [1, 2], [3, 0]]
    everything = CriticFilter(per_sample=None).select(PEN)
    assert everything.sum() == 11  # all finite candidates: the unfiltered ablation


def test_filter_errors_and_call():
    with pytest.raises(ValueError, match="keep_fraction"):
        CriticFilter(keep_fraction=0.0)
    with pytest.raises(ValueError, match="per_sample"):
        CriticFilter(per_sample=0)
    with pytest.raises(ValueError, match="no score"):
        CriticFilter()(torch.zeros(1, 2, 1, 1, 4, 4), ScoreContext(torch.zeros(1, 1, 1, 4, 4)))
    flt = CriticFilter(score=lambda p, c: p.flatten(2).mean(-1), per_sample=1)
    pred = torch.arange(3.0).reshape(1, 3, 1, 1, 1, 1).expand(1, 3, 1, 1, 4, 4)
    keep, pen = flt(pred, ScoreContext(torch.zeros(1, 1, 1, 4, 4)))
    assert keep.tolist() == [[True, False, False]] and pen.tolist() == [[0.0, 1.0, 2.0]]


def _toy_windows(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Smooth fields advected one pixel per step; candidates: 1 clean + 4 corrupted."""
    base = torch.randn(n, 1, 8, 8, generator=gen)
    base = sum(base.roll(s, -1) for s in range(3)) / 3
    base = sum(base.roll(s, -2) for s in range(3)) / 3
    hist = torch.stack([base.roll(t, -1) for t in range(2)], 1)  # (n, 2, 1, 8, 8)
    truth = torch.stack([base.roll(t, -1) for t in range(2, 4)], 1)  # (n, 2, 1, 8, 8)
    noise = 0.5 * base.std() * torch.randn(truth.shape, generator=gen)
    corrupted = [
        truth + noise,  # noisy
        truth.roll(2, -2),  # shifted the wrong way
        truth.flip(-1),  # mirrored
        1.8 * truth,  # amplitude blown up
    ]
    cands = torch.stack([truth, *corrupted], 1)  # (n, 5, 2, 1, 8, 8)
    perm = torch.stack([torch.randperm(5, generator=gen) for _ in range(n)])
    cands = cands[torch.arange(n)[:, None], perm]
    clean = (perm == 0).float().argmax(1)
    return hist, cands, clean


def test_learned_critic_picks_the_clean_candidate():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    hist, cands, clean = _toy_windows(64, gen)
    truth = cands[torch.arange(64), clean]
    # the penalty to learn: log RMSE against the truth, known on training windows
    err = (cands - truth[:, None]).pow(2).flatten(2).mean(-1).sqrt()
    target_pen = torch.log(err + 1e-2)
    critic = ContextCritic(channels=1, steps=2, context=2, hidden=16)
    losses = fit_critic(critic, hist, cands, target_pen, steps=150, lr=3e-3, generator=gen)
    assert losses[-1] < losses[0]
    test_hist, test_cands, test_clean = _toy_windows(64, gen)
    with torch.no_grad():
        picked = critic(test_hist, test_cands).argmin(1)
    accuracy = float((picked == test_clean).float().mean())
    assert accuracy >= 0.9
    flt = CriticFilter(score=lambda p, c: critic(c.history, p), per_sample=1)
    keep, _ = flt(test_cands, ScoreContext(test_hist))
    assert float(keep[torch.arange(64), test_clean].float().mean()) >= 0.9


def test_critic_shape_errors():
    critic = ContextCritic(channels=1, steps=2)
    with pytest.raises(ValueError, match=r"\(N, K, 2, 1, H, W\)"):
        critic(torch.zeros(1, 2, 1, 8, 8), torch.zeros(1, 3, 3, 1, 8, 8))
    with pytest.raises(ValueError, match="must agree"):
        fit_critic(
            critic, torch.zeros(2, 2, 1, 8, 8), torch.zeros(3, 2, 2, 1, 8, 8), torch.zeros(3, 2)
        )
