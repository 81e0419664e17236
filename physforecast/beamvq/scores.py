"""Scores that rank candidate forecasts, and their configured weighted combination.

Every score is a *penalty* (lower is better) with the signature::

    score(pred (N, K, T, C, H, W), ctx: ScoreContext) -> (N, K)

``K`` candidates of ``N`` samples are scored at once so that the context (history,
truth, physical parameters) broadcasts over the candidates.

Reference-free scores (usable at inference):

``vorticity_residual``  RMS of the 2-D Navier-Stokes vorticity residual
    ``d_t w + u . grad w - nu lap w - f`` (periodic, spectral derivatives, midpoint in time,
    the last history frame prepended), in physical units.
``divergence``          RMS of ``du/dx + dv/dy`` of the velocity channels.
``conservation``        drift of each channel's spatial mean from the last history frame,
    relative to that frame's spatial standard deviation.
``spectral``            mean absolute log-ratio of the isotropic energy spectrum of each
    forecast frame to that of the last history frame (spectral consistency with the input).
``critic``              the predicted penalty of a learned critic (:mod:`.critic`).

Scores against the truth (for pseudo-labels on training data):

``rmse``, ``csi`` (``1 - CSI`` averaged over thresholds), ``spectral_error`` (mean absolute
log-ratio of forecast and true energy spectra), ``frmse_high`` (PDEBench-style fRMSE of the
high band, radial wavenumbers ``k >= 12`` scaled to the grid).

Scores run in fp32. :class:`ScoreCombination` combines a ``{name: weight}`` mapping (the
``beamvq.scores`` config) after dividing every term by a calibrated scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import torch

from physforecast.registry import Registry

__all__ = [
    "SCORES",
    "PhysicsSpec",
    "ScoreContext",
    "ScoreCombination",
    "register_score",
    "energy_spectrum",
    "fno_forcing",
]

SCORES = Registry("beamvq score")

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
    forcing : Tensor, optional
        Forcing of the vorticity equation ``(H, W)``.
    vorticity : int, optional
        Channel index of the vorticity.
    velocity : tuple of int, optional
        Channel indices of ``(u, v)``.
    """

    dx: float = 1.0
    dy: float = 1.0
    dt: float = 1.0
    viscosity: torch.Tensor | float | None = None
    forcing: torch.Tensor | None = None
    vorticity: int | None = None
    velocity: tuple[int, int] | None = None


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
    """

    history: torch.Tensor
    target: torch.Tensor | None = None
    physics: PhysicsSpec | None = None
    denormalize: Callable[[torch.Tensor], torch.Tensor] | None = None
    mask: torch.Tensor | None = None
    thresholds: list[float] | None = None
    critic: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
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
    return ctx.target.unsqueeze(1)


def _need_physics(ctx: ScoreContext, name: str, attr: str) -> PhysicsSpec:
    phys = ctx.physics
    if phys is None or getattr(phys, attr) is None:
        raise ValueError(f"score {name!r} needs ScoreContext.physics.{attr}; it is not set")
    return phys


def _wavenumbers(h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    ky = torch.fft.fftfreq(h, d=1.0 / h, device=device)
    kx = torch.fft.fftfreq(w, d=1.0 / w, device=device)
    return torch.meshgrid(ky, kx, indexing="ij")


def energy_spectrum(field_: torch.Tensor) -> torch.Tensor:
    """Isotropic energy spectrum ``(..., n_shells)`` of fields ``(..., H, W)`` in fp32.

    ``E(k) = sum_{round(|k|) = k} |FFT(f)/(H W)|^2`` for integer shells ``k = 0..min(H, W)//2``.
    """
    h, w = field_.shape[-2:]
    f = torch.fft.fft2(field_.float()) / (h * w)
    power = f.real**2 + f.imag**2
    ky, kx = _wavenumbers(h, w, field_.device)
    shell = torch.sqrt(kx**2 + ky**2).round().long()
    n = min(h, w) // 2 + 1
    keep = shell < n
    flat = power[..., keep]
    out = torch.zeros(*power.shape[:-2], n, device=field_.device)
    return out.index_add_(-1, shell[keep], flat)


def _log_spectrum_gap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over shells k >= 1 of |log E_a - log E_b| for fields (..., H, W); -> (...)."""
    ea, eb = energy_spectrum(a)[..., 1:], energy_spectrum(b)[..., 1:]
    tiny = 1e-12 * (eb.amax(-1, keepdim=True) + 1e-30)
    return (torch.log(ea + tiny) - torch.log(eb + tiny)).abs().mean(-1)


def fno_forcing(h: int, w: int | None = None) -> torch.Tensor:
    """``0.1 (sin 2pi(x+y) + cos 2pi(x+y))`` on the unit torus grid ``(H, W)`` (FNO benchmark)."""
    w = h if w is None else w
    y = torch.arange(h, dtype=torch.float32)[:, None] / h
    x = torch.arange(w, dtype=torch.float32)[None, :] / w
    return 0.1 * (torch.sin(2 * math.pi * (x + y)) + torch.cos(2 * math.pi * (x + y)))


