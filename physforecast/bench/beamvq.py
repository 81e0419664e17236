"""Benchmark: does BeamVQ improve a *converged* backbone, at matched compute?

``physforecast bench beamvq`` trains every contender through the same path as
``physforecast train`` (:func:`physforecast.training.run.train`, a run directory per
contender in a temporary folder) and scores the best checkpoint on the test windows with
the package's scorecard (:func:`physforecast.metrics.scorecard.score`, physical units, per
lead time). For each dataset, backbone and seed the contenders are

* ``supervised``: the backbone alone (method ``supervised``) trained to convergence:
  early stopping on the validation loss (``train.patience``) under a cap of
  ``max_epochs``; the best validation epoch is scored;
* ``beamvq``: method ``beamvq`` with its defaults (only the sizes of the code bank and the
  head are scaled to the grid), the same ``train.epochs`` cap and patience;
* ``beamvq_identity``: the same with ``beamvq.quantizer=identity`` (the no-VQ control: the
  same head and training, no code bank);
* ``supervised_wall``: the backbone alone trained for as many epochs as fit in the wall
  time the ``beamvq`` run took (estimated from the ``supervised`` run's time per epoch in
  the same benchmark, no early stopping, best validation epoch scored).

Inference-only ablations reuse each trained ``beamvq`` model of one backbone: its
weights are loaded into forecasters built with other ``beamvq.top_k``, ``beamvq.width``
and ``beamvq.block`` and scored again (no retraining). The data-scarcity protocol trains
``supervised`` and ``beamvq`` on a fraction of the training trajectories
(``data.train_fraction``) and reports the gain by fraction.

Config keys that the installed BeamVQ does not have (an older version) are detected and
their contenders reported as not measured. Raw results go to a JSON file from which
:func:`report` renders the Markdown page again; ``quick=True`` is a smoke run of one tiny
configuration, labelled as such.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "run",
    "measure",
    "report",
    "Setup",
    "DataSetup",
    "FULL",
    "QUICK",
    "KINDS",
    "available_keys",
]


@dataclass
class DataSetup:
    """One dataset of the benchmark: generator options, backbones, metrics."""

    name: str
    options: dict[str, Any]
    backbones: dict[str, dict[str, Any]]
    suite: list[str]
    split: list[float] = field(default_factory=lambda: [0.6, 0.2, 0.2])


@dataclass
class Setup:
    """Sizes of one benchmark run."""

    label: str
    datasets: list[DataSetup]
    seeds: list[int]
    in_steps: int
    out_steps: int
    max_epochs: int
    patience: int
    batch_size: int = 16
    stride: int = 1
    lr: float = 1e-3
    #: Size overrides of the BeamVQ head (everything else stays at the method's defaults).
    beamvq: dict[str, Any] = field(default_factory=dict)
    #: Data-scarcity protocol: fractions of the training trajectories (first dataset).
    fractions: list[float] = field(default_factory=lambda: [1.0])
    fraction_backbone: str = "fno"
    #: Inference-only ablations (first dataset, this backbone, every seed).
    ablate_backbone: str = "fno"
    ablate_top_k: list[int] = field(default_factory=list)
    ablate_width: list[int] = field(default_factory=list)
    ablate_block: list[int] = field(default_factory=list)
    #: Backbones (of every dataset) that also get the no-VQ control (every backbone gets
    #: the wall-matched baseline).
    control_backbones: list[str] = field(default_factory=lambda: ["fno"])
    #: The wall-matched baseline gets at most this many times ``max_epochs``.
    wall_cap: float = 8.0


NS2D_SUITE = ["rmse", "ssim", "frmse_high", "ns_vorticity_residual"]
RB_SUITE = ["rmse", "ssim", "frmse_high", "divergence", "tke_spectrum_mse"]
#: What the benchmark sets in ``beamvq.*`` (sizes and budget); the rest are the defaults.
HEAD_SIZES = {
    "num_codes": 64,
    "code_dim": 16,
    "head_epochs": 3,
    "head": {"hidden": 8, "prop_hidden": 16, "prop_depth": 1, "downsample": 4},
}

FULL = Setup(
    label="full",
    datasets=[
        DataSetup(
            "ns2d",
            {"n_trajectories": 24, "size": 32, "n_steps": 20, "progress": False},
            {
                "fno": {"modes": 8, "hidden": 16, "n_layers": 2},
                "convlstm": {"hidden": 8, "n_layers": 1, "patch": 2},
                "unet": {"hidden": 8, "levels": 2},
            },
            NS2D_SUITE,
            split=[0.667, 0.1665, 0.1665],
        ),
        DataSetup(
            "rayleigh_benard",
            {"n_trajectories": 12, "size": [32, 64], "n_steps": 20, "progress": False},
            {"fno": {"modes": 8, "hidden": 16, "n_layers": 2}},
            RB_SUITE,
            split=[0.5, 0.25, 0.25],
        ),
    ],
    seeds=[0, 1, 2],
    in_steps=4,
    out_steps=6,
    max_epochs=60,
    patience=6,
    beamvq=HEAD_SIZES,
    fractions=[0.1, 0.25, 1.0],
    ablate_top_k=[2, 4, 8, 16],
    ablate_width=[1, 2, 4, 8],
    ablate_block=[1, 2, 3, 6],
)

QUICK = Setup(
    label="quick",
    datasets=[
        DataSetup(
            "ns2d",
            {"n_trajectories": 8, "size": 16, "n_steps": 8, "progress": False},
            {"fno": {"modes": 4, "hidden": 8, "n_layers": 1}},
            ["rmse", "ssim", "ns_vorticity_residual"],
            split=[0.5, 0.25, 0.25],
        )
    ],
    seeds=[0],
    in_steps=2,
    out_steps=2,
    max_epochs=4,
    patience=2,
    batch_size=8,
    beamvq={
        "num_codes": 16,
        "code_dim": 8,
        "top_k": 3,
        "head_epochs": 1,
        "rounds": 1,
        "epochs_per_round": 1,
        "head": {"hidden": 8, "prop_hidden": 8, "prop_depth": 1, "downsample": 2},
    },
    fractions=[0.5, 1.0],
    ablate_top_k=[1, 2],
    ablate_width=[1, 2],
    ablate_block=[1, 2],
)

#: Contender kind -> (method, label).
KINDS = {
    "supervised": ("supervised", "backbone alone, early stopping under the epoch cap"),
    "supervised_wall": ("supervised", "backbone alone, BeamVQ's wall time"),
    "beamvq": ("beamvq", "BeamVQ (defaults)"),
    "beamvq_identity": ("beamvq", "BeamVQ head, identity quantizer (no VQ)"),
    "beamvq_unlabelled": ("beamvq", "BeamVQ, pseudo-labels on the unlabelled trajectories"),
}


# ---------------------------------------------------------------------------- helpers
def available_keys() -> dict[str, bool]:
    """Which of the issue-12 config keys the installed package has (older BeamVQ: some not)."""
    from physforecast.config import Config, apply_overrides
    from physforecast.errors import ConfigError

    probes = {
        "beamvq.block": "beamvq.block=1",
        "beamvq.quantizer": "beamvq.quantizer=identity",
        "beamvq.pseudo": "beamvq.pseudo=none",
        "beamvq.critic": None,
        "beamvq.policy_steps": "beamvq.policy_steps=0",
        "data.train_fraction": "data.train_fraction=0.5",
    }
    out = {}
    for key, probe in probes.items():
        if probe is None:
            section = Config().section("beamvq")
            out[key] = key.split(".")[1] in {f.name for f in dataclasses.fields(section)}
            continue
        try:
            apply_overrides(Config(), [probe])
            out[key] = True
        except ConfigError:
            out[key] = False
    return out


def _nan_to_none(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _card_metrics(card: Any) -> dict[str, dict[str, Any]]:
    """``{metric: {"lead": [per lead], "mean": summary}}``: means over the variables."""
    import numpy as np

    out = {}
    for name in card.metric.values:
        per_lead = card.score.sel(metric=name).values  # (lead, variable)
        summary = card.summary.sel(metric=name).values
        with np.errstate(all="ignore"), contextlib.suppress(Exception):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                lead = np.nanmean(per_lead, axis=-1)
                mean = float(np.nanmean(summary))
            out[str(name)] = {
                "lead": [_nan_to_none(float(v)) for v in lead],
                "mean": _nan_to_none(mean),
            }
    return out


class _View:
    """A forecaster's ``top1`` or ``base`` as a model ``forward(x, cond)`` (for scoring)."""

    def __init__(self, model: Any, attr: str) -> None:
        self.model, self.attr = model, attr
        self.cond_dim = getattr(model, "cond_dim", 0)

    def eval(self) -> _View:
        self.model.eval()
        return self

    def to(self, device: Any) -> _View:
        return self

    def __call__(self, x: Any, cond: Any = None) -> Any:
        import torch

        with torch.no_grad():
            return getattr(self.model, self.attr)(x, cond)


