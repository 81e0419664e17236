"""Distributed setup: one entry point for ``torchrun``, SLURM's ``srun`` and a single process.

:func:`init_distributed` reads the launcher's environment (:func:`detect_launch`), creates
the default process group (NCCL on CUDA, gloo on CPU) and returns a :class:`DistInfo`.
The same script therefore runs unchanged as ``python train.py``, ``torchrun --nnodes 2
--nproc-per-node 4 train.py`` or ``srun --ntasks-per-node 4 python train.py``.

:func:`launch_local` starts ``world_size`` processes on this machine with gloo on
``127.0.0.1`` and returns what each returned: the way tests and benchmarks run real
multi-process code on one host, with a bounded wait.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import queue as queue_module
import re
import socket
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "LaunchEnv",
    "detect_launch",
    "first_slurm_host",
    "init_distributed",
    "is_main_process",
    "cleanup_distributed",
    "free_port",
    "launch_local",
]

#: Port used for SLURM jobs when ``MASTER_PORT`` is unset: ``base + job id % span``.
_SLURM_PORT_BASE, _SLURM_PORT_SPAN = 15000, 20000


class DistInfo:
    """Rank, world size and device of this process."""

    def __init__(
        self,
        rank: int = 0,
        world_size: int = 1,
        local_rank: int = 0,
        device: torch.device | None = None,
    ):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.device = device or torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def __repr__(self) -> str:
        return (
            f"DistInfo(rank={self.rank}, world_size={self.world_size}, "
            f"local_rank={self.local_rank}, device={self.device})"
        )


@dataclass(frozen=True)
class LaunchEnv:
    """Where this process sits in a distributed launch, read from the environment.

    Attributes
    ----------
    launcher : str
        ``"single"`` (one process), ``"torchrun"`` (torch elastic), ``"env"`` (``RANK``
        and ``WORLD_SIZE`` set by hand or by another launcher) or ``"slurm"`` (``srun``).
    rank, world_size, local_rank : int
        Global rank, number of processes, rank on this node.
    master_addr : str or None
        Host of rank 0 (``MASTER_ADDR``); for SLURM the first host of the job's nodes.
    master_port : int or None
        Rendezvous port (``MASTER_PORT``); for SLURM derived from the job id when unset.
    """

    launcher: str
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def first_slurm_host(nodelist: str) -> str:
    """The first host name of a SLURM node list (``SLURM_NODELIST``).

    SLURM compresses node lists: ``"gpu[01-04,07],cpu3"`` names gpu01, gpu02, gpu03,
    gpu04, gpu07 and cpu3. Zero padding is kept; several bracket groups in one name
    (``"rack[1-2]-n[01-02]"``) take the first value of each.

    Examples
    --------
    >>> first_slurm_host("gpu[01-04,07],cpu3")
    'gpu01'
    >>> first_slurm_host("rack[2-3]-n[08-09]")
    'rack2-n08'
    """
    text = nodelist.strip()
    if not text:
        raise ValueError("SLURM_NODELIST is empty; expected host names such as 'node[01-04]'")
    depth, end = 0, len(text)
    for i, ch in enumerate(text):  # the first item: up to the first comma outside brackets
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            end = i
            break
    first = text[:end]
    host = re.sub(r"\[([^\]]*)\]", lambda m: re.split(r"[-,]", m.group(1))[0], first)
    if not host or "[" in host or "]" in host:
        raise ValueError(f"cannot read a host name from SLURM_NODELIST={nodelist!r}")
    return host


def _int(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    value = environ.get(name)
    if value is None:
        if default is None:
            raise KeyError(name)
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def detect_launch(environ: Mapping[str, str] | None = None) -> LaunchEnv:
    """Read how this process was launched from ``environ`` (``os.environ`` by default).

    Order of precedence:

    1. ``RANK`` and ``WORLD_SIZE`` set (``torchrun``, also when ``srun`` starts one
       ``torchrun`` per node): those values, ``launcher="torchrun"`` when torch elastic's
       ``TORCHELASTIC_RUN_ID`` is present, else ``"env"``.
    2. A SLURM job step started by ``srun`` (``SLURM_PROCID`` and ``SLURM_STEP_NUM_TASKS``):
       rank ``SLURM_PROCID``, world size ``SLURM_STEP_NUM_TASKS``, local rank
       ``SLURM_LOCALID``, ``MASTER_ADDR`` the first host of ``SLURM_STEP_NODELIST`` (or
       ``SLURM_JOB_NODELIST`` / ``SLURM_NODELIST``) unless set, ``MASTER_PORT`` from the
       job id unless set.
    3. Otherwise a single process. A batch script of a many-task allocation that runs
       ``python`` without ``srun`` is a single process too (with a warning), so that it
       never waits for peers that were not started.
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        launcher = "torchrun" if "TORCHELASTIC_RUN_ID" in env else "env"
        port = env.get("MASTER_PORT")
        return LaunchEnv(
            launcher,
            rank=_int(env, "RANK"),
            world_size=_int(env, "WORLD_SIZE"),
            local_rank=_int(env, "LOCAL_RANK", 0),
            master_addr=env.get("MASTER_ADDR"),
            master_port=int(port) if port else None,
        )
    if "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env:
        world = _int(env, "SLURM_STEP_NUM_TASKS")
        nodelist = (
            env.get("SLURM_STEP_NODELIST")
            or env.get("SLURM_JOB_NODELIST")
            or env.get("SLURM_NODELIST")
        )
        addr = env.get("MASTER_ADDR") or (first_slurm_host(nodelist) if nodelist else None)
        if addr is None and world > 1:
            raise RuntimeError(
                "SLURM step with several tasks but no SLURM_NODELIST and no MASTER_ADDR; "
                "export MASTER_ADDR=<host of rank 0> before srun"
            )
        port = env.get("MASTER_PORT")
        job = _int(env, "SLURM_JOB_ID", 0)
        return LaunchEnv(
            "slurm",
            rank=_int(env, "SLURM_PROCID"),
            world_size=world,
            local_rank=_int(env, "SLURM_LOCALID", 0),
            master_addr=addr,
            master_port=int(port) if port else _SLURM_PORT_BASE + job % _SLURM_PORT_SPAN,
        )
    if _int(env, "SLURM_NTASKS", 1) > 1 and "SLURM_PROCID" in env:
        warnings.warn(
            f"inside a SLURM allocation of {env['SLURM_NTASKS']} tasks but not started by srun: "
            "running as a single process. Launch with `srun python ...` to use all tasks.",
            stacklevel=2,
        )
    return LaunchEnv("single")


