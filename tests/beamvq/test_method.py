"""The ``beamvq`` method end to end on a tiny file dataset: stages, rounds, reload, exact
resume after an interruption, evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import xarray as xr

import physforecast as pf
from physforecast.beamvq import method as beamvq_method
from physforecast.beamvq.context import PhysicsContext
from physforecast.beamvq.evaluation import (
    beamvq_report,
    evaluate_beamvq,
    format_evaluation,
    residual_by_lead,
)
from physforecast.beamvq.method import build_beamvq_model, epoch_split
from physforecast.config import Config, apply_overrides
from physforecast.data.prepare import prepare_data
from physforecast.run_dir import RunDir
from physforecast.training.distributed import launch_local
from physforecast.training.run import train


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
    path.mkdir(parents=True, exist_ok=True)
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
        "beamvq.scores": "{residual: 1.0, spectral: 0.5}",
        "beamvq.ensemble": 2,
        "out": str(tmp_path / "run"),
        **over,
    }
    return apply_overrides(Config(), [f"{k}={v}" for k, v in items.items()])


def test_beamvq_run_writes_stages_rounds_and_a_loadable_model(tmp_path):
    cfg = _cfg(tmp_path)
    run_dir = train(cfg, evaluate=False)
    run = RunDir(run_dir)
    prepared = prepare_data(cfg, run.read_normalizer())
    rounds = run.read_records("beamvq_rounds.jsonl")
    assert [r["round"] for r in rounds] == [0, 1]
    # the pool (pseudo=extend): per training trajectory of 7 frames, the one history
    # (frames 4, 5) whose 2-step future runs past the last frame; one best beam per
    # input, then the best half of those
    n_pool = len(prepared.train.selection["trajectory"]) * 1
    assert rounds[1]["pool"] == "extend" and rounds[1]["pool_windows"] == n_pool
    assert rounds[1]["candidates"] == n_pool * 2
    assert rounds[1]["kept"] == round(0.5 * n_pool)
    assert "eval_beamvq_rmse" in rounds[1]
    stages = [r["stage"] for r in run.read_metrics()]
    assert stages == ["backbone", "backbone", "head", "round-1"]  # 4 = 2 + 1 head + 1 round
    for stage in ("backbone", "head", "round-1"):
        assert run.checkpoint_path("last", stage).exists()
    # the run's model reloads through its method, physics and all
    fc = pf.load(run_dir)
    ctx = fc.model.context_fn
    assert isinstance(ctx, PhysicsContext) and int(ctx.vort_index) == 0
    assert math.isclose(float(ctx.viscosity), 1e-3, rel_tol=1e-6) and bool(ctx.ns2d_forcing)
    batch = next(iter(torch.utils.data.DataLoader(prepared.test, batch_size=4)))
    state = run.load_checkpoint("best")["model"]
    again = build_beamvq_model(cfg, run.read_model_spec(), example_size=(16, 16))
    again.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(fc.model(batch["x"]), again.eval()(batch["x"]))
    # side-by-side evaluation
    res = evaluate_beamvq(fc.model, torch.utils.data.DataLoader(prepared.test, batch_size=4))
    kinds = {"base", "top1", "top1_blocks", "beamvq", "bestofk", "truth", "summary"}
    assert set(res) == kinds
    assert len(res["beamvq"]["rmse"]) == 2 and len(res["beamvq"]["ssim"]) == 2
    assert "frmse_high" not in res["beamvq"]  # 16x16 is too small for the high band
    # best of K by the truth is never worse than top-1 (top-1 is one of the K)
    overall = lambda kind: sum(v * v for v in res[kind]["rmse"])  # noqa: E731
    assert overall("bestofk") <= overall("top1") + 1e-12
    assert res["summary"]["diversity_gain"][0] >= 0
    table = format_evaluation({k: v for k, v in res.items() if k != "summary"})
    assert "| rmse | beamvq |" in table and "| vorticity_residual | truth |" in table
    report = beamvq_report(fc.model, res, windows=len(prepared.test))
    header = "| RMSE | backbone | top-1 | top-1 in blocks | beam (BeamVQ) | best-of-K by truth |"
    assert header in report and "| lead 2 |" in report
    assert "block(s) of [1, 1] lead times" in report and "reference-free score" in report
    same = res["summary"]["beam_equals_top1"][0]
    assert ("EQUALS the top-1" in report) == (same >= 1.0)


def test_killed_after_the_head_stage_and_resumed_ends_with_the_same_weights(tmp_path, monkeypatch):
    whole = train(_cfg(tmp_path / "a", out=str(tmp_path / "a" / "run")), evaluate=False)

    class Killed(RuntimeError):
        pass

    def killed(*args, **kwargs):
        raise Killed("interrupted after the head stage")

    cfg = _cfg(tmp_path / "b", out=str(tmp_path / "b" / "run"))
    with monkeypatch.context() as patch:
        patch.setattr(beamvq_method, "run_self_training", killed)
        with pytest.raises(Killed):
            train(cfg, evaluate=False)
    part = RunDir(cfg.out)
    assert (
        part.checkpoint_path("last", "head").exists() and not part.checkpoint_path("best").exists()
    )
    resumed = train(part.read_config(), resume=cfg.out, evaluate=False)
    want, got = (
        RunDir(whole).load_checkpoint("best")["model"],
        RunDir(resumed).load_checkpoint("best")["model"],
    )
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key
    # the resumed run's logs hold each stage's epochs once
    stages = [(r["stage"], r["epoch"]) for r in RunDir(resumed).read_metrics()]
    assert stages == [("backbone", 1), ("backbone", 2), ("head", 1), ("round-1", 1)]


def test_unfiltered_when_no_scores(tmp_path):
    cfg = _cfg(tmp_path, **{"beamvq.scores": "{}", "beamvq.width": 3})
    run_dir = train(cfg, evaluate=False)
    rounds = RunDir(run_dir).read_records("beamvq_rounds.jsonl")
    # all K candidates of every pool input are kept, as in the public code
    assert rounds[1]["kept"] == rounds[1]["candidates"] == 3 * rounds[1]["pool_windows"]
    assert pf.load(run_dir).model.inference_score is None


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
    small = build_beamvq_model(cfg, spec, example_size=(16, 16))
    cfg.beamvq.head = {"hidden": 64}  # default 32
    big = build_beamvq_model(cfg, spec, example_size=(16, 16))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(big) > count(small)


def test_truth_residual_with_a_viscosity_per_sample():
    # evaluate_beamvq's residual when the viscosity comes from cond, one value per sample
    from physforecast import metrics as M
    from physforecast.search.scores import PhysicsSpec, ScoreContext

    gen = torch.Generator().manual_seed(0)
    hist = torch.randn(3, 2, 1, 16, 16, generator=gen)
    pred = torch.randn(3, 2, 1, 16, 16, generator=gen)
    nu = torch.tensor([1e-2, 1e-3, 1e-4])
    spec = PhysicsSpec(dx=1 / 16, dy=1 / 16, dt=0.5, viscosity=nu, vorticity=0, forcing="ns2d")
    got = residual_by_lead(pred, hist, ScoreContext(history=hist, physics=spec))
    seq = torch.cat([hist[:, -1:], pred], 1)[:, :, 0]
    want = sum(
        M.ns_vorticity_residual(
            seq[i], dx=1 / 16, dy=1 / 16, dt=0.5, nu=float(nu[i]), forcing="ns2d"
        )[1:].pow(2)
        for i in range(3)
    )
    torch.testing.assert_close(got, want)


def _ddp_beamvq_worker(rank: int, world: int, tmp: str) -> dict:
    from pathlib import Path

    from physforecast import methods

    saved = {}
    original = methods.RunContext.save_model

    def keep(self, model, **extra):  # every rank's final weights, for the comparison
        saved.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        original(self, model, **extra)

    methods.RunContext.save_model = keep
    cfg = apply_overrides(
        Config(), [f"data.dataset={Path(tmp) / 'toy.nc'}", *DDP_OVERRIDES, f"out={tmp}/run"]
    )
    train(cfg, evaluate=False)
    methods.RunContext.save_model = original
    return {k: v.tolist() for k, v in saved.items()}


DDP_OVERRIDES = [
    "data.in_steps=2",
    "data.out_steps=2",
    "data.batch_size=4",
    "data.split=[0.5, 0.25, 0.25]",
    "model.options={modes: 4, hidden: 8, n_layers: 1}",
    "train.epochs=4",
    "train.device=cpu",
    "method=beamvq",
    "beamvq.num_codes=16",
    "beamvq.code_dim=8",
    "beamvq.top_k=3",
    "beamvq.width=2",
    "beamvq.rounds=1",
    "beamvq.epochs_per_round=1",
]


def test_two_gloo_processes_write_each_file_once_and_agree(tmp_path):
    _dataset(tmp_path)
    results = launch_local(
        _ddp_beamvq_worker, 2, (str(tmp_path),), timeout=300, start_method="fork"
    )
    assert results[0].keys() == results[1].keys()
    for key in results[0]:
        assert results[0][key] == results[1][key], key  # parameters and code-bank buffers
    run = RunDir(tmp_path / "run")
    records = [(r["stage"], r["epoch"]) for r in run.read_metrics()]
    assert records == [("backbone", 1), ("backbone", 2), ("head", 1), ("round-1", 1)]
    assert [r["round"] for r in run.read_records("beamvq_rounds.jsonl")] == [0, 1]
    assert run.checkpoint_path("best").exists() and run.checkpoint_path("last", "head").exists()
