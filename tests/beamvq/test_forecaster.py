"""BeamVQForecaster: beam search over the head's candidates, self-ensemble, determinism."""

from __future__ import annotations

import itertools

import pytest
import torch
from beamvq_helpers import TinyBackbone

from physforecast.beamvq.forecaster import BeamVQForecaster, block_lengths
from physforecast.beamvq.head import TopKVQHead, head_loss
from physforecast.search.beam import self_ensemble
from physforecast.search.scores import ScoreCombination, ScoreContext


def _head(seed: int = 0, mode: str = "latent") -> TopKVQHead:
    torch.manual_seed(seed)
    bb = TinyBackbone(in_steps=2, out_steps=2, hidden=4)
    head = TopKVQHead(bb, mode=mode, num_codes=16, code_dim=4, hidden=4, downsample=2)
    head.materialize(torch.zeros(1, 2, 1, 8, 8))
    return head


def _train(head: TopKVQHead, steps: int = 5, seed: int = 1) -> list[float]:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    losses = []
    head.train()
    for _ in range(steps):
        x = torch.randn(4, 2, 1, 8, 8, generator=gen)
        y = x.flip(1)
        loss, _ = head_loss(head(x, k=3), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    head.eval()
    return losses


def test_block_beam_search_equals_exhaustive_search_over_candidates():
    head = _head()
    _train(head)
    fc = BeamVQForecaster(
        head, top_k=3, width=3, block=1, score=ScoreCombination({"spectral": 1.0})
    )
    x = torch.randn(2, 2, 1, 8, 8)
    res = fc.search(x)  # horizon 2 in blocks of 1: 3 * 3 sequences, width 3 = K**(steps-1)
    assert res.sequences.shape == (2, 3, 2, 1, 8, 8)
    comb = fc.score
    for b in range(2):
        best, best_seq = float("inf"), None
        for path in itertools.product(range(3), repeat=2):
            seq, total = x[b : b + 1], 0.0
            for k in path:
                cands = fc.candidates(seq[:, -2:])[:, :, :1]  # (1, K, 1, C, H, W)
                ctx = ScoreContext(seq[:, -2:], observed=x[b : b + 1])
                total += float(comb(cands, ctx)[0, k])
                seq = torch.cat([seq, cands[:, k]], 1)
            if total < best - 1e-9:
                best, best_seq = total, seq[0, 2:]
        assert res.scores[b, 0].item() == pytest.approx(best, rel=1e-5)
        torch.testing.assert_close(res.sequences[b, 0], best_seq)


def _pruned_search(fc, x, comb, lengths, width):
    """Reference: every beam extended by all K candidates, the ``width`` best kept per block."""
    beams = [(0.0, x)]
    for n in lengths:
        grown = []
        for total, seq in beams:
            cands = fc.candidates(seq[:, -fc.in_steps :])[:, :, :n]
            ctx = ScoreContext(seq[:, -fc.in_steps :], observed=x)
            pen = comb(cands, ctx)[0]
            grown += [(total + float(pen[k]), torch.cat([seq, cands[:, k]], 1)) for k in range(3)]
        beams = sorted(grown, key=lambda b: b[0])[:width]
    return beams


@pytest.mark.parametrize("width", [1, 2, 9])
def test_temporal_beam_prunes_k_to_the_n_paths_to_w_as_a_reference_search(width):
    # T_out = 5 in blocks of 2: [2, 2, 1], so K**3 = 27 paths; width 9 = K**(N-1) keeps
    # every path that can still win, i.e. the exhaustive search
    torch.manual_seed(0)
    bb = TinyBackbone(in_steps=2, out_steps=5, hidden=4)
    head = TopKVQHead(bb, mode="latent", num_codes=16, code_dim=4)
    head.materialize(torch.zeros(1, 2, 1, 8, 8))
    head.eval()
    comb = ScoreCombination({"spectral": 1.0, "conservation": 1.0})
    fc = BeamVQForecaster(head, top_k=3, width=width, block=2, score=comb)
    x = torch.randn(1, 2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    res = fc.search(x)
    assert res.sequences.shape == (1, min(width, 27), 5, 1, 8, 8)
    want = _pruned_search(fc, x, fc.inference_score, [2, 2, 1], width)
    for j, (total, seq) in enumerate(want):
        assert res.scores[0, j].item() == pytest.approx(total, rel=1e-5)
        torch.testing.assert_close(res.sequences[0, j], seq[0, 2:])
    if width == 9:  # the exhaustive minimum over all 27 paths
        every = _pruned_search(fc, x, fc.inference_score, [2, 2, 1], 27)
        assert res.scores[0, 0].item() == pytest.approx(every[0][0], rel=1e-5)


def test_forward_is_the_self_ensemble_and_top1_without_score():
    head = _head()
    _train(head)
    x = torch.randn(3, 2, 1, 8, 8)
    plain = BeamVQForecaster(head, top_k=4, width=2)
    torch.testing.assert_close(plain(x), plain.top1(x))
    fc = BeamVQForecaster(
        head, top_k=4, width=3, ensemble=2, score=ScoreCombination({"conservation": 1.0})
    )
    out = fc(x)
    assert out.shape == (3, 2, 1, 8, 8)
    torch.testing.assert_close(out, self_ensemble(fc.search(x), 2))
    assert (fc.in_steps, fc.out_steps, fc.in_channels, fc.out_channels) == (2, 2, 1, 1)


def test_reference_score_needs_target_and_uses_it():
    head = _head()
    _train(head)
    x = torch.randn(2, 2, 1, 8, 8)
    fc = BeamVQForecaster(head, top_k=4, width=1)
    rmse = ScoreCombination({"rmse": 1.0})
    with pytest.raises(ValueError, match="pass target"):
        fc.search(x, score=rmse)
    target = fc.candidates(x)[:, 2]  # make candidate 2 the truth
    res = fc.search(x, score=rmse, target=target)
    assert res.choices[:, 0, 0].tolist() == [2, 2] and res.scores.abs().max() < 1e-6


def test_search_does_not_touch_the_code_bank_in_training_mode():
    head = _head()
    head.train()
    fc = BeamVQForecaster(head, top_k=3, width=2, score=ScoreCombination({"spectral": 1.0}))
    before = head.quantizer.bank.embed.clone()
    fc.search(torch.randn(2, 2, 1, 8, 8))
    assert torch.equal(before, head.quantizer.bank.embed) and head.training


def test_candidates_and_top1_do_not_touch_the_code_bank_in_training_mode():
    head = _head()
    fc = BeamVQForecaster(head, top_k=3, width=2)
    fc.train()
    before = head.quantizer.bank.embed.clone()
    x = torch.randn(2, 2, 1, 8, 8)
    fc.candidates(x)
    fc.top1(x)
    fc(x)
    assert torch.equal(before, head.quantizer.bank.embed) and head.training


@pytest.mark.parametrize("mode", ["latent", "output"])
def test_everything_is_deterministic_under_a_seed(mode):
    outs = []
    for _ in range(2):
        head = _head(seed=7, mode=mode)
        losses = _train(head, steps=4, seed=3)
        fc = BeamVQForecaster(
            head,
            top_k=4,
            width=2,
            ensemble=2,
            temperature=0.7,
            seed=11,
            score=ScoreCombination({"spectral": 1.0, "conservation": 0.5}),
        )
        x = torch.randn(2, 2, 1, 8, 8, generator=torch.Generator().manual_seed(5))
        outs.append((losses, fc(x), fc.candidates(x)))
    assert outs[0][0] == outs[1][0]
    assert torch.equal(outs[0][1], outs[1][1]) and torch.equal(outs[0][2], outs[1][2])


def test_block_range_and_remainder():
    head = _head()
    with pytest.raises(ValueError, match="block"):
        BeamVQForecaster(head, block=3)  # T_out = 2
    fc = BeamVQForecaster(head, top_k=2, width=1, score=ScoreCombination({"spectral": 1.0}))
    res = fc.search(torch.randn(1, 2, 1, 8, 8), horizon=3)  # blocks [2, 1]
    assert res.sequences.shape[2] == 3 and res.choices.shape[-1] == 2
    assert block_lengths(10, 4) == [4, 4, 2] and block_lengths(10, 5) == [5, 5]
