"""The training-at-scale switches of :class:`~physforecast.config.TrainConfig`, checked and built.

``train.comm_hook`` / ``train.comm_hook_options`` name a DDP communication hook of
:data:`~physforecast.training.comm_hooks.COMM_HOOKS`, ``train.averaging`` /
``train.averaging_options`` a parameter averager of
:data:`~physforecast.training.averaging.AVERAGERS`, ``train.noise_scale`` switches on the
online gradient-noise-scale monitor, ``train.lr_scaling`` rescales ``train.lr`` for
the global batch size and ``train.fsdp`` shards the model (:mod:`~physforecast.training.fsdp`). :func:`check_parallel` refuses settings that cannot work (an
unknown name, an option the hook does not take, a hook or averager on one process, a
DS-Sync group size that does not divide the processes) before a run writes anything;
:func:`build_comm_hook`, :func:`build_averager`, :func:`build_noise_scale` and
:func:`lr_factor_for` make what the :class:`~physforecast.training.trainer.Trainer` uses.

Usage (what ``physforecast train`` does)::

    physforecast train --set train.comm_hook=dlcp train.comm_hook_options.loss_bound=0.05
    torchrun --nproc-per-node 4 -m physforecast.cli train --set train.averaging=dssync \\
        train.averaging_options.group_size=2
"""

from __future__ import annotations

from typing import Any

from torch import nn

from physforecast.config import TrainConfig
from physforecast.errors import ConfigError, check_options

from .averaging import AVERAGERS
from .comm_hooks import COMM_HOOKS, CommHook
from .dssync import GROUP_SCHEDULES
from .noise_scale import GradientStats, MicroBatchStats, NoiseScaleMonitor, NoiseScaleTracker

__all__ = [
    "DEFAULT_HOOK",
    "DEFAULT_AVERAGING",
    "check_parallel",
    "build_comm_hook",
    "build_averager",
    "build_noise_scale",
    "global_batch",
    "lr_factor_for",
]

#: ``train.comm_hook`` of a plain run (DDP's own gradient all-reduce).
DEFAULT_HOOK = "allreduce"
#: ``train.averaging`` of a plain run.
DEFAULT_AVERAGING = "none"
#: Hooks whose result is the mean gradient, so that the noise scale can use it.
_MEAN_HOOKS = ("allreduce", "fp16")
#: Options the Trainer fills in itself.
_INTERNAL = ("module", "process_group")

_LAUNCH_HINT = (
    "launch several processes (torchrun --nproc-per-node N -m physforecast.cli train ..., or srun)"
)


def _entry(registry: Any, name: str, key: str) -> None:
    try:
        registry.entry(name)
    except ValueError as err:
        raise ConfigError(f"{key}={name!r}: {err}") from None


def _options(registry: Any, name: str) -> list[str]:
    return [o for o in (registry.options(name) or []) if o not in _INTERNAL]


def check_parallel(cfg: TrainConfig, world_size: int) -> None:
    """Refuse ``train.comm_hook``, ``train.averaging``, ``train.noise_scale`` and
    ``train.lr_scaling`` settings that cannot work with ``world_size`` processes.

    Parameters
    ----------
    cfg : TrainConfig
        The training section.
    world_size : int
        Processes of the run (``detect_launch().world_size`` before the process group exists).

    Raises
    ------
    ConfigError
        Naming the key and what to do.
    """
    _entry(COMM_HOOKS, cfg.comm_hook, "train.comm_hook")
    given = list(cfg.comm_hook_options)
    bad = [k for k in given if k in _INTERNAL]
    if bad:
        raise ConfigError(
            f"train.comm_hook_options.{bad[0]} is set by the trainer itself; leave it out"
        )
    check_options(
        f"comm hook {cfg.comm_hook!r}",
        given,
        _options(COMM_HOOKS, cfg.comm_hook),
        key="train.comm_hook_options",
    )
    _entry(AVERAGERS, cfg.averaging, "train.averaging")
    check_options(
        f"averager {cfg.averaging!r}",
        list(cfg.averaging_options),
        _options(AVERAGERS, cfg.averaging),
        key="train.averaging_options",
    )
    if world_size <= 1:
        if cfg.comm_hook != DEFAULT_HOOK:
            raise ConfigError(
                f"train.comm_hook={cfg.comm_hook!r} is a DDP communication hook, but this run "
                f"is a single process (no DDP): {_LAUNCH_HINT}, or leave train.comm_hook at "
                f"{DEFAULT_HOOK!r}"
            )
        if cfg.averaging != DEFAULT_AVERAGING:
            raise ConfigError(
                f"train.averaging={cfg.averaging!r} averages the models of several processes, "
                f"but this run is a single process (no DDP): {_LAUNCH_HINT}, or set "
                f"train.averaging={DEFAULT_AVERAGING}"
            )
    if cfg.averaging != DEFAULT_AVERAGING and cfg.comm_hook != DEFAULT_HOOK:
        raise ConfigError(
            f"train.averaging={cfg.averaging!r} brings its own comm hook (gradients stay local "
            f"after its warm-up); train.comm_hook={cfg.comm_hook!r} cannot be used with it: "
            f"leave train.comm_hook at {DEFAULT_HOOK!r}"
        )
    opts = cfg.averaging_options
    if cfg.averaging == "periodic" and int(opts.get("period", 4)) < 2:
        raise ConfigError(
            f"train.averaging_options.period={opts['period']!r} must be >= 2 (period 1 is "
            "plain DDP: train.averaging=none)"
        )
    if cfg.averaging == "dssync" and world_size > 1:
        schedule = str(opts.get("schedule", "shuffle"))
        _entry(GROUP_SCHEDULES, schedule, "train.averaging_options.schedule")
        try:
            GROUP_SCHEDULES.create(
                schedule,
                world_size=world_size,
                group_size=int(opts.get("group_size", 2)),
                seed=opts.get("seed", 0),
            )
        except ValueError as err:
            raise ConfigError(
                f"train.averaging=dssync with {world_size} processes: {err}"
            ) from None
    if cfg.noise_scale:
        if world_size > 1 and (cfg.comm_hook not in _MEAN_HOOKS or cfg.averaging != "none"):
            raise ConfigError(
                "train.noise_scale compares each process's gradient with the all-reduced mean, "
                f"which train.comm_hook={cfg.comm_hook!r} / train.averaging={cfg.averaging!r} "
                f"does not compute; use train.comm_hook in {_MEAN_HOOKS} with "
                "train.averaging=none, or turn train.noise_scale off"
            )
        if world_size <= 1 and cfg.accumulate < 2:
            raise ConfigError(
                "train.noise_scale on one process compares the micro-batches of a gradient "
                "accumulation: set train.accumulate >= 2 (or train on several processes)"
            )
    if cfg.fsdp:
        _check_fsdp(cfg, world_size)
    if cfg.lr_scaling in ("surge", "sgd") and cfg.lr_b_noise is None:
        raise ConfigError(
            f"train.lr_scaling={cfg.lr_scaling} needs train.lr_b_noise (the batch size of the "
            "law's peak; physforecast tune-lr fits it), or use train.lr_scaling=linear or sqrt"
        )


