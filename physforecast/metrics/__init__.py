"""Physics-aware metrics and the scorecard.

Every metric is a plain function on torch tensors,
``metric(pred, target, *, weights=None, mask=None, **options)``, that reduces the last two
(spatial) dims of ``(..., H, W)`` fields and keeps the leading ones (sample, lead time,
variable). ``weights`` are area or latitude weights; ``mask`` is boolean with True = valid.
Ensemble metrics name their ``member_dim``. Importing this package registers every metric
in :data:`physforecast.registry.METRICS`; :func:`score` turns a forecast and its truth
into a scorecard. Definitions and references: ``docs/metrics_reference.md``.
"""

from __future__ import annotations

from .categorical import SEVIR_THRESHOLDS, contingency, csi, csi_m, far, fss, hss, pod
from .physics import (
    brmse,
    conservation_drift,
    crmse,
    divergence,
    divergence_rms,
    tke,
    tke_mse,
    tke_spectrum,
    tke_spectrum_mse,
    vorticity,
    vorticity_rmse,
)
from .pointwise import mae, max_error, mse, nrmse, pearson, psnr, rel_l2, rmse, ssim, vrmse
from .probabilistic import crps, rank_histogram, spread_skill_ratio
from .report import format_scorecard, scorecard_to_json, write_scorecard
from .residuals import (
    advection_diffusion_residual,
    ns_forcing,
    ns_vorticity_residual,
    shallow_water_continuity_residual,
)
from .scorecard import ScoreAccumulator, score
from .spectral import frmse, lsd, power_spectrum, spectral_mse, spectral_nmse
from .suites import ENSEMBLE_SUITE, GENERIC_SUITE, LATLON_SUITE, SUITES, default_suite
from .verification import as_samples, match_truth, spectrum, to_dataset, truth_for, verify
from .weather import acc, lat_rmse, latitude_weights

__all__ = [
    # pointwise
    "mse",
    "rmse",
    "mae",
    "rel_l2",
    "nrmse",
    "vrmse",
    "max_error",
    "psnr",
    "ssim",
    "pearson",
    # spectral
    "power_spectrum",
    "frmse",
    "spectral_mse",
    "spectral_nmse",
    "lsd",
    # physics
    "divergence",
    "vorticity",
    "divergence_rms",
    "vorticity_rmse",
    "tke",
    "tke_spectrum",
    "tke_mse",
    "tke_spectrum_mse",
    "conservation_drift",
    "crmse",
    "brmse",
    "ns_forcing",
    "ns_vorticity_residual",
    "advection_diffusion_residual",
    "shallow_water_continuity_residual",
    # categorical
    "SEVIR_THRESHOLDS",
    "contingency",
    "csi",
    "csi_m",
    "pod",
    "far",
    "hss",
    "fss",
    # weather
    "latitude_weights",
    "lat_rmse",
    "acc",
    # probabilistic
    "crps",
    "spread_skill_ratio",
    "rank_histogram",
    # scorecard
    "score",
    "ScoreAccumulator",
    "default_suite",
    "SUITES",
    "GENERIC_SUITE",
    "LATLON_SUITE",
    "ENSEMBLE_SUITE",
    "scorecard_to_json",
    "write_scorecard",
    "format_scorecard",
    # verification of forecast Datasets
    "to_dataset",
    "truth_for",
    "match_truth",
    "as_samples",
    "verify",
    "spectrum",
]
