"""Atomic writes: every file the package writes goes through a temporary file beside its
target and ``os.replace``, so a reader (or a crash) never sees half a file.

The temporary name is ``.STEM.<hex>.tmp.SUFFIX`` in the target's directory (the same file
system, so the rename is atomic; the suffix kept for writers that read the format from it).
The first eight hex digits are the writer's process id, so a temporary whose writer is
gone (killed with SIGKILL, the machine rebooted) can be told from one being written:
:func:`remove_orphans` removes the former. A temporary is removed when writing fails,
and :func:`signals_as_exceptions` turns SIGTERM into an exception so that this also
happens when a job is stopped by a scheduler or ``kill``.

Examples
--------
>>> import json, tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "spec.json"
>>> _ = atomic_write_text(path, json.dumps({"a": 1}))
>>> json.loads(path.read_text())
{'a': 1}
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write",
    "atomic_write_text",
    "atomic_write_json",
    "temporary_path",
    "is_temporary",
    "remove_orphans",
    "pid_alive",
    "Terminated",
    "signals_as_exceptions",
]

_TEMPORARY = re.compile(
    r"^\.(?P<stem>.+)\.(?P<pid>[0-9a-f]{8})(?P<rand>[0-9a-f]{8})\.tmp(?P<suffix>(\..*)?)$"
)


def temporary_path(path: str | os.PathLike) -> Path:
    """A fresh temporary name beside ``path``: ``.STEM.<pid><random>.tmp.SUFFIX`` (hex)."""
    path = Path(path)
    tag = f"{os.getpid() & 0xFFFFFFFF:08x}{uuid.uuid4().hex[:8]}"
    return path.with_name(f".{path.stem}.{tag}.tmp{path.suffix}")


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named like a temporary of :func:`atomic_write`."""
    return _TEMPORARY.match(Path(path).name) is not None


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def remove_orphans(
    directory: str | os.PathLike,
    *,
    recursive: bool = False,
    stem: str | None = None,
    everything: bool = False,
    min_age_s: float = 2.0,
) -> list[Path]:
    """Remove the temporaries that no process is writing any more.

    Parameters
    ----------
    directory : path
        Where to look.
    recursive : bool
        Also look in subdirectories.
    stem : str, optional
        Only temporaries of targets with this stem (``ns`` for ``ns.nc``).
    everything : bool
        Remove every temporary, whoever wrote it: right when the caller holds a lock on
        ``directory`` (a run directory), so nobody else can be writing in it.
    min_age_s : float
        Leave temporaries younger than this alone (their writer may have just started).

    Returns
    -------
    list of Path
        What was removed.
    """
    root = Path(directory)
    if not root.is_dir():
        return []
    found = root.rglob(".*.tmp*") if recursive else root.glob(".*.tmp*")
    removed = []
    now = time.time()
    for path in sorted(found):
        match = _TEMPORARY.match(path.name)
        if match is None or (stem is not None and match["stem"] != stem):
            continue
        try:
            age = now - path.lstat().st_mtime
        except FileNotFoundError:
            continue  # its writer finished meanwhile
        own = int(match["pid"], 16) == os.getpid() & 0xFFFFFFFF
        orphan = everything and not own
        orphan = orphan or (not own and not pid_alive(int(match["pid"], 16)) and age >= min_age_s)
        if orphan:
            _remove(path)
            removed.append(path)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Create ``path`` by calling ``write(tmp)`` on a temporary path, then renaming it.

    Parameters
    ----------
    path : path
        The target file (or directory, for a zarr store). Parent directories are created.
    write : callable
        ``write(tmp)`` writes the whole content to ``tmp`` (a file or a directory).

    Returns
    -------
    Path
        ``path``. An existing target is replaced only once the new content is complete;
        the new file gets the usual permissions (``0666`` less the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    old = None
    try:
        write(tmp)
        if tmp.is_dir() and path.exists():
            # os.replace cannot replace a non-empty directory: move the old one aside first
            old = temporary_path(path)
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)
        if old is not None:
            _remove(old)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM (or SIGHUP) inside
    :func:`signals_as_exceptions`. A ``KeyboardInterrupt``, so code that cleans up after
    Ctrl-C cleans up after ``kill`` too."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


@contextlib.contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`Terminated` (SIGINT already
    raises ``KeyboardInterrupt``), so ``finally`` clauses run: temporaries are removed and
    locks released. A no-op outside the main thread. SIGKILL cannot be caught; what it
    leaves behind, :func:`remove_orphans` removes later."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(signum)

    names = ("SIGTERM", "SIGHUP")
    previous = {}
    for name in names:
        if hasattr(signal, name):
            num = getattr(signal, name)
            previous[num] = signal.signal(num, handler)
    try:
        yield
    finally:
        for num, old in previous.items():
            signal.signal(num, old)
