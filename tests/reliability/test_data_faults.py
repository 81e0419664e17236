"""Silent corruption (issue 13): missing and corrupt chunks, broken frames, dead variables.

Files are made here in each format (netCDF-3, netCDF-4, zarr, HDF5) and then damaged the
way disks and interrupted copies damage them.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import xarray as xr
from reliability_helpers import (
    chunk_file,
    error_line,
    reanalysis,
    write_netcdf3,
    write_netcdf4,
    write_zarr,
)

from physforecast.cli import main
from physforecast.config import Config, apply_overrides
from physforecast.data.formats import open_any
from physforecast.data.prepare import prepare_data
from physforecast.data.windows import ForecastWindows
from physforecast.errors import DataIntegrityError, WindowsTooShortError

SMALL = [
    "model.options.hidden=8",
    "model.options.modes=3",
    "data.in_steps=2",
    "data.out_steps=1",
    "data.batch_size=4",
    "data.split=[0.6,0.2,0.2]",
    "train.epochs=1",
]


def cfg_for(path, *extra: str) -> Config:
    return apply_overrides(Config(), [*SMALL, f"data.dataset={path}", *extra])


def test_a_zarr_store_with_a_missing_chunk_is_refused_naming_it(tmp_path, capsys):
    store = write_zarr(reanalysis(), tmp_path / "sst.zarr")
    chunk_file(store, "sst", 3).unlink()  # frame 3 of sst lost
    with pytest.raises(DataIntegrityError) as info:
        open_any(store)
    text = str(info.value)
    assert "variable 'sst': chunk (3, 0, 0)" in text and str(store) in text
    assert "time 3 (1990-04-01)" in text and "on_bad_data=mask" in text
    # training refuses too, with one line, and writes nothing
    out = tmp_path / "run"
    assert main(["train", "--dataset", str(store), "--out", str(out), "--set", *SMALL]) == 2
    assert "lacks data chunks" in error_line(capsys) and not out.exists()


def test_a_missing_chunk_is_masked_only_when_asked(tmp_path):
    store = write_zarr(reanalysis(), tmp_path / "sst.zarr")
    chunk_file(store, "sst", 3).unlink()
    with pytest.warns(UserWarning, match="treated as masked"):
        data = prepare_data(cfg_for(store, "data.options.on_bad_data=mask"))
    # windows that hold time 3 leave sst out of the loss there, the others are whole
    hit = [i for i in range(len(data.train)) if data.train.locate(i)[1] in (1, 2, 3)]
    miss = [i for i in range(len(data.train)) if data.train.locate(i)[1] > 3]
    sst, z500 = (data.train.layout.variables.index(v) for v in ("sst", "z500"))  # store order
    assert hit and miss
    for i in hit:
        mask = data.train[i]["mask"]
        assert not mask[sst].any() and torch.equal(mask[z500], data.train.mask[z500])
    for i in miss:
        assert torch.equal(data.train[i]["mask"], data.train.mask)


def test_a_corrupt_zarr_chunk_names_the_variable_file_and_chunk(tmp_path):
    store = write_zarr(reanalysis(), tmp_path / "sst.zarr")
    chunk = chunk_file(store, "z500", 5)
    chunk.write_bytes(chunk.read_bytes()[:9])  # truncated: the codec cannot decode it
    ds = open_any(store)  # every chunk exists: opening is fine
    with pytest.raises(DataIntegrityError) as info:
        ds["z500"].isel(time=5).load()
    text = str(info.value)
    assert f"{store}: variable 'z500', chunk (5, 0, 0) cannot be read" in text
    assert "Restore the file" in text
    assert np.isfinite(ds["z500"].isel(time=4).values).all()  # its neighbours read fine
    with pytest.warns(UserWarning, match="read as NaN"):
        masked = open_any(store, on_bad_data="mask")["z500"].isel(time=5).values
    assert np.isnan(masked).all()


def test_a_frame_of_nan_in_a_netcdf_file_stops_training_naming_the_time(tmp_path):
    ds = reanalysis()
    ds["sst"][7] = np.nan  # a whole frame lost (land and sea)
    path = write_netcdf4(ds, tmp_path / "gap.nc")
    data = prepare_data(cfg_for(path))
    windows = [data.train[i] for i in range(len(data.train)) if data.train.locate(i)[1] > 7]
    assert windows  # the windows after the gap are fine
    with pytest.raises(DataIntegrityError) as info:
        for i in range(len(data.train)):
            data.train[i]
    text = str(info.value)
    assert "variable 'sst' at time index 7 (1990-08-01)" in text and str(path) in text
    assert "data.options.mask=full" in text and "on_bad_data=mask" in text


def test_a_corrupt_hdf5_chunk_names_the_dataset(tmp_path):
    path = tmp_path / "pde.h5"
    u = np.random.default_rng(0).normal(size=(4, 6, 16)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset("tensor", data=u, chunks=(1, 6, 16), compression="gzip")
        f.create_dataset("x-coordinate", data=np.linspace(0, 1, 16))
        f.create_dataset("t-coordinate", data=np.linspace(0, 1, 7))
        offset = f["tensor"].id.get_chunk_info(2).byte_offset
    with open(path, "r+b") as fh:  # overwrite the middle of chunk 2 in place
        fh.seek(offset + 10)
        fh.write(b"\xff" * 40)
    ds = open_any(path)
    with pytest.raises(DataIntegrityError, match=r"HDF5 dataset '/tensor' cannot be read at"):
        ds["u"].isel(trajectory=2).load()


def test_chunks_left_out_by_design_are_not_lost_chunks(tmp_path):
    # zarr does not write a chunk of fill values only: a land block is absent at every time
    store = tmp_path / "blocks.zarr"
    reanalysis().chunk({"time": 1, "lat": 2, "lon": 3}).to_zarr(store, consolidated=False)
    land = [p for p in (store / "sst").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert len(land) < 24 * 4 * 4  # the land block (lat 2:4, lon 3:6) was never written
    assert np.isnan(open_any(store)["sst"].values[:, 2:4, 3:6]).all()
    sea = next(p for p in land if p.relative_to(store / "sst").parts[1:] == ("3", "0", "0"))
    sea.unlink()  # a block of sea at time 3, stored at every other time: lost
    with pytest.raises(DataIntegrityError, match=r"variable 'sst': chunk \(3, 0, 0\)"):
        open_any(store)


@pytest.mark.parametrize("writer", [write_netcdf3, write_netcdf4, write_zarr])
def test_an_all_nan_variable_does_not_block_the_others(tmp_path, writer, capsys):
    suffix = ".zarr" if writer is write_zarr else ".nc"
    path = writer(reanalysis(dead=True), tmp_path / f"anoms{suffix}")
    with pytest.warns(UserWarning, match=r"\['ice'\] are NaN everywhere"):
        ds = open_any(path)
    assert set(ds.data_vars) >= {"sst", "z500"}
    with pytest.raises(Exception, match=r"\['ice'\] are NaN everywhere"):
        open_any(path, variables=["sst", "ice"])  # asked for by name: refused
    if writer is not write_netcdf3:
        return  # training and forecasting once is enough
    out = tmp_path / "run"
    args = ["train", "--dataset", str(path), "--variables", "sst", "--out", str(out)]
    assert main([*args, "--set", *SMALL]) == 0
    fc = tmp_path / "fc.nc"
    argv = ["forecast", str(out), "--input", str(path), "--init", "10", "--out", str(fc)]
    assert main([*argv, "--variables", "sst"]) == 0
    assert list(xr.open_dataset(fc).data_vars) == ["sst"]


def test_windows_too_short_name_the_split_and_what_to_change(tmp_path, capsys):
    path = write_netcdf3(reanalysis(n_time=50), tmp_path / "monthly.nc")  # 50 steps
    cfg = apply_overrides(Config(), [f"data.dataset={path}"])  # defaults: 10 + 10 steps
    with pytest.raises(WindowsTooShortError) as info:
        prepare_data(cfg)
    text = str(info.value)
    assert "the validation split has 5 of the dataset's 50 time steps" in text
    assert "and so has the test split" in text and "= 10 + 10 = 20" in text
    fix = text.split("--set ")[1].split(" (")[0].split()
    assert fix == ["data.in_steps=2", "data.out_steps=3"]
    data = prepare_data(apply_overrides(cfg, fix))  # the suggestion works
    assert len(data.test) >= 1
    # a direct ForecastWindows user still learns the three knobs
    with pytest.raises(WindowsTooShortError, match="in_steps.*out_steps.*data.split"):
        ForecastWindows(
            reanalysis(n_time=5).rename(lat="latitude", lon="longitude"), ["z500"], 3, 3
        )


@pytest.mark.parametrize("writer", [write_netcdf3, write_netcdf4, write_zarr])
def test_forked_dataloader_workers_read_lazily_opened_files(tmp_path, writer):
    """Workers forked from a parent holding an open netCDF handle reopen their own.

    Before, every read of a lazily opened netCDF-3 file in worker 0 failed with
    ``RuntimeError: Resource temporarily unavailable``.
    """
    suffix = ".zarr" if writer is write_zarr else ".nc"
    path = writer(reanalysis(n_time=60), tmp_path / f"anoms{suffix}")
    data = prepare_data(cfg_for(path, "data.in_memory_mb=0"))
    windows = data.train
    windows.ds  # noqa: B018  (the parent reads first, so the handle is open before the fork)
    loader = torch.utils.data.DataLoader(
        windows, batch_size=4, num_workers=2, multiprocessing_context="fork"
    )
    batches = list(loader)
    got = torch.cat([b["x"] for b in batches])
    expected = torch.stack([windows[i]["x"] for i in range(len(windows))])
    torch.testing.assert_close(got, expected, equal_nan=True)


def test_training_with_workers_on_a_lazily_read_netcdf3_file(tmp_path):
    path = write_netcdf3(reanalysis(n_time=60), tmp_path / "anoms.nc")
    out = tmp_path / "run"
    extra = ["data.num_workers=2", "data.in_memory_mb=0"]
    argv = ["train", "--dataset", str(path), "--out", str(out), "--set", *SMALL, *extra]
    assert main(argv) == 0
    assert (out / "scorecard.json").exists() and (out / "checkpoints" / "best.pt").exists()
