"""Benchmark: the scorecard in torch against xskillscore on the same arrays.

``physforecast bench metrics`` scores a synthetic ns2d forecast of 1000 samples x 10 lead
times x 64 x 64 with the whole default suite, and times the metrics both libraries have
(RMSE, MSE, MAE, Pearson r, each per sample and lead time over (y, x), then averaged over
samples) in each, checking that the values agree. ``quick=True`` uses a tiny forecast.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable

import numpy as np
import torch
import xarray as xr

from physforecast.metrics import default_suite, score

__all__ = ["run", "OVERLAP"]

#: Metrics computed by both: our name -> xskillscore function name.
OVERLAP = {"rmse": "rmse", "mse": "mse", "mae": "mae", "pearson": "pearson_r"}


def _forecast_pair(s: int, lead: int, n: int, seed: int = 0) -> tuple[xr.Dataset, xr.Dataset]:
    rng = np.random.default_rng(seed)
    truth = rng.standard_normal((s, lead, n, n), dtype=np.float32)
    fc = truth + 0.3 * rng.standard_normal((s, lead, n, n), dtype=np.float32)
    attrs = {
        "system": "ns2d",
        "dx": 1.0 / n,
        "dy": 1.0 / n,
        "dt": 1.0,
        "boundary_conditions": "periodic",
        "parameters": "viscosity",
    }
    coords = {"lead_time": ("lead_time", np.arange(1, lead + 1), {"units": "steps"})}

    def make(values: np.ndarray) -> xr.Dataset:
        return xr.Dataset(
            {
                "vorticity": (("sample", "lead_time", "y", "x"), values),
                "viscosity": (("sample",), np.full(s, 1e-3)),
            },
            coords=coords,
            attrs=attrs,
        )

    return make(fc), make(truth)


def _best_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _xskillscore(fc: xr.Dataset, truth: xr.Dataset) -> dict[str, np.ndarray]:
    import xskillscore as xs

    a, b = fc["vorticity"], truth["vorticity"]
    return {
        ours: getattr(xs, theirs)(a, b, dim=["y", "x"]).mean("sample").values
        for ours, theirs in OVERLAP.items()
    }


def run(quick: bool = False) -> str:
    """Time the default suite and the overlap with xskillscore; return a Markdown report.

    Parameters
    ----------
    quick : bool
        A tiny problem (16 x 4 x 32 x 32) that runs in seconds, for tests.

    Returns
    -------
    str
        Markdown: sizes, a table of timings side by side, the ratio and the largest
        difference between the two libraries' values.
    """
    try:
        import xskillscore
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "physforecast bench metrics needs xskillscore: pip install 'physforecast[bench]'"
        ) from err
    s, lead, n = (16, 4, 32) if quick else (1000, 10, 64)
    repeats = 1 if quick else 2
    fc, truth = _forecast_pair(s, lead, n)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        score(fc.isel(sample=slice(0, 2)), truth.isel(sample=slice(0, 2)))  # warm-up
        t_suite, card = _best_time(lambda: score(fc, truth), repeats)
        t_ours, ours = _best_time(lambda: score(fc, truth, list(OVERLAP)), repeats)
        t_xs, theirs = _best_time(lambda: _xskillscore(fc, truth), repeats)
    finally:
        torch.set_num_threads(threads)
    diff = max(
        float(np.abs(ours["score"].sel(metric=m, variable="vorticity").values - theirs[m]).max())
        for m in OVERLAP
    )
    n_rows = card.sizes["metric"]
    suite = ", ".join(str(m) for m in default_suite(fc))
    lines = [
        "# Metrics benchmark: physforecast (torch) vs xskillscore",
        "",
        f"Forecast: {s} samples x {lead} lead times x {n}x{n}, float32, one variable "
        f"(`vorticity`, system `ns2d`). Best of {repeats} run(s), 1 CPU thread for torch.",
        "",
        f"Default suite ({n_rows} scorecard rows): {suite}.",
        "",
        "| what | physforecast (torch) | xskillscore | xskillscore / torch |",
        "|---|---:|---:|---:|",
        f"| overlap: {', '.join(OVERLAP)} | {t_ours:.3f} s | {t_xs:.3f} s | {t_xs / t_ours:.2f} |",
        f"| whole default suite | {t_suite:.3f} s | - | - |",
        "",
        f"Largest difference between the two libraries on the overlap: {diff:.2e}.",
        "",
        f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"xskillscore {xskillscore.__version__}, {torch.get_num_threads()} torch threads "
        "available.",
        "",
        "Rerun: `physforecast bench metrics`",
    ]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    import sys

    print(run(quick="--quick" in sys.argv))
