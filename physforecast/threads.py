"""How many threads torch's intra-op pool gets: one policy for training, evaluation,
forecasting and the simulators.

Torch starts with as many threads as the machine has cores. That is wrong as soon as
anything else runs: DataLoader workers, other ranks of a distributed run on the same
node, or other jobs on a shared machine, and an oversubscribed pool is slower than one
thread (a main job measured 5.4x slower with torch's default than with 1 thread on a
busy 2-core machine, 1.3x faster on a quiet one). :func:`auto_threads` chooses:

1. ``OMP_NUM_THREADS`` when it is set: whoever launched the process decided;
2. otherwise the cores this process may run on (``os.sched_getaffinity``, so a
   ``taskset`` or a container's CPU set counts), shared among the local processes of a
   distributed run (``LOCAL_WORLD_SIZE``), less one per DataLoader worker, and no more
   than the cores the rest of the machine leaves idle (the 1-minute load average, not
   counting this process);
3. at least 1.

``train.threads`` sets the number for a run (0 or unset: this automatic choice); the
simulators run with the automatic choice for no workers (they run alone, before
training). Importing this module loads no torch.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator

__all__ = ["available_cores", "total_cores", "auto_threads", "resolve_threads", "use_threads"]


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity; ``os.cpu_count()`` elsewhere)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def auto_threads(workers: int = 0, *, load: float | None = None) -> int:
    """The automatic thread count (see the module's docstring).

    Parameters
    ----------
    workers : int
        DataLoader worker processes feeding this process (each keeps about one core busy).
    load : float, optional
        The machine's recent load (runnable processes); the 1-minute load average by
        default.
    """
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    cores = available_cores()
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    share = cores // local - max(0, int(workers))
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = 0.0
    others = max(0.0, float(load) - 1.0)  # this process counts itself once in the load
    idle = total_cores() - math.ceil(others)
    return max(1, min(share, idle))


def total_cores() -> int:
    """Cores of the machine (the load average counts processes on all of them)."""
    return max(1, os.cpu_count() or 1)


def resolve_threads(setting: int | None, workers: int = 0) -> int:
    """``setting`` when it is a positive number, else :func:`auto_threads`."""
    if setting is not None and int(setting) > 0:
        return int(setting)
    return auto_threads(workers)


@contextlib.contextmanager
def use_threads(n: int) -> Iterator[int]:
    """Run the body with torch's intra-op pool at ``n`` threads, restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield int(n)
    finally:
        torch.set_num_threads(before)