def _score(model: Any, data: Any, suite: list[str], batch_size: int) -> dict[str, Any]:
    import torch

    from physforecast.forecast.windows import forecast_windows
    from physforecast.metrics.scorecard import score

    with torch.no_grad():
        forecast, truth = forecast_windows(model, data.test, data.normalizer, batch_size=batch_size)
    return _card_metrics(score(forecast, truth, suite))


def _params(module: Any) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def _config(setup: Setup, ds: DataSetup, backbone: str, seed: int, extra: list[str]) -> Any:
    from physforecast.config import Config, apply_overrides

    cfg = apply_overrides(
        Config(),
        [
            f"data.dataset={ds.name}",
            f"data.in_steps={setup.in_steps}",
            f"data.out_steps={setup.out_steps}",
            f"data.batch_size={setup.batch_size}",
            f"data.stride={setup.stride}",
            f"data.split={json.dumps(ds.split)}",
            f"model.backbone={backbone}",
            f"train.seed={seed}",
            "train.device=cpu",
            f"train.lr={setup.lr}",
            f"train.epochs={setup.max_epochs}",
            f"train.patience={setup.patience}",
            *extra,
        ],
    )
    cfg.data.options = dict(ds.options)
    cfg.model.options = dict(ds.backbones[backbone])
    names = {f.name for f in dataclasses.fields(cfg.beamvq)}
    for key, value in setup.beamvq.items():
        if key not in names:  # an option this version of BeamVQ does not have
            continue
        if isinstance(value, dict):  # merge: keep the method's own defaults of other keys
            value = {**getattr(cfg.beamvq, key), **value}
        setattr(cfg.beamvq, key, value)
    return cfg


def _quiet():
    """Training prints a line per epoch to stderr when not on a terminal; keep the report clean."""
    return contextlib.redirect_stderr(open(os.devnull, "w"))  # noqa: SIM115


def _train(cfg: Any, out: Path) -> tuple[Any, float, list[dict[str, Any]]]:
    """Train one contender as ``physforecast train`` does; (loaded run, seconds, epoch records)."""
    from physforecast.run_dir import RunDir
    from physforecast.training.run import train

    cfg.out = str(out)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    with _quiet(), contextlib.redirect_stdout(open(os.devnull, "w")):  # noqa: SIM115
        train(cfg, evaluate=False)
    seconds = time.perf_counter() - t0
    records = RunDir(out).read_metrics()
    records.append({"cpu_seconds": time.process_time() - cpu0})
    return RunDir(out).load_model("best"), seconds, records


