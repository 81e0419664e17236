"""Tracebacks where a message belongs (issue 13): each user mistake is one
``physforecast: error:`` line that says what to do; ``--debug`` shows the traceback."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from reliability_helpers import TINY, error_line, reanalysis, write_netcdf4

import physforecast as pf
from physforecast.cli import main
from physforecast.errors import OptionError, UnsafeCheckpointError

# -- option typos --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fno", "uno"])
def test_backbone_option_typos_get_a_suggestion(name):
    with pytest.raises(OptionError, match=r"does not take option 'hiden'.*Did you mean 'hidden'"):
        pf.create_backbone(name, in_steps=2, out_steps=2, in_channels=1, hiden=8)
    # options of the wrapped neuraloperator class still pass
    model = pf.create_backbone(name, in_steps=2, out_steps=2, in_channels=1, hidden=8, norm=None)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_option_typos_from_the_command_line(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", "--out", out, "--set", *TINY, "model.options.hiden=8"]) == 2
    assert "(model.options.hiden). Did you mean 'hidden'?" in error_line(capsys)
    assert main(["train", "--out", out, "--set", *TINY, "data.options.n_trajectorie=8"]) == 2
    assert "(data.options.n_trajectorie). Did you mean 'n_trajectories'?" in error_line(capsys)
    path = write_netcdf4(reanalysis(), tmp_path / "a.nc")
    args = ["train", "--dataset", str(path), "--out", out, "--set", "data.options.renam={}"]
    assert main(args) == 2
    assert "the netcdf reader of a.nc does not take option 'renam'" in error_line(capsys)
    assert main(["generate", "ns2d", "--out", str(tmp_path / "x.nc"), "--set", "sise=8"]) == 2
    assert "Did you mean 'size'?" in error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_broken_yaml_is_one_line_with_its_place(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("data:\n  dataset: ns2d\n  in_steps: [2, 3\ntrain:\n  epochs: 1\n")
    assert main(["train", "--config", str(config)]) == 2
    line = error_line(capsys)
    assert f"{config} is not valid YAML at line 4, column 6" in line
    config.write_text("data:\n\tdataset: ns2d\n")
    assert main(["train", "--config", str(config)]) == 2
    assert "found character '\\t'" in error_line(capsys)
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file" in error_line(capsys)
    assert main(["train", "--set", "data.split=[0.8,"]) == 2
    assert "is not valid YAML" in error_line(capsys)


def test_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("data: [")
    with pytest.raises(ValueError, match="not valid YAML"):
        main(["train", "--debug", "--config", str(config)])
    with pytest.raises(ValueError, match="not valid YAML"):
        main(["--debug", "train", "--config", str(config)])
    monkeypatch.setenv("PHYSFORECAST_DEBUG", "1")
    with pytest.raises(ValueError, match="not valid YAML"):
        main(["train", "--config", str(config)])
    monkeypatch.setenv("PHYSFORECAST_DEBUG", "0")
    assert main(["train", "--config", str(config)]) == 2


# -- checkpoints ----------------------------------------------------------------------------


class _Payload:
    """Unpickling this runs ``open(path, "w")``: code, not weights."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_malicious_checkpoint_is_refused_as_unsafe(run_copy, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    best = run_copy / "checkpoints" / "best.pt"
    torch.save({"model": {}, "epoch": 1, "payload": _Payload(marker)}, best)
    assert main(["evaluate", str(run_copy)]) == 2
    line = error_line(capsys)
    assert "best.pt refused as unsafe" in line and "(it refers to io.open)" in line
    assert "weights_only" not in line  # never suggests turning the protection off
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError):
        pf.load(run_copy)
    assert not marker.exists()
    out = tmp_path / "fc.nc"
    assert main(["forecast", str(run_copy), "--out", str(out)]) == 2
    assert "refused as unsafe" in error_line(capsys) and not out.exists()


def test_a_checkpoint_that_does_not_fit_its_model_json(run_copy, capsys):
    spec = (run_copy / "model.json").read_text().replace('"hidden": 8', '"hidden": 12')
    (run_copy / "model.json").write_text(spec)
    assert main(["evaluate", str(run_copy)]) == 2
    line = error_line(capsys)
    assert "does not fit the model that" in line and "size mismatch" in line


# -- outputs ----------------------------------------------------------------------------------


def test_a_bad_output_suffix_fails_before_the_work(tmp_path, capsys):
    start = time.perf_counter()
    argv = ["generate", "ns2d", "--out", str(tmp_path / "ns.h5"), "--set", "n_trajectories=64"]
    assert main(argv) == 2
    line = error_line(capsys)
    assert "end the output path in .nc (netCDF) or .zarr" in line
    assert time.perf_counter() - start < 5  # 64 trajectories were never simulated
    assert list(tmp_path.iterdir()) == []


