"""Fixtures of the fault and bad-input suite (helpers: ``reliability_helpers``)."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """A private copy of the session's tiny trained run (1 epoch), free to break."""
    dst = tmp_path / "run"
    shutil.copytree(tiny_run, dst)
    (dst / ".lock").unlink(missing_ok=True)
    return dst
