"""``physforecast train --method beamvq``: backbone, head, critic, self-training, policy.

With ``E = train.epochs`` epochs in total (the budget of a plain backbone run), a BeamVQ run
spends

1. ``E - E_head - rounds * epochs_per_round`` epochs on the backbone alone (MSE), stage
   ``backbone``;
2. ``E_head = beamvq.head_epochs`` (default ``max(1, E // 5)``) epochs on backbone + head
   together (top-1 + mean of the K candidates + commitment, plus the backbone's own MSE in
   output mode), stage ``head``;
3. the inference score's scales: every reference-free term of ``beamvq.scores`` divided
   by its level on the true blocks of training windows (terms the data cannot compute
   are left out, with a warning, and named in the evaluation report);
4. with ``beamvq.critic``: SAMIA's user model, a critic fitted on the candidates of the
   validation windows (held out) against their truth, then one more reference-free term;
5. ``rounds`` self-training rounds on the inputs ``beamvq.pseudo`` names (``extend``:
   the histories at the end of each training trajectory, whose future lies beyond the
   labelled frames; ``unlabelled``: the trajectories ``data.train_fraction`` leaves out of
   the labelled set): each input's best beam under the reference-free score, the best
   ``keep_quantile`` of them kept, mixed in at ``mix_ratio``; then ``epochs_per_round``
   epochs, each capped at the step count of a real-data epoch, stages ``round-1`` ...;
6. with ``beamvq.policy_steps > 0``: REINFORCE with a baseline over the candidate
   sampling distribution, the critic as reward, stage ``policy``.

Every stage trains through the run's :class:`~physforecast.methods.RunContext` (DDP,
checkpoints, an exact ``--resume``; the critic is kept as a run artifact). The trained
:class:`~.forecaster.BeamVQForecaster` forecasts by a beam search over blocks of
``beamvq.block`` lead times (default ``ceil(T_out / 2)``: two blocks), width
``beamvq.width``, ``beamvq.top_k`` candidates per expansion, ranked by that
reference-free score, and averages the best ``beamvq.ensemble`` beams. Per-round records
go to ``beamvq_rounds.jsonl``; ``physforecast evaluate`` adds the backbone vs top-1 vs
beam vs best-of-K-by-truth report (``beamvq_eval.json``).
"""

from __future__ import annotations

import math
import sys
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
from physforecast.search.critic import ContextCritic, CriticFilter
from physforecast.search.scores import ScoreCombination
from physforecast.training.trainer import Trainer, mse_loss_fn

from .context import PhysicsContext
from .evaluation import beamvq_report, evaluate_beamvq
from .forecaster import BeamVQForecaster
from .head import TopKVQHead, head_loss
from .selftrain import self_train
from .stages import PSEUDO_SOURCES, fit_block_critic, policy_loss_fn, pseudo_pool, truth_scales

__all__ = [
    "BeamVQConfig",
    "BeamVQMethod",
    "build_beamvq_model",
    "score_functions",
    "resolve_block",
    "head_loss_fn",
    "epoch_split",
    "fit_stage",
    "run_self_training",
    "DEFAULT_SCORES",
]

#: ``fit(module, dataset, epochs, loss_fn, max_steps_per_epoch, stage) -> history``
FitFn = Callable[[nn.Module, Dataset, int, Callable, int | None, str], list[dict[str, Any]]]


#: The run's file of per-round self-training records, and of the evaluation table.
ROUNDS_LOG = "beamvq_rounds.jsonl"
EVAL_REPORT = "beamvq_eval.json"

#: The default inference score: reference-free (no truth needed).
DEFAULT_SCORES = {"residual": 1.0}


