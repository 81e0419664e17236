"""Scores that rank candidate forecasts, and their configured weighted combination.

Every score is a *penalty* (lower is better) with the signature::

    score(pred (N, K, T, C, H, W), ctx: ScoreContext) -> (N, K)

``K`` candidates of ``N`` samples are scored at once so that the context (history,
truth, physical parameters) broadcasts over the candidates.

Reference-free scores (usable at inference):

``residual``
    RMS residual of the system's equation over [last history frame, forecast] with the
    same midpoint time difference for every lead (the vorticity equation), or the
    velocity divergence: the default physics term of BeamVQ.
``vorticity_residual``
    RMS of the 2-D Navier-Stokes vorticity residual
    ``d_t w + u . grad w - nu lap w - f`` of [last history frame, forecast], physical units
    (central time differences, one-sided at the last lead).
``divergence``
    RMS of ``du/dx + dv/dy`` of the velocity channels.
``conservation``
    drift of each channel's spatial mean from the last history frame,
    relative to that frame's spatial standard deviation.
``spectral``
    mean absolute log-ratio of the isotropic energy spectrum of each
    forecast frame to that of the last history frame (spectral consistency with the input).
``critic``
    the predicted penalty of a learned critic (:mod:`.critic`).

Scores against the truth (for pseudo-labels on training data):

``rmse``, ``csi`` (``1 - CSI`` averaged over thresholds), ``spectral_error`` (mean absolute
log-ratio of forecast and true energy spectra), ``frmse_high`` (PDEBench fRMSE, high band).

The numerics are those of :mod:`physforecast.metrics` (``mse``, ``contingency``,
``power_spectrum``, ``frmse``, ``ns_vorticity_residual``, ``divergence_rms``,
``conservation_drift``), run in fp32; this module only arranges candidates, history
and units around them. :class:`ScoreCombination` combines a ``{name: weight}`` mapping
(the ``beamvq.scores`` config) after dividing every term by a calibrated scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import torch

from physforecast import metrics as M
from physforecast.registry import SCORES

__all__ = [
    "PhysicsSpec",
    "ScoreContext",
    "ScoreCombination",
    "register_score",
]


ScoreFn = Callable[[torch.Tensor, "ScoreContext"], torch.Tensor]


def register_score(name: str, *, reference: bool) -> Callable[[ScoreFn], ScoreFn]:
    """Register a penalty ``fn(pred (N,K,T,C,H,W), ctx) -> (N,K)``; ``reference`` = needs the truth."""
    return SCORES.register(name, reference=reference)


@dataclass
class PhysicsSpec:
    """What the reference-free physics scores need to know about the system.

    Attributes
    ----------
    dx, dy, dt : float
        Grid spacing and time between frames (physical units).
    viscosity : Tensor or float, optional
        Kinematic viscosity, a scalar or one per sample ``(N,)``.
    forcing : Tensor, float or str, optional
        Forcing of the vorticity equation: ``"ns2d"`` (the FNO benchmark forcing), a
        number or an ``(H, W)`` tensor; None for the unforced equation.
    vorticity : int, optional
        Channel index of the vorticity.
    velocity : tuple of int, optional
        Channel indices of ``(u, v)``.
    periodic : bool
        Periodic boundaries (spectral/wrap-around derivatives).
    """

    dx: float = 1.0
    dy: float = 1.0
    dt: float = 1.0
    viscosity: torch.Tensor | float | None = None
    forcing: torch.Tensor | float | str | None = None
    vorticity: int | None = None
    velocity: tuple[int, int] | None = None
    periodic: bool = True


@dataclass
class ScoreContext:
    """What a score may look at besides the candidates.

    Attributes
    ----------
    history : Tensor
        Input frames ``(N, T_in, C, H, W)`` in model units (the scores use the last frame).
    target : Tensor, optional
        Truth ``(N, T, C, H, W)`` in model units; required by reference scores.
    physics : PhysicsSpec, optional
        System description for the physics scores.
    denormalize : callable, optional
        Model units -> physical units for tensors ``(..., C, H, W)``.
    mask : Tensor, optional
        Valid points ``(N, C, H, W)`` (bool).
    thresholds : list of float, optional
        CSI thresholds in physical units; default: the 90th percentile of each true field.
    critic : callable, optional
        ``critic(history (N,T_in,C,H,W), pred (N,K,T,C,H,W)) -> (N,K)`` predicted penalty.
    observed : Tensor, optional
        The observed history ``(N, T_obs, C, H, W)`` when ``history`` holds forecast
        frames (the later blocks of a beam search); the spectral score compares with it.
    """

    history: torch.Tensor
    target: torch.Tensor | None = None
    physics: PhysicsSpec | None = None
    denormalize: Callable[[torch.Tensor], torch.Tensor] | None = None
    mask: torch.Tensor | None = None
    thresholds: list[float] | None = None
    critic: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    observed: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)

    def physical(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (..., C, H, W) in physical units, fp32."""
        t = t.float()
        return self.denormalize(t).float() if self.denormalize is not None else t

    def select(self, index: torch.Tensor) -> ScoreContext:
        """The context of the samples ``index`` (1-D), e.g. to follow beams."""
        take = lambda t: None if t is None else t[index]  # noqa: E731
        phys = self.physics
        if phys is not None and isinstance(phys.viscosity, torch.Tensor) and phys.viscosity.ndim:
            phys = replace(phys, viscosity=phys.viscosity[index])
        return replace(
            self,
            history=self.history[index],
            target=take(self.target),
            mask=take(self.mask),
            observed=take(self.observed),
            physics=phys,
        )


