"""Benchmarks: each module exposes ``run(quick=False) -> str``, a Markdown report (``physforecast bench <name>``)."""
