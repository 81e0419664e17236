"""``physforecast tune-lr``: the best learning rate per batch size, and the surge law through it.

:func:`tune_lr` trains the run's backbone (masked MSE, as the ``supervised`` method
does) for a short, equal budget of training examples at every point of a (batch size x
learning rate) grid, on one process, with a constant learning rate; takes the best
learning rate of each batch size (refined by a parabola in ``log lr``,
:meth:`~physforecast.training.surge.LRGrid.best_lrs`); fits Adam's surge law and SGD's
law to them (:func:`~physforecast.training.surge.fit_surge`) and recommends the learning
rate of the chosen law at the user's batch size. It writes ``lr_grid.json`` and
``surge.png`` into the output directory.

The fitted ``B_noise`` is what ``train.lr_scaling=surge`` needs (``train.lr_b_noise``)
to rescale the learning rate when the batch size changes.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from physforecast.atomic import atomic_write_json
from physforecast.config import Config, check_config, config_to_dict
from physforecast.errors import ConfigError, OutputPathError
from physforecast.registry import BACKBONES

from .surge import (
    LRGrid,
    SurgeFit,
    adam_optimal_lr,
    fit_surge,
    plot_surge,
    run_lr_grid,
    sgd_optimal_lr,
)

__all__ = ["TuneResult", "tune_lr", "default_lrs", "law_for_optimizer", "format_tune_result"]

#: Optimizers whose step follows the gradient itself (the SGD law); all others follow the
#: sign of the gradient, as Adam does (the surge law).
_SGD_LIKE = ("sgd", "momentum", "nesterov", "sgdp", "sgdw")


def law_for_optimizer(name: str) -> str:
    """``sgd`` for timm's SGD-like optimizers (``sgd``, ``momentum``, ``nesterov``...),
    ``adam`` for the others."""
    return "sgd" if name.lower() in _SGD_LIKE else "adam"


def default_lrs(lr: float, points: int = 7) -> list[float]:
    """``points`` learning rates spaced geometrically from ``lr / 10`` to ``lr * 10``."""
    return [float(x) for x in np.geomspace(lr / 10, lr * 10, points)]


@dataclass
class TuneResult:
    """What :func:`tune_lr` found.

    Attributes
    ----------
    grid : LRGrid
        Validation losses of every (batch size, learning rate) run.
    best_lrs : ndarray
        ``(len(batch_sizes),)`` best learning rate per batch size.
    fits : dict of str to SurgeFit
        The ``adam`` (surge) and ``sgd`` laws fitted to the best learning rates.
    law : str
        The law the recommendation follows (``adam`` or ``sgd``).
    batch_size : int
        The batch size the recommendation is for.
    recommended_lr : float
        The chosen law's learning rate at ``batch_size``.
    examples : int
        Training examples each run saw.
    out : Path or None
        Where ``lr_grid.json`` and ``surge.png`` were written.
    """

    grid: LRGrid
    best_lrs: np.ndarray
    fits: dict[str, SurgeFit]
    law: str
    batch_size: int
    recommended_lr: float
    examples: int
    out: Path | None = None

    @property
    def fit(self) -> SurgeFit:
        """The fit of the chosen law."""
        return self.fits[self.law]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (diverged runs as ``null``)."""
        losses = [[float(v) if math.isfinite(v) else None for v in row] for row in self.grid.losses]
        return {
            "batch_sizes": list(self.grid.batch_sizes),
            "lrs": list(self.grid.lrs),
            "val_loss": losses,
            "best_lrs": [float(x) for x in self.best_lrs],
            "examples_per_run": self.examples,
            "fits": {
                name: {
                    "lr_max": f.lr_max,
                    "b_noise": f.b_noise,
                    "rms_log_error": f.rms_log_error,
                    "b_noise_in_range": f.b_noise_in_range,
                }
                for name, f in self.fits.items()
            },
            "law": self.law,
            "batch_size": self.batch_size,
            "recommended_lr": self.recommended_lr,
        }


def _check_out(out: str | os.PathLike) -> Path:
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"--out {path} is a file; tune-lr writes a directory there")
    return path


