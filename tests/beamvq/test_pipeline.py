"""train_beamvq / evaluate_beamvq on a tiny file dataset, through the run's prepare()."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import xarray as xr

from physforecast.beamvq.pipeline import (
    PhysicsContext,
    build_beamvq_model,
    epoch_split,
    evaluate_beamvq,
    format_evaluation,
    train_beamvq,
)
from physforecast.config import Config, apply_overrides, save_config


def _dataset(path) -> str:
    rng = np.random.default_rng(0)
    n, t, s = 6, 7, 16
    g = np.arange(s) / s
    y, x = np.meshgrid(g, g, indexing="ij")
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1, 1))
    time = np.arange(t)[None, :, None, None]
    w = np.sin(2 * np.pi * (x + 0.1 * time) + phase) + 0.3 * np.cos(4 * np.pi * y)[None, None]
    ds = xr.Dataset(
        {
            "vorticity": (
                ("trajectory", "time", "y", "x"),
                w.astype("float32"),
                {"units": "s-1", "long_name": "vorticity"},
            ),
            "viscosity": (
                ("trajectory",),
                np.full(n, 1e-3),
                {"units": "m2 s-1", "long_name": "viscosity"},
            ),
        },
        coords={"trajectory": np.arange(n), "time": np.arange(t, dtype=float), "y": g, "x": g},
        attrs={
            "system": "ns2d",
            "dx": 1 / s,
            "dy": 1 / s,
            "dt": 1.0,
            "boundary_conditions": "periodic",
            "parameters": "viscosity",
            "forcing": "0.1*(sin(2*pi*(x+y)) + cos(2*pi*(x+y)))",
        },
    )
    out = path / "toy.nc"
    ds.to_netcdf(out)
    return str(out)


def _cfg(tmp_path, **over) -> Config:
    items = {
        "data.dataset": _dataset(tmp_path),
        "data.in_steps": 2,
        "data.out_steps": 2,
        "data.batch_size": 8,
        "data.split": "[0.5, 0.25, 0.25]",
        "model.backbone": "fno",
        "model.options": "{modes: 4, hidden: 8, n_layers: 2}",
        "train.epochs": 4,
        "train.device": "cpu",
        "method": "beamvq",
        "beamvq.num_codes": 16,
        "beamvq.code_dim": 8,
        "beamvq.top_k": 3,
        "beamvq.width": 2,
        "beamvq.rounds": 1,
        "beamvq.epochs_per_round": 1,
        "beamvq.scores": "{rmse: 1.0, vorticity_residual: 0.5}",
        "beamvq.ensemble": 2,
        "out": str(tmp_path / "run"),
        **over,
    }
    return apply_overrides(Config(), [f"{k}={v}" for k, v in items.items()])


def test_train_beamvq_writes_rounds_and_a_loadable_model(tmp_path):
    from physforecast.training.run import load_run, model_spec, prepare

    cfg = _cfg(tmp_path)
    prepared = prepare(cfg)
    run_dir = tmp_path / "run"
    model = train_beamvq(cfg, prepared, run_dir)
    rounds = [
        json.loads(line) for line in (run_dir / "beamvq_rounds.jsonl").read_text().splitlines()
    ]
    assert [r["round"] for r in rounds] == [0, 1]
    # one best beam per window, then the best half of those
    n_train = len(prepared.train)
    assert rounds[1]["candidates"] == n_train * 2
    assert rounds[1]["kept"] == round(0.5 * n_train)
    assert "eval_beamvq_rmse" in rounds[1]
    stages = [
        json.loads(line)["stage"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert stages == ["backbone", "backbone", "head"]  # 4 epochs = 2 + 1 head + 1 round
    # physics travel with the model
    ctx = model.context_fn
    assert isinstance(ctx, PhysicsContext) and int(ctx.vort_index) == 0
    assert math.isclose(float(ctx.viscosity), 1e-3, rel_tol=1e-6) and bool(ctx.ns2d_forcing)
    # the checkpoint reloads into the same forecaster (run.train writes these three files)
    save_config(cfg, run_dir / "config.yaml")
    prepared.normalizer.save(run_dir / "normalization.json")
    (run_dir / "model.json").write_text(json.dumps(model_spec(cfg, prepared)))
    loaded, _, _ = load_run(run_dir)
    batch = next(iter(torch.utils.data.DataLoader(prepared.test, batch_size=4)))
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch["x"]), model(batch["x"]))
    # side-by-side evaluation
    res = evaluate_beamvq(model, torch.utils.data.DataLoader(prepared.test, batch_size=4))
    assert set(res) == {"base", "top1", "beamvq", "truth"}
    assert len(res["beamvq"]["rmse"]) == 2 and len(res["beamvq"]["ssim"]) == 2
    assert "frmse_high" not in res["beamvq"]  # 16x16 is too small for the high band
    table = format_evaluation(res)
    assert "| rmse | beamvq |" in table and "| vorticity_residual | truth |" in table


def test_unfiltered_when_no_scores(tmp_path):
    from physforecast.training.run import prepare

    cfg = _cfg(tmp_path, **{"beamvq.scores": "{}", "beamvq.width": 3})
    prepared = prepare(cfg)
    model = train_beamvq(cfg, prepared, tmp_path / "run")
    rounds = [
        json.loads(x) for x in (tmp_path / "run" / "beamvq_rounds.jsonl").read_text().splitlines()
    ]
    # all K candidates of every window are kept, as in the public code
    assert rounds[1]["kept"] == rounds[1]["candidates"] == 3 * len(prepared.train)
    assert model.score is None


def test_epoch_split_checks_the_budget():
    cfg = Config()
    cfg.train.epochs, cfg.beamvq.rounds, cfg.beamvq.epochs_per_round = 10, 2, 2
    assert epoch_split(cfg) == (4, 2, 2)
    cfg.beamvq.head_epochs = 3
    assert epoch_split(cfg) == (3, 3, 2)
    cfg.train.epochs = 4
    with pytest.raises(ValueError, match="train.epochs=4 is too few"):
        epoch_split(cfg)


def test_head_options_come_from_the_config():
    cfg = Config()
    cfg.beamvq.num_codes, cfg.beamvq.code_dim = 8, 4
    spec = {"name": "fno", "in_steps": 2, "out_steps": 2, "in_channels": 1, "modes": 4, "hidden": 8}
    small = build_beamvq_model(cfg, spec)
    cfg.beamvq.head = {"hidden": 64}  # default 32
    big = build_beamvq_model(cfg, spec)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(big) > count(small)


def test_truth_residual_with_a_viscosity_per_sample():
    # evaluate_beamvq's residual when the viscosity comes from cond, one value per sample
    from physforecast import metrics as M
    from physforecast.beamvq.pipeline import _residual
    from physforecast.search.scores import PhysicsSpec, ScoreContext

    gen = torch.Generator().manual_seed(0)
    hist = torch.randn(3, 2, 1, 16, 16, generator=gen)
    pred = torch.randn(3, 2, 1, 16, 16, generator=gen)
    nu = torch.tensor([1e-2, 1e-3, 1e-4])
    spec = PhysicsSpec(dx=1 / 16, dy=1 / 16, dt=0.5, viscosity=nu, vorticity=0, forcing="ns2d")
    got = _residual(pred, hist, ScoreContext(history=hist, physics=spec))
    seq = torch.cat([hist[:, -1:], pred], 1)[:, :, 0]
    want = sum(
        M.ns_vorticity_residual(
            seq[i], dx=1 / 16, dy=1 / 16, dt=0.5, nu=float(nu[i]), forcing="ns2d"
        )[1:].pow(2)
        for i in range(3)
    )
    torch.testing.assert_close(got, want)
