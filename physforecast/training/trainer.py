"""One readable training loop: AdamW, warmup + cosine, clipping, autocast, DDP, checkpoints."""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler
from tqdm.auto import tqdm

from physforecast.config import Config, TrainConfig, config_to_dict
from physforecast.data.windows import worker_init

from .checkpoint import load_checkpoint, save_checkpoint
from .distributed import DistInfo

__all__ = [
    "Trainer",
    "TrainingDivergedError",
    "mse_loss_fn",
    "unwrap",
    "lr_factor",
    "resolve_device",
]

LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the module itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def model_cond(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """``batch["params"]`` when the model takes physical parameters, else ``None``."""
    return batch.get("params") if getattr(unwrap(model), "cond_dim", 0) else None


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error over valid points; ``mask`` (B, C, H, W) broadcasts over time."""
    err = (pred.float() - target.float()).square()
    if mask is None:
        return err.mean()
    m = mask.unsqueeze(1).expand_as(err).float()
    return (err * m).sum() / m.sum().clamp_min(1.0)


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


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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
    run_dir : path, optional
        Where ``checkpoints/{last,best}.pt`` and ``metrics.jsonl`` go (rank 0 only).
    config : Config, optional
        Saved as JSON inside every checkpoint.
    dist_info : DistInfo, optional
        From :func:`~physforecast.training.distributed.init_distributed`; single process by default.
    callbacks : list of callable
        Called as ``callback(trainer, record)`` after every epoch.

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
        run_dir: str | Path | None = None,
        config: Config | None = None,
        dist_info: DistInfo | None = None,
        callbacks: list[Callable[[Trainer, dict[str, Any]], None]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.dist = dist_info or DistInfo(device=resolve_device(cfg.device))
        self.device = self.dist.device
        self.model = model.to(self.device)
        self.net: nn.Module = (
            DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
            if self.dist.enabled
            else self.model
        )
        self.loss_fn = loss_fn
        self.run_dir = Path(run_dir) if run_dir is not None else None
        if self.run_dir is not None and self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.callbacks = list(callbacks or [])
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        if cfg.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"train.precision must be fp32, bf16 or fp16; got {cfg.precision!r}")
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=cfg.precision == "fp16" and self.device.type == "cuda"
        )
        self.step = 0
        self.epoch = 0
        self.best_val = math.inf
        self.bad_epochs = 0
        self.history: list[dict[str, Any]] = []
        self.total_steps = 1

    # -- pieces -------------------------------------------------------------------
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
        bs = self.config.data.batch_size if self.config is not None else 16
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
        )

    def set_lr(self) -> float:
        lr = self.cfg.lr * lr_factor(self.step, self.total_steps, self.cfg.warmup_frac)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def train_one_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One optimisation step on ``batch``; returns the logged values."""
        self.net.train()
        batch = self._to_device(batch)
        lr = self.set_lr()
        with self.autocast():
            loss, logs = self.loss_fn(self.net, batch)
        if not torch.isfinite(loss):
            last = self.run_dir / "checkpoints" / "last.pt" if self.run_dir else None
            raise TrainingDivergedError(
                f"loss became {float(loss.detach())} at epoch {self.epoch + 1}, step {self.step}; training stopped. "
                f"Last good checkpoint: {last if last and last.exists() else 'none'}. "
                "Try a lower train.lr, train.grad_clip > 0 or train.precision=fp32."
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        return {"loss": float(loss.detach()), "lr": lr, **logs}

    @torch.no_grad()
    def evaluate(self, data: Dataset | DataLoader) -> dict[str, float]:
        """Mean loss over ``data`` (all ranks together under DDP)."""
        self.net.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        for batch in self.loader(data, train=False):
            batch = self._to_device(batch)
            with self.autocast():
                loss, _ = self.loss_fn(self.net, batch)
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
        steps_per_epoch = len(self.loader(train_data, train=True, epoch=0))
        if self.cfg.max_steps_per_epoch:
            steps_per_epoch = min(steps_per_epoch, self.cfg.max_steps_per_epoch)
        self.total_steps = max(1, epochs * steps_per_epoch)
        while self.epoch < epochs:
            record = self._run_epoch(train_data, val_data, steps_per_epoch)
            if self.cfg.patience and self.bad_epochs >= self.cfg.patience:
                if self.dist.is_main:
                    tqdm.write(
                        f"early stopping after epoch {record['epoch']}: no improvement for {self.cfg.patience} epochs"
                    )
                break
        return self.history

    def _run_epoch(self, train_data, val_data, steps_per_epoch: int) -> dict[str, Any]:
        loader = self.loader(train_data, train=True, epoch=self.epoch)
        t0, seen, loss_sum = time.perf_counter(), 0, 0.0
        bar = tqdm(
            total=steps_per_epoch,
            desc=f"epoch {self.epoch + 1}",
            leave=False,
            disable=None if self.dist.is_main else True,
        )
        for i, batch in enumerate(loader):
            if i >= steps_per_epoch:
                break
            logs = self.train_one_batch(batch)
            n = batch["x"].shape[0]
            seen += n
            loss_sum += logs["loss"] * n
            bar.set_postfix(
                loss=f"{logs['loss']:.4g}", samples_s=f"{seen / (time.perf_counter() - t0):.1f}"
            )
            bar.update()
        bar.close()
        self.epoch += 1
        elapsed = time.perf_counter() - t0
        record: dict[str, Any] = {
            "epoch": self.epoch,
            "step": self.step,
            "train_loss": loss_sum / max(seen, 1),
            "lr": self.optimizer.param_groups[0]["lr"],
            "samples_per_s": seen * self.dist.world_size / max(elapsed, 1e-9),
            "epoch_time_s": elapsed,
        }
        if val_data is not None:
            record.update(self.evaluate(val_data))
        improved = record.get("val_loss", record["train_loss"]) < self.best_val
        if improved:
            self.best_val = record.get("val_loss", record["train_loss"])
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        self.history.append(record)
        if self.dist.is_main and self.run_dir is not None:
            with open(self.run_dir / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")
            self.save_checkpoint("last")
            if improved:
                self.save_checkpoint("best")
        for callback in self.callbacks:
            callback(self, record)
        return record

    # -- checkpoints ----------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything needed to resume exactly: weights, optimizer, counters, RNG, config."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "best_val": self.best_val,
            "bad_epochs": self.bad_epochs,
            "rng_cpu": torch.get_rng_state(),
            "history": json.dumps(self.history),
            "config": json.dumps(config_to_dict(self.config)) if self.config is not None else "{}",
        }
        if torch.cuda.is_available():
            state["rng_cuda"] = torch.cuda.get_rng_state_all()
        return state

    def save_checkpoint(self, name: str) -> Path | None:
        """Write ``checkpoints/<name>.pt`` atomically (rank 0 only)."""
        if self.run_dir is None or not self.dist.is_main:
            return None
        return save_checkpoint(self.state(), self.run_dir / "checkpoints" / f"{name}.pt")

    def load(self, path: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` to resume training."""
        state = load_checkpoint(path, map_location=self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.best_val, self.bad_epochs = float(state["best_val"]), int(state["bad_epochs"])
        self.history = json.loads(state["history"])
        torch.set_rng_state(state["rng_cpu"].cpu())
        if "rng_cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
