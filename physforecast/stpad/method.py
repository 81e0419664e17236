"""ST-PAD as a registered method: ``physforecast train --method stpad``.

Stages, each through :meth:`~physforecast.methods.RunContext.trainer` (DDP, checkpoints
under ``checkpoints/<stage>/``, exact ``--resume``):

1. ``upstream``: the VQ reconstruction model with temporal evolution,
   :func:`~.upstream.upstream_loss` (reconstruction + prediction + commitment + the
   physical constraints of ``stpad.constraints``);
2. ``diffusion``: the upstream model frozen, the latent denoiser trained with the
   DDPM or flow-matching objective (``stpad.sampler``), parameters dropped with
   probability ``stpad.cond_drop``;
3. ``selftrain-<r>`` (``stpad.self_train_rounds`` > 0): the beam search over diffusion
   samples on training inputs, ranked by ``stpad.scores`` plus the RMSE against the
   truth, keeps the best beam of each window; the best ``stpad.keep_fraction`` of them
   join the real windows as pseudo-labelled pairs for more denoiser epochs. The
   pseudo-labels are kept with :meth:`~physforecast.methods.RunContext.artifact`, so a
   resumed run reuses them.

``physforecast evaluate`` then scores the ensembles (``member`` dim: CRPS and
spread-skill in the scorecard) and :meth:`STPADMethod.evaluate` adds a rank histogram
per split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from physforecast.beamvq.context import PhysicsContext
from physforecast.config import Config
from physforecast.data.spec import DataSpec
from physforecast.errors import ConfigError
from physforecast.methods import Method, RunContext
from physforecast.registry import METHODS, SCORES
from physforecast.search.scores import ScoreCombination

from .diffusion import DENOISERS, SAMPLERS, DiffusionProcess, DiTLatentDenoiser, LatentDenoiser
from .model import STPADModel
from .physics import CONSTRAINTS, DEFAULT_WEIGHTS, PhysicsConstraints
from .upstream import STPADUpstream, upstream_loss

__all__ = [
    "STPADConfig",
    "STPADMethod",
    "build_stpad_model",
    "stpad_spec",
    "epoch_split",
    "fit_latent_scale",
    "PseudoLabels",
]

EVAL_REPORT = "stpad_eval.json"


@dataclass
class STPADConfig:
    """ST-PAD: physics-constrained VQ upstream, parameter-conditioned latent diffusion.

    Attributes
    ----------
    sampler : str
        ``ddpm`` (ancestral), ``ddim`` (deterministic) or ``flow`` (flow matching; also
        the training objective).
    train_steps, sample_steps : int
        Diffusion steps of the schedule and of the sampler.
    members : int
        Ensemble members per forecast.
    guidance : float
        Classifier-free guidance scale on the parameters (1: conditional model alone).
    cond_drop : float
        Probability of dropping the parameters in training.
    condition : bool
        Condition the denoiser and propagator on ``data.params`` (False: the ablation;
        the physics still reads them).
    block : int, optional
        Lead times per diffusion sample (a divisor of ``data.out_steps``; default all).
    hidden, dim, down, modes, fourier : int, int, int, int, bool
        Encoder/decoder channels, latent dimension, grid halvings, Fourier modes, and
        whether the Fourier branch is built.
    num_codes, commitment, decay : int, float, float
        Code bank size, commitment weight, EMA decay.
    prop_hidden, prop_depth : int
        Temporal propagator width and depth.
    denoiser : str
        ``conv`` (this package's FiLM-conditioned convolutional denoiser) or ``dit``
        (the DiT of :mod:`physforecast.generative.dit`; the latent grid must be even).
    den_hidden, den_depth, emb_dim, den_heads : int
        Denoiser width, depth and embedding size (conv), attention heads (dit).
    constraints : dict
        Constraint name -> weight (``pde``, ``heat``, ``divergence``, ``mass``,
        ``energy``); 0 switches one off.
    heat_kappa : float
        Diffusivity of the ``heat`` constraint.
    upstream_epochs : int, optional
        Epochs of the upstream stage (default half of ``train.epochs``); the diffusion
        stage gets the rest, less the self-training epochs.
    scores : dict
        Reference-free score name -> weight ranking the beam search over diffusion
        samples (``vorticity_residual``, ``divergence``, ``spectral``...); empty: no
        search, independent members.
    width, candidates : int
        Beam width ``W`` and diffusion samples per beam ``K``.
    self_train_rounds, self_train_epochs : int
        Self-training rounds on beam-searched pseudo-labels and denoiser epochs per round.
    keep_fraction : float
        Share of the pseudo-labels (best scored) kept per round.
    pool : int, optional
        Training windows pseudo-labelled per round (default all).
    """

    sampler: str = "ddim"
    train_steps: int = 100
    sample_steps: int = 20
    members: int = 4
    guidance: float = 1.0
    cond_drop: float = 0.1
    condition: bool = True
    block: int | None = None
    hidden: int = 32
    dim: int = 16
    down: int = 2
    modes: int = 8
    fourier: bool = True
    num_codes: int = 256
    commitment: float = 0.25
    decay: float = 0.99
    prop_hidden: int = 64
    prop_depth: int = 2
    denoiser: str = "conv"
    den_hidden: int = 64
    den_depth: int = 3
    emb_dim: int = 64
    den_heads: int = 4
    constraints: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    heat_kappa: float = 1.0
    upstream_epochs: int | None = None
    scores: dict[str, float] = field(default_factory=dict)
    width: int = 2
    candidates: int = 4
    self_train_rounds: int = 0
    self_train_epochs: int = 1
    keep_fraction: float = 0.5
    pool: int | None = None


def epoch_split(cfg: Config) -> tuple[int, int, int]:
    """(upstream epochs, diffusion epochs, epochs per self-training round)."""
    s, total = cfg.stpad, cfg.train.epochs
    up = s.upstream_epochs if s.upstream_epochs is not None else max(1, total // 2)
    diff = total - up - s.self_train_rounds * s.self_train_epochs
    if up < 1 or diff < 1:
        raise ConfigError(
            f"train.epochs={total} is too few for ST-PAD: it needs >= 1 upstream epoch "
            f"(stpad.upstream_epochs={up}) + >= 1 diffusion epoch + stpad.self_train_rounds "
            f"({s.self_train_rounds}) x stpad.self_train_epochs ({s.self_train_epochs})"
        )
    return up, diff, s.self_train_epochs


def stpad_spec(cfg: Config, data: DataSpec) -> dict[str, Any]:
    """The structure of an ST-PAD model (saved as ``model.json``)."""
    s = cfg.stpad
    periodic = str(data.attrs.get("boundary_conditions", "")) == "periodic"
    return {
        "in_steps": data.in_steps,
        "out_steps": data.out_steps,
        "channels": data.in_channels,
        "n_params": len(data.params),
        "block": int(s.block or data.out_steps),
        "condition": bool(s.condition and len(data.params)),
        "objective": "flow" if s.sampler == "flow" else "diffusion",
        "train_steps": s.train_steps,
        "hidden": s.hidden,
        "dim": s.dim,
        "down": s.down,
        "modes": s.modes,
        "fourier": s.fourier,
        "num_codes": s.num_codes,
        "prop_hidden": s.prop_hidden,
        "prop_depth": s.prop_depth,
        "denoiser": s.denoiser,
        "den_heads": s.den_heads,
        "den_hidden": s.den_hidden,
        "den_depth": s.den_depth,
        "emb_dim": s.emb_dim,
        "padding_mode": "circular" if periodic else "zeros",
    }


def _score(cfg: Config) -> ScoreCombination | None:
    weights = {k: float(v) for k, v in cfg.stpad.scores.items() if float(v) > 0}
    return ScoreCombination(weights) if weights else None


def build_stpad_model(spec: dict[str, Any], cfg: Config) -> STPADModel:
    """The (untrained) model of ``spec`` (:func:`stpad_spec`) with ``cfg.stpad``'s sampling
    settings and constraint weights."""
    s = cfg.stpad
    if (spec["objective"] == "flow") != (s.sampler == "flow"):
        raise ConfigError(
            f"this model was trained with the {spec['objective']} objective; stpad.sampler="
            f"{s.sampler!r} cannot sample it (use {'flow' if spec['objective'] == 'flow' else 'ddpm or ddim'})"
        )
    cond = spec["n_params"] if spec["condition"] else 0
    pad = spec["padding_mode"]
    upstream = STPADUpstream(
        spec["in_steps"],
        spec["out_steps"],
        spec["channels"],
        cond_dim=cond,
        hidden=spec["hidden"],
        dim=spec["dim"],
        down=spec["down"],
        modes=spec["modes"],
        fourier=spec["fourier"],
        num_codes=spec["num_codes"],
        commitment=s.commitment,
        decay=s.decay,
        prop_hidden=spec["prop_hidden"],
        prop_depth=spec["prop_depth"],
        padding_mode=pad,
    )
    if spec.get("denoiser", "conv") == "dit":
        denoiser: nn.Module = DiTLatentDenoiser(
            spec["in_steps"],
            spec["block"],
            spec["dim"],
            cond_dim=cond,
            hidden=spec["den_hidden"],
            depth=spec["den_depth"],
            heads=spec["den_heads"],
        )
    else:
        denoiser = LatentDenoiser(
            spec["in_steps"],
            spec["block"],
            spec["dim"],
            cond_dim=cond,
            hidden=spec["den_hidden"],
            depth=spec["den_depth"],
            emb_dim=spec["emb_dim"],
            padding_mode=pad,
        )
    process = DiffusionProcess(s.sampler, spec["train_steps"], s.sample_steps)
    constraints = PhysicsConstraints(
        spec["channels"], spec["n_params"], s.constraints, heat_kappa=s.heat_kappa
    )
    context = PhysicsContext(spec["channels"], spec["n_params"])
    return STPADModel(
        upstream,
        denoiser,
        process,
        constraints,
        context,
        members=s.members,
        guidance=s.guidance,
        condition=bool(cond),
        score=_score(cfg),
        candidates=s.candidates,
        width=s.width,
        cond_drop=s.cond_drop,
        seed=cfg.train.seed,
    )


@torch.no_grad()
def fit_latent_scale(model: STPADModel, data: Dataset, batch_size: int, batches: int = 8) -> float:
    """Set ``model.latent_std`` to the standard deviation of the quantized latents of the
    first ``batches`` batches of ``data`` (the diffusion runs on unit-scale latents)."""
    model.latent_std.fill_(1.0)
    values = []
    for i, batch in enumerate(DataLoader(data, batch_size=batch_size, shuffle=False)):
        if i >= batches:
            break
        x = batch["x"].to(model.latent_std.device)
        values.append(model.latents(x).flatten())
    std = float(torch.cat(values).std()) if values else 1.0
    model.latent_std.fill_(std if std > 0 and math.isfinite(std) else 1.0)
    return float(model.latent_std)


def _upstream_loss_fn(constraints: PhysicsConstraints):
    def loss_fn(module: nn.Module, batch: dict[str, torch.Tensor]):
        return upstream_loss(module, batch, constraints)

    return loss_fn


def _diffusion_loss_fn(module: nn.Module, batch: dict[str, torch.Tensor]):
    inner = module.module if hasattr(module, "module") else module
    cond = batch.get("params") if inner.cond_dim else None
    loss = module(batch["x"], cond, batch["y"])
    return loss, {}


class PseudoLabels(Dataset):
    """Windows whose future is a kept beam-search sample: dicts like ``ForecastWindows``'."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return int(self.tensors["x"].shape[0])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}


def pseudo_label(
    model: STPADModel,
    data: Dataset,
    *,
    batch_size: int,
    keep_fraction: float,
    pool: int | None = None,
) -> dict[str, torch.Tensor]:
    """Beam-search the training windows, rank by score + RMSE to the truth, keep the best.

    Returns the tensors of :class:`PseudoLabels` (``x``, ``y`` = the best beam,
    ``params``, ``mask`` when present, and ``score``).
    """
    model.eval()
    device = model.latent_std.device
    rows: dict[str, list[torch.Tensor]] = {}
    seen = 0
    for batch in DataLoader(data, batch_size=batch_size, shuffle=False):
        if pool is not None and seen >= pool:
            break
        x = batch["x"].to(device)
        y = batch["y"].to(device)
        cond = batch["params"].to(device) if model.cond_dim else None
        physics = model._physics_score(cond, x.shape[0]) if model.score is not None else None

        def score_fn(seq, blocks, step, y=y, physics=physics):
            n, k = blocks.shape[:2]
            r = torch.arange(y.shape[0], device=y.device).repeat_interleave(n // y.shape[0])
            tgt = y[r, step * model.block : (step + 1) * model.block]
            err = (blocks - tgt[:, None]).pow(2).flatten(2).mean(-1).sqrt()
            return err + (physics(seq, blocks, step) if physics is not None else 0.0)

        res = model.search(x, cond, score_fn=score_fn)
        best = res.sequences[:, 0]
        for key, value in (("x", x), ("y", best), ("score", res.scores[:, 0])):
            rows.setdefault(key, []).append(value.cpu())
        for key in ("params", "mask"):
            if key in batch:
                rows.setdefault(key, []).append(batch[key])
        seen += x.shape[0]
    out = {k: torch.cat(v) for k, v in rows.items()}
    n_keep = max(1, int(round(keep_fraction * out["x"].shape[0])))
    keep = torch.sort(out["score"], stable=True).indices[:n_keep]
    return {k: v[keep] for k, v in out.items()}


@METHODS.register(
    "stpad",
    config=STPADConfig,
    description="physics-constrained VQ upstream + parameter-conditioned latent diffusion",
)
class STPADMethod(Method):
    """ST-PAD: upstream, diffusion and optional self-training stages (see the module)."""

    name = "stpad"

    def check(self, cfg: Config, data: DataSpec) -> None:
        s = cfg.stpad
        epoch_split(cfg)
        if s.denoiser not in DENOISERS:
            raise ConfigError(f"stpad.denoiser={s.denoiser!r} is not one of {', '.join(DENOISERS)}")
        if s.denoiser == "dit" and (
            (data.layout.shape[0] // 2**s.down) % 2 or (data.layout.shape[1] // 2**s.down) % 2
        ):
            raise ConfigError(
                "stpad.denoiser=dit needs an even latent grid (2x2 patches): "
                f"{data.layout.shape} / 2**stpad.down is odd; lower stpad.down"
            )
        if s.sampler not in SAMPLERS:
            raise ConfigError(f"stpad.sampler={s.sampler!r} is not one of {', '.join(SAMPLERS)}")
        unknown = sorted(set(s.constraints) - set(CONSTRAINTS))
        if unknown:
            raise ConfigError(
                f"stpad.constraints has unknown name(s) {unknown}; valid: {', '.join(CONSTRAINTS)}"
            )
        block = int(s.block or data.out_steps)
        if block < 1 or data.out_steps % block:
            raise ConfigError(f"stpad.block={block} must divide data.out_steps={data.out_steps}")
        h, w = data.layout.shape
        if h % 2**s.down or w % 2**s.down:
            raise ConfigError(
                f"stpad.down={s.down} halves the grid {s.down} times; {h}x{w} is not divisible "
                f"by {2**s.down}"
            )
        for name in s.scores:
            SCORES.entry(name)
            if SCORES.entry(name).meta["reference"]:
                raise ConfigError(
                    f"stpad.scores ranks forecasts without the truth; {name!r} needs it "
                    "(use vorticity_residual, divergence, conservation, spectral...)"
                )
        if s.scores and s.members > max(s.width, s.candidates):
            raise ConfigError(
                f"with beam search the members are the best beams: stpad.members={s.members} "
                f"needs stpad.width >= members (width={s.width})"
            )
        if not 0 < s.keep_fraction <= 1:
            raise ConfigError(f"stpad.keep_fraction={s.keep_fraction} must be in (0, 1]")
        if not 0 <= s.cond_drop < 1:
            raise ConfigError(f"stpad.cond_drop={s.cond_drop} must be in [0, 1)")

    def model_spec(self, cfg: Config, data: DataSpec) -> dict[str, Any]:
        return stpad_spec(cfg, data)

    def build(self, spec: dict[str, Any], cfg: Config, data: DataSpec) -> STPADModel:
        return build_stpad_model(spec, cfg)

    def fit(self, ctx: RunContext) -> STPADModel:
        cfg, data = ctx.cfg, ctx.data
        s = cfg.stpad
        e_up, e_diff, e_round = epoch_split(cfg)
        model = self.build(self.model_spec(cfg, data.spec), cfg, data.spec)
        model.constraints.fill(data)
        model.context_fn.fill(data)
        model.to(ctx.device)
        loss = _upstream_loss_fn(model.constraints)
        ctx.trainer(model.upstream, stage="upstream", loss_fn=loss, epochs=e_up).fit(
            data.train, data.val
        )
        model.upstream.requires_grad_(False)
        fit_latent_scale(model, data.train, cfg.data.batch_size)
        ctx.trainer(model, stage="diffusion", loss_fn=_diffusion_loss_fn, epochs=e_diff).fit(
            data.train, data.val
        )
        for r in range(1, s.self_train_rounds + 1):
            labels = ctx.artifact(
                f"selftrain-{r}",
                lambda: pseudo_label(
                    model,
                    data.train,
                    batch_size=cfg.data.batch_size,
                    keep_fraction=s.keep_fraction,
                    pool=s.pool,
                ),
            )
            labels = {k: v for k, v in labels.items() if k != "score"}
            mix = ConcatDataset([data.train, PseudoLabels(labels)])
            ctx.trainer(
                model, stage=f"selftrain-{r}", loss_fn=_diffusion_loss_fn, epochs=e_round
            ).fit(mix, data.val)
        model.eval()
        model.reseed()
        ctx.save_model(model)
        return model

    def evaluate(self, model: nn.Module, ctx: RunContext) -> str | None:
        from physforecast.metrics.probabilistic import rank_histogram

        if not isinstance(model, STPADModel) or model.members < 2:
            return None
        splits = {"test": ctx.data.test, **ctx.data.extra}
        report: dict[str, Any] = {"settings": model.settings()}
        lines = [f"ST-PAD rank histograms ({model.members} members; flat is calibrated):"]
        model.eval()
        for name, windows in splits.items():
            if name.startswith("val"):
                continue
            model.reseed()
            counts = None
            for batch in DataLoader(windows, batch_size=ctx.cfg.data.batch_size):
                x = batch["x"].to(ctx.device)
                cond = batch["params"].to(ctx.device) if model.cond_dim else None
                ens = model.sample(x, cond).cpu()  # (B, M, T, C, H, W)
                h = rank_histogram(ens, batch["y"], member_dim=1)
                h = h.reshape(-1, h.shape[-1]).sum(0) if h.ndim > 1 else h
                counts = h if counts is None else counts + h
            if counts is None:
                continue
            freq = (counts / counts.sum()).tolist()
            report[name] = {"rank_histogram": freq}
            lines.append(f"  {name:16s} " + " ".join(f"{f:.3f}" for f in freq))
        ctx.run.write_json(EVAL_REPORT, report)
        model.reseed()
        plotted = _plot_ensemble(ctx)
        if plotted:
            lines.append(f"ensemble plot: {plotted}")
        return "\n".join(lines)


def _plot_ensemble(ctx: RunContext) -> str | None:
    """``plots/ensemble.png`` from the run's ``forecasts.nc`` (members, mean, spread)."""
    import xarray as xr

    from physforecast.plots import plot_ensemble, save_figure

    path = ctx.run.file(ctx.run.FORECASTS)
    if not path.exists() or not ctx.run.writer:
        return None
    with xr.open_dataset(path) as ds:
        ds = ds.load()
    names = [v for v in ctx.data.variables if v in ds and f"{v}_truth" in ds]
    if not names or "member" not in ds[names[0]].dims:
        return None
    truth = ds[[f"{v}_truth" for v in names]].rename({f"{v}_truth": v for v in names})
    out = ctx.run.plot_path("ensemble")
    save_figure(plot_ensemble(ds[names], truth), out)
    return str(out)
