"""Secure aggregation: encrypted sums equal plaintext sums; the coordinator holds no secret."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from physforecast.federated.secure import SCHEMES, RoundContext, create_scheme, secure_sum


def _vectors(n=5000, parties=3, scale=1e-3, seed=0):
    rng = np.random.default_rng(seed)
    return {f"p{i}": rng.normal(size=n) * scale for i in range(parties)}


def test_every_scheme_is_registered():
    assert SCHEMES.names() == ["ckks", "masking", "none", "paillier"]


def test_ckks_sum_matches_plaintext_within_1e_5_relative():
    vectors = _vectors(n=9000)  # three ciphertexts of 4096 slots each
    ref = np.sum(list(vectors.values()), axis=0)
    out = secure_sum(create_scheme("ckks"), vectors)
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-5
    # the default parameters do much better than the requirement
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-8


def test_paillier_sum_is_exact_at_its_fixed_point_precision():
    scheme = create_scheme("paillier", key_bits=1024, frac_bits=32)
    vectors = _vectors(n=300)
    out = secure_sum(scheme, vectors)
    # the exact sum of the fixed-point integers, computed with python ints
    q = [sum(int(round(v[i] * 2**32)) for v in vectors.values()) for i in range(300)]
    assert np.array_equal(out, np.array(q, dtype=np.float64) / 2**32)
    ref = np.sum(list(vectors.values()), axis=0)
    assert np.abs(out - ref).max() <= 3 * 2.0**-33 + 1e-18


def test_paillier_packs_many_values_per_ciphertext():
    scheme = create_scheme("paillier", key_bits=2048)
    assert scheme.values_per_ciphertext() == 2046 // (1 + 7 + 32 + 4)


def test_pairwise_masks_cancel_exactly_and_hide_each_update():
    scheme = create_scheme("masking")
    vectors = _vectors(n=1000)
    out = secure_sum(scheme, vectors, round=4)
    q = np.sum([np.round(v * 2**32).astype(np.int64) for v in vectors.values()], axis=0)
    assert np.array_equal(out, q / 2**32)
    keys = scheme.keygen()
    party = scheme.party(keys.party)
    names = tuple(vectors)
    masked = party.encrypt(vectors["p0"], RoundContext(4, "p0", names)).view(np.int64) / 2**32
    # alone, a masked update looks nothing like the update
    assert abs(np.corrcoef(masked, vectors["p0"])[0, 1]) < 0.1
    with pytest.raises(ValueError, match="at least two participants"):
        party.encrypt(vectors["p0"], RoundContext(4, "p0", ("p0",)))


def test_plain_baseline_sums_in_float32():
    vectors = _vectors(n=100)
    out = secure_sum(create_scheme("none"), vectors)
    assert np.allclose(out, np.sum(list(vectors.values()), axis=0), rtol=1e-5, atol=1e-9)


def test_coordinator_keys_hold_no_secret():
    import tenseal as ts

    ckks = create_scheme("ckks").keygen()
    ctx = ts.context_from(ckks.coordinator)
    assert not ctx.has_secret_key() and not ctx.has_public_key()
    assert ts.context_from(ckks.party).has_secret_key()
    with pytest.raises(ValueError, match="must not hold the secret key"):
        create_scheme("ckks").aggregator(ckks.party)
    paillier = create_scheme("paillier", key_bits=512).keygen()
    assert set(json.loads(paillier.coordinator)) == {"n"}
    with pytest.raises(ValueError, match="public modulus only"):
        create_scheme("paillier").aggregator(paillier.party)
    assert create_scheme("masking").keygen().coordinator == b""


def test_ciphertexts_do_not_contain_the_plaintext():
    v = np.linspace(-1e-2, 1e-2, 512)
    ctx = RoundContext(0, "p0", ("p0", "p1"))
    for name, opts in (("ckks", {}), ("paillier", {"key_bits": 512}), ("masking", {})):
        scheme = create_scheme(name, **opts)
        cipher = scheme.party(scheme.keygen().party)
        blob = b"".join(cipher.serialize(cipher.encrypt(v, ctx)))
        for dtype in ("<f4", "<f8"):
            assert v[100:108].astype(dtype).tobytes() not in blob, (name, dtype)


def test_values_outside_the_fixed_point_range_are_refused():
    scheme = create_scheme("paillier", key_bits=512, int_bits=3)
    cipher = scheme.party(scheme.keygen().party)
    with pytest.raises(ValueError, match="raise int_bits"):
        cipher.encrypt(np.array([0.0, 9.0]), RoundContext(0, "a", ("a",)))


def test_missing_library_names_the_federated_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tenseal", None)
    with pytest.raises(ImportError, match=r"physforecast\[federated\]"):
        create_scheme("ckks").keygen()
    monkeypatch.setitem(sys.modules, "phe", None)
    with pytest.raises(ImportError, match=r"physforecast\[federated\]"):
        create_scheme("paillier").keygen()