# ----------------------------------------------------------------------------------
# helpers
def _check_pred(pred: torch.Tensor, ctx: ScoreContext) -> None:
    if pred.ndim != 6:
        raise ValueError(f"scores expect candidates (N, K, T, C, H, W); got {tuple(pred.shape)}")
    if ctx.history.shape[0] != pred.shape[0] or ctx.history.shape[2:] != pred.shape[3:]:
        raise ValueError(
            f"history {tuple(ctx.history.shape)} does not match candidates {tuple(pred.shape)} "
            "(expected (N, T_in, C, H, W) with the same N, C, H, W)"
        )


def _need_target(pred: torch.Tensor, ctx: ScoreContext, name: str) -> torch.Tensor:
    if ctx.target is None:
        raise ValueError(f"score {name!r} compares with the truth; ScoreContext.target is None")
    want = pred.shape[:1] + pred.shape[2:]
    if ctx.target.shape != want:
        raise ValueError(
            f"score {name!r}: target must be {tuple(want)}; got {tuple(ctx.target.shape)}"
        )
    return ctx.target.unsqueeze(1).expand_as(pred)


def _need_physics(ctx: ScoreContext, name: str, attr: str) -> PhysicsSpec:
    phys = ctx.physics
    if phys is None or getattr(phys, attr) is None:
        raise ValueError(f"score {name!r} needs ScoreContext.physics.{attr}; it is not set")
    return phys


def _mask(ctx: ScoreContext) -> torch.Tensor | None:
    """``ctx.mask`` (N, C, H, W) broadcastable to candidates (N, K, T, C, H, W)."""
    return None if ctx.mask is None else ctx.mask[:, None, None].bool()


def _with_last_frame(pred: torch.Tensor, ctx: ScoreContext) -> torch.Tensor:
    """[last history frame, forecast] along time: (N, K, T + 1, C, H, W)."""
    n, k = pred.shape[:2]
    last = ctx.history[:, -1:].unsqueeze(1).expand(n, k, 1, *pred.shape[3:])
    return torch.cat([last.to(pred.dtype), pred], 2)


