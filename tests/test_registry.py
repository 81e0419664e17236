"""The registry: lookups, suggestions and option checking."""

from __future__ import annotations

import warnings

import pytest

import physforecast as pf
from physforecast.registry import Registry


class Toy:
    def __init__(self, width: int = 1, depth: int = 2) -> None:
        self.width, self.depth = width, depth


def make_registry() -> Registry:
    reg = Registry("toy")

    @reg.register("toy", paper="none")
    def toy(**kwargs) -> Toy:
        return Toy(**kwargs)

    @reg.register("open")
    def open_ended(**kwargs) -> dict:
        return kwargs

    return reg


def test_create_drops_none_and_checks_options():
    reg = make_registry()
    assert reg.create("toy", width=3, depth=None).width == 3
    assert reg.options("toy") == ["width", "depth"]
    with pytest.raises(
        ValueError, match="'toy' does not take option 'widht'. Did you mean 'width'"
    ):
        reg.create("toy", widht=3)
    assert reg.options("open") is None and reg.create("open", anything=1) == {"anything": 1}


def test_unknown_name_and_filter_and_duplicates():
    reg = make_registry()
    with pytest.raises(ValueError, match="Did you mean 'toy'.*Valid names: open, toy"):
        reg.entry("tyo")
    assert (
        reg.names("t*") == ["toy"] and "toy" in reg and reg.entry("toy").meta == {"paper": "none"}
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reg.register("toy")(lambda: None)
    assert "registered twice" in str(caught[0].message)


def test_backbone_option_errors_list_valid_options():
    with pytest.raises(ValueError, match="'simvp' does not take option 'hidden'.*hid_S"):
        pf.create_backbone("simvp", in_steps=2, out_steps=2, in_channels=1, hidden=8)
