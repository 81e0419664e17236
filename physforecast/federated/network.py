"""A network model: what the same round would cost over a wide-area network.

The coordinator and the parties form a star. A phase in which every participant sends
(or receives) one message of ``b_i`` bytes takes ::

    t = rtt / 2 + max( max_i b_i / party_bandwidth,  sum_i b_i / coordinator_bandwidth )

one-way latency plus the transmission time, limited either by the slowest party's own
link or by the coordinator's link, which all messages share. A round has four phases
(round announcement, updates up, aggregate down, acknowledgements up). The WAN estimate
of a round replaces the IPC time measured on the critical path over loopback by the
four modelled phases and keeps everything else (compute, encryption, serialisation,
aggregation) as measured. TCP slow start, loss and congestion are not modelled, so the
estimate is a lower bound for a real WAN.

Presets (:data:`NETWORKS`): ``lan`` (1 Gbit/s, 0.5 ms RTT), ``wan`` (100 Mbit/s,
40 ms: institutions in one region), ``intercontinental`` (20 Mbit/s, 150 ms).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

__all__ = ["NetworkModel", "NETWORKS", "network"]


@dataclass(frozen=True)
class NetworkModel:
    """Bandwidth and latency of a star network.

    Attributes
    ----------
    name : str
        A label.
    bandwidth_bps : float
        Each party's link, bits per second (both directions).
    rtt_s : float
        Round-trip time between a party and the coordinator, seconds.
    coordinator_bandwidth_bps : float, optional
        The coordinator's link; defaults to ``bandwidth_bps``.
    """

    name: str
    bandwidth_bps: float
    rtt_s: float
    coordinator_bandwidth_bps: float | None = None

    def phase(self, message_bytes: Sequence[int]) -> float:
        """Seconds for one message per participant (sizes ``message_bytes``) to cross."""
        if not message_bytes:
            return 0.0
        coord = self.coordinator_bandwidth_bps or self.bandwidth_bps
        bits = [8.0 * b for b in message_bytes]
        return self.rtt_s / 2 + max(max(bits) / self.bandwidth_bps, sum(bits) / coord)

    def to_dict(self) -> dict:
        """The fields as a dict."""
        return asdict(self)


#: Preset networks by name.
NETWORKS: dict[str, NetworkModel] = {
    "lan": NetworkModel("lan", 1e9, 0.5e-3),
    "wan": NetworkModel("wan", 100e6, 40e-3),
    "intercontinental": NetworkModel("intercontinental", 20e6, 150e-3),
}


def network(name: str) -> NetworkModel:
    """The preset ``name``; a ``ValueError`` listing the presets otherwise."""
    try:
        return NETWORKS[name]
    except KeyError:
        raise ValueError(f"unknown network {name!r}; presets: {', '.join(NETWORKS)}") from None
