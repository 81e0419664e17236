"""Low-latency inference: student parallelism (Academus) and the HTTP forecast server.

- :mod:`.students`: the shallow student network and its :class:`StudentSpec`;
- :mod:`.parallel`: :class:`StudentGroup`, all active students in one ``vmap`` call (or a
  loop that gives the same sum);
- :mod:`.ensemble`: :class:`StudentEnsemble`, the students behind the teacher's
  ``(x, cond) -> y`` contract, with an ``n_active`` knob;
- :mod:`.distill`: :func:`distill`, boosting + stacking distillation of a deep teacher;
- :mod:`.runs`: students as a run directory (:func:`distill_run`, :func:`load_students`);
- :mod:`.method`: the registered ``students`` method behind ``physforecast distill``;
- :mod:`.policy`: :class:`LoadAdaptivePolicy`, ``n_active`` from the backlog and a latency
  budget;
- :mod:`.batching`: :class:`MicroBatcher`, dynamic micro-batching with a bounded queue;
- :mod:`.codec`: datasets in and out of HTTP bodies (netCDF, JSON);
- :mod:`.stats`: the server's counters;
- :mod:`.server`: the FastAPI application and :func:`serve` (needs the ``serve`` extra);
- :mod:`.commands`: ``physforecast distill`` and ``physforecast serve``.

Names are imported lazily, so ``import physforecast.inference`` loads no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "StudentSpec": "students",
    "Student": "students",
    "StudentGroup": "parallel",
    "StudentEnsemble": "ensemble",
    "distill": "distill",
    "Distillation": "distill",
    "distillation_loss": "distill",
    "teacher_targets": "distill",
    "build_student_model": "runs",
    "distill_run": "runs",
    "load_student_model": "runs",
    "load_students": "runs",
    "CostModel": "policy",
    "LoadAdaptivePolicy": "policy",
    "MicroBatcher": "batching",
    "QueueFullError": "batching",
    "ServeStats": "stats",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'physforecast.inference' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
