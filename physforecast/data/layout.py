"""The channel layout: how a dataset's variables (and their levels) become model channels.

A model sees frames ``(C, H, W)``. Each forecast variable contributes one channel, or one
per level when it has extra dims (``level``, ``z``...): a variable ``t(time, level=3, y, x)``
gives three channels, ``t[level=0]``, ``t[level=1]``, ``t[level=2]``. :class:`ChannelLayout`
is that mapping, computed once from a dataset and saved with a run (``data.json``), and the
one place that stacks variables into channels and splits channels back into variables, for
training windows, normalization statistics, rollouts and forecast datasets alike.

:func:`spatial_dims` is the one rule for which two dims of a field are the grid, and
:func:`check_variables` the one check that the forecast variables exist; both raise
:class:`~physforecast.errors.DataFormatError`.

Examples
--------
>>> import numpy as np, xarray as xr
>>> ds = xr.Dataset({"u": (("time", "y", "x"), np.zeros((4, 8, 8))),
...                  "t": (("time", "level", "y", "x"), np.zeros((4, 3, 8, 8)))})
>>> layout = ChannelLayout.from_dataset(ds, ["u", "t"])
>>> layout.channels, layout.channel_names
(4, ['u', 't[level=0]', 't[level=1]', 't[level=2]'])
>>> layout.stack(ds).shape
(4, 4, 8, 8)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from physforecast.errors import DataFormatError

__all__ = [
    "SPATIAL_PAIRS",
    "NON_SPATIAL_DIMS",
    "ChannelLayout",
    "spatial_dims",
    "check_variables",
    "forecast_variables",
]

#: Recognised (row, column) dim pairs of a grid, in order of preference.
SPATIAL_PAIRS: tuple[tuple[str, str], ...] = (("y", "x"), ("latitude", "longitude"), ("lat", "lon"))
#: Dims that are never part of the grid (or of a variable's channels).
NON_SPATIAL_DIMS: tuple[str, ...] = ("trajectory", "sample", "time", "lead_time", "member", "step")


def spatial_dims(obj: xr.DataArray | Sequence[str], name: str | None = None) -> tuple[str, str]:
    """The (row, column) grid dims of a field.

    A recognised pair (``y, x``, ``latitude, longitude``, ``lat, lon``) wins; otherwise the
    last two dims, if neither is a sample, time or member dim.

    Parameters
    ----------
    obj : xr.DataArray or sequence of str
        The field, or its dims.
    name : str, optional
        The variable's name, for the error message (taken from a DataArray).

    Raises
    ------
    DataFormatError
        When no two dims can be the grid.
    """
    dims = tuple(str(d) for d in (obj.dims if isinstance(obj, xr.DataArray) else obj))
    if name is None and isinstance(obj, xr.DataArray):
        name = None if obj.name is None else str(obj.name)
    for pair in SPATIAL_PAIRS:
        if all(d in dims for d in pair):
            return pair
    if len(dims) >= 2 and not set(dims[-2:]) & set(NON_SPATIAL_DIMS):
        return dims[-2], dims[-1]
    label = f"variable {name!r}" if name else "the field"
    raise DataFormatError(
        f"{label} has dims {dims}; it needs two spatial dims: (y, x), (latitude, longitude) or "
        "(lat, lon), or two unnamed grid dims last"
    )


def check_variables(
    ds: xr.Dataset,
    variables: Iterable[str] | str | None,
    *,
    time: bool = False,
    source: str = "dataset",
) -> list[str]:
    """The list of ``variables``, each present in ``ds`` (every data variable if None).

    Parameters
    ----------
    ds : xr.Dataset
        The dataset.
    variables : str, iterable of str or None
        The names to check.
    time : bool
        Also require a ``time`` dim (forecast variables).
    source : str
        What ``ds`` is (a file name), for the message.

    Raises
    ------
    DataFormatError
        Naming the missing variables (or the one without a time dim) and listing the
        available ones.
    """
    available = [str(v) for v in ds.data_vars]
    if variables is None:
        return available
    names = [variables] if isinstance(variables, str) else [str(v) for v in variables]
    missing = [v for v in names if v not in ds.data_vars]
    if missing:
        timed = [v for v in available if "time" in ds[v].dims] if time else available
        raise DataFormatError(
            f"{source}: variable(s) {missing} not found; available: {', '.join(timed) or 'none'}"
        )
    if time:
        for v in names:
            if "time" not in ds[v].dims:
                raise DataFormatError(
                    f"{source}: variable {v!r} has dims {ds[v].dims}; a forecast variable needs "
                    "a 'time' dim"
                )
    return names


def forecast_variables(ds: xr.Dataset) -> list[str]:
    """The variables a dataset can be forecast on: those with a time dim and a grid."""
    names = []
    for n, v in ds.data_vars.items():
        if "time" not in v.dims or v.ndim < 3:
            continue
        try:
            spatial_dims(v)
        except DataFormatError:
            continue
        names.append(str(n))
    if not names:
        raise DataFormatError(
            f"no variable with a 'time' dim and two spatial dims; variables: {list(ds.data_vars)}"
        )
    return names


@dataclass(frozen=True)
class ChannelLayout:
    """Which channels each forecast variable occupies.

    Attributes
    ----------
    variables : list of str
        The forecast variables, in channel order.
    extra : list of list of (str, int)
        Per variable, its dims besides sample/time and grid (levels) with their sizes,
        in the order they are flattened into channels.
    spatial : (str, str)
        The grid dims (row, column).
    shape : (int, int)
        The grid size (H, W).
    """

    variables: list[str]
    extra: list[list[tuple[str, int]]]
    spatial: tuple[str, str]
    shape: tuple[int, int]
    _offsets: list[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.extra) != len(self.variables):
            raise ValueError(f"{len(self.extra)} level lists for {len(self.variables)} variables")
        offsets = [0]
        for width in self.widths:
            offsets.append(offsets[-1] + width)
        object.__setattr__(self, "_offsets", offsets)

    # -- construction ---------------------------------------------------------------
    @classmethod
    def from_dataset(
        cls, ds: xr.Dataset, variables: Sequence[str] | None = None, *, source: str = "dataset"
    ) -> ChannelLayout:
        """The layout of ``variables`` (all forecastable ones by default) in ``ds``.

        Raises
        ------
        DataFormatError
            A variable is missing, has no time dim, or lies on another grid than the first.
        """
        names = check_variables(ds, variables or forecast_variables(ds), time=True, source=source)
        if not names:
            raise DataFormatError(f"{source}: no forecast variables given")
        grid = spatial_dims(ds[names[0]])
        extra = []
        for name in names:
            da = ds[name]
            dims = spatial_dims(da)
            if dims != grid:
                raise DataFormatError(
                    f"{source}: variable {name!r} is on grid dims {dims}, not {grid} like "
                    f"{names[0]!r}; forecast variables must share one grid"
                )
            other = [str(d) for d in da.dims if d not in (*NON_SPATIAL_DIMS, *grid)]
            extra.append([(d, int(ds.sizes[d])) for d in other])
        shape = (int(ds.sizes[grid[0]]), int(ds.sizes[grid[1]]))
        return cls(list(names), extra, grid, shape)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChannelLayout:
        """Rebuild from :meth:`to_dict` output."""
        return cls(
            [str(v) for v in data["variables"]],
            [[(str(d), int(n)) for d, n in e] for e in data["extra"]],
            (str(data["spatial"][0]), str(data["spatial"][1])),
            (int(data["shape"][0]), int(data["shape"][1])),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (saved in a run's ``data.json``)."""
        return {
            "variables": list(self.variables),
            "extra": [[[d, n] for d, n in e] for e in self.extra],
            "spatial": list(self.spatial),
            "shape": list(self.shape),
        }

    # -- channels ---------------------------------------------------------------------
    @property
    def widths(self) -> list[int]:
        """Channels per variable."""
        return [math.prod(n for _, n in e) for e in self.extra]

    @property
    def channels(self) -> int:
        """Total number of channels ``C``."""
        return sum(self.widths)

    def channel_slice(self, variable: str) -> slice:
        """The channels of ``variable``."""
        i = self.variables.index(variable)
        return slice(self._offsets[i], self._offsets[i + 1])

    @property
    def channel_names(self) -> list[str]:
        """One name per channel: the variable, with ``[dim=index,...]`` for levels."""
        names = []
        for var, extra in zip(self.variables, self.extra):
            if not extra:
                names.append(var)
                continue
            for index in np.ndindex(*[n for _, n in extra]):
                names.append(f"{var}[{','.join(f'{d}={i}' for (d, _), i in zip(extra, index))}]")
        return names

    @property
    def channel_variable(self) -> list[int]:
        """Index (into :attr:`variables`) of the variable of each channel, length ``C``."""
        return [i for i, w in enumerate(self.widths) for _ in range(w)]

    @property
    def grid(self) -> dict[str, int]:
        """``{row_dim: H, col_dim: W}``."""
        return dict(zip(self.spatial, self.shape))

    # -- checks -------------------------------------------------------------------------
    def check(self, ds: xr.Dataset, *, source: str = "the dataset") -> None:
        """Raise :class:`DataFormatError` unless ``ds`` holds these variables on this grid.

        The message names what differs (a missing variable, another grid, other levels)
        and what to do.
        """
        missing = [v for v in self.variables if v not in ds.data_vars]
        if missing:
            raise DataFormatError(
                f"{source} lacks variable(s) {missing} that the model forecasts (trained on "
                f"{self.variables}); it has {list(ds.data_vars)}. Rename with ds.rename(...)"
            )
        got = ChannelLayout.from_dataset(ds, self.variables, source=source)
        if got.spatial != self.spatial or got.shape != self.shape:
            have = " x ".join(f"{d}={n}" for d, n in got.grid.items())
            want = " x ".join(f"{d}={n}" for d, n in self.grid.items())
            raise DataFormatError(
                f"{source} is on a different grid ({have}) than the model was trained on "
                f"({want}); regrid it (ds.interp, ds.coarsen) to the training grid first"
            )
        for var, mine, theirs in zip(self.variables, self.extra, got.extra):
            if mine != theirs:
                raise DataFormatError(
                    f"{source}: variable {var!r} has levels {dict(theirs) or 'none'}, the model "
                    f"was trained with {dict(mine) or 'none'}; select the same levels"
                )

    # -- stacking -----------------------------------------------------------------------
    def stack(self, ds: xr.Dataset, lead: Sequence[str] = ("time",)) -> np.ndarray:
        """Variables of ``ds`` -> one array ``(*lead, C, H, W)`` float32.

        Parameters
        ----------
        ds : xr.Dataset
            Holds the layout's variables with the dims ``lead`` (e.g. ``("time",)``, or
            ``("sample", "step")``) plus their levels and the grid; values are read here.
        lead : sequence of str
            The leading dims of the result, in order.
        """
        arrays = []
        for var, extra in zip(self.variables, self.extra):
            da = ds[var].transpose(*lead, *(d for d, _ in extra), *self.spatial)
            a = np.asarray(da.values, dtype=np.float32)
            arrays.append(a.reshape(*a.shape[: len(lead)], -1, *self.shape))
        return np.concatenate(arrays, axis=len(lead))

    def unstack(
        self, values: np.ndarray, lead: Sequence[str]
    ) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
        """One array ``(*lead, C, H, W)`` -> ``{variable: (dims, array)}`` for an ``xr.Dataset``.

        The inverse of :meth:`stack`: each variable gets dims ``(*lead, *levels, *grid)``.
        """
        n_lead = len(lead)
        if values.shape[n_lead] != self.channels or tuple(values.shape[n_lead + 1 :]) != self.shape:
            raise ValueError(
                f"values of shape {values.shape} do not fit {self.channels} channels on a "
                f"{self.shape} grid after {n_lead} leading dims"
            )
        out = {}
        for var, extra in zip(self.variables, self.extra):
            block = values[(slice(None),) * n_lead + (self.channel_slice(var),)]
            block = block.reshape(*values.shape[:n_lead], *[n for _, n in extra], *self.shape)
            out[var] = ((*lead, *(d for d, _ in extra), *self.spatial), block)
        return out
