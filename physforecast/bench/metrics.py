"""Benchmark: the scorecard in torch against xskillscore on the same arrays.

``physforecast bench metrics`` scores a synthetic ns2d forecast of 1000 samples x 10 lead
times x 64 x 64 with the whole default suite, and times the metrics both libraries have
(RMSE, MSE, MAE, Pearson r, each per sample and lead time over (y, x), then averaged over
samples; and the ensemble CRPS of an 8-member forecast) in each, checking that the values
agree. Contenders run in interleaved rounds after a warm-up of each, with the job's thread
policy (:func:`physforecast.threads.auto_threads`); ratios are physforecast / xskillscore
(below 1: physforecast is faster). ``quick=True`` is a smoke run on a tiny forecast.
"""

from __future__ import annotations

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


def _xskillscore(fc: xr.Dataset, truth: xr.Dataset) -> dict[str, np.ndarray]:
    import xskillscore as xs

    a, b = fc["vorticity"], truth["vorticity"]
    return {
        ours: getattr(xs, theirs)(a, b, dim=["y", "x"]).mean("sample").values
        for ours, theirs in OVERLAP.items()
    }


def _crps_ours(fc: xr.Dataset, truth: xr.Dataset) -> np.ndarray:
    from physforecast.metrics import crps

    pred = torch.from_numpy(fc["vorticity"].transpose("sample", "lead_time", "member", ...).values)
    target = torch.from_numpy(truth["vorticity"].values)
    return crps(pred, target, member_dim=2, fair=False).double().mean(0).numpy()


def _crps_theirs(fc: xr.Dataset, truth: xr.Dataset) -> np.ndarray:
    import xskillscore as xs

    out = xs.crps_ensemble(truth["vorticity"], fc["vorticity"], member_dim="member", dim=["y", "x"])
    return out.mean("sample").values


def _ensemble(s: int, lead: int, n: int, members: int) -> tuple[xr.Dataset, xr.Dataset]:
    rng = np.random.default_rng(1)
    truth = rng.standard_normal((s, lead, n, n), dtype=np.float32)
    noise = 0.3 * rng.standard_normal((s, lead, members, n, n), dtype=np.float32)
    dims = ("sample", "lead_time", "y", "x")
    fc = xr.Dataset(
        {"vorticity": (("sample", "lead_time", "member", "y", "x"), truth[:, :, None] + noise)}
    )
    return fc, xr.Dataset({"vorticity": (dims, truth)})


def run(quick: bool = False) -> str:
    """Time the default suite and the overlap with xskillscore; return a Markdown report.

    Parameters
    ----------
    quick : bool
        A smoke run on a tiny problem (16 x 4 x 32 x 32), for tests.

    Returns
    -------
    str
        Markdown: sizes, a table of timings side by side (medians and ranges of the
        interleaved rounds), the ratio physforecast / xskillscore and the largest
        difference between the two libraries' values.
    """
    try:
        import xskillscore
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "physforecast bench metrics needs xskillscore: pip install 'physforecast[bench]'"
        ) from err
    from physforecast.threads import auto_threads

    from ._timing import interleave, machine, median, ratio_cell, smoke_note, spread

    s, lead, n = (16, 4, 32) if quick else (1000, 10, 64)
    es, elead, en, members = (8, 2, 16, 4) if quick else (100, 5, 32, 8)
    rounds = 1 if quick else 3
    fc, truth = _forecast_pair(s, lead, n)
    efc, etruth = _ensemble(es, elead, en, members)
    threads = torch.get_num_threads()
    torch.set_num_threads(auto_threads())
    used = torch.get_num_threads()
    results: dict[str, object] = {}
    try:

        def keep(name, fn):
            def go():
                results[name] = fn()

            return go

        times = interleave(
            {
                "ours": keep("ours", lambda: score(fc, truth, list(OVERLAP))),
                "theirs": keep("theirs", lambda: _xskillscore(fc, truth)),
                "crps_ours": keep("crps_ours", lambda: _crps_ours(efc, etruth)),
                "crps_theirs": keep("crps_theirs", lambda: _crps_theirs(efc, etruth)),
            },
            rounds,
        )
        suite_times = interleave({"suite": keep("card", lambda: score(fc, truth))}, rounds)
    finally:
        torch.set_num_threads(threads)
    ours, theirs, card = results["ours"], results["theirs"], results["card"]
    diff = max(
        float(np.abs(ours["score"].sel(metric=m, variable="vorticity").values - theirs[m]).max())
        for m in OVERLAP
    )
    crps_diff = float(np.abs(results["crps_ours"] - results["crps_theirs"]).max())
    n_rows = card.sizes["metric"]
    suite = ", ".join(str(m) for m in default_suite(fc))

    def row(label: str, a: list[float], b: list[float]) -> str:
        return (
            f"| {label} | {median(a):.3f} s ({spread(a)}) | {median(b):.3f} s ({spread(b)}) "
            f"| {ratio_cell(a, b)} |"
        )

    lines = [
        "# Metrics benchmark: physforecast (torch) vs xskillscore",
        "",
        *smoke_note(quick),
        f"Forecast: {s} samples x {lead} lead times x {n}x{n}, float32, one variable "
        f"(`vorticity`, system `ns2d`); ensemble for the CRPS: {es} samples x {elead} lead "
        f"times x {members} members x {en}x{en}. {rounds} interleaved round(s) after a "
        f"warm-up of each contender, {used} torch thread(s); seconds are medians (min-max).",
        "",
        f"Default suite ({n_rows} scorecard rows): {suite}.",
        "",
        "| what | physforecast (torch) | xskillscore | physforecast / xskillscore |",
        "|---|---:|---:|---:|",
        row(f"overlap: {', '.join(OVERLAP)}", times["ours"], times["theirs"]),
        row("crps (ensemble, not fair)", times["crps_ours"], times["crps_theirs"]),
        f"| whole default suite | {median(suite_times['suite']):.3f} s | - | - |",
        "",
        f"Largest difference between the two libraries on the overlap: {diff:.2e}. Largest "
        f"difference on the CRPS: {crps_diff:.2e}.",
        "",
        f"Machine: {machine(used)}; xskillscore {xskillscore.__version__}.",
        "",
        "Rerun: `physforecast bench metrics" + (" --quick`" if quick else "`"),
    ]
    return "\n".join(lines) + "\n"
