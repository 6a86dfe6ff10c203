"""TextDataset validation, subsets and the stratified train/test split."""

import numpy as np
import pytest

from glora.data.dataset import TextDataset, train_test_split
from glora.errors import ConfigError


def _data(n: int = 100, pairs: bool = False) -> TextDataset:
    return TextDataset(texts=[f"t{i}" for i in range(n)],
                       labels=[int(i % 10 < 3) for i in range(n)],
                       text_pairs=[f"p{i}" for i in range(n)] if pairs else None,
                       label_names=("no", "yes"), name="toy")


def test_subset_keeps_metadata_and_order():
    sub = _data(pairs=True).subset([5, 2])
    assert sub.texts == ["t5", "t2"] and sub.text_pairs == ["p5", "p2"] and sub.labels == [0, 1]
    assert (sub.label_names, sub.name, sub.num_labels, len(sub)) == (("no", "yes"), "toy", 2, 2)


def test_invalid_datasets_list_every_problem():
    with pytest.raises(ConfigError) as err:
        TextDataset(texts=["a", "b"], labels=[0, 5, 1], text_pairs=["x"], label_names=("n", "y"),
                    name="bad")
    assert len(err.value.problems) == 3
    assert "2 texts but 3 labels" in str(err.value) and "0..1" in str(err.value)
    with pytest.raises(ConfigError, match="task_type"):
        TextDataset(texts=["a"], labels=[0.5], task_type="ranking")
    assert TextDataset(texts=["a"], labels=[0.5], task_type="regression",
                       metrics=("pearson",)).num_labels == 1


def test_split_is_stratified_disjoint_covering_and_seeded():
    data = _data(1000)
    splits = train_test_split(data, 0.2, seed=3)
    train, test = set(splits.train.texts), set(splits.test.texts)
    assert not train & test and len(train | test) == 1000 and len(test) == 200
    assert np.mean(splits.test.labels) == pytest.approx(0.3) == np.mean(splits.train.labels)
    assert train_test_split(data, 0.2, seed=3).test.texts == splits.test.texts
    assert train_test_split(data, 0.2, seed=4).test.texts != splits.test.texts
    with pytest.raises(ConfigError, match="`test_fraction`"):
        train_test_split(data, 1.0, seed=0)
