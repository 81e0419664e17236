"""Storms: VIL range, motion with the wind, lifecycles, and the SEVIR thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from physforecast.datasets.storms import SEVIR_THRESHOLDS, pixel_shift_per_frame, storms


@pytest.fixture(scope="module")
def default_set():
    return storms(progress=False)


def _mean_shift(frames: np.ndarray) -> np.ndarray:
    """Displacement (dy, dx) in pixels between consecutive frames: the peak of the
    cross-correlation summed over all pairs, refined by a parabola through its neighbours."""
    f = np.fft.fft2(frames.astype(np.float64))
    cc = np.fft.ifft2((f[1:] * np.conj(f[:-1])).sum(0)).real
    peak = np.unravel_index(cc.argmax(), cc.shape)
    est = []
    for ax, n in enumerate(cc.shape):
        lo, hi = list(peak), list(peak)
        lo[ax], hi[ax] = (peak[ax] - 1) % n, (peak[ax] + 1) % n
        cm, c0, cp = cc[tuple(lo)], cc[peak], cc[tuple(hi)]
        est.append((peak[ax] + n // 2) % n - n // 2 + 0.5 * (cm - cp) / (cm - 2 * c0 + cp))
    return np.array(est)


def test_range_and_dtype(default_set):
    vil = default_set.vil
    assert vil.dtype == np.float32
    assert float(vil.min()) >= 0 and float(vil.max()) <= 255
    assert float((vil == 0).mean()) < 0.99  # not empty


def test_every_sevir_threshold_is_exceeded(default_set):
    vil = default_set.vil.values
    for thr in SEVIR_THRESHOLDS:
        assert (vil >= thr).any(), thr
    # Rarer at higher thresholds, as in real VIL.
    freq = [(vil >= thr).mean() for thr in SEVIR_THRESHOLDS]
    assert all(a > b for a, b in zip(freq, freq[1:]))
    assert default_set.attrs["thresholds"] == "16,74,133,160,181,219"


@pytest.mark.parametrize("variability", [0.0, 0.2])
def test_cells_move_with_the_wind(variability):
    ds = storms(n_trajectories=4, wind_variability=variability, seed=1, progress=False)
    expected = pixel_shift_per_frame(ds)  # wind * dt / dx, (dy, dx)
    assert np.abs(expected).max() > 1  # a real displacement, not a still field
    for i in range(ds.sizes["trajectory"]):
        np.testing.assert_allclose(_mean_shift(ds.vil.values[i]), expected[i], atol=0.25)


def test_cells_grow_and_decay():
    """One cell per trajectory: its total VIL rises from 0 to a peak and falls back to 0."""
    ds = storms(
        n_trajectories=6,
        size=24,
        n_steps=40,
        cells_alive=0.01,
        lifetime_range=(60.0, 60.0),
        noise=0.0,
        seed=4,
        progress=False,
    )
    totals = ds.vil.sum(("y", "x")).values.astype(np.float64)  # (N, T)
    interior = 0
    for series in totals:
        i = int(series.argmax())
        assert series[i] > 100
        assert np.all(np.diff(series[: i + 1]) >= -1e-3 * series[i])
        assert np.all(np.diff(series[i:]) <= 1e-3 * series[i])
        assert series.min() == 0  # a 60-minute life does not fill 195 minutes
        interior += bool(series[0] == 0 and series[-1] == 0)
    assert interior >= 1  # at least one whole life: born and dead inside the sequence
