"""The installed package layout matches the source tree (a fresh install would miss a subpackage otherwise)."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_and_exists():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    dirs = tool["package-dir"]
    found = {"physforecast.backbones", "physforecast.datasets"}
    for init in (ROOT / "physforecast").rglob("__init__.py"):
        rel = init.parent.relative_to(ROOT)
        found.add(".".join(rel.parts))
    assert found == listed
    for name in listed:
        src = dirs.get(name, name.replace(".", "/"))
        assert (ROOT / src / "__init__.py").exists(), name
