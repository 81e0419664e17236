"""Reference points for federated transfer: the target alone, and all data pooled.

Both use the same model, the same loop (:class:`~physforecast.federated.local.LocalTrainer`)
and the same step budget as a federated run with the same :class:`FederatedConfig`:

- :func:`train_local_only`: the target trains on its own windows for
  ``rounds * local_steps + finetune_steps`` steps (what it could do without partners).
- :func:`train_centralised`: one model trains on every party's windows pooled (each
  party's windows normalised with its own statistics, as in the federation) for
  ``n_parties * rounds * local_steps`` steps, then fine-tunes on the target: the upper
  bound when the data could be moved, which is what federation avoids.

Both return the target's test RMSE in physical units.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from torch.utils.data import ConcatDataset

from .local import LocalTrainer, build_model, forecast_test, load_local_data, overall_rmse
from .runner import FederatedConfig

__all__ = ["train_local_only", "train_centralised"]


def _data(path: str | os.PathLike, config: FederatedConfig):
    return load_local_data(
        path,
        variables=config.variables,
        in_steps=config.in_steps,
        out_steps=config.out_steps,
        split=config.split,
        seed=config.split_seed,
    )


def _spec(config: FederatedConfig) -> dict:
    return config.party_config()["model"]


def train_local_only(target: str | os.PathLike, config: FederatedConfig | None = None) -> float:
    """Test RMSE of the target trained on its own data only."""
    config = config or FederatedConfig()
    data = _data(target, config)
    model = build_model(_spec(config), data.channels)
    trainer = LocalTrainer(
        model, data.train_samples, lr=config.lr, batch_size=config.batch_size, seed=config.seed
    )
    trainer.run(config.rounds * config.local_steps)
    if config.finetune_steps:
        trainer.set_lr(config.finetune_lr)
        trainer.run(config.finetune_steps)
    forecast, truth = forecast_test(model, data)
    return overall_rmse(forecast, truth, data.variables)


def train_centralised(
    parties: Sequence[str | os.PathLike],
    target: str | os.PathLike,
    config: FederatedConfig | None = None,
) -> float:
    """Test RMSE on the target of one model trained on every party's data pooled."""
    config = config or FederatedConfig()
    datas = [_data(p, config) for p in parties]
    tdata = _data(target, config)
    model = build_model(_spec(config), tdata.channels)
    pooled = ConcatDataset([d.train_samples for d in datas])
    trainer = LocalTrainer(
        model, pooled, lr=config.lr, batch_size=config.batch_size, seed=config.seed
    )
    trainer.run(len(datas) * config.rounds * config.local_steps)
    if config.finetune_steps:
        tuner = LocalTrainer(
            model,
            tdata.train_samples,
            lr=config.finetune_lr,
            batch_size=config.batch_size,
            seed=config.seed,
        )
        tuner.run(config.finetune_steps)
    forecast, truth = forecast_test(model, tdata)
    return overall_rmse(forecast, truth, tdata.variables)
