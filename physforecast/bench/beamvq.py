"""Benchmark: backbone alone versus backbone + BeamVQ at the same number of gradient steps.

``physforecast bench beamvq`` simulates a small ns2d set (32x32, 10 -> 10 frames) and, for
fno, convlstm and unet and three seeds, trains

* **baseline**: the backbone alone for ``E`` epochs;
* **BeamVQ (physics-filtered)**: the same backbone for ``E1`` epochs, then backbone + top-K
  VQ head for ``E_head`` epochs, then ``R`` self-training rounds whose pseudo-labels are
  the per-window best beam under ``rmse + spectral_error + vorticity_residual`` (the best
  ``keep_quantile`` of them), ``E1 + E_head + R * epochs_per_round = E`` epochs in all;
* **BeamVQ (unfiltered)**: the same, but every one of the K candidates becomes a
  pseudo-label, as the authors' public code does.

The three share the first ``E1`` backbone epochs (the baseline continues from that
snapshot with the same optimiser settings) and the two BeamVQ variants share the head
stage, so they differ only in what follows. Every self-training epoch is capped at the
step count of a real-data epoch. The BeamVQ forecast is the model's ``forward``: beam
search over the K candidates ranked by the reference-free vorticity residual, mean of the
best ``ensemble`` beams. Reported per lead time on the test windows, in physical units:
RMSE, SSIM, high-band fRMSE and the vorticity residual, with the authors' figures beside
them. ``quick=True`` runs one tiny configuration in seconds.
"""

from __future__ import annotations

import copy
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Any

import torch

import physforecast as pf
from physforecast.beamvq.context import PhysicsContext
from physforecast.beamvq.evaluation import evaluate_beamvq
from physforecast.beamvq.forecaster import BeamVQForecaster
from physforecast.beamvq.head import TopKVQHead
from physforecast.beamvq.method import fit_stage, head_loss_fn, run_self_training
from physforecast.config import Config, apply_overrides
from physforecast.search.critic import CriticFilter
from physforecast.search.scores import ScoreCombination

__all__ = ["run", "Setup", "AUTHORS"]

#: The authors' plot.ipynb means (NS 64x64, 10 -> 10), research/core.md section 2.5.
AUTHORS = {
    "convlstm": {"rmse": (0.4402, 0.2745), "ssim": (0.6604, 0.8078)},
    "fno": {"rmse": (0.3179, 0.2843), "ssim": (0.7582, 0.8007)},
    "cno": {"rmse": (0.3302, 0.3000), "ssim": (0.7483, 0.7882)},
}

FILTER_SCORES = {"rmse": 1.0, "spectral_error": 0.5, "vorticity_residual": 0.5}
INFER_SCORES = {"vorticity_residual": 1.0}


@dataclass
class Setup:
    """Sizes of one benchmark run."""

    data: dict[str, Any]
    in_steps: int
    out_steps: int
    backbones: dict[str, dict[str, Any]]
    seeds: list[int]
    epochs: int
    backbone_epochs: int
    head_epochs: int
    rounds: int
    epochs_per_round: int
    batch_size: int = 16
    stride: int = 1
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    sample: int = 1
    top_k: int = 4
    width: int = 3
    ensemble: int = 3
    keep_quantile: float = 0.5
    mix_ratio: float = 0.5
    head: dict[str, Any] = field(default_factory=dict)
    num_codes: int = 64
    code_dim: int = 16


FULL = Setup(
    data={
        "n_trajectories": 32,
        "size": 32,
        "n_steps": 30,
        "dt_save": 0.5,
        "dt": 5e-3,
        "progress": False,
    },
    in_steps=10,
    out_steps=10,
    backbones={
        "fno": {"modes": 8, "hidden": 16, "n_layers": 2},
        "convlstm": {"hidden": 8, "n_layers": 1, "patch": 2},
        "unet": {"hidden": 8, "levels": 2},
    },
    seeds=[0, 1, 2],
    stride=2,
    split=(0.75, 0.05, 0.2),
    epochs=10,
    backbone_epochs=6,
    head_epochs=2,
    rounds=2,
    epochs_per_round=1,
    head={"hidden": 8, "prop_hidden": 16, "prop_depth": 1, "downsample": 4},
)

