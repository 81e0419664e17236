"""Self-training: R rounds of generate -> score -> filter -> add pseudo-labels -> train.

:func:`self_train` composes plain callables; it subclasses nothing and owns no model::

    for round in 1..R:
        for batch in pool:    cands = generate(batch)          (N, K, T, C, H, W)
                              pen   = score(cands, batch)      (N, K), lower is better
        keep = select(all penalties)                            (N, K) bool
        pseudo += {(x_i, cands[i, k]) : keep[i, k]}
        logs = train(MixedDataset(real, pseudo, mix_ratio), round)

Pseudo-labelled windows are plain dict samples (``x``, ``y``, ``params``, ``mask``) like
the real ones, so any training step can use them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch.utils.data import Dataset

__all__ = ["PseudoLabelDataset", "MixedDataset", "self_train"]

Batch = Mapping[str, Any]


class PseudoLabelDataset(Dataset):
    """Pseudo-labelled windows: inputs paired with kept candidate forecasts.

    Samples are dicts with ``x`` (T_in, C, H, W), ``y`` (T, C, H, W) and, when given,
    ``params`` (P,), ``mask`` (C, H, W), plus ``score`` (the penalty it was kept with)
    and ``round``. Tensors are stored on the CPU.
    """

    def __init__(self) -> None:
        self.samples: list[dict[str, torch.Tensor]] = []

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.samples[i].items() if k not in ("score", "round")}

    def add(
        self,
        batch: Batch,
        candidates: torch.Tensor,
        keep: torch.Tensor,
        penalties: torch.Tensor,
        round_: int,
    ) -> int:
        """Add the kept candidates of one batch; returns how many were added.

        Parameters
        ----------
        batch : mapping
            ``x`` (N, T_in, C, H, W) and optional ``params`` (N, P), ``mask`` (N, C, H, W).
        candidates : Tensor
            ``(N, K, T, C, H, W)``.
        keep : Tensor
            ``(N, K)`` bool.
        penalties : Tensor
            ``(N, K)``.
        """
        if keep.shape != candidates.shape[:2] or penalties.shape != keep.shape:
            raise ValueError(
                f"keep {tuple(keep.shape)} and penalties {tuple(penalties.shape)} must be "
                f"(N, K) = {tuple(candidates.shape[:2])}"
            )
        rows, cols = torch.nonzero(keep, as_tuple=True)
        for i, k in zip(rows.tolist(), cols.tolist(), strict=True):
            sample = {"x": batch["x"][i].detach().cpu(), "y": candidates[i, k].detach().cpu()}
            for key in ("params", "mask"):
                if batch.get(key) is not None:
                    sample[key] = batch[key][i].detach().cpu()
            sample["score"] = penalties[i, k].detach().cpu()
            sample["round"] = torch.tensor(round_)
            self.samples.append(sample)
        return len(rows)

    def clear(self) -> None:
        """Drop all pseudo-labels."""
        self.samples.clear()


class MixedDataset(Dataset):
    """Real windows plus ``round(mix_ratio * len(real))`` pseudo-labelled ones.

    Pseudo-labels are drawn without replacement while they last, then cycled, in an order
    fixed by ``seed``. With no pseudo-labels it is the real dataset.

    Parameters
    ----------
    real : Dataset
        Real (x, y) windows.
    pseudo : Dataset
        Pseudo-labelled windows.
    mix_ratio : float
        Pseudo windows per real window, ``>= 0``.
    seed : int
        Seed of the pseudo-label order.
    """

    def __init__(self, real: Dataset, pseudo: Dataset, mix_ratio: float, seed: int = 0) -> None:
        if mix_ratio < 0:
            raise ValueError(f"mix_ratio must be >= 0; got {mix_ratio}")
        self.real, self.pseudo = real, pseudo
        n_real, n_pseudo = len(real), len(pseudo)
        n_mix = int(round(mix_ratio * n_real)) if n_pseudo else 0
        gen = torch.Generator().manual_seed(int(seed))
        reps = -(-n_mix // n_pseudo) if n_pseudo else 0
        order = [torch.randperm(n_pseudo, generator=gen) for _ in range(reps)]
        self._pseudo_index = torch.cat(order)[:n_mix].tolist() if order else []
        self.n_real = n_real

    def __len__(self) -> int:
        return self.n_real + len(self._pseudo_index)

    def __getitem__(self, i: int) -> Any:
        if i < 0:
            i += len(self)
        if i < self.n_real:
            return self.real[i]
        return self.pseudo[self._pseudo_index[i - self.n_real]]


def self_train(
    *,
    rounds: int,
    real: Dataset,
    pool: Iterable[Batch],
    generate: Callable[[Batch], torch.Tensor],
    score: Callable[[torch.Tensor, Batch], torch.Tensor],
    select: Callable[[torch.Tensor], torch.Tensor],
    train: Callable[[Dataset, int], Mapping[str, Any]],
    mix_ratio: float,
    accumulate: bool = True,
    evaluate: Callable[[int], Mapping[str, Any]] | None = None,
    log: Callable[[dict[str, Any]], None] | None = None,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], PseudoLabelDataset]:
    """Run ``rounds`` rounds of self-training.

    Parameters
    ----------
    rounds : int
        Number of rounds R.
    real : Dataset
        The real training windows.
    pool : iterable of batches
        Batches (``x``, optional ``y``, ``params``, ``mask``) to generate candidates for;
        re-iterated every round.
    generate : callable
        ``generate(batch) -> (N, K, T, C, H, W)`` candidates (the current model).
    score : callable
        ``score(candidates, batch) -> (N, K)`` penalties, lower is better.
    select : callable
        ``select(penalties (M, K)) -> (M, K) bool`` over all candidates of the round
        (e.g. :meth:`CriticFilter.select`).
    train : callable
        ``train(dataset, round) -> logs``: continue training on the mixed dataset.
    mix_ratio : float
        Pseudo-labelled windows per real window.
    accumulate : bool
        Keep earlier rounds' pseudo-labels (True) or replace them each round.
    evaluate : callable, optional
        ``evaluate(round) -> metrics`` after each round's training (round 0 = before).
    log : callable, optional
        Called with each round's record (e.g. to append a JSON line).
    seed : int
        Seed of the mixing order (``seed + round``).

    Returns
    -------
    records : list of dict
        One record per round: candidates, kept, penalty statistics, train and eval logs.
    pseudo : PseudoLabelDataset
        The pseudo-labels after the last round.
    """
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0; got {rounds}")
    pseudo = PseudoLabelDataset()
    records: list[dict[str, Any]] = []
    if evaluate is not None:
        rec0 = {"round": 0, **{f"eval_{k}": v for k, v in evaluate(0).items()}}
        records.append(rec0)
        if log is not None:
            log(rec0)
    for r in range(1, rounds + 1):
        if not accumulate:
            pseudo.clear()
        batches, cands, pens = [], [], []
        for batch in pool:
            c = generate(batch)
            p = score(c, batch)
            if p.shape != c.shape[:2]:
                raise ValueError(
                    f"score must return (N, K) = {tuple(c.shape[:2])}; got {tuple(p.shape)}"
                )
            batches.append(batch)
            cands.append(c)
            pens.append(p.detach().float().cpu())
        all_pen = torch.cat(pens) if pens else torch.zeros(0, 1)
        keep_all = (
            select(all_pen) if all_pen.numel() else torch.zeros_like(all_pen, dtype=torch.bool)
        )
        added, start = 0, 0
        for batch, c, p in zip(batches, cands, pens, strict=True):
            n = p.shape[0]
            added += pseudo.add(batch, c, keep_all[start : start + n], p, r)
            start += n
        kept_pen = all_pen[keep_all]
        record: dict[str, Any] = {
            "round": r,
            "candidates": int(all_pen.numel()),
            "kept": added,
            "kept_fraction": added / max(1, all_pen.numel()),
            "penalty_mean": float(all_pen.mean()) if all_pen.numel() else float("nan"),
            "penalty_kept_mean": float(kept_pen.mean()) if kept_pen.numel() else float("nan"),
            "pseudo_total": len(pseudo),
        }
        mixed = MixedDataset(real, pseudo, mix_ratio, seed=seed + r)
        record["train_windows"] = len(mixed)
        record.update({f"train_{k}": v for k, v in dict(train(mixed, r)).items()})
        if evaluate is not None:
            record.update({f"eval_{k}": v for k, v in evaluate(r).items()})
        records.append(record)
        if log is not None:
            log(record)
    return records, pseudo
