"""Distilled students as a run directory, and loading them back as a Forecaster.

A students run is a copy of the teacher's run files with the students beside them::

    config.yaml  model.json  data.json  normalization.json  checkpoints/best.pt   (the teacher's)
    students.json                 structure: student spec, K, stacking, the teacher's model spec,
                                  the distillation losses (and the test-split evaluation)
    checkpoints/students.pt       the ensemble's weights (with the teacher's decoder when stacked),
                                  written by :func:`~physforecast.training.checkpoint.save_checkpoint`

:func:`load_students` returns a :class:`physforecast.Forecaster` over the students (its
normalization, grid and config are the teacher's), so :func:`physforecast.predict`,
:func:`physforecast.rollout` and the scorecard work on it as on any forecaster;
:func:`physforecast.load` on the same directory still gives the teacher.
:func:`load_forecaster` picks the students when there are some, else the run's model.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch

import physforecast as pf
from physforecast.training.checkpoint import load_checkpoint, save_checkpoint

from .distill import Distillation
from .ensemble import StudentEnsemble
from .students import StudentSpec

__all__ = [
    "STUDENTS_FILE",
    "STUDENTS_CHECKPOINT",
    "TEACHER_FILES",
    "student_model_spec",
    "build_student_model",
    "save_students_run",
    "is_students_run",
    "load_student_model",
    "load_students",
    "load_forecaster",
]

#: The students' structure and record.
STUDENTS_FILE = "students.json"
#: The students' weights, relative to the run directory.
STUDENTS_CHECKPOINT = "checkpoints/students.pt"
#: Teacher files copied into a students run (what loading and scoring need).
TEACHER_FILES = (
    "config.yaml",
    "model.json",
    "data.json",
    "normalization.json",
    "checkpoints/best.pt",
)
_FORMAT = "physforecast-students/1"


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


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def save_students_run(
    result: Distillation | StudentEnsemble,
    teacher_run: str | os.PathLike,
    out: str | os.PathLike,
    *,
    record: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a students run directory: the teacher's files, ``students.json`` and the weights.

    The directory is assembled under a temporary name and renamed into place, so an
    interrupted save leaves no half-written run.

    Parameters
    ----------
    result : Distillation or StudentEnsemble
        From :func:`~physforecast.inference.distill.distill` (its losses are recorded).
    teacher_run : path
        The teacher's run directory.
    out : path
        The new run directory.
    record : dict, optional
        More JSON-safe facts for ``students.json`` (settings, an evaluation).
    overwrite : bool
        Replace an existing ``out``.

    Returns
    -------
    Path
        ``out``.
    """
    teacher_run, out = Path(teacher_run), Path(out)
    if out.resolve() == teacher_run.resolve():
        raise ValueError(
            f"the students run must be a new directory, not the teacher's {teacher_run}"
        )
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose another --out or pass overwrite=True")
    missing = [f for f in TEACHER_FILES if not (teacher_run / f).exists()]
    if missing:
        raise FileNotFoundError(f"{teacher_run} lacks {missing}; is it a finished run directory?")
    model = result.model if isinstance(result, Distillation) else result
    teacher_spec = json.loads((teacher_run / "model.json").read_text())
    spec = student_model_spec(model, teacher_spec)
    spec["teacher_run"] = str(teacher_run.resolve())
    if isinstance(result, Distillation):
        spec["distillation"] = {
            "losses": result.losses,
            "latent_weight": result.latent_weight,
            "seconds": result.seconds,
            "students": [{k: v for k, v in s.items() if k != "history"} for s in result.students],
        }
    spec.update(record or {})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        for name in TEACHER_FILES:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(teacher_run / name, tmp / name)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        save_checkpoint({"model": state, "spec": json.dumps(spec)}, tmp / STUDENTS_CHECKPOINT)
        _write_json(tmp / STUDENTS_FILE, spec)
        if out.exists():
            old = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.old")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def is_students_run(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds distilled students."""
    return (Path(run_dir) / STUDENTS_FILE).exists()