QUICK = Setup(
    data={
        "n_trajectories": 8,
        "size": 16,
        "n_steps": 8,
        "dt_save": 0.05,
        "dt": 5e-3,
        "progress": False,
    },
    in_steps=2,
    out_steps=2,
    backbones={"fno": {"modes": 4, "hidden": 8, "n_layers": 1}},
    seeds=[0],
    epochs=4,
    backbone_epochs=1,
    head_epochs=1,
    rounds=1,
    epochs_per_round=2,
    batch_size=8,
    top_k=3,
    width=2,
    ensemble=2,
    head={"hidden": 8, "prop_hidden": 16, "prop_depth": 1, "downsample": 2},
    num_codes=16,
    code_dim=8,
)


def _config(setup: Setup, seed: int) -> Config:
    cfg = apply_overrides(
        Config(),
        [
            f"data.in_steps={setup.in_steps}",
            f"data.out_steps={setup.out_steps}",
            f"data.batch_size={setup.batch_size}",
            f"data.stride={setup.stride}",
            f"data.split={list(setup.split)}",
            f"train.seed={seed}",
            "train.device=cpu",
            f"beamvq.top_k={setup.top_k}",
            f"beamvq.width={setup.width}",
            f"beamvq.ensemble={setup.ensemble}",
            f"beamvq.keep_quantile={setup.keep_quantile}",
            f"beamvq.mix_ratio={setup.mix_ratio}",
            f"beamvq.num_codes={setup.num_codes}",
            f"beamvq.code_dim={setup.code_dim}",
        ],
    )
    cfg.data.options = dict(setup.data)
    return cfg


def _data(setup: Setup) -> Any:
    """Prepared splits with the windows materialised in memory (read once).

    Training windows start every ``stride`` frames; test windows at every frame.
    """
    from physforecast.data.prepare import prepare_data as prepare
    from physforecast.data.windows import ForecastWindows

    cfg = _config(setup, 0)
    prepared = prepare(cfg)
    test = prepared.test
    prepared.test = ForecastWindows(
        prepared.dataset,
        prepared.variables,
        setup.in_steps,
        setup.out_steps,
        selection=test.selection,
        params=prepared.param_names,
        normalizer=prepared.normalizer,
    )
    for split in ("train", "val", "test"):
        windows = getattr(prepared, split)
        setattr(prepared, split, [windows[i] for i in range(len(windows))])
    return prepared


