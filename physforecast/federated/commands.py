"""The ``physforecast federated`` subcommand."""

from __future__ import annotations

import argparse
import json

__all__ = ["register"]


def _pairs(items: list[str] | None) -> dict:
    import yaml

    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"{item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(raw)
    return out


def _files(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _cmd_federated(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from .coordinator import FederatedRoundError
    from .runner import FederatedConfig, run_federated

    parties = _files(args.parties)
    targets = _files(args.target)
    options = {"hidden": args.hidden, "padding_mode": "circular", **_pairs(args.model_set)}
    config = FederatedConfig(
        backbone=args.backbone,
        backbone_options=options,
        sharing=args.sharing,
        scheme=args.secure,
        scheme_options=_pairs(args.secure_set),
        rounds=args.rounds,
        local_steps=args.local_steps,
        finetune_steps=args.finetune_steps,
        lr=args.lr,
        in_steps=args.in_steps,
        out_steps=args.out_steps,
        seed=args.seed,
        round_timeout=args.round_timeout,
        on_dropout=args.on_dropout,
    )
    out = Path(args.out or f"runs/federated-{config.sharing}-{config.scheme}")
    try:
        result = run_federated(
            parties, targets, config, out=out, processes=not args.in_process, progress=True
        )
    except FederatedRoundError as err:
        print(f"physforecast: error: {err}", file=sys.stderr)
        return 2
    width = max(len(n) for n in result.parties) if result.parties else 5
    print(f"{'party':{width}s}  role    windows  test RMSE")
    for name, r in result.parties.items():
        print(f"{name:{width}s}  {r['role']:6s}  {r['n_train']:7d}  {r['test_rmse']:.5g}")
    for name, why in result.dropped.items():
        print(f"{name}: dropped ({why})")
    prof = result.profile
    print(
        f"mean round {prof.mean_wall():.3f} s on loopback; "
        + ", ".join(f"{k} {v:.3f} s" for k, v in prof.mean_wan().items())
    )
    print(f"run directory: {out}")
    if args.json:
        print(json.dumps({n: r["test_rmse"] for n, r in result.parties.items()}))
    return 0


def register(subparsers) -> None:
    """Add ``physforecast federated`` to the command's subparsers."""
    p = subparsers.add_parser(
        "federated",
        help="federated transfer learning across party files with secure aggregation",
        description=(
            "Each file is one party (a separate process holding only that file). Sources "
            "and targets share the backbone's encoder trunk through encrypted aggregation; "
            "targets fine-tune at the end. Writes OUT/parties/<name>/scorecard.json per "
            "party and OUT/profile.{json,md} + OUT/plots/profile.png."
        ),
    )
    p.add_argument("--parties", required=True, help="comma-separated dataset files, one per party")
    p.add_argument("--target", required=True, help="the data-poor target file(s), comma-separated")
    p.add_argument(
        "--secure",
        default="ckks",
        help="aggregation scheme: ckks (default), paillier, masking or none (insecure)",
    )
    p.add_argument(
        "--sharing",
        default="transfer",
        help="transfer (encoder trunk shared, heads local; default) or fedavg (everything)",
    )
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--local-steps", type=int, default=10, help="training steps per round")
    p.add_argument("--finetune-steps", type=int, default=30, help="target fine-tuning steps")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--backbone", default="unet")
    p.add_argument("--hidden", type=int, default=8, help="backbone width")
    p.add_argument("--in-steps", type=int, default=2)
    p.add_argument("--out-steps", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--round-timeout", type=float, default=120.0, help="seconds per party per round")
    p.add_argument(
        "--on-dropout",
        choices=["fail", "proceed"],
        default="fail",
        help="stop at a party that dies or hangs (default), or go on without it",
    )
    p.add_argument("--model-set", nargs="*", metavar="KEY=VALUE", help="more backbone options")
    p.add_argument(
        "--secure-set", nargs="*", metavar="KEY=VALUE", help="scheme options, e.g. key_bits=3072"
    )
    p.add_argument("--out", help="run directory (default runs/federated-<sharing>-<scheme>)")
    p.add_argument(
        "--in-process", action="store_true", help="parties as threads instead of processes"
    )
    p.add_argument("--json", action="store_true", help="also print the RMSEs as JSON")
    p.set_defaults(func=_cmd_federated)
