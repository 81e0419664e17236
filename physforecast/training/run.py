"""The end-to-end job behind ``physforecast train`` and ``physforecast evaluate``.

``train(cfg)`` opens the data, fits the normalization on the training split, builds the
backbone, trains it, scores the best checkpoint on the test split and fills the run
directory::

    config.yaml  metrics.jsonl  normalization.json  checkpoints/{last,best}.pt
    scorecard.json  scorecard.nc  forecasts.nc  plots/*.png
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
import xarray as xr
from torch import nn

import physforecast as pf
from physforecast.config import Config, config_from_dict, save_config
from physforecast.data.io import open_dataset, write_dataset
from physforecast.data.normalization import Normalizer
from physforecast.data.windows import ForecastWindows, check_variables, split_indices
from physforecast.rollout import forecast_windows

from .checkpoint import load_checkpoint
from .distributed import cleanup_distributed, init_distributed
from .trainer import Trainer

__all__ = ["Prepared", "prepare", "build_model", "train", "evaluate_run", "load_run"]


@dataclass
class Prepared:
    """Everything a model needs from the data, built once per run."""

    dataset: xr.Dataset
    train: ForecastWindows
    val: ForecastWindows
    test: ForecastWindows
    normalizer: Normalizer
    variables: list[str]
    param_names: list[str]
    in_channels: int
    cond_dim: int


def infer_variables(ds: xr.Dataset) -> list[str]:
    """Forecastable variables: data variables with a time dim and two spatial dims."""
    names = [n for n, v in ds.data_vars.items() if "time" in v.dims and v.ndim >= 3]
    if not names:
        raise ValueError(
            f"no variable with a 'time' dim and two spatial dims; variables: {list(ds.data_vars)}"
        )
    return names


def prepare(cfg: Config, normalizer: Normalizer | None = None) -> Prepared:
    """Open the dataset, split it, fit (or reuse) the normalization and cut windows."""
    data = cfg.data
    pf.BACKBONES.entry(cfg.model.backbone)  # an unknown name fails before any data work
    ds = open_dataset(data.dataset, options=data.options)
    if ds.nbytes <= data.in_memory_mb * 2**20:
        ds = ds.load()  # small: one read instead of a dask graph per window
    variables = list(data.variables or infer_variables(ds))
    check_variables(ds, variables)
    params = list(data.params or [])
    splits = split_indices(ds, data.split, seed=cfg.train.seed)
    if normalizer is None:
        normalizer = Normalizer.fit(ds, variables, params, selection=splits[0])
    elif normalizer.variables != variables:
        raise ValueError(
            f"the run was trained on variables {normalizer.variables}, not {variables}"
        )
    # workers reopen the dataset the same way (a cached simulation, or a file through its reader)
    opener = functools.partial(open_dataset, data.dataset, options=data.options)
    kw = dict(stride=data.stride, params=params, normalizer=normalizer, opener=opener)
    parts = [
        ForecastWindows(ds, variables, data.in_steps, data.out_steps, selection=s, **kw)
        for s in splits
    ]
    return Prepared(ds, *parts, normalizer, variables, params, parts[0].channels, len(params))


def model_spec(cfg: Config, prepared: Prepared) -> dict[str, Any]:
    """The keyword arguments of :func:`physforecast.create_backbone` for this run (saved as ``model.json``)."""
    return {
        "name": cfg.model.backbone,
        "in_steps": cfg.data.in_steps,
        "out_steps": cfg.data.out_steps,
        "in_channels": prepared.in_channels,
        "cond_dim": prepared.cond_dim or None,
        **cfg.model.options,
    }


def data_spec(prepared: Prepared) -> dict[str, Any]:
    """What a trained model expects of its input (saved as ``data.json``).

    Keys: ``variables``, ``params``, ``spatial_dims``, ``shape`` (H, W), ``in_steps``,
    ``out_steps``, ``in_channels``, ``system``.
    """
    windows = prepared.train
    return {
        "variables": prepared.variables,
        "params": prepared.param_names,
        "spatial_dims": list(windows.spatial),
        "shape": list(windows.shape),
        "in_steps": windows.in_steps,
        "out_steps": windows.out_steps,
        "in_channels": prepared.in_channels,
        "system": str(prepared.dataset.attrs.get("system", "")),
    }


def build_model(cfg: Config, prepared: Prepared) -> nn.Module:
    """The backbone named in ``cfg.model`` sized for the prepared data."""
    return pf.create_backbone(**model_spec(cfg, prepared))


def train(cfg: Config, *, resume: str | Path | None = None, evaluate: bool = True) -> Path:
    """Train a model as ``cfg`` says and write the run directory.

    Parameters
    ----------
    cfg : Config
        The run's configuration (``cfg.out`` is the run directory).
    resume : path, optional
        A run directory to continue from its ``checkpoints/last.pt``. Pass its saved
        config (:func:`load_run_config`), changed where wanted (a higher
        ``train.epochs`` trains further); training stops at ``cfg.train.epochs``.
    evaluate : bool
        Score the best checkpoint on the test split afterwards.

    Returns
    -------
    Path
        The run directory.
    """
    run_dir = Path(resume) if resume is not None else Path(cfg.out)
    dist_info = init_distributed(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    normalizer = Normalizer.load(run_dir / "normalization.json") if resume is not None else None
    prepared = prepare(cfg, normalizer)
    if dist_info.is_main:
        (run_dir / "plots").mkdir(parents=True, exist_ok=True)
        if resume is None:
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        prepared.normalizer.save(run_dir / "normalization.json")
        (run_dir / "model.json").write_text(json.dumps(model_spec(cfg, prepared), indent=2))
        (run_dir / "data.json").write_text(json.dumps(data_spec(prepared), indent=2))
    try:
        if cfg.method == "beamvq":
            from physforecast.beamvq.pipeline import train_beamvq

            model = train_beamvq(cfg, prepared, run_dir)
        elif cfg.method == "supervised":
            model = build_model(cfg, prepared)
            trainer = Trainer(model, cfg.train, run_dir=run_dir, config=cfg, dist_info=dist_info)
            if resume is not None:
                trainer.load(run_dir / "checkpoints" / "last.pt")
            trainer.fit(prepared.train, prepared.val)
        else:
            raise ValueError(f"unknown method {cfg.method!r}; choose 'supervised' or 'beamvq'")
    finally:
        cleanup_distributed()
    if evaluate and dist_info.is_main:
        evaluate_run(run_dir, prepared=prepared)
    return run_dir


def load_run_config(run_dir: str | Path) -> Config:
    """The resolved config saved in a run directory."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml)")
    return config_from_dict(yaml.safe_load(path.read_text()))


