"""The self-training loop: what gets added, mixing, per-round records."""

from __future__ import annotations

import pytest
import torch

from physforecast.beamvq.selftrain import MixedDataset, PseudoLabelDataset, self_train
from physforecast.search.critic import CriticFilter


class _Real(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"x": torch.full((1, 1, 2, 2), float(i)), "y": torch.full((1, 1, 2, 2), -1.0)}


def _pool(n_batches: int = 2, bsz: int = 3) -> list[dict]:
    out = []
    for b in range(n_batches):
        ids = torch.arange(b * bsz, (b + 1) * bsz, dtype=torch.float32)
        out.append(
            {
                "x": ids.reshape(-1, 1, 1, 1, 1).expand(-1, 1, 1, 2, 2),
                "params": ids[:, None],
                "mask": torch.ones(bsz, 1, 2, 2, dtype=torch.bool),
            }
        )
    return out


def _generate(batch: dict) -> torch.Tensor:
    """K = 4 candidates; candidate k of sample i is the constant field 10 i + k."""
    ids = batch["x"][:, 0, 0, 0, 0]
    vals = 10 * ids[:, None] + torch.arange(4.0)[None]
    return vals.reshape(-1, 4, 1, 1, 1, 1).expand(-1, 4, 1, 1, 2, 2).clone()


def _score(cands: torch.Tensor, batch: dict) -> torch.Tensor:
    """Penalty = |(value mod 10) - 2|: candidate 2 best, then 1 and 3, then 0."""
    v = cands[:, :, 0, 0, 0, 0]
    return (torch.remainder(v, 10) - 2).abs()


def test_only_candidates_that_pass_the_filter_are_added():
    seen = []

    def train(dataset, r):
        seen.append([dataset[i]["y"][0, 0, 0, 0].item() for i in range(len(dataset))])
        return {"steps": len(dataset)}

    flt = CriticFilter(per_sample=1, threshold=0.5)
    records, pseudo = self_train(
        rounds=2,
        real=_Real(4),
        pool=_pool(),
        generate=_generate,
        score=_score,
        select=flt.select,
        train=train,
        mix_ratio=1.5,
        accumulate=False,
    )
    # per sample only candidate 2 (penalty 0) passes: value 10 i + 2
    labels = sorted(s["y"][0, 0, 0, 0].item() for s in pseudo.samples)
    assert labels == [10 * i + 2 for i in range(6)]
    for s in pseudo.samples:
        i = s["x"][0, 0, 0, 0].item()
        assert s["y"][0, 0, 0, 0].item() == 10 * i + 2  # paired with its own input
        assert s["params"].item() == i and s["mask"].all() and s["score"].item() == 0
    assert [r["kept"] for r in records] == [6, 6] and records[0]["candidates"] == 24
    # the mixed set: 4 real + round(1.5 * 4) = 6 pseudo windows, all from the kept set
    assert len(seen[0]) == 10
    assert seen[0][:4] == [-1.0] * 4
    assert sorted(seen[0][4:]) == [10 * i + 2 for i in range(6)]
    assert records[1]["train_steps"] == 10 and records[1]["pseudo_total"] == 6


def test_unfiltered_keeps_everything_and_accumulates():
    records, pseudo = self_train(
        rounds=2,
        real=_Real(4),
        pool=_pool(),
        generate=_generate,
        score=_score,
        select=CriticFilter(per_sample=None).select,
        train=lambda d, r: {},
        mix_ratio=0.5,
    )
    assert len(pseudo) == 2 * 24
    assert [r["pseudo_total"] for r in records] == [24, 48]
    assert records[-1]["train_windows"] == 4 + 2


def test_records_eval_and_log():
    logged = []
    records, _ = self_train(
        rounds=1,
        real=_Real(2),
        pool=_pool(1, 2),
        generate=_generate,
        score=_score,
        select=CriticFilter(per_sample=1, keep_fraction=0.5).select,
        train=lambda d, r: {"loss": 0.5},
        mix_ratio=1.0,
        evaluate=lambda r: {"rmse": 1.0 / (r + 1)},
        log=logged.append,
    )
    assert [r["round"] for r in records] == [0, 1]
    assert records[0]["eval_rmse"] == 1.0 and records[1]["eval_rmse"] == 0.5
    assert records[1]["kept"] == 1 and records[1]["train_loss"] == 0.5
    assert logged == records


def test_mixed_dataset_is_deterministic_and_cycles():
    pseudo = PseudoLabelDataset()
    batch = {"x": torch.zeros(3, 1, 1, 2, 2)}
    cands = torch.arange(3.0).reshape(3, 1, 1, 1, 1, 1).expand(3, 1, 1, 1, 2, 2)
    pseudo.add(batch, cands, torch.ones(3, 1, dtype=torch.bool), torch.zeros(3, 1), 1)
    a = MixedDataset(_Real(4), pseudo, mix_ratio=2.0, seed=3)
    b = MixedDataset(_Real(4), pseudo, mix_ratio=2.0, seed=3)
    assert len(a) == 12
    ya = [a[i]["y"][0, 0, 0, 0].item() for i in range(4, 12)]
    assert ya == [b[i]["y"][0, 0, 0, 0].item() for i in range(4, 12)]
    assert sorted(ya[:3]) == [0.0, 1.0, 2.0]  # every pseudo-label before any repeats
    assert len(MixedDataset(_Real(4), PseudoLabelDataset(), 2.0)) == 4
    with pytest.raises(ValueError, match="mix_ratio"):
        MixedDataset(_Real(4), pseudo, -1.0)
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        pseudo.add(batch, cands, torch.ones(3, 2, dtype=torch.bool), torch.zeros(3, 2), 1)
