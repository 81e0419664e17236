"""The ``physforecast`` command: a thin argparse layer over the Python API.

A user's mistake (an :class:`~physforecast.errors.PhysforecastError`, or the built-in
error a bad path or value raises) is printed as one ``physforecast: error: ...`` line,
exit status 2; ``--debug`` (or ``PHYSFORECAST_DEBUG=1``) shows the traceback instead.
Ctrl-C and SIGTERM stop a command cleanly (temporaries removed, locks released), exit
status 130 and 143. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import re
import sys
from pathlib import Path
from typing import Any

from physforecast.config import Config, apply_overrides, load_config
from physforecast.errors import ConfigError, PhysforecastError, check_options

__all__ = ["main", "build_parser"]

#: Modules that add subcommands. Each has ``register(subparsers)``, which adds its parsers
#: with ``set_defaults(func=handler)``; a handler imports what it needs when it runs, so
#: building the parser stays cheap.
COMMAND_MODULES: tuple[str, ...] = (
    "physforecast.federated.commands",
    "physforecast.inference.commands",
    "physforecast.training.commands",
)

#: Errors that name a user's mistake in their message: printed as one line.
USER_ERRORS: tuple[type[BaseException], ...] = (
    PhysforecastError,
    ValueError,
    KeyError,
    OSError,  # FileNotFoundError, FileExistsError, PermissionError, a full disk...
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

    if args.resume and args.out is not None and Path(args.out) != Path(args.resume):
        raise ConfigError(
            "--resume continues the run in its own directory; leave --out out "
            f"(or give --out {args.resume})"
        )
    cfg = _config_from_args(args)
    run_dir = train(cfg, resume=args.resume, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") == "0":  # once under torchrun
        print(f"run directory: {run_dir}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from physforecast.atomic import signals_as_exceptions
    from physforecast.run_dir import RunDir
    from physforecast.training.run import evaluate_run

    run = RunDir(args.run_dir).require()
    with signals_as_exceptions(), run.lock():  # not while a training writes it
        evaluate_run(args.run_dir)
    return 0


def _parse_options(items: list[str] | None, flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` strings as a dict, the values read as YAML."""
    import yaml

    options = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"{flag} {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            options[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"{flag} {item!r}: the value is not valid YAML") from None
    return options


def _forecast_input(args: argparse.Namespace, forecaster: Any) -> tuple[Any, str]:
    """The dataset to forecast from, opened with the run's data options where they apply
    (a rename, a reader's options) and ``--set``. A field of the file that is NaN
    everywhere does not matter unless the model needs it."""
    from physforecast.data.io import open_dataset
    from physforecast.registry import DATASETS

    data = forecaster.config.data
    source = args.input or str(data.dataset)
    trained_on_file = str(data.dataset) not in DATASETS
    options: dict[str, Any] = {}
    if source == str(data.dataset) or (trained_on_file and source not in DATASETS):
        options.update(data.options)  # the options the run's data was opened with
    options.update(_parse_options(args.set, "--set"))
    return open_dataset(source, options=options), source


def _nearest_time(ds: Any, text: str) -> tuple[int, bool]:
    """(index, exact) of the time nearest to ``text`` (a date, a time or a number)."""
    import numpy as np
    import pandas as pd
    import xarray as xr

    if "time" not in ds.indexes:
        raise ConfigError(
            f"--init {text}: the input has no time coordinate; give time indices "
            f"(0..{ds.sizes.get('time', 1) - 1})"
        )
    index = ds.indexes["time"]
    try:
        if isinstance(index, pd.DatetimeIndex | xr.CFTimeIndex):
            stamp = pd.Timestamp(text)
            if isinstance(index, xr.CFTimeIndex):
                first = index[0]
                stamp = type(first)(
                    stamp.year,
                    stamp.month,
                    stamp.day,
                    stamp.hour,
                    stamp.minute,
                    stamp.second,
                    calendar=first.calendar,
                )
            elif index.tz is None and stamp.tzinfo is not None:
                stamp = stamp.tz_convert(None)
            gaps = np.abs(np.asarray((index - stamp).total_seconds(), dtype=float))
            steps = np.abs(np.diff(np.asarray((index - index[0]).total_seconds(), dtype=float)))
        else:
            value = float(text)
            values = np.asarray(index, dtype=float)
            gaps, steps = np.abs(values - value), np.abs(np.diff(values))
    except (ValueError, TypeError, OverflowError):
        raise ConfigError(
            f"--init {text!r} is neither a time index nor a time such as {_show_time(index[0])}"
        ) from None
    i = int(np.argmin(gaps))
    step = float(np.median(steps)) if steps.size else 0.0
    if gaps[i] > max(step, 0.0) and (i == 0 or i == len(index) - 1):
        raise ConfigError(
            f"--init {text} is outside the input's times ({_show_time(index[0])} to "
            f"{_show_time(index[-1])})"
        )
    return i, bool(gaps[i] == 0)


