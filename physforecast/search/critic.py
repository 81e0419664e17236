"""Critic filter (after SAMIA, Wang et al. 2017): reject candidates before they are used.

SAMIA trains a *user model* and, at test time, filters the agent's outputs with it. Here
the "user model" is :class:`ContextCritic`, a small conv net that reads the last history
frame and a candidate forecast and predicts the candidate's penalty against the truth
(by default ``log RMSE``). It is fitted on training windows, where the truth is known,
and then scores candidates without a reference (as the ``critic`` score).

:class:`CriticFilter` is the rule that decides which candidates survive: the best
``per_sample`` of each sample, then the best ``keep_fraction`` of those over all samples,
then an optional absolute ``threshold``. Its penalties come from any score callable
(the critic, a physics score, a :class:`~.scores.ScoreCombination`) or are passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .scores import ScoreContext

__all__ = ["ContextCritic", "fit_critic", "CriticFilter"]


class ContextCritic(nn.Module):
    """Predict the penalty of candidate forecasts from the history and the candidate.

    Parameters
    ----------
    channels : int
        Variables per frame ``C``.
    steps : int
        Forecast frames ``T`` of a candidate.
    context : int
        History frames the critic reads (the last ``context`` of ``T_in``).
    hidden : int
        Width of the conv net.
    """

    def __init__(self, channels: int, steps: int, *, context: int = 1, hidden: int = 32) -> None:
        super().__init__()
        self.channels, self.steps, self.context = int(channels), int(steps), int(context)
        cin = (self.steps + self.context) * self.channels
        self.net = nn.Sequential(
            nn.Conv2d(cin, hidden, 3, padding=1, padding_mode="circular"),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1, padding_mode="circular"),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, padding=1, padding_mode="circular"),
            nn.GELU(),
        )
        # mean and RMS pooling: the RMS sees high-frequency noise that averaging hides
        self.out = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, history: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Predicted penalties ``(N, K)`` of ``pred`` (N, K, T, C, H, W) given ``history`` (N, T_in, C, H, W)."""
        if pred.ndim != 6 or pred.shape[2:4] != (self.steps, self.channels):
            raise ValueError(
                f"ContextCritic(steps={self.steps}, channels={self.channels}) expects candidates "
                f"(N, K, {self.steps}, {self.channels}, H, W); got {tuple(pred.shape)}"
            )
        if history.shape[1] < self.context:
            raise ValueError(
                f"history has {history.shape[1]} frames; the critic reads {self.context}"
            )
        n, k, t, c, h, w = pred.shape
        ctx = (
            history[:, -self.context :].reshape(n, 1, self.context * c, h, w).expand(n, k, -1, h, w)
        )
        inp = torch.cat([ctx, pred.reshape(n, k, t * c, h, w)], dim=2).reshape(n * k, -1, h, w)
        feat = self.net(inp.float())
        pooled = torch.cat([feat.mean((-2, -1)), feat.pow(2).mean((-2, -1)).sqrt()], dim=1)
        return self.out(pooled).reshape(n, k)


