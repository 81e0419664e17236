"""The speed benches run (smoke runs) and say so; peak memory of a whole train job does
not grow with the store (slow)."""

from __future__ import annotations

import pytest

from physforecast.cli import main


@pytest.mark.slow
@pytest.mark.parametrize("name", ["data", "train", "forecast"])
def test_smoke_runs_report_ratios_and_say_they_are_smoke_runs(name):
    from importlib import import_module

    report = import_module(f"physforecast.bench.{name}").run(quick=True)
    assert "Smoke run" in report and "load average" in report
    assert f"Rerun: `physforecast bench {name} --quick`" in report
    assert "x (" in report  # ratios with their range


@pytest.mark.slow
def test_bench_all_writes_one_page_per_bench(tmp_path):
    assert main(["bench", "all", "--only", "data", "--quick", "--docs", str(tmp_path)]) == 0
    page = (tmp_path / "benchmarks_data.md").read_text()
    assert page.startswith("# Data loading benchmark") and "Smoke run" in page


def test_bench_all_refuses_an_unknown_bench(tmp_path, capsys):
    assert main(["bench", "all", "--only", "dta", "--docs", str(tmp_path)]) != 0
    assert "Did you mean 'data'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_peak_memory_of_train_is_flat_across_store_sizes(tmp_path):
    """Stores of 1x, 4x and 16x the data: the job's peak RSS stays within 15 %."""
    from physforecast.bench.data import make_store
    from physforecast.bench.train import peak_rss

    peaks = []
    for i, n in enumerate((6, 24, 96)):
        store = make_store(tmp_path / f"s{i}.zarr", n, 40, 48, seed=i)
        peaks.append(peak_rss(store, tmp_path / f"run{i}"))
    assert max(peaks) < 1.15 * min(peaks), peaks
