"""BeamVQ on the test split: the backbone alone, the head's top-1 and the beam-searched
forecast side by side, per lead time, in physical units."""

from __future__ import annotations

from typing import Any

import torch

from physforecast import metrics as M
from physforecast.search.scores import ScoreContext

from .context import PhysicsContext
from .forecaster import BeamVQForecaster

__all__ = ["evaluate_beamvq", "format_evaluation", "residual_by_lead"]


@torch.no_grad()
def evaluate_beamvq(
    model: BeamVQForecaster,
    loader: Any,
    *,
    max_batches: int | None = None,
    metrics: tuple[str, ...] = ("rmse", "ssim", "frmse_high", "vorticity_residual"),
    device: str | torch.device | None = None,
) -> dict[str, dict[str, list[float]]]:
    """Per-lead-time metrics of the backbone, the head's top-1 and the BeamVQ forecast.

    Parameters
    ----------
    model : BeamVQForecaster
        A trained forecaster (its ``context_fn`` gives units and physics).
    loader : iterable of batches
        Dict batches with ``x``, ``y`` and optionally ``params``.
    max_batches : int, optional
        Stop after this many batches.
    metrics : tuple of str
        Any of ``rmse`` (sqrt of the mean over samples of the spatial MSE), ``ssim``,
        ``frmse_high`` (needs H, W >= 26) and ``vorticity_residual`` (needs the physics).

    Returns
    -------
    dict
        ``{kind: {metric: [value per lead time]}}`` for kinds ``base`` (backbone alone),
        ``top1`` (nearest codes), ``beamvq`` (beam search + self-ensemble, the model's
        forward) and, for the residual only, ``truth``; values in physical units.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    ctx_fn = model.context_fn
    denorm = ctx_fn.denormalize if isinstance(ctx_fn, PhysicsContext) else (lambda t: t)
    sums: dict[str, dict[str, torch.Tensor]] = {}
    count = 0
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        x, y = batch["x"].to(device), batch["y"].to(device)
        cond = batch["params"].to(device) if model.cond_dim else None
        preds = {"base": model.base(x, cond), "top1": model.top1(x, cond), "beamvq": model(x, cond)}
        y_phys = denorm(y.float())
        for kind, pred in preds.items():
            vals = _lead_metrics(
                denorm(pred.float()), y_phys, denorm(x.float()), ctx_fn(x, cond), metrics
            )
            for name, v in vals.items():
                sums.setdefault(kind, {}).setdefault(name, torch.zeros_like(v))
                sums[kind][name] += v
        if "vorticity_residual" in metrics:
            v = residual_by_lead(y_phys, denorm(x.float()), ctx_fn(x, cond))
            if v is not None:
                sums.setdefault("truth", {}).setdefault("vorticity_residual", torch.zeros_like(v))
                sums["truth"]["vorticity_residual"] += v
        count += x.shape[0]
    out: dict[str, dict[str, list[float]]] = {}
    for kind, named in sums.items():
        out[kind] = {}
        for name, total in named.items():
            mean = total / max(count, 1)
            out[kind][name] = (
                mean.sqrt() if name in ("rmse", "vorticity_residual") else mean
            ).tolist()
    return out


def residual_by_lead(
    pred: torch.Tensor, hist: torch.Tensor, ctx: ScoreContext
) -> torch.Tensor | None:
    """Sum over samples of the squared residual per lead (B, T, C, H, W) -> (T,), or None."""
    phys = ctx.physics
    if phys is None or phys.vorticity is None or phys.viscosity is None:
        return None
    seq = torch.cat([hist[:, -1:], pred], 1)[:, :, phys.vorticity]
    nu = torch.as_tensor(phys.viscosity, dtype=torch.float32, device=pred.device)  # () or (B,)
    forcing = 0.0 if phys.forcing is None else phys.forcing
    res = M.ns_vorticity_residual(seq, dx=phys.dx, dy=phys.dy, dt=phys.dt, nu=nu, forcing=forcing)
    return res[:, 1:].pow(2).sum(0)


def _lead_metrics(pred, y, hist, ctx, metrics) -> dict[str, torch.Tensor]:
    """Per-lead sums over samples (and means over channels) of each metric; (T,) each."""
    out: dict[str, torch.Tensor] = {}
    if "rmse" in metrics:
        out["rmse"] = M.mse(pred, y).mean(-1).sum(0)  # sum of per-sample MSE; sqrt at the end
    if "ssim" in metrics and min(pred.shape[-2:]) >= 11:
        out["ssim"] = M.ssim(pred, y).mean(-1).sum(0)
    if "frmse_high" in metrics and min(pred.shape[-2:]) >= 26:
        out["frmse_high"] = M.frmse(pred, y, band="high").mean(-1).sum(0)
    if "vorticity_residual" in metrics:
        res = residual_by_lead(pred, hist, ctx)
        if res is not None:
            out["vorticity_residual"] = res
    return out


def format_evaluation(results: dict[str, dict[str, list[float]]], *, digits: int = 4) -> str:
    """A Markdown table of :func:`evaluate_beamvq` results: one row per (metric, forecast)."""
    kinds = [k for k in ("base", "top1", "beamvq", "truth") if k in results]
    names = sorted({n for k in kinds for n in results[k]})
    leads = max(len(v) for k in kinds for v in results[k].values())
    head = (
        "| metric | forecast | mean | " + " | ".join(f"lead {i + 1}" for i in range(leads)) + " |"
    )
    lines = [head, "|" + "---|" * (leads + 3)]
    for name in names:
        for kind in kinds:
            if name in results[kind]:
                vals = results[kind][name]
                cells = " | ".join(f"{v:.{digits}g}" for v in vals)
                lines.append(f"| {name} | {kind} | {sum(vals) / len(vals):.{digits}g} | {cells} |")
    return "\n".join(lines)
