"""The run directory: one object owns its file names, writes every file atomically and loads
a run back.

A run directory holds::

    config.yaml           the resolved Config
    model.json            the model spec (create_backbone arguments)
    data.json             the DataSpec (variables, levels, grid, parameters, steps)
    normalization.json    statistics of the training split
    metrics.jsonl         one record per epoch (and stage), appended
    checkpoints/          best.pt, last.pt; a multi-stage method's stages under <stage>/
    forecasts.nc          test-split forecasts beside their truth
    scorecard.json/.nc    the physics-aware scorecard
    plots/*.png           figures

Only the process that writes (rank 0 under ``torchrun``) gets ``writer=True``; on the
others every write is a no-op, so code that writes can run on every rank.

While a process writes a run it holds the directory's lock (:meth:`RunDir.lock`, the file
``.lock`` with the owner's pid, host, start time and command): a second writer fails at
once with :class:`~physforecast.errors.RunDirInUseError` naming the owner. The lock is an
``flock`` on that file, which the system releases when its owner dies, however it dies; a
lock file left by a dead owner is stale and is taken over (and said so). Holding the lock,
the writer removes the temporaries a killed writer left (:meth:`RunDir.remove_orphans`).

Examples
--------
>>> run = RunDir("runs/ns2d-fno")                       # doctest: +SKIP
>>> run.read_config().model.backbone                    # doctest: +SKIP
'fno'
>>> loaded = run.load_model("best")                     # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from physforecast.atomic import (
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    is_temporary,
    pid_alive,
    remove_orphans,
)
from physforecast.checkpoint import load_checkpoint, save_checkpoint
from physforecast.config import Config, config_from_dict, config_to_dict
from physforecast.data.io import check_output_path, write_dataset
from physforecast.data.normalization import Normalizer
from physforecast.data.spec import DataSpec
from physforecast.errors import CheckpointError, OutputPathError, RunDirInUseError
from physforecast.metrics.report import write_scorecard
from physforecast.registry import METHODS

__all__ = ["RunDir", "LoadedRun", "RunLock"]


@dataclass
class LoadedRun:
    """A trained model rebuilt from its run directory.

    Attributes
    ----------
    model : nn.Module
        The method's model in eval mode, mapping normalized ``(x, cond)`` to normalized
        forecasts.
    normalizer : Normalizer
        Statistics of the training split.
    config : Config
        The resolved config of the run.
    data : DataSpec
        What the model expects of its input.
    path : Path
        The run directory.
    """

    model: Any
    normalizer: Normalizer
    config: Config
    data: DataSpec
    path: Path


try:  # POSIX: an flock, released by the system when its owner dies
    import fcntl
except ImportError:  # pragma: no cover - Windows: the owner's pid decides
    fcntl = None


def _describe(owner: dict[str, Any]) -> str:
    where = f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}"
    since = f" since {owner['started']}" if owner.get("started") else ""
    command = f" ({owner['command']})" if owner.get("command") else ""
    return where + since + command


class RunLock:
    """The exclusive lock of a run directory: the file ``.lock``, holding its owner.

    Parameters
    ----------
    directory : path
        The run directory (created when missing).

    Examples
    --------
    >>> with RunLock("runs/demo"):                          # doctest: +SKIP
    ...     ...  # nobody else writes runs/demo meanwhile
    """

    NAME = ".lock"

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.path = self.directory / self.NAME
        self._fd: int | None = None
        #: The owner of a stale lock this one took over (None: there was none).
        self.took_over: dict[str, Any] | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def owner(self) -> dict[str, Any]:
        """What the lock file says about its (last) owner; empty when unreadable."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def acquire(self) -> RunLock:
        """Take the lock, or raise :class:`~physforecast.errors.RunDirInUseError`."""
        if self.held:
            return self
        if self.directory.exists() and not self.directory.is_dir():
            raise OutputPathError(
                f"{self.directory} is a file, not a run directory; give another --out"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not self._try_lock(fd):
                raise RunDirInUseError(
                    f"run directory {self.directory} is in use by {_describe(self.owner())}; "
                    "wait for that run to finish, or write this one to another --out"
                )
            previous = self.owner()
            if previous and not self._same_process(previous):
                self.took_over = previous
            me = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": datetime.datetime.now().isoformat(timespec="seconds"),
                "command": " ".join(
                    os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv)
                ),
            }
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(me) + "\n").encode())
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def _try_lock(self, fd: int) -> bool:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False
            return True
        owner = self.owner()  # pragma: no cover - no flock: trust a live pid on this host
        if owner and owner.get("host") == socket.gethostname() and owner.get("pid") != os.getpid():
            return not pid_alive(int(owner.get("pid", 0)))
        return not owner or owner.get("host") == socket.gethostname()

    @staticmethod
    def _same_process(owner: dict[str, Any]) -> bool:
        return owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname()

    def release(self) -> None:
        """Give the lock up (the lock file stays, empty, for the next owner)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


class RunDir:
    """One run directory.

    Parameters
    ----------
    path : path
        The directory (created on the first write).
    writer : bool
        Whether this process writes; ``False`` on the non-zero ranks of a distributed run.
    """

    CONFIG = "config.yaml"
    MODEL = "model.json"
    DATA = "data.json"
    NORMALIZATION = "normalization.json"
    METRICS = "metrics.jsonl"
    FORECASTS = "forecasts.nc"
    CHECKPOINTS = "checkpoints"
    PLOTS = "plots"

    def __init__(self, path: str | os.PathLike, *, writer: bool = True) -> None:
        self.path = Path(path)
        self.writer = bool(writer)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r}, writer={self.writer})"

    def __fspath__(self) -> str:
        return str(self.path)

    # -- names ----------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        """The path of the run's file ``name`` (a method's own report, say)."""
        return self.path / name

    def checkpoint_path(self, name: str = "best", stage: str | None = None) -> Path:
        """``checkpoints/<name>.pt``, or ``checkpoints/<stage>/<name>.pt`` for a stage."""
        folder = self.path / self.CHECKPOINTS
        return (folder / stage if stage else folder) / f"{name}.pt"

    @property
    def plots_dir(self) -> Path:
        """``plots/``, where the run's figures go."""
        return self.path / self.PLOTS

    def plot_path(self, name: str) -> Path:
        """``plots/<name>.png``."""
        return self.plots_dir / f"{name}.png"

    def exists(self) -> bool:
        """Whether the directory holds a run (its ``config.yaml``)."""
        return (self.path / self.CONFIG).exists()

    def contents(self) -> list[Path]:
        """What the directory holds besides its lock file and temporaries (sorted)."""
        if not self.path.is_dir():
            return []
        return sorted(
            p for p in self.path.iterdir() if p.name != RunLock.NAME and not is_temporary(p)
        )

    # -- lock and housekeeping (writer only) ----------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[RunLock | None]:
        """Hold the directory's :class:`RunLock` within the block (the writer only).

        Taking over a stale lock (its owner died) is reported on stderr; the temporaries
        such an owner left are removed.
        """
        if not self.writer:
            yield None
            return
        with RunLock(self.path) as held:
            if held.took_over:
                print(
                    f"physforecast: note: took over the stale lock of {self.path} "
                    f"({_describe(held.took_over)}, no longer running)",
                    file=sys.stderr,
                )
            self.remove_orphans()
            yield held

    def remove_orphans(self) -> list[Path]:
        """Remove the temporaries (``.NAME.<hex>.tmp.SUFFIX``) that a killed writer left
        anywhere in the run; call it holding the lock (nobody else writes here then)."""
        if not self.writer:
            return []
        return remove_orphans(self.path, recursive=True, everything=True)

    def clear(self) -> None:
        """Delete everything in the directory but its lock (``--overwrite``)."""
        if not self.writer:
            return
        for p in self.contents():
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        self.remove_orphans()

    def require(self) -> RunDir:
        """``self``, or a ``FileNotFoundError`` when this is not a run directory."""
        if not self.exists():
            raise FileNotFoundError(
                f"{str(self.path)!r} is not a run directory (no {self.CONFIG}); "
                "give the directory that `physforecast train` wrote"
            )
        return self

    # -- writes (no-ops unless writer) -------------------------------------------------
    def write_text(self, name: str, text: str) -> Path | None:
        """Write the run's text file ``name`` atomically."""
        return atomic_write_text(self.path / name, text) if self.writer else None

    def write_json(self, name: str, obj: Any) -> Path | None:
        """Write the run's JSON file ``name`` atomically."""
        return atomic_write_json(self.path / name, obj) if self.writer else None

    def write_config(self, cfg: Config) -> Path | None:
        """``config.yaml``: the resolved config."""
        return self.write_text(self.CONFIG, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))

    def write_model_spec(self, spec: dict[str, Any]) -> Path | None:
        """``model.json``: the arguments that build the model."""
        return self.write_json(self.MODEL, spec)

    def write_data_spec(self, spec: DataSpec) -> Path | None:
        """``data.json``: a :class:`~physforecast.data.spec.DataSpec`."""
        return self.write_json(self.DATA, spec.to_dict())

    def write_normalizer(self, normalizer: Normalizer) -> Path | None:
        """``normalization.json``."""
        return self.write_json(self.NORMALIZATION, normalizer.to_dict())

    def write_dataset(self, name: str, ds: Any) -> Path | None:
        """A netCDF or zarr file of the run (``forecasts.nc``)."""
        return write_dataset(ds, self.path / name) if self.writer else None

    def write_in_pieces(self, name: str, write: Callable[[Path | None], Any]) -> Path | None:
        """A file of the run that ``write(tmp)`` fills piece by piece (``forecasts.nc``,
        chunk by chunk), renamed into place once complete. Off rank 0 ``write(None)``
        runs without a file (so the work it does along the way still happens)."""
        if not self.writer:
            write(None)
            return None
        path = check_output_path(self.path / name)
        remove_orphans(path.parent, stem=path.stem)
        return atomic_write(path, write)

    def write_scorecard(self, card: Any) -> tuple[Path, Path] | None:
        """``scorecard.nc`` and ``scorecard.json``."""
        return write_scorecard(card, self.path) if self.writer else None

    def save_checkpoint(
        self, state: dict[str, Any], name: str = "last", stage: str | None = None
    ) -> Path | None:
        """Write a checkpoint (see :func:`~physforecast.checkpoint.save_checkpoint`)."""
        return save_checkpoint(state, self.checkpoint_path(name, stage)) if self.writer else None

    def append_record(self, name: str, record: dict[str, Any]) -> None:
        """Append one JSON record to the run's log ``name`` (a single write of one line,
        flushed to disk, so a crash can tear at most the last line)."""
        if not self.writer:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / name, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one record to ``metrics.jsonl``."""
        self.append_record(self.METRICS, record)

    def keep_metrics(self, keep: Callable[[dict[str, Any]], bool]) -> None:
        """Rewrite ``metrics.jsonl`` with only the records for which ``keep(record)`` holds
        (a resumed stage drops the epochs after its checkpoint)."""
        if not self.writer or not (self.path / self.METRICS).exists():
            return
        records = [r for r in self.read_metrics() if keep(r)]
        self.write_text(self.METRICS, "".join(json.dumps(r) + "\n" for r in records))

    def reset_metrics(self) -> None:
        """Start ``metrics.jsonl`` afresh (a new run into this directory)."""
        if self.writer:
            (self.path / self.METRICS).unlink(missing_ok=True)

    # -- reads -------------------------------------------------------------------------------
    def read_config(self) -> Config:
        """The resolved config of the run."""
        self.require()
        return config_from_dict(yaml.safe_load((self.path / self.CONFIG).read_text()) or {})

    def read_model_spec(self) -> dict[str, Any]:
        """The model spec (``model.json``)."""
        return json.loads(self._existing(self.MODEL).read_text())

    def read_data_spec(self) -> DataSpec:
        """The :class:`~physforecast.data.spec.DataSpec` (``data.json``)."""
        return DataSpec.from_dict(json.loads(self._existing(self.DATA).read_text()))

    def read_normalizer(self) -> Normalizer:
        """The :class:`~physforecast.data.normalization.Normalizer` of the training split."""
        return Normalizer.load(self._existing(self.NORMALIZATION))

    def read_metrics(self) -> list[dict[str, Any]]:
        """The records of ``metrics.jsonl``."""
        return self.read_records(self.METRICS)

    def read_records(self, name: str) -> list[dict[str, Any]]:
        """The records of the run's log ``name``; a torn line (a crash mid-write) is skipped."""
        path = self.path / name
        if not path.exists():
            return []
        records = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def load_checkpoint(
        self, name: str = "best", stage: str | None = None, map_location: Any = "cpu"
    ) -> dict[str, Any]:
        """A checkpoint of the run, read with ``weights_only=True``."""
        path = self.checkpoint_path(name, stage)
        if not path.exists():
            found = sorted(p.stem for p in path.parent.glob("*.pt"))
            raise FileNotFoundError(
                f"no checkpoint {name!r} in {path.parent}; found {found or 'none'}"
            )
        return load_checkpoint(path, map_location=map_location)

    def load_model(self, checkpoint: str = "best", device: Any = "cpu") -> LoadedRun:
        """Rebuild the run's model through its method and load the checkpoint's weights.

        The averaged (EMA) weights are used when the checkpoint has them.
        """
        cfg = self.read_config()
        data = self.read_data_spec()
        method = METHODS.create(cfg.method)
        model = method.build(self.read_model_spec(), cfg, data)
        state = self.load_checkpoint(checkpoint)
        if "model" not in state:
            raise CheckpointError(
                f"{self.checkpoint_path(checkpoint)} holds no model weights (no 'model' "
                "entry); it was not written by physforecast train"
            )
        try:
            model.load_state_dict(state.get("ema", state["model"]))
        except RuntimeError as err:
            raise CheckpointError(
                f"{self.checkpoint_path(checkpoint)} does not fit the model that "
                f"{self.path / self.MODEL} describes ({_first_mismatch(err)}); the two come "
                "from different trainings. Train the run again (physforecast train --overwrite)"
            ) from None
        model.to(device).eval()
        return LoadedRun(model, self.read_normalizer(), cfg, data, self.path)

    def _existing(self, name: str) -> Path:
        path = self.path / name
        if not path.exists():
            self.require()
            raise FileNotFoundError(
                f"{self.path} has no {name}; was it written by physforecast train?"
            )
        return path


def _first_mismatch(err: Exception) -> str:
    """The first line of a ``load_state_dict`` error that names a key."""
    lines = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
    return lines[0].rstrip(".") if lines else str(err).splitlines()[0]
