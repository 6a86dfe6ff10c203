"""`glora.data.load_dataset` dispatch by name or path."""

import sys

import pytest

import glora.data
from glora.data import DEFAULT_DATASET, load_dataset
from glora.errors import ConfigError, GloraError


def test_paths_go_to_the_file_loader_with_an_optional_test_file(tmp_path):
    train, test = tmp_path / "tr.csv", tmp_path / "te.csv"
    train.write_text("text,label\na,x\nb,y\nc,x\n", encoding="utf-8")
    test.write_text("text,label\nd,y\n", encoding="utf-8")
    splits = load_dataset(str(train), test_file=test)
    assert splits.train.texts == ["a", "b", "c"] and splits.test.labels == [1]
    assert load_dataset(str(train), seed=1).train.name == "tr"


def test_names_go_to_their_loaders(monkeypatch):
    monkeypatch.setattr(glora.data, "load_rotten_tomatoes", lambda **kw: ("rt", kw))
    assert DEFAULT_DATASET == "rotten_tomatoes"
    assert load_dataset() == load_dataset("rotten_tomatoes") == ("rt", {"seed": 0})
    assert load_dataset(seed=2, threshold=1.0) == ("rt", {"seed": 2, "threshold": 1.0})
    with pytest.raises(ConfigError, match=r"`test_file` applies only to a \.csv/\.jsonl data set"):
        load_dataset("glue/sst2", test_file="test.csv")
    with pytest.raises(ConfigError, match="unknown GLUE task 'nope'"):
        load_dataset("glue/nope")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(GloraError, match="needs the `datasets` library"):
        load_dataset("glue/cola")


def test_unknown_name_lists_the_options():
    with pytest.raises(ConfigError) as err:
        load_dataset("imdb")
    msg = str(err.value)
    assert "unknown data set 'imdb'" in msg and "'rotten_tomatoes'" in msg
    assert "'glue/sst2'" in msg and ".csv or .jsonl" in msg
