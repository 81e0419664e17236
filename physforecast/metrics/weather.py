"""Weather metrics on latitude-longitude grids, as WeatherBench 2.

Fields are ``(..., latitude, longitude)``. Latitude weights are the area of each cell,
``sin(upper) - sin(lower)`` of its latitude bounds, normalised to mean 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from physforecast.data.cf import latitude_weights as _area_weights
from physforecast.registry import METRICS

from ._common import leading_dim, prepare, spatial_mean, zero_invalid

__all__ = ["latitude_weights", "lat_rmse", "acc"]

Tensor = torch.Tensor


def latitude_weights(latitude: Tensor | np.ndarray) -> Tensor:
    """Area weights of latitude rows, normalised to mean 1 (WeatherBench 2).

    Cell bounds are the midpoints between neighbouring latitudes, closed by the poles
    (+-90 degrees); the weight of a row is ``sin(upper) - sin(lower)``. This is
    :func:`physforecast.data.cf.latitude_weights` with ``method="area"``, shaped to
    broadcast against fields.

    Parameters
    ----------
    latitude : array of float
        Latitudes in degrees, shape (H,), in any order.

    Returns
    -------
    torch.Tensor
        Float64 weights of shape (H, 1), to broadcast against (..., H, W).
    """
    lat = np.asarray(latitude, dtype=np.float64)
    return torch.from_numpy(_area_weights(lat, method="area"))[:, None]


@METRICS.register("lat_rmse", kind="weather", higher_is_better=False, reduces_samples=True)
def lat_rmse(
    pred: Tensor,
    target: Tensor,
    *,
    latitude: Tensor | np.ndarray | None = None,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    sample_dim: int | None = None,
) -> Tensor:
    """Latitude-weighted RMSE, WeatherBench 2's recommended form.

    ``sqrt(mean_samples(mean_w (p - t)^2))``: the weighted spatial MSE is averaged over
    forecasts (``sample_dim``, WB2's time average) before the square root. Without
    ``sample_dim`` it is the per-forecast weighted RMSE.

    Parameters
    ----------
    pred, target : torch.Tensor
        Fields (..., latitude, longitude).
    latitude : array of float, optional
        Latitudes in degrees (H,), turned into :func:`latitude_weights`.
    weights : torch.Tensor, optional
        Ready-made weights instead of ``latitude``; one of the two is required.
    mask : torch.Tensor, optional
        Validity.
    sample_dim : int, optional
        The leading dim of the forecasts to average before the root.

    Returns
    -------
    torch.Tensor
        Shape (...), without ``sample_dim`` when given.
    """
    err = _lat_rmse_partial(pred, target, latitude=latitude, weights=weights, mask=mask)
    if sample_dim is not None:
        err = err.mean(leading_dim(sample_dim, pred.ndim, "lat_rmse"))
    return torch.sqrt(err)


def _lat_rmse_partial(
    pred: Tensor,
    target: Tensor,
    *,
    latitude: Tensor | np.ndarray | None = None,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    **_: Any,
) -> Tensor:
    """The weighted spatial MSE of each forecast (...): what :func:`lat_rmse` averages."""
    if weights is None:
        if latitude is None:
            raise ValueError("lat_rmse needs latitude (degrees) or weights")
        weights = latitude_weights(latitude)
    p, t, w = prepare(pred, target, weights, mask, name="lat_rmse")
    return spatial_mean((p - t) ** 2, w)


def _lat_rmse_combine(stats: Tensor, **_: Any) -> Tensor:
    return torch.sqrt(stats.mean(0))


METRICS.entry("lat_rmse").meta.update(partial=_lat_rmse_partial, combine=_lat_rmse_combine)


@METRICS.register("acc", kind="weather", higher_is_better=True)
def acc(
    pred: Tensor,
    target: Tensor,
    *,
    climatology: Tensor,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Anomaly correlation coefficient against a climatology (WeatherBench 2).

    ``sum w f' o' / sqrt(sum w f'^2 sum w o'^2)`` with anomalies ``f' = p - c``,
    ``o' = t - c`` (not re-centred on their spatial mean, as WB2).

    Parameters
    ----------
    pred, target : torch.Tensor
        Fields (..., H, W).
    climatology : torch.Tensor
        Climatology broadcastable to ``target`` (e.g. (H, W), or per sample and lead for a
        day-of-year climatology).
    weights, mask : torch.Tensor, optional
        Latitude weights and validity.

    Returns
    -------
    torch.Tensor
        Shape (...), in [-1, 1].
    """
    p, t, w = prepare(pred, target, weights, mask, name="acc")
    clim = torch.as_tensor(climatology, dtype=p.dtype, device=p.device)
    try:
        torch.broadcast_shapes(clim.shape, p.shape)
    except RuntimeError:
        raise ValueError(
            f"acc: climatology of shape {tuple(clim.shape)} does not broadcast to {tuple(p.shape)}"
        ) from None
    # the climatology may hold NaN where the data are invalid
    fa = zero_invalid(p - clim, mask)
    oa = zero_invalid(t - clim, mask)
    return spatial_mean(fa * oa, w) / torch.sqrt(spatial_mean(fa**2, w) * spatial_mean(oa**2, w))
