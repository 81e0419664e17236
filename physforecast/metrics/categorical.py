"""Categorical (threshold) scores: CSI, POD, FAR, HSS and the fractions skill score.

An event is a value at or above ``threshold`` (Earthformer's SEVIR convention). The
contingency counts are (weighted) sums over space; with ``sample_dim`` they are also summed
over that dim before the score is formed, which is how SEVIR scores are aggregated over a
test set. A score whose denominator is zero (no event forecast or observed) is NaN.

SEVIR thresholds on the 0-255 VIL scale: 16, 74, 133, 160, 181, 219.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from physforecast.registry import METRICS

from ._common import leading_dim, prepare, spatial_sum

__all__ = [
    "SEVIR_THRESHOLDS",
    "Contingency",
    "contingency",
    "csi",
    "csi_m",
    "pod",
    "far",
    "hss",
    "fss",
]

Tensor = torch.Tensor

SEVIR_THRESHOLDS = (16, 74, 133, 160, 181, 219)
_THRESHOLD_VARIANTS = {str(t): {"threshold": t} for t in SEVIR_THRESHOLDS}


class Contingency(NamedTuple):
    """The 2x2 contingency table, each entry of shape (...)."""

    hits: Tensor
    misses: Tensor
    false_alarms: Tensor
    correct_negatives: Tensor


def contingency(
    pred: Tensor,
    target: Tensor,
    *,
    threshold: float,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    sample_dim: int | None = None,
) -> Contingency:
    """Contingency table of the events ``x >= threshold``.

    Parameters
    ----------
    pred, target : torch.Tensor
        Fields (..., H, W).
    threshold : float
        Event threshold.
    weights, mask : torch.Tensor, optional
        Weights of the counts and validity; invalid points count nowhere.
    sample_dim : int, optional
        A leading dim to sum the counts over as well.

    Returns
    -------
    Contingency
        ``hits, misses, false_alarms, correct_negatives``, each (...) (without
        ``sample_dim`` when given).
    """
    p, t, w = prepare(pred, target, weights, mask, name="contingency")
    if w is None:
        w = torch.ones((), dtype=p.dtype, device=p.device)
    fc = p >= threshold
    ob = t >= threshold
    counts = [
        spatial_sum((fc & ob).to(p.dtype), w),
        spatial_sum((~fc & ob).to(p.dtype), w),
        spatial_sum((fc & ~ob).to(p.dtype), w),
        spatial_sum((~fc & ~ob).to(p.dtype), w),
    ]
    if sample_dim is not None:
        d = leading_dim(sample_dim, p.ndim, "contingency")
        counts = [c.sum(d) for c in counts]
    return Contingency(*counts)


def _csi_of(c: Contingency) -> Tensor:
    return c.hits / (c.hits + c.misses + c.false_alarms)


def _pod_of(c: Contingency) -> Tensor:
    return c.hits / (c.hits + c.misses)


def _far_of(c: Contingency) -> Tensor:
    return c.false_alarms / (c.hits + c.false_alarms)


def _hss_of(c: Contingency) -> Tensor:
    a, cc, b, d = c  # hits, misses, false alarms, correct negatives
    return 2 * (a * d - b * cc) / ((a + cc) * (cc + d) + (a + b) * (b + d))


def _register(name: str, higher_is_better: bool = True, **meta):
    return METRICS.register(
        name,
        kind="categorical",
        higher_is_better=higher_is_better,
        reduces_samples=True,
        **meta,
    )


@_register("csi", variants=_THRESHOLD_VARIANTS)
def csi(
    pred: Tensor,
    target: Tensor,
    *,
    threshold: float,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    sample_dim: int | None = None,
) -> Tensor:
    """Critical success index ``hits / (hits + misses + false alarms)``.

    Arguments as :func:`contingency`; returns (...).
    """
    c = contingency(
        pred, target, threshold=threshold, weights=weights, mask=mask, sample_dim=sample_dim
    )
    return _csi_of(c)


@_register("csi_m")
def csi_m(
    pred: Tensor,
    target: Tensor,
    *,
    thresholds: tuple[float, ...] = SEVIR_THRESHOLDS,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    sample_dim: int | None = None,
) -> Tensor:
    """Mean CSI over ``thresholds`` (Earthformer's CSI-M on the SEVIR thresholds).

    Thresholds where CSI is undefined (no event at all) are left out of the mean.
    """
    scores = torch.stack(
        [
            csi(pred, target, threshold=t, weights=weights, mask=mask, sample_dim=sample_dim)
            for t in thresholds
        ]
    )
    return scores.nanmean(0)


@_register("pod", variants=_THRESHOLD_VARIANTS)
def pod(
    pred: Tensor,
    target: Tensor,
    *,
    threshold: float,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    sample_dim: int | None = None,
) -> Tensor:
    """Probability of detection ``hits / (hits + misses)``. Arguments as :func:`contingency`."""
    c = contingency(
        pred, target, threshold=threshold, weights=weights, mask=mask, sample_dim=sample_dim
    )
    return _pod_of(c)


@_register("far", higher_is_better=False, variants=_THRESHOLD_VARIANTS)
def far(
    pred: Tensor,
    target: Tensor,
    *,
    threshold: float,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    sample_dim: int | None = None,
) -> Tensor:
    """False alarm ratio ``false alarms / (hits + false alarms)``. Arguments as
    :func:`contingency`."""
    c = contingency(
        pred, target, threshold=threshold, weights=weights, mask=mask, sample_dim=sample_dim
    )
    return _far_of(c)


@_register("hss", variants=_THRESHOLD_VARIANTS)
def hss(
    pred: Tensor,
    target: Tensor,
    *,
    threshold: float,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    sample_dim: int | None = None,
) -> Tensor:
    """Heidke skill score ``2 (a d - b c) / ((a + c)(c + d) + (a + b)(b + d))``.

    ``a`` hits, ``b`` false alarms, ``c`` misses, ``d`` correct negatives; 1 is perfect,
    0 no better than chance. Arguments as :func:`contingency`.
    """
    c = contingency(
        pred, target, threshold=threshold, weights=weights, mask=mask, sample_dim=sample_dim
    )
    return _hss_of(c)


@_register("fss", weighted=False, variants=_THRESHOLD_VARIANTS)
def fss(
    pred: Tensor,
    target: Tensor,
    *,
    threshold: float,
    scale: int = 9,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    sample_dim: int | None = None,
) -> Tensor:
    """Fractions skill score (Roberts and Lean 2008).

    The event fields ``x >= threshold`` are averaged over ``scale x scale`` neighbourhoods
    (zero outside the domain, as ``scipy.ndimage.uniform_filter(mode='constant')``) into
    fractions ``F_p, F_t``, and ``FSS = 1 - sum (F_p - F_t)^2 / (sum F_p^2 + sum F_t^2)``.

    Parameters
    ----------
    pred, target : torch.Tensor
        Fields (..., H, W).
    threshold : float
        Event threshold.
    scale : int
        Odd neighbourhood width in grid points.
    weights : None
        Not supported (neighbourhoods assume a uniform grid).
    mask : torch.Tensor, optional
        Validity; invalid points hold no event and are left out of the sums.
    sample_dim : int, optional
        A leading dim to sum the numerator and denominator over before the ratio.

    Returns
    -------
    torch.Tensor
        Shape (...); 1 for a perfect forecast, NaN when neither field has an event.
    """
    sums = _fss_sums(pred, target, threshold=threshold, scale=scale, weights=weights, mask=mask)
    num, den = sums.unbind(-1)
    if sample_dim is not None:
        d = leading_dim(sample_dim, pred.ndim, "fss")
        num, den = num.sum(d), den.sum(d)
    return 1 - num / den


def _fss_sums(
    pred: Tensor,
    target: Tensor,
    *,
    threshold: float,
    scale: int = 9,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    **_: Any,
) -> Tensor:
    """``sum (F_p - F_t)^2`` and ``sum F_p^2 + sum F_t^2`` of each forecast: (..., 2)."""
    if scale < 1 or scale % 2 == 0:
        raise ValueError(f"fss: scale must be a positive odd integer, got {scale}")
    p, t, w = prepare(pred, target, weights, mask, name="fss", weighted=False)
    valid = torch.ones((), dtype=p.dtype, device=p.device) if w is None else w
    h, wd = p.shape[-2:]
    events = torch.stack([(p >= threshold).to(p.dtype), (t >= threshold).to(p.dtype)]) * valid
    frac = F.avg_pool2d(
        events.reshape(-1, 1, h, wd), scale, stride=1, padding=scale // 2, count_include_pad=True
    ).reshape(events.shape)
    fp, ft = frac[0], frac[1]
    num = spatial_sum((fp - ft) ** 2, w)
    den = spatial_sum(fp**2, w) + spatial_sum(ft**2, w)
    return torch.stack([num, den], -1)


# ---------------------------------------------------------------- streaming
# The scorecard's ScoreAccumulator pools these metrics over chunks of samples from the
# per-forecast sums they are built from (``partial``), added up at the end (``combine``).


def _counts(pred: Tensor, target: Tensor, *, threshold: float, weights=None, mask=None, **_: Any):
    """The contingency counts of each forecast, float64: (..., 4)."""
    c = contingency(pred, target, threshold=threshold, weights=weights, mask=mask)
    return torch.stack(c, -1).double()


def _counts_over_thresholds(
    pred: Tensor,
    target: Tensor,
    *,
    thresholds: tuple[float, ...] = SEVIR_THRESHOLDS,
    weights=None,
    mask=None,
    **_: Any,
) -> Tensor:
    """The counts of each forecast at each threshold: (..., n_thresholds, 4)."""
    per = [_counts(pred, target, threshold=t, weights=weights, mask=mask) for t in thresholds]
    return torch.stack(per, -2)


def _from_counts(score_of):
    def combine(stats: Tensor, **_: Any) -> Tensor:
        return score_of(Contingency(*stats.sum(0).unbind(-1)))

    return combine


def _csi_m_combine(stats: Tensor, **_: Any) -> Tensor:
    return _csi_of(Contingency(*stats.sum(0).unbind(-1))).nanmean(-1)


def _fss_combine(stats: Tensor, **_: Any) -> Tensor:
    num, den = stats.double().sum(0).unbind(-1)
    return 1 - num / den


for _name, _of in (("csi", _csi_of), ("pod", _pod_of), ("far", _far_of), ("hss", _hss_of)):
    METRICS.entry(_name).meta.update(partial=_counts, combine=_from_counts(_of))
METRICS.entry("csi_m").meta.update(partial=_counts_over_thresholds, combine=_csi_m_combine)
METRICS.entry("fss").meta.update(partial=_fss_sums, combine=_fss_combine)
