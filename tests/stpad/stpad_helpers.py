"""Shared helpers of the ST-PAD tests."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import xarray as xr

from physforecast.data.normalization import Normalizer


def fake_prepared(channels, *, system="", params=(), param_values=None, attrs=None):
    """What PhysicsConstraints.fill reads: dataset attrs/vars, normalizer, parameter names."""
    n = len(channels)
    data_vars = {}
    for name, values in (param_values or {}).items():
        data_vars[name] = ("trajectory", np.asarray(values, dtype=float))
    ds = xr.Dataset(data_vars, attrs={"system": system, **(attrs or {})})
    pm, ps, plog = [], [], []
    for name in params:
        v = np.log10(np.asarray(param_values[name], float))
        pm.append(float(v.mean()))
        ps.append(float(v.std()) or 1.0)
        plog.append(True)
    norm = Normalizer(
        variables=list(channels),
        mean=[0.0] * n,
        std=[1.0] * n,
        params=list(params),
        param_mean=pm,
        param_std=ps,
        param_log=plog,
    )
    return SimpleNamespace(dataset=ds, normalizer=norm, param_names=list(params))


def torus(n):
    g = np.arange(n) / n
    y, x = np.meshgrid(g, g, indexing="ij")
    return y, x, 1.0 / n


TWO_PI = 2 * math.pi
