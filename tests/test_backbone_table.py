"""The backbone table: parameter counts, FLOPs per sample, formatting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import physforecast as pf
from physforecast.backbone_table import (
    backbone_table,
    count_flops,
    count_parameters,
    format_backbone_table,
)
from physforecast.backbones import Backbone, Latent
from physforecast.backbones.base import check_divisible
from physforecast.layers import stack_time, unstack_time
from physforecast.registry import Registry


class TinyConv(Backbone):
    """Two 3x3 convolutions on stacked frames; FLOPs are easy to count by hand."""

    paper = "hand-checked"

    def __init__(self, hidden: int = 5, factor: int = 1, **kw) -> None:
        super().__init__(**kw)
        self.factor = factor
        self.conv1 = nn.Conv2d(self.in_steps * self.in_channels, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, self.out_steps * self.out_channels, 3, padding=1)

    def encode(self, x, cond=None):
        self.check_input(x, cond)
        check_divisible("TinyConv", tuple(x.shape[-2:]), self.factor)
        return Latent(torch.relu(self.conv1(stack_time(x))))

    def decode(self, latent, cond=None):
        return unstack_time(self.conv2(latent.z), self.out_steps)


@pytest.fixture
def tiny_registry():
    reg = Registry("backbone")
    reg.register("tiny", paper="Tiny 2024, hand-checked", source="test")(TinyConv)
    reg.register("picky", paper="Picky 2024")(lambda **kw: TinyConv(factor=7, **kw))
    return reg


def test_flops_of_a_tiny_conv_model_are_counted_by_hand(tiny_registry):
    rows = backbone_table(3, 2, 2, (8, 6), names=["tiny"], registry=tiny_registry)
    (row,) = rows
    h, w, c_in, hidden, c_out = 8, 6, 3 * 2, 5, 2 * 2
    # a 3x3 conv does c_in * 9 multiply-adds per output value: 2 FLOPs each, bias not counted
    expected = 2 * (c_in * 9) * hidden * h * w + 2 * (hidden * 9) * c_out * h * w
    assert row["flops"] == expected
    assert row["params"] == (c_in * 9 + 1) * hidden + (hidden * 9 + 1) * c_out
    assert row["paper"] == "Tiny 2024, hand-checked" and row["source"] == "test"


def test_cpu_attention_is_counted():
    class Attend(nn.Module):
        def forward(self, q):
            k = torch.ones(1, 2, 7, 4)
            return F.scaled_dot_product_attention(q, k, k)

    # (5 x 4) @ (4 x 7) and (5 x 7) @ (7 x 4) per head, 2 heads, 2 FLOPs per multiply-add
    assert count_flops(Attend(), torch.randn(1, 2, 5, 4)) == 2 * (2 * 5 * 7 * 4 + 2 * 5 * 7 * 4)


def test_size_the_model_rejects_gives_no_flops_and_the_reason(tiny_registry):
    rows = backbone_table(2, 1, 1, (8, 6), registry=tiny_registry)
    picky = next(r for r in rows if r["name"] == "picky")
    assert picky["flops"] is None and "divisible by 7" in picky["note"]
    assert "n/a" in format_backbone_table(rows)


@pytest.mark.parametrize("name", ["ffno", "vit"])
def test_registered_backbones_report_parameter_count_and_positive_flops(name):
    (row,) = backbone_table(2, 2, 1, (16, 16), names=[name])
    net = pf.create_backbone(name, in_steps=2, out_steps=2, in_channels=1)
    assert row["params"] == sum(p.numel() for p in net.parameters()) == count_parameters(net)
    assert row["flops"] > 0
    assert row["paper"] == type(net).paper


def test_format_aligns_columns_and_uses_readable_units():
    rows = [
        {"name": "a", "params": 1500, "flops": 2_500_000_000, "paper": "P1"},
        {"name": "bbbb", "params": 12, "flops": None, "paper": "P2"},
    ]
    lines = format_backbone_table(rows).splitlines()
    assert lines[0].split() == ["name", "params", "FLOPs/sample", "paper"]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].split() == ["a", "1.50k", "2.50G", "P1"]
    assert lines[3].split() == ["bbbb", "12", "n/a", "P2"]
    # columns start at the same offsets on every line
    assert lines[2].index("1.50k") == lines[0].index("params")
    assert lines[3].index("n/a") == lines[0].index("FLOPs/sample")


def test_quick_benchmark_reports_every_backbone_and_exact_adapters():
    from physforecast.bench.backbones import ADAPTED, run

    report = run(quick=True)
    rows = {
        line.split("|")[1].strip(): line for line in report.splitlines() if line.startswith("| ")
    }
    for name in pf.list_backbones():
        assert name in rows
    adapter_rows = [line for line in report.splitlines() if "neuralop.models" in line]
    assert len(adapter_rows) == len(ADAPTED)
    for line in adapter_rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert float(cells[-1]) < 1e-5  # same forecast as the raw neuraloperator model
        assert cells[-2].endswith("%")
    assert "physforecast bench backbones" in report and "Machine:" in report
