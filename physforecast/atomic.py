"""Atomic writes: every file the package writes goes through a temporary file beside its
target and ``os.replace``, so a reader (or a crash) never sees half a file.

The temporary name is ``.STEM.<hex>.tmp.SUFFIX`` in the target's directory (the same file
system, so the rename is atomic; the suffix kept for writers that read the format from it);
it is removed when writing fails.

Examples
--------
>>> import json, tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "spec.json"
>>> _ = atomic_write_text(path, json.dumps({"a": 1}))
>>> json.loads(path.read_text())
{'a': 1}
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_json", "temporary_path"]


def temporary_path(path: str | os.PathLike) -> Path:
    """A fresh temporary name beside ``path``: ``.STEM.<hex>.tmp.SUFFIX``."""
    path = Path(path)
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


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
        ``path``. An existing target is replaced only once the new content is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        write(tmp)
        if tmp.is_dir() and path.exists():
            _remove(path)  # os.replace cannot replace a non-empty directory
        os.replace(tmp, path)
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
