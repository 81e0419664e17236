"""The ``physforecast`` command: a thin argparse layer over the Python API."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from pathlib import Path

from physforecast.config import Config, apply_overrides, load_config
from physforecast.errors import ConfigError, PhysforecastError

__all__ = ["main", "build_parser"]

#: Modules that add subcommands. Each has ``register(subparsers)``, which adds its parsers
#: with ``set_defaults(func=handler)``; a handler imports what it needs when it runs, so
#: building the parser stays cheap.
COMMAND_MODULES: tuple[str, ...] = (
    "physforecast.federated.commands",
    "physforecast.inference.commands",
)


def _config_from_args(args: argparse.Namespace) -> Config:
    if args.resume:
        from physforecast.run_dir import RunDir

        # continue the saved run; flags given now (--epochs, --set) change it
        cfg = RunDir(args.resume).read_config()
    else:
        cfg = load_config(args.config) if args.config else Config()
    overrides = list(args.set or [])
    for flag, key in (
        ("dataset", "data.dataset"),
        ("variables", "data.variables"),
        ("backbone", "model.backbone"),
        ("epochs", "train.epochs"),
        ("method", "method"),
        ("out", "out"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = apply_overrides(cfg, overrides)
    if args.resume:
        cfg.out = str(args.resume)
    elif args.out is None and not args.config:
        suffix = "" if cfg.method == Config().method else f"-{cfg.method}"
        cfg.out = f"runs/{Path(str(cfg.data.dataset)).stem}-{cfg.model.backbone}{suffix}"
    return cfg


def _cmd_train(args: argparse.Namespace) -> int:
    from physforecast.training.run import train

    cfg = _config_from_args(args)
    run_dir = train(cfg, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":  # once under torchrun
        print(f"run directory: {run_dir}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from physforecast.training.run import evaluate_run

    evaluate_run(args.run_dir)
    return 0


def _cmd_forecast(args: argparse.Namespace) -> int:
    import physforecast as pf
    from physforecast.data.io import open_dataset, write_dataset
    from physforecast.forecast.rollout import RolloutBlowupError
    from physforecast.metrics.verification import truth_for
    from physforecast.plots import save_forecast_plots
    from physforecast.run_dir import RunDir

    forecaster = pf.load(args.run_dir, args.checkpoint)
    ds = open_dataset(args.input)
    steps = args.steps if args.steps is not None else forecaster.out_steps
    init = None
    if args.init:
        init = [int(v) if v.lstrip("-").isdigit() else v for v in args.init]
    try:
        forecast = pf.rollout(forecaster, ds, steps, init=init, on_blowup=args.on_blowup)
    except RolloutBlowupError as err:
        print(f"physforecast: error: {err}", file=sys.stderr)
        return 2
    path = write_dataset(forecast, args.out)
    print(f"wrote {path}: " + ", ".join(f"{k}={v}" for k, v in forecast.sizes.items()))
    if args.plots:
        has_truth = int(forecast["init_index"].max()) + 1 < ds.sizes["time"]
        truth = truth_for(forecast, ds) if has_truth else None
        written = save_forecast_plots(forecast, RunDir(args.run_dir).plots_dir, truth)
        print("plots: " + ", ".join(str(p) for p in written.values()))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from physforecast.registry import DATASETS, METHODS, METRICS

    if args.what == "backbones":
        from physforecast.backbone_table import backbone_table, format_backbone_table

        print(format_backbone_table(backbone_table()))
    elif args.what == "datasets":
        for name in DATASETS.names():
            meta = DATASETS.entry(name).meta
            print(f"{name:20s} {meta.get('kind', ''):10s} {meta.get('description', '')}")
    elif args.what == "methods":
        for name in METHODS.names():
            meta = METHODS.entry(name).meta
            section = f"--set {name}.<key>=..." if meta.get("config") else ""
            print(f"{name:14s} {meta.get('description', ''):64s} {section}")
    else:
        for name in METRICS.names():
            meta = METRICS.entry(name).meta
            print(f"{name:28s} {meta.get('kind', '')}")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    import yaml

    from physforecast.data.io import write_dataset
    from physforecast.registry import DATASETS

    options = {}
    for item in args.set or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        options[key.strip()] = yaml.safe_load(raw)
    ds = DATASETS.create(args.name, **options)
    path = write_dataset(ds, args.out)
    print(f"wrote {path}: " + ", ".join(f"{k}={v}" for k, v in ds.sizes.items()))
    return 0


def _bench_names() -> list[str]:
    import physforecast.bench as bench

    return sorted(
        m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_")
    )


def _cmd_bench(args: argparse.Namespace) -> int:
    names = _bench_names()
    if args.name not in names:
        raise ConfigError(f"unknown benchmark {args.name!r}; available: {', '.join(names)}")
    module = importlib.import_module(f"physforecast.bench.{args.name}")
    report = module.run(quick=args.quick)
    print(report)
    if args.report:
        Path(args.report).write_text(report + "\n")
    return 0


class _MethodNames:
    """The registered methods as argparse ``choices``, looked up only when a ``--method`` is
    checked or ``train --help`` shown (so building the parser imports no method)."""

    def _names(self) -> list[str]:
        from physforecast.registry import METHODS

        return METHODS.names()

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self):
        return iter(self._names())


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``physforecast`` command."""
    parser = argparse.ArgumentParser(
        prog="physforecast", description="Forecast physical space-time systems."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a backbone (the main job; no arguments: ns2d + fno)")
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--dataset", help="registered dataset name or a file path")
    p.add_argument("--variables", help="comma-separated variables to forecast")
    p.add_argument("--backbone", help="backbone name (physforecast list backbones)")
    p.add_argument(
        "--method",
        choices=_MethodNames(),
        metavar="METHOD",
        help="training method (physforecast list methods; default supervised)",
    )
    p.add_argument("--epochs", type=int, help="number of epochs")
    p.add_argument("--out", help="run directory")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument(
        "--set",
        nargs="+",
        action="extend",
        metavar="KEY=VALUE",
        help="dotted config overrides, e.g. train.lr=3e-4 (repeat the flag or list several)",
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="rescore a run's best checkpoint on its test split")
    p.add_argument("run_dir")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "forecast", help="forecast from a dataset with a trained run (any horizon: rollout)"
    )
    p.add_argument("run_dir", help="run directory written by physforecast train")
    p.add_argument(
        "--input", required=True, help="netCDF/zarr/HDF5 file (or dataset name) to start from"
    )
    p.add_argument(
        "--steps", type=int, help="lead times (default: the model's out_steps; more: rollout)"
    )
    p.add_argument("--out", required=True, help="output path ending in .nc or .zarr")
    p.add_argument(
        "--init",
        nargs="+",
        help="last input frame of each forecast: time indices or times such as "
        "2020-01-01T06 (default: the last frame)",
    )
    p.add_argument("--checkpoint", default="best", help="checkpoint name (best or last)")
    p.add_argument(
        "--on-blowup",
        choices=["nan", "raise"],
        default="nan",
        help="when values leave the training range: NaN the rest (warn) or stop",
    )
    p.add_argument(
        "--plots", action="store_true", help="also write spectra, panels and a GIF to RUN_DIR/plots"
    )
    p.set_defaults(func=_cmd_forecast)

    p = sub.add_parser("list", help="list backbones, datasets, methods or metrics")
    p.add_argument("what", choices=["backbones", "datasets", "methods", "metrics"])
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser(
        "generate", help="simulate a registered dataset and write it to .nc or .zarr"
    )
    p.add_argument("name")
    p.add_argument("--out", required=True, help="output path ending in .nc or .zarr")
    p.add_argument(
        "--set",
        nargs="+",
        action="extend",
        metavar="KEY=VALUE",
        help="simulator options, e.g. n_trajectories=8 (repeat the flag or list several)",
    )
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("bench", help="run a benchmark and print its Markdown report")
    p.add_argument("name", help="benchmark name (backbones, metrics, data, beamvq, ...)")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke version")
    p.add_argument("--report", help="also write the report to this file")
    p.set_defaults(func=_cmd_bench)

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``physforecast`` command."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (PhysforecastError, KeyError, ValueError, FileNotFoundError) as err:
        print(f"physforecast: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