def _log_spectrum_gap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over shells k >= 1 of |log E_a - log E_b| for fields (..., H, W); -> (...)."""
    ea = M.power_spectrum(a, reduction="sum")[..., 1:]
    eb = M.power_spectrum(b, reduction="sum")[..., 1:]
    tiny = 1e-12 * (eb.amax(-1, keepdim=True) + 1e-30)
    return (torch.log(ea + tiny) - torch.log(eb + tiny)).abs().mean(-1)


# ----------------------------------------------------------------------------------
# scores against the truth
@register_score("rmse", reference=True)
def rmse_score(pred: torch.Tensor, ctx: ScoreContext) -> torch.Tensor:
    """RMSE over (T, C, H, W) against the truth, in model units (``metrics.mse`` per frame)."""
    _check_pred(pred, ctx)
    y = _need_target(pred, ctx, "rmse")
    return M.mse(pred.float(), y.float(), mask=_mask(ctx)).flatten(2).mean(-1).sqrt()


@register_score("csi", reference=True)
def csi_score(pred: torch.Tensor, ctx: ScoreContext) -> torch.Tensor:
    """``1 - CSI`` (hits / (hits + misses + false alarms)) averaged over thresholds.

    Counts come from ``metrics.contingency`` per frame and are summed over (T, C). Without
    ``ctx.thresholds`` the threshold is the 90th percentile of each sample's truth.
    """
    _check_pred(pred, ctx)
    y = ctx.physical(_need_target(pred, ctx, "csi"))
    p = ctx.physical(pred)
    if ctx.thresholds:
        thresholds = [float(t) for t in ctx.thresholds]
    else:
        thresholds = [torch.quantile(y[:, 0].flatten(1), 0.9, dim=-1).reshape(-1, 1, 1, 1, 1, 1)]
    penalties = []
    for thr in thresholds:
        c = M.contingency(p, y, threshold=thr, mask=_mask(ctx))
        hits, miss, false = (t.flatten(2).sum(-1) for t in (c.hits, c.misses, c.false_alarms))
        denom = hits + miss + false
        csi = torch.where(denom > 0, hits / denom.clamp_min(1e-12), torch.ones_like(denom))
        penalties.append(1.0 - csi)
    return torch.stack(penalties).mean(0)


@register_score("spectral_error", reference=True)
def spectral_error_score(pred: torch.Tensor, ctx: ScoreContext) -> torch.Tensor:
    """Mean absolute log-ratio of forecast and true energy spectra (shells k >= 1)."""
    _check_pred(pred, ctx)
    y = _need_target(pred, ctx, "spectral_error")
    return _log_spectrum_gap(ctx.physical(pred), ctx.physical(y)).flatten(2).mean(-1)


@register_score("frmse_high", reference=True)
def frmse_high_score(pred: torch.Tensor, ctx: ScoreContext) -> torch.Tensor:
    """PDEBench fRMSE of the high band (``metrics.frmse``, shells k >= 12; needs H, W >= 26)."""
    _check_pred(pred, ctx)
    y = _need_target(pred, ctx, "frmse_high")
    h, w = pred.shape[-2:]
    if min(h, w) < 26:
        raise ValueError(f"score 'frmse_high' needs H, W >= 26 (shells k >= 12); got {h}x{w}")
    out = M.frmse(ctx.physical(pred), ctx.physical(y), band="high", mask=_mask(ctx))
    return out.flatten(2).mean(-1)


# ----------------------------------------------------------------------------------
# reference-free scores
@register_score("vorticity_residual", reference=False)
def vorticity_residual_score(pred: torch.Tensor, ctx: ScoreContext) -> torch.Tensor:
    """RMS Navier-Stokes vorticity residual (``metrics.ns_vorticity_residual``).

    Computed on [last history frame, forecast] in physical units, so the time derivative
    of the first lead uses the observed frame; averaged over the forecast leads.
    """
    _check_pred(pred, ctx)
    phys = _need_physics(ctx, "vorticity_residual", "vorticity")
    if phys.viscosity is None:
        raise ValueError("score 'vorticity_residual' needs ScoreContext.physics.viscosity")
    n = pred.shape[0]
    w = ctx.physical(_with_last_frame(pred, ctx))[:, :, :, phys.vorticity]  # (N, K, T+1, H, W)
    nu = torch.as_tensor(phys.viscosity, dtype=torch.float32, device=pred.device)
    nu = nu.reshape(n, 1) if nu.ndim else nu
    forcing = 0.0 if phys.forcing is None else phys.forcing
    res = M.ns_vorticity_residual(w, dx=phys.dx, dy=phys.dy, dt=phys.dt, nu=nu, forcing=forcing)
    return res[..., 1:].pow(2).mean(-1).sqrt()


@register_score("residual", reference=False)
def residual_score(pred: torch.Tensor, ctx: ScoreContext) -> torch.Tensor:
    """RMS residual of the system's equation over [last history frame, forecast].

    The Navier-Stokes vorticity equation when the physics name a vorticity channel and
    a viscosity, with the midpoint time scheme of
    :func:`~physforecast.metrics.ns_vorticity_residual` (``(w_t - w_{t-1}) / dt`` against
    the spatial terms of the mean of the two frames): every lead, the first (paired with
    the last observed frame) and the last, is differenced with the same stencil, so no
    one-sided end difference dominates. Otherwise the divergence of the velocity
    channels (incompressibility). Penalties are in physical units; a method divides them
    by the level of the training truth (:meth:`ScoreCombination.calibrate` on the truth).
    """
    _check_pred(pred, ctx)
    phys = ctx.physics
    if phys is not None and phys.vorticity is not None and phys.viscosity is not None:
        n = pred.shape[0]
        w = ctx.physical(_with_last_frame(pred, ctx))[:, :, :, phys.vorticity]  # (N, K, T+1, H, W)
        nu = torch.as_tensor(phys.viscosity, dtype=torch.float32, device=pred.device)
        nu = nu.reshape(n, 1) if nu.ndim else nu
        forcing = 0.0 if phys.forcing is None else phys.forcing
        res = M.ns_vorticity_residual(
            w, dx=phys.dx, dy=phys.dy, dt=phys.dt, nu=nu, forcing=forcing, time_scheme="midpoint"
        )
        return res.pow(2).mean(-1).sqrt()
    if phys is not None and phys.velocity is not None:
        return divergence_score(pred, ctx)
    raise ValueError(
        "score 'residual' needs ScoreContext.physics with a vorticity channel and a viscosity, "
        "or velocity channels (u, v); this data has neither"
    )


@register_score("divergence", reference=False)
def divergence_score(pred: torch.Tensor, ctx: ScoreContext) -> torch.Tensor:
    """RMS of ``du/dx + dv/dy`` of the velocity channels (``metrics.divergence_rms``)."""
    _check_pred(pred, ctx)
    phys = _need_physics(ctx, "divergence", "velocity")
    uv = ctx.physical(pred)[..., list(phys.velocity), :, :]
    div = M.divergence_rms(uv, dx=phys.dx, dy=phys.dy, periodic=phys.periodic)
    return div.pow(2).flatten(2).mean(-1).sqrt()


@register_score("conservation", reference=False)
def conservation_score(pred: torch.Tensor, ctx: ScoreContext) -> torch.Tensor:
    """Drift of each channel's spatial mean from the last history frame (``metrics.conservation_drift``),
    in units of that frame's spatial standard deviation, averaged over leads and channels."""
    _check_pred(pred, ctx)
    seq = ctx.physical(_with_last_frame(pred, ctx)).movedim(3, 2)  # (N, K, C, T+1, H, W)
    drift = M.conservation_drift(seq)[..., 1:]  # (N, K, C, T)
    scale = ctx.physical(ctx.history[:, -1]).std(dim=(-2, -1)).clamp_min(1e-8)  # (N, C)
    return (drift / scale[:, None, :, None]).flatten(2).mean(-1)