def test_forecast_bad_output_and_bad_init(tiny_run, tmp_path, capsys):
    assert main(["forecast", str(tiny_run), "--out", str(tmp_path / "fc.txt")]) == 2
    assert "cannot tell the format" in error_line(capsys)
    out = str(tmp_path / "fc.nc")
    assert main(["forecast", str(tiny_run), "--out", out, "--init", "yesterday"]) == 2
    assert "--init 'yesterday' is neither a time index nor a time" in error_line(capsys)
    assert main(["forecast", str(tiny_run), "--out", out, "--variables", "vorticty"]) == 2
    assert "Did you mean 'vorticity'?" in error_line(capsys)


# -- forecast with the run's data options, dates, variables -------------------------------------


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory):
    """A run trained on a file whose dims need ``data.options.rename``."""
    root = tmp_path_factory.mktemp("odd")
    ds = reanalysis(30).rename(time="when", lat="yy", lon="xx")
    for name in ("yy", "xx"):
        ds[name].attrs = {}  # no CF attributes: the dims cannot be recognised
    path = root / "odd.nc"
    ds.to_netcdf(path)
    out = root / "run"
    rename = "data.options.rename={when: time, yy: y, xx: x}"
    small = ["model.options.hidden=8", "model.options.modes=3", "data.in_steps=2"]
    small += ["data.out_steps=1", "data.split=[0.6,0.2,0.2]", "train.epochs=1"]
    argv = ["train", "--dataset", str(path), "--variables", "sst,z500", "--out", str(out)]
    assert main([*argv, "--set", *small, rename]) == 0
    return out, path


def test_forecast_reads_the_file_as_the_run_did(odd_run, tmp_path, capsys):
    run, path = odd_run
    out = tmp_path / "fc.nc"
    argv = ["forecast", str(run), "--input", str(path), "--out", str(out)]
    assert main([*argv, "--init", "1990-06-15", "1991-02-01", "--variables", "sst"]) == 0
    err = capsys.readouterr().err
    assert "--init 1990-06-15: using the nearest time, 1990-06-01 (time index 5)" in err
    assert "1991-02-01" not in err  # exact: nothing to say
    with xr.open_dataset(out) as fc:
        assert list(fc.data_vars) == ["sst"]
        np.testing.assert_array_equal(fc["init_index"].values, [5, 13])
    # without the run's rename the same file cannot be read: --set replaces it
    assert main([*argv, "--set", "rename={when: time}"]) == 2
    assert "yy" in error_line(capsys)
    assert main([*argv, "--init", "2001-01-01"]) == 2
    assert "is outside the input's times (1990-01-01 to 1992-06-01)" in error_line(capsys)
    # the run's own dataset is the default input
    assert main(["forecast", str(run), "--out", str(tmp_path / "again.nc")]) == 0


def test_list_datasets_names_simulators_and_file_formats(capsys):
    assert main(["list", "datasets"]) == 0
    out = capsys.readouterr().out
    assert "ns2d" in out and "simulator" in out
    for kind in ("netcdf", "zarr", "weatherbench", "pdebench", "the_well"):
        assert f"  {kind} " in out


def test_simulation_says_what_it_does_in_a_log(tmp_path, capsys, monkeypatch):
    from physforecast.data.io import simulate

    ds = simulate("ns2d", {"n_trajectories": 2, "n_steps": 10, "size": 16})
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "simulating ns2d (n_trajectories=2, n_steps=10, size=16)..."
    frames = [ln for ln in err if ln.startswith("ns2d: ")]
    assert len(frames) == 10 and frames[-1].startswith("ns2d: 10/10 frames (100%)")
    assert err[-1].startswith("simulated ns2d: trajectory 2 x time 10 x y 16 x x 16 in ")
    assert ds.sizes["time"] == 10


def test_evaluate_waits_for_no_one(run_copy, capsys):
    from physforecast.run_dir import RunLock

    with RunLock(run_copy):
        assert main(["evaluate", str(run_copy)]) == 2
        assert f"run directory {run_copy} is in use by pid {os.getpid()}" in error_line(capsys)
    shutil.rmtree(run_copy / "checkpoints")
    assert main(["evaluate", str(run_copy)]) == 2
    assert "no checkpoint 'best'" in error_line(capsys)


def test_a_forecast_that_cannot_be_verified_says_how_many(tiny_run):
    from physforecast.data.io import open_dataset
    from physforecast.metrics.verification import verify

    ds = open_dataset("ns2d", options={"n_trajectories": 6, "n_steps": 12})
    forecast = pf.rollout(pf.load(tiny_run), ds, 2)  # from the last frame: no truth after it
    with pytest.warns(UserWarning, match=r"before lead time 1 for all 6 forecasts .*init <= 9"):
        verify(forecast, ds)
