"""Distilled students as a run directory: writing one (``physforecast distill``) and
loading it back.

A students run is an ordinary run directory of the ``students`` method
(:mod:`physforecast.inference.method`): its ``model.json`` describes the ensemble
(:func:`student_model_spec`), ``checkpoints/best.pt`` holds the students' weights (with the
teacher's decoder when stacked), ``students.json`` the distillation record and, after
``physforecast evaluate``, ``students_eval.json`` the teacher vs ``n_active`` comparison.
:func:`physforecast.load` gives a :class:`~physforecast.Forecaster` over the students, so
:func:`physforecast.predict`, :func:`physforecast.rollout` and the scorecard work on it as
on any forecaster.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

import physforecast as pf
from physforecast.config import apply_overrides
from physforecast.run_dir import RunDir

from .ensemble import StudentEnsemble
from .students import StudentSpec

__all__ = [
    "student_model_spec",
    "build_student_model",
    "distill_run",
    "is_students_run",
    "load_student_model",
    "load_students",
]

_FORMAT = "physforecast-students/1"
#: ``distill_run``'s ``stack`` -> the method's ``students.target``.
_TARGET = {False: "output", True: "latent", None: "auto"}


def student_model_spec(
    model: StudentEnsemble, teacher_spec: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What :func:`build_student_model` needs to rebuild ``model`` (JSON-safe).

    ``teacher_spec`` (the teacher's ``model.json``: keyword arguments of
    :func:`physforecast.create_backbone`) is required when the ensemble is stacked, to
    rebuild the decoder.
    """
    if model.stacked and not teacher_spec:
        raise ValueError("a stacked ensemble needs the teacher's model spec to be rebuilt")
    return {
        "format": _FORMAT,
        "n_students": model.n_students,
        "student": model.spec.to_dict(),
        "stacked": model.stacked,
        "teacher": dict(teacher_spec) if model.stacked else None,
        "in_steps": model.in_steps,
        "out_steps": model.out_steps,
        "in_channels": model.in_channels,
        "out_channels": model.out_channels,
    }


def build_student_model(spec: dict[str, Any]) -> StudentEnsemble:
    """An untrained :class:`StudentEnsemble` of the structure ``spec`` describes.

    Parameters
    ----------
    spec : dict
        From :func:`student_model_spec` (the content of ``students.json``).
    """
    if spec.get("format") != _FORMAT:
        raise ValueError(
            f"not a students spec (format {spec.get('format')!r}, expected {_FORMAT!r})"
        )
    decoder = pf.create_backbone(**spec["teacher"]) if spec["stacked"] else None
    return StudentEnsemble(
        StudentSpec.from_dict(spec["student"]),
        in_steps=spec["in_steps"],
        out_steps=spec["out_steps"],
        in_channels=spec["in_channels"],
        out_channels=spec["out_channels"],
        n_students=spec["n_students"],
        decoder=decoder,
    )


def is_students_run(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds distilled students (a run of the ``students`` method)."""
    run = RunDir(run_dir)
    return run.exists() and run.read_config().method == "students"


def load_student_model(
    run_dir: str | os.PathLike, *, device: str | torch.device = "cpu"
) -> StudentEnsemble:
    """The trained :class:`StudentEnsemble` of a students run, in eval mode."""
    if not is_students_run(run_dir):
        raise FileNotFoundError(
            f"{run_dir} is not a students run; distil a run first (physforecast distill RUN_DIR)"
        )
    return pf.load(run_dir, device=device).model


def load_students(
    run_dir: str | os.PathLike,
    *,
    n_active: int | None = None,
    device: str | torch.device = "cpu",
) -> pf.Forecaster:
    """A :class:`physforecast.Forecaster` over the students of a students run.

    Parameters
    ----------
    run_dir : path
        Written by :func:`distill_run` (``physforecast distill``).
    n_active : int, optional
        Students to use (the first ``n_active``); all by default. Change it later with
        ``forecaster.model.n_active = n``.
    device : str or torch.device
        Where the students run.
    """
    if not is_students_run(run_dir):
        raise FileNotFoundError(
            f"{run_dir} is not a students run; distil a run first (physforecast distill RUN_DIR)"
        )
    forecaster = pf.load(run_dir, device=device)
    forecaster.model.n_active = n_active
    return forecaster


def distill_run(
    run_dir: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    n_students: int = 4,
    depth: int = 2,
    width: int = 32,
    kernel_size: int = 3,
    stack: bool | None = False,
    latent_weight: float = 0.01,
    epochs: int = 5,
    lr: float = 3e-3,
    batch_size: int | None = None,
    device: str = "auto",
    overwrite: bool = False,
) -> tuple[Path, list[dict[str, Any]]]:
    """Distil the model of a run into students and write the students run (``physforecast distill``).

    The students run is ``physforecast train`` of the ``students`` method on the teacher's
    config: the same data, split and normalization. Its evaluation scores the students on
    the test split and compares the teacher with every ``n_active``
    (:func:`~physforecast.inference.accuracy.compare_students`).

    Parameters
    ----------
    run_dir : path
        The teacher's run directory.
    out : path, optional
        The students run; ``<run_dir>-students<K>`` by default.
    n_students, depth, width, kernel_size, latent_weight
        See :class:`~physforecast.inference.method.StudentsConfig`.
    stack : bool, optional
        Learn the teacher's latent (True), its forecast (False) or the latent when the
        teacher has a usable one (None).
    epochs, lr : int, float
        Optimisation of each student.
    batch_size : int, optional
        The run's ``data.batch_size`` by default.
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    overwrite : bool
        Replace an existing ``out``.

    Returns
    -------
    (Path, list of dict)
        The students run and the test-split comparison rows.
    """
    from physforecast.training.run import train

    run_dir = Path(run_dir)
    teacher = RunDir(run_dir).require()
    if is_students_run(run_dir):
        raise ValueError(f"{run_dir} is already a students run; distil its teacher run instead")
    out = (
        Path(out) if out is not None else run_dir.with_name(f"{run_dir.name}-students{n_students}")
    )
    if out.resolve() == run_dir.resolve():
        raise ValueError(f"the students run must be a new directory, not the teacher's {run_dir}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose another --out or pass --overwrite")
    cfg = teacher.read_config()
    cfg = apply_overrides(
        replace(cfg, method="students", out=str(out), sections={}),
        [
            f"students.teacher={run_dir}",
            f"students.n_students={int(n_students)}",
            f"students.depth={int(depth)}",
            f"students.width={int(width)}",
            f"students.kernel_size={int(kernel_size)}",
            f"students.target={_TARGET[stack]}",
            f"students.latent_weight={float(latent_weight)}",
            f"train.epochs={int(epochs)}",
            f"train.lr={float(lr)}",
            f"train.device={device}",
            "train.patience=0",
            # the students train on one process, whatever the teacher's parallel setup
            "train.comm_hook=allreduce",
            "train.comm_hook_options={}",
            "train.averaging=none",
            "train.averaging_options={}",
            "train.noise_scale=false",
            "train.fsdp=false",
            f"data.batch_size={int(batch_size or cfg.data.batch_size)}",
        ],
    )
    train(cfg, overwrite=overwrite)
    rows = json.loads((out / "students_eval.json").read_text())["rows"]
    return out, rows
