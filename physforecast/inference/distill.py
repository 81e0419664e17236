"""Distilling a deep forecaster into boosted shallow students (Academus, arXiv 2408.12526).

Students are trained one after another. Student ``k`` learns what the teacher does that
the students before it do not (boosting):

    h_{k-1} = S_1(x) + ... + S_{k-1}(x)            frozen, computed once and cached
    loss_k  = MSE(decode(h_{k-1} + S_k(x)), T(x))  [+ w * MSE(h_{k-1} + S_k(x), z_T) / var(z_T)]

By default ``decode`` is the identity and the students fit the teacher's forecast. With
**stacking** (``stack=True``; the teacher's backbone must expose a skip-free latent
``z_T`` of shape (B, D, H, W), as the ResNet and FNO do) the students' sum stands in for
the teacher's deep stack of layers, the teacher's own decoder maps it to the forecast,
and the bracketed term pulls it towards ``z_T``.

Every student's last layer starts at zero, so a new student begins at the previous
ensemble's loss; the state kept is the best one seen on the training set, including that
starting point, so the training distillation loss of the prefix ensembles
``n_active = 0, 1, ..., K`` never increases. The optimisation is the package's
:class:`~physforecast.training.Trainer` (AdamW, warmup + cosine, clipping, autocast).

The teacher's targets (and the windows) are computed once and held in memory:
``N * (T_in + T_out) * C * H * W`` floats, plus ``2 * N * D * H * W`` with stacking.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from physforecast.config import TrainConfig
from physforecast.layers import stack_time
from physforecast.training import Trainer
from physforecast.training.trainer import masked_mse, resolve_device

from .ensemble import StudentEnsemble
from .students import StudentSpec

#: ``trainer(student, loss_fn, k, batch_size) -> Trainer``: how student ``k`` is trained.
TrainerFactory = Callable[[nn.Module, Callable, int, int], Trainer]

__all__ = [
    "TeacherTargets",
    "Distillation",
    "teacher_targets",
    "stackable",
    "distill",
    "distillation_loss",
]


@dataclass
class TeacherTargets:
    """What the teacher does on the training windows (CPU tensors, normalized units).

    Attributes
    ----------
    x : torch.Tensor
        Histories (N, T_in, C, H, W).
    y : torch.Tensor
        The teacher's forecasts (N, T_out, C_out, H, W).
    cond : torch.Tensor or None
        Physical parameters (N, P), when the teacher is conditioned on them.
    mask : torch.Tensor or None
        Valid points (N, C, H, W), when the windows give a mask.
    z : torch.Tensor or None
        The teacher's latent (N, D, H, W), with stacking.
    """

    x: torch.Tensor
    y: torch.Tensor
    cond: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    z: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def latent_scale(self) -> float:
        """Mean square of the teacher's latent about its mean (makes the latent term scale-free)."""
        if self.z is None:
            return 1.0
        return max(float(self.z.double().var()), 1e-12)


@dataclass
class Distillation:
    """The result of :func:`distill`.

    Attributes
    ----------
    model : StudentEnsemble
        The students (and, with stacking, the teacher as their decoder).
    losses : list of float
        Training distillation loss of the first ``n`` students, ``n = 0 .. K``.
    students : list of dict
        Per student: ``loss_before``, ``loss_after``, ``best_epoch`` (0: the zero start was
        kept), ``seconds`` and the trainer's per-epoch ``history``.
    latent_weight : float
        Weight of the latent term (0 without stacking).
    seconds : float
        Wall time of the whole distillation, teacher pass included.
    """

    model: StudentEnsemble
    losses: list[float]
    students: list[dict[str, Any]] = field(default_factory=list)
    latent_weight: float = 0.0
    seconds: float = 0.0


