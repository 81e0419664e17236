"""Counters of a running server: requests by status, latency percentiles, batch sizes, n_active.

Thread-safe: the HTTP handlers record requests and the batcher thread records model
calls. Latency percentiles are over the last ``window`` requests.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Any

import numpy as np

__all__ = ["ServeStats"]


class ServeStats:
    """What ``GET /metrics`` reports.

    Parameters
    ----------
    window : int
        Requests kept for the latency percentiles.
    """

    def __init__(self, window: int = 4096) -> None:
        self._lock = threading.Lock()
        self._started = time.time()
        self._status: Counter[int] = Counter()
        self._latency_ms: deque[float] = deque(maxlen=int(window))
        self._batch_sizes: Counter[int] = Counter()
        self._n_active: Counter[int] = Counter()
        self._last_n_active: int | None = None
        self._rows = 0

    def record_request(self, status: int, seconds: float) -> None:
        """A finished request: its HTTP status and its time from arrival to response."""
        with self._lock:
            self._status[int(status)] += 1
            if status < 400:
                self._latency_ms.append(seconds * 1e3)

    def record_batch(self, rows: int, n_active: int | None) -> None:
        """A model call on ``rows`` windows with ``n_active`` students (``None``: a teacher)."""
        with self._lock:
            self._batch_sizes[int(rows)] += 1
            self._rows += int(rows)
            if n_active is not None:
                self._n_active[int(n_active)] += 1
                self._last_n_active = int(n_active)

    def snapshot(self, **extra: Any) -> dict[str, Any]:
        """A JSON-safe report; ``extra`` entries (queue state, model) are added as given."""
        with self._lock:
            lat = np.asarray(self._latency_ms, dtype=np.float64)
            batches = sum(self._batch_sizes.values())
            report: dict[str, Any] = {
                "uptime_s": time.time() - self._started,
                "requests": {
                    "total": sum(self._status.values()),
                    "ok": sum(v for k, v in self._status.items() if k < 400),
                    "rejected": self._status.get(503, 0),
                    "by_status": {str(k): v for k, v in sorted(self._status.items())},
                },
                "latency_ms": {
                    "count": int(lat.size),
                    **(
                        {
                            "mean": float(lat.mean()),
                            "p50": float(np.percentile(lat, 50)),
                            "p90": float(np.percentile(lat, 90)),
                            "p99": float(np.percentile(lat, 99)),
                            "max": float(lat.max()),
                        }
                        if lat.size
                        else {}
                    ),
                },
                "batches": {
                    "count": batches,
                    "rows": self._rows,
                    "mean_size": self._rows / batches if batches else 0.0,
                    "max_size": max(self._batch_sizes, default=0),
                    "sizes": {str(k): v for k, v in sorted(self._batch_sizes.items())},
                },
                "n_active": {
                    "last": self._last_n_active,
                    "counts": {str(k): v for k, v in sorted(self._n_active.items())},
                },
            }
        for key, value in extra.items():
            if isinstance(value, dict) and isinstance(report.get(key), dict):
                report[key].update(value)
            else:
                report[key] = value
        return report
