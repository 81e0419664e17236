"""The scale benchmark's quick mode runs all three parts end to end (about half a minute)."""

from __future__ import annotations

import pytest

from physforecast.bench import scale


@pytest.mark.slow
def test_quick_bench_reports_every_contender_and_writes_the_plot(tmp_path):
    report = scale.run(quick=True, figure_dir=tmp_path)
    assert report.startswith("# Training at scale")
    assert "smoke run" in report
    for label in ("| allreduce |", "| DLCP 5% |", "| random drop 5% |", "| DS-Sync g=2 |"):
        assert label in report
    assert "not measurements" in report and "Fitted Adam (surge) law" in report
    assert "Command: `physforecast bench scale --quick`" in report
    png = tmp_path / scale.FIGURE_NAME
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"![surge curve]({scale.FIGURE_NAME})" in report
