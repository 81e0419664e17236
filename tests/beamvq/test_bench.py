"""The BeamVQ benchmark's smoke mode: every contender runs, the report says it is a smoke
run, the raw results have the structure the page is rendered from and finite numbers."""

from __future__ import annotations

import json
import math

import pytest

from physforecast.bench import beamvq

# seven small trainings (about 10 s on an idle core, a minute under load): not a default test
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "quick.json"
    res = beamvq.measure(beamvq.QUICK, results=path)
    return res, path


def _finite(part: dict) -> list[float]:
    vals = [v for m in part.values() for v in [m["mean"], *m["lead"]]]
    assert all(v is None or math.isfinite(v) for v in vals)
    return [v for v in vals if v is not None]


def test_quick_runs_every_contender_with_finite_metrics(quick):
    res, _ = quick
    setup = beamvq.QUICK
    kinds = {r["kind"] for r in res["runs"]}
    assert {"supervised", "supervised_wall", "beamvq"} <= kinds
    if res["keys"]["beamvq.quantizer"]:
        assert "beamvq_identity" in kinds
    for r in res["runs"]:
        assert r["seconds"] > 0 and r["params"] >= r["params_backbone"] > 0
        assert set(r["metrics"]) >= {"rmse", "ssim", "ns_vorticity_residual"}
        assert len(r["metrics"]["rmse"]["lead"]) == setup.out_steps
        _finite(r["metrics"])
        rmse = r["metrics"]["rmse"]
        assert rmse["mean"] > 0 and all(v > 0 for v in rmse["lead"])
        assert math.isclose(rmse["mean"], sum(rmse["lead"]) / len(rmse["lead"]), rel_tol=0.2)
        if r["kind"].startswith("beamvq"):
            assert r["params"] > r["params_backbone"]  # the head is counted
            _finite(r["top1"])
            _finite(r["base"])
            assert r["max_abs_beam_minus_top1"] is not None
            assert set(r["stages"]) >= {"backbone", "head"}
        else:
            assert r["params"] == r["params_backbone"]
    sup = next(r for r in res["runs"] if r["kind"] == "supervised")
    assert sup["stages"]["main"]["epochs"] <= setup.max_epochs
    # the wall-matched baseline was given the epochs that fit in BeamVQ's wall time
    wall = next(r for r in res["runs"] if r["kind"] == "supervised_wall")
    assert wall["overrides"][-1] == "train.patience=0"
    ablated = {(a["key"], a["value"]) for a in res["ablations"]}
    assert {("top_k", k) for k in setup.ablate_top_k} <= ablated
    assert {("width", w) for w in setup.ablate_width} <= ablated
    for a in res["ablations"]:
        _finite(a["metrics"])


def test_quick_report_says_smoke_and_regenerates_from_json(quick):
    res, path = quick
    text = beamvq.report(json.loads(path.read_text()))
    assert text.startswith("# BeamVQ benchmark")
    assert "Smoke run (`--quick`)" in text
    assert "Command: `physforecast bench beamvq --quick`" in text
    for kind in ("supervised", "supervised_wall", "beamvq"):
        assert f"| fno | {beamvq.KINDS[kind][1]} |" in text
    assert "## Data scarcity (ns2d, fno)" in text and "## Inference-only ablations (" in text
    assert "nan" not in text.lower().replace("nanmean", "")
    assert text == beamvq.report(res)  # the saved JSON renders the same page


def test_measure_reuses_saved_runs(quick):
    _, path = quick
    before = json.loads(path.read_text())
    again = beamvq.measure(beamvq.QUICK, results=path)
    assert [r["seconds"] for r in again["runs"]] == [r["seconds"] for r in before["runs"]]
