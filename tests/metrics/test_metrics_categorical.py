"""Categorical scores against hand-counted contingency tables."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import physforecast.metrics as M

# 3 x 4 frame, threshold 74 (events are >= 74):
#   target events: T, pred events: P
TARGET = torch.tensor(
    [
        [80.0, 10.0, 74.0, 0.0],
        [200.0, 50.0, 5.0, 90.0],
        [0.0, 0.0, 100.0, 73.9],
    ]
)
PRED = torch.tensor(
    [
        [75.0, 80.0, 10.0, 0.0],  # hit, false alarm, miss, correct negative
        [150.0, 20.0, 5.0, 100.0],  # hit, cn, cn, hit
        [74.0, 0.0, 0.0, 80.0],  # false alarm, cn, miss, false alarm
    ]
)
# hand count: hits 3, misses 2, false alarms 3, correct negatives 4
A, C, B, D = 3.0, 2.0, 3.0, 4.0


def test_contingency_table_by_hand():
    table = M.contingency(PRED, TARGET, threshold=74)
    assert [v.item() for v in table] == [A, C, B, D]


def test_scores_from_the_hand_counted_table():
    assert M.csi(PRED, TARGET, threshold=74).item() == pytest.approx(A / (A + C + B))
    assert M.pod(PRED, TARGET, threshold=74).item() == pytest.approx(A / (A + C))
    assert M.far(PRED, TARGET, threshold=74).item() == pytest.approx(B / (A + B))
    hss = 2 * (A * D - B * C) / ((A + C) * (C + D) + (A + B) * (B + D))
    assert M.hss(PRED, TARGET, threshold=74).item() == pytest.approx(hss)


def test_weights_mask_and_sample_aggregation():
    w = torch.ones(3, 4)
    w[0, 0] = 5.0  # the first hit counts five times
    assert M.contingency(PRED, TARGET, threshold=74, weights=w).hits.item() == A + 4
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[2] = False  # drop the last row: 1 miss and 2 false alarms
    table = M.contingency(PRED, TARGET.masked_fill(~mask, float("nan")), threshold=74, mask=mask)
    assert [v.item() for v in table] == [3.0, 1.0, 1.0, 3.0]
    # SEVIR-style aggregation: counts summed over samples before the ratio
    pred = torch.stack([PRED, torch.zeros(3, 4)])
    target = torch.stack([TARGET, TARGET])
    agg = M.csi(pred, target, threshold=74, sample_dim=0)
    assert agg.item() == pytest.approx(A / (A + C + B + 5))  # sample 2: 5 misses
    per = M.csi(pred, target, threshold=74)
    assert per[1].item() == 0.0 and agg.item() != pytest.approx(per.mean().item())


def test_csi_undefined_without_events_and_csi_m():
    zeros = torch.zeros(4, 4)
    assert torch.isnan(M.csi(zeros, zeros, threshold=16))
    expected = np.nanmean([M.csi(PRED, TARGET, threshold=t).item() for t in M.SEVIR_THRESHOLDS])
    assert M.csi_m(PRED, TARGET).item() == pytest.approx(expected)


def test_fss():
    target = torch.zeros(16, 16)
    target[6:10, 6:10] = 100.0
    assert M.fss(target, target, threshold=50).item() == 1.0
    shifted = torch.roll(target, 4, -1)  # no overlap at all
    assert M.fss(shifted, target, threshold=50, scale=1).item() == pytest.approx(0.0)
    scores = [M.fss(shifted, target, threshold=50, scale=s).item() for s in (1, 5, 9, 15)]
    assert scores == sorted(scores) and scores[-1] > 0.5
    # hand value at scale 1: F are the binary fields themselves
    half = target.clone()
    half[6:8] = 0.0  # forecast covers 8 of the 16 event points
    expected = 1 - 8 / (8 + 16)
    assert M.fss(half, target, threshold=50, scale=1).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="odd"):
        M.fss(target, target, threshold=50, scale=4)