def tune_lr(
    cfg: Config,
    batch_sizes: Sequence[int],
    lrs: Sequence[float] | None = None,
    *,
    examples: int | None = None,
    seeds: int = 1,
    law: str = "auto",
    batch_size: int | None = None,
    out: str | os.PathLike | None = None,
    log: Any = None,
) -> TuneResult:
    """Find the best learning rate of every batch size and fit the surge law to them.

    Parameters
    ----------
    cfg : Config
        The run's config: data, backbone, optimizer (``train.optimizer``,
        ``train.weight_decay``, ``train.grad_clip``, ``train.precision``, ``train.device``).
        Its comm hook, averaging, schedule, EMA and LR scaling are not used: every grid
        point trains on one process at a constant learning rate.
    batch_sizes : sequence of int
        At least two distinct sizes, each at most the number of training windows.
    lrs : sequence of float, optional
        Learning rates to try (default :func:`default_lrs` around ``train.lr``).
    examples : int, optional
        Training examples per run, the same at every batch size (so fewer steps at
        larger batches); default ``32 x max(batch_sizes)``.
    seeds : int
        Runs per grid point (seeds ``train.seed`` to ``train.seed + seeds - 1``); their
        validation losses are averaged.
    law : str
        ``adam`` (the surge law), ``sgd``, or ``auto`` (from ``train.optimizer``).
    batch_size : int, optional
        The batch size to recommend a learning rate for (default ``data.batch_size`` x
        ``train.accumulate``).
    out : path, optional
        Directory for ``lr_grid.json`` and ``surge.png``.
    log : file, optional
        Where a line per grid point goes (default ``sys.stderr``).

    Returns
    -------
    TuneResult
    """
    from physforecast.data.prepare import prepare_data
    from physforecast.methods import backbone_spec

    from .trainer import Trainer

    log = log if log is not None else sys.stderr
    check_config(cfg)
    sizes = [int(b) for b in batch_sizes]
    if len(set(sizes)) < 2 or min(sizes) < 1:
        raise ConfigError(
            f"--batch-sizes needs at least two distinct sizes >= 1 to fit a law; got {sizes}"
        )
    grid_lrs = sorted(float(x) for x in (lrs or default_lrs(cfg.train.lr)))
    if len(grid_lrs) < 2 or min(grid_lrs) <= 0:
        raise ConfigError(f"--lrs needs at least two learning rates > 0; got {grid_lrs}")
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1; got {seeds}")
    chosen = law_for_optimizer(cfg.train.optimizer) if law == "auto" else law
    if chosen not in ("adam", "sgd"):
        raise ConfigError(f"--law must be adam, sgd or auto; got {law!r}")
    target = int(batch_size or cfg.data.batch_size * cfg.train.accumulate)
    if target < 1:
        raise ConfigError(f"--batch-size must be >= 1; got {target}")
    budget = int(examples or 32 * max(sizes))
    if budget < max(sizes):
        raise ConfigError(
            f"--examples {budget} is fewer than the largest batch size {max(sizes)}: every run "
            "needs at least one step"
        )
    out_path = _check_out(out) if out is not None else None
    BACKBONES.entry(cfg.model.backbone)
    data = prepare_data(cfg)
    if max(sizes) > len(data.train):
        raise ConfigError(
            f"batch size {max(sizes)} is larger than the {len(data.train)} training windows; "
            "use smaller --batch-sizes or more data"
        )
    val = data.val if len(data.val) else data.train
    spec = backbone_spec(cfg, data.spec)
    base = replace(
        cfg.train,
        comm_hook="allreduce",
        comm_hook_options={},
        averaging="none",
        averaging_options={},
        noise_scale=False,
        lr_scaling="none",
        schedule="constant",
        ema=0.0,
        patience=0,
        accumulate=1,
    )

    def train_eval(b: int, lr: float) -> float:
        steps = max(1, round(budget / b))
        per_epoch = math.ceil(len(data.train) / b)
        epochs = math.ceil(steps / per_epoch)
        losses = []
        for k in range(seeds):
            seed = cfg.train.seed + k
            tcfg = replace(
                base,
                lr=lr,
                seed=seed,
                epochs=epochs,
                max_steps_per_epoch=math.ceil(steps / epochs),
            )
            torch.manual_seed(seed)
            options = dict(spec)
            model = BACKBONES.create(options.pop("name"), **options)
            trainer = Trainer(model, tcfg, config=cfg, batch_size=b)
            try:
                with contextlib.redirect_stderr(io.StringIO()):
                    trainer.fit(data.train, None)
                    value = trainer.evaluate(val)["val_loss"]
            except RuntimeError:  # a diverged run (TrainingDivergedError)
                value = math.inf
            losses.append(value if math.isfinite(value) else math.inf)
        mean = float(np.mean(losses))
        shown = f"{mean:.4g}" if math.isfinite(mean) else "diverged"
        print(f"batch {b:5d}  lr {lr:.3g}: val loss {shown} ({trainer.step} steps)", file=log)
        return mean

    grid = run_lr_grid(train_eval, sizes, grid_lrs, progress=False)
    best = grid.best_lrs()
    fits = {
        "adam": fit_surge(grid.batch_sizes, best, law=adam_optimal_lr),
        "sgd": fit_surge(grid.batch_sizes, best, law=sgd_optimal_lr),
    }
    result = TuneResult(
        grid=grid,
        best_lrs=best,
        fits=fits,
        law=chosen,
        batch_size=target,
        recommended_lr=float(fits[chosen].lr(target)),
        examples=budget,
        out=out_path,
    )
    if out_path is not None:
        from physforecast.plots import save_figure

        summary = {**result.to_dict(), "config": config_to_dict(cfg)}
        atomic_write_json(out_path / "lr_grid.json", summary)
        title = f"{cfg.model.backbone} on {Path(str(cfg.data.dataset)).stem}: best lr per batch"
        fig = plot_surge(
            grid.batch_sizes,
            best,
            [fits[chosen], fits[_other(chosen)]],
            title=title,
            highlight=(target, result.recommended_lr),
        )
        save_figure(fig, out_path / "surge.png")
    return result


