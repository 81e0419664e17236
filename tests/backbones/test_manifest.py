"""The declared backbones: the manifest's metadata is what each module registers, and the
registry imports a module only when its model is needed."""

from __future__ import annotations

import pytest

from physforecast.backbone_table import backbone_table, count_parameters
from physforecast.backbones import MANIFEST
from physforecast.registry import BACKBONES, Registry


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_manifest_matches_the_registration(name):
    module, meta = MANIFEST[name]
    entry = BACKBONES.entry(name)  # imports the module
    assert entry.factory.__module__ == f"physforecast.backbones.{module}"
    assert entry.meta["paper"] == meta["paper"] and entry.meta["source"] == meta["source"]
    model = BACKBONES.create(name, in_steps=10, out_steps=10, in_channels=1, out_channels=1)
    assert count_parameters(model) == meta["params"]


def test_declared_entries_import_on_first_use(tmp_path, monkeypatch):
    pkg = tmp_path / "lazy_pkg_for_test"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "model.py").write_text(
        "from tests_registry_target import REG\n"
        "@REG.register('toy', paper='Toy 2024')\n"
        "def toy(width=2):\n    return ('toy', width)\n"
    )
    reg = Registry("toy")
    import types

    target = types.ModuleType("tests_registry_target")
    target.REG = reg
    monkeypatch.setitem(__import__("sys").modules, "tests_registry_target", target)
    monkeypatch.syspath_prepend(str(tmp_path))
    reg.declare("toy", "lazy_pkg_for_test.model", paper="declared", params=7)
    assert reg.names() == ["toy"] and "toy" in reg
    assert reg.info("toy")["params"] == 7
    assert "lazy_pkg_for_test.model" not in __import__("sys").modules
    assert reg.create("toy", width=3) == ("toy", 3)  # imported now
    assert reg.entry("toy").meta == {"paper": "Toy 2024", "params": 7}
    reg.declare("ghost", "lazy_pkg_for_test")
    with pytest.raises(RuntimeError, match="did not"):
        reg.entry("ghost")
    with pytest.raises(ValueError, match="Did you mean 'toy'"):
        reg.info("tyo")


def test_listing_without_flops_uses_the_manifest():
    rows = backbone_table(flops=False)
    assert {r["name"] for r in rows} == set(MANIFEST)
    assert all(r["params"] == MANIFEST[r["name"]][1]["params"] and r["flops"] is None for r in rows)