def _show_time(value: Any) -> str:
    text = str(value)
    return text[:-9] if text.endswith(" 00:00:00") else text


def _init_indices(ds: Any, values: list[str] | None) -> list[int] | None:
    """``--init`` values as time indices: integers as given, dates and times the nearest
    (said on stderr when not exact)."""
    if not values:
        return None
    out = []
    for text in values:
        if re.fullmatch(r"-?\d+", text.strip()):
            out.append(int(text))
            continue
        i, exact = _nearest_time(ds, text)
        if not exact:
            print(
                f"--init {text}: using the nearest time, {_show_time(ds.indexes['time'][i])} "
                f"(time index {i})",
                file=sys.stderr,
            )
        out.append(i)
    return out


def _cmd_forecast(args: argparse.Namespace) -> int:
    import physforecast as pf
    from physforecast.atomic import signals_as_exceptions
    from physforecast.data.io import check_output_path, write_dataset
    from physforecast.run_dir import RunDir

    out = check_output_path(args.out)  # before any work
    forecaster = pf.load(args.run_dir, args.checkpoint)
    import torch

    from physforecast.threads import resolve_threads

    cfg = forecaster.config
    torch.set_num_threads(resolve_threads(cfg.train.threads if cfg is not None else None))
    keep = None
    if args.variables:
        keep = [v.strip() for v in args.variables.split(",") if v.strip()]
        check_options(f"the model of {args.run_dir}", keep, forecaster.variables, key="--variables")
    ds, _ = _forecast_input(args, forecaster)
    steps = args.steps if args.steps is not None else forecaster.out_steps
    if steps < 1:
        raise ConfigError(f"--steps must be >= 1; got {steps}")
    init = _init_indices(ds, args.init)
    members = getattr(args, "members", 1) or 1
    forecast = pf.rollout(
        forecaster, ds, steps, init=init, on_blowup=args.on_blowup, members=members
    )
    if keep is not None:
        forecast = forecast.drop_vars([v for v in forecaster.variables if v not in keep])
    with signals_as_exceptions():
        path = write_dataset(forecast, out)
    print(f"wrote {path}: " + ", ".join(f"{k}={v}" for k, v in forecast.sizes.items()))
    if args.plots:  # matplotlib and the plots: only when asked for
        from physforecast.metrics.verification import truth_for
        from physforecast.plots import save_forecast_plots

        has_truth = int(forecast["init_index"].max()) + 1 < ds.sizes["time"]
        truth = truth_for(forecast, ds) if has_truth else None
        written = save_forecast_plots(forecast, RunDir(args.run_dir).plots_dir, truth)
        print("plots: " + ", ".join(str(p) for p in written.values()))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from physforecast.registry import DATASETS, METHODS, METRICS

    if args.what == "backbones":
        from physforecast.backbone_table import backbone_table, format_backbone_table

        print(format_backbone_table(backbone_table(flops=args.flops)))
        if not args.flops:
            print(
                "\n(parameters with the default options, 10 frames in and out, 1 variable; "
                "FLOPs per sample: physforecast list backbones --flops)"
            )
    elif args.what == "datasets":
        print("registered datasets (give the name: --dataset ns2d):")
        for name in DATASETS.names():
            meta = DATASETS.entry(name).meta
            print(f"  {name:20s} {meta.get('kind', ''):10s} {meta.get('description', '')}")
        print("\nfiles (give a path: --dataset file.nc; the format is read from the content):")
        for kind, what in FILE_FORMATS:
            print(f"  {kind:20s} {what}")
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


#: The file formats ``--dataset PATH`` reads (physforecast.data.formats.open_any).
FILE_FORMATS: tuple[tuple[str, str], ...] = (
    ("netcdf", "CF netCDF-3 or netCDF-4 (.nc): dims found from CF attributes"),
    ("zarr", "CF zarr store (v2 or v3), every chunk checked at opening"),
    ("weatherbench", "WeatherBench 2 / ERA5 zarr: data.options.levels, split_levels"),
    ("pdebench", "PDEBench HDF5, one tensor or one group per seed"),
    ("the_well", "The Well HDF5 (t0_fields, t1_fields, ...)"),
)


def _cmd_generate(args: argparse.Namespace) -> int:
    from physforecast.atomic import signals_as_exceptions
    from physforecast.data.io import check_output_path, simulate, write_dataset
    from physforecast.registry import DATASETS

    out = check_output_path(args.out)  # before the simulation, not after it
    meta = DATASETS.entry(args.name).meta
    if meta.get("kind", "simulator") != "simulator":
        raise ConfigError(f"{args.name!r} is not a simulator; generate makes simulated data")
    with signals_as_exceptions():
        ds = simulate(args.name, _parse_options(args.set, "--set"))
        path = write_dataset(ds, out)
    print(f"wrote {path}: " + ", ".join(f"{k}={v}" for k, v in ds.sizes.items()))
    return 0


def _bench_names() -> list[str]:
    import physforecast.bench as bench

    return sorted(
        m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_")
    )


