"""Fixtures of the inference tests: students distilled from the session's tiny FNO run."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def students_run(tiny_run, tmp_path_factory):
    """Three width-8 students distilled (one epoch each) from ``tiny_run``, stacked on the
    FNO's latent (so that the teacher's decoder is saved and rebuilt too)."""
    from physforecast.inference.runs import distill_run

    out = tmp_path_factory.getbasetemp() / "tiny-ns2d-fno-students"
    if not (out / "students.json").exists():
        distill_run(
            tiny_run,
            out=out,
            n_students=3,
            width=8,
            stack=None,
            epochs=1,
            device="cpu",
        )
    return out


@pytest.fixture(scope="session")
def tiny_ds(tiny_run):
    """The tiny run's ns2d dataset (6 trajectories, 12 frames, 32 x 32), in memory."""
    import physforecast as pf
    from physforecast.data import open_dataset

    cfg = pf.load(tiny_run).config
    return open_dataset(cfg.data.dataset, options=cfg.data.options).load()
