"""The ``physforecast`` command end to end on a tiny ns2d run."""

from __future__ import annotations

import json

import pytest
import torch
import xarray as xr
import yaml

from physforecast.cli import main

TINY = [
    "data.options.n_trajectories=6",
    "data.options.n_steps=10",
    "data.options.size=16",
    "data.in_steps=3",
    "data.out_steps=2",
    "data.batch_size=8",
    "model.options.hidden=8",
    "model.options.modes=4",
    "model.options.n_layers=2",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--epochs", "2", "--out", str(out), "--set", *TINY]) == 0
    return out


def test_run_directory_is_complete(run_dir):
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "normalization.json",
        "model.json",
        "scorecard.json",
        "scorecard.nc",
        "forecasts.nc",
    ):
        assert (run_dir / name).exists(), name
    for name in ("last.pt", "best.pt"):
        state = torch.load(run_dir / "checkpoints" / name, weights_only=True)
        assert state["epoch"] >= 1 and json.loads(state["config"])["data"]["in_steps"] == 3
    assert sorted(p.name for p in (run_dir / "plots").iterdir()) == [
        "error_vs_lead.png",
        "forecast_panel.png",
    ]
    card = json.loads((run_dir / "scorecard.json").read_text())
    assert card["lead_time"] == [1, 2]
    for metric in ("rmse", "rel_l2", "ns_vorticity_residual"):  # rel_l2 is PDEBench's nRMSE
        per_lead = card["metrics"][metric]["variables"]["vorticity"]["by_lead_time"]
        assert len(per_lead) == 2 and all(v > 0 for v in per_lead), metric
    data = json.loads((run_dir / "data.json").read_text())
    assert (
        data["shape"] == [16, 16]
        and data["variables"] == ["vorticity"]
        and data["system"] == "ns2d"
    )
    fc = xr.open_dataset(run_dir / "forecasts.nc")
    assert fc.vorticity.dims == ("sample", "lead_time", "y", "x") and fc.sizes["lead_time"] == 2
    assert fc.vorticity.attrs["units"] == "s-1"


def test_evaluate_rescoring_is_reproducible(run_dir, capsys):
    before = xr.open_dataset(run_dir / "scorecard.nc").load()
    assert main(["evaluate", str(run_dir)]) == 0
    assert "rmse" in capsys.readouterr().out
    after = xr.open_dataset(run_dir / "scorecard.nc").load()
    xr.testing.assert_allclose(before["score"], after["score"])


def test_resume_continues_to_more_epochs(run_dir):
    assert main(["train", "--resume", str(run_dir)]) == 0  # already done: no more epochs

    def epochs():
        return [
            json.loads(x)["epoch"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()
        ]

    assert epochs() == [1, 2]
    assert main(["train", "--resume", str(run_dir), "--epochs", "3"]) == 0
    assert epochs() == [1, 2, 3]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["epochs"] == 3


def test_unknown_key_is_a_clear_cli_error(capsys):
    assert main(["train", "--set", "train.epoch=3"]) == 2
    assert "Did you mean 'epochs'" in capsys.readouterr().err


def test_unknown_backbone_and_dataset(capsys, tmp_path):
    assert main(["train", "--backbone", "fnoo", "--out", str(tmp_path / "r"), "--set", *TINY]) == 2
    assert "Did you mean 'fno'" in capsys.readouterr().err
    assert main(["train", "--dataset", "nope.nc", "--out", str(tmp_path / "r2")]) == 2
    assert "neither a registered dataset" in capsys.readouterr().err


def test_list_datasets(capsys):
    assert main(["list", "datasets"]) == 0
    assert "ns2d" in capsys.readouterr().out


def test_generate_writes_netcdf(tmp_path):
    out = tmp_path / "ns.nc"
    assert (
        main(
            [
                "generate",
                "ns2d",
                "--out",
                str(out),
                "--set",
                "n_trajectories=2",
                "n_steps=2",
                "size=16",
                "progress=false",
            ]
        )
        == 0
    )
    ds = xr.open_dataset(out)
    assert ds.vorticity.shape == (2, 2, 16, 16)
    assert [p.name for p in tmp_path.iterdir()] == ["ns.nc"]


def test_beamvq_method_end_to_end(tmp_path, capsys):
    out = tmp_path / "bvq"
    args = ["train", "--method", "beamvq", "--epochs", "3", "--out", str(out), "--set", *TINY]
    args += [
        "beamvq.num_codes=16",
        "beamvq.code_dim=8",
        "beamvq.top_k=3",
        "beamvq.width=2",
        "beamvq.rounds=1",
        "beamvq.epochs_per_round=1",
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "BeamVQ on the test split" in text and "best-of-K" in text
    result = json.loads((out / "beamvq_eval.json").read_text())
    assert {"base", "top1", "top1_blocks", "beamvq", "bestofk", "summary"} <= set(result)
    assert len(result["beamvq"]["rmse"]) == 2  # one value per lead time
    assert (out / "beamvq_rounds.jsonl").exists()


def test_set_accumulates_whether_repeated_or_listed():
    from physforecast.cli import build_parser

    args = build_parser().parse_args(
        ["train", "--set", "train.lr=1e-3", "--set", "train.seed=3", "data.stride=2"]
    )
    assert args.set == ["train.lr=1e-3", "train.seed=3", "data.stride=2"]
    from physforecast.cli import _config_from_args

    cfg = _config_from_args(args)
    assert (cfg.train.lr, cfg.train.seed, cfg.data.stride) == (1e-3, 3, 2)


def test_method_choices_come_from_the_registry(capsys):
    from physforecast.registry import METHODS

    assert {"supervised", "beamvq"} <= set(METHODS.names())
    with pytest.raises(SystemExit):
        main(["train", "--method", "beamvqq"])
    assert "invalid choice: 'beamvqq'" in capsys.readouterr().err
    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    assert "beamvq" in out and "--set beamvq.<key>" in out and "supervised" in out
