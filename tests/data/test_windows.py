"""ForecastWindows: values, splits without leakage, normalization, bad input."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import xarray as xr

from physforecast.data import ForecastWindows, Normalizer, split_indices, write_dataset
from physforecast.errors import DataFormatError


def toy(n_traj=5, n_time=8, h=4, w=6):
    t = np.arange(n_time, dtype=float)
    data = np.arange(n_traj * n_time * h * w, dtype=np.float32).reshape(n_traj, n_time, h, w)
    return xr.Dataset(
        {
            "u": (("trajectory", "time", "y", "x"), data, {"units": "m s-1", "long_name": "u"}),
            "v": (("trajectory", "time", "y", "x"), -data, {"units": "m s-1", "long_name": "v"}),
            "nu": (("trajectory",), np.geomspace(1e-4, 1e-1, n_traj)),
        },
        coords={"time": t},
    )


def test_values_and_shapes():
    ds = toy()
    win = ForecastWindows(ds, ["u", "v"], 3, 2, params=["nu"])
    assert len(win) == 5 * (8 - 5 + 1)
    s = win[5]  # trajectory 1, start 1
    np.testing.assert_array_equal(s["x"][:, 0].numpy(), ds.u.values[1, 1:4])
    np.testing.assert_array_equal(s["y"][:, 1].numpy(), ds.v.values[1, 4:6])
    assert s["params"].shape == (1,) and s["mask"].shape == (2, 4, 6) and s["mask"].all()


def test_splits_are_disjoint_and_cover():
    ds = toy(n_traj=10)
    parts = split_indices(ds, (0.6, 0.2, 0.2), seed=1)
    ids = [set(p["trajectory"].tolist()) for p in parts]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert set().union(*ids) == set(range(10))


def test_time_block_split_for_reanalysis():
    ds = toy().isel(trajectory=0).drop_vars("nu")
    parts = split_indices(ds, (0.5, 0.25, 0.25))
    assert parts[0]["time"] == slice(0, 4) and parts[2]["time"] == slice(6, 8)
    win = ForecastWindows(ds, ["u"], 2, 2, selection=parts[0])
    assert len(win) == 1  # no window crosses into the validation block
    np.testing.assert_array_equal(win[0]["y"][:, 0].numpy(), ds.u.values[2:4])


def test_normalizer_fits_train_only_and_logs_wide_params():
    ds = toy()
    train = {"trajectory": np.array([0, 4])}
    norm = Normalizer.fit(ds, ["u"], ["nu"], selection=train)
    assert norm.mean[0] == pytest.approx(float(ds.u.isel(train).mean()))
    assert norm.param_log == [True]
    win = ForecastWindows(ds, ["u"], 2, 2, selection=train, params=["nu"], normalizer=norm)
    x = np.concatenate([win[i]["x"].numpy().ravel() for i in range(len(win))])
    assert abs(x.mean()) < 0.2


def test_nan_becomes_mask(tmp_path):
    ds = toy()
    ds["u"][:, :, 0, 0] = np.nan
    win = ForecastWindows(ds, ["u"], 2, 2)
    s = win[0]
    assert not s["mask"][0, 0, 0] and s["mask"][0, 1, 1]
    assert np.isfinite(s["x"].numpy()).all()


def test_pickles_without_data_and_reopens(tmp_path):
    path = write_dataset(toy(), tmp_path / "toy.zarr")
    ds = xr.open_zarr(path)
    win = ForecastWindows(ds, ["u"], 2, 2)
    clone = pickle.loads(pickle.dumps(win))
    assert clone._ds is None
    np.testing.assert_array_equal(clone[7]["x"].numpy(), win[7]["x"].numpy())


def test_bad_input_errors():
    ds = toy()
    with pytest.raises(DataFormatError, match=r"variable\(s\) \['w'\] not found; available: u, v"):
        ForecastWindows(ds, ["w"], 2, 2)
    with pytest.raises(
        ValueError, match="need in_steps \\+ out_steps = 9 time steps; the dataset has 8"
    ):
        ForecastWindows(ds, ["u"], 5, 4)
    bad = ds.assign_coords(time=ds.time.values[::-1])
    with pytest.raises(ValueError, match="not strictly increasing"):
        ForecastWindows(bad, ["u"], 2, 2)
    nan = ds.copy()
    nan["u"] = nan.u * np.nan
    with pytest.raises(ValueError, match="'u' is all NaN"):
        ForecastWindows(nan, ["u"], 2, 2)
    with pytest.raises(ValueError, match="split needs three"):
        split_indices(ds, (0.5, 0.5))


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(ValueError, match="suffix"):
        write_dataset(toy(), tmp_path / "x.csv")
    assert list(tmp_path.iterdir()) == []


def test_dataloader_workers_read_a_file_opened_in_the_parent(tmp_path):
    """Forked workers reopen the store and use dask's synchronous scheduler (no deadlock)."""
    import torch

    from physforecast.config import Config
    from physforecast.data.formats import open_any
    from physforecast.training import Trainer

    path = write_dataset(toy(n_traj=4), tmp_path / "toy.zarr")
    win = ForecastWindows(open_any(path), ["u"], 2, 2)
    cfg = Config()
    cfg.data.batch_size, cfg.data.num_workers = 4, 2
    cfg.train.device = "cpu"
    trainer = Trainer(torch.nn.Linear(1, 1), cfg.train, config=cfg)
    loader = trainer.loader(win, train=False)
    assert loader.worker_init_fn is not None
    x = torch.cat([b["x"] for b in loader])
    torch.testing.assert_close(x, torch.stack([win[i]["x"] for i in range(len(win))]))
