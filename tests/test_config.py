"""Configs: the shipped YAML files, overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from glora.config import ExperimentConfig, load_config, save_config
from glora.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_default_yaml_is_the_built_in_default():
    assert load_config(ROOT / "configs/default.yaml") == ExperimentConfig()


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
    load_config(path)


def test_overrides_are_dotted_and_parsed_as_yaml():
    cfg = load_config(None, ["train.rounds=3", "methods=[glora,fedit]", "data.test_file=null",
                             "method_options={glora: {consensus: energy}}"])
    assert cfg.train.rounds == 3 and cfg.methods == ["glora", "fedit"]
    assert cfg.method_options == {"glora": {"consensus": "energy"}}


def test_exponent_floats_are_floats():
    """PyYAML reads ``2e-3`` as text; a float key takes it, a text key keeps it as text."""
    cfg = load_config(None, ["train.lr=2e-3", "train.head_lr=1E-4", "output_dir=1e-3"])
    assert cfg.train.lr == 2e-3 and cfg.train.head_lr == 1e-4 and cfg.output_dir == "1e-3"
    with pytest.raises(ConfigError, match="`train.lr` must be of type float, got 'fast'"):
        load_config(None, ["train.lr=fast"])


def test_saved_config_reruns_identically(tmp_path):
    cfg = load_config(None, ["train.rounds=2", "lora.ranks=[4,8]"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_all_problems_are_reported_together_with_the_key():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.roundz=3", "data.alpha=high", "model.target_modules=query"])
    text = str(err.value)
    assert "unknown key `train.roundz`" in text and "rounds" in text
    assert "`data.alpha` must be of type float" in text
    assert "`model.target_modules`" in text


@pytest.mark.parametrize("override, message", [
    ("data.partition=random", "`data.partition` must be one of"),
    ("train.participation=1.5", "`train.participation` must be in"),
    ("method_options={glora: {consensus: median}}", "method_options.glora"),
    ("method_options={glora: {ranks: 3}}", "unknown option"),
    ("lora.ranks=[]", "`lora.ranks`"),
    ("train.rounds=0", "`train.rounds` must be at least 1"),
])
def test_impossible_values_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_missing_file_and_bad_override_are_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(None, ["--rounds", "3"])
