"""RunDir: the run directory's names, atomic writes, logs, and what a non-writing rank does."""

from __future__ import annotations

import json

import pytest
import torch

from physforecast.atomic import atomic_write, atomic_write_json
from physforecast.config import Config, apply_overrides
from physforecast.data.layout import ChannelLayout
from physforecast.data.normalization import Normalizer
from physforecast.data.spec import DataSpec
from physforecast.run_dir import RunDir


def spec() -> DataSpec:
    layout = ChannelLayout(["u", "t"], [[], [("level", 2)]], ("y", "x"), (8, 8))
    return DataSpec(layout, ["viscosity"], 3, 2, "toy", {"dx": 0.125})


def test_files_round_trip_through_their_one_owner(tmp_path):
    run = RunDir(tmp_path / "run")
    cfg = apply_overrides(Config(), ["train.epochs=3", "model.backbone=unet"])
    run.write_config(cfg)
    run.write_model_spec({"name": "unet", "in_steps": 3})
    run.write_data_spec(spec())
    norm = Normalizer(["u", "t"], [0.0, 1.0, 2.0], [1.0, 1.0, 1.0], channels=["u", "t0", "t1"])
    run.write_normalizer(norm)
    assert run.exists() and run.require() is run
    assert run.read_config().train.epochs == 3 and run.read_config().model.backbone == "unet"
    assert run.read_model_spec() == {"name": "unet", "in_steps": 3}
    back = run.read_data_spec()
    assert back == spec() and back.in_channels == 3
    assert run.read_normalizer() == norm
    assert run.checkpoint_path("best") == tmp_path / "run" / "checkpoints" / "best.pt"
    assert (
        run.checkpoint_path("last", "head") == tmp_path / "run" / "checkpoints" / "head" / "last.pt"
    )
    assert run.plot_path("panel") == tmp_path / "run" / "plots" / "panel.png"
    run.save_checkpoint({"model": {"w": torch.ones(2)}}, "last", "head")
    assert torch.equal(run.load_checkpoint("last", "head")["model"]["w"], torch.ones(2))
    with pytest.raises(FileNotFoundError, match=r"no checkpoint 'best'.*found \['last'\]"):
        run.load_checkpoint("best", "head")
    leftovers = [p.name for p in (tmp_path / "run").rglob(".*.tmp*")]
    assert leftovers == []


def test_logs_append_trim_and_survive_a_torn_line(tmp_path):
    run = RunDir(tmp_path)
    for stage, epoch in [("a", 1), ("a", 2), ("b", 1), ("b", 2)]:
        run.append_metrics({"stage": stage, "epoch": epoch})
    with open(tmp_path / RunDir.METRICS, "a") as fh:
        fh.write('{"stage": "b", "ep')  # a crash in the middle of a write
    assert len(run.read_metrics()) == 4
    run.keep_metrics(lambda r: not (r["stage"] == "b" and r["epoch"] > 1))
    assert [(r["stage"], r["epoch"]) for r in run.read_metrics()] == [("a", 1), ("a", 2), ("b", 1)]
    run.reset_metrics()
    assert run.read_metrics() == []


def test_a_non_writing_rank_writes_nothing(tmp_path):
    run = RunDir(tmp_path / "rank1", writer=False)
    run.write_config(Config())
    run.write_json("report.json", {"a": 1})
    run.append_metrics({"epoch": 1})
    run.save_checkpoint({"model": {}}, "last")
    run.write_data_spec(spec())
    assert not (tmp_path / "rank1").exists()


def test_not_a_run_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        RunDir(tmp_path).read_config()
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        RunDir(tmp_path).read_model_spec()


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = atomic_write_json(tmp_path / "a.json", {"v": 1})

    def broken(tmp):
        tmp.write_text('{"v": 2')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    # directories (zarr stores) are replaced whole
    store = tmp_path / "s.zarr"
    atomic_write(store, lambda tmp: (tmp.mkdir(), (tmp / "x").write_text("1")))
    atomic_write(store, lambda tmp: (tmp.mkdir(), (tmp / "y").write_text("2")))
    assert sorted(p.name for p in store.iterdir()) == ["y"]
