"""Training methods as plug-ins: the :class:`Method` interface, the :class:`RunContext` every
stage of a method trains through, and the ``supervised`` method.

A method registers itself in :data:`~physforecast.registry.METHODS` with its config section
(a dataclass, or none)::

    @METHODS.register("mymethod", config=MyMethodConfig, description="...")
    class MyMethod(Method):
        def fit(self, ctx: RunContext) -> nn.Module:
            model = self.build(self.model_spec(ctx.cfg, ctx.data.spec), ctx.cfg, ctx.data.spec)
            ctx.trainer(model, stage="main").fit(ctx.data.train, ctx.data.val)
            ctx.save_model(model)
            return model

and, once declared next to ``METHODS`` in :mod:`physforecast.registry` (its name and
module: imported only when a config or run names it), is available as
``physforecast train --method mymethod``, its options as
``--set mymethod.<key>=...``. Nothing outside a method names it: the run
(:func:`physforecast.training.run.train`) opens the data, hands a :class:`RunContext` to
``fit``, loads the model back through ``build`` and lets ``evaluate`` add its own report.

Every Trainer made by :meth:`RunContext.trainer` trains under DDP when launched by
``torchrun``, writes its checkpoints and metrics into the run directory on rank 0 only,
and resumes a ``--resume`` run from its stage's last checkpoint; :meth:`RunContext.artifact`
keeps what a stage produces between trainings (pseudo-labels) so a resumed run reuses it.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import nn

from physforecast.atomic import atomic_write
from physforecast.config import Config
from physforecast.data.prepare import PreparedData
from physforecast.data.spec import DataSpec
from physforecast.registry import BACKBONES, METHODS
from physforecast.run_dir import RunDir
from physforecast.training.distributed import DistInfo
from physforecast.training.trainer import LossFn, Trainer, mse_loss_fn

__all__ = ["Method", "RunContext", "SupervisedMethod", "backbone_spec", "get_method"]


def backbone_spec(cfg: Config, data: DataSpec) -> dict[str, Any]:
    """The :func:`physforecast.create_backbone` arguments of a run (saved as ``model.json``)."""
    return {
        "name": cfg.model.backbone,
        "in_steps": data.in_steps,
        "out_steps": data.out_steps,
        "in_channels": data.in_channels,
        "cond_dim": len(data.params) or None,
        **cfg.model.options,
    }


def get_method(name: str) -> Method:
    """The registered method ``name``; a ``ValueError`` naming the valid ones otherwise."""
    return METHODS.create(name)


@dataclass
class RunContext:
    """What every stage of a method needs: data, run directory, processes, resume state.

    Attributes
    ----------
    cfg : Config
        The run's resolved config.
    data : PreparedData
        Windows of the three splits, normalization and data spec.
    run : RunDir
        The run directory (writes are no-ops on non-zero ranks).
    dist : DistInfo
        Rank, world size and device of this process.
    resume : bool
        Whether this run continues an interrupted one: stages resume from their last
        checkpoints and reuse their artifacts.
    """

    cfg: Config
    data: PreparedData
    run: RunDir
    dist: DistInfo
    resume: bool = False

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def trainer(
        self,
        module: nn.Module,
        *,
        stage: str | None = None,
        loss_fn: LossFn = mse_loss_fn,
        epochs: int | None = None,
        max_steps_per_epoch: int | None = None,
        **options: Any,
    ) -> Trainer:
        """A :class:`Trainer` for ``module`` with the run's settings.

        Parameters
        ----------
        module : nn.Module
            What this stage trains.
        stage : str, optional
            The stage's name: checkpoints in ``checkpoints/<stage>/``, metrics records
            tagged with it. ``None`` writes ``checkpoints/{best,last}.pt`` directly.
        loss_fn : callable
            ``loss_fn(model, batch) -> (loss, logs)``.
        epochs, max_steps_per_epoch : int, optional
            Override ``train.epochs`` / ``train.max_steps_per_epoch`` for this stage.
        **options
            Further :class:`Trainer` arguments (``optimizer``, ``scheduler``,
            ``comm_hook``, ``averager``, ``callbacks``, ``on_step``).

        Returns
        -------
        Trainer
            Already resumed from the stage's ``last`` checkpoint when :attr:`resume` is set
            and one exists (a finished stage then trains no further).
        """
        changes: dict[str, Any] = {}
        if epochs is not None:
            changes["epochs"] = int(epochs)
        if max_steps_per_epoch is not None:
            changes["max_steps_per_epoch"] = int(max_steps_per_epoch)
        trainer = Trainer(
            module,
            replace(self.cfg.train, **changes),
            loss_fn=loss_fn,
            run_dir=self.run,
            stage=stage,
            config=self.cfg,
            dist_info=self.dist,
            **options,
        )
        if self.resume and trainer.resume():
            target = trainer.cfg.epochs
            name = stage or "training"
            if trainer.epoch >= target:
                line = f"{name} already finished ({trainer.epoch}/{target} epochs)"
            else:
                line = f"resuming {name} at epoch {trainer.epoch + 1}/{target}"
            if self.is_main:
                print(line, file=sys.stderr, flush=True)
        return trainer

    def artifact(
        self, name: str, make: Callable[[], dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """What a stage produces, made once and kept in ``stages/<name>.pt``.

        On a resumed run an existing artifact is read back instead of made again, and the
        random-number state is set to what it was after making it, so the stages that
        follow draw the same numbers as in an uninterrupted run. Every rank makes (or
        reads) the artifact; only the writer saves it.

        Parameters
        ----------
        name : str
            File name stem (``round-1``).
        make : callable
            Returns a dict of tensors (and numbers).
        """
        path = self.run.file(f"stages/{name}.pt")
        if self.resume and path.exists():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            torch.set_rng_state(saved.pop("_rng_cpu"))
            return saved
        value = make()
        if self.run.writer:
            blob = {**value, "_rng_cpu": torch.get_rng_state()}
            buffer = io.BytesIO()
            torch.save(blob, buffer)
            atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))
        return value

    def save_model(self, model: nn.Module, **extra: Any) -> None:
        """Write ``model``'s weights as the run's ``checkpoints/best.pt`` and ``last.pt``
        (for a method whose last stage is not a plain :meth:`trainer` with ``stage=None``)."""
        state = {"model": model.state_dict(), "epoch": self.cfg.train.epochs, **extra}
        for name in ("last", "best"):
            self.run.save_checkpoint(state, name)


class Method:
    """A way of training a model, registered in :data:`~physforecast.registry.METHODS`.

    Subclasses implement :meth:`fit`; :meth:`build` and :meth:`model_spec` default to a
    plain backbone and :meth:`evaluate` to no extra report.
    """

    #: The name the method is registered under.
    name: ClassVar[str] = ""
    #: Whether ``--resume`` can continue an interrupted run of this method. True for every
    #: method that trains all its stages through :meth:`RunContext.trainer` (and keeps
    #: what they produce with :meth:`RunContext.artifact`); a method that cannot sets it
    #: False, and a ``--resume`` of its runs is refused instead of starting again.
    resumable: ClassVar[bool] = True

    def check(self, cfg: Config, data: DataSpec) -> None:
        """Refuse settings this method cannot train with, before the run writes anything
        (raise :class:`~physforecast.errors.ConfigError`). Nothing by default."""

    def model_spec(self, cfg: Config, data: DataSpec) -> dict[str, Any]:
        """The JSON-safe arguments :meth:`build` needs (saved as ``model.json``)."""
        return backbone_spec(cfg, data)

    def build(self, spec: dict[str, Any], cfg: Config, data: DataSpec) -> nn.Module:
        """The untrained model, with the structure the run's checkpoints hold.

        Parameters
        ----------
        spec : dict
            From :meth:`model_spec` (the run's ``model.json``).
        cfg : Config
            The run's config (the method's section).
        data : DataSpec
            What the model will see.
        """
        spec = dict(spec)
        return BACKBONES.create(spec.pop("name"), **spec)

    def fit(self, ctx: RunContext) -> nn.Module:
        """Train through ``ctx`` and return the trained model (its checkpoints written)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement fit()")

    def evaluate(self, model: nn.Module, ctx: RunContext) -> str | None:
        """This method's own report on the test split, beyond the scorecard.

        Runs after the scorecard in ``physforecast evaluate`` (and after training); it
        writes its files through ``ctx.run`` and returns a Markdown text to print (None:
        nothing to add).
        """
        return None


@METHODS.register(
    "supervised", config=None, description="the backbone alone, trained with masked MSE"
)
class SupervisedMethod(Method):
    """Train the backbone on the windows with masked MSE (the default method)."""

    name = "supervised"

    def fit(self, ctx: RunContext) -> nn.Module:
        model = self.build(self.model_spec(ctx.cfg, ctx.data.spec), ctx.cfg, ctx.data.spec)
        ctx.trainer(model).fit(ctx.data.train, ctx.data.val)
        return model
