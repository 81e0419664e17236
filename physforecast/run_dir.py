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

Examples
--------
>>> run = RunDir("runs/ns2d-fno")                       # doctest: +SKIP
>>> run.read_config().model.backbone                    # doctest: +SKIP
'fno'
>>> loaded = run.load_model("best")                     # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from physforecast.atomic import atomic_write_json, atomic_write_text
from physforecast.checkpoint import load_checkpoint, save_checkpoint
from physforecast.config import Config, config_from_dict, config_to_dict
from physforecast.data.io import write_dataset
from physforecast.data.normalization import Normalizer
from physforecast.data.spec import DataSpec
from physforecast.metrics.report import write_scorecard
from physforecast.registry import METHODS

__all__ = ["RunDir", "LoadedRun"]


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
        model.load_state_dict(state.get("ema", state["model"]))
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
