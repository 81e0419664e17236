"""Pairwise additive masking (secure-aggregation style, after Bonawitz et al. 2017).

Each party encodes its vector in 64-bit fixed point and adds, for every other participant
``j``, a pseudo-random mask ``m_ij`` (``+`` when its name sorts before ``j``'s, ``-``
after), all modulo ``2**64``. Every mask appears once with each sign, so the masks cancel
in the sum and the coordinator recovers the exact fixed-point sum, while each masked
vector alone is uniformly random to it. The masks come from a seed derived from the
parties' shared secret, the round, the upload attempt and the pair (SHA-256 into
numpy's PCG64), so a re-upload after a dropout is masked afresh.

Cheaper than encryption (one PRG stream per peer), but the coordinator learns the sum,
and the masks cancel only over exactly the announced participants: after a dropout
the survivors upload again, masked among themselves (``needs_all_uploads``).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence

import numpy as np

from .base import SCHEMES, Aggregator, KeyMaterial, PartyCipher, RoundContext, SecureScheme
from .fixedpoint import from_fixed, to_fixed

__all__ = ["MaskingScheme"]


def _mask(secret: bytes, round: int, attempt: int, a: str, b: str, n: int) -> np.ndarray:
    """The (n,) uint64 mask shared by parties ``a`` and ``b`` in one upload attempt of ``round``."""
    lo, hi = sorted((a, b))
    tag = f"{round}/{attempt}".encode()
    digest = hashlib.sha256(b"|".join([secret, tag, lo.encode(), hi.encode()])).digest()
    gen = np.random.PCG64(int.from_bytes(digest, "big"))
    return gen.random_raw(n).astype(np.uint64)


class _MaskingParty(PartyCipher):
    def __init__(self, secret: bytes, frac_bits: int, int_bits: int) -> None:
        if len(secret) < 16:
            raise ValueError("the masking secret must be at least 16 bytes")
        self.secret, self.frac_bits, self.int_bits = secret, frac_bits, int_bits

    def encrypt(self, values: np.ndarray, ctx: RoundContext) -> np.ndarray:
        if len(ctx.participants) < 2:
            raise ValueError(
                "pairwise masking needs at least two participants; with one, the "
                "coordinator would read the update"
            )
        if ctx.party not in ctx.participants:
            raise ValueError(f"party {ctx.party!r} is not among {ctx.participants}")
        out = to_fixed(values, self.frac_bits, self.int_bits).view(np.uint64).copy()
        for other in ctx.participants:
            if other == ctx.party:
                continue
            m = _mask(self.secret, ctx.round, ctx.attempt, ctx.party, other, out.size)
            out = out + m if ctx.party < other else out - m  # wraps modulo 2**64
        return out

    def serialize(self, ciphertext: np.ndarray) -> list[bytes]:
        return [np.asarray(ciphertext, dtype="<u8").tobytes()]

    def deserialize(self, blobs: Sequence[bytes]) -> np.ndarray:
        return np.frombuffer(blobs[0], dtype="<u8").astype(np.uint64)

    def decrypt(self, ciphertext: np.ndarray, n: int, n_summed: int) -> np.ndarray:
        return from_fixed(ciphertext[:n].view(np.int64), self.frac_bits)


class _MaskingAggregator(Aggregator):
    def deserialize(self, blobs: Sequence[bytes]) -> np.ndarray:
        return np.frombuffer(blobs[0], dtype="<u8").astype(np.uint64)

    def sum(self, ciphertexts: Sequence[np.ndarray]) -> np.ndarray:
        total = np.zeros_like(ciphertexts[0])
        for c in ciphertexts:
            total += c  # modulo 2**64
        return total

    def serialize(self, ciphertext: np.ndarray) -> list[bytes]:
        return [np.asarray(ciphertext, dtype="<u8").tobytes()]


@SCHEMES.register("masking", description="pairwise masks that cancel in the sum; exact, cheap")
class MaskingScheme(SecureScheme):
    """Pairwise masking of 64-bit fixed-point vectors.

    Parameters
    ----------
    frac_bits : int
        Fixed-point precision ``2**-frac_bits``.
    int_bits : int
        Range of one party's values, ``|v| < 2**int_bits``; sums of up to
        ``2**(62 - int_bits - frac_bits)`` parties stay exact.
    """

    name = "masking"
    coordinator_learns = "the sum"
    exact = True
    needs_all_uploads = True

    def __init__(self, frac_bits: int = 32, int_bits: int = 24) -> None:
        if frac_bits + int_bits > 61:
            raise ValueError(f"frac_bits + int_bits must be <= 61; got {frac_bits + int_bits}")
        self.frac_bits, self.int_bits = int(frac_bits), int(int_bits)

    def keygen(self) -> KeyMaterial:
        return KeyMaterial(secrets.token_bytes(32), b"")

    def party(self, key: bytes) -> PartyCipher:
        return _MaskingParty(key, self.frac_bits, self.int_bits)

    def aggregator(self, key: bytes) -> Aggregator:
        return _MaskingAggregator()

    def describe(self) -> dict:
        return {**super().describe(), "frac_bits": self.frac_bits, "int_bits": self.int_bits}
