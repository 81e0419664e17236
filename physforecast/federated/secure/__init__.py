"""Secure aggregation: CKKS (default), Paillier, pairwise masking, and plain.

Importing this package registers every scheme in :data:`SCHEMES`; the heavy libraries
(TenSEAL, phe) are imported only when a scheme is used.
"""

from . import ckks, masking, paillier, plain  # noqa: F401  (they register themselves)
from .base import (
    SCHEMES,
    Aggregator,
    KeyMaterial,
    PartyCipher,
    RoundContext,
    SecureScheme,
    create_scheme,
    secure_sum,
)
from .ckks import CKKSScheme
from .masking import MaskingScheme
from .paillier import PaillierScheme
from .plain import PlainScheme

__all__ = [
    "SCHEMES",
    "Aggregator",
    "KeyMaterial",
    "PartyCipher",
    "RoundContext",
    "SecureScheme",
    "create_scheme",
    "secure_sum",
    "CKKSScheme",
    "PaillierScheme",
    "MaskingScheme",
    "PlainScheme",
]