@register_score("spectral", reference=False)
def spectral_consistency_score(pred: torch.Tensor, ctx: ScoreContext) -> torch.Tensor:
    """Mean |log E_forecast(k) - log E_input(k)| against the last observed frame
    (``ctx.observed`` when set, else the last history frame)."""
    _check_pred(pred, ctx)
    seen = ctx.observed if ctx.observed is not None else ctx.history
    last = ctx.physical(seen[:, -1])[:, None, None].expand_as(pred)
    return _log_spectrum_gap(ctx.physical(pred), last).flatten(2).mean(-1)


@register_score("critic", reference=False)
def critic_score(pred: torch.Tensor, ctx: ScoreContext) -> torch.Tensor:
    """The penalty predicted by ``ctx.critic`` (see :class:`~.critic.ContextCritic`)."""
    _check_pred(pred, ctx)
    if ctx.critic is None:
        raise ValueError("score 'critic' needs ScoreContext.critic (a trained ContextCritic)")
    return ctx.critic(ctx.history, pred).float()


# ----------------------------------------------------------------------------------
class ScoreCombination:
    """A configured weighted sum of registered penalties.

    ``combined = sum_i weight_i * score_i / scale_i``. The scales (default 1) are set by
    :meth:`calibrate` to the mean of each term on a calibration set, so that the weights
    are relative importances of terms with different units.

    Parameters
    ----------
    weights : mapping of str to float
        Score name -> non-negative weight (``{"rmse": 1.0, "spectral_error": 0.5}``).
    scales : mapping of str to float, optional
        Fixed scales instead of calibrated ones.
    relative : bool
        Combine ``sum_i weight_i * log(1 + score_i / scale_i)`` instead: each term counts
        by its *relative* change, so a term whose ratio to its scale is large (a residual
        scaled by the truth's small level) does not drown the others. The ``critic`` term
        (already a log-RMSE) enters as ``weight * score``.

    Examples
    --------
    >>> comb = ScoreCombination({"rmse": 1.0})
    >>> comb.reference
    True
    """

    #: Terms that are already logarithmic and enter a ``relative`` combination unchanged.
    LOG_TERMS = frozenset({"critic"})

    def __init__(
        self,
        weights: Mapping[str, float],
        scales: Mapping[str, float] | None = None,
        *,
        relative: bool = False,
    ):
        if not weights:
            raise ValueError("ScoreCombination needs at least one score, e.g. {'rmse': 1.0}")
        for name, wgt in weights.items():
            SCORES.entry(name)  # unknown name -> ValueError listing the valid ones
            if wgt < 0 or not math.isfinite(wgt):
                raise ValueError(f"score weight of {name!r} must be finite and >= 0; got {wgt}")
        if not any(w > 0 for w in weights.values()):
            raise ValueError(f"all score weights are zero: {dict(weights)}")
        self.relative = bool(relative)
        self.weights = {k: float(v) for k, v in weights.items() if v > 0}
        self.scales = {k: 1.0 for k in self.weights}
        if scales:
            self.scales.update({k: float(v) for k, v in scales.items() if k in self.weights})

    @property
    def reference(self) -> bool:
        """Whether any term compares with the truth."""
        return any(SCORES.entry(n).meta["reference"] for n in self.weights)

    def terms(self, pred: torch.Tensor, ctx: ScoreContext) -> dict[str, torch.Tensor]:
        """Each unweighted, unscaled penalty ``(N, K)``."""
        with torch.no_grad():
            return {n: SCORES.entry(n).factory(pred, ctx).float() for n in self.weights}

    def combine(self, terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Weighted, scaled sum of precomputed terms (of their ``log1p`` when ``relative``)."""

        def term(n: str) -> torch.Tensor:
            if not self.relative:
                return terms[n] / self.scales[n]
            if n in self.LOG_TERMS:
                return terms[n]
            return torch.log1p(terms[n].clamp_min(0) / self.scales[n])

        return sum(self.weights[n] * term(n) for n in self.weights)

    def __call__(self, pred: torch.Tensor, ctx: ScoreContext) -> torch.Tensor:
        """Combined penalty ``(N, K)`` of candidates ``(N, K, T, C, H, W)``."""
        return self.combine(self.terms(pred, ctx))

    def calibrate(self, pred: torch.Tensor, ctx: ScoreContext) -> dict[str, float]:
        """Set every scale to the mean of its term over ``pred``; returns the scales."""
        for name, value in self.terms(pred, ctx).items():
            mean = float(value[torch.isfinite(value)].mean()) if value.numel() else 1.0
            self.scales[name] = mean if mean > 0 and math.isfinite(mean) else 1.0
        return dict(self.scales)
