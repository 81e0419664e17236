"""ForecastWindows' index table and readers: the same windows as a plain ``isel`` of each
one, in memory and from a chunked store, read chunk by chunk through a bounded cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from torch.utils.data import DataLoader

from physforecast.data import ForecastWindows, Normalizer, split_indices
from physforecast.data.layout import ChannelLayout
from physforecast.data.windows import WindowBatch, collate_windows


def dataset(n_traj=6, n_time=12, levels=2, h=4, w=5, seed=0):
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((n_traj, n_time, h, w)).astype(np.float32)
    t = rng.standard_normal((n_traj, levels, n_time, h, w))  # float64, level before time
    return xr.Dataset(
        {
            "u": (("trajectory", "time", "y", "x"), u, {"units": "1"}),
            "t": (("trajectory", "level", "time", "y", "x"), t, {"units": "K"}),
            "nu": (("trajectory",), np.geomspace(1e-4, 1e-2, n_traj)),
        },
        coords={"time": np.arange(n_time, dtype=float), "level": np.arange(levels)},
    )


def reference(ds, variables, selection, traj, t0, span, normalizer=None, params=()):
    """The windows' old definition: select the split, the trajectory and the frames."""
    sub = ds.isel(selection) if selection else ds
    if "trajectory" in sub.dims:
        sub = sub.isel(trajectory=traj)
    layout = ChannelLayout.from_dataset(ds, variables)
    frames = torch.from_numpy(layout.stack(sub.isel(time=slice(t0, t0 + span)), ("time",)))
    p = torch.tensor([float(sub[n].values) for n in params], dtype=torch.float64)
    if normalizer is not None:
        frames = normalizer.normalize(frames)
        p = normalizer.normalize_params(p)
    return torch.nan_to_num(frames, nan=0.0).float(), p.float()


def test_index_table_lists_every_trajectory_and_start():
    ds = dataset()
    split = {"trajectory": np.array([1, 3, 4])}
    win = ForecastWindows(ds, ["u"], 3, 2, stride=2, selection=split)
    starts = np.arange(0, 12 - 5 + 1, 2)
    assert win.index.shape == (3 * len(starts), 2)
    np.testing.assert_array_equal(win.index[:, 0], np.repeat([0, 1, 2], len(starts)))
    np.testing.assert_array_equal(win.index[:, 1], np.tile(starts, 3))
    assert [win.locate(i) for i in (0, len(starts))] == [(0, 0), (1, 0)]
    with pytest.raises(IndexError, match="out of range"):
        win.locate(len(win))


@pytest.mark.parametrize("split", [0, 1, 2])
def test_in_memory_windows_equal_an_isel_of_each(split):
    ds = dataset()
    sel = split_indices(ds, (0.5, 0.25, 0.25), seed=3)[split]
    norm = Normalizer.fit(ds, ["u", "t"], ["nu"], selection=sel)
    win = ForecastWindows(ds, ["u", "t"], 3, 2, selection=sel, params=["nu"], normalizer=norm)
    assert win.channels == 3
    for i in range(len(win)):
        traj, t0 = win.locate(i)
        frames, p = reference(ds, ["u", "t"], sel, traj, t0, 5, norm, ["nu"])
        s = win[i]
        torch.testing.assert_close(s["x"], frames[:3], rtol=0, atol=0)
        torch.testing.assert_close(s["y"], frames[3:], rtol=0, atol=0)
        torch.testing.assert_close(s["params"], p, rtol=0, atol=0)


def test_reanalysis_time_block_and_stride():
    ds = dataset().isel(trajectory=0).drop_vars("nu")
    sel = {"time": slice(3, 11)}
    win = ForecastWindows(ds, ["u", "t"], 2, 2, stride=3, selection=sel)
    assert len(win) == 2  # starts 0 and 3 of 8 frames
    for i in range(len(win)):
        _, t0 = win.locate(i)
        frames, _ = reference(ds, ["u", "t"], sel, None, t0, 4)
        torch.testing.assert_close(torch.cat([win[i]["x"], win[i]["y"]]), frames)


def test_a_batch_equals_its_samples_and_collates_without_copying():
    ds = dataset()
    win = ForecastWindows(ds, ["u", "t"], 3, 2, params=["nu"])
    picks = [7, 0, 33, 12]
    batch = win.__getitems__(picks)
    assert isinstance(batch, WindowBatch) and len(batch) == 4
    assert collate_windows(batch) is batch.batched
    assert batch.batched["x"].shape == (4, 3, 3, 4, 5) and batch.batched["mask"].shape == (
        4,
        3,
        4,
        5,
    )
    for b, i in enumerate(picks):
        for key, value in win[i].items():
            torch.testing.assert_close(batch.batched[key][b], value, rtol=0, atol=0)
    # torch's own collation of the same list gives the same batch
    default = collate_windows(list(batch))
    for key in default:
        torch.testing.assert_close(default[key], batch.batched[key])
    loaded = next(iter(DataLoader(win, batch_size=5, collate_fn=collate_windows)))
    torch.testing.assert_close(loaded["y"], torch.stack([win[i]["y"] for i in range(5)]))


