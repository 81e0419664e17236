"""What is shared: the encoder trunk found through encode(), or every parameter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import physforecast as pf
from physforecast.federated.sharing import get_vector, set_vector, shared_names


def _unet():
    return pf.create_backbone("unet", in_steps=2, out_steps=1, in_channels=1, hidden=4)


def test_transfer_shares_exactly_the_unet_encoder():
    model = _unet()
    names = shared_names("transfer", model, torch.randn(2, 2, 1, 16, 16))
    tops = {n.split(".")[0] for n in names}
    assert tops == {"stem", "enc_blocks", "downs", "neck"}
    everything = {n for n, _ in model.named_parameters()}
    local = everything - set(names)
    assert {n.split(".")[0] for n in local} == {"dec_blocks", "head"}


def test_fedavg_shares_every_parameter():
    model = _unet()
    names = shared_names("fedavg", model, torch.randn(1, 2, 1, 16, 16))
    assert names == [n for n, _ in model.named_parameters()]


def test_vector_round_trip_writes_the_parameters():
    model = _unet()
    names = shared_names("transfer", model, torch.randn(1, 2, 1, 16, 16))
    v = get_vector(model, names)
    assert v.dtype == np.float64 and v.size == sum(
        p.numel() for n, p in model.named_parameters() if n in names
    )
    set_vector(model, names, v + 1.0)
    assert np.allclose(get_vector(model, names), v + 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="does not match"):
        set_vector(model, names, v[:-1])


def test_transfer_refuses_a_backbone_whose_encoder_is_everything():
    class AllEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def encode(self, x, cond=None):
            from physforecast.backbones.base import Latent

            return Latent(x * self.w)

    with pytest.raises(ValueError, match="sharing='fedavg'"):
        shared_names("transfer", AllEncoder(), torch.ones(1, 1, 1, 2, 2))
    with pytest.raises(ValueError, match="unknown sharing plan"):
        shared_names("everything", AllEncoder(), torch.ones(1, 1, 1, 2, 2))
