"""Per-variable normalization, fitted on the training split only and saved as JSON."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import xarray as xr

__all__ = ["Normalizer"]


@dataclass
class Normalizer:
    """Z-score statistics of the forecast variables and the physical parameters.

    Fields are normalized as ``(x - mean) / std`` per variable. A positive parameter
    spanning more than a factor of 10 (viscosity, Rayleigh number) is normalized in
    log10 space; a constant parameter maps to 0.

    Attributes
    ----------
    variables : list of str
        Names of the C field variables, in channel order.
    mean, std : list of float
        Per-variable statistics, length C.
    params : list of str
        Names of the P parameters, in ``cond`` order.
    param_mean, param_std : list of float
        Statistics of the (possibly log-transformed) parameters, length P.
    param_log : list of bool
        Whether each parameter is normalized in log10 space.
    """

    variables: list[str]
    mean: list[float]
    std: list[float]
    params: list[str] = field(default_factory=list)
    param_mean: list[float] = field(default_factory=list)
    param_std: list[float] = field(default_factory=list)
    param_log: list[bool] = field(default_factory=list)

    # -- fitting ------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        ds: xr.Dataset,
        variables: list[str],
        params: list[str] | None = None,
        *,
        selection: dict[str, object] | None = None,
    ) -> Normalizer:
        """Fit the statistics on ``ds.isel(selection)`` (the training split).

        NaN points (masked land) are ignored. Only reductions are computed, so a
        dask-backed dataset is never loaded whole.
        """
        sub = ds.isel(selection) if selection else ds
        mean, std = [], []
        for name in variables:
            da = sub[name]
            m = float(da.mean(skipna=True))
            s = float(da.std(skipna=True))
            if not math.isfinite(m):
                raise ValueError(f"variable {name!r} is all NaN in the training split")
            mean.append(m)
            std.append(s if s > 0 and math.isfinite(s) else 1.0)
        pm, ps, plog = [], [], []
        for name in params or []:
            values = np.asarray(sub[name].values, dtype=np.float64).ravel()
            log = bool(values.min() > 0 and values.max() > 10 * values.min())
            v = np.log10(values) if log else values
            pm.append(float(v.mean()))
            s = float(v.std())
            ps.append(s if s > 0 else 1.0)
            plog.append(log)
        return cls(list(variables), mean, std, list(params or []), pm, ps, plog)

    # -- transforms ---------------------------------------------------------------
    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.mean, dtype=like.dtype, device=like.device).reshape(-1, 1, 1)
        std = torch.tensor(self.std, dtype=like.dtype, device=like.device).reshape(-1, 1, 1)
        return mean, std

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Fields (..., C, H, W) in physical units -> normalized."""
        mean, std = self._stats(x)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized fields (..., C, H, W) -> physical units."""
        mean, std = self._stats(x)
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

    # -- persistence --------------------------------------------------------------
    def to_dict(self) -> dict[str, list]:
        """JSON-safe dict of all statistics."""
        return {
            "variables": self.variables,
            "mean": self.mean,
            "std": self.std,
            "params": self.params,
            "param_mean": self.param_mean,
            "param_std": self.param_std,
            "param_log": self.param_log,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write ``normalization.json`` atomically."""
        path = Path(path)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Normalizer:
        """Read a file written by :meth:`save`."""
        return cls(**json.loads(Path(path).read_text()))
