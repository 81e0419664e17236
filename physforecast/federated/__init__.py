"""Secure federated transfer learning across data islands, with a cost profiler.

A coordinator and N parties, each holding only its own dataset file, train a shared
representation (the backbone's encoder trunk; or the whole backbone for FedAvg) in
rounds of local training and secure aggregation, then the data-poor target parties
fine-tune. Updates are encrypted before they leave a party (CKKS by default, Paillier,
pairwise masking, or plain as the insecure baseline); the coordinator adds ciphertexts
with public parameters only. Every round is profiled: compute, encryption, serialisation,
IPC, bytes, and a modelled WAN.

- :func:`~physforecast.federated.runner.run_federated` and
  :class:`~physforecast.federated.runner.FederatedConfig`: the entry point.
- :mod:`~physforecast.federated.secure`: the schemes (``SCHEMES`` registry).
- :mod:`~physforecast.federated.sharing`: what is shared (``SHARING`` registry).
- :mod:`~physforecast.federated.profile`, :mod:`~physforecast.federated.network`,
  :mod:`~physforecast.federated.report`: the cost profiler.
- :mod:`~physforecast.federated.baselines`: local-only and centralised training.

TenSEAL and phe come with the ``federated`` extra (``pip install 'physforecast[federated]'``).
Importing this package loads neither them nor torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "FederatedConfig",
    "FederatedResult",
    "FederatedRoundError",
    "run_federated",
    "train_local_only",
    "train_centralised",
    "NetworkModel",
    "NETWORKS",
    "RunProfile",
    "RoundProfile",
    "profile_markdown",
    "profile_figure",
    "SCHEMES",
    "SHARING",
    "create_scheme",
]

_WHERE = {
    "FederatedConfig": "runner",
    "FederatedResult": "runner",
    "run_federated": "runner",
    "FederatedRoundError": "coordinator",
    "train_local_only": "baselines",
    "train_centralised": "baselines",
    "NetworkModel": "network",
    "NETWORKS": "network",
    "RunProfile": "profile",
    "RoundProfile": "profile",
    "profile_markdown": "report",
    "profile_figure": "report",
    "SCHEMES": "secure",
    "create_scheme": "secure",
    "SHARING": "sharing",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
