"""The ``.physforecast`` accessor on ``xr.Dataset`` and ``xr.DataArray``.

Registered when :mod:`physforecast` is imported. The accessor only stores the object it
is attached to; every method calls one of the library's functions, so everything it does
can also be done without it:

=========================  ====================================================
``.windows(...)``          :class:`physforecast.data.ForecastWindows`
``.forecast(model, n)``    :func:`physforecast.predict` / :func:`physforecast.rollout`
``.score(truth)``          :func:`physforecast.metrics.verify` (-> ``metrics.score``)
``.spectrum()``            :func:`physforecast.metrics.spectrum`
``.plot_forecast(truth)``  :func:`physforecast.plots.plot_forecast_panel`
=========================  ====================================================

Nothing is computed when the accessor is built, and ``.spectrum()`` stays lazy on
dask-backed data; ``.windows()`` reads only the first frame (for the land mask) and the
parameters; ``.forecast()`` reads only the input frames it needs.

Examples
--------
>>> import physforecast                                        # doctest: +SKIP
>>> fc = ds.physforecast.forecast("runs/ns2d-fno", steps=20, init=[9])  # doctest: +SKIP
>>> fc.physforecast.score(ds)                                  # doctest: +SKIP
>>> ds.vorticity.physforecast.spectrum()                       # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import xarray as xr

if TYPE_CHECKING:
    import matplotlib.figure

    from physforecast.data.windows import ForecastWindows
    from physforecast.forecast import Forecaster

__all__ = ["PhysforecastDatasetAccessor", "PhysforecastDataArrayAccessor"]


class _PhysforecastAccessor:
    """Shared methods; ``self._obj`` is the Dataset or DataArray."""

    def __init__(self, obj: xr.Dataset | xr.DataArray) -> None:
        self._obj = obj

    def _dataset(self) -> xr.Dataset:
        from physforecast.metrics.verification import to_dataset

        return to_dataset(self._obj)

    def windows(
        self,
        in_steps: int,
        out_steps: int,
        variables: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> ForecastWindows:
        """Forecast windows (history, future) of this dataset, read lazily.

        Parameters
        ----------
        in_steps, out_steps : int
            ``T_in`` and ``T_out``.
        variables : sequence of str, optional
            Forecast variables; every variable with a time dim and two spatial dims by default.
        **kwargs
            ``stride``, ``selection``, ``params``, ``normalizer``, ``opener`` of
            :class:`~physforecast.data.ForecastWindows`.

        Returns
        -------
        ForecastWindows
            A torch ``Dataset`` of dict samples ``x (T_in, C, H, W)``, ``y (T_out, C, H, W)``.
        """
        from physforecast.data.layout import forecast_variables
        from physforecast.data.windows import ForecastWindows

        ds = self._dataset()
        names = list(variables) if variables is not None else forecast_variables(ds)
        return ForecastWindows(ds, names, in_steps, out_steps, **kwargs)

    def forecast(
        self, model: Forecaster | str, steps: int | None = None, **kwargs: Any
    ) -> xr.Dataset:
        """Forecast from this dataset with a trained model.

        Parameters
        ----------
        model : Forecaster or path
            From :func:`physforecast.load`, or a run directory.
        steps : int, optional
            Lead times; the model's own ``T_out`` (one call, :func:`physforecast.predict`)
            by default, longer horizons roll out autoregressively
            (:func:`physforecast.rollout`).
        **kwargs
            ``init``, ``batch_size``, ``on_blowup``, ... of :func:`physforecast.rollout`.

        Returns
        -------
        xr.Dataset
            The forecast (sample | init_time, lead_time, y, x) in physical units.
        """
        from physforecast.forecast.rollout import predict, rollout

        if steps is None:
            return predict(model, self._obj, **kwargs)
        return rollout(model, self._obj, steps, **kwargs)

    def score(
        self,
        truth: xr.Dataset | xr.DataArray,
        suite: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> xr.Dataset:
        """Score this forecast against ``truth`` (forecast layout, or the source dataset).

        See :func:`physforecast.metrics.verify`; ``suite`` and ``**kwargs`` go to
        :func:`physforecast.metrics.score`.
        """
        from physforecast.metrics.verification import verify

        return verify(self._obj, truth, suite, **kwargs)

    def plot_forecast(
        self, truth: xr.Dataset | xr.DataArray, **kwargs: Any
    ) -> matplotlib.figure.Figure:
        """Truth, forecast and error panels of this forecast for a few lead times.

        ``truth`` is in the forecast layout or the source dataset; ``**kwargs``
        (``variable``, ``sample``, ``leads``, ``lead_times``) go to
        :func:`physforecast.plots.plot_forecast_panel`.
        """
        from physforecast.metrics.verification import match_truth
        from physforecast.plots import plot_forecast_panel

        forecast = self._dataset()
        return plot_forecast_panel(forecast, match_truth(forecast, truth), **kwargs)


@xr.register_dataset_accessor("physforecast")
class PhysforecastDatasetAccessor(_PhysforecastAccessor):
    """``ds.physforecast``: windows, forecasts, scores, spectra and plots of a Dataset."""

    def spectrum(self, variable: str | None = None, *, reduction: str = "mean") -> xr.DataArray:
        """Radially averaged power spectrum of ``variable`` (the only field by default),
        lazily; see :func:`physforecast.metrics.spectrum`. Dims: the field's others plus
        ``wavenumber``."""
        from physforecast.metrics.verification import spectrum

        return spectrum(self._obj, variable, reduction=reduction)


@xr.register_dataarray_accessor("physforecast")
class PhysforecastDataArrayAccessor(_PhysforecastAccessor):
    """``da.physforecast``: the same methods on a named DataArray (one variable)."""

    def spectrum(self, *, reduction: str = "mean") -> xr.DataArray:
        """Radially averaged power spectrum of every frame, lazily; see
        :func:`physforecast.metrics.spectrum`. Dims: the others plus ``wavenumber``."""
        from physforecast.metrics.verification import spectrum

        return spectrum(self._obj, reduction=reduction)