class _Batches(Dataset):
    """Dict samples over cached tensors (what the Trainer iterates)."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors
        self.n = int(next(iter(tensors.values())).shape[0])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}


def _cond(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
    return batch.get("params") if getattr(model, "cond_dim", 0) else None


def stackable(
    teacher: nn.Module, x: torch.Tensor, cond: torch.Tensor | None = None
) -> tuple[bool, str]:
    """Whether the teacher exposes a latent the students can stand in for, and why not.

    It must have ``encode``/``decode`` and a latent ``Latent(z, skips=())`` with ``z`` of
    shape (B, D, H, W) on the input grid.
    """
    if not (
        callable(getattr(teacher, "encode", None)) and callable(getattr(teacher, "decode", None))
    ):
        return False, f"{type(teacher).__name__} has no encode/decode"
    with torch.no_grad():
        latent = teacher.encode(x, cond)
    z, skips = getattr(latent, "z", None), getattr(latent, "skips", None)
    if z is None or skips is None:
        return False, f"{type(teacher).__name__}.encode does not return a Latent"
    if len(skips):
        return False, f"{type(teacher).__name__}'s decoder needs {len(skips)} skip connection(s)"
    if z.ndim != 4 or tuple(z.shape[-2:]) != tuple(x.shape[-2:]):
        return False, (
            f"{type(teacher).__name__}'s latent has shape {tuple(z.shape)}, not (B, D, H, W) "
            f"on the {tuple(x.shape[-2:])} input grid"
        )
    return True, ""


@torch.no_grad()
def student_ensemble(
    teacher: nn.Module,
    x: torch.Tensor,
    cond: torch.Tensor | None = None,
    *,
    stack: bool | None = False,
    width: int = 32,
    depth: int = 2,
    kernel_size: int = 3,
    padding_mode: str = "zeros",
) -> StudentEnsemble:
    """An empty :class:`StudentEnsemble` (no student yet) shaped for ``teacher``.

    Parameters
    ----------
    teacher : nn.Module
        The backbone to distil (``in_steps``, ``out_steps``, ``in_channels`` attributes).
    x : torch.Tensor
        An input like the teacher's, (B, T_in, C, H, W); only its shape and the teacher's
        latent on it matter.
    cond : torch.Tensor, optional
        (B, P) parameters when the teacher is conditioned.
    stack : bool, optional
        Stand in for the teacher's latent (True), its forecast (False), or the latent when
        the teacher has a usable one (None).
    width, depth, kernel_size, padding_mode
        The students' structure (:class:`StudentSpec`).

    Raises
    ------
    ValueError
        ``stack=True`` for a teacher without a usable latent (the reason is given).
    """
    ok, why = stackable(teacher, x, cond)
    if stack is None:
        stack = ok
    elif stack and not ok:
        raise ValueError(f"cannot stack on the teacher's latent: {why}; use stack=False")
    t_in, c_in, out_steps = int(teacher.in_steps), int(teacher.in_channels), int(teacher.out_steps)
    c_out = int(getattr(teacher, "out_channels", None) or c_in)
    out_width = int(teacher.encode(x, cond).z.shape[1]) if stack else out_steps * c_out
    spec = StudentSpec(
        in_channels=t_in * c_in,
        out_channels=out_width,
        width=width,
        depth=depth,
        kernel_size=kernel_size,
        cond_dim=int(getattr(teacher, "cond_dim", 0) or 0),
        padding_mode=padding_mode,
    )
    return StudentEnsemble(
        spec,
        in_steps=t_in,
        out_steps=out_steps,
        in_channels=c_in,
        out_channels=c_out,
        decoder=copy.deepcopy(teacher) if stack else None,
    )


@torch.no_grad()
def teacher_targets(
    teacher: nn.Module,
    data: Dataset,
    *,
    stack: bool = False,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> TeacherTargets:
    """Run the teacher once over ``data`` and keep its forecasts (and latents with ``stack``).

    Parameters
    ----------
    teacher : nn.Module
        ``(x, cond) -> y`` in normalized units; with ``stack`` also ``encode``/``decode``.
    data : Dataset
        Dict samples with ``x`` (T_in, C, H, W) and optionally ``params`` (P,) and
        ``mask`` (C, H, W), such as :class:`~physforecast.data.ForecastWindows`.
    """
    device = torch.device(device)
    teacher.eval().to(device)
    xs, ys, conds, masks, zs = [], [], [], [], []
    loader = DataLoader(data, batch_size=batch_size, shuffle=False)
    for batch in tqdm(loader, desc="teacher", leave=False, disable=not progress):
        x = batch["x"].to(device)
        cond = _cond(teacher, batch)
        cond = cond.to(device) if cond is not None else None
        if stack:
            latent = teacher.encode(x, cond)
            y = teacher.decode(latent, cond)
            zs.append(latent.z.float().cpu())
        else:
            y = teacher(x, cond)
        xs.append(batch["x"].float())
        ys.append(y.float().cpu())
        if cond is not None:
            conds.append(batch["params"].float())
        if "mask" in batch:
            masks.append(batch["mask"].bool())
    if not xs:
        raise ValueError("the distillation data are empty; there is nothing to learn from")
    return TeacherTargets(
        torch.cat(xs),
        torch.cat(ys),
        torch.cat(conds) if conds else None,
        torch.cat(masks) if masks else None,
        torch.cat(zs) if zs else None,
    )


def _tensors(targets: TeacherTargets, base: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {"x": targets.x, "y": targets.y, "base": base}
    for name in ("cond", "mask", "z"):
        value = getattr(targets, name)
        if value is not None:
            out[name] = value
    return out


def _loss_fn(model: StudentEnsemble, latent_weight: float, latent_scale: float):
    """``loss_fn(student, batch)`` for the Trainer: the ensemble so far plus this student."""

    def loss_fn(
        student: nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cond = batch.get("cond")
        h = batch["base"] + student(stack_time(batch["x"]), cond)
        mse = masked_mse(model.decode(h, cond), batch["y"], batch.get("mask"))
        logs = {"mse": float(mse.detach())}
        loss = mse
        if latent_weight and "z" in batch:
            latent = (h.float() - batch["z"].float()).square().mean() / latent_scale
            loss = loss + latent_weight * latent
            logs["latent"] = float(latent.detach())
        return loss, logs

    return loss_fn


@torch.no_grad()
def distillation_loss(
    model: StudentEnsemble,
    targets: TeacherTargets,
    *,
    n_active: int | None = None,
    latent_weight: float = 0.0,
    batch_size: int = 16,
    vectorize: bool | None = None,
) -> float:
    """The loss :func:`distill` minimizes, of the first ``n_active`` students, on ``targets``.

    The mean over batches of ``batch_size`` windows, weighted by their size (as the
    Trainer evaluates it).
    """
    device = next(model.parameters(), torch.zeros(())).device
    model.eval()
    total, count = 0.0, 0
    scale = targets.latent_scale
    n = len(targets)
    for start in range(0, n, batch_size):
        sl = slice(start, min(start + batch_size, n))
        x = targets.x[sl].to(device)
        cond = targets.cond[sl].to(device) if targets.cond is not None else None
        mask = targets.mask[sl].to(device) if targets.mask is not None else None
        h = model.latent(x, cond, n_active=n_active, vectorize=vectorize)
        loss = masked_mse(model.decode(h, cond), targets.y[sl].to(device), mask)
        if latent_weight and targets.z is not None:
            loss = loss + latent_weight * (h - targets.z[sl].to(device)).square().mean() / scale
        total += float(loss) * x.shape[0]
        count += x.shape[0]
    return total / max(count, 1)


def distill(
    teacher: nn.Module,
    data: Dataset,
    *,
    n_students: int = 4,
    depth: int = 2,
    width: int = 32,
    kernel_size: int = 3,
    padding_mode: str = "zeros",
    stack: bool | None = False,
    latent_weight: float = 0.01,
    train: TrainConfig | None = None,
    batch_size: int = 16,
    progress: bool = False,
    trainer: TrainerFactory | None = None,
) -> Distillation:
    """Distil ``teacher`` into ``n_students`` boosted students of ``depth`` layers.

    Parameters
    ----------
    teacher : nn.Module
        A backbone (or any ``(x, cond) -> y`` module in normalized units) with attributes
        ``in_steps``, ``out_steps``, ``in_channels`` and, when conditioned, ``cond_dim``.
        It is frozen and only run.
    data : Dataset
        Training windows (dict samples with ``x``, optional ``params`` and ``mask``), e.g.
        the run's training split; ``y`` is not used: the students learn the teacher.
    n_students : int
        ``K``, trained one after another.
    depth, width, kernel_size, padding_mode
        The students' structure (:class:`StudentSpec`).
    stack : bool, optional
        Stand in for the teacher's latent and reuse its decoder (stacking distillation);
        ``None`` stacks when the teacher allows it (see :func:`stackable`). Off by
        default: on ns2d with a ResNet teacher, students boosting on the forecast were
        both faster and more accurate than stacked ones (``physforecast bench serve``).
    latent_weight : float
        Weight of the latent-matching term with stacking (relative to the forecast MSE,
        the latent's MSE being divided by its variance): a hint. A large weight makes the
        students chase the latent at the expense of the forecast (see the serving
        benchmark, ``physforecast bench serve``).
    train : TrainConfig, optional
        Optimisation of each student (``epochs`` per student, ``lr``...); 5 epochs at
        ``lr = 3e-3`` by default.
    batch_size : int
        Windows per optimisation step.
    progress : bool
        Progress bars over the teacher pass and the students.
    trainer : callable, optional
        ``trainer(student, loss_fn, k, batch_size) -> Trainer`` for student ``k`` (0-based);
        a plain :class:`Trainer` with ``train`` by default. A run passes
        :meth:`~physforecast.methods.RunContext.trainer` here, so every student is a stage
        with checkpoints, DDP and exact resume.

    Returns
    -------
    Distillation
        The ensemble and the training distillation loss after each student.

    Examples
    --------
    >>> fc = physforecast.load("runs/ns2d-resnet")                          # doctest: +SKIP
    >>> result = distill(fc.model, train_windows, n_students=4)             # doctest: +SKIP
    >>> student_fc = physforecast.Forecaster(result.model, fc.normalizer)    # doctest: +SKIP
    """
    t_start = time.perf_counter()
    if n_students < 1:
        raise ValueError(f"n_students must be >= 1, got {n_students}")
    for name in ("in_steps", "out_steps", "in_channels"):
        if getattr(teacher, name, None) is None:
            raise ValueError(f"the teacher has no {name!r} attribute; pass a backbone")
    cfg = train or TrainConfig(epochs=5, lr=3e-3)
    device = resolve_device(cfg.device)
    cfg = replace(cfg, device=str(device))
    teacher.eval().to(device)

    probe = next(iter(DataLoader(data, batch_size=1)))
    probe_cond = _cond(teacher, probe)
    probe_cond = probe_cond.to(device) if probe_cond is not None else None
    model = student_ensemble(
        teacher,
        probe["x"].to(device),
        probe_cond,
        stack=stack,
        width=width,
        depth=depth,
        kernel_size=kernel_size,
        padding_mode=padding_mode,
    ).to(device)
    stack = model.stacked
    targets = teacher_targets(
        teacher, data, stack=stack, batch_size=batch_size, device=device, progress=progress
    )
    out_width = model.spec.out_channels
    weight = float(latent_weight) if stack else 0.0
    loss_fn = _loss_fn(model, weight, targets.latent_scale)
    base = torch.zeros(len(targets), out_width, *targets.x.shape[-2:])
    make_trainer = trainer or (
        lambda module, loss, k, bs: Trainer(module, cfg, loss_fn=loss, batch_size=bs)
    )
    losses = [
        distillation_loss(model, targets, n_active=0, latent_weight=weight, batch_size=batch_size)
    ]
    records: list[dict[str, Any]] = []
    for k in tqdm(range(n_students), desc="students", disable=not progress):
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed + 1000 * (k + 1))
        student = model.add_student().to(device)
        windows = _Batches(_tensors(targets, base))
        initial = copy.deepcopy(student.state_dict())  # adds nothing: its last layer is zero
        start = Trainer(student, cfg, loss_fn=loss_fn, batch_size=batch_size).evaluate(windows)
        fit = make_trainer(student, loss_fn, k, batch_size)
        history = fit.fit(windows, windows)
        best = fit.best_state_dict()
        improved = best is not None and fit.best_val < start["val_loss"]
        student.load_state_dict(best if improved else initial)
        student.eval()
        with torch.no_grad():
            for s in range(0, len(targets), batch_size):
                sl = slice(s, min(s + batch_size, len(targets)))
                cond = targets.cond[sl].to(device) if targets.cond is not None else None
                base[sl] += student(stack_time(targets.x[sl].to(device)), cond).float().cpu()
        loss_after = fit.best_val if improved else start["val_loss"]
        losses.append(float(loss_after))
        epochs = [r["epoch"] for r in history if r.get("val_loss") == fit.best_val]
        records.append(
            {
                "loss_before": float(start["val_loss"]),
                "loss_after": float(loss_after),
                "best_epoch": int(epochs[0]) if improved and epochs else 0,
                "seconds": time.perf_counter() - t0,
                "history": history,
            }
        )
    model.eval()
    if not all(math.isfinite(v) for v in losses):
        raise RuntimeError(f"the distillation loss became non-finite: {losses}")
    return Distillation(model, losses, records, weight, time.perf_counter() - t_start)
