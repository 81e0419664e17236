"""The thread policy: affinity, workers, local ranks, load and OMP_NUM_THREADS."""

from __future__ import annotations

import os

import pytest
import torch

from physforecast.config import Config, ConfigError, apply_overrides, check_config
from physforecast.threads import auto_threads, available_cores, resolve_threads, use_threads


@pytest.fixture
def machine(monkeypatch):
    """Eight cores, all allowed, OMP_NUM_THREADS unset."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    return monkeypatch


def test_quiet_machine_uses_the_allowed_cores_less_the_workers(machine):
    assert available_cores() == 8
    assert auto_threads(0, load=1.0) == 8
    assert auto_threads(3, load=1.0) == 5
    assert auto_threads(20, load=0.0) == 1
    machine.setattr(os, "sched_getaffinity", lambda pid: {0, 1})  # taskset -c 0,1
    assert auto_threads(0, load=0.5) == 2


def test_local_ranks_share_the_cores_and_load_takes_what_others_use(machine):
    machine.setenv("LOCAL_WORLD_SIZE", "4")
    assert auto_threads(0, load=1.0) == 2
    machine.delenv("LOCAL_WORLD_SIZE")
    assert auto_threads(0, load=6.5) == 2  # 5.5 other runnable processes: 2 cores idle
    assert auto_threads(0, load=40.0) == 1


def test_omp_num_threads_and_the_setting_win(machine):
    machine.setenv("OMP_NUM_THREADS", "3")
    assert auto_threads(5, load=50.0) == 3
    assert resolve_threads(6, workers=2) == 6
    assert resolve_threads(0, workers=2) == resolve_threads(None, workers=2) == 3


def test_use_threads_restores_and_config_checks_the_range():
    before = torch.get_num_threads()
    with use_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    cfg = apply_overrides(Config(), ["train.threads=-1"])
    with pytest.raises(ConfigError, match="train.threads"):
        check_config(cfg)
