"""Learning rate against batch size: the surge law of Adam, the SGD law, fitting and rescaling.

For SGD the best learning rate grows with the batch size ``B`` and saturates
(McCandlish et al. 2018, eq. 2.6):

.. math:: \\epsilon_{opt}(B) = \\frac{\\epsilon_{max}}{1 + B_{noise} / B}.

For Adam-style optimizers, which follow the sign of the gradient, it first rises and
then falls again: the *surge* (Li et al. 2024, "Surge Phenomenon in Optimal Learning Rate
and Batch Size Scaling", eq. 13):

.. math:: \\epsilon_{opt}(B) = \\frac{\\epsilon_{max}}
          {\\tfrac12\\left(\\sqrt{B_{noise}/B} + \\sqrt{B/B_{noise}}\\right)}
          = \\frac{\\epsilon_{max}}{\\cosh\\left(\\tfrac12 \\ln(B / B_{noise})\\right)},

with its peak ``epsilon_max`` at ``B = B_noise``, symmetric in ``log B``, growing like
``2 epsilon_max sqrt(B / B_noise)`` for small batches (the square-root scaling rule) where
SGD grows linearly (the linear scaling rule). The peak moves to larger batches as the
loss falls.

This module evaluates both laws, fits ``(epsilon_max, B_noise)`` to best learning rates
found on a grid (:func:`run_lr_grid`, :func:`fit_surge`), plots the result
(:func:`plot_surge`) and rescales an optimizer's learning rate when the batch size
changes (:class:`SurgeLRRule`, :func:`lr_scale_factor`; ``train.lr_scaling`` applies it to
every Trainer from the run's global batch size).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from matplotlib.figure import Figure
from scipy.optimize import least_squares
from tqdm.auto import tqdm

__all__ = [
    "adam_optimal_lr",
    "sgd_optimal_lr",
    "SurgeFit",
    "fit_surge",
    "LRGrid",
    "run_lr_grid",
    "plot_surge",
    "SurgeLRRule",
    "LR_SCALING_RULES",
    "lr_scale_factor",
    "scale_lr",
]

LRLaw = Callable[..., np.ndarray]


def _positive(name: str, value: np.ndarray) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be finite and > 0; got {value!r}")
    return arr


def adam_optimal_lr(batch_size, lr_max: float, b_noise: float):
    """Best Adam learning rate at ``batch_size``: ``lr_max / (0.5 (sqrt(b_noise/B) + sqrt(B/b_noise)))``.

    Parameters
    ----------
    batch_size : float or array
        Batch size(s) ``B`` > 0.
    lr_max : float
        The peak learning rate, reached at ``B = b_noise``.
    b_noise : float
        The batch size of the peak.

    Returns
    -------
    float or ndarray
        Same shape as ``batch_size``.

    Examples
    --------
    >>> float(adam_optimal_lr(64, 1e-3, 64))
    0.001
    """
    b = _positive("batch_size", batch_size)
    _positive("lr_max", lr_max)
    _positive("b_noise", b_noise)
    r = np.sqrt(b / b_noise)
    out = lr_max / (0.5 * (1.0 / r + r))
    return float(out) if out.ndim == 0 else out


def sgd_optimal_lr(batch_size, lr_max: float, b_noise: float):
    """Best SGD learning rate at ``batch_size``: ``lr_max / (1 + b_noise / B)``.

    Linear in ``B`` for ``B << b_noise`` and saturating at ``lr_max`` for ``B >> b_noise``.
    Parameters and return as in :func:`adam_optimal_lr`.
    """
    b = _positive("batch_size", batch_size)
    _positive("lr_max", lr_max)
    _positive("b_noise", b_noise)
    out = lr_max / (1.0 + b_noise / b)
    return float(out) if out.ndim == 0 else out


@dataclass(frozen=True)
class SurgeFit:
    """A fitted learning-rate law.

    Attributes
    ----------
    lr_max, b_noise : float
        The fitted parameters.
    law : callable
        :func:`adam_optimal_lr` or :func:`sgd_optimal_lr` (or any ``law(B, lr_max, b_noise)``).
    rms_log_error : float
        Root mean square of ``log(fitted lr) - log(best lr)`` over the points.
    batch_sizes, best_lrs : tuple of float
        The points that were fitted.
    """

    lr_max: float
    b_noise: float
    law: LRLaw
    rms_log_error: float
    batch_sizes: tuple[float, ...]
    best_lrs: tuple[float, ...]

    @property
    def law_name(self) -> str:
        return getattr(self.law, "__name__", "law")

    @property
    def b_noise_in_range(self) -> bool:
        """Whether ``b_noise`` lies inside the fitted batch sizes (else it is extrapolated)."""
        return min(self.batch_sizes) <= self.b_noise <= max(self.batch_sizes)

    def lr(self, batch_size):
        """The law's learning rate at ``batch_size``."""
        return self.law(batch_size, self.lr_max, self.b_noise)


