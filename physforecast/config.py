"""Typed configuration: dataclasses, YAML files, dotted overrides.

A run is described by one :class:`Config`. It can be read from YAML, changed with
dotted overrides (``train.lr=3e-4``) and is saved, resolved, into every run directory.
An unknown key or a value of the wrong type raises :class:`ConfigError`, which names
the key and suggests the closest valid one.

Examples
--------
>>> cfg = Config()
>>> cfg = apply_overrides(cfg, ["train.epochs=3", "model.backbone=unet"])
>>> cfg.train.epochs, cfg.model.backbone
(3, 'unet')
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from physforecast.errors import ConfigError
from physforecast.registry import METHODS

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "EvalConfig",
    "Config",
    "load_config",
    "save_config",
    "check_config",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
]


@dataclass
class DataConfig:
    """What to forecast and how to cut it into windows.

    Attributes
    ----------
    dataset : str
        A registered dataset name (``ns2d``) or a path to a netCDF/zarr/HDF5 file.
    variables : list of str, optional
        Variables to forecast; all data variables with the time dim when omitted.
    in_steps, out_steps : int
        History length ``T_in`` and forecast length ``T_out`` of a window.
    stride : int
        Steps between the starts of consecutive windows.
    split : list of float
        Train/validation/test fractions (of trajectories, or of time blocks).
    batch_size : int
        Windows per batch.
    num_workers : int
        DataLoader worker processes; each opens its own file handle.
    params : list of str, optional
        Per-trajectory physical parameters passed to the model as ``cond``.
    options : dict
        Keyword arguments for a registered dataset's generator (size, seed...).
    in_memory_mb : float
        A dataset at most this large (in MB) is read into memory once; a larger one
        stays lazy and each window reads only its own frames.
    normalize : str
        ``channel``: a mean and std per channel (each level of a variable on its own);
        ``variable``: one per variable, shared by its levels.
    ood : dict
        An out-of-distribution split by a physical parameter,
        ``{param: viscosity, train_range: [low, high]}``: train/val/test inside the range,
        ``val_ood``/``test_ood`` outside it (:mod:`physforecast.data.ood`); empty: off.
    train_fraction : float
        Fraction of the training trajectories that are labelled (in (0, 1]); the rest
        form an unlabelled pool whose inputs a method may use without their truth
        (BeamVQ's ``beamvq.pseudo=unlabelled``), for data-scarcity experiments.
    """

    dataset: str = "ns2d"
    variables: list[str] | None = None
    in_steps: int = 10
    out_steps: int = 10
    stride: int = 1
    split: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    batch_size: int = 16
    num_workers: int = 0
    params: list[str] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    in_memory_mb: float = 256.0
    normalize: str = "channel"
    ood: dict[str, Any] = field(default_factory=dict)
    train_fraction: float = 1.0


@dataclass
class ModelConfig:
    """Which backbone and its keyword arguments (``options``)."""

    backbone: str = "fno"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """The optimisation loop.

    Attributes
    ----------
    epochs : int
        Passes over the training windows (at most: early stopping ends sooner). The
        default job (ns2d + FNO) converges in about this many on 2 cores in under 5
        minutes.
    optimizer : str
        Optimizer name for timm's ``create_optimizer_v2`` (``adamw``, ``adam``, ``sgd``,
        ``lamb``...).
    lr, weight_decay : float
        Learning rate and (decoupled) weight decay; biases and norms are not decayed.
    schedule : str
        ``cosine`` (linear warmup, then cosine decay to 1 % of ``lr``) or ``constant``.
    warmup_frac : float
        Fraction of all steps spent in linear warmup before the cosine decay.
    accumulate : int
        Micro-batches whose gradients are accumulated into one optimizer step.
    ema : float
        Decay of an exponential moving average of the weights used for validation and
        inference (e.g. 0.999); 0 disables it.
    grad_clip : float
        Max global gradient norm; 0 disables clipping.
    precision : str
        ``fp32``, ``bf16`` or ``fp16`` autocast.
    patience : int
        Early stopping after this many epochs without validation improvement (on by
        default); 0 disables it. The best epoch's weights are the ones evaluated.
    seed : int
        Seed of every random number generator.
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    max_steps_per_epoch : int, optional
        Cap on training batches per epoch (for quick runs).
    max_val_steps : int, optional
        Cap on validation batches per epoch (the first ones of the validation split); all
        of them when unset. ``max_steps_per_epoch`` does not cap validation.
    threads : int, optional
        Torch intra-op threads of the run (training, evaluation, ``forecast``); 0 or
        unset: :func:`physforecast.threads.auto_threads` (``OMP_NUM_THREADS`` if set,
        else the cores this process may use, less the DataLoader workers and the cores
        other processes keep busy).
    comm_hook : str
        The DDP communication hook (:data:`~physforecast.training.comm_hooks.COMM_HOOKS`):
        ``allreduce`` (DDP's own all-reduce, no hook), ``fp16``, ``powersgd``, ``dlcp``,
        ``random_drop`` or ``local``. Anything but ``allreduce`` needs several processes.
    comm_hook_options : dict
        Options of the hook (``{loss_bound: 0.05, chunk_size: 1024}`` for ``dlcp``,
        ``{rank: 2, start_iter: 10}`` for ``powersgd``).
    averaging : str
        The parameter averager (:data:`~physforecast.training.averaging.AVERAGERS`):
        ``none``, ``periodic`` (local SGD) or ``dssync``; anything but ``none`` needs
        several processes and replaces the gradient all-reduce.
    averaging_options : dict
        Options of the averager (``{period: 4}``; ``{group_size: 2, schedule: shuffle}``).
    noise_scale : bool
        Estimate the gradient noise scale online (per-rank against all-reduced gradients
        under DDP, micro-batches with ``accumulate`` >= 2 on one process) and log it.
    noise_scale_beta : float
        EMA decay of the noise-scale estimates, in [0, 1).
    lr_scaling : str
        How ``lr`` follows the global batch size: ``none``, ``surge`` (Adam's law, needs
        ``lr_b_noise``), ``sgd`` (SGD's law, needs ``lr_b_noise``), ``linear`` or ``sqrt``.
    lr_base_batch : int, optional
        The global batch size ``lr`` was tuned at (default: ``data.batch_size`` x
        ``accumulate``, one process).
    lr_b_noise : float, optional
        ``B_noise`` of the surge or SGD law (``physforecast tune-lr`` fits it).
    fsdp : bool
        Shard parameters, gradients and optimizer state over the processes with FSDP2
        (``fully_shard``) instead of DDP, for models that do not fit one device.
    """

    epochs: int = 80
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_frac: float = 0.05
    accumulate: int = 1
    ema: float = 0.0
    grad_clip: float = 1.0
    precision: str = "fp32"
    patience: int = 10
    seed: int = 0
    device: str = "auto"
    max_steps_per_epoch: int | None = None
    comm_hook: str = "allreduce"
    comm_hook_options: dict[str, Any] = field(default_factory=dict)
    averaging: str = "none"
    averaging_options: dict[str, Any] = field(default_factory=dict)
    noise_scale: bool = False
    noise_scale_beta: float = 0.99
    lr_scaling: str = "none"
    lr_base_batch: int | None = None
    lr_b_noise: float | None = None
    fsdp: bool = False
    max_val_steps: int | None = None
    threads: int | None = None


@dataclass
class EvalConfig:
    """How a run is scored on its test split (``physforecast evaluate``, and after ``train``).

    Attributes
    ----------
    chunk : int
        Test windows forecast, scored and written at a time: the evaluation holds only
        this many samples (and their truth) in memory, whatever the size of the split.
    save_samples : int, optional
        ``forecasts.nc`` holds the first this many test samples (0: no forecasts file);
        all of them when unset. The scorecard always covers the whole split.
    """

    chunk: int = 64
    save_samples: int | None = None


@dataclass
class Config:
    """A whole run: data, model, training, method and where to write.

    Each method with options has its own section, named after the method (``beamvq``) and
    typed by the dataclass its :data:`~physforecast.registry.METHODS` entry names as
    ``config``. ``cfg.beamvq`` is that section, with its defaults until set.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    method: str = "supervised"
    out: str = "runs/default"
    sections: dict[str, Any] = field(default_factory=dict, repr=False)

    def section(self, name: str) -> Any:
        """The config section of method ``name``: the one set, or its defaults."""
        if name not in self.sections:
            cls = method_section(name)
            if cls is None:
                raise ConfigError(f"method {name!r} has no config section")
            self.sections[name] = cls()
        return self.sections[name]

    def __getattr__(self, name: str) -> Any:
        # reached only for names that are not fields: a method's section (cfg.beamvq)
        if name.startswith("_") or name == "sections" or method_section(name) is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return self.section(name)


_FIXED = ("data", "model", "train", "eval", "method", "out")


def method_section(name: str) -> type | None:
    """The config dataclass of the method registered as ``name`` (None: no such method, or
    a method without options)."""
    if name not in METHODS:
        return None
    return METHODS.entry(name).meta.get("config")


def _section_names() -> list[str]:
    """Names of the methods with a config section, importing none of them."""
    names = []
    for name in METHODS.names():
        meta = METHODS.info(name)
        if meta.get("config") is not None or meta.get("section"):
            names.append(name)
    return names


class _KeyTypes(Mapping):
    """The types of :class:`Config`'s keys: its own fields', and a method section's
    dataclass, looked up (importing that method alone) when the key is used."""

    def __init__(self, fixed: dict[str, Any], sections: list[str]) -> None:
        self._fixed, self._sections = fixed, sections

    def __getitem__(self, key: str) -> Any:
        if key in self._fixed:
            return self._fixed[key]
        if key in self._sections:
            return method_section(key)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter([*self._fixed, *self._sections])

    def __len__(self) -> int:
        return len(self._fixed) + len(self._sections)


# --------------------------------------------------------------------------------------
def _suggest(key: Any, valid: list[str]) -> str:
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else f" Valid keys: {', '.join(valid)}."


def _check_type(value: Any, tp: Any, path: str) -> Any:
    """Return ``value`` converted to ``tp`` where that is lossless, else raise ConfigError."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{path}: invalid value {value!r}")
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_check_type(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
        _, vt = typing.get_args(tp) or (Any, Any)
        return {str(k): _check_type(v, vt, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected an integer, got {type(value).__name__} {value!r}")
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{path}: expected a number, got {type(value).__name__} {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string, got {type(value).__name__} {value!r}")
    return value


def _fields(cls: type) -> tuple[list[str], Mapping[str, Any]]:
    """The keys of a config class and their types; for :class:`Config`, the method
    sections count as keys (typed by their dataclasses)."""
    hints = typing.get_type_hints(cls)
    if cls is Config:
        sections = _section_names()
        return [*_FIXED, *sections], _KeyTypes({k: hints[k] for k in _FIXED}, sections)
    return [f.name for f in dataclasses.fields(cls)], hints


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    names, hints = _fields(cls)
    kwargs, sections = {}, {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key {path!r}.{_suggest(key, names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            built = _build(tp, value, f"{path}.")
            (kwargs if key in _FIXED or cls is not Config else sections)[key] = built
        else:
            kwargs[key] = _check_type(value, tp, path)
    if cls is not Config:
        return cls(**kwargs)
    cfg = Config(**kwargs, sections=sections)
    if cfg.method not in METHODS:
        methods = METHODS.names()
        raise ConfigError(
            f"unknown method {cfg.method!r}.{_suggest(cfg.method, methods)} "
            f"Registered methods: {', '.join(methods)}"
        )
    return cfg


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build a :class:`Config` from a nested mapping, validating every key and type."""
    return _build(Config, data or {}, "")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config (JSON and YAML safe); a :class:`Config` includes the
    sections it holds and that of its method."""
    if not isinstance(cfg, Config):
        return dataclasses.asdict(cfg)
    out = {
        name: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
        for name, v in ((n, getattr(cfg, n)) for n in _FIXED)
    }
    if method_section(cfg.method) is not None:
        cfg.section(cfg.method)
    for name, section in cfg.sections.items():
        out[name] = dataclasses.asdict(section)
    return out


def _yaml_error(err: yaml.YAMLError, where: str) -> ConfigError:
    """A YAML syntax error as one line: where it is and what the parser expected."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context = getattr(err, "context", None)
    detail = f"{context}, {problem}" if context else problem
    return ConfigError(f"{where} is not valid YAML{at}: {detail}; fix the file's syntax")


def load_config(path: str | Path) -> Config:
    """Read a YAML config file; keys not given keep their defaults.

    Raises
    ------
    FileNotFoundError
        When there is no such file.
    ConfigError
        When the file is not valid YAML (the message gives the line and column), is not
        a mapping, or holds an unknown key or a value of the wrong type.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"config file {str(path)!r} not found"
            + (" (it is a directory)" if path.is_dir() else "")
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise _yaml_error(err, str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file; give a YAML config") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a config file is a mapping of sections (data:, model:, train:...); "
            f"this one holds a {type(data).__name__}"
        )
    try:
        return config_from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def check_config(cfg: Config) -> None:
    """Refuse values no run can use (``train.epochs=0``, a negative batch size...).

    Types are checked when a config is built; this checks ranges, before a run writes
    anything.

    Raises
    ------
    ConfigError
        Naming the key, the value and what it must be.
    """
    rules = [
        ("train.epochs", cfg.train.epochs, cfg.train.epochs >= 1, ">= 1"),
        ("train.lr", cfg.train.lr, cfg.train.lr > 0, "> 0"),
        ("train.accumulate", cfg.train.accumulate, cfg.train.accumulate >= 1, ">= 1"),
        ("train.grad_clip", cfg.train.grad_clip, cfg.train.grad_clip >= 0, ">= 0 (0: off)"),
        ("train.patience", cfg.train.patience, cfg.train.patience >= 0, ">= 0 (0: off)"),
        ("train.ema", cfg.train.ema, 0 <= cfg.train.ema < 1, "in [0, 1) (0: off)"),
        (
            "train.noise_scale_beta",
            cfg.train.noise_scale_beta,
            0 <= cfg.train.noise_scale_beta < 1,
            "in [0, 1)",
        ),
        ("data.in_steps", cfg.data.in_steps, cfg.data.in_steps >= 1, ">= 1"),
        ("data.out_steps", cfg.data.out_steps, cfg.data.out_steps >= 1, ">= 1"),
        ("data.stride", cfg.data.stride, cfg.data.stride >= 1, ">= 1"),
        ("data.batch_size", cfg.data.batch_size, cfg.data.batch_size >= 1, ">= 1"),
        ("data.num_workers", cfg.data.num_workers, cfg.data.num_workers >= 0, ">= 0"),
        ("data.in_memory_mb", cfg.data.in_memory_mb, cfg.data.in_memory_mb >= 0, ">= 0"),
        (
            "data.train_fraction",
            cfg.data.train_fraction,
            0 < cfg.data.train_fraction <= 1,
            "in (0, 1] (1: every training trajectory is labelled)",
        ),
    ]
    for key, steps in (
        ("train.max_steps_per_epoch", cfg.train.max_steps_per_epoch),
        ("train.max_val_steps", cfg.train.max_val_steps),
    ):
        if steps is not None:
            rules.append((key, steps, steps >= 1, ">= 1 (or null)"))
    rules.append(("eval.chunk", cfg.eval.chunk, cfg.eval.chunk >= 1, ">= 1"))
    if cfg.train.threads is not None:
        n = cfg.train.threads
        rules.append(("train.threads", n, n >= 0, ">= 0 (0 or null: automatic)"))
    if cfg.eval.save_samples is not None:
        n = cfg.eval.save_samples
        rules.append(("eval.save_samples", n, n >= 0, ">= 0 (or null: all)"))
    split = cfg.data.split
    rules.append(
        (
            "data.split",
            split,
            len(split) == 3 and min(split) >= 0 and split[0] > 0,
            "three fractions train, val, test with train > 0 (e.g. [0.8, 0.1, 0.1])",
        )
    )
    if cfg.train.lr_base_batch is not None:
        base = cfg.train.lr_base_batch
        rules.append(("train.lr_base_batch", base, base >= 1, ">= 1 (or null)"))
    if cfg.train.lr_b_noise is not None:
        b_noise = cfg.train.lr_b_noise
        rules.append(("train.lr_b_noise", b_noise, b_noise > 0, "> 0 (or null)"))
    choices = [
        ("train.precision", cfg.train.precision, ("fp32", "bf16", "fp16")),
        ("train.lr_scaling", cfg.train.lr_scaling, ("none", "surge", "sgd", "linear", "sqrt")),
        ("data.normalize", cfg.data.normalize, ("channel", "variable")),
    ]
    for key, value, ok, want in rules:
        if not ok:
            raise ConfigError(f"{key}={value!r} is not valid: it must be {want}")
    for key, value, valid in choices:
        if value not in valid:
            close = difflib.get_close_matches(str(value), valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(valid)}.{hint}")


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Return a copy of ``cfg`` with dotted ``key.path=value`` overrides applied.

    Values are parsed as YAML (``3``, ``1e-3``, ``true``, ``[a, b]``, ``{nu: 1e-3}``).
    A method's section may be set before (or without) choosing the method
    (``beamvq.top_k=4``).
    Keys inside a free-form ``options`` mapping may be new; elsewhere an unknown key
    is an error that suggests the closest valid one.
    """
    data = config_to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise _yaml_error(err, f"the value of override {item!r}") from None
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key; write key.path=value")
        node, cls = data, Config
        for depth, part in enumerate(parts):
            path = ".".join(parts[: depth + 1])
            last = depth == len(parts) - 1
            if cls is not None:
                names, hints = _fields(cls)
                if part not in names:
                    raise ConfigError(f"unknown config key {path!r}.{_suggest(part, names)}")
                tp = hints[part]
                cls = tp if dataclasses.is_dataclass(tp) else None
                if cls is not None and part not in node:  # a method section not set yet
                    node[part] = dataclasses.asdict(cls())
            if last:
                node[part] = value
            else:
                if not isinstance(node.get(part), dict):
                    if cls is None and node.get(part) is None:
                        node[part] = {}
                    elif cls is None:
                        raise ConfigError(f"config key {path!r} is not a mapping")
                node = node[part]
    return config_from_dict(data)
