"""Streaming evaluation: chunks of the test split give the whole-split scorecard and
forecasts file; ``eval.save_samples`` keeps a subset; ``train.max_val_steps`` caps
validation."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import xarray as xr

from physforecast.config import TrainConfig
from physforecast.data.prepare import prepare_data
from physforecast.forecast.windows import forecast_windows
from physforecast.metrics import score
from physforecast.run_dir import RunDir
from physforecast.training import Trainer
from physforecast.training.run import evaluate_run


def _evaluate(path, chunk, save):
    run = RunDir(path)
    cfg = run.read_config()
    cfg.eval.chunk, cfg.eval.save_samples = chunk, save
    with run.lock():
        run.write_config(cfg)
    card = evaluate_run(path)
    forecasts = run.path / run.FORECASTS
    return card, (xr.load_dataset(forecasts) if forecasts.exists() else None)


def test_chunked_evaluation_equals_the_whole_split(tiny_run, tmp_path):
    path = tmp_path / "run"
    shutil.copytree(tiny_run, path)
    (path / "forecasts.nc").unlink(missing_ok=True)
    whole, all_fc = _evaluate(path, 10_000, None)
    chunked, chunk_fc = _evaluate(path, 3, None)
    np.testing.assert_allclose(chunked["score"].values, whole["score"].values, rtol=1e-12)
    np.testing.assert_allclose(chunked["summary"].values, whole["summary"].values, rtol=1e-12)
    xr.testing.assert_identical(chunk_fc, all_fc)
    # the one-shot path: every forecast in memory, scored at once
    run = RunDir(path)
    loaded = run.load_model("best")
    data = prepare_data(run.read_config(), loaded.normalizer)
    fc, truth = forecast_windows(loaded.model, data.test, data.normalizer, batch_size=16)
    reference = score(fc, truth)
    np.testing.assert_allclose(whole["score"].values, reference["score"].values, rtol=1e-12)
    np.testing.assert_array_equal(all_fc["vorticity"].values, fc["vorticity"].values)
    np.testing.assert_array_equal(all_fc["vorticity_truth"].values, truth["vorticity"].values)
    assert all_fc.sizes["sample"] == len(data.test) == whole.attrs["n_samples"]
    # a subset of the forecasts, the same scorecard
    subset, sub_fc = _evaluate(path, 3, 4)
    assert sub_fc.sizes["sample"] == 4
    xr.testing.assert_identical(sub_fc, all_fc.isel(sample=slice(0, 4)))
    np.testing.assert_allclose(subset["score"].values, whole["score"].values, rtol=1e-12)
    _, none = _evaluate(path, 5, 0)
    assert none is None


def test_validation_is_capped_by_its_own_setting():
    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.calls = 0

        def forward(self, x, cond=None):
            self.calls += 1
            return x * self.w

    data = [{"x": torch.ones(2, 1, 1, 2, 2), "y": torch.ones(2, 1, 1, 2, 2)} for _ in range(7)]
    loader = torch.utils.data.DataLoader(data, batch_size=None)
    for cap, calls in ((None, 7), (3, 3)):
        model = Counting()
        trainer = Trainer(
            model, TrainConfig(device="cpu", max_val_steps=cap, max_steps_per_epoch=1)
        )
        assert trainer.evaluate(loader)["val_loss"] == pytest.approx(1.0)
        assert model.calls == calls


def test_sample_appender_keeps_times_and_nan_across_chunks(tmp_path):
    import pandas as pd

    from physforecast.forecast.windows import SampleAppender

    n = 7
    t0 = pd.date_range("2020-01-01", periods=n, freq="6h").values
    ds = xr.Dataset(
        {
            "t2m": (
                ("sample", "lead_time", "y"),
                np.arange(n * 2 * 3, dtype=np.float32).reshape(n, 2, 3),
            ),
            "nu": (("sample",), np.linspace(0, 1, n)),
        },
        coords={
            "sample": np.arange(n),
            "init_time": ("sample", t0),
            "valid_time": (
                ("sample", "lead_time"),
                t0[:, None] + np.array([6, 12], "timedelta64[h]"),
            ),
            "init_index": ("sample", np.arange(n) + 3),
            "y": ("y", [0.5, 1.5, 2.5], {"units": "m"}),
        },
        attrs={"system": "toy"},
    )
    ds["t2m"][1, 0, 2] = np.nan
    with SampleAppender(tmp_path / "f.nc") as out:
        for i in range(0, n, 3):
            out.append(ds.isel(sample=slice(i, i + 3)))
    back = xr.load_dataset(tmp_path / "f.nc")
    xr.testing.assert_identical(back, xr.load_dataset(_whole(ds, tmp_path)))


def _whole(ds, tmp_path):
    path = tmp_path / "whole.nc"
    ds.to_netcdf(path, engine="netcdf4", unlimited_dims=["sample"])
    return path
