"""The data of a run, prepared once: the dataset opened, split, normalized and cut into windows."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from physforecast.config import Config

from .checks import check_split_lengths
from .io import open_dataset
from .layout import ChannelLayout
from .normalization import Normalizer
from .spec import DataSpec
from .windows import ForecastWindows, split_indices

__all__ = ["PreparedData", "prepare_data"]


@dataclass
class PreparedData:
    """Everything a method needs from the data, built once per run.

    Attributes
    ----------
    dataset : xr.Dataset
        The opened dataset (in memory when small, lazy otherwise).
    train, val, test : ForecastWindows
        The three splits, normalized with the training split's statistics.
    normalizer : Normalizer
        Fitted on the training split (or the resumed run's).
    spec : DataSpec
        Layout, parameters, steps and system: what the model will expect.
    unlabelled : ForecastWindows, optional
        Windows of the training trajectories left out of ``train`` by
        ``data.train_fraction < 1``: inputs whose truth no method may train on.
    """

    dataset: xr.Dataset
    train: ForecastWindows
    val: ForecastWindows
    test: ForecastWindows
    normalizer: Normalizer
    spec: DataSpec
    unlabelled: ForecastWindows | None = None

    @property
    def layout(self) -> ChannelLayout:
        return self.spec.layout

    @property
    def variables(self) -> list[str]:
        return self.spec.variables

    @property
    def param_names(self) -> list[str]:
        return list(self.spec.params)

    @property
    def in_channels(self) -> int:
        return self.spec.in_channels

    @property
    def cond_dim(self) -> int:
        return len(self.spec.params)


def _scalar_attrs(ds: xr.Dataset) -> dict[str, Any]:
    """The dataset attributes that are JSON-safe scalars (grid spacing, dt, forcing...)."""
    out = {}
    for key, value in ds.attrs.items():
        value = value.item() if isinstance(value, np.generic) else value
        if isinstance(value, str | int | float | bool):
            out[str(key)] = value
    return out


def prepare_data(cfg: Config, normalizer: Normalizer | None = None) -> PreparedData:
    """Open ``cfg.data.dataset``, split it, fit (or reuse) the normalization, cut windows.

    Parameters
    ----------
    cfg : Config
        The run's config (``data`` section; ``train.seed`` seeds the split).
    normalizer : Normalizer, optional
        The statistics of a run being resumed or evaluated; fitted on the training split
        otherwise.
    """
    data = cfg.data
    ds = open_dataset(data.dataset, options=data.options)
    if ds.nbytes <= data.in_memory_mb * 2**20:
        ds = ds.load()  # small: one read instead of a dask graph per window
    layout = ChannelLayout.from_dataset(ds, data.variables, source=str(data.dataset))
    params = list(data.params or [])
    check_split_lengths(ds, data.split, data.in_steps, data.out_steps, seed=cfg.train.seed)
    splits = split_indices(ds, data.split, seed=cfg.train.seed)
    splits, pool = _labelled(splits, data.train_fraction, cfg.train.seed)
    if normalizer is None:
        normalizer = Normalizer.fit(ds, layout, params, selection=splits[0], per=data.normalize)
    elif normalizer.variables != layout.variables:
        raise ValueError(
            f"the run was trained on variables {normalizer.variables}, not {layout.variables}"
        )
    normalizer = normalizer.for_layout(layout)
    # workers reopen the dataset the same way (a cached simulation, or a file through its reader)
    opener = functools.partial(open_dataset, data.dataset, options=data.options)
    kw = dict(stride=data.stride, params=params, normalizer=normalizer, opener=opener)
    parts = [
        ForecastWindows(ds, layout.variables, data.in_steps, data.out_steps, selection=s, **kw)
        for s in splits
    ]
    spec = DataSpec(
        layout,
        params,
        data.in_steps,
        data.out_steps,
        str(ds.attrs.get("system", "")),
        _scalar_attrs(ds),
    )
    unlabelled = None
    if pool is not None:
        unlabelled = ForecastWindows(
            ds, layout.variables, data.in_steps, data.out_steps, selection=pool, **kw
        )
    return PreparedData(ds, *parts, normalizer, spec, unlabelled)


def _labelled(
    splits: list[dict[str, Any]], fraction: float, seed: int
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Keep a seeded ``fraction`` of the training trajectories (>= 1); the rest is the pool."""
    traj = splits[0].get("trajectory")
    if fraction >= 1 or traj is None or len(traj) < 2:
        return splits, None
    n_keep = max(1, int(round(fraction * len(traj))))
    order = np.random.default_rng(seed + 1).permutation(len(traj))
    keep, rest = np.sort(traj[order[:n_keep]]), np.sort(traj[order[n_keep:]])
    pool = {"trajectory": rest} if len(rest) else None
    return [{"trajectory": keep}, *splits[1:]], pool
