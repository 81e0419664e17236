"""The metrics benchmark runs quickly and reports both libraries side by side."""

from __future__ import annotations

import re

from physforecast.bench import metrics as bench


def test_quick_bench_reports_timings_ratio_and_agreement():
    report = bench.run(quick=True)
    assert "| what | physforecast (torch) | xskillscore | physforecast / xskillscore |" in report
    assert "Smoke run" in report
    for start in ("| overlap", "| crps"):
        row = next(line for line in report.splitlines() if line.startswith(start))
        ratio = float(row.rstrip(" |").split("|")[-1].split("x")[0])
        assert ratio > 0
    crps_diff = float(re.search(r"on the CRPS: ([0-9.e+-]+)\.", report).group(1))
    assert crps_diff < 1e-5
    diff = float(re.search(r"on the overlap: ([0-9.e+-]+)\.", report).group(1))
    assert diff < 1e-5  # float32 data, the same definitions
    assert "Rerun: `physforecast bench metrics --quick`" in report