def _masked_mean(t: torch.Tensor, ctx: ScoreContext, dims: int) -> torch.Tensor:
    """Mean of ``t`` (N, K, T, C, H, W) over its last ``dims`` dims, honouring ``ctx.mask``."""
    if ctx.mask is None:
        return t.flatten(-dims).mean(-1)
    m = ctx.mask[:, None, None].expand_as(t).float()
    return (t * m).flatten(-dims).sum(-1) / m.flatten(-dims).sum(-1).clamp_min(1)


# ----------------------------------------------------------------------------------
# scores against the truth
@register_score("rmse", reference=True)
def rmse_score(pred: torch.Tensor, ctx: ScoreContext) -> torch.Tensor:
    """RMSE over (T, C, H, W) against the truth, in model units."""
    _check_pred(pred, ctx)
    y = _need_target(pred, ctx, "rmse")
    return _masked_mean((pred.float() - y.float()) ** 2, ctx, 4).sqrt()


@register_score("csi", reference=True)
def csi_score(pred: torch.Tensor, ctx: ScoreContext) -> torch.Tensor:
    """``1 - CSI`` (hits / (hits + misses + false alarms)) averaged over thresholds."""
    _check_pred(pred, ctx)
    y = ctx.physical(_need_target(pred, ctx, "csi"))
    p = ctx.physical(pred)
    if ctx.thresholds:
        thr = [torch.as_tensor(t, device=p.device) for t in ctx.thresholds]
    else:
        thr = [torch.quantile(y.flatten(2), 0.9, dim=-1)[..., None, None, None, None]]
    penalties = []
    for t in thr:
        obs, fc = y >= t, p >= t
        hits = (obs & fc).flatten(2).sum(-1).float()
        misses = (obs & ~fc).flatten(2).sum(-1).float()
        false = (~obs & fc).flatten(2).sum(-1).float()
        denom = hits + misses + false
        csi = torch.where(denom > 0, hits / denom.clamp_min(1), torch.ones_like(denom))
        penalties.append(1.0 - csi)
    return torch.stack(penalties).mean(0)


@register_score("spectral_error", reference=True)
def spectral_error_score(pred: torch.Tensor, ctx: ScoreContext) -> torch.Tensor:
    """Mean absolute log-ratio of forecast and true energy spectra (shells k >= 1)."""
    _check_pred(pred, ctx)
    y = _need_target(pred, ctx, "spectral_error").expand_as(pred)
    return _log_spectrum_gap(ctx.physical(pred), ctx.physical(y)).flatten(2).mean(-1)


@register_score("frmse_high", reference=True)
def frmse_high_score(pred: torch.Tensor, ctx: ScoreContext) -> torch.Tensor:
    """fRMSE of the high band: RMS Fourier error over radial shells ``k >= 12 * N / 64``."""
    _check_pred(pred, ctx)
    y = _need_target(pred, ctx, "frmse_high")
    h, w = pred.shape[-2:]
    diff = torch.fft.fft2(pred.float() - y.float()) / (h * w)
    ky, kx = _wavenumbers(h, w, pred.device)
    k = torch.sqrt(kx**2 + ky**2)
    band = k >= 12 * min(h, w) / 64
    power = (diff.real**2 + diff.imag**2)[..., band]
    return power.mean(-1).flatten(2).mean(-1).sqrt()


# ----------------------------------------------------------------------------------
# reference-free scores
def _ns_residual(seq: torch.Tensor, phys: PhysicsSpec, viscosity: torch.Tensor) -> torch.Tensor:
    """Vorticity residual at the midpoints of ``seq`` (M, L, H, W) -> (M, L-1, H, W)."""
    h, w = seq.shape[-2:]
    ly, lx = h * phys.dy, w * phys.dx
    ky, kx = _wavenumbers(h, w, seq.device)
    ky, kx = 2 * math.pi * ky / ly, 2 * math.pi * kx / lx
    lap = -(kx**2 + ky**2)
    inv_lap = torch.where(lap < 0, 1.0 / lap.clamp_max(-1e-30), torch.zeros_like(lap))
    mid = 0.5 * (seq[:, 1:] + seq[:, :-1])
    dwdt = (seq[:, 1:] - seq[:, :-1]) / phys.dt
    w_hat = torch.fft.fft2(mid)
    psi_hat = -inv_lap * w_hat  # lap psi = -w
    u = torch.fft.ifft2(1j * ky * psi_hat).real  # u = d psi / dy
    v = torch.fft.ifft2(-1j * kx * psi_hat).real  # v = -d psi / dx
    wx = torch.fft.ifft2(1j * kx * w_hat).real
    wy = torch.fft.ifft2(1j * ky * w_hat).real
    lap_w = torch.fft.ifft2(lap * w_hat).real
    res = dwdt + u * wx + v * wy - viscosity.reshape(-1, 1, 1, 1) * lap_w
    if phys.forcing is not None:
        res = res - phys.forcing.to(res.device, res.dtype)
    return res


