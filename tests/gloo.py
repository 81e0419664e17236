"""Run a test function in several processes of a gloo process group on 127.0.0.1."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_rank_env(rank: int, world: int, port: int) -> None:
    """The environment ``torchrun`` would give process ``rank`` of ``world``."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )


def run_ranks(
    target: Callable[..., None], world: int, *args: Any, timeout: float = 300
) -> dict[int, Any]:
    """Start ``target(rank, world, port, *args, queue)`` in ``world`` spawned processes.

    Each process puts ``(rank, result)`` on the queue; returns ``{rank: result}`` once all
    have answered and exited with code 0 (asserted), each wait bounded by ``timeout``.
    """
    port = free_port()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=target, args=(r, world, port, *args, queue)) for r in range(world)]
    for p in procs:
        p.start()
    try:
        results = dict(queue.get(timeout=timeout) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    assert [p.exitcode for p in procs] == [0] * world
    return results
