"""The end-to-end job behind ``physforecast train`` and ``physforecast evaluate``.

:func:`train` opens the data, fits the normalization on the training split, hands a
:class:`~physforecast.methods.RunContext` to the configured method (registered in
:data:`~physforecast.registry.METHODS`), and scores the best checkpoint on the test split.
:func:`evaluate_run` rescores a finished run. Neither knows any particular method.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed
import xarray as xr

from physforecast.atomic import signals_as_exceptions
from physforecast.checkpoint import load_checkpoint
from physforecast.config import Config, check_config
from physforecast.data.io import OUTPUT_SUFFIXES
from physforecast.data.prepare import PreparedData, prepare_data
from physforecast.errors import (
    ConfigError,
    DistributedRunError,
    OutputPathError,
    PhysforecastError,
    ResumeError,
    RunDirNotEmptyError,
)
from physforecast.forecast.windows import SampleAppender, score_windows
from physforecast.methods import RunContext, get_method
from physforecast.metrics import format_scorecard
from physforecast.plots import plot_forecast_panel, plot_metric_vs_lead, save_figure
from physforecast.registry import BACKBONES
from physforecast.run_dir import RunDir, RunLock
from physforecast.threads import resolve_threads

from .distributed import DistInfo, cleanup_distributed, detect_launch, init_distributed
from .parallel import check_parallel
from .trainer import resolve_device

__all__ = ["train", "evaluate_run", "load_run_config", "check_run_path"]


def load_run_config(run_dir: str | os.PathLike) -> Config:
    """The resolved config saved in a run directory."""
    return RunDir(run_dir).read_config()


def train(
    cfg: Config,
    *,
    resume: str | os.PathLike | None = None,
    evaluate: bool = True,
    overwrite: bool = False,
) -> Path:
    """Train a model as ``cfg`` says and write the run directory, as a transaction.

    Everything that can be checked is checked before anything is written: the config's
    values, the device, the output path, the data (opened, split, windows that fit), the
    method's own settings and the model (built once, so a misspelt option fails now); on
    a resume also that the model and data are those of the checkpoints, and that every
    checkpoint to resume from is readable. Then the run directory is locked (a second
    writer fails at once, naming the owner), written, and trained into. A new run that
    fails before its first checkpoint leaves nothing behind; one that fails later keeps
    its checkpoints for ``--resume``.

    Parameters
    ----------
    cfg : Config
        The run's configuration (``cfg.out`` is the run directory, ``cfg.method`` the
        registered method).
    resume : path, optional
        A run directory to continue: pass its saved config (:func:`load_run_config`),
        changed where wanted (a higher ``train.epochs`` trains further). Every stage of
        the method continues from its last checkpoint; a method that cannot resume, a
        run without checkpoints and a changed model are refused
        (:class:`~physforecast.errors.ResumeError`).
    evaluate : bool
        Score the best checkpoint on the test split afterwards.
    overwrite : bool
        Delete what ``cfg.out`` holds first. Without it, a directory that holds files is
        refused (:class:`~physforecast.errors.RunDirNotEmptyError`).

    Returns
    -------
    Path
        The run directory.
    """
    if resume is not None and overwrite:
        raise ConfigError(
            "--resume continues a run and --overwrite deletes it; give one or the other"
        )
    method = get_method(cfg.method)
    BACKBONES.entry(cfg.model.backbone)  # an unknown name fails before any data work
    check_config(cfg)
    check_parallel(cfg.train, detect_launch().world_size)  # hooks and averagers need DDP
    resolve_device(cfg.train.device)
    path = check_run_path(resume if resume is not None else cfg.out)
    run = RunDir(path, writer=int(os.environ.get("RANK", "0")) == 0)
    if resume is not None:
        _check_resumable(run, method, cfg)
    created = not path.exists()
    empty = False
    try:
        with signals_as_exceptions(), run.lock():
            try:
                if run.writer and resume is None and run.contents() and not overwrite:
                    names = [p.name for p in run.contents()]
                    raise RunDirNotEmptyError(
                        f"{path} already holds a run ({', '.join(names[:4])}"
                        f"{', ...' if len(names) > 4 else ''}); continue it with physforecast "
                        f"train --resume {path}, replace it with --overwrite, or give "
                        "another --out"
                    )
                _train_locked(method, cfg, run, resume is not None, overwrite, evaluate)
            finally:
                # a directory this call created and left empty goes (its lock file first,
                # while the lock is held, so no other writer's lock file is removed)
                empty = created and run.writer and not run.contents()
                if empty:
                    (path / RunLock.NAME).unlink(missing_ok=True)
    finally:
        if empty:
            with contextlib.suppress(OSError):
                path.rmdir()
    return path


def _train_locked(
    method: Any, cfg: Config, run: RunDir, resume: bool, overwrite: bool, evaluate: bool
) -> None:
    """The part of :func:`train` that runs holding the run directory's lock."""
    dist = init_distributed(cfg.train.device)
    torch.set_num_threads(resolve_threads(cfg.train.threads, cfg.data.num_workers))
    try:
        torch.manual_seed(cfg.train.seed)
        data = prepare_data(cfg, run.read_normalizer() if resume else None)
        spec = method.model_spec(cfg, data.spec)
        method.check(cfg, data.spec)
        with torch.random.fork_rng(devices=[]):  # the check leaves no trace in the seed
            model = method.build(spec, cfg, data.spec)
        if resume:
            _check_same_model(run, spec, data, model)
        del model
        if overwrite:
            run.clear()
        try:
            run.write_config(cfg)
            run.write_normalizer(data.normalizer)
            run.write_model_spec(spec)
            run.write_data_spec(data.spec)
            _fit(method, RunContext(cfg, data, run, dist, resume=resume))
        except BaseException:
            _after_failure(run, fresh=not resume)
            raise
        if evaluate and dist.is_main:
            evaluate_run(run.path, data=data)
    finally:
        cleanup_distributed()


