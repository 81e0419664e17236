"""CKKS approximate homomorphic encryption (TenSEAL), the default scheme.

A party's vector is cut into chunks of ``poly_modulus_degree / 2`` values (the number of
CKKS slots), each encrypted as one ``CKKSVector`` under the parties' public key. The
coordinator holds a context with the encryption parameters only (no public, secret,
relinearisation or Galois keys): enough to deserialise ciphertexts and add them, not to
decrypt. Aggregation needs no multiplication, so one data prime suffices: the default
modulus chain ``(60, 60)`` bits at scale ``2**50`` keeps about 1e-9 relative error on
sums of model updates (values up to ``2**9`` in magnitude).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from functools import reduce
from typing import Any

import numpy as np

from ..extras import require
from .base import SCHEMES, Aggregator, KeyMaterial, PartyCipher, RoundContext, SecureScheme

__all__ = ["CKKSScheme"]


def _tenseal() -> Any:
    return require("tenseal", "CKKS secure aggregation")


class _CKKSParty(PartyCipher):
    def __init__(self, key: bytes) -> None:
        self.ts = _tenseal()
        self.context = self.ts.context_from(key)
        self.slots = _slots(self.context)

    def encrypt(self, values: np.ndarray, ctx: RoundContext) -> list[Any]:
        values = np.asarray(values, dtype=np.float64)
        return [
            self.ts.ckks_vector(self.context, values[i : i + self.slots])
            for i in range(0, len(values), self.slots)
        ]

    def serialize(self, ciphertext: list[Any]) -> list[bytes]:
        return [c.serialize() for c in ciphertext]

    def deserialize(self, blobs: Sequence[bytes]) -> list[Any]:
        return [self.ts.ckks_vector_from(self.context, b) for b in blobs]

    def decrypt(self, ciphertext: list[Any], n: int, n_summed: int) -> np.ndarray:
        out = np.concatenate([np.asarray(c.decrypt(), dtype=np.float64) for c in ciphertext])
        if out.size != n:
            raise ValueError(f"the aggregate holds {out.size} values; expected {n}")
        return out


class _CKKSAggregator(Aggregator):
    def __init__(self, key: bytes) -> None:
        self.ts = _tenseal()
        self.context = self.ts.context_from(key)
        if self.context.has_secret_key():
            raise ValueError("the coordinator's CKKS context must not hold the secret key")

    def deserialize(self, blobs: Sequence[bytes]) -> list[Any]:
        return [self.ts.ckks_vector_from(self.context, b) for b in blobs]

    def sum(self, ciphertexts: Sequence[list[Any]]) -> list[Any]:
        lengths = {len(c) for c in ciphertexts}
        if len(lengths) != 1:
            raise ValueError(f"parties sent different numbers of ciphertexts: {sorted(lengths)}")
        # ``a + b`` builds a new ciphertext (``copy()`` needs keys the coordinator lacks)
        return [reduce(operator.add, column) for column in zip(*ciphertexts)]

    def serialize(self, ciphertext: list[Any]) -> list[bytes]:
        return [c.serialize() for c in ciphertext]


def _slots(context: Any) -> int:
    return int(context.data.seal_context().first_context_data().parms().poly_modulus_degree()) // 2


@SCHEMES.register("ckks", description="CKKS vectors (TenSEAL); approximate, ~1e-9 relative")
class CKKSScheme(SecureScheme):
    """CKKS encryption of update vectors; the coordinator adds ciphertexts.

    Parameters
    ----------
    poly_modulus_degree : int
        Ring dimension N (a power of two); N / 2 values per ciphertext.
    coeff_mod_bit_sizes : sequence of int
        Bit sizes of the coefficient modulus primes (the last is the special prime).
    scale_bits : int
        ``log2`` of the encoding scale: the absolute precision is about ``2**-scale_bits``
        times a small factor; values must stay below ``2**(first prime - scale_bits - 1)``.
    """

    name = "ckks"
    coordinator_learns = "nothing"

    def __init__(
        self,
        poly_modulus_degree: int = 8192,
        coeff_mod_bit_sizes: Sequence[int] = (60, 60),
        scale_bits: int = 50,
    ) -> None:
        self.poly_modulus_degree = int(poly_modulus_degree)
        self.coeff_mod_bit_sizes = [int(b) for b in coeff_mod_bit_sizes]
        self.scale_bits = int(scale_bits)
        if self.scale_bits >= self.coeff_mod_bit_sizes[0]:
            raise ValueError(
                f"scale_bits ({scale_bits}) must be below the first prime's "
                f"{self.coeff_mod_bit_sizes[0]} bits, or sums overflow"
            )

    def keygen(self) -> KeyMaterial:
        ts = _tenseal()
        ctx = ts.context(
            ts.SCHEME_TYPE.CKKS,
            poly_modulus_degree=self.poly_modulus_degree,
            coeff_mod_bit_sizes=self.coeff_mod_bit_sizes,
        )
        ctx.global_scale = 2.0**self.scale_bits
        party = ctx.serialize(
            save_public_key=True,
            save_secret_key=True,
            save_galois_keys=False,
            save_relin_keys=False,
        )
        coordinator = ctx.serialize(
            save_public_key=False,
            save_secret_key=False,
            save_galois_keys=False,
            save_relin_keys=False,
        )
        return KeyMaterial(party, coordinator)

    def party(self, key: bytes) -> PartyCipher:
        return _CKKSParty(key)

    def aggregator(self, key: bytes) -> Aggregator:
        return _CKKSAggregator(key)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "poly_modulus_degree": self.poly_modulus_degree,
            "coeff_mod_bit_sizes": self.coeff_mod_bit_sizes,
            "scale_bits": self.scale_bits,
            "values_per_ciphertext": self.poly_modulus_degree // 2,
        }
