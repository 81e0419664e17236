"""Fixed-point encoding of float vectors as integers, shared by Paillier and masking."""

from __future__ import annotations

import numpy as np

__all__ = ["to_fixed", "from_fixed"]


def to_fixed(values: np.ndarray, frac_bits: int, int_bits: int) -> np.ndarray:
    """``round(values * 2**frac_bits)`` as int64; a ``ValueError`` when ``|values| >= 2**int_bits``.

    Parameters
    ----------
    values : np.ndarray
        (n,) floats.
    frac_bits : int
        Bits after the binary point: the precision is ``2**-frac_bits``.
    int_bits : int
        Bits before it: the range is ``(-2**int_bits, 2**int_bits)``.
    """
    if frac_bits + int_bits > 62:
        raise ValueError(f"frac_bits + int_bits must be <= 62; got {frac_bits} + {int_bits}")
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError("cannot encode non-finite values (NaN or inf) in fixed point")
    peak = float(np.abs(values).max()) if values.size else 0.0
    if peak >= 2.0**int_bits:
        raise ValueError(
            f"a value of magnitude {peak:.4g} does not fit the fixed-point range +-2**{int_bits}; "
            f"raise int_bits (now {int_bits}) in the scheme options"
        )
    return np.round(values * 2.0**frac_bits).astype(np.int64)


def from_fixed(q: np.ndarray, frac_bits: int) -> np.ndarray:
    """Integers back to floats: ``q / 2**frac_bits``."""
    return np.asarray(q, dtype=np.float64) / 2.0**frac_bits