def _stages(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per stage: epochs run, best epoch (by validation loss), seconds."""
    stages: dict[str, dict[str, Any]] = {}
    curves: dict[str, list[float]] = {}
    for r in records:
        name = r.get("stage") or "main"
        s = stages.setdefault(name, {"epochs": 0, "best_epoch": 0, "best": math.inf, "s": 0.0})
        s["epochs"] = max(s["epochs"], int(r["epoch"]))
        s["s"] += float(r.get("epoch_time_s", 0.0))
        val = r.get("val_loss", r.get("train_loss"))
        if val is not None:
            curves.setdefault(name, []).append(float(val))
            if val < s["best"]:
                s["best"], s["best_epoch"] = float(val), int(r["epoch"])
    for name, s in stages.items():
        s["best"] = _nan_to_none(s["best"])
        curve = curves.get(name, [])
        # how much the best validation loss still fell over the last quarter of the epochs
        q = max(1, len(curve) // 4)
        before = min(curve[:-q]) if len(curve) > q else None
        s["last_quarter_gain_pct"] = (
            _nan_to_none(100.0 * (before - min(curve)) / before) if before else None
        )
    return stages


def _method_report(loaded: Any, cfg: Any, out: Path) -> dict[str, Any]:
    """The method's own ``evaluate`` report (BeamVQ: backbone / top-1 / beam / best-of-K)."""
    from physforecast.data.prepare import prepare_data
    from physforecast.methods import RunContext, get_method
    from physforecast.run_dir import RunDir
    from physforecast.training.distributed import DistInfo

    data = prepare_data(cfg, loaded.normalizer)
    run = RunDir(out)
    ctx = RunContext(cfg, data, run, DistInfo())
    with _quiet(), contextlib.redirect_stdout(open(os.devnull, "w")):  # noqa: SIM115
        get_method(cfg.method).evaluate(loaded.model, ctx)
    path = out / "beamvq_eval.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _differs(model: Any, data: Any, batch_size: int) -> float | None:
    """Largest |BeamVQ forecast - top-1| over the test windows (model units)."""
    import torch
    from torch.utils.data import DataLoader

    if not hasattr(model, "top1"):
        return None
    diff = 0.0
    with torch.no_grad():
        for batch in DataLoader(data.test, batch_size=batch_size):
            cond = batch["params"] if getattr(model, "cond_dim", 0) else None
            d = (model(batch["x"], cond) - model.top1(batch["x"], cond)).abs().max()
            diff = max(diff, float(d))
    return diff


def _uptime() -> str:
    with contextlib.suppress(Exception):
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    with contextlib.suppress(Exception):
        return "loadavg " + Path("/proc/loadavg").read_text().strip()
    return "unknown"


# ---------------------------------------------------------------------------- measuring
def _run_key(setup: Setup, ds: DataSetup, backbone: str, method: str = "beamvq") -> str:
    """What a run's result depends on besides kind, fraction and seed (for reuse)."""
    fields = ("in_steps", "out_steps", "max_epochs", "patience", "batch_size", "stride", "lr")
    parts = {f: getattr(setup, f) for f in fields}
    if method == "beamvq":
        parts.update(beamvq=setup.beamvq)
    parts.update(dataset=ds.name, options=ds.options, split=ds.split)
    parts.update(backbone=backbone, backbone_options=ds.backbones[backbone], suite=ds.suite)
    return json.dumps(parts, sort_keys=True)


def _contender(
    setup: Setup,
    ds: DataSetup,
    backbone: str,
    seed: int,
    kind: str,
    work: Path,
    *,
    fraction: float = 1.0,
    extra: list[str] | None = None,
    keep: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train and score one contender; ``keep`` receives the loaded run (for ablations)."""
    from physforecast.data.prepare import prepare_data

    method = KINDS[kind][0]
    overrides = [f"method={method}", *(extra or [])]
    if kind == "beamvq_identity":
        overrides.append("beamvq.quantizer=identity")
    if kind == "beamvq_unlabelled":
        overrides.append("beamvq.pseudo=unlabelled")
    if fraction < 1.0:
        overrides.append(f"data.train_fraction={fraction}")
    cfg = _config(setup, ds, backbone, seed, overrides)
    key = _run_key(setup, ds, backbone, method)
    name = f"{ds.name}-{backbone}-{kind}-f{fraction}-s{seed}"
    out = work / name
    loaded, seconds, records = _train(cfg, out)
    cpu = records.pop()["cpu_seconds"]
    data = prepare_data(cfg, loaded.normalizer)
    model = loaded.model
    entry: dict[str, Any] = {
        "dataset": ds.name,
        "backbone": backbone,
        "kind": kind,
        "fraction": fraction,
        "seed": seed,
        "overrides": overrides,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "stages": _stages(records),
        "params": _params(model),
        "params_backbone": _params(getattr(model, "backbone", model)),
        "train_windows": len(data.train),
        "test_windows": len(data.test),
        "metrics": _score(model, data, ds.suite, setup.batch_size),
        "uptime": _uptime(),
        "git": _git(),
        "run_key": key,
    }
    if method == "beamvq":
        entry["top1"] = _score(_View(model, "top1"), data, ds.suite, setup.batch_size)
        entry["base"] = _score(_View(model, "base"), data, ds.suite, setup.batch_size)
        entry["max_abs_beam_minus_top1"] = _differs(model, data, setup.batch_size)
        entry["evaluate"] = _method_report(loaded, cfg, out)
        if keep is not None:
            keep.update(loaded=loaded, cfg=cfg, data=data)
    return entry


def _ablations(
    setup: Setup, ds: DataSetup, seed: int, kept: dict[str, Any], keys: dict[str, bool]
) -> list[dict[str, Any]]:
    """Score one trained BeamVQ model with other K, W and block (inference only)."""
    from physforecast.config import apply_overrides
    from physforecast.methods import get_method

    loaded, cfg, data = kept["loaded"], kept["cfg"], kept["data"]
    method = get_method("beamvq")
    spec = loaded.data
    model_spec = json.loads((Path(cfg.out) / "model.json").read_text())
    state = loaded.model.state_dict()
    rows = []
    grid: list[tuple[str, int]] = [("top_k", k) for k in setup.ablate_top_k]
    grid += [("width", w) for w in setup.ablate_width]
    if keys.get("beamvq.block"):
        grid += [("block", b) for b in setup.ablate_block if setup.out_steps % b == 0]
    for key, value in grid:
        variant = apply_overrides(cfg, [f"beamvq.{key}={value}"])
        model = method.build(model_spec, variant, spec)
        model.load_state_dict(state)
        model.eval()
        t0 = time.perf_counter()
        metrics = _score(model, data, ds.suite, setup.batch_size)
        rows.append(
            {
                "dataset": ds.name,
                "backbone": setup.ablate_backbone,
                "seed": seed,
                "key": key,
                "value": value,
                "settings": {
                    k: getattr(variant.beamvq, k, None)
                    for k in ("top_k", "width", "block", "ensemble")
                },
                "metrics": metrics,
                "seconds": time.perf_counter() - t0,
                "run_key": _run_key(setup, ds, setup.ablate_backbone),
            }
        )
    return rows


def _wall_epochs(sup: dict[str, Any], bvq: dict[str, Any], setup: Setup) -> int:
    """Epochs of the backbone alone that take the wall time of the BeamVQ run.

    The machine's load changes between runs, so the estimate uses only ratios measured
    within one run: the BeamVQ run's time over its backbone stage's training time per
    epoch (same backbone, same data, same load), divided by the converged run's ratio of
    its whole time to its training loop time (validation and setup overhead).
    """
    stage = bvq["stages"].get("backbone") or next(iter(bvq["stages"].values()))
    per_epoch = stage["s"] / max(1, stage["epochs"])
    overhead = sup["seconds"] / max(1e-9, sup["stages"]["main"]["s"])
    cap = int(setup.wall_cap * setup.max_epochs)
    return max(1, min(cap, round(bvq["seconds"] / (per_epoch * overhead))))


def measure(
    setup: Setup,
    *,
    results: str | os.PathLike | None = None,
    only: tuple[str, ...] | None = None,
    backbones: tuple[str, ...] | None = None,
    seeds: tuple[int, ...] | None = None,
    datasets: tuple[str, ...] | None = None,
    fractions: tuple[float, ...] | None = None,
    log: Any = None,
) -> dict[str, Any]:
    """Run every contender of ``setup``; returns (and, with ``results``, saves) the raw results.

    Parameters
    ----------
    setup : Setup
        Sizes.
    results : path, optional
        A JSON file: entries already there for the same setup are reused (so an
        interrupted run continues), new ones are added after each contender.
    only : tuple of str, optional
        Contender kinds to run (default: all that the installed BeamVQ supports).
    backbones : tuple of str, optional
        Backbones to run (default: all of each dataset).
    seeds : tuple of int, optional
        Seeds to run (default: all; several processes can share the seeds and their
        results files be merged with ``--merge``).
    datasets : tuple of str, optional
        Datasets to run (default: all).
    fractions : tuple of float, optional
        Training fractions to run (default: all).
    log : callable, optional
        Called with a line per finished contender.
    """
    import torch

    torch.set_num_threads(1)
    keys = available_keys()
    path = Path(results) if results is not None else None
    saved: dict[str, Any] = {}
    if path is not None and path.exists():
        saved = json.loads(path.read_text())
    valid = {
        _run_key(setup, ds, bb, m)
        for ds in setup.datasets
        for bb in ds.backbones
        for m in ("supervised", "beamvq")
    }  # runs measured with the same sizes are reused
    out: dict[str, Any] = {
        "setup": dataclasses.asdict(setup),
        "keys": keys,
        "runs": [r for r in saved.get("runs", []) if r.get("run_key") in valid],
        "ablations": [r for r in saved.get("ablations", []) if r.get("run_key") in valid],
        "uptime_start": saved.get("uptime_start", _uptime()),
        "machine": (
            f"{platform.platform()}, {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}, torch "
            f"{torch.__version__}, {torch.get_num_threads()} torch thread(s)"
        ),
        "git": _git(),
    }
    out["seconds"] = saved.get("seconds", 0.0)
    t_start = time.perf_counter()
    done = {(r["dataset"], r["backbone"], r["kind"], r["fraction"], r["seed"]) for r in out["runs"]}
    ablated = {(r["dataset"], r["seed"]) for r in out["ablations"]}
    wanted = set(only or KINDS)
    if not keys["beamvq.quantizer"]:
        wanted.discard("beamvq_identity")

    def save() -> None:
        out["seconds"] = saved.get("seconds", 0.0) + time.perf_counter() - t_start
        out["uptime_end"] = _uptime()
        if path is not None:
            from physforecast.atomic import atomic_write

            text = json.dumps(out, indent=1)
            atomic_write(path, lambda tmp: tmp.write_text(text))

    def find(ds: str, bb: str, kind: str, frac: float, seed: int) -> dict[str, Any] | None:
        for r in out["runs"]:
            if (r["dataset"], r["backbone"], r["kind"], r["fraction"], r["seed"]) == (
                ds,
                bb,
                kind,
                frac,
                seed,
            ):
                return r
        return None

    with tempfile.TemporaryDirectory(prefix="bench-beamvq-") as tmp:
        work = Path(tmp)
        # in order of priority, so that a run cut short has the main comparison first:
        # 0 the first backbone of the first dataset, 1 its controls, 2 data scarcity,
        # 3 the other datasets, 4 the other backbones, 5 their controls
        ranked: list[tuple[int, int, DataSetup, str, str, float]] = []
        for seed in setup.seeds:
            for d_i, ds in enumerate(setup.datasets):
                for b_i, backbone in enumerate(ds.backbones):
                    main = 0 if d_i == 0 and b_i == 0 else (3 if b_i == 0 else 4)
                    ctrl = 1 if main == 0 else 5
                    ranked += [(main, seed, ds, backbone, k, 1.0) for k in ("supervised", "beamvq")]
                    ranked.append((ctrl, seed, ds, backbone, "supervised_wall", 1.0))
                    if backbone in setup.control_backbones:
                        ranked.append((ctrl, seed, ds, backbone, "beamvq_identity", 1.0))
            if keys["data.train_fraction"]:
                for frac in setup.fractions:
                    if frac < 1.0:
                        for kind in ("supervised", "beamvq", "beamvq_unlabelled"):
                            ds = setup.datasets[0]
                            ranked.append((2, seed, ds, setup.fraction_backbone, kind, frac))
        ranked.sort(key=lambda job: (job[0], job[1]))
        jobs = [(ds, bb, seed, kind, frac) for _, seed, ds, bb, kind, frac in ranked]
        for ds, backbone, seed, kind, frac in jobs:
            if kind not in wanted or (ds.name, backbone, kind, frac, seed) in done:
                continue
            if backbones is not None and backbone not in backbones:
                continue
            if seeds is not None and seed not in seeds:
                continue
            if datasets is not None and ds.name not in datasets:
                continue
            if fractions is not None and frac not in fractions:
                continue
            extra: list[str] = []
            if kind == "supervised_wall":
                sup = find(ds.name, backbone, "supervised", frac, seed)
                bvq = find(ds.name, backbone, "beamvq", frac, seed)
                if sup is None or bvq is None:
                    continue
                epochs = _wall_epochs(sup, bvq, setup)
                extra = [f"train.epochs={epochs}", "train.patience=0"]
            keep: dict[str, Any] = {}
            ablate = (
                kind == "beamvq"
                and frac == 1.0
                and ds is setup.datasets[0]
                and backbone == setup.ablate_backbone
                and (ds.name, seed) not in ablated
            )
            entry = _contender(
                setup,
                ds,
                backbone,
                seed,
                kind,
                work,
                fraction=frac,
                extra=extra,
                keep=keep if ablate else None,
            )
            out["runs"].append(entry)
            if ablate:
                out["ablations"] += _ablations(setup, ds, seed, keep, keys)
            save()
            if log is not None:
                rmse = entry["metrics"].get("rmse", {}).get("mean")
                log(
                    f"{ds.name} {backbone} {kind} f={frac} seed={seed}: RMSE {rmse} "
                    f"in {entry['seconds']:.0f} s"
                )
    save()
    return out


def _entry_id(r: dict[str, Any]) -> tuple:
    return (r["dataset"], r["backbone"], r["kind"], r["fraction"], r["seed"])


def _git() -> str:
    with contextlib.suppress(Exception):
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    return "unknown"


# ---------------------------------------------------------------------------- reporting
def _stat(values: list[float | None]) -> tuple[float | None, float | None, int]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None, 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0), len(vals)


def _fmt(v: float | None, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}g}"


def _pm(values: list[float | None], digits: int = 4) -> str:
    mean, std, n = _stat(values)
    if mean is None:
        return "n/a"
    return f"{_fmt(mean, digits)} ± {_fmt(std, 2)}" if n > 1 else _fmt(mean, digits)


def _metric_of(part: dict[str, Any], metric: str) -> float | None:
    return part.get(metric, {}).get("mean")


def _rel(new: float | None, old: float | None) -> float | None:
    if new is None or old is None or old == 0:
        return None
    return 100.0 * (new - old) / old


def _pct(values: list[float | None]) -> str:
    mean, std, n = _stat(values)
    if mean is None:
        return "n/a"
    return f"{mean:+.1f} % ± {std:.1f}" if n > 1 else f"{mean:+.1f} %"


def _select(res: dict[str, Any], **want: Any) -> list[dict[str, Any]]:
    return [r for r in res["runs"] if all(r[k] == v for k, v in want.items())]


def _paired(res: dict, ds: str, bb: str, kind: str, ref: str, metric: str, frac: float = 1.0):
    """Per-seed relative change of ``kind`` against ``ref`` (same seed), in %."""
    out = []
    for r in _select(res, dataset=ds, backbone=bb, kind=kind, fraction=frac):
        base = _select(res, dataset=ds, backbone=bb, kind=ref, fraction=frac, seed=r["seed"])
        if base:
            out.append(
                _rel(_metric_of(r["metrics"], metric), _metric_of(base[0]["metrics"], metric))
            )
    return out


def _metric_names(res: dict[str, Any], ds: str) -> list[str]:
    for r in res["runs"]:
        if r["dataset"] == ds:
            return [m for m in r["metrics"] if not m.endswith("_truth")]
    return []


def report(res: dict[str, Any]) -> str:
    """The Markdown page of raw results from :func:`measure`."""
    setup = res["setup"]
    quick = setup["label"] == "quick"
    lines = ["# BeamVQ benchmark: converged, compute-matched baselines vs BeamVQ", ""]
    if quick:
        lines += [
            "**Smoke run (`--quick`): tiny sizes, one seed, a few epochs. These numbers test "
            "that the benchmark runs; they say nothing about BeamVQ.**",
            "",
        ]
    lines += _setup_lines(res)
    for ds in setup["datasets"]:
        lines += _dataset_section(res, ds)
    lines += _scarcity_section(res)
    lines += _ablation_section(res)
    lines += _per_run_section(res)
    missing = [k for k, ok in res["keys"].items() if not ok]
    lines += ["", "## Not measured", ""]
    if missing:
        lines.append(
            "The installed BeamVQ has no config key "
            + ", ".join(f"`{k}`" for k in missing)
            + "; what needs it was not run."
        )
    absent = _absent(res)
    if absent:
        lines.append(
            "Contenders of the setup without results: "
            + "; ".join(f"{what} (seeds {seeds})" for what, seeds in absent.items())
            + "."
        )
    elif not missing:
        lines.append("Every contender of the setup ran.")
    lines += [
        "",
        f"Total wall time of the measurements: {res.get('seconds', 0):.0f} s. "
        f"Machine: {res['machine']}. Load at the start: `{res.get('uptime_start')}`; at the end: "
        f"`{res.get('uptime_end')}`. Code: git {res.get('git')}.",
        f"Command: `physforecast bench beamvq{' --quick' if quick else ''}`",
    ]
    return "\n".join(lines)


def _setup_lines(res: dict[str, Any]) -> list[str]:
    s = res["setup"]
    lines = [
        "## Setup",
        "",
        f"{s['in_steps']} -> {s['out_steps']} frames, batch {s['batch_size']}, stride "
        f"{s['stride']}, lr {s['lr']}, seeds {s['seeds']}, one torch thread, CPU. Every "
        f"contender is a `physforecast train` run; `train.epochs={s['max_epochs']}` and "
        f"`train.patience={s['patience']}` (early stopping on the validation loss) for "
        "`supervised`, `beamvq` and `beamvq_identity`; the best validation checkpoint is scored "
        "on the test windows in physical units. BeamVQ runs with the method's defaults except "
        f"the sizes {json.dumps(s['beamvq'])}.",
        "",
        "| dataset | generator options | split | backbones (options) | metrics |",
        "|---|---|---|---|---|",
    ]
    for ds in s["datasets"]:
        bbs = "; ".join(f"{k} {json.dumps(v)}" for k, v in ds["backbones"].items())
        lines.append(
            f"| {ds['name']} | {json.dumps(ds['options'])} | {ds['split']} | {bbs} | "
            f"{', '.join(ds['suite'])} |"
        )
    return lines + [""]


def _dataset_section(res: dict[str, Any], ds: dict[str, Any]) -> list[str]:
    name = ds["name"]
    metrics = _metric_names(res, name)
    if not metrics:
        return []
    lines = [
        f"## {name}: means over lead times (mean ± std over seeds)",
        "",
        "| backbone | contender | params | wall s | epochs (best) | "
        + " | ".join(metrics)
        + " | RMSE vs early-stopped | RMSE vs wall-matched |",
        "|---|---|---|---|---|" + "---|" * (len(metrics) + 2),
    ]
    for bb in ds["backbones"]:
        for kind, (_, label) in KINDS.items():
            runs = _select(res, dataset=name, backbone=bb, kind=kind, fraction=1.0)
            if not runs:
                continue
            params = runs[0]["params"]
            pb = runs[0]["params_backbone"]
            ptxt = f"{params}" if params == pb else f"{params} ({pb} backbone)"
            epochs = "; ".join(
                "/".join(f"{st['epochs']}({st['best_epoch']})" for st in r["stages"].values())
                for r in runs
            )
            cells = [_pm([_metric_of(r["metrics"], m) for r in runs]) for m in metrics]
            change = (
                ""
                if kind == "supervised"
                else _pct(_paired(res, name, bb, kind, "supervised", "rmse"))
            )
            wall = (
                ""
                if kind.startswith("supervised")
                else _pct(_paired(res, name, bb, kind, "supervised_wall", "rmse"))
            )
            lines.append(
                f"| {bb} | {label} | {ptxt} | {_pm([r['seconds'] for r in runs], 3)} | {epochs} | "
                + " | ".join(cells)
                + f" | {change} | {wall} |"
            )
            if kind.startswith("beamvq"):
                for part, plabel in (
                    ("top1", "top-1 of the same model"),
                    ("base", "its backbone alone"),
                ):
                    cells = [_pm([_metric_of(r.get(part, {}), m) for r in runs]) for m in metrics]
                    lines.append(
                        f"| {bb} | ({label}: {plabel}) | | | | " + " | ".join(cells) + " | | |"
                    )
    first = _select(res, dataset=name, kind="supervised", fraction=1.0)[:1]
    truth = [_metric_of(first[0]["metrics"], f"{m}_truth") if first else None for m in metrics]
    if any(t is not None for t in truth):
        lines.append(
            "| | truth (its reference-free metrics) | | | | "
            + " | ".join("" if t is None else _fmt(t) for t in truth)
            + " | | |"
        )
    lines += ["", f"### {name}: RMSE per lead time (mean over seeds)", ""]
    leads = res["setup"]["out_steps"]
    lines += [
        "| backbone | contender | " + " | ".join(str(i + 1) for i in range(leads)) + " |",
        "|---|---|" + "---|" * leads,
    ]
    for bb in ds["backbones"]:
        for kind, (_, label) in KINDS.items():
            runs = _select(res, dataset=name, backbone=bb, kind=kind, fraction=1.0)
            if runs:
                cols = [
                    _fmt(_stat([r["metrics"]["rmse"]["lead"][i] for r in runs])[0])
                    for i in range(leads)
                ]
                lines.append(f"| {bb} | {label} | " + " | ".join(cols) + " |")
    lines += _evaluate_lines(res, name, ds)
    return lines + [""]


def _evaluate_lines(res: dict[str, Any], name: str, ds: dict[str, Any]) -> list[str]:
    """BeamVQ's own evaluate report (mean RMSE over leads per forecast kind) and top-1 check."""
    lines = []
    for bb in ds["backbones"]:
        runs = _select(res, dataset=name, backbone=bb, kind="beamvq", fraction=1.0)
        reports = [r.get("evaluate") or {} for r in runs]
        kinds = [k for k in (reports[0] if reports else {}) if isinstance(reports[0][k], dict)]
        kinds = [k for k in kinds if "rmse" in reports[0][k]]
        if not kinds:
            continue
        if not lines:
            lines += [
                "",
                f"### {name}: BeamVQ's `evaluate` report (mean RMSE over leads, model's own "
                "metrics; mean ± std over seeds)",
                "",
                "| backbone | " + " | ".join(kinds) + " | " + " | ".join(SUMMARY) + " |",
                "|---|" + "---|" * (len(kinds) + len(SUMMARY)),
            ]
        cells = []
        for k in kinds:
            vals = []
            for rep in reports:
                v = rep.get(k, {}).get("rmse")
                vals.append(sum(v) / len(v) if v else None)
            cells.append(_pm(vals))
        for field_, scale in SUMMARY.values():
            if field_ is None:
                vals = [r.get("max_abs_beam_minus_top1") for r in runs]
                cells.append(", ".join(_fmt(d, 3) for d in vals))
                continue
            vals = []
            for rep in reports:
                v = (rep.get("summary") or {}).get(field_)
                v = v[0] if isinstance(v, list) and v else v
                vals.append(scale * v if isinstance(v, int | float) else None)
            cells.append(_pm(vals, 3))
        lines.append(f"| {bb} | " + " | ".join(cells) + " |")
    return lines


#: Columns of BeamVQ's evaluate summary on the page: label -> (summary field, scale);
#: gains are turned into RMSE changes in % (negative: better than top-1).
SUMMARY = {
    "best-of-K by truth vs top-1 (%)": ("diversity_gain", -100.0),
    "beam vs top-1 (%)": ("beam_gain", -100.0),
    "windows with beam = top-1": ("beam_equals_top1", 1.0),
    "max abs(beam - top-1)": (None, 1.0),
}


def _scarcity_section(res: dict[str, Any]) -> list[str]:
    s = res["setup"]
    ds = s["datasets"][0]["name"]
    bb = s["fraction_backbone"]
    rows = []
    for frac in sorted(s["fractions"]):
        sup = _select(res, dataset=ds, backbone=bb, kind="supervised", fraction=frac)
        if not sup:
            continue
        cells = [str(sup[0]["train_windows"]), _pm([_metric_of(r["metrics"], "rmse") for r in sup])]
        for kind in ("beamvq", "beamvq_unlabelled"):
            runs = _select(res, dataset=ds, backbone=bb, kind=kind, fraction=frac)
            gain = _paired(res, ds, bb, kind, "supervised", "rmse", frac)
            cells += [_pm([_metric_of(r["metrics"], "rmse") for r in runs]), _pct(gain)]
        seeds = sorted({r["seed"] for r in sup})
        rows.append(f"| {frac} | " + " | ".join(cells) + f" | {seeds} |")
    if not any("%" in row for row in rows):
        return ["", "## Data scarcity", "", "Not measured (needs `data.train_fraction`)."]
    return [
        "",
        f"## Data scarcity ({ds}, {bb}): RMSE by fraction of training trajectories",
        "",
        "`beamvq_unlabelled` is `beamvq.pseudo=unlabelled` (pseudo-labels for the trajectories "
        "left out of training); the default `beamvq` pseudo-labels longer rollouts (`extend`). "
        "Changes are per seed against the backbone alone of the same seed.",
        "",
        "| train_fraction | train windows | backbone alone | BeamVQ (default) | vs backbone | "
        "BeamVQ, pseudo=unlabelled | vs backbone | seeds |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]


def _ablation_section(res: dict[str, Any]) -> list[str]:
    abl = res["ablations"]
    if not abl:
        return ["", "## Inference-only ablations", "", "Not measured."]
    s = res["setup"]
    metrics = [m for m in abl[0]["metrics"] if not m.endswith("_truth")]
    lines = [
        "",
        f"## Inference-only ablations ({abl[0]['dataset']}, {s['ablate_backbone']}; the trained "
        "`beamvq` model of each seed, re-scored with one setting changed)",
        "",
        "| setting | value | " + " | ".join(metrics) + " | RMSE vs the trained setting |",
        "|---|---|" + "---|" * (len(metrics) + 1),
    ]
    trained = {
        r["seed"]: r
        for r in _select(
            res,
            dataset=abl[0]["dataset"],
            backbone=s["ablate_backbone"],
            kind="beamvq",
            fraction=1.0,
        )
    }
    for key in dict.fromkeys(r["key"] for r in abl):
        for value in dict.fromkeys(r["value"] for r in abl if r["key"] == key):
            rows = [r for r in abl if r["key"] == key and r["value"] == value]
            cells = [_pm([_metric_of(r["metrics"], m) for r in rows]) for m in metrics]
            rel = [
                _rel(
                    _metric_of(r["metrics"], "rmse"),
                    _metric_of(trained[r["seed"]]["metrics"], "rmse"),
                )
                for r in rows
                if r["seed"] in trained
            ]
            lines.append(f"| {key} | {value} | " + " | ".join(cells) + f" | {_pct(rel)} |")
    return lines


def _absent(res: dict[str, Any]) -> dict[str, list[int]]:
    """``{"dataset backbone kind fraction": [seeds]}`` of the setup's contenders not in ``res``."""
    s, keys = res["setup"], res["keys"]
    have = {_entry_id(r) for r in res["runs"]}
    out: dict[str, list[int]] = {}
    for seed in s["seeds"]:
        expected = []
        for ds in s["datasets"]:
            for bb in ds["backbones"]:
                kinds = ["supervised", "beamvq", "supervised_wall"]
                if bb in s["control_backbones"] and keys.get("beamvq.quantizer"):
                    kinds.append("beamvq_identity")
                expected += [(ds["name"], bb, k, 1.0) for k in kinds]
        if keys.get("data.train_fraction"):
            ds0, fb = s["datasets"][0]["name"], s["fraction_backbone"]
            for frac in s["fractions"]:
                if frac < 1.0:
                    kinds = ("supervised", "beamvq", "beamvq_unlabelled")
                    expected += [(ds0, fb, k, frac) for k in kinds]
        for ds, bb, kind, frac in expected:
            if (ds, bb, kind, frac, seed) not in have:
                out.setdefault(f"{ds} {bb} {kind} fraction {frac}", []).append(seed)
    return out


def _per_run_section(res: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Every run",
        "",
        "| dataset | backbone | contender | fraction | seed | RMSE | wall s | stages: epochs (best) "
        "| load | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["runs"]:
        stages = ", ".join(f"{k} {v['epochs']}({v['best_epoch']})" for k, v in r["stages"].items())
        load = r.get("uptime", "").split("load average:")[-1].strip()
        lines.append(
            f"| {r['dataset']} | {r['backbone']} | {r['kind']} | {r['fraction']} | {r['seed']} | "
            f"{_fmt(_metric_of(r['metrics'], 'rmse'))} | {r['seconds']:.0f} | {stages} | {load} | "
            f"{r.get('note', '')} |"
        )
    return lines


def run(quick: bool = False) -> str:
    """Run the benchmark and return the Markdown report (``physforecast bench beamvq``)."""
    return report(measure(QUICK if quick else FULL))


def main(argv: list[str] | None = None) -> int:
    """``python -m physforecast.bench.beamvq``: measure into a JSON file and write the page."""
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the smoke run")
    p.add_argument("--json", help="raw results file (reused and extended)")
    p.add_argument("--page", help="write the Markdown page here")
    p.add_argument("--only", help="comma-separated contender kinds to run")
    p.add_argument("--backbones", help="comma-separated backbones to run")
    p.add_argument("--seeds", help="comma-separated seeds to run")
    p.add_argument("--datasets", help="comma-separated datasets to run")
    p.add_argument("--fractions", help="comma-separated training fractions to run")
    p.add_argument("--merge", nargs="*", help="results files whose runs to add to --json")
    p.add_argument("--render", action="store_true", help="only render --json to --page")
    p.add_argument("--drop", help="comma-separated kinds whose saved results to measure again")
    args = p.parse_args(argv)
    if args.drop and args.json and Path(args.json).exists():
        drop = set(args.drop.split(","))
        res = json.loads(Path(args.json).read_text())
        res["runs"] = [r for r in res["runs"] if r["kind"] not in drop]
        if "beamvq" in drop:
            res["ablations"] = []
        Path(args.json).write_text(json.dumps(res, indent=1))
    if args.merge:
        res = json.loads(Path(args.json).read_text())
        have = {_entry_id(r) for r in res["runs"]}
        for other in args.merge:
            more = json.loads(Path(other).read_text())
            res["runs"] += [r for r in more["runs"] if _entry_id(r) not in have]
            have |= {_entry_id(r) for r in more["runs"]}
            seen = {(a["seed"], a["key"], a["value"]) for a in res["ablations"]}
            res["ablations"] += [
                a for a in more["ablations"] if (a["seed"], a["key"], a["value"]) not in seen
            ]
            res["seconds"] = max(res.get("seconds", 0), more.get("seconds", 0))
            res["uptime_end"] = more.get("uptime_end", res.get("uptime_end"))
            res["keys"] = more.get("keys", res["keys"])
        Path(args.json).write_text(json.dumps(res, indent=1))
    if args.render or args.merge:
        res = json.loads(Path(args.json).read_text())
    else:
        only = tuple(args.only.split(",")) if args.only else None
        res = measure(
            QUICK if args.quick else FULL,
            results=args.json,
            only=only,
            backbones=tuple(args.backbones.split(",")) if args.backbones else None,
            seeds=tuple(int(v) for v in args.seeds.split(",")) if args.seeds else None,
            datasets=tuple(args.datasets.split(",")) if args.datasets else None,
            fractions=tuple(float(v) for v in args.fractions.split(","))
            if args.fractions
            else None,
            log=lambda line: print(line, flush=True),
        )
    text = report(res)
    if args.page:
        _write_page(Path(args.page), text)
    else:
        print(text)
    return 0


BEGIN, END = "<!-- begin generated: physforecast.bench.beamvq -->", "<!-- end generated -->"


def _write_page(path: Path, text: str) -> None:
    """Write the report into ``path``; a page that has the markers keeps its other text."""
    from physforecast.atomic import atomic_write

    old = path.read_text() if path.exists() else ""
    if BEGIN in old and END in old and text.startswith("# "):
        text = text.split("\n", 1)[1].lstrip("\n")  # the page has its own title
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        new = head + block + rest.split(END, 1)[1]
    else:
        new = block + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(new))


if __name__ == "__main__":
    raise SystemExit(main())
