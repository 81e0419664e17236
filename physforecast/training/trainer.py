"""One readable training loop with injectable parts.

What varies is passed in, with defaults from :class:`~physforecast.config.TrainConfig`:

- ``optimizer``: ``factory(model) -> Optimizer`` (default: timm's ``create_optimizer_v2``
  with ``train.optimizer``, ``train.lr`` and ``train.weight_decay``; no decay on biases and
  norms);
- ``scheduler``: ``factory(optimizer, total_steps) -> LRScheduler`` (default: linear warmup
  then cosine, ``train.schedule``), stepped after every optimizer step and saved in the
  checkpoint, so a resumed run follows the same schedule;
- ``comm_hook``: a ``(state, hook)`` pair or a
  :class:`~physforecast.training.comm_hooks.CommHook` registered on the DDP wrapper
  (default: ``train.comm_hook``, built by :mod:`~physforecast.training.parallel`);
- ``averager``: an object whose ``average_parameters(params)`` runs after every optimizer
  step (default: ``train.averaging``; periodic or group model averaging, with its own
  comm hook and one global average at the end);
- callbacks after every optimizer step (``on_step``) and every epoch (``callbacks``).

Gradient accumulation (``train.accumulate`` micro-batches per step, without gradient
all-reduce on the micro-batches before the last), an exponential moving average of the
weights (``train.ema``), the online gradient noise scale (``train.noise_scale``), the
learning rate rescaled for the global batch size (``train.lr_scaling``), clipping,
fp16/bf16 autocast, validation, early stopping, exact resume (with what differs between
ranks: comm-hook state, and under parameter averaging each rank's model and optimizer)
and rank-0 checkpoints and logs complete it.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR, LRScheduler
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler
from tqdm.auto import tqdm

from physforecast.checkpoint import load_checkpoint
from physforecast.config import Config, TrainConfig, config_to_dict
from physforecast.data.windows import collate_windows, worker_init
from physforecast.errors import DeviceError, PhysforecastError
from physforecast.run_dir import RunDir

from . import fsdp
from .comm_hooks import CommHook, GatedState, gated_hook
from .distributed import DistInfo
from .parallel import (
    DEFAULT_HOOK,
    build_averager,
    build_comm_hook,
    build_noise_scale,
    check_parallel,
    global_batch,
    lr_factor_for,
)

__all__ = [
    "Trainer",
    "TrainingDivergedError",
    "LossFn",
    "OptimizerFactory",
    "SchedulerFactory",
    "mse_loss_fn",
    "masked_mse",
    "model_cond",
    "unwrap",
    "lr_factor",
    "default_optimizer",
    "weight_decay_groups",
    "default_scheduler",
    "resolve_device",
    "SCHEDULES",
]

LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]
OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer, int], LRScheduler]

#: Learning-rate schedules ``train.schedule`` may name.
SCHEDULES = ("cosine", "constant")


class TrainingDivergedError(PhysforecastError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP or averaging wrapper (or the module itself)."""
    while isinstance(model, DistributedDataParallel | AveragedModel):
        model = model.module
    return model


