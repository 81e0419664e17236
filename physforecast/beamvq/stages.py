"""The parts of a BeamVQ run between the head and the saved model.

* :func:`pseudo_pool`: which inputs self-training pseudo-labels (``beamvq.pseudo``), as
  :class:`InputsOnly` windows whose truth is never read: the unlabelled trajectories of
  ``data.train_fraction < 1``, or the histories at the end of each training trajectory
  whose future lies beyond the labelled horizon.
* :func:`truth_scales`: the level of every reference-free score term on the training
  truth, which divides the term at inference (1 = as physical as the data).
* :func:`critic_examples` and :func:`fit_block_critic`: SAMIA's user model, a
  :class:`~physforecast.search.critic.ContextCritic` fitted on the candidates of held-out
  (validation) windows against their truth, then used as the reference-free ``critic``
  score.
* :func:`policy_loss_fn`: REINFORCE with a baseline over the head's per-position
  sampling distribution, with the critic (or the inference score) as reward.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from physforecast.data.prepare import PreparedData
from physforecast.data.windows import ForecastWindows
from physforecast.errors import ConfigError
from physforecast.registry import SCORES
from physforecast.search.critic import ContextCritic, fit_critic
from physforecast.search.scores import ScoreCombination

from .forecaster import BeamVQForecaster, block_lengths
from .head import head_loss

__all__ = [
    "PSEUDO_SOURCES",
    "InputsOnly",
    "pseudo_pool",
    "extension_windows",
    "truth_scales",
    "critic_examples",
    "fit_block_critic",
    "policy_loss_fn",
]

#: Values of ``beamvq.pseudo``.
PSEUDO_SOURCES = ("unlabelled", "extend", "none")


class InputsOnly(Dataset):
    """The windows of ``base`` without their truth: samples lose ``y``.

    Parameters
    ----------
    base : Dataset
        Dict samples (``x``, ``y``, ``params``, ``mask``).
    name : str
        What the inputs are (logged with each self-training round).
    """

    def __init__(self, base: Dataset, name: str = "") -> None:
        self.base, self.name = base, name

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.base[i].items() if k != "y"}


def extension_windows(data: PreparedData) -> Dataset | None:
    """Histories of the training trajectories whose ``T_out``-step future runs past the last
    labelled frame: inputs no training window has (their truth is not in the labelled set).

    A history ending at frame ``t`` is a training input only when ``t + T_out`` is a saved
    frame; these end at ``t = n - T_out, ..., n - 2`` (``n`` frames; the last one needs a
    window of one target frame, so it is left out). None when there are none.
    """
    train = data.train
    t_in, t_out = train.in_steps, train.out_steps
    if t_out < 2:
        return None
    windows = ForecastWindows(
        data.dataset,
        train.variables,
        t_in,
        1,
        stride=train.stride,
        selection=train.selection,
        params=train.params,
        normalizer=train.normalizer,
    )
    labelled_last = train.n_time - t_in - t_out  # the last start of a labelled window
    keep = [i for i in range(len(windows)) if windows.locate(i)[1] > labelled_last]
    return Subset(windows, keep) if keep else None


def pseudo_pool(source: str, data: PreparedData) -> InputsOnly | None:
    """The inputs self-training pseudo-labels, their truth removed.

    Parameters
    ----------
    source : {"unlabelled", "extend", "none"}
        ``unlabelled``: the windows of the training trajectories ``data.train_fraction``
        left out of the labelled set; ``extend``: :func:`extension_windows`; ``none``: no
        self-training (None).
    data : PreparedData
        The run's data.

    Raises
    ------
    ConfigError
        When the source has no inputs (``unlabelled`` with ``data.train_fraction = 1``).
    """
    if source not in PSEUDO_SOURCES:
        raise ConfigError(f"beamvq.pseudo={source!r} is not one of {', '.join(PSEUDO_SOURCES)}")
    if source == "none":
        return None
    if source == "unlabelled":
        if data.unlabelled is None or len(data.unlabelled) == 0:
            raise ConfigError(
                "beamvq.pseudo=unlabelled needs unlabelled training trajectories: set "
                "data.train_fraction < 1 (or beamvq.pseudo=extend)"
            )
        return InputsOnly(data.unlabelled, "unlabelled")
    windows = extension_windows(data)
    if windows is None:
        raise ConfigError(
            "beamvq.pseudo=extend found no history beyond the labelled horizon (needs "
            "data.out_steps >= 2); use beamvq.pseudo=none"
        )
    return InputsOnly(windows, "extend")


def _truth_blocks(x: torch.Tensor, y: torch.Tensor, t_in: int, lengths: list[int]):
    """(context (N, T_in, ...), truth block (N, L, ...)) of every block, from real frames."""
    seq = torch.cat([x, y], 1)
    start = 0
    for length in lengths:
        yield seq[:, start : start + t_in], seq[:, t_in + start : t_in + start + length]
        start += length


@torch.no_grad()
def truth_scales(
    model: BeamVQForecaster,
    score: ScoreCombination,
    loader: Any,
    *,
    max_batches: int = 4,
    device: torch.device | str = "cpu",
) -> tuple[dict[str, float], list[str]]:
    """The mean of every term of ``score`` on true blocks of training windows.

    Each block of the beam is scored as the beam search scores it (its context the
    ``T_in`` frames before it), but with the true frames as the single candidate. Returns
    the scales and the terms this data cannot compute (they raise a ``ValueError``, e.g.
    ``residual`` without a vorticity or velocity variable). The ``critic`` term (a
    predicted log-RMSE, already relative) keeps the scale 1.
    """
    lengths = block_lengths(model.out_steps, model.block)
    sums: dict[str, float] = {}
    count: dict[str, int] = {}
    missing: list[str] = []
    for i, batch in enumerate(loader):
        if i >= max_batches:
            break
        x, y = batch["x"].to(device), batch["y"].to(device)
        cond = batch["params"].to(device) if model.cond_dim else None
        for context, truth in _truth_blocks(x, y, model.in_steps, lengths):
            ctx = model.context_fn(context, cond)
            ctx.observed = x
            if model.critic is not None:
                ctx.critic = model.critic_penalty
            for name in score.weights:
                if name in missing or name == "critic":
                    continue
                try:
                    value = SCORES.entry(name).factory(truth.unsqueeze(1), ctx).float()
                except ValueError:
                    missing.append(name)
                    continue
                finite = value[torch.isfinite(value)]
                sums[name] = sums.get(name, 0.0) + float(finite.sum())
                count[name] = count.get(name, 0) + int(finite.numel())
    scales = {}
    for name in score.weights:
        if name in missing or not count.get(name):
            continue
        mean = sums[name] / count[name]
        scales[name] = mean if mean > 0 and math.isfinite(mean) else 1.0
    return scales, missing


@torch.no_grad()
def critic_examples(
    model: BeamVQForecaster,
    loader: Any,
    *,
    max_batches: int = 8,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Candidates of held-out windows and their log-RMSE against the truth, block by block.

    For every window and every full block of the beam, the context is the ``T_in`` true
    frames before the block, the candidates are the head's ``K`` (with its sampling),
    the target ``log RMSE`` of each against the true block (model units).

    Returns
    -------
    history : Tensor
        ``(M, T_in, C, H, W)`` on the CPU.
    candidates : Tensor
        ``(M, K, block, C, H, W)``.
    target : Tensor
        ``(M, K)``.
    """
    hist, cands, tgt = [], [], []
    lengths = [n for n in block_lengths(model.out_steps, model.block) if n == model.block]
    for i, batch in enumerate(loader):
        if i >= max_batches:
            break
        x, y = batch["x"].to(device), batch["y"].to(device)
        cond = batch["params"].to(device) if model.cond_dim else None
        for context, truth in _truth_blocks(x, y, model.in_steps, lengths):
            c = model.candidates(context, cond)[:, :, : model.block]
            err = (c - truth.unsqueeze(1)).pow(2).flatten(2).mean(-1).clamp_min(1e-12)
            hist.append(context.cpu())
            cands.append(c.cpu())
            tgt.append(0.5 * torch.log(err).cpu())
    if not hist:
        raise ValueError("critic_examples: the loader gave no windows")
    return torch.cat(hist), torch.cat(cands), torch.cat(tgt)


