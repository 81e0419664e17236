"""The ST-PAD benchmark's quick mode runs end to end and reports every contender."""

from __future__ import annotations

import pytest

from physforecast.bench import stpad as bench


@pytest.mark.slow
def test_quick_bench_reports_every_contender_in_and_out_of_distribution():
    report = bench.run(quick=True)
    assert report.startswith("# ST-PAD benchmark")
    for label, _ in bench.CONTENDERS:
        assert f"| {label} |" in report
    for metric in ("rmse", "ns_vorticity_residual", "crps", "spread_skill_ratio"):
        assert f"## {metric} per lead time" in report
    assert "| contender | in 1 | in 2 | ood 1 | ood 2 |" in report
    crps = report.split("## crps per lead time")[1].split("##")[0]
    assert "| fno |" not in crps  # a deterministic model has no CRPS row
    assert "Command: `physforecast bench stpad --quick`" in report
