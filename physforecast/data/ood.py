"""Out-of-distribution splits by a physical parameter (the ``data.ood`` option).

Trajectories whose parameter lies inside a training range are split into
train / validation / test as usual (the in-distribution splits); those outside it go
to ``val_ood`` and ``test_ood``, and ``test_ood`` is also cut into the trajectories
below and above the range. Any method trains on the training split only, so the
normalization and every learned weight see the training range alone. Set it as::

    --set data.ood='{param: viscosity, train_range: [3e-4, 1e-3]}'

(``ns2d`` with ``data.options.viscosity_range`` draws viscosities log-uniformly over a
wider range, so that some trajectories fall on each side).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from physforecast.errors import ConfigError

__all__ = ["OODSpec", "OOD_SPLITS", "ood_split_indices", "parse_ood"]

#: The extra splits of an OOD run, in report order.
OOD_SPLITS = ("val_ood", "test_ood", "test_ood_below", "test_ood_above")


@dataclass(frozen=True)
class OODSpec:
    """A parameter range that is in distribution.

    Attributes
    ----------
    param : str
        The parameter, a variable along ``trajectory`` (``viscosity``, ``rayleigh``).
    low, high : float
        The closed training range ``[low, high]``.
    val_fraction : float
        Share of the out-of-range trajectories used for ``val_ood`` (the rest: ``test_ood``).
    """

    param: str
    low: float
    high: float
    val_fraction: float = 0.5

    def inside(self, values: np.ndarray) -> np.ndarray:
        """Whether each value lies in the training range."""
        values = np.asarray(values, dtype=np.float64)
        return (values >= self.low) & (values <= self.high)


def parse_ood(option: Mapping[str, Any] | None) -> OODSpec | None:
    """The :class:`OODSpec` of ``data.ood`` (None when it is empty).

    Raises
    ------
    ConfigError
        A missing ``param`` or ``train_range``, an empty range, unknown keys.
    """
    if not option:
        return None
    option = dict(option)
    known = {"param", "train_range", "val_fraction"}
    unknown = sorted(set(option) - known)
    if unknown:
        raise ConfigError(f"data.ood has unknown key(s) {unknown}; valid: {sorted(known)}")
    if "param" not in option or "train_range" not in option:
        raise ConfigError(
            "data.ood needs 'param' and 'train_range', e.g. "
            "{param: viscosity, train_range: [3e-4, 1e-3]}"
        )
    rng = option["train_range"]
    if not isinstance(rng, Sequence) or len(rng) != 2 or not float(rng[0]) <= float(rng[1]):
        raise ConfigError(f"data.ood.train_range must be [low, high] with low <= high; got {rng}")
    frac = float(option.get("val_fraction", 0.5))
    if not 0 <= frac < 1:
        raise ConfigError(f"data.ood.val_fraction must be in [0, 1); got {frac}")
    return OODSpec(str(option["param"]), float(rng[0]), float(rng[1]), frac)


def ood_split_indices(
    ds: xr.Dataset,
    spec: OODSpec,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> dict[str, dict[str, np.ndarray]]:
    """``isel`` selections of the in-distribution and OOD splits.

    Parameters
    ----------
    ds : xr.Dataset
        A simulation with a ``trajectory`` dim and ``spec.param`` along it.
    spec : OODSpec
        The training range.
    fractions : sequence of float
        Train / validation / test fractions of the in-range trajectories.
    seed : int
        Seeds the permutations.

    Returns
    -------
    dict
        ``train``, ``val``, ``test`` and the :data:`OOD_SPLITS`, each
        ``{"trajectory": sorted positions}``.

    Raises
    ------
    ConfigError
        No trajectory dim, the parameter missing or not per trajectory, no trajectory
        inside or none outside the range.
    """
    from .windows import split_indices

    if "trajectory" not in ds.dims:
        raise ConfigError("data.ood splits trajectories; the dataset has no 'trajectory' dim")
    if spec.param not in ds.data_vars or ds[spec.param].dims != ("trajectory",):
        raise ConfigError(
            f"data.ood.param={spec.param!r} must be a variable along 'trajectory'; the dataset "
            f"has {sorted(str(v) for v in ds.data_vars)}"
        )
    values = np.asarray(ds[spec.param].values, dtype=np.float64)
    inside = spec.inside(values)
    in_idx, out_idx = np.flatnonzero(inside), np.flatnonzero(~inside)
    what = f"{spec.param} in [{spec.low:g}, {spec.high:g}]"
    if in_idx.size == 0 or out_idx.size == 0:
        raise ConfigError(
            f"data.ood: {in_idx.size} trajectories have {what} and {out_idx.size} lie outside; "
            f"both must be non-empty (values range {values.min():g} .. {values.max():g})"
        )
    parts = split_indices(ds.isel(trajectory=in_idx), fractions, seed=seed)
    out: dict[str, dict[str, np.ndarray]] = {
        name: {"trajectory": np.sort(in_idx[p["trajectory"]])}
        for name, p in zip(("train", "val", "test"), parts)
    }
    order = out_idx[np.random.default_rng(seed + 1).permutation(out_idx.size)]
    n_val = int(round(spec.val_fraction * order.size))
    if order.size >= 2:
        n_val = min(max(n_val, 1 if spec.val_fraction > 0 else 0), order.size - 1)
    else:
        n_val = 0
    test = np.sort(order[n_val:])
    out["val_ood"] = {"trajectory": np.sort(order[:n_val])}
    out["test_ood"] = {"trajectory": test}
    out["test_ood_below"] = {"trajectory": test[values[test] < spec.low]}
    out["test_ood_above"] = {"trajectory": test[values[test] > spec.high]}
    return out
