"""The CSV/JSONL loader on tiny synthetic files."""

import json

import pytest

from glora.data.files import load_file, load_files
from glora.errors import ConfigError


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_csv_with_string_labels_maps_them_in_sorted_order(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("text,sentiment\ngreat,pos\n\"bad, awful\",neg\nfine,pos\n", encoding="utf-8")
    data = load_file(path, label_column="sentiment")
    assert data.texts == ["great", "bad, awful", "fine"] and data.labels == [1, 0, 1]
    assert data.label_names == ("neg", "pos") and data.name == "reviews"
    assert data.metrics == ("accuracy", "f1") and data.text_pairs is None


def test_jsonl_pairs_with_integer_labels_and_multiclass_metrics(tmp_path):
    path = _jsonl(tmp_path / "nli.jsonl", [{"p": "a", "h": "b", "label": 2},
                                           {"p": "c", "h": "d", "label": 0}])
    data = load_file(path, text_column="p", text_pair_column="h")
    assert data.texts == ["a", "c"] and data.text_pairs == ["b", "d"] and data.labels == [2, 0]
    assert data.label_names is None and data.num_labels == 3
    assert data.metrics == ("accuracy", "macro_f1")


def test_regression_labels_and_a_bad_value(tmp_path):
    path = tmp_path / "sts.csv"
    path.write_text("text,label\na,0.5\nb,4\n", encoding="utf-8")
    data = load_file(path, task_type="regression")
    assert data.labels == [0.5, 4.0] and data.metrics == ("pearson", "spearman")
    path.write_text("text,label\na,0.5\nb,high\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"sts\.csv, line 3: regression label 'high' is not a"):
        load_file(path, task_type="regression")


def test_missing_column_names_file_column_and_the_columns_present(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("sentence,label\nhello,1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_file(path)
    assert str(err.value) == (f"{path}, line 2: no column `text` (columns: ['sentence', 'label']); "
                              f"set `text_column` to the right one.")
    jsonl = _jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}, {"text": "b"}])
    with pytest.raises(ConfigError, match=r"line 2: no column `label` \(columns: \[.text") as err:
        load_file(jsonl)
    assert str(err.value).startswith(f"{jsonl}, line 2")


@pytest.mark.parametrize("content, match", [
    ("", "no examples"),
    ('{"text": "a", "label": 0}\n[1, 2]\n', "line 2: expected a JSON object, got list"),
    ('{"text": "a", "label": 0\n', "line 1: not valid JSON"),
    ('{"text": "a", "label": -1}\n', "line 1: class ids must be >= 0"),
])
def test_malformed_jsonl(tmp_path, content, match):
    path = tmp_path / "x.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=match):
        load_file(path)


def test_wrong_suffix_or_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"expected a file ending in \.csv or \.jsonl"):
        load_file(tmp_path / "x.txt")
    with pytest.raises(ConfigError, match="no such file"):
        load_file(tmp_path / "x.csv")


def test_test_file_uses_the_training_label_ids(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": "b"},
                                              {"text": "c", "label": "a"},
                                              {"text": "e", "label": "c"}])
    test = _jsonl(tmp_path / "test.jsonl", [{"text": "x", "label": "c"}])
    splits = load_files(train, test)
    assert splits.test.labels == [2] and splits.test.label_names == ("a", "b", "c")
    assert splits.test.name == "train"
    unknown = _jsonl(tmp_path / "bad.jsonl", [{"text": "x", "label": "d"}])
    with pytest.raises(ConfigError, match=r"bad\.jsonl, line 1: label 'd' is not among the label"):
        load_files(train, unknown)


def test_task_column_is_kept_through_subsets(tmp_path):
    path = _jsonl(tmp_path / "multi.jsonl", [{"text": "a", "label": 0, "task": "qa"},
                                             {"text": "b", "label": 1, "task": "nli"}])
    data = load_file(path, task_column="task")
    assert data.tasks == ["qa", "nli"] and data.subset([1]).tasks == ["nli"]
    assert load_file(path).tasks is None


def test_without_test_file_a_seeded_split(tmp_path):
    rows = [{"text": f"t{i}", "label": i % 2} for i in range(50)]
    splits = load_files(_jsonl(tmp_path / "d.jsonl", rows), test_fraction=0.2, seed=0)
    assert (len(splits.train), len(splits.test)) == (40, 10) and sum(splits.test.labels) == 5
