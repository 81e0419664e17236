"""Misleading numbers (issue 13): an infinite log spectral distance, a spread-skill ratio
that calls a reliable small ensemble under-dispersive."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from physforecast.metrics import probabilistic as P
from physforecast.metrics import spectral as S


def _mode(k: int, n: int = 32) -> torch.Tensor:
    """``sin(2 pi k x)`` on an n x n grid: all its power in the ring |k|."""
    y, x = torch.meshgrid(torch.arange(n) / n, torch.arange(n) / n, indexing="ij")
    return torch.sin(2 * math.pi * k * x).double()


def test_lsd_stays_finite_when_a_spectrum_bin_is_empty():
    high = _mode(8)  # power in one ring only: every other bin of its spectrum is 0
    flat = torch.full_like(high, 3.0)  # a constant forecast: no power off k = 0
    # the bin of k = 8 is empty in the forecast: log10(0) made this infinite (or NaN)
    far = S.lsd(flat, high)
    assert torch.isfinite(far) and far > 20
    assert torch.isfinite(S.lsd(high, flat))
    assert float(S.lsd(high, high)) == 0.0  # bins empty in both count as 0 dB
    assert float(S.lsd(flat, flat)) == 0.0
    assert float(S.lsd(_mode(7), high)) > 20  # the power moved: far, but finite
    # the floor does not move a distance between fields with power everywhere
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(size=(3, 32, 32)))
    assert torch.allclose(
        S.lsd(2 * x, x), torch.full((3,), 20 * math.log10(2), dtype=torch.float64), rtol=1e-9
    )


@pytest.mark.parametrize("m", [2, 4, 10])
def test_spread_skill_of_a_reliable_ensemble(m):
    # members and truth drawn from one distribution around an unknown mean: reliable
    gen = torch.Generator().manual_seed(m)
    n, h, w = 400, 8, 8
    centre = 3 * torch.randn(n, 1, h, w, generator=gen, dtype=torch.float64)
    draws = centre + torch.randn(n, m + 1, h, w, generator=gen, dtype=torch.float64)
    members, truth = draws[:, :m], draws[:, m]
    wb2 = P.spread_skill_ratio(members, truth, member_dim=1, sample_dim=0)
    fair = P.spread_skill_ratio(members, truth, member_dim=1, sample_dim=0, corrected=True)
    assert float(wb2) == pytest.approx(math.sqrt(m / (m + 1)), abs=0.03)  # 0.82 at M = 2
    assert float(fair) == pytest.approx(1.0, abs=0.03)
    assert float(fair / wb2) == pytest.approx(math.sqrt((m + 1) / m), rel=1e-12)