def model_cond(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """``batch["params"]`` when the model takes physical parameters, else ``None``."""
    return batch.get("params") if getattr(unwrap(model), "cond_dim", 0) else None


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error over valid points; ``mask`` (B, C, H, W) broadcasts over time.

    The mask is broadcast, never expanded to the error's shape; when every point is valid
    (the usual case) the error is summed directly, which gives the same value.
    """
    err = (pred.float() - target.float()).square()
    if mask is None:
        return err.mean()
    m = mask.unsqueeze(1)  # (B, 1, C, H, W)
    if bool(m.all()):
        return err.sum() / float(err.numel())
    count = (m.sum() * err.shape[1]).to(err.dtype).clamp_min(1.0)
    return (err * m).sum() / count


def mse_loss_fn(
    model: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, float]]:
    """Default loss: masked MSE of ``model(x, cond)`` against ``y`` (B, T_out, C, H, W)."""
    pred = model(batch["x"], model_cond(model, batch))
    loss = masked_mse(pred, batch["y"], batch.get("mask"))
    return loss, {"mse": float(loss.detach())}


def lr_factor(step: int, total: int, warmup_frac: float, min_factor: float = 0.01) -> float:
    """Linear warmup over ``warmup_frac * total`` steps, then cosine decay to ``min_factor``."""
    warm = max(1, int(round(warmup_frac * total)))
    if step < warm:
        return (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1, total - warm))
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


#: Optimizers built from torch directly, exactly as timm's ``create_optimizer_v2`` builds
#: them (the same parameter groups and arguments), without importing timm (seconds).
_TORCH_OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """timm's parameter groups: no decay on biases, 1-d parameters (norms) and the names
    ``model.no_weight_decay()`` lists; decay ``weight_decay`` on the rest."""
    import fnmatch

    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        excluded = param.ndim <= 1 or name.endswith(".bias")
        if not weight_decay or excluded or any(fnmatch.fnmatch(name, s) for s in skip):
            no_decay.append(param)
        else:
            decay.append(param)
    groups: list[dict[str, Any]] = []
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    return groups


def default_optimizer(cfg: TrainConfig) -> OptimizerFactory:
    """The optimizer ``train.optimizer`` names, as timm's ``create_optimizer_v2`` builds
    it (``adamw`` and ``adam`` straight from torch, the same way; the others by timm)."""

    def factory(model: nn.Module) -> torch.optim.Optimizer:
        native = _TORCH_OPTIMIZERS.get(cfg.optimizer.lower())
        if native is not None:
            return native(weight_decay_groups(model, cfg.weight_decay), lr=cfg.lr, weight_decay=0.0)
        from timm.optim import create_optimizer_v2

        return create_optimizer_v2(
            model, opt=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay
        )

    return factory


def default_scheduler(cfg: TrainConfig) -> SchedulerFactory:
    """``train.schedule`` as a torch scheduler: ``cosine`` (warmup over ``warmup_frac``
    of the steps, then cosine decay to 1 % of ``lr``) or ``constant``."""
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"train.schedule must be one of {SCHEDULES}; got {cfg.schedule!r}")

    def factory(optimizer: torch.optim.Optimizer, total_steps: int) -> LRScheduler:
        if cfg.schedule == "constant":
            return LambdaLR(optimizer, lambda step: 1.0)
        return LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, cfg.warmup_frac))

    return factory


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; a clear error for CUDA without a GPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(
            f"train.device={device!r}, but no CUDA device is available; use train.device=auto or cpu"
        )
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise DeviceError(
            f"train.device={device!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(
            f"train.device={device!r}, but this machine has {torch.cuda.device_count()} CUDA "
            "device(s), numbered from 0"
        )
    return dev


class Trainer:
    """Train a model on dict batches and keep the run directory up to date.

    Parameters
    ----------
    model : nn.Module
        Maps ``(x, cond)`` to a forecast; see :func:`mse_loss_fn`.
    cfg : TrainConfig
        Optimisation settings.
    loss_fn : callable
        ``loss_fn(model, batch) -> (loss, logs)``.
    run_dir : RunDir or path, optional
        Where checkpoints and ``metrics.jsonl`` go (written on rank 0 only).
    stage : str, optional
        Name of this training stage of a multi-stage method: its checkpoints go to
        ``checkpoints/<stage>/`` and its metrics records carry ``"stage"``.
    config : Config, optional
        The run's config: batch size and workers of the loaders; saved in checkpoints.
    dist_info : DistInfo, optional
        From :func:`~physforecast.training.distributed.init_distributed`; single process by default.
    optimizer : callable, optional
        ``factory(model) -> Optimizer``; :func:`default_optimizer` by default.
    scheduler : callable, optional
        ``factory(optimizer, total_steps) -> LRScheduler``; :func:`default_scheduler` by default.
    comm_hook : (state, hook) or CommHook, optional
        A DDP communication hook, registered when training is distributed (default: the
        one ``train.comm_hook`` names, or the averager's own).
    averager : object, optional
        ``averager.average_parameters(params)`` after every optimizer step (default: the
        one ``train.averaging`` names, under DDP); its ``comm_hook()`` is registered when no
        hook is given and its ``final_average(params)`` runs after the last epoch.
    callbacks : list of callable
        Called as ``callback(trainer, record)`` after every epoch.
    on_step : list of callable
        Called as ``callback(trainer, logs)`` after every optimizer step.
    batch_size : int, optional
        Windows per batch of the loaders it builds; ``config.data.batch_size`` (or 16)
        by default.

    Examples
    --------
    >>> trainer = Trainer(model, TrainConfig(epochs=2), run_dir="runs/demo")  # doctest: +SKIP
    >>> history = trainer.fit(train_windows, val_windows)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        *,
        loss_fn: LossFn = mse_loss_fn,
        run_dir: RunDir | str | Path | None = None,
        stage: str | None = None,
        config: Config | None = None,
        dist_info: DistInfo | None = None,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        comm_hook: tuple[Any, Callable] | None = None,
        averager: Any = None,
        callbacks: list[Callable[[Trainer, dict[str, Any]], None]] | None = None,
        on_step: list[Callable[[Trainer, dict[str, Any]], None]] | None = None,
        batch_size: int | None = None,
    ) -> None:
        if cfg.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"train.precision must be fp32, bf16 or fp16; got {cfg.precision!r}")
        if cfg.accumulate < 1:
            raise ValueError(f"train.accumulate must be >= 1; got {cfg.accumulate}")
        if not 0.0 <= cfg.ema < 1.0:
            raise ValueError(f"train.ema must be in [0, 1) (0: off); got {cfg.ema}")
        self.cfg = cfg
        self.dist = dist_info or DistInfo(device=resolve_device(cfg.device))
        self.device = self.dist.device
        self.model = model.to(self.device)
        self.net: nn.Module = self.model
        self.comm_hook, averager = self._parallel_parts(comm_hook, averager)
        self.noise = None  # the NoiseScaleTracker of train.noise_scale
        if cfg.noise_scale:
            self.noise, self.comm_hook = build_noise_scale(
                cfg, self.model, self.dist.world_size, self.comm_hook
            )
        self.sharded = self.dist.enabled and cfg.fsdp  # train.fsdp: FSDP2 instead of DDP
        if self.sharded:
            fsdp.shard(self.model)
        elif self.dist.enabled:
            self.net = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
            if self.comm_hook is not None:
                self._gate = GatedState(self.comm_hook)
                self.net.register_comm_hook(self._gate, gated_hook)
        self.loss_fn = loss_fn
        if run_dir is not None and not isinstance(run_dir, RunDir):
            run_dir = RunDir(run_dir, writer=self.dist.is_main)
        self.run: RunDir | None = run_dir
        self.stage = stage
        self.config = config
        self.batch_size = batch_size
        self.averager = averager
        self.callbacks = list(callbacks or [])
        self.on_step = list(on_step or [])
        self.optimizer = (optimizer or default_optimizer(cfg))(self.model)
        self._scale_lr()
        self._scheduler_factory = scheduler or default_scheduler(cfg)
        self.scheduler: LRScheduler | None = None
        self.ema = (
            AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
            if cfg.ema > 0
            else None
        )
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=cfg.precision == "fp16" and self.device.type == "cuda"
        )
        self.step = 0
        self.epoch = 0
        self.best_val = math.inf
        self.bad_epochs = 0
        self.history: list[dict[str, Any]] = []
        self._pending: dict[str, Any] | None = None  # optimizer/scheduler state of a resume
        self._best: dict[str, torch.Tensor] | None = None  # weights of the best epoch so far
        self._rank_states: list[dict[str, Any]] | None = None  # gathered on rank 0
        self._primed = False
        self._full: tuple[dict[str, Any], dict[str, Any]] | None = None  # FSDP, this epoch

    # -- state dicts (full ones under train.fsdp) -----------------------------------------
    def _model_state(self) -> dict[str, Any]:
        if not self.sharded:
            return self.model.state_dict()
        return self._full[0] if self._full is not None else fsdp.full_model_state(self.model)

    def _optimizer_state(self) -> dict[str, Any]:
        if not self.sharded:
            return self.optimizer.state_dict()
        if self._full is not None:
            return self._full[1]
        return fsdp.full_optimizer_state(self.model, self.optimizer)

    def _load_model(self, state: dict[str, Any]) -> None:
        if self.sharded:
            fsdp.load_model_state(self.model, state)
        else:
            self.model.load_state_dict(state)

    def _load_optimizer(self, state: dict[str, Any]) -> None:
        if self.sharded:
            fsdp.load_optimizer_state(self.model, self.optimizer, state)
        else:
            self.optimizer.load_state_dict(state)

    # -- training at scale (training.parallel) ------------------------------------------
    def _parallel_parts(self, comm_hook: Any, averager: Any) -> tuple[CommHook | None, Any]:
        """The comm hook and averager: those given, else those the config names (under DDP)."""
        check_parallel(self.cfg, self.dist.world_size)
        if not self.dist.enabled:
            return _as_hook(comm_hook), averager
        if self.cfg.fsdp:
            if comm_hook is not None or averager is not None:
                raise ValueError("train.fsdp takes no DDP comm hook and no averager")
            return None, None
        if averager is None:
            averager = build_averager(self.cfg)
        if comm_hook is None:
            if averager is not None and hasattr(averager, "comm_hook"):
                comm_hook = averager.comm_hook()
            elif self.cfg.comm_hook != DEFAULT_HOOK or self.cfg.noise_scale:
                comm_hook = build_comm_hook(self.cfg, self.model)
            # else: DDP's own (C++) all-reduce, no Python hook
        return _as_hook(comm_hook), averager

    @property
    def per_rank_batch(self) -> int:
        """Windows per batch of the loaders this trainer builds (on each process)."""
        return self.batch_size or (self.config.data.batch_size if self.config is not None else 16)

    @property
    def global_batch(self) -> int:
        """Examples per optimizer step over all processes (batch x accumulate x world size)."""
        return global_batch(self.per_rank_batch, self.cfg.accumulate, self.dist.world_size)

    def _scale_lr(self) -> None:
        """``train.lr_scaling``: rescale the optimizer's rates from the tuned batch size."""
        self.lr_scale = 1.0
        if self.cfg.lr_scaling == "none":
            return
        tuned = self.config.data.batch_size if self.config is not None else self.per_rank_batch
        base = self.cfg.lr_base_batch or tuned * self.cfg.accumulate
        self.lr_scale = lr_factor_for(self.cfg, self.global_batch, base)
        for group in self.optimizer.param_groups:
            group["lr"] *= self.lr_scale
        if self.dist.is_main and self.lr_scale != 1.0:
            print(
                f"train.lr_scaling={self.cfg.lr_scaling}: lr {self.cfg.lr:.4g} at batch {base} "
                f"-> {self.cfg.lr * self.lr_scale:.4g} at global batch {self.global_batch}",
                file=sys.stderr,
                flush=True,
            )

    def _prime(self, train_data: Dataset | DataLoader) -> None:
        """Fix DDP's bucket layout before the first step, for a layout-sensitive hook.

        DDP lays its buckets out again after the first backward of a new wrapper, so
        without this a resumed run's first step would see another layout than the
        uninterrupted run's (other DLCP chunks, PowerSGD's error feedback on other
        elements). One forward and backward on the first batch, with the hook bypassed
        (:class:`~physforecast.training.comm_hooks.GatedState`), the random-number state,
        the buffers and the gradients restored, leaves training as it was.
        """
        self._primed = True
        if not self.dist.enabled or self.comm_hook is None or not self.comm_hook.layout_sensitive:
            return
        devices = [self.device] if self.device.type == "cuda" else []
        buffers = {k: v.detach().clone() for k, v in self.model.named_buffers()}
        with torch.random.fork_rng(devices=devices):
            batch = next(iter(self.loader(train_data, train=True, epoch=self.epoch)))
            self.net.train()
            self._gate.priming = True
            try:
                loss, _ = self._loss(self.net, self._to_device(batch))
                loss.backward()
            finally:
                self._gate.priming = False
        self.optimizer.zero_grad(set_to_none=True)
        self.model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for k, v in self.model.named_buffers():
                v.copy_(buffers[k])

    def _final_average(self) -> None:
        """One global average of the ranks' models after the last epoch (averagers only)."""
        if not self.dist.enabled or not hasattr(self.averager, "final_average"):
            return
        self.averager.final_average(self.model.parameters())
        if self.ema is not None:
            self.averager.final_average(self.ema.module.parameters())

    def _scale_record(self) -> dict[str, Any]:
        """Noise-scale estimates and the comm hook's byte counters of the last step."""
        out: dict[str, Any] = {}
        if self.noise is not None:
            out.update(self.noise.record())
        counters = self.comm_hook.counters() if self.comm_hook is not None else None
        for key, value in (counters or {}).items():
            out[f"comm_{key}"] = value
        return out

    def _rank_state(self) -> dict[str, Any]:
        """What differs between ranks: the comm hook's state and, when an averager lets the
        models drift apart, this rank's weights, optimizer and RNG."""
        local: dict[str, Any] = {}
        if self.comm_hook is not None:
            local["comm_hook"] = self.comm_hook.state_dict()
        if self.averager is not None:
            local["model"] = self.model.state_dict()
            local["optimizer"] = self.optimizer.state_dict()
            local["rng_cpu"] = torch.get_rng_state()
            if self.ema is not None:
                local["ema"] = self.ema.module.state_dict()
        return _to_cpu(local)

    def _gather_rank_states(self) -> None:
        """Collect every rank's :meth:`_rank_state` on rank 0 (a collective; every rank)."""
        if not self.dist.enabled or (self.comm_hook is None and self.averager is None):
            return
        gathered: list[Any] | None = [None] * self.dist.world_size if self.dist.is_main else None
        torch.distributed.gather_object(self._rank_state(), gathered, dst=0)
        self._rank_states = gathered

    def _load_rank_state(self, state: dict[str, Any]) -> None:
        """This rank's part of a checkpoint (see :meth:`_rank_state`)."""
        ranks = state.get("ranks")
        mine: dict[str, Any] = {}
        if ranks is not None and self.dist.enabled:
            if len(ranks) == self.dist.world_size:
                mine = ranks[self.dist.rank]
            elif self.dist.is_main:
                warnings.warn(
                    f"the checkpoint was written by {len(ranks)} processes and this run has "
                    f"{self.dist.world_size}: every rank continues from rank 0's state (the "
                    "comm-hook and averaging state do not carry over exactly)",
                    stacklevel=3,
                )
        if "model" in mine:
            self.model.load_state_dict(mine["model"])
            self._pending["optimizer"] = mine["optimizer"]
            torch.set_rng_state(mine["rng_cpu"].cpu())
            if self.ema is not None and "ema" in mine:
                self.ema.module.load_state_dict(mine["ema"])
        hook_state = mine.get("comm_hook", state.get("comm_hook"))
        if self.comm_hook is not None and hook_state is not None:
            if state.get("comm_hook_name") == self.comm_hook.name:
                self.comm_hook.load_state_dict(hook_state)
        if hasattr(self.averager, "load_state_dict") and "averager" in state:
            if state.get("averager_name") == type(self.averager).__name__:
                self.averager.load_state_dict(state["averager"])
        if self.noise is not None and "noise_scale" in state:
            self.noise.load_state_dict(state["noise_scale"])

    # -- pieces -------------------------------------------------------------------
    @property
    def run_dir(self) -> Path | None:
        """The run directory's path (None when the trainer writes nothing)."""
        return self.run.path if self.run is not None else None

    @property
    def eval_model(self) -> nn.Module:
        """The weights validation and checkpoints' inference use: the EMA when enabled."""
        return self.ema.module if self.ema is not None else self.net

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context for ``train.precision`` (a no-op for fp32)."""
        if self.cfg.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in batch.items()
        }

    def loader(self, data: Dataset | DataLoader, *, train: bool, epoch: int = 0) -> DataLoader:
        """A DataLoader for ``data``; training order is seeded by ``(seed, epoch)`` so resumes repeat it."""
        if isinstance(data, DataLoader):
            return data
        bs = self.per_rank_batch
        workers = self.config.data.num_workers if self.config is not None else 0
        if self.dist.enabled:
            sampler = DistributedSampler(data, shuffle=train, seed=self.cfg.seed, drop_last=False)
            sampler.set_epoch(epoch)
        elif train:
            sampler = RandomSampler(
                data, generator=torch.Generator().manual_seed(self.cfg.seed * 100003 + epoch)
            )
        else:
            sampler = None
        return DataLoader(
            data,
            batch_size=bs,
            sampler=sampler,
            num_workers=workers,
            worker_init_fn=worker_init if workers else None,
            collate_fn=collate_windows,
        )

    def _loss(self, net: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        with self.autocast():
            loss, logs = self.loss_fn(net, batch)
        if not torch.isfinite(loss):
            last = self.run.checkpoint_path("last", self.stage) if self.run else None
            raise TrainingDivergedError(
                f"loss became {float(loss.detach())} at epoch {self.epoch + 1}, step {self.step}; "
                f"training stopped. Last good checkpoint: {last if last and last.exists() else 'none'}. "
                "Try a lower train.lr, train.grad_clip > 0 or train.precision=fp32."
            )
        return loss, logs

    def train_one_batch(
        self, batch: dict[str, torch.Tensor], *, sync: bool = True, scale: float = 1.0
    ) -> dict[str, float]:
        """Forward and backward one (micro-)batch; with ``sync`` also clip and step.

        Parameters
        ----------
        batch : dict
            A batch of windows.
        sync : bool
            Whether this is the last micro-batch of an optimizer step (gradients are
            all-reduced and the optimizer steps); earlier micro-batches only accumulate.
        scale : float
            Weight of this micro-batch's loss in the step (``1 / accumulate``).
        """
        self.net.train()
        batch = self._to_device(batch)
        lr = self.optimizer.param_groups[0]["lr"]
        no_sync: contextlib.AbstractContextManager = contextlib.nullcontext()
        if self.dist.enabled and not sync:
            no_sync = fsdp.no_sync(self.model) if self.sharded else self.net.no_sync()
        with no_sync:
            loss, logs = self._loss(self.net, batch)
            if self.noise is not None:
                self.noise.before_backward()
            self.scaler.scale(loss * scale).backward()
            if self.noise is not None:
                self.noise.after_backward(batch["x"].shape[0])
        if sync:
            if self.noise is not None:  # before clipping changes the gradients
                logs.update(self.noise.step(loss_scale=scale * float(self.scaler.get_scale())))
            if self.cfg.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            if self.scheduler is not None:
                self.scheduler.step()
            if self.averager is not None:
                self.averager.average_parameters(self.model.parameters())
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            self.step += 1
            self._full = None  # the gathered FSDP state is out of date
        return {"loss": float(loss.detach()), "lr": lr, **logs}

    @torch.no_grad()
    def evaluate(self, data: Dataset | DataLoader) -> dict[str, float]:
        """Mean loss over ``data`` (all ranks together under DDP), on the EMA weights when
        enabled; only its first ``train.max_val_steps`` batches when that is set."""
        net = self.eval_model
        net.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        cap = self.cfg.max_val_steps
        for i, batch in enumerate(self.loader(data, train=False)):
            if cap is not None and i >= cap:
                break
            batch = self._to_device(batch)
            with self.autocast():
                loss, _ = self.loss_fn(net, batch)
            n = batch["x"].shape[0]
            total += torch.tensor([float(loss) * n, n], dtype=torch.float64, device=self.device)
        if self.dist.enabled:
            torch.distributed.all_reduce(total)
        return {"val_loss": float(total[0] / total[1].clamp_min(1))}

    # -- loop ---------------------------------------------------------------------
    def fit(
        self,
        train_data: Dataset | DataLoader,
        val_data: Dataset | DataLoader | None = None,
        epochs: int | None = None,
    ) -> list[dict[str, Any]]:
        """Train until ``epochs`` epochs are done in total (``train.epochs`` by default).

        A resumed trainer (see :meth:`load`) continues from its saved epoch with the
        same learning-rate schedule and data order, so it ends with the same weights
        as an uninterrupted run.
        """
        epochs = int(epochs if epochs is not None else self.cfg.epochs)
        batches = len(self.loader(train_data, train=True, epoch=0))
        if self.cfg.max_steps_per_epoch:
            batches = min(batches, self.cfg.max_steps_per_epoch)
        steps_per_epoch = math.ceil(batches / self.cfg.accumulate)
        if self.scheduler is None:
            self.scheduler = self._scheduler_factory(
                self.optimizer, max(1, epochs * steps_per_epoch)
            )
        if self._pending is not None:  # after the scheduler exists, so its state wins
            self._load_optimizer(self._pending["optimizer"])
            if self._pending.get("scheduler") is not None:
                self.scheduler.load_state_dict(self._pending["scheduler"])
            self._pending = None
        if self.epoch < epochs and not self._primed:
            self._prime(train_data)
        while self.epoch < epochs:
            record = self._run_epoch(train_data, val_data, batches, epochs)
            if self.cfg.patience and self.bad_epochs >= self.cfg.patience:
                if self.dist.is_main:
                    tqdm.write(
                        f"early stopping after epoch {record['epoch']}: no improvement for "
                        f"{self.cfg.patience} epochs"
                    )
                if self.epoch < epochs and hasattr(self.averager, "final_average"):
                    self._final_average()
                    self._gather_rank_states()
                    self.save_checkpoint("last")
                break
        return self.history

    def _run_epoch(self, train_data, val_data, batches: int, epochs: int) -> dict[str, Any]:
        loader = self.loader(train_data, train=True, epoch=self.epoch)
        t0, seen, loss_sum = time.perf_counter(), 0, 0.0
        bar = tqdm(
            total=batches,
            desc=f"{self.stage + ' ' if self.stage else ''}epoch {self.epoch + 1}/{epochs}",
            leave=False,
            disable=None if self.dist.is_main else True,
        )
        acc = self.cfg.accumulate
        for i, batch in enumerate(loader):
            if i >= batches:
                break
            last = (i + 1) % acc == 0 or i + 1 == batches
            group = min(acc, batches - (i // acc) * acc)  # micro-batches in this step
            logs = self.train_one_batch(batch, sync=last, scale=1.0 / group)
            n = batch["x"].shape[0]
            seen += n
            loss_sum += logs["loss"] * n
            if last:
                for callback in self.on_step:
                    callback(self, logs)
            bar.set_postfix(
                loss=f"{logs['loss']:.4g}", samples_s=f"{seen / (time.perf_counter() - t0):.1f}"
            )
            bar.update()
        bar.close()
        self.epoch += 1
        if self.epoch >= epochs:
            self._final_average()
        elapsed = time.perf_counter() - t0
        record: dict[str, Any] = {"epoch": self.epoch}
        if self.stage:
            record["stage"] = self.stage
        record.update(
            {
                "step": self.step,
                "train_loss": loss_sum / max(seen, 1),
                "lr": self.optimizer.param_groups[0]["lr"],
                "samples_per_s": seen * self.dist.world_size / max(elapsed, 1e-9),
                "epoch_time_s": elapsed,
            }
        )
        record.update(self._scale_record())
        if val_data is not None:
            record.update(self.evaluate(val_data))
        if self.sharded:  # gathered once, on every rank (a collective), for best and last
            self._full = (self._model_state(), self._optimizer_state())
        improved = record.get("val_loss", record["train_loss"]) < self.best_val
        if improved:
            self.best_val = record.get("val_loss", record["train_loss"])
            self.bad_epochs = 0
            if self.sharded:  # the full weights, on rank 0
                self._best = dict(self._full[0])
            else:
                self._best = {
                    k: v.detach().clone() for k, v in unwrap(self.eval_model).state_dict().items()
                }
        else:
            self.bad_epochs += 1
        self.history.append(record)
        if self.dist.is_main and not sys.stderr.isatty():
            print(_epoch_line(record, epochs), file=sys.stderr, flush=True)
        if self.run is not None:
            self.run.append_metrics(record)
            self._gather_rank_states()
            self.save_checkpoint("last")
            if improved:
                self.save_checkpoint("best")
        for callback in self.callbacks:
            callback(self, record)
        return record

    # -- checkpoints ----------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything needed to resume exactly: weights, optimizer, schedule, counters, RNG, config."""
        state = {
            "model": self._model_state(),
            "optimizer": self._optimizer_state(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "step": self.step,
            "epoch": self.epoch,
            "best_val": self.best_val,
            "bad_epochs": self.bad_epochs,
            "rng_cpu": torch.get_rng_state(),
            "history": json.dumps(self.history),
            "config": json.dumps(config_to_dict(self.config)) if self.config is not None else "{}",
        }
        if state["scheduler"] is None:
            del state["scheduler"]
        if self.ema is not None:
            state["ema"] = self.ema.module.state_dict()
            state["ema_count"] = int(self.ema.n_averaged)
        if self.comm_hook is not None:
            state["comm_hook"] = self.comm_hook.state_dict()
            state["comm_hook_name"] = self.comm_hook.name
        if hasattr(self.averager, "state_dict"):
            state["averager"] = self.averager.state_dict()
            state["averager_name"] = type(self.averager).__name__
        if self.noise is not None:
            state["noise_scale"] = self.noise.state_dict()
        if self._rank_states is not None:
            state["ranks"] = self._rank_states
        if torch.cuda.is_available():
            state["rng_cuda"] = torch.cuda.get_rng_state_all()
        return state

    def best_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The weights of the best epoch (by validation loss, else training loss): kept in
        memory, or read from the stage's ``best`` checkpoint after a resume; None before
        the first epoch. The EMA weights when ``train.ema`` is on."""
        if self._best is None and self.run is not None:
            path = self.run.checkpoint_path("best", self.stage)
            if path.exists():
                state = load_checkpoint(path, map_location=self.device)
                self._best = state.get("ema", state["model"])
        return self._best

    def save_checkpoint(self, name: str) -> Path | None:
        """Write ``checkpoints/[<stage>/]<name>.pt`` atomically (rank 0 only)."""
        if self.run is None:
            return None
        return self.run.save_checkpoint(self.state(), name, self.stage)

    def load(self, path: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` to resume training.

        Weights, counters and RNG state are restored now; the optimizer and schedule state
        when :meth:`fit` has built the schedule.
        """
        state = load_checkpoint(path, map_location=self.device)
        self._load_model(state["model"])
        if self.ema is not None and "ema" in state:
            self.ema.module.load_state_dict(state["ema"])
            self.ema.n_averaged.fill_(int(state.get("ema_count", 1)))
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.best_val, self.bad_epochs = float(state["best_val"]), int(state["bad_epochs"])
        self.history = json.loads(state["history"])
        self._pending = {"optimizer": state["optimizer"], "scheduler": state.get("scheduler")}
        torch.set_rng_state(state["rng_cpu"].cpu())
        if "rng_cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        self._load_rank_state(state)
        if self.run is not None:  # records of epochs after the checkpoint are dropped
            self.run.keep_metrics(
                lambda r: r.get("stage") != self.stage or int(r.get("epoch", 0)) <= self.epoch
            )

    def resume(self) -> bool:
        """Load this stage's ``last`` checkpoint when the run directory has one; True if it did."""
        if self.run is None or not self.run.checkpoint_path("last", self.stage).exists():
            return False
        self.load(self.run.checkpoint_path("last", self.stage))
        return True


def _as_hook(hook: Any) -> CommHook | None:
    """A :class:`CommHook` for a ``(state, hook)`` pair (or ``None``, or a CommHook)."""
    if hook is None or isinstance(hook, CommHook):
        return hook
    state, fn = hook
    return CommHook(getattr(fn, "__name__", "custom"), state, fn)


def _to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in nested dicts, lists and tuples moved to the CPU."""
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    """One line per epoch for logs and pipes (tqdm draws only on a terminal)."""
    parts = [f"{record.get('stage', 'train')} epoch {record['epoch']}/{epochs}"]
    parts.append(f"loss {record['train_loss']:.4g}")
    if "val_loss" in record:
        parts.append(f"val {record['val_loss']:.4g}")
    parts.append(f"{record['samples_per_s']:.1f} samples/s")
    remaining = (epochs - record["epoch"]) * record["epoch_time_s"]
    parts.append(f"ETA {remaining:.0f} s")
    return ", ".join(parts)