def fit_surge(
    batch_sizes: Sequence[float], best_lrs: Sequence[float], law: LRLaw = adam_optimal_lr
) -> SurgeFit:
    """Fit ``(lr_max, b_noise)`` of ``law`` to best learning rates by least squares in log space.

    Minimises ``sum (log law(B_i; lr_max, b_noise) - log lr_i)^2`` over ``log lr_max`` and
    ``log b_noise`` (so both stay positive) with :func:`scipy.optimize.least_squares`.
    Multiplicative noise on the learning rates is additive in log space, which is why
    the fit is done there.

    Parameters
    ----------
    batch_sizes, best_lrs : sequence of float
        At least two points, all positive.
    law : callable
        :func:`adam_optimal_lr` (default) or :func:`sgd_optimal_lr`.

    Returns
    -------
    SurgeFit
    """
    b = _positive("batch_sizes", batch_sizes).ravel()
    lr = _positive("best_lrs", best_lrs).ravel()
    if b.size != lr.size:
        raise ValueError(f"{b.size} batch sizes but {lr.size} learning rates")
    if b.size < 2 or np.unique(b).size < 2:
        raise ValueError("fit_surge needs at least two distinct batch sizes")
    log_lr = np.log(lr)

    def residual(theta: np.ndarray) -> np.ndarray:
        return np.log(law(b, math.exp(theta[0]), math.exp(theta[1]))) - log_lr

    peak = int(np.argmax(lr))
    starts = [
        (math.log(lr[peak]), math.log(b[peak])),
        (math.log(2 * lr.max()), math.log(float(np.exp(np.log(b).mean())))),
    ]
    best = None
    for start in starts:
        res = least_squares(residual, np.array(start), method="lm", xtol=1e-12, ftol=1e-12)
        if best is None or res.cost < best.cost:
            best = res
    theta = best.x
    rms = float(np.sqrt(np.mean(residual(theta) ** 2)))
    return SurgeFit(
        lr_max=float(math.exp(theta[0])),
        b_noise=float(math.exp(theta[1])),
        law=law,
        rms_log_error=rms,
        batch_sizes=tuple(float(x) for x in b),
        best_lrs=tuple(float(x) for x in lr),
    )


@dataclass
class LRGrid:
    """Final losses of short runs on a (batch size x learning rate) grid.

    Attributes
    ----------
    batch_sizes : list of int
        Rows.
    lrs : list of float
        Columns, increasing.
    losses : ndarray
        ``(len(batch_sizes), len(lrs))`` final validation losses; ``inf`` for a diverged run.
    """

    batch_sizes: list[int]
    lrs: list[float]
    losses: np.ndarray = field(repr=False)

    def best_lrs(self, refine: bool = True) -> np.ndarray:
        """Best learning rate per batch size, ``(len(batch_sizes),)``.

        With ``refine`` the minimum is interpolated by a parabola through the best grid
        point and its two neighbours in ``log lr`` (when both exist and are finite);
        the result is clipped to the neighbours.
        """
        log_lr = np.log(np.asarray(self.lrs, dtype=np.float64))
        out = np.empty(len(self.batch_sizes))
        for i, row in enumerate(np.asarray(self.losses, dtype=np.float64)):
            if not np.isfinite(row).any():
                raise ValueError(f"every run at batch size {self.batch_sizes[i]} diverged")
            j = int(np.nanargmin(np.where(np.isfinite(row), row, np.inf)))
            x = log_lr[j]
            if refine and 0 < j < len(row) - 1 and np.isfinite(row[j - 1 : j + 2]).all():
                (x0, x1, x2), (y0, y1, y2) = log_lr[j - 1 : j + 2], row[j - 1 : j + 2]
                denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
                a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
                bq = (x2**2 * (y0 - y1) + x1**2 * (y2 - y0) + x0**2 * (y1 - y2)) / denom
                if a > 0:
                    x = float(np.clip(-bq / (2 * a), x0, x2))
            out[i] = math.exp(x)
        return out


