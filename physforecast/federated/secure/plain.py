"""No protection: the insecure baseline that sends float32 vectors in the clear."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .base import SCHEMES, Aggregator, KeyMaterial, PartyCipher, RoundContext, SecureScheme

__all__ = ["PlainScheme"]


class _PlainCipher(PartyCipher, Aggregator):
    def encrypt(self, values: np.ndarray, ctx: RoundContext) -> np.ndarray:
        return np.asarray(values, dtype=np.float32)

    def serialize(self, ciphertext: np.ndarray) -> list[bytes]:
        return [np.asarray(ciphertext, dtype="<f4").tobytes()]

    def deserialize(self, blobs: Sequence[bytes]) -> np.ndarray:
        return np.frombuffer(blobs[0], dtype="<f4").astype(np.float32)

    def sum(self, ciphertexts: Sequence[np.ndarray]) -> np.ndarray:
        return np.sum(np.stack(ciphertexts).astype(np.float64), axis=0).astype(np.float32)

    def decrypt(self, ciphertext: np.ndarray, n: int, n_summed: int) -> np.ndarray:
        return np.asarray(ciphertext[:n], dtype=np.float64)


@SCHEMES.register("none", description="plaintext float32 (insecure baseline)")
class PlainScheme(SecureScheme):
    """Updates travel as plain float32: the coordinator reads every party's update."""

    name = "none"
    coordinator_learns = "every update"

    def keygen(self) -> KeyMaterial:
        return KeyMaterial(b"", b"")

    def party(self, key: bytes) -> PartyCipher:
        return _PlainCipher()

    def aggregator(self, key: bytes) -> Aggregator:
        return _PlainCipher()