@pytest.mark.parametrize(
    ("chunks", "blocks"),
    [
        ({"trajectory": 1, "time": 4}, 3 * 3),  # 3 trajectories x 3 time chunks
        ({"trajectory": 3, "time": 5}, 2 * 3),  # 2 trajectory chunks (0, 2 | 5) x 3
    ],
)
def test_out_of_core_store_reads_each_chunk_once_in_order(tmp_path, chunks, blocks):
    from physforecast.data.formats import open_any

    ds = dataset(n_traj=6, n_time=12)
    path = tmp_path / "store.zarr"
    ds.chunk(chunks).to_zarr(path, zarr_format=2, consolidated=True)
    lazy = open_any(path, mask="none")
    sel = {"trajectory": np.array([0, 2, 5])}
    win = ForecastWindows(lazy, ["u", "t"], 3, 2, selection=sel, params=["nu"], cache_mb=64)
    eager = ForecastWindows(ds, ["u", "t"], 3, 2, selection=sel, params=["nu"])
    for i in range(len(win)):
        for key, value in eager[i].items():
            torch.testing.assert_close(win[i][key], value, rtol=0, atol=0)
    # visiting the windows in order keeps every stored chunk they touch once (per variable)
    cache = win.cache
    assert len(cache._items) == 2 * blocks and cache.hits > cache.misses
    # a cache of almost nothing still gives the same windows (it only reads more)
    small = ForecastWindows(lazy, ["u", "t"], 3, 2, selection=sel, params=["nu"], cache_mb=1e-4)
    for i in (0, len(small) // 2, len(small) - 1):
        torch.testing.assert_close(small[i]["y"], eager[i]["y"], rtol=0, atol=0)
    assert small.cache.nbytes <= max(b.nbytes for b in small.cache._items.values())


def test_lazy_splits_share_one_bounded_cache(tmp_path, monkeypatch):
    """Every lazy split of a process reads through one cache: together they keep at most
    its budget of decoded blocks, and each split still gets its own frames back."""
    from physforecast.data import windows as windows_module
    from physforecast.data.formats import open_any

    ds = dataset(n_traj=6, n_time=12)
    path = tmp_path / "store.zarr"
    ds.chunk({"trajectory": 1, "time": 4}).to_zarr(path, zarr_format=2, consolidated=True)
    lazy = open_any(path, mask="none")
    block = 4 * int(np.prod([ds.sizes[d] for d in ("y", "x")])) * ds["u"].dtype.itemsize
    monkeypatch.setattr(windows_module, "SHARED_CACHE_MB", 5.5 * block / 2**20)
    monkeypatch.setattr(windows_module, "_shared", None)
    splits = [np.array([0, 1]), np.array([2, 3]), np.array([4, 5])]
    lazy_splits = [ForecastWindows(lazy, ["u"], 3, 2, selection={"trajectory": s}) for s in splits]
    shared = lazy_splits[0].cache
    assert all(w.cache is shared for w in lazy_splits)
    for sel, win in zip(splits, lazy_splits):
        eager = ForecastWindows(ds, ["u"], 3, 2, selection={"trajectory": sel})
        for i in range(len(win)):
            torch.testing.assert_close(win[i]["y"], eager[i]["y"], rtol=0, atol=0)
    assert 0 < shared.nbytes <= 5.5 * block


def test_reading_a_window_copies_no_more_than_the_window():
    """Reading windows slices their frames: no copy of the split (which an isel of a
    trajectory array makes), so the memory a batch needs does not grow with the split."""
    import tracemalloc

    ds = dataset(n_traj=256, n_time=20, h=16, w=16)
    split_bytes = sum(ds[v].nbytes for v in ("u", "t"))
    win = ForecastWindows(ds, ["u", "t"], 4, 4, selection={"trajectory": np.arange(256)})
    picks = np.random.default_rng(0).integers(0, len(win), 20)
    win.batch(picks[:2])  # warm up (index tables, lazy attributes)
    tracemalloc.start()
    try:
        win.batch(picks)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    window_bytes = 20 * 8 * win.channels * 16 * 16 * 4  # 20 windows of 8 frames, float32
    assert split_bytes > 30 * window_bytes
    assert peak < 4 * window_bytes  # a copy of the split would be > 30x
