"""The generative benchmark: its spectrum-error measure on exact samples, and the quick run."""

from __future__ import annotations

import pytest
import torch

from physforecast.bench import generative as bench


def test_spectrum_error_is_small_for_exact_samples_and_large_for_white_noise():
    lam = bench._grf_variances(8)
    z = torch.randn(4096, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = bench._in_modes(z, lam.sqrt())
    assert bench._spectrum_error(exact, lam) < 0.05
    assert bench._spectrum_error(z, lam) > 1.0


def test_exact_flow_of_the_random_field_converges():
    pytest.importorskip("diffusers")
    from physforecast.generative import FlowMatching

    lam = bench._grf_variances(8)
    z = torch.randn(1024, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    few = FlowMatching().sample(bench._flow_exact(lam), z, steps=4)
    many = FlowMatching().sample(bench._flow_exact(lam), z, steps=32, solver="heun")
    assert bench._spectrum_error(many, lam) < 0.08 < bench._spectrum_error(few, lam)


@pytest.mark.slow
def test_quick_bench_reports_every_section():
    report = bench.run(quick=True)
    for heading in ("exact model", "learned models", "VAE per compression", "block throughput"):
        assert heading in report
    assert "Ratio (diffusers time / ours)" in report
