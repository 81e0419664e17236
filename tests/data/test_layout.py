"""The channel layout (variables x levels -> channels) and per-channel normalization."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from physforecast.data import ForecastWindows, Normalizer
from physforecast.data.layout import ChannelLayout, check_variables, spatial_dims
from physforecast.errors import DataFormatError


def two_variables(n_time: int = 10) -> xr.Dataset:
    """``u(trajectory, time, y, x)`` and ``t(trajectory, time, level=3, y, x)``, each level
    with its own mean (10, 20, 30) and spread (1, 2, 3)."""
    rng = np.random.default_rng(0)
    u = rng.normal(5.0, 0.5, (4, n_time, 6, 8))
    t = rng.normal(0.0, 1.0, (4, n_time, 3, 6, 8)) * np.array([1.0, 2.0, 3.0])[:, None, None]
    t += np.array([10.0, 20.0, 30.0])[:, None, None]
    return xr.Dataset(
        {
            "u": (("trajectory", "time", "y", "x"), u),
            "t": (("trajectory", "time", "level", "y", "x"), t),
        },
        coords={"level": [850, 500, 250]},
    )


def test_layout_channels_names_and_round_trip():
    ds = two_variables()
    layout = ChannelLayout.from_dataset(ds, ["u", "t"])
    assert layout.widths == [1, 3] and layout.channels == 4
    assert layout.channel_names == ["u", "t[level=0]", "t[level=1]", "t[level=2]"]
    assert layout.channel_variable == [0, 1, 1, 1]
    assert layout.channel_slice("t") == slice(1, 4)
    frames = layout.stack(ds.isel(trajectory=0), ("time",))
    assert frames.shape == (10, 4, 6, 8)
    np.testing.assert_allclose(frames[:, 2], ds.t.isel(trajectory=0, level=1).values, rtol=1e-6)
    parts = layout.unstack(frames, ("time",))
    assert parts["t"][0] == ("time", "level", "y", "x")
    np.testing.assert_allclose(parts["t"][1], ds.t.isel(trajectory=0).values, rtol=1e-6)
    assert ChannelLayout.from_dict(layout.to_dict()) == layout


def test_layout_checks_name_the_problem():
    ds = two_variables()
    layout = ChannelLayout.from_dataset(ds, ["u", "t"])
    with pytest.raises(DataFormatError, match="lacks variable"):
        layout.check(ds.drop_vars("t"))
    with pytest.raises(DataFormatError, match="different grid"):
        layout.check(ds.isel(x=slice(0, 4)))
    with pytest.raises(DataFormatError, match="levels"):
        layout.check(ds.isel(level=[0, 1]))
    with pytest.raises(DataFormatError, match="needs a 'time' dim"):
        check_variables(ds.assign(c=("y", np.zeros(6))), ["c"], time=True)
    with pytest.raises(DataFormatError, match="two spatial dims"):
        spatial_dims(("sample", "time"), "w")
    assert spatial_dims(ds.t) == ("y", "x")
    assert spatial_dims(("time", "lat", "lon")) == ("lat", "lon")


@pytest.mark.parametrize("per", ["channel", "variable"])
def test_two_variables_with_levels_make_windows_and_statistics(per, tmp_path):
    ds = two_variables()
    layout = ChannelLayout.from_dataset(ds, ["u", "t"])
    norm = Normalizer.fit(ds, layout, per=per)
    assert len(norm.mean) == 4 and norm.channels == layout.channel_names
    if per == "channel":
        np.testing.assert_allclose(norm.mean[1:], [10, 20, 30], atol=0.2)
        np.testing.assert_allclose(norm.std[1:], [1, 2, 3], rtol=0.1)
    else:
        assert norm.mean[1] == norm.mean[2] == norm.mean[3]
    norm.save(tmp_path / "normalization.json")
    back = Normalizer.load(tmp_path / "normalization.json")
    assert back == norm
    windows = ForecastWindows(ds, ["u", "t"], 3, 2, normalizer=back)
    sample = windows[0]
    assert sample["x"].shape == (3, 4, 6, 8) and sample["y"].shape == (2, 4, 6, 8)
    if per == "channel":  # every channel is standardized on its own
        assert sample["x"].mean(dim=(0, 2, 3)).abs().max() < 1.0
    raw = torch.from_numpy(layout.stack(ds.isel(trajectory=0, time=slice(0, 3))))
    torch.testing.assert_close(
        back.denormalize(sample["x"].double()), raw.double(), atol=1e-4, rtol=0
    )


def test_old_normalization_files_still_load(tmp_path):
    """A file of a run written before channels were stored: one channel per variable."""
    (tmp_path / "n.json").write_text(
        '{"variables": ["u"], "mean": [1.0], "std": [2.0], "params": [], "param_mean": [],'
        ' "param_std": [], "param_log": []}'
    )
    norm = Normalizer.load(tmp_path / "n.json")
    assert norm.channels == ["u"]
    with pytest.raises(ValueError, match="must match"):
        Normalizer(["u", "v"], [0.0], [1.0])
