"""Typed configs: YAML, dotted overrides, and errors that suggest the right key."""

from __future__ import annotations

import pytest

from physforecast.config import Config, ConfigError, apply_overrides, load_config, save_config


def test_overrides_parse_types():
    cfg = apply_overrides(
        Config(),
        ["train.lr=3e-4", "train.epochs=7", "data.variables=[a, b]", "model.options.hidden=16"],
    )
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 7
    assert cfg.data.variables == ["a", "b"]
    assert cfg.model.options == {"hidden": 16}


def test_comma_list_and_int_to_float():
    cfg = apply_overrides(Config(), ["data.variables=u,v", "train.lr=1"])
    assert cfg.data.variables == ["u", "v"] and cfg.train.lr == 1.0


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match="unknown config key 'train.epoch'.*'epochs'"):
        apply_overrides(Config(), ["train.epoch=3"])
    with pytest.raises(ConfigError, match="'data'"):
        apply_overrides(Config(), ["dta.in_steps=3"])


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match="train.epochs: expected an integer"):
        apply_overrides(Config(), ["train.epochs=many"])
    with pytest.raises(ConfigError, match="not of the form"):
        apply_overrides(Config(), ["train.epochs"])


def test_yaml_round_trip(tmp_path):
    cfg = apply_overrides(Config(), ["train.epochs=2", "beamvq.top_k=4"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_yaml_unknown_key_names_file(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  lr: 0.1\n  warmup: 3\n")
    with pytest.raises(ConfigError, match="c.yaml.*train.warmup.*warmup_frac"):
        load_config(tmp_path / "c.yaml")
