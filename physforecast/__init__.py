"""physforecast: data-driven forecasting of physical space-time systems.

Train any of ten encoder-decoder backbones on xarray data, improve forecasts with
BeamVQ, and score every result with physics-aware metrics.
"""

from __future__ import annotations

from typing import Any

from .registry import BACKBONES, DATASETS, METRICS, Registry

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "Registry",
    "BACKBONES",
    "DATASETS",
    "METRICS",
    "create_backbone",
    "list_backbones",
    "list_datasets",
]


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
    """Names of the registered datasets (simulators and loaders)."""
    return DATASETS.names(filter)


# Forecasting API and the ``.physforecast`` xarray accessor (registered on import).
from . import accessor  # noqa: E402, F401
from .api import Forecaster, load  # noqa: E402
from .rollout import predict, rollout  # noqa: E402

__all__ += ["Forecaster", "load", "predict", "rollout"]