def init_distributed(device: str = "auto") -> DistInfo:
    """Create the default process group when launched on several processes.

    Works under ``torchrun`` (any number of nodes), under ``srun`` and as one process
    (see :func:`detect_launch`). Uses NCCL on CUDA and gloo on CPU. For SLURM it exports
    ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` before the
    ``env://`` rendezvous. On CUDA, process ``local_rank`` takes device
    ``local_rank % device_count`` (so one GPU per task, as bound by ``--gpus-per-task``,
    works too).

    Parameters
    ----------
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.

    Returns
    -------
    DistInfo
        Rank, world size, local rank and the device of this process.
    """
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    launch = detect_launch()
    if not launch.distributed:
        return DistInfo(device=torch.device("cuda" if use_cuda else "cpu"))
    if launch.launcher == "slurm":
        os.environ.update(
            RANK=str(launch.rank),
            WORLD_SIZE=str(launch.world_size),
            LOCAL_RANK=str(launch.local_rank),
            MASTER_ADDR=str(launch.master_addr),
            MASTER_PORT=str(launch.master_port),
        )
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            rank=launch.rank,
            world_size=launch.world_size,
        )
    if use_cuda:
        dev = torch.device(f"cuda:{launch.local_rank % torch.cuda.device_count()}")
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    return DistInfo(launch.rank, launch.world_size, launch.local_rank, dev)