def _other(law: str) -> str:
    return "sgd" if law == "adam" else "adam"


def format_tune_result(result: TuneResult) -> str:
    """The grid's best learning rates, the fitted laws and the recommendation, as text."""
    fit = result.fit
    lines = [
        f"best learning rate per batch size ({result.examples} training examples per run, "
        "constant lr):",
        f"{'batch':>7}  {'best lr':>9}  {'adam law':>9}  {'sgd law':>9}  {'val loss':>10}",
    ]
    for i, b in enumerate(result.grid.batch_sizes):
        row = result.grid.losses[i]
        loss = float(np.min(row))
        lines.append(
            f"{b:>7}  {result.best_lrs[i]:>9.3g}  {result.fits['adam'].lr(b):>9.3g}  "
            f"{result.fits['sgd'].lr(b):>9.3g}  {loss:>10.4g}"
        )
    for name, f in result.fits.items():
        label = "adam (surge) law" if name == "adam" else "sgd law"
        lines.append(
            f"{label}: lr_max={f.lr_max:.3g}, B_noise={f.b_noise:.3g}, "
            f"rms log error {f.rms_log_error:.3f}"
            + ("" if f.b_noise_in_range else " (B_noise outside the measured batch sizes)")
        )
    for i, b in enumerate(result.grid.batch_sizes):
        row = np.where(np.isfinite(result.grid.losses[i]), result.grid.losses[i], np.inf)
        j = int(np.argmin(row))
        if j in (0, len(result.grid.lrs) - 1):
            edge = "smallest" if j == 0 else "largest"
            lines.append(
                f"note: at batch {b} the best lr is the grid's {edge}; widen --lrs to be sure"
            )
    lines.append(
        f"recommended lr for batch size {result.batch_size} ({result.law} law): "
        f"{result.recommended_lr:.3g}"
    )
    lines.append(
        f"train with: --set train.lr={result.recommended_lr:.3g}; at other batch sizes: "
        f"train.lr_scaling={'surge' if result.law == 'adam' else 'sgd'} "
        f"train.lr_b_noise={fit.b_noise:.4g} train.lr_base_batch={result.batch_size}"
    )
    if result.out is not None:
        lines.append(f"wrote {result.out / 'lr_grid.json'} and {result.out / 'surge.png'}")
    return "\n".join(lines)
