"""The ``stpad`` method end to end: stages, ensembles in the scorecard and forecasts,
OOD side by side, exact resume, config checks."""

from __future__ import annotations

import json

import pytest
import torch
import xarray as xr
from stpad_helpers import tiny_cfg

import physforecast as pf
from physforecast.cli import main
from physforecast.errors import ConfigError
from physforecast.run_dir import RunDir
from physforecast.stpad import method as stpad_method
from physforecast.training.run import train


def test_stpad_run_scores_ensembles_in_and_out_of_distribution(tmp_path, capsys):
    cfg = tiny_cfg(tmp_path, **{"data.ood": "{param: viscosity, train_range: [5.0e-4, 2.0e-3]}"})
    run = train(cfg)
    out = capsys.readouterr().out
    assert "crps" in out and "in and out of distribution" in out and "rank histograms" in out
    rd = RunDir(run)
    stages = {r["stage"] for r in rd.read_metrics()}
    assert stages == {"upstream", "diffusion"}
    card = json.loads((run / "scorecard.json").read_text())
    assert {"crps", "spread_skill_ratio", "ns_vorticity_residual"} <= set(card["metrics"])
    with xr.open_dataset(run / "forecasts.nc") as fc:
        assert fc["vorticity"].sizes["member"] == 3
    ood = json.loads((run / "scorecard_ood.json").read_text())
    assert "crps" in ood["test_ood"]["metrics"]
    assert (run / "plots" / "ensemble.png").stat().st_size > 0
    hist = json.loads((run / "stpad_eval.json").read_text())["test"]["rank_histogram"]
    assert len(hist) == 4 and sum(hist) == pytest.approx(1.0)
    # the loaded model forecasts ensembles; a rollout of N members has a member dim
    fc = pf.load(run)
    ds = xr.open_dataset(cfg.data.dataset).load()
    ens = pf.rollout(fc, ds.isel(trajectory=[0, 1]), 4, init=3, members=2)
    assert ens["vorticity"].sizes["member"] == 2 and ens.sizes["lead_time"] == 4
    assert not ens["vorticity"].isel(member=0).equals(ens["vorticity"].isel(member=1))
    again = pf.rollout(fc, ds.isel(trajectory=[0, 1]), 4, init=3, members=2)
    xr.testing.assert_identical(ens, again)  # reproducible
    path = tmp_path / "ens.nc"
    main(["forecast", str(run), "--out", str(path), "--members", "2", "--steps", "2"])
    with xr.open_dataset(path) as written:
        assert written["vorticity"].sizes["member"] == 2


def test_deterministic_models_refuse_members(tmp_path):
    cfg = tiny_cfg(
        tmp_path,
        **{"method": "supervised", "model.options": "{modes: 4, hidden: 8, n_layers: 1}"},
    )
    run = train(cfg, evaluate=False)
    ds = xr.open_dataset(cfg.data.dataset).load()
    with pytest.raises(ValueError, match="stochastic"):
        pf.rollout(pf.load(run), ds, 2, members=2)


def test_killed_after_the_upstream_stage_and_resumed_ends_with_the_same_weights(
    tmp_path, monkeypatch
):
    over = {
        "train.epochs": 4,
        "stpad.upstream_epochs": 1,
        "stpad.self_train_rounds": 1,
        "stpad.scores": "{vorticity_residual: 1.0}",
        "stpad.width": 3,
        "stpad.candidates": 2,
    }
    whole = train(tiny_cfg(tmp_path / "a", **over), evaluate=False)

    class Killed(RuntimeError):
        pass

    def killed(*args, **kwargs):
        raise Killed("interrupted after the upstream stage")

    cfg = tiny_cfg(tmp_path / "b", **over)
    with monkeypatch.context() as patch:
        patch.setattr(stpad_method, "fit_latent_scale", killed)
        with pytest.raises(Killed):
            train(cfg, evaluate=False)
    part = RunDir(cfg.out)
    assert part.checkpoint_path("last", "upstream").exists()
    assert not part.checkpoint_path("best").exists()
    resumed = train(part.read_config(), resume=cfg.out, evaluate=False)
    want = RunDir(whole).load_checkpoint("best")["model"]
    got = RunDir(resumed).load_checkpoint("best")["model"]
    assert want.keys() == got.keys()
    for key in want:  # bit-identical (param_const holds NaN for "no constant")
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, equal_nan=True)
    stages = [(r["stage"], r["epoch"]) for r in RunDir(resumed).read_metrics()]
    assert stages == [("upstream", 1), ("diffusion", 1), ("diffusion", 2), ("selftrain-1", 1)]
    assert (RunDir(resumed).path / "stages" / "selftrain-1.pt").exists()


@pytest.mark.parametrize(
    "over, match",
    [
        ({"stpad.sampler": "euler"}, "stpad.sampler"),
        ({"stpad.block": 3}, "must divide"),
        ({"stpad.scores": "{rmse: 1.0}"}, "without the truth"),
        ({"stpad.constraints": "{pdee: 1.0}"}, "unknown name"),
        ({"train.epochs": 1}, "too few"),
    ],
)
def test_config_errors_before_anything_is_written(tmp_path, over, match):
    cfg = tiny_cfg(tmp_path, **over)
    with pytest.raises(ConfigError, match=match):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_flow_matching_with_the_dit_denoiser_trains_and_forecasts(tmp_path):
    over = {
        "stpad.sampler": "flow",
        "stpad.denoiser": "dit",
        "stpad.den_hidden": 16,
        "stpad.den_depth": 2,
        "stpad.den_heads": 2,
        "stpad.guidance": 2.0,
    }
    run = train(tiny_cfg(tmp_path, **over), evaluate=False)
    fc = pf.load(run)
    assert type(fc.model.denoiser).__name__ == "DiTLatentDenoiser"
    assert fc.model.process.kind == "flow" and fc.model.guidance == 2.0
    x = torch.randn(2, 2, 1, 16, 16)
    ens = fc.model.sample(x, torch.zeros(2, 1))
    assert ens.shape == (2, 3, 2, 1, 16, 16) and torch.isfinite(ens).all()