def is_main_process() -> bool:
    """True on rank 0 or when not distributed."""
    return not dist.is_initialized() or dist.get_rank() == 0


def cleanup_distributed() -> None:
    """Destroy the process group if one was created."""
    if dist.is_initialized():
        dist.destroy_process_group()


# -- several processes on this machine -------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _noop() -> None:
    return None


def _local_worker(
    rank: int,
    world_size: int,
    fn: Callable[..., Any],
    args: Sequence[Any],
    port: int,
    threads: int,
    timeout: float,
    results: Any,
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    torch.set_num_threads(threads)
    if "dask" in sys.modules:
        # a forked child inherits dask's thread pool without its threads: computing
        # through it would wait forever
        import dask

        dask.config.set(scheduler="synchronous")
    try:
        dist.init_process_group(
            "gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout)
        )
        out = fn(rank, world_size, *args)
        buf = io.BytesIO()
        torch.save(out, buf)
        results.put((rank, True, buf.getvalue()))
    except BaseException:  # noqa: BLE001 - every failure goes back to the parent
        results.put((rank, False, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch_local(
    fn: Callable[..., Any],
    world_size: int,
    args: Sequence[Any] = (),
    *,
    timeout: float = 120.0,
    start_method: str = "spawn",
    threads: int = 1,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` gloo processes on 127.0.0.1.

    Each process gets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and a free
    ``MASTER_PORT``, joins the default gloo process group, runs ``fn`` and sends its return
    value back (through ``torch.save``: tensors, numbers, strings, and lists, tuples and
    dicts of them).

    Parameters
    ----------
    fn : callable
        A module-level function (picklable when ``start_method="spawn"``).
    world_size : int
        Number of processes, at least 1.
    args : sequence
        Extra positional arguments of ``fn``.
    timeout : float
        Seconds to wait for all processes; on expiry they are killed and a
        ``TimeoutError`` is raised.
    start_method : str
        ``"spawn"`` (safe everywhere) or ``"fork"`` (much faster start on Linux: the
        processes inherit the parent's imports, including the ones DDP makes lazily,
        which this function makes once in the parent).
    threads : int
        ``torch.set_num_threads`` in each process.

    Returns
    -------
    list
        ``fn``'s return value of each rank, in rank order.

    Raises
    ------
    RuntimeError
        When a process fails; the message holds its traceback.
    TimeoutError
        When the processes do not finish within ``timeout`` seconds.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1; got {world_size}")
    ctx = multiprocessing.get_context(start_method)
    if start_method == "fork":
        # DDP's constructor imports torch.compile's machinery (seconds of CPU); importing
        # it once here lets every forked process inherit it instead of importing its own.
        torch.compiler.disable(_noop)
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(
            target=_local_worker,
            args=(r, world_size, fn, tuple(args), port, threads, timeout, results),
            daemon=True,
        )
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    outputs: dict[int, Any] = {}
    try:
        while len(outputs) < world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"launch_local: {world_size - len(outputs)} of {world_size} processes did "
                    f"not finish within {timeout:.0f} s (ranks done: {sorted(outputs)})"
                )
            try:
                rank, ok, payload = results.get(timeout=min(remaining, 1.0))
            except queue_module.Empty:
                dead = [i for i, p in enumerate(procs) if p.exitcode not in (None, 0)]
                missing = [i for i in dead if i not in outputs]
                if missing:
                    raise RuntimeError(
                        f"launch_local: rank {missing[0]} exited with code "
                        f"{procs[missing[0]].exitcode} without a result"
                    ) from None
                continue
            if not ok:
                raise RuntimeError(f"launch_local: rank {rank} failed:\n{payload}")
            outputs[rank] = torch.load(io.BytesIO(payload), weights_only=True)
        for p in procs:
            p.join(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        results.close()
    return [outputs[r] for r in range(world_size)]