@register_score("vorticity_residual", reference=False)
def vorticity_residual_score(pred: torch.Tensor, ctx: ScoreContext) -> torch.Tensor:
    """RMS of the Navier-Stokes vorticity residual of [last history frame, forecast]."""
    _check_pred(pred, ctx)
    phys = _need_physics(ctx, "vorticity_residual", "vorticity")
    if phys.viscosity is None:
        raise ValueError("score 'vorticity_residual' needs ScoreContext.physics.viscosity")
    n, k, t = pred.shape[:3]
    c = phys.vorticity
    seq = torch.cat([ctx.history[:, -1:].unsqueeze(1).expand(n, k, 1, *pred.shape[3:]), pred], 2)
    w = ctx.physical(seq.reshape(n * k * (t + 1), *pred.shape[3:]))[:, c]
    w = w.reshape(n * k, t + 1, *pred.shape[-2:])
    nu = torch.as_tensor(phys.viscosity, dtype=torch.float32, device=pred.device)
    nu = nu.expand(n) if nu.ndim == 0 else nu.reshape(n)
    res = _ns_residual(w, phys, nu.repeat_interleave(k))
    return res.pow(2).flatten(1).mean(-1).sqrt().reshape(n, k)


@register_score("divergence", reference=False)
def divergence_score(pred: torch.Tensor, ctx: ScoreContext) -> torch.Tensor:
    """RMS of ``du/dx + dv/dy`` (second-order central differences, periodic wrap)."""
    _check_pred(pred, ctx)
    phys = _need_physics(ctx, "divergence", "velocity")
    p = ctx.physical(pred)
    iu, iv = phys.velocity
    u, v = p[..., iu, :, :], p[..., iv, :, :]
    du = (u.roll(-1, -1) - u.roll(1, -1)) / (2 * phys.dx)
    dv = (v.roll(-1, -2) - v.roll(1, -2)) / (2 * phys.dy)
    return (du + dv).pow(2).flatten(2).mean(-1).sqrt()


@register_score("conservation", reference=False)
def conservation_score(pred: torch.Tensor, ctx: ScoreContext) -> torch.Tensor:
    """Mean |drift| of each channel's spatial mean from the last history frame, in units of its std."""
    _check_pred(pred, ctx)
    last = ctx.physical(ctx.history[:, -1])  # (N, C, H, W)
    p = ctx.physical(pred)
    ref = last.mean((-2, -1))[:, None, None]  # (N, 1, 1, C)
    scale = last.std(dim=(-2, -1)).clamp_min(1e-8)[:, None, None]
    return ((p.mean((-2, -1)) - ref).abs() / scale).flatten(2).mean(-1)


@register_score("spectral", reference=False)
def spectral_consistency_score(pred: torch.Tensor, ctx: ScoreContext) -> torch.Tensor:
    """Mean |log E_forecast(k) - log E_input(k)| against the last history frame."""
    _check_pred(pred, ctx)
    last = ctx.physical(ctx.history[:, -1])[:, None, None].expand_as(pred)
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

    Examples
    --------
    >>> comb = ScoreCombination({"rmse": 1.0})
    >>> comb.reference
    True
    """

    def __init__(self, weights: Mapping[str, float], scales: Mapping[str, float] | None = None):
        if not weights:
            raise ValueError("ScoreCombination needs at least one score, e.g. {'rmse': 1.0}")
        for name, wgt in weights.items():
            SCORES.entry(name)  # unknown name -> ValueError listing the valid ones
            if wgt < 0 or not math.isfinite(wgt):
                raise ValueError(f"score weight of {name!r} must be finite and >= 0; got {wgt}")
        if not any(w > 0 for w in weights.values()):
            raise ValueError(f"all score weights are zero: {dict(weights)}")
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
        """Weighted, scaled sum of precomputed terms."""
        return sum(self.weights[n] * terms[n] / self.scales[n] for n in self.weights)

    def __call__(self, pred: torch.Tensor, ctx: ScoreContext) -> torch.Tensor:
        """Combined penalty ``(N, K)`` of candidates ``(N, K, T, C, H, W)``."""
        return self.combine(self.terms(pred, ctx))

    def calibrate(self, pred: torch.Tensor, ctx: ScoreContext) -> dict[str, float]:
        """Set every scale to the mean of its term over ``pred``; returns the scales."""
        for name, value in self.terms(pred, ctx).items():
            mean = float(value[torch.isfinite(value)].mean()) if value.numel() else 1.0
            self.scales[name] = mean if mean > 0 and math.isfinite(mean) else 1.0
        return dict(self.scales)
