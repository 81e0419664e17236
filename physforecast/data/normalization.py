"""Z-score normalization of fields (per channel or per variable) and of physical parameters,
fitted on the training split only and saved as JSON with the run.

Statistics are held per *channel* of the :class:`~physforecast.data.layout.ChannelLayout`:
with ``per="channel"`` (the default) every level of a multi-level variable gets its own
mean and standard deviation, as weather models normalize per pressure level; with
``per="variable"`` all levels of a variable share one, repeated over its channels.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from physforecast.atomic import atomic_write_json

from .layout import ChannelLayout

__all__ = ["Normalizer", "NORMALIZE_PER"]

#: What ``per`` may be: one statistic per channel, or one per variable shared by its levels.
NORMALIZE_PER = ("channel", "variable")


@dataclass
class Normalizer:
    """Z-score statistics of the forecast channels and the physical parameters.

    Fields are normalized as ``(x - mean) / std`` per channel. A positive parameter
    spanning more than a factor of 10 (viscosity, Rayleigh number) is normalized in log10
    space; a constant parameter maps to 0.

    Attributes
    ----------
    variables : list of str
        The forecast variables, in channel order.
    mean, std : list of float
        Per-channel statistics, length C.
    params : list of str
        Names of the P parameters, in ``cond`` order.
    param_mean, param_std : list of float
        Statistics of the (possibly log-transformed) parameters, length P.
    param_log : list of bool
        Whether each parameter is normalized in log10 space.
    channels : list of str
        The channel names (:attr:`ChannelLayout.channel_names`), length C; one per variable
        when omitted.
    per : {"channel", "variable"}
        How the statistics were fitted.
    """

    variables: list[str]
    mean: list[float]
    std: list[float]
    params: list[str] = field(default_factory=list)
    param_mean: list[float] = field(default_factory=list)
    param_std: list[float] = field(default_factory=list)
    param_log: list[bool] = field(default_factory=list)
    channels: list[str] = field(default_factory=list)
    per: str = "channel"

    def __post_init__(self) -> None:
        if not self.channels:  # one channel per variable (and files of older runs)
            self.channels = list(self.variables)
        if not (len(self.mean) == len(self.std) == len(self.channels)):
            raise ValueError(
                f"normalization has {len(self.mean)} means, {len(self.std)} stds and "
                f"{len(self.channels)} channels; they must match"
            )
        if self.per not in NORMALIZE_PER:
            raise ValueError(f"per must be one of {NORMALIZE_PER}, got {self.per!r}")

    # -- fitting ------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        ds: xr.Dataset,
        layout: ChannelLayout | list[str],
        params: list[str] | None = None,
        *,
        selection: dict[str, object] | None = None,
        per: str = "channel",
    ) -> Normalizer:
        """Fit the statistics on ``ds.isel(selection)`` (the training split).

        Parameters
        ----------
        ds : xr.Dataset
            The dataset.
        layout : ChannelLayout or list of str
            The channel layout (or the variables, to build it from ``ds``).
        params : list of str, optional
            Physical parameters to normalize.
        selection : dict, optional
            ``isel`` selection of the training split.
        per : {"channel", "variable"}
            One statistic per channel, or per variable shared by its levels.

        NaN points (masked land) are ignored. Only reductions are computed, so a
        dask-backed dataset is never loaded whole.
        """
        if per not in NORMALIZE_PER:
            raise ValueError(f"per must be one of {NORMALIZE_PER}, got {per!r}")
        if not isinstance(layout, ChannelLayout):
            layout = ChannelLayout.from_dataset(ds, list(layout))
        sub = ds.isel(selection) if selection else ds
        mean: list[float] = []
        std: list[float] = []
        for name, extra, width in zip(layout.variables, layout.extra, layout.widths):
            da = sub[name]
            keep = [d for d, _ in extra] if per == "channel" else []  # levels, in channel order
            reduce = [d for d in da.dims if d not in keep]
            m = np.asarray(da.mean(reduce, skipna=True).transpose(*keep).values, float).ravel()
            s = np.asarray(da.std(reduce, skipna=True).transpose(*keep).values, float).ravel()
            if m.size == 1:  # per variable: one statistic repeated over its channels
                m, s = np.repeat(m, width), np.repeat(s, width)
            if not np.isfinite(m).all():
                raise ValueError(
                    f"variable {name!r} is all NaN in the training split"
                    + (" at some level" if m.size > 1 else "")
                )
            mean += [float(v) for v in m]
            std += [float(v) if v > 0 and math.isfinite(v) else 1.0 for v in s]
        pm, ps, plog = [], [], []
        for name in params or []:
            values = np.asarray(sub[name].values, dtype=np.float64).ravel()
            log = bool(values.min() > 0 and values.max() > 10 * values.min())
            v = np.log10(values) if log else values
            pm.append(float(v.mean()))
            s = float(v.std())
            ps.append(s if s > 0 else 1.0)
            plog.append(log)
        return cls(
            list(layout.variables),
            mean,
            std,
            list(params or []),
            pm,
            ps,
            plog,
            channels=layout.channel_names,
            per=per,
        )

    def for_layout(self, layout: ChannelLayout) -> Normalizer:
        """These statistics for ``layout``'s channels.

        A normalizer with one statistic per variable (its ``channels`` are its variables)
        is expanded over each variable's levels; one that already has ``layout.channels``
        statistics is returned as it is.

        Raises
        ------
        ValueError
            When the variables or the channel count do not fit ``layout``.
        """
        if layout.variables != self.variables:
            raise ValueError(
                f"the normalizer is for variables {self.variables}, the layout has {layout.variables}"
            )
        if len(self.channels) == layout.channels:
            return self
        if self.channels != self.variables:
            raise ValueError(
                f"the normalizer has {len(self.channels)} channel statistics; the layout has "
                f"{layout.channels} channels ({', '.join(layout.channel_names)})"
            )
        repeat = np.repeat(np.arange(len(self.variables)), layout.widths)
        return replace(
            self,
            mean=[self.mean[i] for i in repeat],
            std=[self.std[i] for i in repeat],
            channels=layout.channel_names,
            per="variable",
        )

    # -- transforms ---------------------------------------------------------------
    def channel_stats(self, like: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std as tensors of shape (C, 1, 1), in ``like``'s dtype and device
        (float64 on the CPU by default)."""
        kw: dict[str, Any] = (
            {"dtype": like.dtype, "device": like.device}
            if like is not None
            else {"dtype": torch.float64}
        )
        mean = torch.tensor(self.mean, **kw).reshape(-1, 1, 1)
        std = torch.tensor(self.std, **kw).reshape(-1, 1, 1)
        return mean, std

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Fields (..., C, H, W) in physical units -> normalized."""
        mean, std = self.channel_stats(x)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized fields (..., C, H, W) -> physical units."""
        mean, std = self.channel_stats(x)
        return x * std + mean

    def normalize_params(self, p: torch.Tensor) -> torch.Tensor:
        """Parameters (..., P) in physical units -> normalized ``cond``."""
        if not self.params:
            return p
        log = torch.tensor(self.param_log, device=p.device)
        p = torch.where(log, torch.log10(p.clamp_min(1e-300)), p)
        mean = torch.tensor(self.param_mean, dtype=p.dtype, device=p.device)
        std = torch.tensor(self.param_std, dtype=p.dtype, device=p.device)
        return (p - mean) / std

    def denormalize_params(self, c: torch.Tensor) -> torch.Tensor:
        """Normalized ``cond`` (..., P) -> parameters in physical units."""
        if not self.params:
            return c
        mean = torch.tensor(self.param_mean, dtype=c.dtype, device=c.device)
        std = torch.tensor(self.param_std, dtype=c.dtype, device=c.device)
        v = c * std + mean
        log = torch.tensor(self.param_log, device=c.device)
        return torch.where(log, torch.pow(10.0, v), v)

    # -- persistence --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of all statistics."""
        return {
            "variables": self.variables,
            "channels": self.channels,
            "per": self.per,
            "mean": self.mean,
            "std": self.std,
            "params": self.params,
            "param_mean": self.param_mean,
            "param_std": self.param_std,
            "param_log": self.param_log,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write ``normalization.json`` atomically."""
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Normalizer:
        """Read a file written by :meth:`save`."""
        return cls(**json.loads(Path(path).read_text()))
