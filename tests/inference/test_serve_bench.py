"""The serving benchmark's quick mode runs end to end and reports every contender."""

from __future__ import annotations

import pytest

pytest.importorskip("httpx")


@pytest.mark.timeout(300)
def test_quick_bench_reports_latency_accuracy_and_http():
    from physforecast.bench import serve

    report = serve.run(quick=True)
    assert report.startswith("# Serving: Academus students against their teacher")
    assert "Quick setting: a smoke run" in report
    for row in ("| teacher | - |", "| students (output) | 2 |", "| students (stacked) | 1 |"):
        assert row in report
    http = [line for line in report.splitlines() if line.startswith("| students (output), ")]
    assert len(http) == 2 and all(" 0 |" in line[-4:] for line in http)  # no 503 in the burst
    assert "nan" not in report.split("## Over HTTP")[0]
    assert "Command: `physforecast bench serve --quick`" in report
