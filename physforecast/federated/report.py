"""The cost report: Markdown tables and a figure of where a round's time goes.

Both take several labelled runs (``{"unet-8 ckks": profile, ...}``) so that model sizes
and schemes sit side by side. The figure is a :class:`matplotlib.figure.Figure` built
without pyplot; save it with ``fig.savefig(path)``.
"""

from __future__ import annotations

from collections.abc import Mapping

from matplotlib.figure import Figure

from .profile import CATEGORIES, RunProfile

__all__ = ["profile_markdown", "profile_figure", "bottleneck_ranking", "human_bytes"]

_COLOURS = {
    "compute": "#4C72B0",
    "encrypt": "#C44E52",
    "decrypt": "#DD8452",
    "aggregate": "#8172B3",
    "serialise": "#937860",
    "ipc": "#55A868",
    "dropout": "#DA8BC3",
    "other": "#BBBBBB",
}


def human_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def bottleneck_ranking(profile: RunProfile) -> list[tuple[str, float]]:
    """Categories by mean share of the round time, largest first (``other`` included)."""
    wall = profile.mean_wall() or 1.0
    crit = profile.mean_critical()
    return sorted(((c, crit[c] / wall) for c in CATEGORIES if crit[c] > 0), key=lambda t: -t[1])


def profile_markdown(runs: Mapping[str, RunProfile]) -> str:
    """Markdown report: round-time split, bytes, WAN estimates and per-party costs."""
    lines = ["## Where a round's time goes (critical path, mean over rounds)", ""]
    head = ["run", "params (shared)", "round s", *CATEGORIES]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, prof in runs.items():
        wall = prof.mean_wall()
        crit = prof.mean_critical()
        cells = [
            f"{crit[c]:.3f} ({100 * crit[c] / wall:.0f}%)" if wall else "-" for c in CATEGORIES
        ]
        lines.append(
            f"| {label} | {prof.model['n_params']} ({prof.model['n_shared']}) | {wall:.3f} | "
            + " | ".join(cells)
            + " |"
        )
    lines += ["", "## Bytes per party per round and key sizes", ""]
    head = [
        "run",
        "plaintext",
        "update on wire",
        "expansion",
        "aggregate down",
        "party key",
        "coordinator key",
        "keygen s",
    ]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, prof in runs.items():
        parties = [p for r in prof.rounds for p in r.parties.values()]
        if not parties:
            continue
        n = len(parties)
        plain = sum(p.plain_bytes for p in parties) / n
        up = sum(p.bytes_up for p in parties) / n
        down = sum(p.bytes_down for p in parties) / n
        s = prof.setup
        lines.append(
            f"| {label} | {human_bytes(plain)} | {human_bytes(up)} | {up / plain:.1f}x | "
            f"{human_bytes(down)} | {human_bytes(s.get('party_key_bytes', 0))} | "
            f"{human_bytes(s.get('coordinator_key_bytes', 0))} | {s.get('keygen_s', 0.0):.3f} |"
        )
    nets = list(next(iter(runs.values())).networks) if runs else []
    if nets:
        lines += ["", "## Round time: measured on loopback vs modelled networks", ""]
        head = ["run", "loopback s", *[f"{n} s" for n in nets]]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for label, prof in runs.items():
            wan = prof.mean_wan()
            lines.append(
                f"| {label} | {prof.mean_wall():.3f} | "
                + " | ".join(f"{wan[n]:.3f}" for n in nets)
                + " |"
            )
        lines.append("")
        lines.append(
            "Networks: "
            + "; ".join(
                f"{n}: {m['bandwidth_bps'] / 1e6:g} Mbit/s, RTT {m['rtt_s'] * 1e3:g} ms"
                for n, m in next(iter(runs.values())).networks.items()
            )
            + ". The estimate replaces the measured IPC on the critical path by the modelled "
            "transfer of the same messages (see physforecast.federated.network)."
        )
    lines += ["", "## Per party (mean per round, seconds)", ""]
    head = ["run", "party", "compute", "encrypt", "decrypt", "serialise", "ipc up", "ipc down"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, prof in runs.items():
        names = sorted({n for r in prof.rounds for n in r.parties})
        for name in names:
            rows = [r.parties[name] for r in prof.rounds if name in r.parties]
            k = len(rows)
            vals = [
                sum(getattr(p, f) for p in rows) / k
                for f in ("compute", "encrypt", "decrypt", "serialise", "ipc_up", "ipc_down")
            ]
            lines.append(f"| {label} | {name} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")
    dropped = {label: [d for r in prof.rounds for d in r.dropped] for label, prof in runs.items()}
    if any(dropped.values()):
        lines += ["", "Dropouts: " + "; ".join(f"{k}: {v}" for k, v in dropped.items() if v)]
    return "\n".join(lines) + "\n"


def profile_figure(runs: Mapping[str, RunProfile]) -> Figure:
    """Stacked bars of the mean round-time split per run, and loopback vs WAN round times."""
    labels = list(runs)
    fig = Figure(figsize=(11, 0.6 * len(labels) + 2.4), layout="constrained")
    ax, ax2 = fig.subplots(1, 2, width_ratios=[3, 2])
    for i, label in enumerate(labels):
        crit = runs[label].mean_critical()
        left = 0.0
        for c in CATEGORIES:
            if crit[c] > 0:
                ax.barh(i, crit[c], left=left, color=_COLOURS[c], label=c if i == 0 else None)
                left += crit[c]
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("seconds per round (critical path, loopback)")
    handles, names = [], []
    for c in CATEGORIES:
        handles.append(ax.barh([0], [0], color=_COLOURS[c])[0])
        names.append(c)
    ax.legend(handles, names, loc="lower right", fontsize=8, ncols=2)
    nets = list(runs[labels[0]].networks) if labels else []
    width = 0.8 / (len(nets) + 1)
    for j, key in enumerate(["loopback", *nets]):
        vals = [
            runs[lbl].mean_wall() if key == "loopback" else runs[lbl].mean_wan()[key]
            for lbl in labels
        ]
        ax2.barh([i + j * width for i in range(len(labels))], vals, height=width, label=key)
    ax2.set_yticks([i + width * len(nets) / 2 for i in range(len(labels))], labels)
    ax2.invert_yaxis()
    ax2.set_xscale("log")
    ax2.set_xlabel("seconds per round")
    ax2.legend(fontsize=8)
    ax2.set_title("measured vs modelled networks", fontsize=10)
    ax.set_title("where the time goes", fontsize=10)
    return fig
