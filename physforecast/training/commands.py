"""``physforecast tune-lr``: the surge curve of a config, and the learning rate for a batch size.

Building the parser imports nothing heavy; the handler imports torch when it runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]


def _numbers(text: str, kind: type, flag: str) -> list:
    try:
        return [kind(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        from physforecast.errors import ConfigError

        raise ConfigError(
            f"{flag} {text!r} is not a comma-separated list of {kind.__name__}s"
        ) from None


def _cmd_tune_lr(args: argparse.Namespace) -> int:
    from physforecast.config import Config, apply_overrides, load_config

    from .tune_lr import format_tune_result, tune_lr

    cfg = load_config(args.config) if args.config else Config()
    overrides = list(args.set or [])
    for flag, key in (("dataset", "data.dataset"), ("backbone", "model.backbone")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = apply_overrides(cfg, overrides)
    out = args.out or f"runs/tune-lr-{Path(str(cfg.data.dataset)).stem}-{cfg.model.backbone}"
    result = tune_lr(
        cfg,
        _numbers(args.batch_sizes, int, "--batch-sizes"),
        _numbers(args.lrs, float, "--lrs") if args.lrs else None,
        examples=args.examples,
        seeds=args.seeds,
        law=args.law,
        batch_size=args.batch_size,
        out=out,
    )
    print(format_tune_result(result))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``tune-lr`` subcommand."""
    p = subparsers.add_parser(
        "tune-lr",
        help="short runs on a batch-size x learning-rate grid, the fitted surge law and the "
        "learning rate for your batch size",
        description="Train the config's backbone for an equal number of examples at every "
        "(batch size, learning rate) point on one process, fit the best learning rate per "
        "batch size with the surge (Adam) or SGD law, plot it and recommend a learning rate.",
    )
    p.add_argument("--config", help="YAML config file (its data, backbone and optimizer)")
    p.add_argument("--dataset", help="registered dataset name or a file path")
    p.add_argument("--backbone", help="backbone name")
    p.add_argument(
        "--batch-sizes",
        default="4,8,16,32,64",
        help="comma-separated batch sizes (default 4,8,16,32,64)",
    )
    p.add_argument(
        "--lrs",
        help="comma-separated learning rates (default: 7 from train.lr/10 to train.lr*10)",
    )
    p.add_argument(
        "--examples",
        type=int,
        help="training examples per run, equal at every batch size (default 32 x the largest)",
    )
    p.add_argument("--seeds", type=int, default=1, help="runs per grid point, averaged (default 1)")
    p.add_argument(
        "--law",
        choices=["auto", "adam", "sgd"],
        default="auto",
        help="law of the recommendation (auto: from train.optimizer)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        help="your batch size, for the recommended lr (default data.batch_size x train.accumulate)",
    )
    p.add_argument(
        "--out", help="output directory for lr_grid.json and surge.png (default runs/tune-lr-...)"
    )
    p.add_argument(
        "--set",
        nargs="+",
        action="extend",
        metavar="KEY=VALUE",
        help="dotted config overrides, e.g. data.options.size=32",
    )
    p.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    p.set_defaults(func=_cmd_tune_lr)