def check_run_path(path: str | os.PathLike) -> Path:
    """``path`` as a run directory's :class:`Path`, or an
    :class:`~physforecast.errors.OutputPathError`: a file is in the way, or the name ends
    like a data file (``runs/x.nc``: the run directory is not the forecast file)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"--out {path} is a file; a run directory goes there")
    if path.suffix.lower() in OUTPUT_SUFFIXES or path.suffix.lower() in (".h5", ".hdf5"):
        raise OutputPathError(
            f"--out {path} ends like a data file ({path.suffix}); --out names the run "
            "directory (config, checkpoints, forecasts.nc, scorecard inside): drop the suffix"
        )
    return path


def _check_resumable(run: RunDir, method: Any, cfg: Config) -> None:
    """Refuse a resume that cannot continue the run (before locking or reading data)."""
    run.require()
    saved = run.read_config()
    if saved.method != cfg.method:
        raise ResumeError(
            f"{run.path} was trained with method {saved.method!r}; it cannot be resumed as "
            f"{cfg.method!r} (leave --method out, or start a new run with another --out)"
        )
    if not method.resumable:
        raise ResumeError(
            f"method {cfg.method!r} cannot resume an interrupted run; train it again with "
            f"physforecast train --out {run.path} --overwrite"
        )
    lasts = sorted((run.path / run.CHECKPOINTS).rglob("last.pt"))
    if not lasts:
        raise ResumeError(
            f"nothing to resume in {run.path}: it has no checkpoints (the run stopped before "
            f"its first epoch ended); start it again with physforecast train --out {run.path} "
            "--overwrite"
        )
    for last in lasts:
        load_checkpoint(last)  # unreadable: a CheckpointError saying whether best.pt is good


def _check_same_model(run: RunDir, spec: dict[str, Any], data: PreparedData, model: Any) -> None:
    """Refuse a resume whose config builds another model or cuts other data."""
    saved = run.read_model_spec()
    now = json.loads(json.dumps(spec))
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise ResumeError(
            f"--resume cannot change the model of {run.path} ({diffs}); its checkpoints hold "
            "the saved model. Resume without those changes, or train a new run with --out"
        )
    before = run.read_data_spec()
    for what, old, new in (
        ("variables", before.layout.variables, data.spec.layout.variables),
        ("grid", before.layout.shape, data.spec.layout.shape),
        ("parameters", before.params, data.spec.params),
    ):
        if list(old) != list(new):
            raise ResumeError(
                f"--resume cannot change the data of {run.path}: its {what} were {list(old)}, "
                f"the config now gives {list(new)}. Resume without that change, or train a "
                "new run with --out"
            )
    last = run.checkpoint_path("last")
    if last.exists():
        state = load_checkpoint(last)
        try:
            model.load_state_dict(state.get("ema", state.get("model", {})))
        except RuntimeError as err:
            first = [ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()][:1]
            raise ResumeError(
                f"{last} does not fit the model of {run.path / run.MODEL} "
                f"({first[0] if first else err}); the run directory mixes two trainings. "
                "Train it again with --overwrite"
            ) from None


def _fit(method: Any, ctx: RunContext) -> None:
    """``method.fit(ctx)``; a peer process that died becomes a DistributedRunError."""
    try:
        method.fit(ctx)
    except RuntimeError as err:
        if not ctx.dist.enabled or isinstance(err, PhysforecastError):
            raise
        if not isinstance(err, torch.distributed.DistError) and not _looks_distributed(err):
            raise
        raise DistributedRunError(
            f"rank {ctx.dist.rank} of {ctx.dist.world_size}: another process of the "
            f"distributed run stopped or stopped answering ({str(err).splitlines()[0]}). "
            f"The checkpoints in {ctx.run.path} are intact; fix the failed process and "
            f"continue with torchrun ... physforecast train --resume {ctx.run.path}"
        ) from err


def _looks_distributed(err: BaseException) -> bool:
    text = str(err).lower()
    return any(
        word in text for word in ("gloo", "nccl", "connection closed", "connection reset", "peer")
    )


def _after_failure(run: RunDir, *, fresh: bool) -> None:
    """After a failed (or stopped) training: a new run without any checkpoint leaves
    nothing; otherwise say how to continue."""
    if not run.writer:
        return
    run.remove_orphans()
    saved = sorted((run.path / run.CHECKPOINTS).rglob("last.pt"))
    if fresh and not saved:
        run.clear()
        return
    if saved:
        print(
            f"physforecast: note: {run.path} keeps its checkpoints; continue with "
            f"physforecast train --resume {run.path}",
            file=sys.stderr,
        )


def evaluate_run(
    run_dir: str | os.PathLike,
    *,
    data: PreparedData | None = None,
    suite: list[Any] | None = None,
    checkpoint: str = "best",
) -> xr.Dataset:
    """Score a checkpoint of a run on its test split and write the outputs.

    Writes ``forecasts.nc``, ``scorecard.{json,nc}`` and
    ``plots/{forecast_panel,error_vs_lead}.png``, prints the scorecard table, then the
    method's own report (:meth:`~physforecast.methods.Method.evaluate`).

    The split is forecast, scored (:func:`~physforecast.forecast.windows.score_windows`) and
    written in chunks of ``eval.chunk`` samples, so memory does not grow with the size of
    the split; ``eval.save_samples`` keeps only the first samples in ``forecasts.nc``.

    Returns
    -------
    xr.Dataset
        The scorecard.
    """
    run = RunDir(run_dir).require()
    cfg = run.read_config()
    device = resolve_device(cfg.train.device)
    torch.set_num_threads(resolve_threads(cfg.train.threads, cfg.data.num_workers))
    loaded = run.load_model(checkpoint, device=device)
    data = data or prepare_data(cfg, loaded.normalizer)
    keep = cfg.eval.save_samples
    first: list[tuple[xr.Dataset, xr.Dataset]] = []
    card: xr.Dataset | None = None

    def stream(tmp: Path | None) -> None:
        """Forecast, score and (into ``tmp``) write the test split a chunk at a time."""
        nonlocal card
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(SampleAppender(tmp)) if tmp is not None else None

            def each(forecast: xr.Dataset, truth: xr.Dataset) -> None:
                if not first:  # the panel plot shows the first sample
                    first.append((forecast.isel(sample=[0]), truth.isel(sample=[0])))
                written = out.samples if out is not None else 0
                n = forecast.sizes["sample"]
                n = n if keep is None else min(keep - written, n)
                if out is not None and n > 0:
                    head = {"sample": slice(0, n)}
                    out.append(
                        forecast.isel(head).assign(
                            **{f"{v}_truth": truth[v].isel(head) for v in data.variables}
                        )
                    )

            card = score_windows(
                loaded.model,
                data.test,
                data.normalizer,
                suite,
                chunk=cfg.eval.chunk,
                batch_size=cfg.data.batch_size,
                device=device,
                each=each,
            )

    if keep == 0:  # no forecasts file; one of an earlier evaluation would be stale
        stream(None)
        if run.writer:
            (run.path / run.FORECASTS).unlink(missing_ok=True)
    else:
        run.write_in_pieces(run.FORECASTS, stream)
    assert card is not None  # stream() ran
    card.attrs.update(
        {"backbone": cfg.model.backbone, "method": cfg.method, "dataset": str(cfg.data.dataset)}
    )
    run.write_scorecard(card)
    forecast, truth = first[0]
    save_figure(plot_forecast_panel(forecast, truth), run.plot_path("forecast_panel"))
    save_figure(plot_metric_vs_lead(card), run.plot_path("error_vs_lead"))
    print(
        f"scorecard for {run.path} ({cfg.model.backbone}, {cfg.method}, test split: "
        f"{len(data.test)} windows)"
    )
    print(format_scorecard(card))
    if data.extra:  # data.ood: the OOD test splits beside the in-distribution one
        _score_ood(run, loaded.model, data, cfg, device, suite, card)
    ctx = RunContext(cfg, data, run, DistInfo(device=device))
    report = get_method(cfg.method).evaluate(loaded.model, ctx)
    if report:
        print("\n" + report)
    return card


def _score_ood(run: RunDir, model: Any, data: PreparedData, cfg: Config, device, suite, card):
    """Write ``scorecard_ood.{nc,json}`` (in and out of distribution side by side) and print it."""
    from physforecast.forecast.ood import format_side_by_side, score_splits
    from physforecast.metrics.report import scorecard_to_json

    def card_of(windows):
        return score_windows(
            model,
            windows,
            data.normalizer,
            suite,
            chunk=cfg.eval.chunk,
            batch_size=cfg.data.batch_size,
            device=device,
        )

    both = score_splits(card_of, data.test, data.extra, in_card=card)
    run.write_dataset("scorecard_ood.nc", both)
    run.write_json(
        "scorecard_ood.json",
        {str(s): scorecard_to_json(both.sel(split=s)) for s in both["split"].values},
    )
    print("\nin and out of distribution (mean over lead times):")
    print(format_side_by_side(both))
