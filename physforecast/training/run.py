"""The end-to-end job behind ``physforecast train`` and ``physforecast evaluate``.

:func:`train` opens the data, fits the normalization on the training split, hands a
:class:`~physforecast.methods.RunContext` to the configured method (registered in
:data:`~physforecast.registry.METHODS`), and scores the best checkpoint on the test split.
:func:`evaluate_run` rescores a finished run. Neither knows any particular method.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import xarray as xr

from physforecast.config import Config
from physforecast.data.prepare import PreparedData, prepare_data
from physforecast.forecast.windows import forecast_windows
from physforecast.methods import RunContext, get_method
from physforecast.metrics import format_scorecard, score
from physforecast.plots import plot_forecast_panel, plot_metric_vs_lead, save_figure
from physforecast.registry import BACKBONES
from physforecast.run_dir import RunDir

from .distributed import DistInfo, cleanup_distributed, init_distributed
from .trainer import resolve_device

__all__ = ["train", "evaluate_run", "load_run_config"]


def load_run_config(run_dir: str | os.PathLike) -> Config:
    """The resolved config saved in a run directory."""
    return RunDir(run_dir).read_config()


def train(cfg: Config, *, resume: str | os.PathLike | None = None, evaluate: bool = True) -> Path:
    """Train a model as ``cfg`` says and write the run directory.

    Parameters
    ----------
    cfg : Config
        The run's configuration (``cfg.out`` is the run directory, ``cfg.method`` the
        registered method).
    resume : path, optional
        A run directory to continue: pass its saved config (:func:`load_run_config`),
        changed where wanted (a higher ``train.epochs`` trains further). Every stage of
        the method continues from its last checkpoint.
    evaluate : bool
        Score the best checkpoint on the test split afterwards.

    Returns
    -------
    Path
        The run directory.
    """
    method = get_method(cfg.method)
    BACKBONES.entry(cfg.model.backbone)  # an unknown name fails before any data work
    path = Path(resume) if resume is not None else Path(cfg.out)
    dist = init_distributed(cfg.train.device)
    try:
        run = RunDir(path, writer=dist.is_main)
        torch.manual_seed(cfg.train.seed)
        data = prepare_data(cfg, run.read_normalizer() if resume is not None else None)
        if resume is None:
            run.reset_metrics()
        run.write_config(cfg)
        run.write_normalizer(data.normalizer)
        run.write_model_spec(method.model_spec(cfg, data.spec))
        run.write_data_spec(data.spec)
        ctx = RunContext(cfg, data, run, dist, resume=resume is not None)
        method.fit(ctx)
    finally:
        cleanup_distributed()
    if evaluate and dist.is_main:
        evaluate_run(path, data=data)
    return path


def evaluate_run(
    run_dir: str | os.PathLike,
    *,
    data: PreparedData | None = None,
    suite: list[Any] | None = None,
    checkpoint: str = "best",
) -> xr.Dataset:
    """Score a checkpoint of a run on its test split and write the outputs.

    Writes ``forecasts.nc``, ``scorecard.{json,nc}`` and
    ``plots/{forecast_panel,error_vs_lead}.png``, prints the scorecard table, then the
    method's own report (:meth:`~physforecast.methods.Method.evaluate`).

    Returns
    -------
    xr.Dataset
        The scorecard.
    """
    run = RunDir(run_dir).require()
    cfg = run.read_config()
    device = resolve_device(cfg.train.device)
    loaded = run.load_model(checkpoint, device=device)
    data = data or prepare_data(cfg, loaded.normalizer)
    forecast, truth = forecast_windows(
        loaded.model, data.test, data.normalizer, batch_size=cfg.data.batch_size, device=device
    )
    run.write_dataset(
        run.FORECASTS, forecast.assign(**{f"{v}_truth": truth[v] for v in data.variables})
    )
    card = score(forecast, truth, suite)
    card.attrs.update(
        {"backbone": cfg.model.backbone, "method": cfg.method, "dataset": str(cfg.data.dataset)}
    )
    run.write_scorecard(card)
    save_figure(plot_forecast_panel(forecast, truth), run.plot_path("forecast_panel"))
    save_figure(plot_metric_vs_lead(card), run.plot_path("error_vs_lead"))
    print(
        f"scorecard for {run.path} ({cfg.model.backbone}, {cfg.method}, test split: "
        f"{len(data.test)} windows)"
    )
    print(format_scorecard(card))
    ctx = RunContext(cfg, data, run, DistInfo(device=device))
    report = get_method(cfg.method).evaluate(loaded.model, ctx)
    if report:
        print("\n" + report)
    return card