def run_lr_grid(
    train_eval: Callable[[int, float], float],
    batch_sizes: Sequence[int],
    lrs: Sequence[float],
    *,
    progress: bool = True,
) -> LRGrid:
    """Run ``train_eval(batch_size, lr) -> final loss`` on every grid point.

    ``train_eval`` trains a fresh model for a short budget and returns its validation
    loss; a non-finite return (or a ``FloatingPointError``/``RuntimeError`` raised for a
    diverged run) counts as ``inf``. The budget is the caller's choice; the surge law is
    about equal numbers of examples seen (so fewer steps at larger batches).
    """
    lrs = sorted(float(x) for x in lrs)
    if not batch_sizes or not lrs:
        raise ValueError("run_lr_grid needs at least one batch size and one learning rate")
    losses = np.full((len(batch_sizes), len(lrs)), np.inf)
    bar = tqdm(total=losses.size, desc="lr grid", disable=not progress, leave=False)
    for i, b in enumerate(batch_sizes):
        for j, lr in enumerate(lrs):
            try:
                value = float(train_eval(int(b), lr))
            except (FloatingPointError, RuntimeError):
                value = math.inf
            losses[i, j] = value if math.isfinite(value) else math.inf
            bar.update()
    bar.close()
    return LRGrid([int(b) for b in batch_sizes], lrs, losses)


def plot_surge(
    batch_sizes: Sequence[float],
    best_lrs: Sequence[float],
    fits: Sequence[SurgeFit] = (),
    *,
    title: str = "best learning rate against batch size",
    highlight: tuple[float, float] | None = None,
) -> Figure:
    """Best learning rates (points) and fitted laws (lines) on log-log axes.

    ``highlight`` is a ``(batch size, learning rate)`` to mark (a recommendation). A
    law's ``b_noise`` is drawn as a dotted line when it lies within the plotted range.
    Returns a :class:`matplotlib.figure.Figure`; save it with ``fig.savefig(path)``.
    """
    fig = Figure(figsize=(5.5, 3.8), layout="constrained")
    ax = fig.add_subplot()
    b = np.asarray(batch_sizes, dtype=np.float64)
    ax.loglog(b, best_lrs, "o", color="k", label="best lr on the grid")
    lo, hi = b.min() / 2, b.max() * 2
    if highlight is not None:
        lo, hi = min(lo, highlight[0] / 1.5), max(hi, highlight[0] * 1.5)
    grid = np.geomspace(lo, hi, 200)
    for fit, color in zip(fits, ("C0", "C1", "C2", "C3")):
        ax.loglog(
            grid,
            fit.lr(grid),
            color=color,
            label=f"{fit.law_name}: lr_max={fit.lr_max:.2g}, B_noise={fit.b_noise:.3g}",
        )
        if lo <= fit.b_noise <= hi:
            ax.axvline(fit.b_noise, color=color, ls=":", lw=0.8)
    if highlight is not None:
        ax.loglog([highlight[0]], [highlight[1]], "*", color="C3", ms=11, label="recommended")
    ax.set_xlabel("batch size B")
    ax.set_ylabel("learning rate")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return fig


