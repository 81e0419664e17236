"""The coordinator: runs the rounds, adds ciphertexts, never sees a plaintext update.

It holds a channel per party, the scheme's aggregator built from the coordinator key
only (public parameters), and the public facts every FedAvg coordinator knows (each
party's number of training windows, for the weights). One reader thread per channel
puts arriving messages on one queue, so a party that dies is noticed the moment its
socket closes, and one that hangs when ``round_timeout`` runs out.

A round either completes for every participant or changes nothing: parties replace
their shared weights only when the whole aggregate has arrived, and on failure the
coordinator sends ``abort`` (parties restore the last global weights) and raises
:class:`FederatedRoundError`. With ``on_dropout="proceed"`` a round continues without
the parties that dropped out (as long as ``min_parties`` remain): their ciphertexts are
left out of the sum, or, for pairwise masking, the survivors upload again.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Mapping
from typing import Any

from .channels import ChannelClosed
from .network import NetworkModel
from .profile import PartyTrace, RoundProfile, RoundTrace, profile_round
from .secure import Aggregator, SecureScheme
from .wire import Message, WireError, clock

__all__ = ["Coordinator", "FederatedRoundError"]


class FederatedRoundError(RuntimeError):
    """A round could not complete; the global model is that of the last complete round.

    :func:`~physforecast.federated.runner.run_federated` attaches the cost profile of
    the rounds that did complete as ``err.profile`` (a :class:`~physforecast.federated.profile.RunProfile`).
    """

    profile = None


class Coordinator:
    """Drive a federation over already-connected channels.

    Parameters
    ----------
    channels : dict
        Party name -> channel (after its ``hello``).
    scheme : SecureScheme
        The aggregation scheme.
    aggregator : Aggregator
        Built from the coordinator key only.
    round_timeout : float
        Seconds a party may take to answer within a round.
    setup_timeout : float
        Seconds a party may take to load its data (setup) and to fine-tune and score (finish).
    on_dropout : {"fail", "proceed"}
        Stop at the first dropout, or continue without it.
    min_parties : int
        Fewest parties a round may aggregate.
    networks : dict
        Network models for the profiler's WAN estimates.
    describe_dropout : callable, optional
        ``describe(name) -> str`` adds detail to a dropout (a process's exit code).
    """

    def __init__(
        self,
        channels: Mapping[str, Any],
        scheme: SecureScheme,
        aggregator: Aggregator,
        *,
        round_timeout: float,
        setup_timeout: float = 600.0,
        on_dropout: str = "fail",
        min_parties: int = 2,
        networks: Mapping[str, NetworkModel] | None = None,
        describe_dropout: Callable[[str], str] | None = None,
    ) -> None:
        if on_dropout not in ("fail", "proceed"):
            raise ValueError(f"on_dropout must be 'fail' or 'proceed'; got {on_dropout!r}")
        self.channels = dict(channels)
        self.scheme, self.aggregator = scheme, aggregator
        self.round_timeout = float(round_timeout)
        self.setup_timeout = float(setup_timeout)
        self.proceed = on_dropout == "proceed"
        self.min_parties = int(min_parties)
        self.networks = dict(networks or {})
        self.describe_dropout = describe_dropout or (lambda name: "")
        self.alive = list(self.channels)
        self.dropped: dict[str, str] = {}
        self.info: dict[str, dict[str, Any]] = {}
        self.committed = 0
        self._inbox: queue.Queue = queue.Queue()
        for name, ch in self.channels.items():
            threading.Thread(target=self._reader, args=(name, ch), daemon=True).start()

    def _reader(self, name: str, channel: Any) -> None:
        while True:
            try:
                msg = channel.recv(None)
            except (ChannelClosed, WireError, OSError) as err:
                self._inbox.put((name, err))
                return
            self._inbox.put((name, msg))

    # -- messaging ---------------------------------------------------------------------
    def _send(self, name: str, msg: Message) -> bool:
        try:
            self.channels[name].send(msg)
            return True
        except ChannelClosed:
            return False

    def _collect(
        self,
        kind: str,
        names: list[str],
        round: int | None,
        timeout: float | None = None,
        attempt: int = 0,
    ) -> tuple[dict[str, Message], dict[str, str]]:
        """Wait for one ``kind`` message from each of ``names``; return (replies, dropouts).

        Messages of another kind, round or upload ``attempt`` are stale and skipped: an
        update masked for the participants of an earlier attempt must never be summed.
        """
        timeout = self.round_timeout if timeout is None else timeout
        deadline = clock() + timeout
        got: dict[str, Message] = {}
        dead: dict[str, str] = {}
        while len(got) + len(dead) < len(names):
            left = deadline - clock()
            try:
                name, item = self._inbox.get(timeout=max(left, 0.0)) if left > 0 else (None, None)
            except queue.Empty:
                name, item = None, None
            if name is None:
                for n in names:
                    if n not in got and n not in dead:
                        dead[n] = f"sent no {kind!r} within {timeout:g} s (unresponsive)"
                break
            if name not in names or name in got or name in dead:
                continue
            if isinstance(item, Exception):
                detail = self.describe_dropout(name)
                dead[name] = f"closed its connection ({item})" + (f"; {detail}" if detail else "")
                continue
            stale = round is not None and (
                item.meta.get("round") != round or item.meta.get("attempt", 0) != attempt
            )
            if item.kind != kind or stale:
                continue  # an earlier round's or attempt's message; keep waiting
            got[name] = item
        return got, dead

    def _drop(self, dead: dict[str, str], stage: str) -> None:
        """Record dropouts; raise unless the run may proceed without them."""
        for name, why in dead.items():
            self.dropped[name] = f"{stage}: {why}"
            if name in self.alive:
                self.alive.remove(name)
            self.channels[name].close()
        what = "; ".join(f"party {n!r} {why}" for n, why in dead.items())
        if not self.proceed:
            self.abort(f"{stage}: {what}")
            raise FederatedRoundError(
                f"{stage}: {what}. The run stopped; the global model is that of the last "
                f"complete round ({self.committed}). Set on_dropout='proceed' to continue "
                "without a party that drops out, or raise round_timeout."
            )
        if len(self.alive) < self.min_parties:
            self.abort(f"{stage}: too few parties left")
            raise FederatedRoundError(
                f"{stage}: {what}; only {len(self.alive)} part(y/ies) left, fewer than "
                f"min_parties={self.min_parties}. The global model is that of round {self.committed}."
            )

    def abort(self, reason: str) -> None:
        """Tell every live party to restore the last global weights and stop."""
        for name in self.alive:
            self._send(name, Message("abort", {"reason": reason}))

    # -- the protocol --------------------------------------------------------------------
    def setup(self, config: dict[str, Any], roles: Mapping[str, str]) -> dict[str, dict]:
        """Send every party the run's config and its role; returns their ``ready`` replies."""
        names = list(self.alive)
        for name in names:
            if not self._send(name, Message("setup", {"config": config, "role": roles[name]})):
                self._drop({name: "closed its connection before setup"}, "setup")
        got, dead = self._collect("ready", list(self.alive), None, self.setup_timeout)
        if dead:
            self._drop(dead, "setup")
        shared = {m.meta["n_shared"] for m in got.values()}
        if len(shared) != 1:
            self.abort("parties disagree on the shared parameters")
            raise FederatedRoundError(
                f"parties built different shared parts ({sorted(shared)} values): check that "
                "every party's file has the same variables and grid"
            )
        if len({m.meta["initial_digest"] for m in got.values()}) != 1:
            self.abort("parties start from different shared weights")
            raise FederatedRoundError(
                "parties built different initial shared weights from the same seed; every "
                "party must run the same physforecast and backbone versions"
            )
        self.info = {n: m.meta for n, m in got.items()}
        return self.info

    def run_round(self, r: int) -> RoundProfile:
        """Run round ``r`` (1-based) and return its cost profile."""
        trace = RoundTrace(round=r, start=clock())
        participants = list(self.alive)
        total = sum(self.info[n]["n_train"] for n in participants)
        for name in participants:
            msg = Message(
                "round",
                {
                    "round": r,
                    "participants": participants,
                    "weight": self.info[name]["n_train"] / total,
                },
            )
            pt = trace.parties.setdefault(name, PartyTrace())
            if self._send(name, msg):
                pt.round_bytes = pt.trigger_bytes = msg.nbytes
        updates, dead = self._collect("update", participants, r)
        attempt = 0
        while dead:
            trace.dropped += list(dead)
            self._drop(dead, f"round {r}")
            updates = {n: m for n, m in updates.items() if n in self.alive}
            if not self.scheme.needs_all_uploads:
                break
            attempt += 1
            for name in self.alive:
                msg = Message(
                    "reupload", {"round": r, "attempt": attempt, "participants": list(self.alive)}
                )
                if self._send(name, msg):
                    trace.parties[name].trigger_bytes = msg.nbytes
            updates, dead = self._collect("update", list(self.alive), r, attempt=attempt)
        for name, m in updates.items():
            pt = trace.parties[name]
            pt.trigger = str(m.meta["trigger"])
            pt.trigger_sent_at = float(m.meta["trigger_sent_at"])
            pt.trigger_received_at = float(m.meta["received_at"])
            pt.update_sent_at, pt.update_received_at = m.sent_at, m.received_at
            pt.update_bytes = m.nbytes
            pt.plain_bytes = int(m.meta["plain_bytes"])
            pt.up_timing = dict(m.meta["timing"])
        trace.all_updates_at = max(m.received_at for m in updates.values())
        # phase B: add the ciphertexts
        t0 = clock()
        cts = [self.aggregator.deserialize(updates[n].blobs) for n in updates]
        t1 = clock()
        total_ct = self.aggregator.sum(cts)
        t2 = clock()
        blobs = self.aggregator.serialize(total_ct)
        t3 = clock()
        trace.deserialise_s, trace.aggregate_s, trace.serialise_s = t1 - t0, t2 - t1, t3 - t2
        trace.aggregated_at = t3
        n_values = {m.meta["n_values"] for m in updates.values()}
        meta = {"round": r, "n_summed": len(updates), "n_values": n_values.pop()}
        receivers = list(updates)
        for name in receivers:
            msg = Message("aggregate", meta, blobs)
            if self._send(name, msg):
                trace.parties[name].aggregate_sent_at = msg.sent_at
                trace.parties[name].aggregate_bytes = msg.nbytes
        acks, dead = self._collect("ack", receivers, r)
        if dead:
            trace.dropped += list(dead)
            self._drop(dead, f"round {r} (after aggregation)")
        for name, m in acks.items():
            pt = trace.parties[name]
            pt.aggregate_received_at = float(m.meta["received_at"])
            pt.ack_sent_at, pt.ack_received_at, pt.ack_bytes = m.sent_at, m.received_at, m.nbytes
            pt.down_timing = dict(m.meta["timing"])
        trace.end = max(m.received_at for m in acks.values())
        self.committed = r
        return profile_round(trace, self.networks)

    def finish(self, finetune_steps: int, finetune_lr: float) -> dict[str, dict]:
        """Ask every live party to fine-tune (targets), evaluate and write its scorecard."""
        for name in list(self.alive):
            msg = Message("finish", {"finetune_steps": finetune_steps, "finetune_lr": finetune_lr})
            self._send(name, msg)
        got, dead = self._collect("result", list(self.alive), None, self.setup_timeout)
        if dead:
            what = "; ".join(f"party {n!r} {why}" for n, why in dead.items())
            raise FederatedRoundError(
                f"finish: {what}. The rounds completed (the global model of round "
                f"{self.committed} is saved by every party) but fine-tuning or scoring failed"
            )
        return {n: m.meta for n, m in got.items()}

    def close(self) -> None:
        """Close every channel."""
        for ch in self.channels.values():
            ch.close()
