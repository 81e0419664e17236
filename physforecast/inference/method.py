"""The ``students`` method: a trained run distilled into parallel shallow students (Academus).

``physforecast distill RUN_DIR`` is ``physforecast train`` with the teacher run's config,
``method: students`` and ``students.teacher: RUN_DIR``: the same data, split and
normalization as the teacher, every student trained as a stage of its own (checkpoints in
``checkpoints/student-<k>/``, DDP under ``torchrun``, exact ``--resume``). The result is a
run directory like any other: :func:`physforecast.load` gives a
:class:`~physforecast.Forecaster` over the students, ``physforecast evaluate`` scores them
and adds the teacher vs ``n_active`` table, ``physforecast serve`` serves them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from physforecast.config import Config
from physforecast.data.spec import DataSpec
from physforecast.errors import ConfigError
from physforecast.methods import Method, RunContext
from physforecast.registry import METHODS
from physforecast.run_dir import LoadedRun, RunDir

from .accuracy import compare_students, format_comparison
from .distill import distill, student_ensemble
from .ensemble import StudentEnsemble
from .runs import build_student_model, student_model_spec

__all__ = ["StudentsConfig", "StudentsMethod", "TARGETS"]

#: What the students learn: the teacher's forecast, its latent (stacking), or the latent
#: when the teacher has a usable one.
TARGETS = {"output": False, "latent": True, "auto": None}
#: The run's files: the distillation record, and the test-split comparison of
#: ``physforecast evaluate`` (the teacher and every ``n_active``).
RECORD = "students.json"
EVALUATION = "students_eval.json"


@dataclass
class StudentsConfig:
    """The ``students`` section: what to distil and into what.

    Attributes
    ----------
    teacher : str
        The teacher's run directory.
    n_students : int
        Students ``K``, trained one after another on what the ones before left.
    depth, width, kernel_size : int
        Layers, hidden channels and (odd) kernel of each student.
    target : str
        ``output`` (boost on the teacher's forecast), ``latent`` (stacking: stand in for
        the teacher's latent and reuse its decoder) or ``auto`` (latent when possible).
    latent_weight : float
        Weight of the latent-matching term with stacking.
    """

    teacher: str = ""
    n_students: int = 4
    depth: int = 2
    width: int = 32
    kernel_size: int = 3
    target: str = "output"
    latent_weight: float = 0.01


def _teacher(cfg: Config, data: DataSpec) -> LoadedRun:
    s = cfg.students
    if not s.teacher:
        raise ConfigError(
            "students.teacher is not set: give the teacher's run directory "
            "(physforecast distill RUN_DIR does)"
        )
    if s.target not in TARGETS:
        raise ConfigError(f"students.target must be one of {sorted(TARGETS)}; got {s.target!r}")
    teacher = RunDir(s.teacher).require().load_model("best")
    if teacher.config.method == "students":
        raise ConfigError(f"{s.teacher} is itself a students run; distil its teacher instead")
    if teacher.data.to_dict() != data.to_dict():
        raise ConfigError(
            f"the data of this run differ from those {s.teacher} was trained on (variables, "
            "levels, grid, parameters or steps); distil with the teacher's data settings"
        )
    return teacher


def _probe(data: DataSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
    x = torch.zeros(1, data.in_steps, data.in_channels, *data.layout.shape)
    return x, torch.zeros(1, len(data.params)) if data.params else None


@METHODS.register(
    "students",
    config=StudentsConfig,
    description="Academus: a trained run distilled into parallel shallow students",
)
class StudentsMethod(Method):
    """Distil the teacher run's model into :class:`StudentEnsemble` students."""

    name = "students"

    def model_spec(self, cfg: Config, data: DataSpec) -> dict[str, Any]:
        teacher = _teacher(cfg, data)
        s = cfg.students
        empty = student_ensemble(
            teacher.model,
            *_probe(data),
            stack=TARGETS[s.target],
            width=s.width,
            depth=s.depth,
            kernel_size=s.kernel_size,
            padding_mode=str(teacher.config.model.options.get("padding_mode", "zeros")),
        )
        for _ in range(s.n_students):
            empty.add_student()
        return student_model_spec(empty, RunDir(s.teacher).read_model_spec())

    def build(self, spec: dict[str, Any], cfg: Config, data: DataSpec) -> StudentEnsemble:
        return build_student_model(spec)

    def fit(self, ctx: RunContext) -> StudentEnsemble:
        cfg, s = ctx.cfg, ctx.cfg.students
        teacher = _teacher(cfg, ctx.data.spec)
        spec = self.model_spec(cfg, ctx.data.spec)
        result = distill(
            teacher.model,
            ctx.data.train,
            n_students=s.n_students,
            depth=s.depth,
            width=s.width,
            kernel_size=s.kernel_size,
            padding_mode=spec["student"]["padding_mode"],
            stack=spec["stacked"],
            latent_weight=s.latent_weight,
            train=cfg.train,
            batch_size=cfg.data.batch_size,
            progress=ctx.is_main,
            trainer=lambda module, loss, k, bs: ctx.trainer(
                module, stage=f"student-{k + 1}", loss_fn=loss, batch_size=bs
            ),
        )
        model = result.model.cpu()
        ctx.run.write_json(
            RECORD,
            {
                "teacher": str(s.teacher),
                "losses": result.losses,
                "latent_weight": result.latent_weight,
                "seconds": result.seconds,
                "students": [
                    {k: v for k, v in r.items() if k != "history"} for r in result.students
                ],
            },
        )
        ctx.save_model(model)
        return model

    def evaluate(self, model: nn.Module, ctx: RunContext) -> str:
        teacher = _teacher(ctx.cfg, ctx.data.spec)
        rows = compare_students(
            teacher.model.cpu(),
            model.cpu(),
            ctx.data.test,
            ctx.data.normalizer,
            batch_size=ctx.cfg.data.batch_size,
        )
        ctx.run.write_json(
            EVALUATION, {"split": "test", "windows": len(ctx.data.test), "rows": rows}
        )
        return "teacher vs students (test split, physical units):\n" + format_comparison(rows)
