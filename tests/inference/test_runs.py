"""A students run directory: a run of the ``students`` method, loaded back as a Forecaster
that forecasts, rolls out and scores like any other; the ``distill`` and ``serve`` commands."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import physforecast as pf
from physforecast.data.prepare import prepare_data
from physforecast.forecast import forecast_windows
from physforecast.inference.accuracy import compare_students
from physforecast.inference.ensemble import StudentEnsemble
from physforecast.inference.runs import (
    build_student_model,
    distill_run,
    is_students_run,
    load_student_model,
    load_students,
)
from physforecast.metrics import score
from physforecast.run_dir import RunDir


def test_a_students_run_is_a_run_of_the_students_method(students_run, tiny_run):
    assert is_students_run(students_run) and not is_students_run(tiny_run)
    run, teacher = RunDir(students_run), RunDir(tiny_run)
    cfg = run.read_config()
    assert cfg.method == "students" and cfg.students.teacher == str(tiny_run)
    assert run.read_data_spec() == teacher.read_data_spec()
    assert run.read_normalizer() == teacher.read_normalizer()  # the same training split
    spec = run.read_model_spec()
    assert spec["n_students"] == 3 and spec["student"]["depth"] == 2
    assert spec["stacked"] is True and spec["teacher"]["name"] == "fno"  # FNO exposes its latent
    record = json.loads(run.file("students.json").read_text())
    losses = record["losses"]
    assert len(losses) == 4 and all(a >= b for a, b in zip(losses, losses[1:]))
    stages = {r["stage"] for r in run.read_metrics()}
    assert stages == {"student-1", "student-2", "student-3"}
    rows = json.loads(run.file("students_eval.json").read_text())["rows"]
    assert [r["n_active"] for r in rows] == [None, 1, 2, 3]
    assert rows[0]["rmse_vs_teacher"] == 0.0
    assert (students_run / "scorecard.json").exists()  # scored like any run


def test_load_students_is_a_forecaster_with_the_teachers_contract(students_run, tiny_run, tiny_ds):
    fc = load_students(students_run)
    teacher = pf.load(tiny_run)
    assert isinstance(fc, pf.Forecaster) and isinstance(fc.model, StudentEnsemble)
    assert (fc.variables, fc.in_steps, fc.out_steps, fc.grid) == (
        teacher.variables,
        teacher.in_steps,
        teacher.out_steps,
        teacher.grid,
    )
    forecast = pf.predict(fc, tiny_ds)
    assert forecast["vorticity"].shape == (6, 2, 32, 32)
    rolled = pf.rollout(fc, tiny_ds, 6, init=5)
    assert rolled.sizes["lead_time"] == 6 and np.isfinite(rolled["vorticity"].values).all()
    # the scorecard of the students, like any forecast
    card = rolled.physforecast.score(tiny_ds)
    assert np.isfinite(card["score"].sel(metric="rmse").values).all()
    # fewer students: a different, still sensible forecast
    one = load_students(students_run, n_active=1)
    assert one.model.n_active == 1
    assert not np.allclose(
        pf.predict(one, tiny_ds)["vorticity"].values, forecast["vorticity"].values
    )
    assert pf.load(students_run).model.n_students == 3
    assert not hasattr(pf.load(tiny_run).model, "n_students")


def test_students_score_on_the_test_split_like_any_model(students_run):
    fc = load_students(students_run)
    prepared = prepare_data(fc.config, fc.normalizer)
    forecast, truth = forecast_windows(fc.model, prepared.test, fc.normalizer)
    card = score(forecast, truth)
    assert np.isfinite(card["score"].sel(metric="rmse").values).all()
    teacher = pf.load(fc.config.students.teacher)
    rows = compare_students(teacher.model, fc.model, prepared.test, fc.normalizer)
    recorded = json.loads((students_run / "students_eval.json").read_text())["rows"]
    assert [r["rmse"] for r in rows] == pytest.approx([r["rmse"] for r in recorded], rel=1e-5)


def test_the_saved_spec_rebuilds_the_same_model(students_run, tiny_ds):
    run = RunDir(students_run)
    spec = run.read_model_spec()
    model = build_student_model(spec)
    model.load_state_dict(run.load_checkpoint("best")["model"])
    loaded = load_student_model(students_run)
    x = torch.randn(2, 2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded(x))
    with pytest.raises(ValueError, match="not a students spec"):
        build_student_model({**spec, "format": "other"})


def test_distilling_refuses_to_overwrite_or_to_write_over_the_teacher(students_run, tiny_run):
    with pytest.raises(FileExistsError, match="exists"):
        distill_run(tiny_run, out=students_run)
    with pytest.raises(ValueError, match="new directory"):
        distill_run(tiny_run, out=tiny_run, overwrite=True)
    with pytest.raises(ValueError, match="already a students run"):
        distill_run(students_run)
    with pytest.raises(FileNotFoundError, match="physforecast distill"):
        load_student_model(tiny_run)


def test_distill_command(tiny_run, tmp_path, capsys):
    from physforecast.cli import main

    out = tmp_path / "cli-students"
    argv = [
        "distill",
        str(tiny_run),
        "--students",
        "2",
        "--depth",
        "1",
        "--width",
        "4",
        "--epochs",
        "1",
    ]
    code = main([*argv, "--device", "cpu", "--out", str(out)])  # boosting on the forecast
    assert code == 0
    printed = capsys.readouterr().out
    assert f"students run: {out}" in printed and "students n_active=2" in printed
    spec = RunDir(out).read_model_spec()
    assert spec["stacked"] is False and spec["student"]["depth"] == 1 and spec["n_students"] == 2
    assert main([*argv, "--out", str(out)]) == 2  # exists: a clear error, not a traceback
    assert "exists" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_serve_command_serves_until_interrupted(students_run, tiny_ds):
    httpx = pytest.importorskip("httpx")
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "physforecast.cli",
        "serve",
        str(students_run),
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.5)
        assert health["model"] == "students"
        body = bytes(tiny_ds.to_netcdf())
        r = httpx.post(
            f"http://127.0.0.1:{port}/forecast",
            content=body,
            headers={"content-type": "application/x-netcdf"},
            timeout=60,
        )
        assert r.status_code == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_distilling_a_teacher_trained_on_many_processes(tiny_run, tmp_path):
    """The students train on one process: the teacher's DDP hook, averager, noise scale
    and FSDP settings (refused on one process) are not inherited."""
    import shutil

    teacher = tmp_path / "ddp-teacher"
    shutil.copytree(tiny_run, teacher)
    run = RunDir(teacher)
    cfg = run.read_config()
    cfg.train.comm_hook, cfg.train.comm_hook_options = "dlcp", {"loss_bound": 0.05}
    cfg.train.averaging, cfg.train.noise_scale = "none", True
    run.write_config(cfg)
    out, rows = distill_run(teacher, n_students=1, width=4, epochs=1, device="cpu")
    assert rows and RunDir(out).read_config().train.comm_hook == "allreduce"
