"""Paillier additively homomorphic encryption (python-paillier, ``phe``): exact integers.

Values are encoded in fixed point (``frac_bits`` after the binary point, magnitudes below
``2**int_bits``), shifted to be non-negative, and packed several to a plaintext: each slot
has ``1 + int_bits + frac_bits`` bits plus ``ceil(log2(max_parties))`` bits of headroom so
that the sum over up to ``max_parties`` parties never carries into the next slot. With a
2048-bit key and the defaults (32 + 7 + 1 + 4 = 44 bits) one ciphertext carries 46
values. Adding ciphertexts (``EncryptedNumber.__add__``: a product modulo ``n**2``) adds
every slot at once; the decrypted sum is exactly the sum of the fixed-point integers.
The coordinator holds the public modulus ``n`` only.

``phe`` is pure Python unless ``gmpy2`` is installed; encryption (one ``r**n mod n**2``
per ciphertext) dominates its cost.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from functools import reduce
from typing import Any

import numpy as np

from ..extras import require
from .base import SCHEMES, Aggregator, KeyMaterial, PartyCipher, RoundContext, SecureScheme
from .fixedpoint import to_fixed

__all__ = ["PaillierScheme"]


def _phe() -> Any:
    return require("phe", "Paillier secure aggregation")


class _Packing:
    """Slot layout of packed fixed-point integers in one Paillier plaintext."""

    def __init__(self, n_bits: int, frac_bits: int, int_bits: int, max_parties: int) -> None:
        self.frac_bits, self.int_bits = frac_bits, int_bits
        self.offset = 1 << (int_bits + frac_bits)
        self.slot_bits = 1 + int_bits + frac_bits + max(1, math.ceil(math.log2(max_parties)))
        self.per_ciphertext = (n_bits - 2) // self.slot_bits
        if self.per_ciphertext < 1:
            raise ValueError(f"a {n_bits}-bit key cannot hold one {self.slot_bits}-bit slot")
        self.mask = (1 << self.slot_bits) - 1

    def pack(self, values: np.ndarray) -> list[int]:
        q = (to_fixed(values, self.frac_bits, self.int_bits) + self.offset).tolist()
        out = []
        for start in range(0, len(q), self.per_ciphertext):
            acc = 0
            for value in reversed(q[start : start + self.per_ciphertext]):
                acc = (acc << self.slot_bits) | value
            out.append(acc)
        return out

    def unpack(self, plains: Sequence[int], n: int, n_summed: int) -> np.ndarray:
        q = []
        for plain in plains:
            for _ in range(self.per_ciphertext):
                q.append((plain & self.mask) - n_summed * self.offset)
                plain >>= self.slot_bits
        # python ints are exact; the float conversion is the last, rounding step
        return np.array(q[:n], dtype=np.float64) / 2.0**self.frac_bits


class _PaillierParty(PartyCipher):
    def __init__(self, key: bytes, packing: _Packing) -> None:
        phe = _phe()
        data = json.loads(key)
        self.public = phe.PaillierPublicKey(int(data["n"]))
        self.private = phe.PaillierPrivateKey(self.public, int(data["p"]), int(data["q"]))
        self.packing = packing
        self.width = (self.public.nsquare.bit_length() + 7) // 8

    def encrypt(self, values: np.ndarray, ctx: RoundContext) -> list[int]:
        return [self.public.raw_encrypt(p) for p in self.packing.pack(values)]

    def serialize(self, ciphertext: list[int]) -> list[bytes]:
        return [b"".join(c.to_bytes(self.width, "big") for c in ciphertext)]

    def deserialize(self, blobs: Sequence[bytes]) -> list[int]:
        return _ints(blobs[0], self.width)

    def decrypt(self, ciphertext: list[int], n: int, n_summed: int) -> np.ndarray:
        plains = [self.private.raw_decrypt(c) for c in ciphertext]
        return self.packing.unpack(plains, n, n_summed)


class _PaillierAggregator(Aggregator):
    def __init__(self, key: bytes) -> None:
        self.phe = _phe()
        data = json.loads(key)
        if set(data) != {"n"}:
            raise ValueError("the coordinator's Paillier key must hold the public modulus only")
        self.public = self.phe.PaillierPublicKey(int(data["n"]))
        self.width = (self.public.nsquare.bit_length() + 7) // 8

    def deserialize(self, blobs: Sequence[bytes]) -> list[Any]:
        return [self.phe.EncryptedNumber(self.public, c, 0) for c in _ints(blobs[0], self.width)]

    def sum(self, ciphertexts: Sequence[list[Any]]) -> list[Any]:
        lengths = {len(c) for c in ciphertexts}
        if len(lengths) != 1:
            raise ValueError(f"parties sent different numbers of ciphertexts: {sorted(lengths)}")
        return [reduce(lambda a, b: a + b, column) for column in zip(*ciphertexts)]

    def serialize(self, ciphertext: list[Any]) -> list[bytes]:
        return [
            b"".join(c.ciphertext(be_secure=False).to_bytes(self.width, "big") for c in ciphertext)
        ]


def _ints(blob: bytes, width: int) -> list[int]:
    if len(blob) % width:
        raise ValueError(f"a Paillier blob of {len(blob)} bytes is not a multiple of {width}")
    return [int.from_bytes(blob[i : i + width], "big") for i in range(0, len(blob), width)]


@SCHEMES.register("paillier", description="packed fixed-point Paillier (phe); exact")
class PaillierScheme(SecureScheme):
    """Paillier encryption of packed fixed-point vectors; exact sums.

    Parameters
    ----------
    key_bits : int
        Bit length of the modulus ``n`` (2048 or more for today's security).
    frac_bits : int
        Fixed-point precision ``2**-frac_bits``.
    int_bits : int
        Range: every encrypted value must satisfy ``|v| < 2**int_bits``.
    max_parties : int
        Most ciphertexts one aggregate may add (sets the slot headroom).
    """

    name = "paillier"
    coordinator_learns = "nothing"
    exact = True

    def __init__(
        self, key_bits: int = 2048, frac_bits: int = 32, int_bits: int = 7, max_parties: int = 16
    ) -> None:
        if key_bits < 256:
            raise ValueError(f"key_bits must be >= 256; got {key_bits}")
        self.key_bits, self.frac_bits, self.int_bits = int(key_bits), int(frac_bits), int(int_bits)
        self.max_parties = int(max_parties)

    def _packing(self, n: int) -> _Packing:
        return _Packing(n.bit_length(), self.frac_bits, self.int_bits, self.max_parties)

    def keygen(self) -> KeyMaterial:
        phe = _phe()
        public, private = phe.generate_paillier_keypair(n_length=self.key_bits)
        party = json.dumps({"n": str(public.n), "p": str(private.p), "q": str(private.q)})
        return KeyMaterial(party.encode(), json.dumps({"n": str(public.n)}).encode())

    def party(self, key: bytes) -> PartyCipher:
        n = int(json.loads(key)["n"])
        return _PaillierParty(key, self._packing(n))

    def aggregator(self, key: bytes) -> Aggregator:
        return _PaillierAggregator(key)

    def values_per_ciphertext(self, n_bits: int | None = None) -> int:
        """Values packed in one ciphertext for a key of ``n_bits`` (default ``key_bits``)."""
        return _Packing(
            n_bits or self.key_bits, self.frac_bits, self.int_bits, self.max_parties
        ).per_ciphertext

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "key_bits": self.key_bits,
            "frac_bits": self.frac_bits,
            "int_bits": self.int_bits,
            "values_per_ciphertext": self.values_per_ciphertext(),
        }