@dataclass
class BeamVQConfig:
    """BeamVQ: top-K VQ head, temporal beam search, physics-filtered self-training.

    Attributes
    ----------
    mode : str
        ``output`` (encode the backbone's forecast, as the authors' code) or ``latent``
        (quantize the backbone's own ``encode()`` latent).
    num_codes, code_dim : int
        Code bank size and code dimension.
    quantizer : str
        ``vq`` (the code bank) or ``identity`` (the no-VQ control: the same head, every
        candidate the top-1 forecast).
    top_k : int
        Candidates per beam expansion (K).
    width : int
        Beam width W: the best W of the ``W * K`` extended beams survive each block.
    block : int
        Lead times per beam block (``1 <= block <= T_out``; a remainder becomes a shorter
        last block); 0 means ``ceil(T_out / 2)``: a beam search over two blocks.
    temperature : float
        Per-position sampling over code distances for candidates ``1..K-1`` (0: the k-th
        nearest code everywhere at once, the authors' scheme).
    ensemble : int
        Members of the top-m self-ensemble: the forecast is the mean of the best m beams
        (clipped to ``width``).
    scores : dict
        Reference-free score name -> weight; ranks the beams at inference and filters the
        pseudo-labels. Each term is divided by its level on the training truth. ``{}``
        turns ranking off (the forecast is then the nearest-code top-1, and every
        candidate becomes a pseudo-label).
    critic : bool
        Fit a critic on held-out (validation) candidates against their truth and add it
        to the inference score as the ``critic`` term (weight ``critic_weight``).
    critic_weight : float
        Weight of the critic term.
    critic_steps : int
        Optimisation steps of the critic fit.
    policy_steps : int
        Steps of REINFORCE fine-tuning of the candidate distribution with the critic as
        reward (0: off; needs ``critic`` and ``temperature > 0``).
    policy_weight : float
        Weight of the policy-gradient term beside the head's supervised loss.
    pseudo : str
        Inputs of the self-training pseudo-labels: ``extend`` (histories at the end of the
        training trajectories, whose future is beyond the labelled frames),
        ``unlabelled`` (the trajectories ``data.train_fraction < 1`` leaves unlabelled) or
        ``none`` (no self-training; the rounds' epochs train on the real windows).
    rounds : int
        Self-training rounds R.
    epochs_per_round : int
        Training epochs after each round's pseudo-labels are added.
    keep_quantile : float
        Fraction of the pool's best beams kept as pseudo-labels.
    mix_ratio : float
        Pseudo-labelled windows per real window in the training mix.
    commitment : float
        Commitment-loss weight.
    decay : float
        EMA decay of the code bank.
    head_epochs : int, optional
        Epochs of backbone + head training before self-training; ``max(1, epochs // 5)``
        when omitted.
    head : dict
        Extra :class:`~physforecast.beamvq.head.TopKVQHead` options (``residual``,
        ``hidden``, ``prop_hidden``, ``prop_depth``, ``downsample``...);
        ``beamvq.head.residual=false`` decodes from the codes alone (the authors' form).
    candidate_loss : str
        ``mean``: every candidate trained toward the truth (the authors' loss);
        ``min``: only the closest candidate per window (keeps the others diverse).

    Set them as ``--set beamvq.<key>=<value>`` or in a ``beamvq:`` YAML section.
    """

    mode: str = "output"
    num_codes: int = 512
    code_dim: int = 64
    quantizer: str = "vq"
    top_k: int = 8
    width: int = 4
    block: int = 0
    temperature: float = 0.0
    ensemble: int = 2
    scores: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SCORES))
    critic: bool = False
    critic_weight: float = 1.0
    critic_steps: int = 300
    policy_steps: int = 0
    policy_weight: float = 1.0
    pseudo: str = "extend"
    rounds: int = 2
    epochs_per_round: int = 2
    keep_quantile: float = 0.5
    mix_ratio: float = 0.5
    commitment: float = 0.25
    decay: float = 0.99
    head_epochs: int | None = None
    head: dict[str, Any] = field(default_factory=dict)
    candidate_loss: str = "mean"


def resolve_block(cfg: Config, out_steps: int) -> int:
    """``beamvq.block``, with 0 meaning ``ceil(T_out / 2)``; checked against ``T_out``."""
    block = int(cfg.beamvq.block) or max(1, math.ceil(out_steps / 2))
    if not 1 <= block <= out_steps:
        raise ConfigError(
            f"beamvq.block={cfg.beamvq.block} is not valid: it must be in [1, T_out={out_steps}] "
            "(0: ceil(T_out / 2))"
        )
    return block


