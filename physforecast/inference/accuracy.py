"""How much accuracy the students keep, for every ``n_active``, against the truth and the teacher.

:func:`compare_students` forecasts a split (a :class:`~physforecast.data.ForecastWindows`)
with the teacher and with the first ``n`` students for ``n = 1 .. K`` and reports, in
physical units, the RMSE and relative L2 error of every forecast against the truth and
against the teacher (each the mean over windows, lead times and variables of the
per-frame score of :mod:`physforecast.metrics`), and the change of the RMSE against the
truth relative to the teacher's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from physforecast.data.normalization import Normalizer
from physforecast.metrics import rel_l2, rmse

__all__ = ["compare_students", "format_comparison"]


def _mean_scores(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> tuple[float, float]:
    m = mask[:, None].expand_as(pred)
    return float(rmse(pred, target, mask=m).mean()), float(rel_l2(pred, target, mask=m).mean())


@torch.no_grad()
def compare_students(
    teacher: nn.Module,
    students: nn.Module,
    windows: Dataset,
    normalizer: Normalizer,
    *,
    batch_size: int = 16,
) -> list[dict[str, Any]]:
    """Accuracy of the teacher and of every prefix of the students on ``windows``.

    Parameters
    ----------
    teacher : nn.Module
        ``(x, cond) -> y`` in normalized units.
    students : StudentEnsemble
        Called with ``n_active=n``.
    windows : Dataset
        Dict samples ``x``, ``y``, ``mask`` and optionally ``params`` (normalized).
    normalizer : Normalizer
        Brings forecasts back to physical units.

    Returns
    -------
    list of dict
        One row per model (``"teacher"``, then ``n_active = 1 .. K``) with ``rmse``,
        ``rel_l2`` (against the truth), ``rmse_vs_teacher``, ``rel_l2_vs_teacher`` and
        ``rmse_change`` (relative to the teacher's RMSE; +0.05 is 5 % worse).
    """
    k = int(students.n_students)
    preds: dict[Any, list[torch.Tensor]] = {"teacher": [], **{n: [] for n in range(1, k + 1)}}
    truths, masks = [], []
    cond_dim = int(getattr(teacher, "cond_dim", 0) or 0)
    for batch in DataLoader(windows, batch_size=batch_size, shuffle=False):
        x = batch["x"]
        cond = batch["params"] if cond_dim else None
        preds["teacher"].append(normalizer.denormalize(teacher(x, cond).float()))
        for n in range(1, k + 1):
            preds[n].append(normalizer.denormalize(students(x, cond, n_active=n).float()))
        truths.append(normalizer.denormalize(batch["y"].float()))
        masks.append(batch["mask"].bool())
    truth, mask = torch.cat(truths), torch.cat(masks)
    teacher_pred = torch.cat(preds["teacher"])
    rows = []
    base_rmse = None
    for name, parts in preds.items():
        pred = torch.cat(parts)
        e, r = _mean_scores(pred, truth, mask)
        et, rt = _mean_scores(pred, teacher_pred, mask)
        base_rmse = e if base_rmse is None else base_rmse
        rows.append(
            {
                "model": "teacher" if name == "teacher" else f"students n_active={name}",
                "n_active": None if name == "teacher" else int(name),
                "rmse": e,
                "rel_l2": r,
                "rmse_vs_teacher": et,
                "rel_l2_vs_teacher": rt,
                "rmse_change": e / base_rmse - 1.0 if base_rmse else 0.0,
            }
        )
    return rows


def format_comparison(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of :func:`compare_students` rows."""
    lines = [
        "| model | RMSE | rel-L2 | RMSE vs teacher | rel-L2 vs teacher | RMSE change |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['rmse']:.4g} | {row['rel_l2']:.4g} | "
            f"{row['rmse_vs_teacher']:.3g} | {row['rel_l2_vs_teacher']:.3g} | "
            f"{100 * row['rmse_change']:+.1f} % |"
        )
    return "\n".join(lines)