def fit_block_critic(
    model: BeamVQForecaster,
    loader: Any,
    *,
    steps: int = 300,
    hidden: int = 32,
    context: int = 2,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[ContextCritic, dict[str, float]]:
    """Fit a :class:`ContextCritic` over blocks on held-out candidates (see :func:`critic_examples`).

    Returns the critic (in eval mode, on ``device``) and its fit: the final loss and the
    Spearman rank correlation of its predictions with the true log-RMSE among the K
    candidates of an example, averaged over a fifth of the examples left out of a first
    fit (the returned critic is then fitted on all of them).
    """
    history, cands, target = critic_examples(model, loader, device=device)
    critic = ContextCritic(
        model.out_channels, model.block, context=min(context, model.in_steps), hidden=hidden
    )
    gen = torch.Generator().manual_seed(seed)
    # a fifth of the examples (at least one) checks the fit; the critic then refits on all
    n = history.shape[0]
    order = torch.randperm(n, generator=gen)
    held, fit_rows = order[: max(1, n // 5)], order[max(1, n // 5) :]
    rho = float("nan")
    if len(fit_rows):
        fit_critic(
            critic, history[fit_rows], cands[fit_rows], target[fit_rows], steps=steps, generator=gen
        )
        with torch.no_grad():
            pred = critic(history[held], cands[held])
        # within each example's K candidates: the ranking the beam search uses
        rho = sum(spearman(p, t) for p, t in zip(pred, target[held], strict=True)) / len(held)
        critic = ContextCritic(
            model.out_channels, model.block, context=min(context, model.in_steps), hidden=hidden
        )
    losses = fit_critic(critic, history, cands, target, steps=steps, generator=gen)
    return critic.to(device), {"critic_loss": losses[-1], "critic_spearman": rho}


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (average ranks for ties)."""
    from scipy.stats import spearmanr

    res = spearmanr(np.asarray(a.detach().cpu(), dtype=np.float64), np.asarray(b.detach().cpu()))
    value = float(res.statistic if hasattr(res, "statistic") else res[0])
    return value if math.isfinite(value) else 0.0


def policy_loss_fn(
    model: BeamVQForecaster,
    *,
    weight: float = 1.0,
    base_weight: float = 1.0,
    supervised_weight: float = 1.0,
    reduction: str = "mean",
    reward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None,
) -> Callable:
    """A trainer ``loss_fn(head, batch)``: the head's loss + REINFORCE with a baseline.

    On each batch the head samples ``K - 1`` candidates per window (per-position
    sampling over code distances at ``model.temperature``); their rewards
    ``R = -penalty`` (the critic's predicted log-RMSE of the first block, or ``reward``)
    minus the mean over the window's samples (the baseline) weight the candidates'
    log-probabilities (averaged over latent positions):
    ``loss_pg = -mean((R - mean R) * log p / positions)``. The head's supervised loss on the
    batch (:func:`~.head.head_loss`) keeps the forecasts anchored to the truth.

    Parameters
    ----------
    model : BeamVQForecaster
        Gives the temperature, ``K``, the block and the critic.
    weight : float
        Weight of the policy-gradient term.
    base_weight : float
        Weight of the backbone's own MSE in the head loss (output mode: 1).
    supervised_weight : float
        Weight of the head's supervised loss (0: the policy gradient alone).
    reduction : {"mean", "min"}
        The head loss's reduction over candidates (``beamvq.candidate_loss``).
    reward : callable, optional
        ``reward(history, candidates (B, K, T, C, H, W), cond) -> (B, K)`` (higher is
        better); default ``-critic_penalty`` of the first block.
    """
    if model.temperature <= 0:
        raise ConfigError(
            "the policy-gradient stage samples candidates: set beamvq.temperature > 0"
        )
    if reward is None and model.critic is None:
        raise ConfigError("the policy-gradient stage needs a critic (beamvq.critic=true)")

    def default_reward(x, cands, cond):
        return -model.critic_penalty(x, cands[:, :, : model.block])

    get_reward = reward or default_reward

    def loss_fn(head: nn.Module, batch: dict[str, torch.Tensor]):
        inner = head.module if hasattr(head, "module") else head
        cond = batch.get("params") if inner.backbone.cond_dim else None
        out = head(batch["x"], cond, k=model.top_k, temperature=model.temperature, log_prob=True)
        sup, logs = head_loss(
            out, batch["y"], mask=batch.get("mask"), base_weight=base_weight, reduction=reduction
        )
        loss = supervised_weight * sup
        if out.log_prob is None or out.candidates.shape[1] < 3:
            return loss, logs
        with torch.no_grad():
            r = get_reward(batch["x"], out.candidates.detach(), cond).float()[:, 1:]
        adv = r - r.mean(1, keepdim=True)
        positions = max(1, math.prod(out.indices.shape[2:]))
        pg = -(adv * out.log_prob[:, 1:] / positions).mean()
        logs.update({"pg_loss": float(pg.detach()), "reward": float(r.mean())})
        return loss + weight * pg, logs

    return loss_fn