def score_functions(cfg: Config) -> tuple[ScoreCombination | None, ScoreCombination | None]:
    """The (self-training filter, inference) score combinations of ``beamvq.scores``.

    Both are the same reference-free combination (plus the ``critic`` term with
    ``beamvq.critic``); ``None`` when ``scores`` is empty. A term that compares with the
    truth is refused: pseudo-labelled inputs and test inputs have none.
    """
    b = cfg.beamvq
    weights = {k: float(v) for k, v in b.scores.items() if v > 0}
    for name in weights:
        SCORES.entry(name)  # unknown -> an error naming the valid ones
        if SCORES.entry(name).meta["reference"]:
            free = sorted(n for n in SCORES.names() if not SCORES.entry(n).meta["reference"])
            raise ConfigError(
                f"beamvq.scores has {name!r}, which compares with the truth; BeamVQ ranks "
                f"forecasts and pseudo-labels without it. Use reference-free scores: "
                f"{', '.join(free)}"
            )
    if b.critic and b.critic_weight > 0:
        weights["critic"] = float(b.critic_weight)
    if not weights:
        return None, None
    return (ScoreCombination(weights, relative=True), ScoreCombination(weights, relative=True))


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
        quantizer=b.quantizer,
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
    block = resolve_block(cfg, backbone.out_steps)
    critic = None
    if b.critic:
        critic = ContextCritic(
            backbone.out_channels, block, context=min(2, backbone.in_steps), hidden=32
        )
    return BeamVQForecaster(
        head,
        top_k=b.top_k,
        width=b.width,
        ensemble=b.ensemble,
        temperature=b.temperature,
        block=block,
        score=infer,
        context_fn=context,
        seed=cfg.train.seed,
        critic=critic,
    )