def fit_critic(
    critic: ContextCritic,
    history: torch.Tensor,
    candidates: torch.Tensor,
    target_penalty: torch.Tensor,
    *,
    steps: int = 200,
    lr: float = 2e-3,
    batch_size: int = 16,
    rank_weight: float = 1.0,
    generator: torch.Generator | None = None,
) -> list[float]:
    """Fit the critic to known penalties of candidates (computed against the truth).

    The loss is the MSE to ``target_penalty`` plus ``rank_weight`` times a pairwise
    logistic ranking loss among the K candidates of a sample, since the critic is used
    to *order* candidates.

    Parameters
    ----------
    history : Tensor
        ``(N, T_in, C, H, W)``.
    candidates : Tensor
        ``(N, K, T, C, H, W)``.
    target_penalty : Tensor
        ``(N, K)``, e.g. ``log`` of the RMSE to the truth.

    Returns
    -------
    list of float
        The loss of every step.
    """
    n = history.shape[0]
    if candidates.shape[0] != n or target_penalty.shape != candidates.shape[:2]:
        raise ValueError(
            f"fit_critic: history {tuple(history.shape)}, candidates {tuple(candidates.shape)} and "
            f"target_penalty {tuple(target_penalty.shape)} must agree on N (and K)"
        )
    opt = torch.optim.Adam(critic.parameters(), lr=lr)
    target = target_penalty.float()
    losses = []
    critic.train()
    for _ in range(steps):
        idx = torch.randint(n, (min(batch_size, n),), generator=generator)
        pred = critic(history[idx], candidates[idx])
        tgt = target[idx]
        loss = F.mse_loss(pred, tgt)
        if rank_weight and pred.shape[1] > 1:
            dp = pred[:, :, None] - pred[:, None, :]
            sign = torch.sign(tgt[:, :, None] - tgt[:, None, :])
            loss = loss + rank_weight * F.softplus(-sign * dp)[sign != 0].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    critic.eval()
    return losses


@dataclass
class CriticFilter:
    """Decide which candidates survive, from their penalties (lower is better).

    Attributes
    ----------
    score : callable, optional
        ``score(pred (N,K,T,C,H,W), ctx) -> (N,K)``; needed only by :meth:`__call__`.
    per_sample : int, optional
        Keep at most this many candidates per sample (the lowest penalties); None keeps all.
    keep_fraction : float
        Of those, keep the best fraction over the whole set (1.0 keeps all); ties are
        broken in sample order, so exactly ``round(keep_fraction * n)`` survive.
    threshold : float, optional
        Reject every candidate with a penalty above this.
    """

    score: Callable[[torch.Tensor, ScoreContext], torch.Tensor] | None = None
    per_sample: int | None = 1
    keep_fraction: float = 1.0
    threshold: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.keep_fraction <= 1.0:
            raise ValueError(
                f"CriticFilter.keep_fraction must be in (0, 1]; got {self.keep_fraction}"
            )
        if self.per_sample is not None and self.per_sample < 1:
            raise ValueError(f"CriticFilter.per_sample must be >= 1 or None; got {self.per_sample}")

    def select(self, penalties: torch.Tensor) -> torch.Tensor:
        """Boolean mask ``(N, K)`` of the surviving candidates."""
        if penalties.ndim != 2:
            raise ValueError(f"penalties must be (N, K); got {tuple(penalties.shape)}")
        pen = penalties.float()
        keep = torch.isfinite(pen)
        n, k = pen.shape
        if self.per_sample is not None and self.per_sample < k:
            order = torch.sort(torch.where(keep, pen, torch.inf), dim=1, stable=True).indices
            ranked = torch.zeros_like(keep)
            ranked.scatter_(1, order[:, : self.per_sample], True)
            keep &= ranked
        if self.keep_fraction < 1.0 and keep.any():
            flat_idx = torch.nonzero(keep.flatten()).flatten()
            n_keep = max(1, int(round(self.keep_fraction * flat_idx.numel())))
            order = torch.sort(pen.flatten()[flat_idx], stable=True).indices[:n_keep]
            best = torch.zeros(n * k, dtype=torch.bool, device=pen.device)
            best[flat_idx[order]] = True  # exactly n_keep; ties go to the earlier sample
            keep &= best.reshape(n, k)
        if self.threshold is not None:
            keep &= pen <= self.threshold
        return keep

    def __call__(self, pred: torch.Tensor, ctx: ScoreContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Score ``pred`` (N, K, T, C, H, W) and return ``(mask (N, K), penalties (N, K))``."""
        if self.score is None:
            raise ValueError("CriticFilter has no score; call select(penalties) or set score=")
        pen = self.score(pred, ctx)
        return self.select(pen), pen
