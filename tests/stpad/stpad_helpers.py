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


def toy_ns_file(path, n=12, t=8, s=16, nu_range=(1e-4, 1e-2)) -> str:
    """A small ns2d-like file: travelling waves whose speed follows a log-spaced viscosity."""
    rng = np.random.default_rng(0)
    g = np.arange(s) / s
    y, x = np.meshgrid(g, g, indexing="ij")
    nu = np.geomspace(*nu_range, n)
    speed = (0.05 + 0.1 * (np.log10(nu) - math.log10(nu_range[0])))[:, None, None, None]
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1, 1))
    time = np.arange(t)[None, :, None, None]
    w = np.sin(2 * np.pi * (x + speed * time) + phase) + 0.3 * np.cos(4 * np.pi * y)[None, None]
    ds = xr.Dataset(
        {
            "vorticity": (
                ("trajectory", "time", "y", "x"),
                w.astype("float32"),
                {"units": "s-1", "long_name": "vorticity"},
            ),
            "viscosity": (("trajectory",), nu, {"units": "m2 s-1", "long_name": "viscosity"}),
        },
        coords={"trajectory": np.arange(n), "time": np.arange(t, dtype=float), "y": g, "x": g},
        attrs={
            "system": "ns2d",
            "dx": 1 / s,
            "dy": 1 / s,
            "dt": 1.0,
            "boundary_conditions": "periodic",
            "parameters": "viscosity",
            "forcing": "0.1*(sin(2*pi*(x+y)) + cos(2*pi*(x+y)))",
        },
    )
    path.mkdir(parents=True, exist_ok=True)
    out = path / "toy.nc"
    ds.to_netcdf(out)
    return str(out)


def tiny_items(tmp_path, **over) -> dict:
    """Overrides of a tiny ST-PAD run on :func:`toy_ns_file`."""
    return {
        "data.dataset": toy_ns_file(tmp_path),
        "data.in_steps": 2,
        "data.out_steps": 2,
        "data.batch_size": 8,
        "data.params": "[viscosity]",
        "data.split": "[0.6, 0.2, 0.2]",
        "train.epochs": 2,
        "train.device": "cpu",
        "method": "stpad",
        "stpad.hidden": 8,
        "stpad.dim": 4,
        "stpad.num_codes": 16,
        "stpad.prop_hidden": 16,
        "stpad.den_hidden": 16,
        "stpad.den_depth": 1,
        "stpad.emb_dim": 16,
        "stpad.sample_steps": 4,
        "stpad.train_steps": 20,
        "stpad.members": 3,
        "out": str(tmp_path / "run"),
        **over,
    }


def tiny_cfg(tmp_path, **over):
    from physforecast.config import Config, apply_overrides

    items = tiny_items(tmp_path, **over)
    return apply_overrides(Config(), [f"{k}={v}" for k, v in items.items()])
