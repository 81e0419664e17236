"""What stays on a party: its dataset, its normalisation, its training loop, its scores.

A party opens its own file with :func:`physforecast.data.open_dataset`, splits it by
trajectory (:func:`physforecast.data.split_indices`), fits a
:class:`~physforecast.data.Normalizer` on its own training split and cuts
:class:`~physforecast.data.ForecastWindows`. Nothing here leaves the party.

Local training is a small explicit loop (:class:`LocalTrainer`) rather than
:class:`physforecast.training.Trainer`: a federated round needs a fixed number of steps
between aggregations and an optimizer whose state persists from round to round, while
the Trainer owns one warmup + cosine schedule over one ``fit``. The loss is the package's
:func:`physforecast.training.mse_loss_fn` (masked MSE).
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from physforecast.data import ForecastWindows, Normalizer, open_dataset, split_indices
from physforecast.training import mse_loss_fn

from .files import HDF5_LOCK

__all__ = [
    "LocalData",
    "InMemoryWindows",
    "load_local_data",
    "build_model",
    "LocalTrainer",
    "forecast_test",
    "overall_rmse",
]


class InMemoryWindows(Dataset):
    """Every sample of a windows dataset, read once and kept (a party's training set)."""

    def __init__(self, windows: Dataset) -> None:
        self.items = [windows[i] for i in range(len(windows))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.items[index]


@dataclass
class LocalData:
    """One party's dataset, split and normalised.

    Attributes
    ----------
    path : str
        The file it came from.
    variables : list of str
        Forecast variables (channel order).
    train, val, test : ForecastWindows
        Windows of the three trajectory splits, normalised with ``normalizer``.
    train_samples : InMemoryWindows
        The training windows read once, for the training loop.
    normalizer : Normalizer
        Fitted on this party's training split only.
    """

    path: str
    variables: list[str]
    train: ForecastWindows
    val: ForecastWindows
    test: ForecastWindows
    normalizer: Normalizer
    train_samples: InMemoryWindows

    @property
    def channels(self) -> int:
        """Input channels C of a window."""
        return self.train.channels


def _forecast_variables(ds: xr.Dataset) -> list[str]:
    return [str(n) for n, v in ds.data_vars.items() if "time" in v.dims]


def load_local_data(
    path: str | os.PathLike,
    *,
    variables: Sequence[str] | None,
    in_steps: int,
    out_steps: int,
    split: Sequence[float],
    seed: int,
) -> LocalData:
    """Open a party's file and cut its normalised train / validation / test windows.

    Parameters
    ----------
    path : path
        netCDF / zarr / HDF5 file of this party (dims trajectory, time, y, x).
    variables : sequence of str, optional
        Forecast variables; default: every data variable with a ``time`` dim.
    in_steps, out_steps : int
        ``T_in`` and ``T_out``.
    split : sequence of float
        Train / validation / test fractions of the trajectories.
    seed : int
        Seed of the split.
    """
    # a party's own data are small next to memory; reading windows lazily from the file
    # would make data loading, not training, the local compute
    with HDF5_LOCK:  # parties in thread mode read one at a time
        ds = open_dataset(path).load()
    names = list(variables) if variables else _forecast_variables(ds)
    if not names:
        raise ValueError(f"{os.fspath(path)!r} has no variable with a 'time' dim to forecast")
    sel = split_indices(ds, split, seed=seed)
    normalizer = Normalizer.fit(ds, names, selection=sel[0])
    windows = [
        ForecastWindows(ds, names, in_steps, out_steps, selection=s, normalizer=normalizer)
        for s in sel
    ]
    if len(windows[0]) == 0:
        raise ValueError(f"{os.fspath(path)!r} gives no training windows")
    return LocalData(os.fspath(path), names, *windows, normalizer, InMemoryWindows(windows[0]))


def build_model(spec: dict[str, Any], in_channels: int) -> nn.Module:
    """The backbone of ``spec`` (``backbone``, ``options``, ``in_steps``, ``out_steps``, ``seed``).

    Every party builds it from the same seed, so all start from the same shared weights.
    """
    from physforecast import create_backbone

    # the global RNG is shared by threads (in-process parties): build one model at a time
    with _BUILD_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(spec["seed"]))
        return create_backbone(
            spec["backbone"],
            in_steps=int(spec["in_steps"]),
            out_steps=int(spec["out_steps"]),
            in_channels=in_channels,
            **dict(spec.get("options") or {}),
        )


_BUILD_LOCK = threading.Lock()


class LocalTrainer:
    """AdamW steps on one party's windows; optimizer state persists across rounds.

    Parameters
    ----------
    model : nn.Module
        The party's backbone.
    data : Dataset
        Training windows (dicts with ``x``, ``y``, ``mask``).
    lr : float
        Learning rate.
    batch_size : int
        Windows per step.
    seed : int
        Seed of the sampling order.
    grad_clip : float
        Max global gradient norm (0 disables clipping).
    """

    def __init__(
        self,
        model: nn.Module,
        data: Dataset,
        *,
        lr: float,
        batch_size: int,
        seed: int,
        weight_decay: float = 1e-4,
        grad_clip: float = 1.0,
    ) -> None:
        self.model = model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        self.grad_clip = float(grad_clip)
        gen = torch.Generator().manual_seed(int(seed))
        loader = DataLoader(
            data,
            batch_size=min(batch_size, len(data)),
            sampler=RandomSampler(data, generator=gen),
            drop_last=True,
        )
        self._batches: Iterator[dict[str, torch.Tensor]] = itertools.chain.from_iterable(
            itertools.repeat(loader)
        )
        self.steps_done = 0

    def set_lr(self, lr: float) -> None:
        """Change the learning rate (for fine-tuning)."""
        for group in self.optimizer.param_groups:
            group["lr"] = float(lr)

    def run(self, steps: int) -> float:
        """``steps`` optimisation steps; returns their mean loss."""
        self.model.train()
        total = 0.0
        for _ in range(int(steps)):
            batch = next(self._batches)
            loss, _ = mse_loss_fn(self.model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"local training diverged (loss {float(loss)}) at step {self.steps_done}; "
                    "lower the learning rate"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.optimizer.step()
            total += float(loss.detach())
            self.steps_done += 1
        return total / max(int(steps), 1)


def forecast_test(model: nn.Module, data: LocalData) -> tuple[xr.Dataset, xr.Dataset]:
    """Forecast and truth Datasets of the party's test windows, in physical units."""
    from physforecast.forecast.windows import forecast_windows

    return forecast_windows(model, data.test, data.normalizer)


def overall_rmse(forecast: xr.Dataset, truth: xr.Dataset, variables: Sequence[str]) -> float:
    """Root-mean-square error over all test windows, lead times, points and ``variables``."""
    sq = [np.square(forecast[v].values - truth[v].values).ravel() for v in variables]
    return float(np.sqrt(np.nanmean(np.concatenate(sq))))
