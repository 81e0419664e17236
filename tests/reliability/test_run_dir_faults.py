"""Ways to lose a run (issue 13), each refused before anything is written.

Every test breaks a private copy of the session's tiny run, or trains into a fresh
directory, and asserts what is on disk afterwards: the files a failed command must not
touch are byte for byte the same, and nothing half-written is left.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
from pathlib import Path

import pytest
import torch
from reliability_helpers import TINY, error_line, temporaries

from physforecast.atomic import (
    Terminated,
    atomic_write,
    remove_orphans,
    signals_as_exceptions,
    temporary_path,
)
from physforecast.cli import main
from physforecast.config import Config, apply_overrides
from physforecast.errors import ResumeError, RunDirInUseError, RunDirNotEmptyError
from physforecast.run_dir import RunDir, RunLock
from physforecast.training.run import train


def snapshot(run: Path) -> dict[str, bytes]:
    """The bytes of every file of a run (the lock file aside)."""
    return {
        str(p.relative_to(run)): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def tiny_cfg(out: Path, *extra: str) -> Config:
    return apply_overrides(Config(), [*TINY, "train.epochs=1", f"out={out}", *extra])


# -- a failed resume leaves the run as it was ----------------------------------------------


def test_resume_with_another_model_is_refused_and_the_run_still_works(run_copy, capsys):
    before = snapshot(run_copy)
    assert main(["train", "--resume", str(run_copy), "--set", "model.options.hidden=16"]) == 2
    line = error_line(capsys)
    assert "cannot change the model" in line and "hidden: 8 -> 16" in line
    assert snapshot(run_copy) == before  # model.json and config.yaml untouched
    # and the run is still whole: a plain resume trains on, evaluate scores it
    assert main(["train", "--resume", str(run_copy), "--epochs", "2"]) == 0
    err = capsys.readouterr().err
    assert "resuming training at epoch 2/2" in err
    assert [r["epoch"] for r in RunDir(run_copy).read_metrics()] == [1, 2]
    assert main(["evaluate", str(run_copy)]) == 0
    if sys.platform != "win32":  # written with the usual permissions (they were 0600)
        umask = os.umask(0)
        os.umask(umask)
        for name in ("scorecard.json", "scorecard.nc", "forecasts.nc", "config.yaml"):
            mode = stat.S_IMODE((run_copy / name).stat().st_mode)
            assert mode == 0o666 & ~umask, (name, oct(mode))


def test_corrupt_last_checkpoint_leaves_the_config_alone(run_copy, capsys):
    last = run_copy / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:200])  # truncated mid-file
    before = snapshot(run_copy)
    assert main(["train", "--resume", str(run_copy), "--epochs", "5"]) == 2
    line = error_line(capsys)
    assert "last.pt is corrupt or truncated" in line
    assert "best.pt is intact (epoch 1)" in line  # and what to do with it
    assert snapshot(run_copy) == before  # config.yaml still says epochs 1
    assert "epochs: 1" in (run_copy / "config.yaml").read_text()


def test_empty_checkpoint_and_no_good_sibling(run_copy, capsys):
    (run_copy / "checkpoints" / "last.pt").write_bytes(b"")
    (run_copy / "checkpoints" / "best.pt").write_bytes(b"not a checkpoint")
    assert main(["train", "--resume", str(run_copy)]) == 2
    line = error_line(capsys)
    assert "last.pt is empty (0 bytes)" in line and "best.pt is unreadable" in line
    assert main(["evaluate", str(run_copy)]) == 2
    assert "best.pt is corrupt or truncated" in error_line(capsys)


def test_resume_of_a_run_without_checkpoints_is_refused(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write_config(tiny_cfg(run.path))
    with pytest.raises(ResumeError, match="nothing to resume"):
        train(run.read_config(), resume=run.path)
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        train(tiny_cfg(tmp_path / "none"), resume=tmp_path / "none")


def test_resume_with_another_method_is_refused(run_copy):
    cfg = RunDir(run_copy).read_config()
    cfg.method = "beamvq"
    with pytest.raises(ResumeError, match="trained with method 'supervised'"):
        train(cfg, resume=run_copy)


# -- a run directory is never reused silently ------------------------------------------------


def test_a_second_run_into_a_run_directory_is_refused_unless_overwrite(run_copy, tmp_path):
    stale = run_copy / "plots" / "stale.png"
    stale.parent.mkdir(exist_ok=True)
    stale.write_bytes(b"old plot")
    before = snapshot(run_copy)
    cfg = tiny_cfg(run_copy)
    with pytest.raises(RunDirNotEmptyError, match="already holds a run.*--resume.*--overwrite"):
        train(cfg, evaluate=False)
    assert snapshot(run_copy) == before  # metrics.jsonl kept
    train(cfg, evaluate=False, overwrite=True)
    assert not stale.exists()  # nothing of the old run is left
    assert [r["epoch"] for r in RunDir(run_copy).read_metrics()] == [1]
    with pytest.raises(ValueError, match="--resume continues a run and --overwrite deletes"):
        train(cfg, resume=run_copy, overwrite=True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epochs", "0"], "train.epochs=0 is not valid: it must be >= 1"),
        (["--set", "train.device=cuda"] if not torch.cuda.is_available() else None, "no CUDA"),
        (["--method", "beamvq", "--epochs", "2"], "too few for BeamVQ"),
        (["--set", "model.options.hiden=8"], "Did you mean 'hidden'"),
        (["--set", "data.in_steps=20"], "each trajectory has 12 time steps"),
    ],
)
def test_early_failures_leave_no_run_directory(tmp_path, capsys, args, message):
    if args is None:
        pytest.skip("a GPU is present")
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--set", *TINY, *args]) == 2
    assert message in error_line(capsys)
    assert not out.exists()


def test_a_data_file_suffix_for_the_run_directory_is_refused(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "run.nc"), "--set", *TINY]) == 2
    assert "ends like a data file" in error_line(capsys)
    (tmp_path / "afile").write_text("x")
    assert main(["train", "--out", str(tmp_path / "afile"), "--set", *TINY]) == 2
    assert "is a file; a run directory goes there" in error_line(capsys)


def test_a_failure_after_the_first_checkpoint_keeps_the_run_for_resume(tmp_path, capsys):
    from physforecast.training import trainer as trainer_module

    out = tmp_path / "run"
    original = trainer_module.Trainer._run_epoch

    def second_epoch_fails(self, *args, **kwargs):
        if self.epoch == 1:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    trainer_module.Trainer._run_epoch = second_epoch_fails
    try:
        assert main(["train", "--epochs", "2", "--out", str(out), "--set", *TINY]) == 130
    finally:
        trainer_module.Trainer._run_epoch = original
    err = capsys.readouterr().err
    assert f"continue with physforecast train --resume {out}" in err
    # stderr is not a terminal here: one line per epoch, and what the simulation does
    assert "train epoch 1/2, loss " in err and " samples/s, ETA " in err
    assert (out / "checkpoints" / "last.pt").exists() and temporaries(out) == []
    assert main(["train", "--resume", str(out)]) == 0
    assert "resuming training at epoch 2/2" in capsys.readouterr().err


# -- the lock ---------------------------------------------------------------------------


def test_a_second_writer_fails_naming_the_owner(tmp_path):
    with RunLock(tmp_path / "run") as held:
        owner = held.owner()
        assert owner["pid"] == os.getpid() and owner["host"]
        with pytest.raises(RunDirInUseError, match=rf"in use by pid {os.getpid()} on "):
            RunLock(tmp_path / "run").acquire()
        with pytest.raises(RunDirInUseError, match="in use by"):
            train(tiny_cfg(tmp_path / "run"), evaluate=False)
    assert RunLock(tmp_path / "run").acquire().took_over is None  # released cleanly


def test_a_stale_lock_is_taken_over_and_its_orphans_removed(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    dead = {"pid": 2**22 + 12345, "host": "old-host", "started": "2020-01-01T00:00:00"}
    (run / ".lock").write_text(json.dumps(dead))  # its owner died: nobody holds the flock
    orphan = run / "checkpoints" / ".last.0badc0de12345678.tmp.pt"
    orphan.write_bytes(b"half a checkpoint")
    with RunDir(run).lock() as held:
        assert held.took_over == dead
        assert not orphan.exists()
    assert "took over the stale lock" in capsys.readouterr().err


def test_orphans_of_dead_writers_go_and_those_of_live_ones_stay(tmp_path):
    target = tmp_path / "ns.nc"
    dead = tmp_path / ".ns.0badc0de00000000.tmp.nc"
    live = temporary_path(target)  # this process: alive
    other = tmp_path / ".other.0badc0de00000000.tmp.nc"
    for p in (dead, live, other):
        p.write_bytes(b"x")
        os.utime(p, (0, 0))
    assert remove_orphans(tmp_path, stem="ns") == [dead]
    assert live.exists() and other.exists()


def test_sigterm_removes_the_temporary_being_written(tmp_path):
    target = tmp_path / "big.nc"

    def write(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Terminated, match="SIGTERM"), signals_as_exceptions():
        atomic_write(target, write)
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored


def test_a_beamvq_run_resumes_every_stage_and_says_so(tmp_path, capsys):
    from physforecast.training import trainer as trainer_module

    out = tmp_path / "bvq"
    beamvq = ["beamvq.num_codes=8", "beamvq.code_dim=4", "beamvq.top_k=2", "beamvq.width=2"]
    beamvq += ["beamvq.rounds=1", "beamvq.epochs_per_round=1", "model.options.n_layers=1"]
    argv = ["train", "--method", "beamvq", "--epochs", "4", "--out", str(out)]
    original = trainer_module.Trainer._run_epoch

    def stopped_in_round_one(self, *args, **kwargs):
        if self.stage == "round-1":
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    trainer_module.Trainer._run_epoch = stopped_in_round_one
    try:
        assert main([*argv, "--set", *TINY, *beamvq]) == 130
    finally:
        trainer_module.Trainer._run_epoch = original
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 0
    err = capsys.readouterr().err
    assert "backbone already finished (2/2 epochs)" in err
    assert "head already finished (1/1 epochs)" in err
    stages = [(r["stage"], r["epoch"]) for r in RunDir(out).read_metrics()]
    assert stages == [("backbone", 1), ("backbone", 2), ("head", 1), ("round-1", 1)]