def _check_fsdp(cfg: TrainConfig, world_size: int) -> None:
    if world_size <= 1:
        raise ConfigError(
            f"train.fsdp shards the model over several processes, but this run is a single "
            f"process: {_LAUNCH_HINT}, or set train.fsdp=false"
        )
    clashes = [
        (cfg.comm_hook != DEFAULT_HOOK, f"train.comm_hook={cfg.comm_hook!r} (a DDP hook)"),
        (cfg.averaging != DEFAULT_AVERAGING, f"train.averaging={cfg.averaging!r}"),
        (cfg.noise_scale, "train.noise_scale (it reads DDP's gradients)"),
        (cfg.ema > 0, "train.ema (an unsharded copy of the weights)"),
        (cfg.precision == "fp16", "train.precision=fp16 (use bf16)"),
    ]
    for clash, what in clashes:
        if clash:
            raise ConfigError(f"train.fsdp cannot be combined with {what}; drop one of them")


def build_comm_hook(cfg: TrainConfig, module: nn.Module) -> CommHook:
    """The comm hook ``train.comm_hook`` names (call under DDP, after the process group exists)."""
    try:
        return COMM_HOOKS.create(cfg.comm_hook, module=module, **cfg.comm_hook_options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"train.comm_hook={cfg.comm_hook!r}: {err}") from None


def build_averager(cfg: TrainConfig) -> Any:
    """The averager ``train.averaging`` names (``None`` for ``none``); on every rank, after
    ``init_process_group`` (averagers create process groups)."""
    try:
        return AVERAGERS.create(cfg.averaging, **cfg.averaging_options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"train.averaging={cfg.averaging!r}: {err}") from None


def build_noise_scale(
    cfg: TrainConfig, model: nn.Module, world_size: int, hook: CommHook | None
) -> tuple[NoiseScaleTracker, CommHook | None]:
    """A :class:`~physforecast.training.noise_scale.NoiseScaleTracker` for ``train.noise_scale``.

    Under DDP the returned hook wraps ``hook`` (its state and function) in
    :class:`~physforecast.training.noise_scale.GradientStats`; register that one instead
    (its counters and saved state stay those of ``hook``). On one process the tracker
    reads the micro-batches of the accumulation and the hook is returned unchanged.
    """
    monitor = NoiseScaleMonitor(beta=cfg.noise_scale_beta)
    if world_size > 1:
        if hook is None:
            raise ValueError("train.noise_scale under DDP needs the comm hook to wrap")
        from .noise_scale import gradient_stats_hook

        stats = GradientStats(hook.state, hook.hook)
        wrapped = CommHook(
            hook.name, stats, gradient_stats_hook, _inner_save(hook), _inner_load(hook)
        )
        return NoiseScaleTracker(monitor, ddp_stats=stats, world_size=world_size), wrapped
    return NoiseScaleTracker(monitor, micro=MicroBatchStats(model.parameters())), hook


def _inner_save(hook: CommHook):
    def save(_: Any) -> dict[str, Any]:
        return hook.state_dict()

    return save


def _inner_load(hook: CommHook):
    def load(_: Any, state: dict[str, Any]) -> None:
        hook.load_state_dict(state)

    return load


def global_batch(batch_size: int, accumulate: int = 1, world_size: int = 1) -> int:
    """Examples per optimizer step: per-process batch x accumulated micro-batches x processes."""
    return int(batch_size) * int(accumulate) * int(world_size)


def lr_factor_for(cfg: TrainConfig, batch: int, base_batch: int) -> float:
    """The factor ``train.lr_scaling`` applies to ``train.lr`` at global batch ``batch``.

    ``base_batch`` is where ``train.lr`` was tuned (``train.lr_base_batch`` when set).
    """
    from .surge import lr_scale_factor  # scipy and matplotlib: only when asked for

    base = cfg.lr_base_batch if cfg.lr_base_batch is not None else base_batch
    return lr_scale_factor(base, batch, cfg.lr_scaling, cfg.lr_b_noise)
