"""The files a federated run writes, named in one place.

Layout under the output directory ``OUT``::

    OUT/federated.json                  config, roles, per-party results, setup costs
    OUT/profile.json                    every round's cost profile (see profile.py)
    OUT/profile.md                      where the time goes (Markdown)
    OUT/plots/profile.png               the same as a figure
    OUT/parties/<name>/scorecard.nc     the party's test scorecard (and scorecard.json)
    OUT/parties/<name>/party.json       its role, window counts, test RMSE
    OUT/parties/<name>/party.log        the party process's output
    OUT/parties/<name>/normalization.json
    OUT/parties/<name>/checkpoints/global.pt   the last complete round's shared weights
    OUT/parties/<name>/checkpoints/model.pt    the party's final model (after fine-tuning)

Each party process writes its own ``parties/<name>`` directory; the coordinator writes the
rest. Every file is written to a temporary name and moved into place (``os.replace``).
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Held around every netCDF / HDF5 read and write of a party. Parties run as threads of
#: one process in thread mode, and the HDF5 library under netCDF-4 is not thread-safe: two
#: parties opening or writing files at once crashed the process (bus error, segfault).
HDF5_LOCK = threading.Lock()

__all__ = [
    "HDF5_LOCK",
    "party_dir",
    "party_summary_path",
    "party_log_path",
    "party_normalization_path",
    "global_checkpoint_path",
    "model_checkpoint_path",
    "run_summary_path",
    "profile_json_path",
    "profile_markdown_path",
    "profile_plot_path",
    "atomic_write",
    "write_json",
    "write_text",
]


def party_dir(out: str | os.PathLike, name: str) -> Path:
    """The directory of party ``name``: its scorecard and checkpoints."""
    return Path(out) / "parties" / name


def party_summary_path(party: str | os.PathLike) -> Path:
    """``party.json`` inside a party directory."""
    return Path(party) / "party.json"


def party_normalization_path(party: str | os.PathLike) -> Path:
    """``normalization.json`` inside a party directory."""
    return Path(party) / "normalization.json"


def global_checkpoint_path(party: str | os.PathLike) -> Path:
    """The shared weights of the last complete round, inside a party directory."""
    return Path(party) / "checkpoints" / "global.pt"


def model_checkpoint_path(party: str | os.PathLike) -> Path:
    """The party's final model, inside a party directory."""
    return Path(party) / "checkpoints" / "model.pt"


def run_summary_path(out: str | os.PathLike) -> Path:
    """``federated.json``: config, roles, results."""
    return Path(out) / "federated.json"


def profile_json_path(out: str | os.PathLike) -> Path:
    """``profile.json``: the cost profile of every round."""
    return Path(out) / "profile.json"


def profile_markdown_path(out: str | os.PathLike) -> Path:
    """``profile.md``: the cost report."""
    return Path(out) / "profile.md"


def profile_plot_path(out: str | os.PathLike) -> Path:
    """``plots/profile.png``: the cost report as a figure."""
    return Path(out) / "plots" / "profile.png"


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp_path)`` then move the temporary file onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, default=str) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text``, atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def party_log_path(party: str | os.PathLike) -> Path:
    """The party process's stdout and stderr, inside a party directory."""
    return Path(party) / "party.log"
