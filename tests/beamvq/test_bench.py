"""The BeamVQ benchmark's quick mode runs end to end and reports every forecast kind."""

from __future__ import annotations

from physforecast.bench import beamvq


def test_quick_bench_reports_all_variants():
    report = beamvq.run(quick=True)
    assert report.startswith("# BeamVQ benchmark")
    for _, label in beamvq.KINDS:
        assert f"| fno | {label} |" in report
    assert "| fno | truth |" in report  # the truth's vorticity residual, for scale
    assert "convlstm | 0.4402 -> 0.2745 (-37.6 %)" in report  # the authors' figures beside
    assert "Command: `physforecast bench beamvq --quick`" in report
    rows = [line for line in report.splitlines() if line.startswith("| fno | backbone alone |")]
    assert len(rows) == 2 and "nan" not in rows[0]