def _cmd_bench(args: argparse.Namespace) -> int:
    from physforecast.atomic import atomic_write_text

    names = _bench_names()
    if args.name == "all":
        chosen = names
        if args.only:
            chosen = [n.strip() for n in args.only.split(",") if n.strip()]
            check_options("bench all --only", chosen, names, key="--only")
        docs = Path(args.docs)
        for name in chosen:  # one after another: benches must not time each other
            print(f"bench {name}...", file=sys.stderr, flush=True)
            report = importlib.import_module(f"physforecast.bench.{name}").run(quick=args.quick)
            path = atomic_write_text(docs / f"benchmarks_{name}.md", report)
            print(f"wrote {path}", file=sys.stderr, flush=True)
        return 0
    if args.name not in names:
        raise ConfigError(
            f"unknown benchmark {args.name!r}; available: {', '.join(names)} (or all)"
        )
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
        prog="physforecast",
        description="Forecast physical space-time systems.",
        epilog="When something goes wrong: docs/troubleshooting.md (When things go wrong).",
    )
    debug_help = "show the traceback of an error (also: PHYSFORECAST_DEBUG=1)"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kw)

    p = add("train", help="train a backbone (the main job; no arguments: ns2d + fno)")
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
    p.add_argument("--out", help="run directory (must be empty or new, unless --overwrite)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete what --out holds first (default: refuse a directory that holds a run)",
    )
    p.add_argument(
        "--set",
        nargs="+",
        action="extend",
        metavar="KEY=VALUE",
        help="dotted config overrides, e.g. train.lr=3e-4 (repeat the flag or list several)",
    )
    p.set_defaults(func=_cmd_train)

    p = add("evaluate", help="rescore a run's best checkpoint on its test split")
    p.add_argument("run_dir")
    p.set_defaults(func=_cmd_evaluate)

    p = add("forecast", help="forecast from a dataset with a trained run (any horizon: rollout)")
    p.add_argument("run_dir", help="run directory written by physforecast train")
    p.add_argument(
        "--input",
        help="netCDF/zarr/HDF5 file (or dataset name) to start from; default: the run's "
        "dataset. A file is opened with the run's data.options (rename, reader options)",
    )
    p.add_argument(
        "--steps", type=int, help="lead times (default: the model's out_steps; more: rollout)"
    )
    p.add_argument("--out", required=True, help="output path ending in .nc or .zarr")
    p.add_argument(
        "--init",
        nargs="+",
        help="last input frame of each forecast: time indices, or dates and times such as "
        "1990-01-15 or 2020-01-01T06 (the nearest time is used, and said); default: the "
        "last frame",
    )
    p.add_argument(
        "--variables", help="comma-separated variables to write (default: all the model's)"
    )
    p.add_argument(
        "--set",
        nargs="+",
        action="extend",
        metavar="KEY=VALUE",
        help="options for opening --input, over the run's data.options "
        "(e.g. rename={lat: latitude})",
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
    p.add_argument(
        "--members",
        type=int,
        default=1,
        help="ensemble members of a stochastic model (stpad): a 'member' dim in the output",
    )
    p.set_defaults(func=_cmd_forecast)

    p = add("list", help="list backbones, datasets (simulators and file formats), methods, metrics")
    p.add_argument("what", choices=["backbones", "datasets", "methods", "metrics"])
    p.add_argument(
        "--flops",
        action="store_true",
        help="backbones: build each model and count its FLOPs per 64x64 sample (seconds)",
    )
    p.set_defaults(func=_cmd_list)

    p = add("generate", help="simulate a registered dataset and write it to .nc or .zarr")
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

    p = add("bench", help="run a benchmark and print its Markdown report")
    p.add_argument(
        "name",
        help="benchmark name (backbones, metrics, data, train, forecast, ...), or all: every "
        "benchmark, each report written to DOCS/benchmarks_<name>.md",
    )
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke version")
    p.add_argument("--report", help="also write the report to this file")
    p.add_argument("--docs", default="docs", help="bench all: where the pages go (docs)")
    p.add_argument("--only", help="bench all: a comma-separated subset of the benchmarks")
    p.set_defaults(func=_cmd_bench)

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def _message(err: BaseException) -> str:
    """One line for a user error (a KeyError's message is its first argument)."""
    if isinstance(err, KeyError) and err.args:
        text = str(err.args[0])
    elif isinstance(err, OSError) and err.filename and err.strerror:
        text = f"{err.strerror}: {err.filename}"
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())  # one line, whatever the message held


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``physforecast`` command."""
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False)) or os.environ.get(
        "PHYSFORECAST_DEBUG", ""
    ).strip() not in ("", "0", "false", "no")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (physforecast.atomic.Terminated)
        if debug:
            raise
        signum = getattr(err, "signum", 2)
        print(f"physforecast: {err or 'interrupted'}; stopped cleanly", file=sys.stderr)
        return 128 + int(signum)
    except USER_ERRORS as err:
        if debug:
            raise
        print(f"physforecast: error: {_message(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