def load_student_model(
    run_dir: str | os.PathLike, *, device: str | torch.device = "cpu"
) -> StudentEnsemble:
    """The trained :class:`StudentEnsemble` of a students run, in eval mode."""
    run_dir = Path(run_dir)
    if not is_students_run(run_dir):
        raise FileNotFoundError(
            f"{run_dir} has no {STUDENTS_FILE}; distil a run first (physforecast distill RUN_DIR)"
        )
    spec = json.loads((run_dir / STUDENTS_FILE).read_text())
    model = build_student_model(spec)
    state = load_checkpoint(run_dir / STUDENTS_CHECKPOINT)
    model.load_state_dict(state["model"])
    return model.eval().to(device)


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
        Written by :func:`save_students_run` (``physforecast distill``).
    n_active : int, optional
        Students to use (the first ``n_active``); all by default. Change it later with
        ``forecaster.model.n_active = n``.
    device : str or torch.device
        Where the students run.
    """
    model = load_student_model(run_dir, device=device)
    model.n_active = n_active
    teacher = pf.load(run_dir)  # the teacher's normalization, grid and config
    forecaster = pf.Forecaster(
        model,
        teacher.normalizer,
        in_steps=teacher.in_steps,
        out_steps=teacher.out_steps,
        config=teacher.config,
        grid=teacher.grid,
        run_dir=run_dir,
    )
    return forecaster.to(device)


def load_forecaster(
    run_dir: str | os.PathLike, *, device: str | torch.device = "cpu"
) -> pf.Forecaster:
    """The students of ``run_dir`` when it has some, else its model (:func:`physforecast.load`)."""
    if is_students_run(run_dir):
        return load_students(run_dir, device=device)
    return pf.load(run_dir, device=device)


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
    progress: bool = True,
) -> tuple[Path, list[dict[str, Any]]]:
    """Distil the model of a run into students and write the students run (``physforecast distill``).

    The students learn the teacher on the run's training split (the same data and
    normalization as the teacher); the test split scores the teacher and every
    ``n_active`` (:func:`~physforecast.inference.accuracy.compare_students`), recorded in
    ``students.json`` under ``evaluation``. The students' padding follows the teacher's
    ``padding_mode`` option (``'circular'`` on periodic domains).

    Parameters
    ----------
    run_dir : path
        The teacher's run directory.
    out : path, optional
        The students run; ``<run_dir>-students<K>`` by default.
    n_students, depth, width, kernel_size, stack, latent_weight
        See :func:`~physforecast.inference.distill.distill`.
    epochs, lr : int, float
        Optimisation of each student.
    batch_size : int, optional
        The run's ``data.batch_size`` by default.
    device : str
        ``auto``, ``cpu`` or ``cuda``.

    Returns
    -------
    (Path, list of dict)
        The students run and the test-split comparison rows.
    """
    from dataclasses import replace

    from physforecast.training.run import prepare

    from .accuracy import compare_students
    from .distill import distill

    run_dir = Path(run_dir)
    teacher = pf.load(run_dir)
    if is_students_run(run_dir):
        raise ValueError(f"{run_dir} is already a students run; distil its teacher run instead")
    cfg = teacher.config
    out = (
        Path(out) if out is not None else run_dir.with_name(f"{run_dir.name}-students{n_students}")
    )
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose another --out or pass --overwrite")
    prepared = prepare(cfg, teacher.normalizer)
    batch = int(batch_size or cfg.data.batch_size)
    train_cfg = replace(cfg.train, epochs=int(epochs), lr=float(lr), device=device, patience=0)
    result = distill(
        teacher.model,
        prepared.train,
        n_students=n_students,
        depth=depth,
        width=width,
        kernel_size=kernel_size,
        padding_mode=str(cfg.model.options.get("padding_mode", "zeros")),
        stack=stack,
        latent_weight=latent_weight,
        train=train_cfg,
        batch_size=batch,
        progress=progress,
    )
    model = result.model.cpu()
    rows = compare_students(
        teacher.model.cpu(), model, prepared.test, teacher.normalizer, batch_size=batch
    )
    record = {
        "settings": {"epochs": int(epochs), "lr": float(lr), "batch_size": batch, "device": device},
        "evaluation": {"split": "test", "windows": len(prepared.test), "rows": rows},
    }
    return save_students_run(result, run_dir, out, record=record, overwrite=overwrite), rows
