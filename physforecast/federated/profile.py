"""The cost profiler: where a federated round's time goes, and how many bytes it moves.

Every message carries its sender's ``sent_at`` and the receiver notes ``received_at`` on
one system-wide clock, and every party reports how long it spent computing, encrypting,
serialising and decrypting. From these the coordinator builds, per round:

- **the critical path** (:attr:`RoundProfile.critical`): the round's wall time, measured
  by the coordinator from its first ``round`` message to the last ``ack``, cut into
  consecutive pieces. Phase A ends when the last update used arrives: it follows the
  party whose update came last (the coordinator's fan-out to it, its ``round`` message
  in flight, its compute / encrypt / serialise, its update in flight). Phase B is the
  coordinator's deserialisation, encrypted aggregation and serialisation. Phase C follows
  the party whose ``ack`` came last (fan-out, aggregate in flight, its deserialisation,
  decryption and weight update, the ack in flight). The categories are:

  ============  ====================================================================
  compute       local training; applying the aggregate and saving ``global.pt``
  encrypt       encryption of the update (zero for ``none``)
  decrypt       decryption of the aggregate
  aggregate     adding ciphertexts at the coordinator
  serialise     ciphertexts to bytes and back (parties and coordinator)
  ipc           messages in flight: framing, copies, the socket, the coordinator's
                sequential fan-out
  dropout       waiting for a party that then dropped out (timeout or closed socket)
  other         what no timer covered (the gaps between timers)
  ============  ====================================================================

  The pieces add up to the wall time by construction; ``other`` says how much the
  timers missed.
- **per party** (:attr:`RoundProfile.parties`): its own compute, encrypt, serialise,
  decrypt, IPC up and down, and bytes up and down next to the plaintext size
  (``4`` bytes per float32 value) and the expansion ratio.
- **a WAN estimate** (:attr:`RoundProfile.wan`) per network model (see
  :mod:`~physforecast.federated.network`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .network import NetworkModel

__all__ = [
    "CATEGORIES",
    "PartyTrace",
    "RoundTrace",
    "PartyRound",
    "RoundProfile",
    "RunProfile",
    "profile_round",
]

CATEGORIES = ("compute", "encrypt", "decrypt", "aggregate", "serialise", "ipc", "dropout", "other")


@dataclass
class PartyTrace:
    """Raw timestamps and sizes of one party in one round (coordinator's view)."""

    trigger: str = "round"  # "round" or "reupload": what started the update that was used
    trigger_sent_at: float = 0.0
    trigger_received_at: float = 0.0
    trigger_bytes: int = 0
    round_bytes: int = 0
    update_sent_at: float = 0.0
    update_received_at: float = 0.0
    update_bytes: int = 0
    uploads: int = 0
    plain_bytes: int = 0
    up_timing: dict[str, float] = field(default_factory=dict)
    aggregate_sent_at: float = 0.0
    aggregate_received_at: float = 0.0
    aggregate_bytes: int = 0
    ack_sent_at: float = 0.0
    ack_received_at: float = 0.0
    ack_bytes: int = 0
    down_timing: dict[str, float] = field(default_factory=dict)


@dataclass
class RoundTrace:
    """Raw timeline of one round, recorded by the coordinator."""

    round: int
    start: float
    all_updates_at: float = 0.0
    aggregated_at: float = 0.0
    end: float = 0.0
    deserialise_s: float = 0.0
    aggregate_s: float = 0.0
    serialise_s: float = 0.0
    parties: dict[str, PartyTrace] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)


@dataclass
class PartyRound:
    """One party's costs in one round."""

    compute: float
    encrypt: float
    decrypt: float
    serialise: float
    ipc_up: float
    ipc_down: float
    bytes_up: int
    bytes_down: int
    plain_bytes: int

    @property
    def expansion(self) -> float:
        """Bytes of its (last) update on the wire over the plaintext float32 size."""
        return self.bytes_up / self.plain_bytes if self.plain_bytes else float("nan")


@dataclass
class RoundProfile:
    """The cost profile of one round.

    Attributes
    ----------
    round : int
        Round number (1-based).
    wall_s : float
        Measured by the coordinator: first ``round`` sent to last ``ack`` received.
    critical : dict
        Seconds per category along the critical path; sums to ``wall_s``.
    parties : dict
        :class:`PartyRound` per party that completed the round.
    wan : dict
        Estimated wall time per network model name.
    dropped : list of str
        Parties that dropped out in this round.
    """

    round: int
    wall_s: float
    critical: dict[str, float]
    parties: dict[str, PartyRound]
    wan: dict[str, float]
    dropped: list[str] = field(default_factory=list)

    @property
    def accounted_s(self) -> float:
        """Seconds covered by named categories (all but ``other``)."""
        return sum(v for k, v in self.critical.items() if k != "other")

    @property
    def bytes_on_wire(self) -> int:
        """All bytes of the round, both directions."""
        return sum(p.bytes_up + p.bytes_down for p in self.parties.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        out = asdict(self)
        for name, p in self.parties.items():
            out["parties"][name]["expansion"] = p.expansion
        out["accounted_s"] = self.accounted_s
        out["bytes_on_wire"] = self.bytes_on_wire
        return out


@dataclass
class RunProfile:
    """Every round of a run, plus its setup costs and what was measured.

    Attributes
    ----------
    scheme : dict
        The scheme's :meth:`~physforecast.federated.secure.SecureScheme.describe`.
    model : dict
        Backbone, parameter counts (total and shared), sharing plan.
    setup : dict
        Key generation time and key / context sizes in bytes.
    rounds : list of RoundProfile
    networks : dict
        The network models used for the WAN estimates.
    """

    scheme: dict[str, Any]
    model: dict[str, Any]
    setup: dict[str, Any]
    rounds: list[RoundProfile] = field(default_factory=list)
    networks: dict[str, dict] = field(default_factory=dict)

    def mean_critical(self) -> dict[str, float]:
        """Mean seconds per category over rounds."""
        n = max(len(self.rounds), 1)
        return {c: sum(r.critical.get(c, 0.0) for r in self.rounds) / n for c in CATEGORIES}

    def mean_wall(self) -> float:
        """Mean measured round time."""
        return sum(r.wall_s for r in self.rounds) / max(len(self.rounds), 1)

    def mean_wan(self) -> dict[str, float]:
        """Mean estimated round time per network."""
        n = max(len(self.rounds), 1)
        return {k: sum(r.wan[k] for r in self.rounds) / n for k in self.networks}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "scheme": self.scheme,
            "model": self.model,
            "setup": self.setup,
            "networks": self.networks,
            "rounds": [r.to_dict() for r in self.rounds],
            "mean_wall_s": self.mean_wall(),
            "mean_critical_s": self.mean_critical(),
            "mean_wan_s": self.mean_wan(),
        }


