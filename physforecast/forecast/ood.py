"""In- and out-of-distribution scorecards side by side (runs with ``data.ood``).

:func:`score_splits` scores the test split and every OOD test split of a run's
:class:`~physforecast.data.prepare.PreparedData` with the same model and suite, and
stacks the scorecards along a ``split`` dim (``in``, ``test_ood``, ``test_ood_below``,
``test_ood_above``); :func:`format_side_by_side` prints one column per split.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import xarray as xr

from physforecast.data.windows import ForecastWindows

__all__ = ["TEST_SPLITS", "score_splits", "stack_scorecards", "format_side_by_side"]

#: The test splits of an OOD run, as the ``split`` labels of the stacked scorecard.
TEST_SPLITS = ("test_ood", "test_ood_below", "test_ood_above")


def stack_scorecards(cards: Mapping[str, xr.Dataset]) -> xr.Dataset:
    """Scorecards of several splits along a new ``split`` dim (rows outer-joined)."""
    names = list(cards)
    stacked = xr.concat([cards[n].expand_dims(split=[n]) for n in names], dim="split", join="outer")
    stacked.attrs = dict(next(iter(cards.values())).attrs)
    stacked.attrs["n_samples_per_split"] = [int(cards[n].attrs.get("n_samples", 0)) for n in names]
    return stacked


def score_splits(
    card_of: Callable[[ForecastWindows], xr.Dataset],
    test: ForecastWindows,
    extra: Mapping[str, ForecastWindows],
    in_card: xr.Dataset | None = None,
) -> xr.Dataset:
    """Score the in-distribution test split and the OOD test splits side by side.

    Parameters
    ----------
    card_of : callable
        ``card_of(windows) -> scorecard`` of a split
        (:func:`~physforecast.forecast.windows.score_windows` with the run's model, which
        streams the split in chunks).
    test : ForecastWindows
        The in-distribution test split.
    extra : mapping
        The OOD splits (``PreparedData.extra``); the :data:`TEST_SPLITS` among them are
        scored.
    in_card : xr.Dataset, optional
        The test split's scorecard when it is already computed.

    Returns
    -------
    xr.Dataset
        ``score (split, metric, lead_time, variable)`` and ``summary (split, metric,
        variable)``.
    """
    cards = {"in": in_card if in_card is not None else card_of(test)}
    for name in TEST_SPLITS:
        if name in extra:
            cards[name] = card_of(extra[name])
    return stack_scorecards(cards)


def format_side_by_side(card: xr.Dataset, *, digits: int = 4) -> str:
    """A text table of the ``summary`` (mean over lead times) with one column per split,
    and the out/in ratio of the whole OOD test split."""
    splits = [str(s) for s in card["split"].values]
    header = ["metric", "variable", *splits]
    ratio = "test_ood" in splits and "in" in splits
    if ratio:
        header.append("ood/in")
    summ = card["summary"]
    body = []

    def fmt(v: float) -> str:
        return "-" if not np.isfinite(v) else f"{v:.{digits}g}"

    for metric in card["metric"].values.tolist():
        for var in card["variable"].values.tolist():
            vals = [float(summ.sel(split=s, metric=metric, variable=var)) for s in splits]
            if not np.isfinite(vals).any():
                continue
            row = [str(metric), str(var), *[fmt(v) for v in vals]]
            if ratio:
                a = vals[splits.index("test_ood")]
                b = vals[splits.index("in")]
                row.append(fmt(a / b) if np.isfinite(a) and np.isfinite(b) and b != 0 else "-")
            body.append(row)
    widths = [max(len(r[c]) for r in [header, *body]) for c in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if k < 2 else c.rjust(w) for k, (c, w) in enumerate(zip(r, widths)))
        for r in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
