"""``physforecast train --method beamvq``: backbone, then top-K VQ head, then self-training.

:func:`train_beamvq` is what :func:`physforecast.training.run.train` calls for
``method: beamvq``. With ``E = train.epochs`` epochs in total (the budget of a plain
backbone run), it spends

1. ``E - E_head - rounds * epochs_per_round`` epochs on the backbone alone (MSE);
2. ``E_head = beamvq.head_epochs`` (default ``max(1, E // 5)``) epochs on backbone + head together (top-1 + mean of the
   K candidates + commitment, plus the backbone's own MSE in output mode);
3. ``rounds`` self-training rounds: beam search on the training windows, scored against
   the truth and the physics by ``beamvq.scores``; the best ``keep_quantile`` of the
   per-window best beams become pseudo-labelled windows, mixed in at ``mix_ratio``; then
   ``epochs_per_round`` epochs, each capped at the step count of a real-data epoch, so the
   total number of gradient steps equals that of ``E`` plain epochs.

An empty ``beamvq.scores`` keeps *all* candidates unfiltered (the public code's
behaviour). The returned :class:`~.forecaster.BeamVQForecaster` forecasts by beam search
ranked by the reference-free part of ``beamvq.scores`` and averages the best
``beamvq.ensemble`` beams. Per-round records go to ``run_dir/beamvq_rounds.jsonl``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import physforecast as pf
from physforecast import metrics as M
from physforecast.config import Config, config_to_dict
from physforecast.registry import SCORES
from physforecast.search.critic import CriticFilter
from physforecast.search.scores import PhysicsSpec, ScoreCombination, ScoreContext

from .forecaster import BeamVQForecaster
from .head import TopKVQHead, head_loss
from .selftrain import self_train

__all__ = [
    "PhysicsContext",
    "build_beamvq_model",
    "head_loss_fn",
    "epoch_split",
    "fit_stage",
    "run_self_training",
    "train_beamvq",
    "evaluate_beamvq",
    "format_evaluation",
]

VORTICITY_NAMES = ("vorticity", "omega", "vort", "w")
VELOCITY_NAMES = (("u", "v"), ("velocity_x", "velocity_y"), ("vx", "vy"))


class PhysicsContext(nn.Module):
    """Builds the :class:`ScoreContext` of a history; its physics travel in the checkpoint.

    Buffers hold the field normalization, the grid spacing and frame interval, the
    viscosity (a constant, or read from ``cond`` by undoing the parameter normalization),
    the channel indices of vorticity and velocity, and whether the ns2d forcing applies.

    Parameters
    ----------
    channels : int
        Variables per frame ``C``.
    n_params : int
        Physical parameters ``P`` in ``cond``.
    """

    def __init__(self, channels: int, n_params: int = 0) -> None:
        super().__init__()
        self.register_buffer("norm_mean", torch.zeros(channels))
        self.register_buffer("norm_std", torch.ones(channels))
        self.register_buffer("spacing", torch.ones(3))  # dx, dy, dt
        self.register_buffer("viscosity", torch.tensor(float("nan")))
        self.register_buffer("param_mean", torch.zeros(n_params))
        self.register_buffer("param_std", torch.ones(n_params))
        self.register_buffer("param_log", torch.zeros(n_params, dtype=torch.bool))
        self.register_buffer("visc_index", torch.tensor(-1))
        self.register_buffer("vort_index", torch.tensor(-1))
        self.register_buffer("vel_index", torch.tensor([-1, -1]))
        self.register_buffer("ns2d_forcing", torch.tensor(False))
        self.register_buffer("periodic", torch.tensor(True))

    @torch.no_grad()
    def fill(self, prepared: Any) -> PhysicsContext:
        """Set the buffers from a ``Prepared`` run (dataset attrs, normalizer, variables)."""
        ds, norm = prepared.dataset, prepared.normalizer
        self.norm_mean.copy_(torch.tensor(norm.mean))
        self.norm_std.copy_(torch.tensor(norm.std))
        attrs = ds.attrs
        self.spacing.copy_(torch.tensor([float(attrs.get(k, 1.0)) for k in ("dx", "dy", "dt")]))
        names = list(prepared.variables)
        for cand in VORTICITY_NAMES:
            if cand in names:
                self.vort_index.fill_(names.index(cand))
                break
        for u, v in VELOCITY_NAMES:
            if u in names and v in names:
                self.vel_index.copy_(torch.tensor([names.index(u), names.index(v)]))
                break
        forcing = str(attrs.get("forcing", "")).replace(" ", "")
        self.ns2d_forcing.fill_("sin(2*pi*(x+y))" in forcing and "cos(2*pi*(x+y))" in forcing)
        self.periodic.fill_(str(attrs.get("boundary_conditions", "periodic")) == "periodic")
        params = list(prepared.param_names)
        if norm.params:
            self.param_mean.copy_(torch.tensor(norm.param_mean))
            self.param_std.copy_(torch.tensor(norm.param_std))
            self.param_log.copy_(torch.tensor(norm.param_log))
        if "viscosity" in params:
            self.visc_index.fill_(params.index("viscosity"))
        elif "viscosity" in ds.data_vars:
            values = torch.as_tensor(ds["viscosity"].values, dtype=torch.float64).flatten()
            if values.numel() and bool((values == values[0]).all()):
                self.viscosity.fill_(float(values[0]))
        return self

    def denormalize(self, t: torch.Tensor) -> torch.Tensor:
        """Model units -> physical units for ``(..., C, H, W)``."""
        shape = (-1, 1, 1)
        return t * self.norm_std.to(t).reshape(shape) + self.norm_mean.to(t).reshape(shape)

    def _viscosity(self, cond: torch.Tensor | None) -> torch.Tensor | None:
        i = int(self.visc_index)
        if i >= 0 and cond is not None:
            v = cond[:, i].float() * self.param_std[i] + self.param_mean[i]
            return torch.pow(10.0, v) if bool(self.param_log[i]) else v
        if torch.isfinite(self.viscosity):
            return self.viscosity.float()
        return None

    def forward(self, history: torch.Tensor, cond: torch.Tensor | None = None) -> ScoreContext:
        """The score context of ``history`` (N, T_in, C, H, W) with parameters ``cond`` (N, P)."""
        vort, vel = int(self.vort_index), [int(v) for v in self.vel_index]
        dx, dy, dt = (float(s) for s in self.spacing)
        phys = PhysicsSpec(
            dx=dx,
            dy=dy,
            dt=dt,
            viscosity=self._viscosity(cond),
            forcing="ns2d" if bool(self.ns2d_forcing) else None,
            vorticity=vort if vort >= 0 else None,
            velocity=(vel[0], vel[1]) if min(vel) >= 0 else None,
            periodic=bool(self.periodic),
        )
        return ScoreContext(history=history, physics=phys, denormalize=self.denormalize)


# --------------------------------------------------------------------------------------
def _scores(cfg: Config) -> tuple[ScoreCombination | None, ScoreCombination | None]:
    """(training score: all terms, inference score: reference-free terms) of ``beamvq.scores``."""
    weights = {k: v for k, v in cfg.beamvq.scores.items() if v > 0}
    if not weights:
        return None, None
    train = ScoreCombination(weights)
    free = {k: v for k, v in weights.items() if not SCORES.entry(k).meta["reference"]}
    return train, ScoreCombination(free) if free else None


def build_beamvq_model(
    cfg: Config,
    spec: dict[str, Any],
    *,
    example_size: tuple[int, int] | None = None,
    **head_options: Any,
) -> BeamVQForecaster:
    """The (untrained) forecaster of a BeamVQ run, with the structure its checkpoint expects.

    Parameters
    ----------
    cfg : Config
        The run config (``beamvq`` section).
    spec : dict
        :func:`physforecast.create_backbone` arguments (the run's ``model.json``).
    example_size : (H, W), optional
        Grid used to size a latent-mode code bank (default ``data.options.size`` or 64).
    **head_options
        Extra :class:`TopKVQHead` arguments (``hidden``, ``prop_hidden``, ``downsample``...).
    """
    b = cfg.beamvq
    spec = dict(spec)
    backbone = pf.create_backbone(spec.pop("name"), **spec)
    head = TopKVQHead(
        backbone,
        mode=b.mode,
        num_codes=b.num_codes,
        code_dim=b.code_dim,
        commitment=b.commitment,
        decay=b.decay,
        **{**b.head, **head_options},
    )
    if b.mode == "latent":
        size = int(cfg.data.options.get("size", 64)) if example_size is None else None
        h, w = example_size or (size, size)
        x = torch.zeros(1, backbone.in_steps, backbone.in_channels, h, w)
        cond = torch.zeros(1, backbone.cond_dim) if backbone.cond_dim else None
        head.materialize(x, cond)
    _, infer = _scores(cfg)
    context = PhysicsContext(backbone.in_channels, backbone.cond_dim)
    return BeamVQForecaster(
        head,
        top_k=b.top_k,
        width=b.width,
        ensemble=b.ensemble,
        temperature=b.temperature,
        score=infer,
        context_fn=context,
        seed=cfg.train.seed,
    )


def head_loss_fn(
    k: int, temperature: float = 0.0, base_weight: float = 0.0, sample: int = 0
) -> Callable:
    """A trainer ``loss_fn(model, batch)`` for a :class:`TopKVQHead` (or a DDP wrapper of it).

    ``sample > 0`` decodes rank 0 and ``sample`` random other ranks per step instead of
    all K (an unbiased, cheaper estimate of the candidate loss; the randomness follows
    the global seed).
    """

    def loss_fn(
        model: nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        head = model.module if hasattr(model, "module") else model
        cond = batch.get("params") if head.backbone.cond_dim else None
        ranks = None
        if 0 < sample < k - 1:
            ranks = (0, *sorted((torch.randperm(k - 1)[:sample] + 1).tolist()))
        out = model(batch["x"], cond, k=k, temperature=temperature, ranks=ranks)
        return head_loss(out, batch["y"], mask=batch.get("mask"), base_weight=base_weight)

    return loss_fn


def epoch_split(cfg: Config) -> tuple[int, int, int]:
    """(backbone epochs, head epochs, epochs per self-training round) from ``train.epochs``."""
    total, b = cfg.train.epochs, cfg.beamvq
    head = b.head_epochs if b.head_epochs is not None else max(1, total // 5)
    backbone = total - head - b.rounds * b.epochs_per_round
    if backbone < 1:
        raise ValueError(
            f"train.epochs={total} is too few for BeamVQ: it needs >= 1 backbone epoch + "
            f"{head} head epoch(s) + beamvq.rounds ({b.rounds}) x beamvq.epochs_per_round "
            f"({b.epochs_per_round}); raise train.epochs or lower beamvq.rounds"
        )
    return backbone, head, b.epochs_per_round


def fit_stage(
    module: nn.Module,
    cfg: Config,
    train_data: Dataset,
    val_data: Dataset | None,
    epochs: int,
    *,
    loss_fn: Callable | None = None,
    max_steps_per_epoch: int | None = None,
) -> list[dict[str, Any]]:
    """Train ``module`` for ``epochs`` epochs with the run's optimiser settings (a fresh :class:`Trainer`)."""
    from physforecast.training.trainer import Trainer, mse_loss_fn

    if epochs < 1:
        return []
    tcfg = replace(
        cfg.train,
        epochs=epochs,
        max_steps_per_epoch=max_steps_per_epoch or cfg.train.max_steps_per_epoch,
    )
    trainer = Trainer(module, tcfg, loss_fn=loss_fn or mse_loss_fn, config=cfg)
    return trainer.fit(train_data, val_data)


def _steps_per_epoch(cfg: Config, n: int) -> int:
    steps = math.ceil(n / cfg.data.batch_size)
    cap = cfg.train.max_steps_per_epoch
    return min(steps, cap) if cap else steps


def run_self_training(
    model: BeamVQForecaster,
    cfg: Config,
    train_data: Dataset,
    val_data: Dataset | None,
    *,
    score: ScoreCombination | None,
    select: CriticFilter,
    rounds: int,
    epochs_per_round: int,
    pool: Dataset | None = None,
    log_path: str | Path | None = None,
    eval_batches: int | None = 2,
    sample: int = 0,
) -> list[dict[str, Any]]:
    """The self-training rounds of :func:`train_beamvq` (also used by the benchmark).

    Parameters
    ----------
    model : BeamVQForecaster
        Trained backbone + head; trained further in place.
    score : ScoreCombination, optional
        Penalty of the generated beams against the truth/physics; None keeps all K
        candidates unfiltered (with ``select`` keeping everything).
    select : CriticFilter
        Which candidates survive.
    pool : Dataset, optional
        Windows to pseudo-label (default: ``train_data``).
    sample : int
        Candidate ranks decoded per training step besides rank 0 (0: all K); see
        :func:`head_loss_fn`.
    """
    device = next(model.parameters()).device
    bs = cfg.data.batch_size
    pool_loader = DataLoader(pool if pool is not None else train_data, batch_size=bs, shuffle=False)
    calibrated = [score is None]
    head = model.head

    def cond_of(batch: dict) -> torch.Tensor | None:
        return batch["params"].to(device) if head.backbone.cond_dim else None

    def generate(batch: dict) -> torch.Tensor:
        x = batch["x"].to(device)
        head.eval()
        with torch.no_grad():
            if score is None:
                return model.candidates(x, cond_of(batch))
            return model.search(
                x, cond_of(batch), score=score, target=batch["y"].to(device)
            ).sequences

    def penalty(cands: torch.Tensor, batch: dict) -> torch.Tensor:
        if score is None:
            return torch.zeros(cands.shape[:2])
        ctx = model.context_fn(batch["x"].to(device), cond_of(batch))
        ctx.target = batch["y"].to(device)
        ctx.mask = batch.get("mask").to(device) if batch.get("mask") is not None else None
        if not calibrated[0]:
            score.calibrate(cands, ctx)
            calibrated[0] = True
        return score(cands, ctx).cpu()

    steps = _steps_per_epoch(cfg, len(train_data))
    loss = head_loss_fn(
        model.top_k, model.temperature, 1.0 if head.mode == "output" else 0.0, sample=sample
    )

    def train(dataset: Dataset, r: int) -> dict[str, Any]:
        hist = fit_stage(
            head, cfg, dataset, None, epochs_per_round, loss_fn=loss, max_steps_per_epoch=steps
        )
        return {"loss": hist[-1]["train_loss"], "steps": hist[-1]["step"]} if hist else {}

    def evaluate(r: int) -> dict[str, Any]:
        if val_data is None:
            return {}
        loader = DataLoader(val_data, batch_size=bs, shuffle=False)
        res = evaluate_beamvq(model, loader, max_batches=eval_batches, metrics=("rmse",))
        return {
            f"{kind}_rmse": float(torch.tensor(v["rmse"]).mean())
            for kind, v in res.items()
            if kind != "truth"
        }

    def log(record: dict[str, Any]) -> None:
        if log_path is not None:
            with open(log_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")

    records, _ = self_train(
        rounds=rounds,
        real=train_data,
        pool=pool_loader,
        generate=generate,
        score=penalty,
        select=select.select,
        train=train,
        mix_ratio=cfg.beamvq.mix_ratio,
        evaluate=evaluate,
        log=log,
        seed=cfg.train.seed,
    )
    head.eval()
    return records


def train_beamvq(cfg: Config, prepared: Any, run_dir: Path) -> BeamVQForecaster:
    """Train backbone, head and self-training rounds; write checkpoints and round logs.

    Parameters
    ----------
    cfg : Config
        The run config (``method: beamvq``, section ``beamvq``).
    prepared : Prepared
        From :func:`physforecast.training.run.prepare`.
    run_dir : Path
        The run directory: ``beamvq_rounds.jsonl``, ``metrics.jsonl`` (one record per
        stage) and ``checkpoints/{best,last}.pt`` (the forecaster's weights) are written.

    Returns
    -------
    BeamVQForecaster
        In eval mode; ``forward(x, cond)`` is the self-ensembled beam-search forecast.
    """
    from physforecast.training.checkpoint import save_checkpoint
    from physforecast.training.run import model_spec

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.train.seed)
    e_backbone, e_head, e_round = epoch_split(cfg)
    size = tuple(prepared.train[0]["x"].shape[-2:])
    model = build_beamvq_model(cfg, model_spec(cfg, prepared), example_size=size)
    model.context_fn.fill(prepared)
    head = model.head
    stages: list[dict[str, Any]] = []

    def record(stage: str, hist: list[dict[str, Any]]) -> None:
        for rec in hist:
            stages.append({"stage": stage, **rec})
            with open(run_dir / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(stages[-1]) + "\n")

    record("backbone", fit_stage(head.backbone, cfg, prepared.train, prepared.val, e_backbone))
    loss = head_loss_fn(
        cfg.beamvq.top_k, cfg.beamvq.temperature, 1.0 if cfg.beamvq.mode == "output" else 0.0
    )
    record("head", fit_stage(head, cfg, prepared.train, prepared.val, e_head, loss_fn=loss))
    train_score, _ = _scores(cfg)
    select = (
        CriticFilter(per_sample=1, keep_fraction=cfg.beamvq.keep_quantile)
        if train_score is not None
        else CriticFilter(per_sample=None)
    )
    (run_dir / "beamvq_rounds.jsonl").unlink(missing_ok=True)
    run_self_training(
        model,
        cfg,
        prepared.train,
        prepared.val,
        score=train_score,
        select=select,
        rounds=cfg.beamvq.rounds,
        epochs_per_round=e_round,
        log_path=run_dir / "beamvq_rounds.jsonl",
    )
    model.eval()
    state = {
        "model": model.state_dict(),
        "epoch": cfg.train.epochs,
        "config": json.dumps(config_to_dict(cfg)),
        "history": json.dumps(stages),
    }
    for name in ("last", "best"):
        save_checkpoint(state, run_dir / "checkpoints" / f"{name}.pt")
    return model


# --------------------------------------------------------------------------------------
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
            v = _residual(y_phys, denorm(x.float()), ctx_fn(x, cond))
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


def _residual(pred: torch.Tensor, hist: torch.Tensor, ctx: ScoreContext) -> torch.Tensor | None:
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
        res = _residual(pred, hist, ctx)
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
