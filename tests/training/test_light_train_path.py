"""The train path imports only what it uses: the optimizer without timm (built exactly as
timm builds it), one backbone module, no other model."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from physforecast.config import TrainConfig
from physforecast.training.trainer import default_optimizer


@pytest.mark.parametrize("name", ["adamw", "adam"])
@pytest.mark.parametrize("decay", [0.0, 1e-4])
def test_torch_optimizer_is_the_one_timm_builds(name, decay):
    from timm.optim import create_optimizer_v2

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.GroupNorm(1, 3))
    ours = default_optimizer(TrainConfig(optimizer=name, lr=3e-3, weight_decay=decay))(model)
    theirs = create_optimizer_v2(model, opt=name, lr=3e-3, weight_decay=decay)
    assert type(ours) is type(theirs)
    assert ours.state_dict()["param_groups"] == theirs.state_dict()["param_groups"]
    assert ours.defaults == theirs.defaults


def test_building_an_fno_imports_no_other_backbone_and_no_timm():
    code = (
        "import sys; from physforecast.registry import BACKBONES; "
        "names = BACKBONES.names(); info = BACKBONES.info('vit'); "
        "assert 'torch' not in sys.modules, 'listing names imported torch'; "
        "assert info['params'] > 0 and info['source'] == 'timm'; "
        "from physforecast.config import TrainConfig; "
        "from physforecast.training.trainer import default_optimizer; "
        "m = BACKBONES.create('fno', in_steps=2, out_steps=2, in_channels=1, out_channels=1); "
        "default_optimizer(TrainConfig())(m); "
        "print(sorted(n for n in sys.modules if n.startswith('physforecast.backbones.'))); "
        "print('timm' in sys.modules, len(names))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "['physforecast.backbones.base', 'physforecast.backbones.fno']"
    assert lines[1] == "False 11"


def test_masked_mse_gives_the_expanded_masks_value():
    from physforecast.training.trainer import masked_mse

    torch.manual_seed(1)
    pred, target = torch.randn(3, 4, 2, 5, 6), torch.randn(3, 4, 2, 5, 6)
    for mask in (torch.ones(3, 2, 5, 6, dtype=torch.bool), torch.rand(3, 2, 5, 6) > 0.3):
        m = mask.unsqueeze(1).expand_as(pred).float()
        expected = ((pred - target).square() * m).sum() / m.sum().clamp_min(1.0)
        assert torch.equal(masked_mse(pred, target, mask), expected)
    nothing = torch.zeros(3, 2, 5, 6, dtype=torch.bool)
    assert masked_mse(pred, target, nothing) == 0.0
