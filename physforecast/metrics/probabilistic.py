"""Probabilistic metrics of ensemble forecasts: CRPS, spread-skill ratio, rank histogram.

``pred`` carries an ensemble member dim that is named explicitly (``member_dim``); ``target``
has the same shape without it, ``(..., H, W)``. Results reduce space as every metric.
"""

from __future__ import annotations

from typing import Any

import torch

from physforecast.registry import METRICS

from ._common import as_float, leading_dim, prepare_field, spatial_mean, zero_invalid

__all__ = ["crps", "spread_skill_ratio", "rank_histogram"]

Tensor = torch.Tensor


def _members(pred: Tensor, target: Tensor, member_dim: int, name: str) -> Tensor:
    """Move the member dim of ``pred`` to the front and check it against ``target``.

    Returns (M, ...target.shape) as a float tensor.
    """
    pred = as_float(pred, f"{name}: pred")
    if not -pred.ndim <= member_dim < pred.ndim:
        raise ValueError(
            f"{name}: member_dim {member_dim} out of range for shape {tuple(pred.shape)}"
        )
    d = member_dim % pred.ndim
    if d >= pred.ndim - 2:
        raise ValueError(f"{name}: member_dim {member_dim} is a spatial dim of {tuple(pred.shape)}")
    x = pred.movedim(d, 0)
    if x.shape[1:] != target.shape:
        raise ValueError(
            f"{name}: pred without its member dim has shape {tuple(x.shape[1:])}, "
            f"target has {tuple(target.shape)}"
        )
    return x


@METRICS.register("crps", kind="probabilistic", higher_is_better=False, ensemble=True)
def crps(
    pred: Tensor,
    target: Tensor,
    *,
    member_dim: int,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    fair: bool = True,
) -> Tensor:
    """Continuous ranked probability score of an ensemble, ``E|X - y| - E|X - X'| / 2``.

    ``E|X - X'|`` is estimated from the sorted members with
    ``sum_{i,j} |x_i - x_j| = 2 sum_i (2 i - M - 1) x_(i)``, divided by ``M (M - 1)`` for
    the fair (unbiased) score or by ``M^2`` for the ensemble-as-distribution score of
    properscoring and xskillscore (``fair=False``). The fair score equals WeatherBench 2's
    PWM estimator.

    Parameters
    ----------
    pred : torch.Tensor
        Ensemble with M members along ``member_dim``; without it, the shape of ``target``.
    target : torch.Tensor
        Observations (..., H, W).
    member_dim : int
        The member dim of ``pred`` (not one of its last two dims).
    weights, mask : torch.Tensor, optional
        Area weights and validity, broadcastable to ``target``.
    fair : bool
        The fair estimator (needs M >= 2).

    Returns
    -------
    torch.Tensor
        Spatial mean of the pointwise CRPS, shape (...) of ``target`` without (H, W).
    """
    y, w = prepare_field(target, weights, mask, name="crps")
    x = _members(pred, y, member_dim, "crps").to(y.dtype)
    m = x.shape[0]
    if fair and m < 2:
        raise ValueError("crps: the fair CRPS needs at least 2 members")
    skill = (x - y).abs().mean(0)
    xs = torch.sort(x, dim=0).values
    rank = torch.arange(1, m + 1, dtype=y.dtype, device=y.device).reshape(m, *([1] * y.ndim))
    pair_sum = 2 * ((2 * rank - m - 1) * xs).sum(0)
    spread = pair_sum / (2 * m * (m - 1) if fair else 2 * m * m)
    return spatial_mean(zero_invalid(skill - spread, mask), w)


