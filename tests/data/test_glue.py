"""GLUE: the task table and the loader with a stand-in `datasets` module (no Hub here)."""

import sys
import types

import pytest

from glora.data.glue import GLUE_TASKS, glue_task, load_glue
from glora.errors import ConfigError, GloraError


def test_task_table_holds_the_official_metrics():
    assert {t: s.metrics for t, s in GLUE_TASKS.items()} == {
        "cola": ("matthews",), "sst2": ("accuracy",), "mrpc": ("f1", "accuracy"),
        "qqp": ("f1", "accuracy"), "stsb": ("pearson", "spearman"), "mnli": ("accuracy",),
        "qnli": ("accuracy",), "rte": ("accuracy",), "wnli": ("accuracy",)}
    assert GLUE_TASKS["stsb"].task_type == "regression" and GLUE_TASKS["mnli"].num_labels == 3
    assert GLUE_TASKS["mnli"].eval_split == "validation_matched"
    assert [t for t, s in GLUE_TASKS.items() if len(s.text_keys) == 1] == ["cola", "sst2"]


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown GLUE task 'sst'; known: \['cola', 'mnli'"):
        glue_task("sst")


def test_missing_datasets_library_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(GloraError, match=r"needs the `datasets` library: pip install 'glora\[glue"):
        load_glue("sst2")


def _fake_datasets(monkeypatch, load_dataset):
    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", module)


def test_unreachable_hub_is_a_clear_error(monkeypatch):
    def offline(path, name):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub")

    _fake_datasets(monkeypatch, offline)
    with pytest.raises(GloraError, match=r"GLUE task 'rte' from the Hugging Face Hub \(nyu-mll/"
                                         r"glue\): ConnectionError: .*HF_DATASETS_OFFLINE=1"):
        load_glue("rte")


class _Split(dict):
    """Column access by name plus ``features``, like ``datasets.Dataset``."""

    def __init__(self, columns, label_names=None):
        super().__init__(columns)
        label = types.SimpleNamespace(names=label_names) if label_names else object()
        self.features = {"label": label}


def test_conversion_of_pair_and_regression_tasks(monkeypatch):
    requested = []

    def load(path, name):
        requested.append((path, name))
        if name == "mnli":
            split = _Split({"premise": ["p"], "hypothesis": ["h"], "label": [2]},
                           ["entailment", "neutral", "contradiction"])
            return {"train": split, "validation_matched": split}
        split = _Split({"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [0.5, 4.2]})
        return {"train": split, "validation": split}

    _fake_datasets(monkeypatch, load)
    mnli = load_glue("mnli")
    assert mnli.test.text_pairs == ["h"] and mnli.test.labels == [2] and mnli.train.num_labels == 3
    assert mnli.train.label_names[2] == "contradiction" and mnli.train.name == "glue/mnli"
    stsb = load_glue("stsb")
    assert stsb.train.task_type == "regression" and stsb.train.labels == [0.5, 4.2]
    assert stsb.train.label_names is None and stsb.test.metrics == ("pearson", "spearman")
    assert requested == [("nyu-mll/glue", "mnli"), ("nyu-mll/glue", "stsb")]
