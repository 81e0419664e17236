"""``physforecast train --method beamvq``: backbone, then top-K VQ head, then self-training.

With ``E = train.epochs`` epochs in total (the budget of a plain backbone run), a BeamVQ run
spends

1. ``E - E_head - rounds * epochs_per_round`` epochs on the backbone alone (MSE), stage
   ``backbone``;
2. ``E_head = beamvq.head_epochs`` (default ``max(1, E // 5)``) epochs on backbone + head
   together (top-1 + mean of the K candidates + commitment, plus the backbone's own MSE in
   output mode), stage ``head``;
3. ``rounds`` self-training rounds: beam search on the training windows, scored against
   the truth and the physics by ``beamvq.scores``; the best ``keep_quantile`` of the
   per-window best beams become pseudo-labelled windows, mixed in at ``mix_ratio``; then
   ``epochs_per_round`` epochs, each capped at the step count of a real-data epoch, stages
   ``round-1`` ... ``round-R``.

Every stage trains through the run's :class:`~physforecast.methods.RunContext`: under
``torchrun`` on all ranks with DDP, checkpoints in ``checkpoints/<stage>/`` (rank 0), and a
``--resume`` run replays the finished stages from their checkpoints and continues the
interrupted one, ending with the weights an uninterrupted run ends with. An empty
``beamvq.scores`` keeps *all* candidates unfiltered (the public code's behaviour). The
trained :class:`~.forecaster.BeamVQForecaster` forecasts by beam search ranked by the
reference-free part of ``beamvq.scores`` and averages the best ``beamvq.ensemble`` beams.
Per-round records go to ``beamvq_rounds.jsonl``; ``physforecast evaluate`` adds the
backbone vs top-1 vs BeamVQ table (``beamvq_eval.json``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from physforecast.config import Config
from physforecast.data.spec import DataSpec
from physforecast.errors import ConfigError
from physforecast.methods import Method, RunContext
from physforecast.registry import BACKBONES, METHODS, SCORES
from physforecast.search.critic import CriticFilter
from physforecast.search.scores import ScoreCombination
from physforecast.training.trainer import Trainer, mse_loss_fn

from .context import PhysicsContext
from .evaluation import evaluate_beamvq, format_evaluation
from .forecaster import BeamVQForecaster
from .head import TopKVQHead, head_loss
from .selftrain import self_train

__all__ = [
    "BeamVQConfig",
    "BeamVQMethod",
    "build_beamvq_model",
    "score_functions",
    "head_loss_fn",
    "epoch_split",
    "fit_stage",
    "run_self_training",
]

#: ``fit(module, dataset, epochs, loss_fn, max_steps_per_epoch, stage) -> history``
FitFn = Callable[[nn.Module, Dataset, int, Callable, int | None, str], list[dict[str, Any]]]


#: The run's file of per-round self-training records, and of the evaluation table.
ROUNDS_LOG = "beamvq_rounds.jsonl"
EVAL_REPORT = "beamvq_eval.json"


@dataclass
class BeamVQConfig:
    """BeamVQ: top-K VQ head, beam search and physics-filtered self-training.

    Attributes
    ----------
    mode : str
        ``output`` (encode the backbone's forecast, as the authors' code) or ``latent``
        (quantize the backbone's own ``encode()`` latent).
    num_codes, code_dim : int
        Code bank size and code dimension.
    top_k : int
        Candidates per forecast (K nearest codes).
    width : int
        Beam width W.
    temperature : float
        Sampling temperature over code distances; 0 keeps the K nearest.
    rounds : int
        Self-training rounds R.
    epochs_per_round : int
        Training epochs after each round's pseudo-labels are added.
    keep_quantile : float
        Fraction of scored candidates kept as pseudo-labels.
    mix_ratio : float
        Pseudo-labelled windows per real window in the training mix.
    scores : dict
        Score name -> weight, combined into one ranking score.
    ensemble : int
        Members of the top-m self-ensemble at evaluation.
    commitment : float
        Commitment-loss weight.
    decay : float
        EMA decay of the code bank.
    head_epochs : int, optional
        Epochs of backbone + head training before self-training; ``max(1, epochs // 5)``
        when omitted.
    head : dict
        Extra :class:`~physforecast.beamvq.head.TopKVQHead` options (``hidden``,
        ``prop_hidden``, ``prop_depth``, ``downsample``, ``residual``...).

    Set them as ``--set beamvq.<key>=<value>`` or in a ``beamvq:`` YAML section.
    """

    mode: str = "output"
    num_codes: int = 512
    code_dim: int = 64
    top_k: int = 10
    width: int = 3
    temperature: float = 0.0
    rounds: int = 2
    epochs_per_round: int = 2
    keep_quantile: float = 0.5
    mix_ratio: float = 0.5
    scores: dict[str, float] = field(default_factory=lambda: {"rmse": 1.0})
    ensemble: int = 1
    commitment: float = 0.25
    decay: float = 0.99
    head_epochs: int | None = None
    head: dict[str, Any] = field(default_factory=dict)


def score_functions(cfg: Config) -> tuple[ScoreCombination | None, ScoreCombination | None]:
    """The (training, inference) score combinations of ``beamvq.scores``.

    Training ranks candidates with every term (those against the truth included);
    inference with the reference-free terms only. ``None`` where there are none.
    """
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
        The grid, which sizes a latent-mode code bank (required in that mode).
    **head_options
        Extra :class:`TopKVQHead` arguments (``hidden``, ``prop_hidden``, ``downsample``...).
    """
    b = cfg.beamvq
    spec = dict(spec)
    backbone = BACKBONES.create(spec.pop("name"), **spec)
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
        if example_size is None:
            raise ValueError(
                "a latent-mode BeamVQ model needs example_size=(H, W) to size its code bank"
            )
        h, w = example_size
        x = torch.zeros(1, backbone.in_steps, backbone.in_channels, h, w)
        cond = torch.zeros(1, backbone.cond_dim) if backbone.cond_dim else None
        head.materialize(x, cond)
    _, infer = score_functions(cfg)
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
        raise ConfigError(
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
    log: Callable[[dict[str, Any]], None] | None = None,
    eval_batches: int | None = 2,
    sample: int = 0,
    fit: FitFn | None = None,
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
    log : callable, optional
        Called with each round's record.
    sample : int
        Candidate ranks decoded per training step besides rank 0 (0: all K); see
        :func:`head_loss_fn`.
    fit : callable, optional
        ``fit(module, dataset, epochs, loss_fn, max_steps_per_epoch, stage) -> history``
        trains one round (:meth:`RunContext.trainer` in a run: DDP, checkpoints,
        resume); :func:`fit_stage` (a fresh Trainer writing nothing) by default.
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

    fit = fit or (
        lambda module, data, epochs, loss_fn, max_steps, stage: fit_stage(
            module, cfg, data, None, epochs, loss_fn=loss_fn, max_steps_per_epoch=max_steps
        )
    )

    def train(dataset: Dataset, r: int) -> dict[str, Any]:
        hist = fit(head, dataset, epochs_per_round, loss, steps, f"round-{r}")
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


@METHODS.register(
    "beamvq",
    config=BeamVQConfig,
    description="top-K VQ head, beam search and physics-filtered self-training",
)
class BeamVQMethod(Method):
    """BeamVQ as a method: the backbone's spec, a head on it, three kinds of stages."""

    name = "beamvq"

    def check(self, cfg: Config, data: DataSpec) -> None:
        epoch_split(cfg)  # enough epochs for every stage
        score_functions(cfg)  # the scores exist

    def build(self, spec: dict[str, Any], cfg: Config, data: DataSpec) -> BeamVQForecaster:
        return build_beamvq_model(cfg, spec, example_size=data.layout.shape)

    def fit(self, ctx: RunContext) -> BeamVQForecaster:
        cfg, b, data = ctx.cfg, ctx.cfg.beamvq, ctx.data
        e_backbone, e_head, e_round = epoch_split(cfg)
        model = self.build(self.model_spec(cfg, data.spec), cfg, data.spec)
        model.context_fn.fill(data)
        head = model.head
        ctx.trainer(head.backbone, stage="backbone", epochs=e_backbone).fit(data.train, data.val)
        loss = head_loss_fn(b.top_k, b.temperature, 1.0 if b.mode == "output" else 0.0)
        ctx.trainer(head, stage="head", loss_fn=loss, epochs=e_head).fit(data.train, data.val)
        train_score, _ = score_functions(cfg)
        select = (
            CriticFilter(per_sample=1, keep_fraction=b.keep_quantile)
            if train_score is not None
            else CriticFilter(per_sample=None)
        )
        ctx.run.write_text(ROUNDS_LOG, "")  # a resumed run replays every round's record

        def fit_round(module, dataset, epochs, loss_fn, max_steps, stage):
            trainer = ctx.trainer(
                module, stage=stage, loss_fn=loss_fn, epochs=epochs, max_steps_per_epoch=max_steps
            )
            return trainer.fit(dataset)

        run_self_training(
            model,
            cfg,
            data.train,
            data.val,
            score=train_score,
            select=select,
            rounds=b.rounds,
            epochs_per_round=e_round,
            log=lambda record: ctx.run.append_record(ROUNDS_LOG, record),
            fit=fit_round,
        )
        model.eval()
        ctx.save_model(model)
        return model

    def evaluate(self, model: nn.Module, ctx: RunContext) -> str:
        loader = DataLoader(ctx.data.test, batch_size=ctx.cfg.data.batch_size)
        result = evaluate_beamvq(model, loader, device=ctx.device)
        ctx.run.write_json(EVAL_REPORT, result)
        return "backbone alone vs BeamVQ (test split, per lead time):\n" + format_evaluation(result)
