"""Progress of long work that reads well on a terminal and in a log.

On a terminal (or in a notebook) :func:`progress` is a tqdm bar. When stderr is a pipe or
a file (a batch job, ``nohup``, a CI log) tqdm would draw nothing useful, so it is a
:class:`LineProgress` instead: a plain line every tenth of the work (and at the end) with
the count, the elapsed time and the time left.

Examples
--------
>>> with progress(100, "ns2d", enabled=False) as bar:
...     for _ in range(100):
...         bar.update()
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm.auto import tqdm

__all__ = ["progress", "LineProgress"]


class LineProgress:
    """A progress report for logs: one line per tenth of ``total`` (tqdm's interface).

    Parameters
    ----------
    total : int
        Units of work (steps, chunks).
    desc : str
        What is being done, e.g. ``"ns2d"``.
    unit : str
        The unit, in the lines.
    stream : file, optional
        Where the lines go (stderr by default).
    """

    def __init__(
        self, total: int, desc: str, *, unit: str = "steps", stream: TextIO | None = None
    ) -> None:
        self.total, self.desc, self.unit = max(int(total), 1), desc, unit
        self.stream = stream
        self.n = 0
        self._next = 1
        self._start = time.perf_counter()
        self._postfix = ""

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units; print a line when another tenth is done."""
        self.n += n
        tenth = min(10, self.n * 10 // self.total)
        if tenth >= self._next:
            self._next = tenth + 1
            self._line()

    def set_postfix(self, **values: Any) -> None:
        """Values shown at the end of the next line (``loss=...``)."""
        self._postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def _line(self) -> None:
        elapsed = time.perf_counter() - self._start
        left = elapsed / self.n * (self.total - self.n) if self.n else 0.0
        text = (
            f"{self.desc}: {min(self.n, self.total)}/{self.total} {self.unit} "
            f"({100 * min(self.n, self.total) // self.total}%), {elapsed:.0f} s, "
            f"ETA {left:.0f} s"
        )
        if self._postfix:
            text += f", {self._postfix}"
        print(text, file=self.stream or sys.stderr, flush=True)

    def close(self) -> None:
        """Nothing to draw away (the lines stay in the log)."""

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(
    total: int, desc: str, *, enabled: bool = True, unit: str = "steps", leave: bool = False
) -> Any:
    """A progress reporter for ``total`` units of work.

    Parameters
    ----------
    total : int
        Units of work.
    desc : str
        What is being done.
    enabled : bool
        ``False`` reports nothing (a disabled tqdm bar).
    unit : str
        The unit, in the log lines.
    leave : bool
        Keep the terminal bar when done.

    Returns
    -------
    tqdm or LineProgress
        A tqdm bar on a terminal or in a notebook, a :class:`LineProgress` otherwise; both have
        ``update``, ``set_postfix`` and ``close`` and are context managers.
    """
    if not enabled:
        return tqdm(total=total, desc=desc, disable=True)
    if sys.stderr.isatty() or "ipykernel" in sys.modules:  # a terminal or a notebook
        return tqdm(total=total, desc=desc, leave=leave)
    return LineProgress(total, desc, unit=unit)
