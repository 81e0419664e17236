"""Forecasting with trained models, xarray in and xarray out.

- :mod:`.forecaster`: :class:`Forecaster` (a model with its normalization, physical units
  in and out) and :func:`load` (a run directory -> Forecaster);
- :mod:`.rollout`: :func:`~physforecast.forecast.rollout.predict` (one model call) and
  :func:`~physforecast.forecast.rollout.rollout` (autoregressive, any horizon) on an
  ``xr.Dataset``; also ``physforecast.predict`` / ``physforecast.rollout``;
- :mod:`.windows`: :func:`forecast_windows`, every window of a split beside its truth;
- :mod:`.dataset`: :func:`forecast_dataset`, the one builder of forecast Datasets.

The function ``rollout`` is not re-exported here, so that ``physforecast.forecast.rollout``
stays the module; import it as ``physforecast.rollout`` or from this package's module.
"""

from .dataset import forecast_dataset
from .forecaster import Forecaster, load
from .rollout import RolloutBlowupError, predict
from .windows import forecast_windows

__all__ = [
    "Forecaster",
    "load",
    "predict",
    "RolloutBlowupError",
    "forecast_windows",
    "forecast_dataset",
]