@METRICS.register(
    "spread_skill_ratio",
    kind="probabilistic",
    higher_is_better=None,
    ensemble=True,
    reduces_samples=True,
)
def spread_skill_ratio(
    pred: Tensor,
    target: Tensor,
    *,
    member_dim: int,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    sample_dim: int | None = None,
    corrected: bool = False,
) -> Tensor:
    """Spread-skill ratio ``sqrt(mean_w var_members) / sqrt(mean_w (mean_members - y)^2)``.

    The member variance is unbiased (``M - 1``). With ``sample_dim`` (a dim of ``target``)
    both mean squares are averaged over the forecasts before the roots, as WeatherBench 2.

    By default this is WeatherBench 2's ratio (ensemble standard deviation over the RMSE
    of the ensemble mean, with no factor for the ensemble size). For a reliable ensemble
    of ``M`` members (members and truth drawn from one distribution) the ensemble mean's
    squared error exceeds the member variance by ``(M + 1) / M``, so that ratio is about
    ``sqrt(M / (M + 1))``: 0.82 for M = 2, 0.95 for M = 10, 1 only as M grows. With
    ``corrected=True`` the ratio is multiplied by ``sqrt((M + 1) / M)`` (Fortin et al.
    2014), so that a reliable ensemble of any size scores about 1; below 1 is
    under-dispersive, above 1 over-dispersive either way.

    Parameters
    ----------
    corrected : bool
        Multiply by ``sqrt((M + 1) / M)``: 1 means reliable whatever ``M``.

    Returns
    -------
    torch.Tensor
        Shape (...) of ``target`` without (H, W) and ``sample_dim``.
    """
    stats = _spread_skill_partial(pred, target, member_dim=member_dim, weights=weights, mask=mask)
    if sample_dim is not None:
        stats = stats.mean(leading_dim(sample_dim, target.ndim, "spread_skill_ratio"))
    return _spread_skill_finish(stats, corrected)


def _spread_skill_partial(
    pred: Tensor,
    target: Tensor,
    *,
    member_dim: int,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    **_: Any,
) -> Tensor:
    """Per forecast (..., 3): member variance, squared error of the mean, members."""
    y, w = prepare_field(target, weights, mask, name="spread_skill_ratio")
    x = _members(pred, y, member_dim, "spread_skill_ratio").to(y.dtype)
    if x.shape[0] < 2:
        raise ValueError("spread_skill_ratio needs at least 2 members")
    spread = spatial_mean(zero_invalid(x.var(0, correction=1), mask), w)
    skill = spatial_mean(zero_invalid((x.mean(0) - y) ** 2, mask), w)
    return torch.stack([spread, skill, torch.full_like(spread, float(x.shape[0]))], -1)


def _spread_skill_finish(stats: Tensor, corrected: bool) -> Tensor:
    spread, skill, members = stats.unbind(-1)
    ratio = torch.sqrt(spread) / torch.sqrt(skill)
    m = float(members.reshape(-1)[0]) if members.numel() else 1.0
    return ratio * ((m + 1) / m) ** 0.5 if corrected else ratio


def _spread_skill_combine(stats: Tensor, *, corrected: bool = False, **_: Any) -> Tensor:
    return _spread_skill_finish(stats.mean(0), corrected)


METRICS.entry("spread_skill_ratio").meta.update(
    partial=_spread_skill_partial, combine=_spread_skill_combine
)


@METRICS.register("rank_histogram", kind="probabilistic", higher_is_better=None, ensemble=True)
def rank_histogram(
    pred: Tensor,
    target: Tensor,
    *,
    member_dim: int,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Rank histogram: how often the observation has each rank among the members.

    The rank of ``y`` is the number of members below it; ties are broken at random (with
    ``generator``, seeded 0 by default, so results repeat), as xskillscore does.

    Parameters
    ----------
    pred : torch.Tensor
        Ensemble with M members along ``member_dim``.
    target : torch.Tensor
        Observations (..., H, W).
    member_dim : int
        The member dim of ``pred``.
    weights, mask : torch.Tensor, optional
        Area weights and validity, broadcastable to ``target``.
    generator : torch.Generator, optional
        Random source of the tie-breaks.

    Returns
    -------
    torch.Tensor
        Frequencies of the ranks 0..M, shape (..., M + 1), summing to 1 over the last dim.
        A flat histogram means a calibrated ensemble.
    """
    y, w = prepare_field(target, weights, mask, name="rank_histogram")
    x = _members(pred, y, member_dim, "rank_histogram").to(y.dtype)
    m = x.shape[0]
    below = (x < y).sum(0)
    ties = (x == y).sum(0)
    if generator is None:
        generator = torch.Generator(device=y.device).manual_seed(0)
    u = torch.rand(y.shape, generator=generator, dtype=y.dtype, device=y.device)
    rank = below + torch.floor(u * (ties + 1)).long()
    onehot = torch.nn.functional.one_hot(rank, m + 1).to(y.dtype)  # (..., H, W, M+1)
    onehot = onehot.movedim(-1, 0)
    return spatial_mean(onehot, w).movedim(0, -1)