@dataclass
class SurgeLRRule:
    """Rescale learning rates when the batch size changes, following a fitted law.

    The new rate is ``lr * law(new_B) / law(old_B)``; ``lr_max`` cancels, so only
    ``b_noise`` matters. With :func:`adam_optimal_lr` this is the square-root rule for
    ``B << b_noise`` and the inverse square-root rule for ``B >> b_noise``; with
    :func:`sgd_optimal_lr` the linear rule and then a constant.

    Parameters
    ----------
    b_noise : float
        From :func:`fit_surge` (or, as a first guess, the noise scale of
        :class:`~physforecast.training.noise_scale.NoiseScaleMonitor`).
    law : callable
        :func:`adam_optimal_lr` (default) or :func:`sgd_optimal_lr`.

    Examples
    --------
    >>> rule = SurgeLRRule(b_noise=64)
    >>> round(rule.factor(16, 64), 4)   # below the peak: grow like sqrt(B)
    1.6
    >>> rule.factor(64, 256) < 1        # past the peak: shrink
    True
    """

    b_noise: float
    law: LRLaw = adam_optimal_lr

    def factor(self, old_batch: float, new_batch: float) -> float:
        """Multiplier of the learning rate when going from ``old_batch`` to ``new_batch``."""
        return float(
            self.law(new_batch, 1.0, self.b_noise) / self.law(old_batch, 1.0, self.b_noise)
        )

    def rescale(self, lr: float, old_batch: float, new_batch: float) -> float:
        """The learning rate for ``new_batch`` given ``lr`` tuned at ``old_batch``."""
        return lr * self.factor(old_batch, new_batch)

    def apply(self, optimizer, old_batch: float, new_batch: float, scheduler=None) -> float:
        """Multiply the optimizer's (and its scheduler's) learning rates in place.

        Every param group's ``lr`` and ``initial_lr`` and, when ``scheduler`` (a
        ``torch.optim.lr_scheduler.LRScheduler``) is given, its ``base_lrs`` are scaled,
        so the schedule continues from the rescaled rates. Returns the factor.
        """
        f = self.factor(old_batch, new_batch)
        for group in optimizer.param_groups:
            group["lr"] *= f
            if "initial_lr" in group:
                group["initial_lr"] *= f
        if scheduler is not None:
            scheduler.base_lrs = [lr * f for lr in scheduler.base_lrs]
        return f


#: The rules ``train.lr_scaling`` may name (see :func:`lr_scale_factor`).
LR_SCALING_RULES = ("none", "surge", "sgd", "linear", "sqrt")


def lr_scale_factor(
    old_batch: float, new_batch: float, rule: str = "surge", b_noise: float | None = None
) -> float:
    """Multiplier of a learning rate tuned at ``old_batch`` for use at ``new_batch``.

    Parameters
    ----------
    old_batch, new_batch : float
        Global batch sizes (examples per optimizer step), > 0.
    rule : str
        ``surge``: Adam's law, ``adam_optimal_lr(new) / adam_optimal_lr(old)`` (needs
        ``b_noise``); ``sgd``: SGD's law (needs ``b_noise``); ``linear``:
        ``new / old``; ``sqrt``: ``sqrt(new / old)``; ``none``: 1.
    b_noise : float, optional
        ``B_noise`` of the law (from :func:`fit_surge`, ``physforecast tune-lr``).

    Returns
    -------
    float

    Examples
    --------
    >>> lr_scale_factor(16, 64, "linear"), lr_scale_factor(16, 64, "sqrt")
    (4.0, 2.0)
    >>> round(lr_scale_factor(16, 64, "surge", b_noise=64), 4)
    1.6
    """
    old = float(_positive("old_batch", old_batch))
    new = float(_positive("new_batch", new_batch))
    if rule not in LR_SCALING_RULES:
        raise ValueError(
            f"unknown learning-rate scaling rule {rule!r}; use one of {', '.join(LR_SCALING_RULES)}"
        )
    if rule == "none":
        return 1.0
    if rule == "linear":
        return new / old
    if rule == "sqrt":
        return math.sqrt(new / old)
    if b_noise is None:
        raise ValueError(
            f"the {rule} rule needs b_noise (the batch size of the law's peak); fit it with "
            "physforecast tune-lr, or use the linear or sqrt rule"
        )
    law = adam_optimal_lr if rule == "surge" else sgd_optimal_lr
    return SurgeLRRule(float(b_noise), law).factor(old, new)


def scale_lr(
    lr: float,
    old_batch: float,
    new_batch: float,
    rule: str = "surge",
    b_noise: float | None = None,
) -> float:
    """``lr`` (tuned at ``old_batch``) times :func:`lr_scale_factor` for ``new_batch``."""
    return float(lr) * lr_scale_factor(old_batch, new_batch, rule, b_noise)
