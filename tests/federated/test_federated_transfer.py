"""Federated transfer helps a data-poor target (seeded; a clear improvement only)."""

from __future__ import annotations

import pytest

from physforecast.federated.baselines import train_local_only
from physforecast.federated.runner import FederatedConfig, run_federated


@pytest.mark.slow
def test_transfer_from_a_data_rich_source_beats_the_target_alone(transfer_files):
    source, target = transfer_files
    cfg = FederatedConfig(
        backbone_options={"hidden": 8, "padding_mode": "circular"},
        scheme="masking",
        sharing="transfer",
        rounds=4,
        local_steps=15,
        finetune_steps=30,
        split=(0.5, 0.25, 0.25),
        seed=0,
    )
    result = run_federated([source, target], [target], cfg, processes=False)
    federated = result.rmse("target")
    alone = train_local_only(target, cfg)  # same model, same steps on its own windows
    assert 4 * result.parties["target"]["n_train"] <= result.parties["source"]["n_train"]
    print(f"target test RMSE: federated transfer {federated:.4f}, alone {alone:.4f}")
    assert federated < 0.9 * alone, (federated, alone)
