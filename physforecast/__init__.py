"""physforecast: data-driven forecasting of physical space-time systems.

Train any of ten encoder-decoder backbones on xarray data, add BeamVQ's candidate
search to any of them, and score every result with physics-aware metrics.

Importing the package is light: it registers the ``.physforecast`` xarray accessor and
imports torch only when a name that needs it is first used (``physforecast.load``,
``physforecast.rollout``...).
"""

from __future__ import annotations

import importlib
from typing import Any

from . import accessor  # noqa: F401  (registers the .physforecast accessor on xarray objects)
from .registry import BACKBONES, DATASETS, METHODS, METRICS, Registry

__version__ = "0.1.0"

#: Public names imported on first use: name -> module that defines it.
_LAZY = {
    "Forecaster": "physforecast.forecast.forecaster",
    "load": "physforecast.forecast.forecaster",
    "predict": "physforecast.forecast.rollout",
    "rollout": "physforecast.forecast.rollout",
    "RunDir": "physforecast.run_dir",
}

__all__ = [
    "__version__",
    "Registry",
    "BACKBONES",
    "DATASETS",
    "METHODS",
    "METRICS",
    "create_backbone",
    "list_backbones",
    "list_datasets",
    "list_methods",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'physforecast' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def create_backbone(
    name: str,
    *,
    in_steps: int,
    out_steps: int,
    in_channels: int,
    out_channels: int | None = None,
    **kwargs: Any,
):
    """Build the backbone registered as ``name``.

    Parameters
    ----------
    name : str
        A name from :func:`list_backbones`.
    in_steps, out_steps : int
        Input frames ``T_in`` and output frames ``T_out``.
    in_channels : int
        Variables per frame ``C``.
    out_channels : int, optional
        Output variables; defaults to ``in_channels``.
    **kwargs
        Model options (``hidden``, ``modes``, ``cond_dim``...). ``None`` values are dropped.

    Returns
    -------
    Backbone
        An ``nn.Module`` mapping (B, T_in, C, H, W) to (B, T_out, C_out, H, W).

    Examples
    --------
    >>> import torch, physforecast as pf
    >>> net = pf.create_backbone("fno", in_steps=2, out_steps=3, in_channels=1, modes=4, hidden=8)
    >>> net(torch.zeros(1, 2, 1, 16, 16)).shape
    torch.Size([1, 3, 1, 16, 16])
    """
    return BACKBONES.create(
        name,
        in_steps=in_steps,
        out_steps=out_steps,
        in_channels=in_channels,
        out_channels=out_channels,
        **kwargs,
    )


def list_backbones(filter: str | None = None) -> list[str]:
    """Names of the registered backbones, optionally filtered by an fnmatch pattern (``"*fno"``)."""
    return BACKBONES.names(filter)


def list_datasets(filter: str | None = None) -> list[str]:
    """Names of the registered datasets (the simulators; files are opened by their path,
    see :func:`physforecast.data.formats.open_any`)."""
    return DATASETS.names(filter)


def list_methods(filter: str | None = None) -> list[str]:
    """Names of the registered training methods (``supervised``, ``beamvq``...)."""
    return METHODS.names(filter)