def load_run(run_dir: str | Path, checkpoint: str = "best") -> tuple[nn.Module, Normalizer, Config]:
    """Rebuild the model of a run from its checkpoint, with its normalization and config."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    normalizer = Normalizer.load(run_dir / "normalization.json")
    state = load_checkpoint(run_dir / "checkpoints" / f"{checkpoint}.pt")
    spec = json.loads((run_dir / "model.json").read_text())
    if cfg.method == "beamvq":
        from physforecast.beamvq.pipeline import build_beamvq_model

        model = build_beamvq_model(cfg, spec)
    else:
        model = pf.create_backbone(**spec)
    model.load_state_dict(state["model"])
    model.eval()
    return model, normalizer, cfg


def evaluate_run(
    run_dir: str | Path, *, prepared: Prepared | None = None, suite: list[Any] | None = None
) -> xr.Dataset:
    """Score the best checkpoint of a run on its test split and write the outputs.

    Writes ``forecasts.nc``, ``scorecard.{json,nc}`` and ``plots/{forecast_panel,error_vs_lead}.png``
    and prints the scorecard table.

    Returns
    -------
    xr.Dataset
        The scorecard.
    """
    from physforecast.metrics import format_scorecard, score, write_scorecard
    from physforecast.plots import plot_forecast_panel, plot_metric_vs_lead, save_figure

    run_dir = Path(run_dir)
    model, normalizer, cfg = load_run(run_dir)
    prepared = prepared or prepare(cfg, normalizer)
    forecast, truth = forecast_windows(
        model, prepared.test, normalizer, batch_size=cfg.data.batch_size
    )
    write_dataset(
        forecast.assign(**{f"{v}_truth": truth[v] for v in prepared.variables}),
        run_dir / "forecasts.nc",
    )
    card = score(forecast, truth, suite)
    card.attrs.update(
        {"backbone": cfg.model.backbone, "method": cfg.method, "dataset": cfg.data.dataset}
    )
    write_scorecard(card, run_dir)
    for name, fig in (
        ("forecast_panel", plot_forecast_panel(forecast, truth)),
        ("error_vs_lead", plot_metric_vs_lead(card)),
    ):
        save_figure(fig, run_dir / "plots" / f"{name}.png")
        plt.close(fig)
    print(
        f"scorecard for {run_dir} ({cfg.model.backbone}, {cfg.method}, test split: {len(prepared.test)} windows)"
    )
    print(format_scorecard(card))
    if cfg.method == "beamvq":
        _compare_beamvq(model, prepared, cfg, run_dir)
    return card


def _compare_beamvq(model: nn.Module, prepared: Prepared, cfg: Config, run_dir: Path) -> None:
    """Backbone alone, head top-1 and beam-searched forecast side by side (``beamvq_eval.json``)."""
    from torch.utils.data import DataLoader

    from physforecast.beamvq.pipeline import evaluate_beamvq, format_evaluation

    result = evaluate_beamvq(model, DataLoader(prepared.test, batch_size=cfg.data.batch_size))
    tmp = run_dir / "beamvq_eval.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(run_dir / "beamvq_eval.json")
    print("\nbackbone alone vs BeamVQ (test split, per lead time):")
    print(format_evaluation(result))