def _loader(windows: list, bs: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(windows, batch_size=bs, shuffle=False)


def _forecaster(head: TopKVQHead, setup: Setup, prepared: Any, seed: int) -> BeamVQForecaster:
    ctx = PhysicsContext(head.backbone.in_channels, head.backbone.cond_dim).fill(prepared)
    return BeamVQForecaster(
        head,
        top_k=setup.top_k,
        width=setup.width,
        ensemble=setup.ensemble,
        score=ScoreCombination(INFER_SCORES),
        context_fn=ctx,
        seed=seed,
    )


def _one(name: str, opts: dict, seed: int, setup: Setup, prepared: Any) -> dict[str, Any]:
    """Baseline, BeamVQ filtered and unfiltered for one backbone and seed."""
    cfg = _config(setup, seed)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    backbone = pf.create_backbone(
        name,
        in_steps=setup.in_steps,
        out_steps=setup.out_steps,
        in_channels=prepared.in_channels,
        **opts,
    )
    fit_stage(backbone, cfg, prepared.train, None, setup.backbone_epochs)
    shared = copy.deepcopy(backbone.state_dict())
    rest = setup.epochs - setup.backbone_epochs
    fit_stage(backbone, cfg, prepared.train, None, rest)  # baseline: the backbone alone
    head0 = TopKVQHead(
        backbone, mode="output", num_codes=setup.num_codes, code_dim=setup.code_dim, **setup.head
    )
    baseline = _forecaster(head0, setup, prepared, seed)
    test = _loader(prepared.test, setup.batch_size)
    out: dict[str, Any] = {"baseline": evaluate_beamvq(baseline, test)["base"]}
    t_base = time.perf_counter() - t0

    backbone.load_state_dict(shared)
    torch.manual_seed(seed)
    head = TopKVQHead(
        backbone, mode="output", num_codes=setup.num_codes, code_dim=setup.code_dim, **setup.head
    )
    loss = head_loss_fn(setup.top_k, 0.0, base_weight=1.0, sample=setup.sample)
    fit_stage(head, cfg, prepared.train, None, setup.head_epochs, loss_fn=loss)
    head_state = copy.deepcopy(head.state_dict())
    out["params_backbone"] = sum(p.numel() for p in backbone.parameters())
    out["params_head"] = sum(p.numel() for p in head.parameters()) - out["params_backbone"]
    for variant, scores, select in (
        (
            "filtered",
            ScoreCombination(FILTER_SCORES),
            CriticFilter(per_sample=1, keep_fraction=setup.keep_quantile),
        ),
        ("unfiltered", None, CriticFilter(per_sample=None)),
        ("no_selftrain", None, None),
    ):
        head.load_state_dict(head_state)
        torch.manual_seed(seed)
        model = _forecaster(head, setup, prepared, seed)
        if select is None:  # control: the same steps on real windows only
            epochs = setup.rounds * setup.epochs_per_round
            fit_stage(head, cfg, prepared.train, None, epochs, loss_fn=loss)
            rounds = []
        else:
            rounds = run_self_training(
                model,
                cfg,
                prepared.train,
                None,
                score=scores,
                select=select,
                rounds=setup.rounds,
                epochs_per_round=setup.epochs_per_round,
                sample=setup.sample,
            )
        res = evaluate_beamvq(model, test)
        out[variant] = res["beamvq"]
        out[f"{variant}_top1"] = res["top1"]
        out[f"{variant}_backbone"] = res["base"]
        out[f"{variant}_kept"] = sum(r.get("kept", 0) for r in rounds)
        out["truth"] = res.get("truth", {})
    out["seconds"] = time.perf_counter() - t0
    out["seconds_baseline"] = t_base
    return out


def _mean(values: list[list[float]]) -> list[float]:
    return torch.tensor(values).mean(0).tolist()


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _change(new: float, old: float) -> str:
    return f"{100 * (new - old) / old:+.1f} %" if old else "n/a"


def run(quick: bool = False) -> str:
    """Run the benchmark and return the Markdown report (``physforecast bench beamvq``)."""
    setup = QUICK if quick else FULL
    t0 = time.perf_counter()
    prepared = _data(setup)
    runs: dict[str, list[dict[str, Any]]] = {}
    for name, opts in setup.backbones.items():
        if name not in pf.list_backbones():
            continue
        runs[name] = [_one(name, opts, seed, setup, prepared) for seed in setup.seeds]
    total = time.perf_counter() - t0
    return _report(setup, prepared, runs, total, quick)


KINDS = [
    ("baseline", "backbone alone"),
    ("filtered", "BeamVQ, physics-filtered pseudo-labels"),
    ("unfiltered", "BeamVQ, unfiltered pseudo-labels"),
    ("no_selftrain", "BeamVQ head, no self-training"),
]
METRICS = [
    ("rmse", "RMSE"),
    ("ssim", "SSIM"),
    ("frmse_high", "fRMSE high"),
    ("vorticity_residual", "vorticity residual"),
]


def _avg(seeds: list[dict], key: str, metric: str) -> float | None:
    """Mean over seeds and lead times, or None when the metric was not computed."""
    vals = [r[key].get(metric) for r in seeds]
    if any(v is None for v in vals):
        return None
    per_lead = _mean(vals)
    return sum(per_lead) / len(per_lead)


def _report(setup: Setup, prepared: Any, runs: dict, total: float, quick: bool) -> str:
    lines = [
        "# BeamVQ benchmark: backbone alone vs backbone + BeamVQ (same gradient steps)",
        "",
        f"ns2d {setup.data['size']}x{setup.data['size']} (options {setup.data}), "
        f"{setup.in_steps} -> {setup.out_steps} frames, {len(prepared.train)} train windows "
        f"(stride {setup.stride}), {len(prepared.test)} test windows, seeds {setup.seeds}. "
        f"Epochs: {setup.epochs} in all = {setup.backbone_epochs} backbone + {setup.head_epochs} head + "
        f"{setup.rounds} rounds x {setup.epochs_per_round}; the baseline trains the backbone for all "
        f"{setup.epochs}. K={setup.top_k} (training decodes rank 0 + {setup.sample} sampled rank), "
        f"width {setup.width}, ensemble {setup.ensemble}, keep {setup.keep_quantile}, mix {setup.mix_ratio}; "
        f"filter scores {FILTER_SCORES}; inference score {INFER_SCORES}. Physical units.",
        "",
        "## Means over lead times (mean over seeds)",
        "",
        "| backbone | forecast | "
        + " | ".join(label for _, label in METRICS)
        + " | RMSE vs baseline |",
        "|---|---|" + "---|" * (len(METRICS) + 1),
    ]
    for name, seeds in runs.items():
        base = _avg(seeds, "baseline", "rmse")
        rows = [(k, label) for k, label in KINDS]
        rows += [
            (f"{k}_{part}", f"({k}: {part} only)")
            for k, _ in KINDS[1:]
            for part in ("top1", "backbone")
        ]
        for key, label in rows:
            vals = [_avg(seeds, key, m) for m, _ in METRICS]
            cells = " | ".join("n/a" if v is None else _fmt(v) for v in vals)
            change = "" if key == "baseline" else _change(vals[0], base)
            lines.append(f"| {name} | {label} | {cells} | {change} |")
        truth = seeds[0].get("truth", {}).get("vorticity_residual")
        if truth:
            lines.append(f"| {name} | truth | | | | {_fmt(sum(truth) / len(truth))} | |")

    lines += ["", "## RMSE per lead time (mean over seeds)", ""]
    header = (
        "| backbone | forecast | " + " | ".join(f"{i + 1}" for i in range(setup.out_steps)) + " |"
    )
    lines += [header, "|---|---|" + "---|" * setup.out_steps]
    for name, seeds in runs.items():
        for key, label in KINDS:
            per_lead = _mean([r[key]["rmse"] for r in seeds])
            lines.append(f"| {name} | {label} | " + " | ".join(_fmt(v) for v in per_lead) + " |")
    lines += [
        "",
        "## Per seed (mean RMSE over lead times)",
        "",
        "| backbone | seed | baseline | filtered | unfiltered | no self-training | pseudo-labels kept (filtered / unfiltered) | params backbone / head | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, seeds in runs.items():
        for seed, r in zip(setup.seeds, seeds, strict=True):
            vals = [sum(r[k]["rmse"]) / setup.out_steps for k, _ in KINDS]
            lines.append(
                f"| {name} | {seed} | "
                + " | ".join(_fmt(v) for v in vals)
                + f" | {r['filtered_kept']} / {r['unfiltered_kept']}"
                + f" | {r['params_backbone']} / {r['params_head']} | {r['seconds']:.0f} |"
            )
    lines += [
        "",
        "## The authors' figures (plot.ipynb, NS 64x64 nu=1e-5, 10 -> 10; not this setup)",
        "",
        "| backbone | RMSE baseline -> BeamVQ | SSIM baseline -> BeamVQ |",
        "|---|---|---|",
    ]
    for name, ref in AUTHORS.items():
        (r0, r1), (s0, s1) = ref["rmse"], ref["ssim"]
        lines.append(
            f"| {name} | {r0} -> {r1} ({_change(r1, r0)}) | {s0} -> {s1} ({_change(s1, s0)}) |"
        )
    lines += [
        "",
        f"Total wall time: {total:.0f} s.",
        f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads.",
        f"Command: `physforecast bench beamvq{' --quick' if quick else ''}`",
    ]
    return "\n".join(lines)
