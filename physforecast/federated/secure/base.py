"""The secure-aggregation contract and its registry.

A scheme turns each party's vector (float64, ``(n,)``) into something the coordinator can
add up without reading it, and turns the sum back into a vector on the parties' side::

    party:        encrypt(values, ctx) -> ciphertext   serialize(ciphertext) -> blobs
    coordinator:  deserialize(blobs) -> ciphertext     sum([ciphertexts]) -> ciphertext
                  serialize(sum) -> blobs
    party:        deserialize(blobs) -> ciphertext     decrypt(sum, n, n_summed) -> values

Key material comes from :meth:`SecureScheme.keygen` as two byte strings: the parties'
(secret; all parties hold the same one) and the coordinator's (public parameters only).
The coordinator is built from the coordinator's bytes alone, so it cannot decrypt.

Schemes register in :data:`SCHEMES` (``"ckks"``, ``"paillier"``, ``"masking"``,
``"none"``) and are built with :func:`create_scheme`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from physforecast.registry import Registry

__all__ = [
    "SCHEMES",
    "KeyMaterial",
    "RoundContext",
    "SecureScheme",
    "PartyCipher",
    "Aggregator",
    "create_scheme",
    "secure_sum",
]

#: Secure-aggregation schemes by name.
SCHEMES = Registry("secure aggregation scheme", populate="physforecast.federated.secure")


@dataclass(frozen=True)
class KeyMaterial:
    """Keys of one federation.

    Attributes
    ----------
    party : bytes
        Secret material shared by every party (decrypts aggregates). Never sent to the coordinator.
    coordinator : bytes
        What the coordinator needs to add ciphertexts (public parameters; no secret).
    """

    party: bytes
    coordinator: bytes


@dataclass(frozen=True)
class RoundContext:
    """Who encrypts in which round: pairwise masking derives its masks from it.

    ``attempt`` counts uploads within a round (0, then 1, 2... after dropouts), so that a
    re-upload uses fresh masks.
    """

    round: int
    party: str
    participants: tuple[str, ...]
    attempt: int = 0


class PartyCipher(ABC):
    """A party's side of a scheme: encrypt its vector, decrypt the aggregate."""

    @abstractmethod
    def encrypt(self, values: np.ndarray, ctx: RoundContext) -> Any:
        """Encrypt ``values`` (n,) float64."""

    @abstractmethod
    def serialize(self, ciphertext: Any) -> list[bytes]:
        """Bytes of a ciphertext."""

    @abstractmethod
    def deserialize(self, blobs: Sequence[bytes]) -> Any:
        """A ciphertext from :meth:`serialize`'s (or the aggregator's) bytes."""

    @abstractmethod
    def decrypt(self, ciphertext: Any, n: int, n_summed: int) -> np.ndarray:
        """The (n,) float64 sum held by an aggregate of ``n_summed`` ciphertexts."""


class Aggregator(ABC):
    """The coordinator's side: add ciphertexts it cannot read."""

    @abstractmethod
    def deserialize(self, blobs: Sequence[bytes]) -> Any:
        """A ciphertext from a party's bytes."""

    @abstractmethod
    def sum(self, ciphertexts: Sequence[Any]) -> Any:
        """The ciphertext of the element-wise sum."""

    @abstractmethod
    def serialize(self, ciphertext: Any) -> list[bytes]:
        """Bytes of the aggregate ciphertext."""


class SecureScheme(ABC):
    """A secure-aggregation scheme.

    Attributes
    ----------
    name : str
        Registry name.
    coordinator_learns : str
        What the coordinator can read: ``"nothing"``, ``"the sum"`` or ``"every update"``.
    exact : bool
        Whether the decrypted sum equals the fixed-point sum exactly.
    needs_all_uploads : bool
        True when an aggregate is only valid over exactly the announced participants
        (pairwise masks cancel only then): after a dropout the survivors upload again.
    """

    name: ClassVar[str] = ""
    coordinator_learns: ClassVar[str] = "nothing"
    exact: ClassVar[bool] = False
    needs_all_uploads: ClassVar[bool] = False

    @abstractmethod
    def keygen(self) -> KeyMaterial:
        """Fresh keys for one federation."""

    @abstractmethod
    def party(self, key: bytes) -> PartyCipher:
        """The party side, from :attr:`KeyMaterial.party`."""

    @abstractmethod
    def aggregator(self, key: bytes) -> Aggregator:
        """The coordinator side, from :attr:`KeyMaterial.coordinator`."""

    def describe(self) -> dict[str, Any]:
        """Name, options and guarantees, for reports."""
        return {
            "scheme": self.name,
            "coordinator_learns": self.coordinator_learns,
            "exact": self.exact,
        }


def create_scheme(name: str, **options: Any) -> SecureScheme:
    """Build the scheme registered as ``name`` with its ``options``."""
    return SCHEMES.create(name, **options)


def secure_sum(
    scheme: SecureScheme,
    vectors: Mapping[str, np.ndarray],
    *,
    round: int = 0,
    keys: KeyMaterial | None = None,
) -> np.ndarray:
    """Sum ``vectors`` (party name -> (n,) array) through the whole encrypted path.

    Each party encrypts and serialises its vector, the coordinator deserialises, adds and
    serialises the aggregate from the coordinator key only, and a party decrypts it. A
    reference for tests and for checking a scheme's precision.
    """
    keys = keys or scheme.keygen()
    names = tuple(vectors)
    n = len(next(iter(vectors.values())))
    uploads = []
    for name, values in vectors.items():
        cipher = scheme.party(keys.party)
        ct = cipher.encrypt(np.asarray(values, dtype=np.float64), RoundContext(round, name, names))
        uploads.append(cipher.serialize(ct))
    agg = scheme.aggregator(keys.coordinator)
    total = agg.serialize(agg.sum([agg.deserialize(u) for u in uploads]))
    reader = scheme.party(keys.party)
    return reader.decrypt(reader.deserialize(total), n, len(names))
