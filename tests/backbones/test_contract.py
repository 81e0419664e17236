"""Every registered backbone honours the contract in ``backbones/base.py``."""

from __future__ import annotations

import pytest
import torch

import physforecast as pf
from physforecast.backbones import Backbone, Latent

NAMES = pf.list_backbones()
H, W = 16, 24  # non-square on purpose


def build(name, **kw):
    args = dict(in_steps=3, out_steps=2, in_channels=2, out_channels=2)
    args.update(kw)
    return pf.create_backbone(name, **args)


def test_the_ten_plus_vit_are_registered():
    expected = {
        "convlstm",
        "simvp",
        "unet",
        "resnet",
        "fno",
        "ffno",
        "uno",
        "cno",
        "lsm",
        "gnot",
        "vit",
    }
    assert expected <= set(NAMES), expected - set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_shapes(name):
    net = build(name)
    assert isinstance(net, Backbone)
    assert (net.in_steps, net.out_steps, net.in_channels, net.out_channels) == (3, 2, 2, 2)
    x = torch.randn(2, 3, 2, H, W, requires_grad=True)
    y = net(x)
    assert y.shape == (2, 2, 2, H, W)
    y.square().mean().backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_forward_equals_decode_of_encode(name):
    net = build(name).eval()
    x = torch.randn(2, 3, 2, H, W)
    latent = net.encode(x)
    assert isinstance(latent, Latent)
    assert latent.z.ndim in (3, 4)
    torch.testing.assert_close(net(x), net.decode(latent))


@pytest.mark.parametrize("name", NAMES)
def test_cond_changes_output(name):
    net = build(name, cond_dim=2).eval()
    x = torch.randn(2, 3, 2, H, W)
    c1, c2 = torch.zeros(2, 2), torch.ones(2, 2)
    assert not torch.allclose(net(x, c1), net(x, c2))


@pytest.mark.parametrize("name", NAMES)
def test_eval_determinism_and_state_dict_round_trip(name):
    net = build(name).eval()
    x = torch.randn(1, 3, 2, H, W)
    y1, y2 = net(x), net(x)
    torch.testing.assert_close(y1, y2)
    twin = build(name).eval()
    twin.load_state_dict(net.state_dict())
    torch.testing.assert_close(twin(x), y1)


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_is_a_clear_error(name):
    net = build(name)
    with pytest.raises(ValueError, match="T_in"):
        net(torch.randn(1, 4, 2, H, W))
    with pytest.raises(ValueError, match="cond"):
        net(torch.randn(1, 3, 2, H, W), torch.ones(1, 2))


@pytest.mark.parametrize("name", NAMES)
def test_overfits_one_small_batch(name):
    torch.manual_seed(0)
    net = build(name, in_steps=2, out_steps=2, in_channels=1, out_channels=1)
    x = torch.randn(2, 2, 1, 16, 16)
    y = torch.roll(x, shifts=1, dims=-1) * 0.5
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    first = None
    for _ in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(net(x), y)
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < first / 10, (name, first, loss.item())


def test_unknown_name_suggests():
    with pytest.raises(ValueError, match="Did you mean 'fno'"):
        pf.create_backbone("fnoo", in_steps=1, out_steps=1, in_channels=1)