def head_loss_fn(
    k: int,
    temperature: float = 0.0,
    base_weight: float = 0.0,
    sample: int = 0,
    reduction: str = "mean",
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
        return head_loss(
            out, batch["y"], mask=batch.get("mask"), base_weight=base_weight, reduction=reduction
        )

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
    """The self-training rounds of a BeamVQ run (also used by the benchmark).

    Parameters
    ----------
    model : BeamVQForecaster
        Trained backbone + head; trained further in place.
    score : ScoreCombination, optional
        Penalty of the generated beams; a reference-free one needs no truth in the pool.
        A reference score (the pool must then hold ``y``) makes an oracle filter, for
        ablations. None keeps all K candidates unfiltered (with ``select`` keeping
        everything).
    select : CriticFilter
        Which candidates survive.
    pool : Dataset, optional
        Windows to pseudo-label (default: ``train_data``); e.g.
        :func:`~.stages.pseudo_pool`, inputs whose truth is never read.
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
    head = model.head
    last_scores: list[torch.Tensor] = []

    def cond_of(batch: dict) -> torch.Tensor | None:
        return batch["params"].to(device) if head.backbone.cond_dim else None

    def generate(batch: dict) -> torch.Tensor:
        x = batch["x"].to(device)
        head.eval()
        with torch.no_grad():
            if score is None:
                return model.candidates(x, cond_of(batch))
            target = None
            if score.reference:
                if batch.get("y") is None:
                    raise ValueError(
                        f"score {sorted(score.weights)} compares with the truth, but the "
                        "pool has none (its windows are inputs only)"
                    )
                target = batch["y"].to(device)
            result = model.search(x, cond_of(batch), score=score, target=target)
            last_scores[:] = [result.scores.cpu()]
            return result.sequences

    def penalty(cands: torch.Tensor, batch: dict) -> torch.Tensor:
        if score is None:
            return torch.zeros(cands.shape[:2])
        return last_scores[0]  # each beam's accumulated penalty, as the search ranked it

    steps = _steps_per_epoch(cfg, len(train_data))
    loss = head_loss_fn(
        model.top_k,
        model.temperature,
        1.0 if head.mode == "output" else 0.0,
        sample=sample,
        reduction=getattr(cfg.beamvq, "candidate_loss", "mean"),
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
        res = evaluate_beamvq(
            model, loader, max_batches=eval_batches, metrics=("rmse",), oracle=False
        )
        return {
            f"{kind}_rmse": float(torch.tensor(v["rmse"]).mean())
            for kind, v in res.items()
            if "rmse" in v
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


def _warn(ctx: RunContext, line: str) -> None:
    if ctx.is_main:
        print(f"beamvq: {line}", file=sys.stderr, flush=True)


@METHODS.register(
    "beamvq",
    config=BeamVQConfig,
    description="top-K VQ head, temporal beam search and physics-filtered self-training",
)
class BeamVQMethod(Method):
    """BeamVQ as a method: the backbone's spec, a head on it, its stages (module docstring)."""

    name = "beamvq"

    def check(self, cfg: Config, data: DataSpec) -> None:
        b = cfg.beamvq
        epoch_split(cfg)  # enough epochs for every stage
        score_functions(cfg)  # the scores exist and need no truth
        resolve_block(cfg, data.out_steps)
        rules = [
            ("beamvq.top_k", b.top_k, b.top_k >= 1, ">= 1"),
            ("beamvq.width", b.width, b.width >= 1, ">= 1"),
            ("beamvq.ensemble", b.ensemble, b.ensemble >= 1, ">= 1 (clipped to the width)"),
            ("beamvq.temperature", b.temperature, b.temperature >= 0, ">= 0"),
            ("beamvq.policy_steps", b.policy_steps, b.policy_steps >= 0, ">= 0 (0: off)"),
            ("beamvq.keep_quantile", b.keep_quantile, 0 < b.keep_quantile <= 1, "in (0, 1]"),
        ]
        for key, value, ok, want in rules:
            if not ok:
                raise ConfigError(f"{key}={value!r} is not valid: it must be {want}")
        if b.candidate_loss not in ("mean", "min"):
            raise ConfigError(f"beamvq.candidate_loss={b.candidate_loss!r} is not one of mean, min")
        if b.quantizer not in ("vq", "identity"):
            raise ConfigError(f"beamvq.quantizer={b.quantizer!r} is not one of vq, identity")
        if b.pseudo not in PSEUDO_SOURCES:
            raise ConfigError(
                f"beamvq.pseudo={b.pseudo!r} is not one of {', '.join(PSEUDO_SOURCES)}"
            )
        if b.pseudo == "unlabelled" and cfg.data.train_fraction >= 1:
            raise ConfigError(
                "beamvq.pseudo=unlabelled needs data.train_fraction < 1 (the unlabelled "
                "trajectories); or use beamvq.pseudo=extend"
            )
        if b.policy_steps > 0 and (not b.critic or b.temperature <= 0):
            raise ConfigError(
                "beamvq.policy_steps > 0 needs beamvq.critic=true (the reward) and "
                "beamvq.temperature > 0 (a distribution to sample)"
            )

    def build(self, spec: dict[str, Any], cfg: Config, data: DataSpec) -> BeamVQForecaster:
        return build_beamvq_model(cfg, spec, example_size=data.layout.shape)

    def fit(self, ctx: RunContext) -> BeamVQForecaster:
        cfg, b, data = ctx.cfg, ctx.cfg.beamvq, ctx.data
        e_backbone, e_head, e_round = epoch_split(cfg)
        model = self.build(self.model_spec(cfg, data.spec), cfg, data.spec)
        model.to(ctx.device)
        model.context_fn.fill(data)
        self._calibrate(model, ctx)  # before any training: refuses unusable scores early
        head = model.head
        ctx.trainer(head.backbone, stage="backbone", epochs=e_backbone).fit(data.train, data.val)
        loss = head_loss_fn(
            b.top_k,
            b.temperature,
            1.0 if b.mode == "output" else 0.0,
            reduction=b.candidate_loss,
        )
        ctx.trainer(head, stage="head", loss_fn=loss, epochs=e_head).fit(data.train, data.val)
        head.eval()
        bs = cfg.data.batch_size
        if model.critic is not None:

            def make_critic() -> dict[str, torch.Tensor]:
                val = data.val if len(data.val) else data.train
                critic, fit_logs = fit_block_critic(
                    model,
                    DataLoader(val, batch_size=bs, shuffle=False),
                    steps=b.critic_steps,
                    seed=cfg.train.seed,
                    device=ctx.device,
                )
                state = {k: v.detach().cpu() for k, v in critic.state_dict().items()}
                return {**state, **{k: torch.tensor(v) for k, v in fit_logs.items()}}

            saved = ctx.artifact("critic", make_critic)
            names = set(model.critic.state_dict())
            model.critic.load_state_dict({k: v for k, v in saved.items() if k in names})
            model.critic.to(ctx.device).eval()
            _warn(
                ctx,
                "critic fitted on held-out candidates: Spearman with their log-RMSE "
                f"{float(saved['critic_spearman']):+.3f} (within windows, on a fifth left out)",
            )
        infer = model.inference_score
        select = (
            CriticFilter(per_sample=1, keep_fraction=b.keep_quantile)
            if infer is not None
            else CriticFilter(per_sample=None)
        )
        ctx.run.write_text(ROUNDS_LOG, "")  # a resumed run replays every round's record

        def fit_round(module, dataset, epochs, loss_fn, max_steps, stage):
            trainer = ctx.trainer(
                module, stage=stage, loss_fn=loss_fn, epochs=epochs, max_steps_per_epoch=max_steps
            )
            return trainer.fit(dataset)

        pool = pseudo_pool(b.pseudo, data)
        if pool is None:  # the control: the rounds' epochs on the real windows only
            for r in range(1, b.rounds + 1):
                fit_round(head, data.train, e_round, loss, None, f"round-{r}")
        else:
            run_self_training(
                model,
                cfg,
                data.train,
                data.val,
                score=infer,
                select=select,
                rounds=b.rounds,
                epochs_per_round=e_round,
                pool=pool,
                log=lambda record: ctx.run.append_record(
                    ROUNDS_LOG, {**record, "pool": pool.name, "pool_windows": len(pool)}
                ),
                fit=fit_round,
            )
        if b.policy_steps > 0:
            policy = policy_loss_fn(
                model,
                weight=b.policy_weight,
                base_weight=1.0 if b.mode == "output" else 0.0,
                reduction=b.candidate_loss,
            )
            trainer = ctx.trainer(
                head, stage="policy", loss_fn=policy, epochs=1, max_steps_per_epoch=b.policy_steps
            )
            trainer.fit(data.train)
        model.eval()
        ctx.save_model(model)
        return model

    @staticmethod
    def _calibrate(model: BeamVQForecaster, ctx: RunContext) -> None:
        """Scale every score term by its level on the training truth; drop (loudly) the
        terms this data cannot compute, and refuse a score left empty."""
        score = model.score
        if score is None:
            return
        loader = DataLoader(ctx.data.train, batch_size=ctx.cfg.data.batch_size, shuffle=False)
        scales, missing = truth_scales(model, score, loader, device=ctx.device)
        model.set_score_scales(scales)
        if missing:
            model.deactivate_scores(missing)
            _warn(
                ctx,
                f"score term(s) {', '.join(missing)} cannot be computed on this data and are "
                "left out of the inference score",
            )
        if model.inference_score is None:
            raise ConfigError(
                f"none of beamvq.scores ({', '.join(score.weights)}) can be computed on this "
                "data (the residual needs a vorticity variable with a viscosity, or u and v); "
                "set beamvq.critic=true (a learned score) or beamvq.scores={spectral: 1.0}"
            )

    def evaluate(self, model: nn.Module, ctx: RunContext) -> str:
        loader = DataLoader(ctx.data.test, batch_size=ctx.cfg.data.batch_size)
        result = evaluate_beamvq(model, loader, device=ctx.device)
        ctx.run.write_json(EVAL_REPORT, result)
        return beamvq_report(model, result, windows=len(ctx.data.test))