def _take(pieces: dict[str, float], cat: str, seconds: float) -> None:
    pieces[cat] = pieces.get(cat, 0.0) + seconds


def profile_round(trace: RoundTrace, networks: Mapping[str, NetworkModel]) -> RoundProfile:
    """Turn the coordinator's :class:`RoundTrace` into a :class:`RoundProfile`."""
    done = {n: p for n, p in trace.parties.items() if p.ack_received_at > 0}
    used = {n: p for n, p in trace.parties.items() if p.update_received_at > 0}
    crit = {c: 0.0 for c in CATEGORIES}
    ipc = 0.0
    # phase A: from the first round message to the last update used
    last = max(used.values(), key=lambda p: p.update_received_at)
    lead = last.trigger_sent_at - trace.start
    _take(crit, "ipc" if last.trigger == "round" else "dropout", lead)
    ipc += lead if last.trigger == "round" else 0.0
    down = last.trigger_received_at - last.trigger_sent_at
    up = trace.all_updates_at - last.update_sent_at
    work = last.update_sent_at - last.trigger_received_at
    timed = 0.0
    for cat in ("compute", "encrypt", "serialise"):
        s = float(last.up_timing.get(cat, 0.0))
        _take(crit, cat, s)
        timed += s
    _take(crit, "other", work - timed)
    _take(crit, "ipc", down + up)
    ipc += down + up
    # phase B: the coordinator
    _take(crit, "serialise", trace.deserialise_s + trace.serialise_s)
    _take(crit, "aggregate", trace.aggregate_s)
    _take(
        crit,
        "other",
        (trace.aggregated_at - trace.all_updates_at)
        - trace.deserialise_s
        - trace.aggregate_s
        - trace.serialise_s,
    )
    # phase C: from the aggregate to the last ack
    if done:
        tail = max(done.values(), key=lambda p: p.ack_received_at)
        fan = tail.aggregate_sent_at - trace.aggregated_at
        down = tail.aggregate_received_at - tail.aggregate_sent_at
        up = trace.end - tail.ack_sent_at
        work = tail.ack_sent_at - tail.aggregate_received_at
        timed = 0.0
        for cat in ("serialise", "decrypt", "compute"):
            s = float(tail.down_timing.get(cat, 0.0))
            _take(crit, cat, s)
            timed += s
        _take(crit, "other", work - timed)
        _take(crit, "ipc", fan + down + up)
        ipc += fan + down + up
    wall = trace.end - trace.start
    parties = {
        n: PartyRound(
            compute=float(p.up_timing.get("compute", 0.0) + p.down_timing.get("compute", 0.0)),
            encrypt=float(p.up_timing.get("encrypt", 0.0)),
            decrypt=float(p.down_timing.get("decrypt", 0.0)),
            serialise=float(
                p.up_timing.get("serialise", 0.0) + p.down_timing.get("serialise", 0.0)
            ),
            ipc_up=(p.update_received_at - p.update_sent_at) + (p.ack_received_at - p.ack_sent_at),
            ipc_down=(p.trigger_received_at - p.trigger_sent_at)
            + (p.aggregate_received_at - p.aggregate_sent_at),
            bytes_up=p.update_bytes + p.ack_bytes,
            bytes_down=p.round_bytes + p.trigger_bytes * (p.trigger != "round") + p.aggregate_bytes,
            plain_bytes=p.plain_bytes,
        )
        for n, p in done.items()
    }
    wan = {}
    for name, net in networks.items():
        modelled = (
            net.phase([p.trigger_bytes for p in used.values()])
            + net.phase([p.update_bytes for p in used.values()])
            + net.phase([p.aggregate_bytes for p in done.values()])
            + net.phase([p.ack_bytes for p in done.values()])
        )
        wan[name] = wall - ipc + modelled
    return RoundProfile(trace.round, wall, crit, parties, wan, list(trace.dropped))


def mean_over(profiles: Sequence[RoundProfile], key: str) -> float:
    """Mean of a critical-path category over rounds."""
    return sum(p.critical.get(key, 0.0) for p in profiles) / max(len(profiles), 1)
