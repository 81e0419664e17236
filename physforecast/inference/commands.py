"""``physforecast distill`` and ``physforecast serve``.

Building the parsers imports nothing heavy; each handler imports torch, xarray or FastAPI
when it runs.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["register"]


def _cmd_distill(args: argparse.Namespace) -> int:
    from .accuracy import format_comparison
    from .runs import distill_run

    try:
        out, rows = distill_run(
            args.run_dir,
            out=args.out,
            n_students=args.students,
            depth=args.depth,
            width=args.width,
            kernel_size=args.kernel_size,
            stack={"auto": None, "latent": True, "output": False}[args.target],
            latent_weight=args.latent_weight,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            device=args.device,
            overwrite=args.overwrite,
        )
    except FileExistsError as err:
        print(f"physforecast: error: {err}", file=sys.stderr)
        return 2
    print(f"students run: {out}")
    print("test split, physical units:")
    print(format_comparison(rows))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from .server import ServeConfig, serve

    config = ServeConfig(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        queue=args.queue,
        latency_budget_ms=args.latency_budget_ms,
        n_active=args.n_active,
        min_active=args.min_active,
    )
    serve(
        args.run_dir,
        host=args.host,
        port=args.port,
        config=config,
        device=args.device,
        log_level=args.log_level,
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``distill`` and ``serve`` subcommands."""
    p = subparsers.add_parser(
        "distill",
        help="distil a trained run into parallel shallow students (Academus) for fast inference",
    )
    p.add_argument("run_dir", help="the teacher's run directory (physforecast train)")
    p.add_argument("--students", type=int, default=4, help="number of students K (default 4)")
    p.add_argument("--depth", type=int, default=2, help="layers per student (default 2)")
    p.add_argument("--width", type=int, default=32, help="channels of a student's hidden layers")
    p.add_argument("--kernel-size", type=int, default=3, help="odd convolution kernel size")
    p.add_argument(
        "--target",
        choices=["output", "latent", "auto"],
        default="output",
        help="what the students' sum stands for: the teacher's forecast (default), or its "
        "latent, decoded by the teacher (stacking); auto: the latent when the backbone "
        "exposes one",
    )
    p.add_argument(
        "--latent-weight",
        type=float,
        default=0.01,
        help="with stacking: weight of matching the teacher's latent (default 0.01)",
    )
    p.add_argument("--epochs", type=int, default=5, help="training epochs per student")
    p.add_argument("--lr", type=float, default=3e-3, help="learning rate")
    p.add_argument("--batch-size", type=int, help="windows per step (default: the run's)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--out", help="the students run directory (default RUN_DIR-studentsK)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=_cmd_distill)

    p = subparsers.add_parser(
        "serve",
        help="serve forecasts over HTTP (POST /forecast, GET /health, GET /metrics)",
    )
    p.add_argument("run_dir", help="a run directory (its students when distilled)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-batch", type=int, default=16, help="most windows per model call")
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long a request waits for others to share its model call",
    )
    p.add_argument(
        "--queue", type=int, default=64, help="most requests in flight; more are answered 503"
    )
    p.add_argument(
        "--latency-budget-ms",
        type=float,
        help="students only: drop the last-added students while the backlog would exceed this",
    )
    p.add_argument(
        "--min-active",
        type=int,
        default=1,
        help="with --latency-budget-ms: never fewer students than this (default 1)",
    )
    p.add_argument("--n-active", type=int, help="students only: a fixed number of students")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--log-level", default="info", help="uvicorn log level")
    p.set_defaults(func=_cmd_serve)
