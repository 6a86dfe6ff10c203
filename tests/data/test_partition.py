"""Client partitions: coverage, determinism, skew and the error messages."""

import numpy as np
import pytest

from glora.data.partition import by_task, dirichlet, iid, label_counts, match_label_proportions
from glora.errors import ConfigError

LABELS = np.repeat(np.arange(10), 200)  # 2,000 examples, 10 balanced classes


def _assert_disjoint_cover(parts, n):
    flat = [i for p in parts for i in p]
    assert sorted(flat) == list(range(n))
    assert all(p == sorted(p) for p in parts)


def _label_skew(parts, labels) -> float:
    """Mean total-variation distance between each client's label mix and the global one."""
    counts = label_counts(parts, labels)
    mixes = counts / counts.sum(axis=1, keepdims=True)
    overall = counts.sum(axis=0) / counts.sum()
    return float(np.mean(0.5 * np.abs(mixes - overall).sum(axis=1)))


def test_iid_is_balanced_disjoint_covering_and_seeded():
    parts = iid(103, 10, seed=0)
    _assert_disjoint_cover(parts, 103)
    assert sorted(len(p) for p in parts) == [10] * 7 + [11] * 3
    assert iid(103, 10, seed=0) == parts and iid(103, 10, seed=1) != parts


def test_dirichlet_covers_is_seeded_and_small_alpha_is_more_skewed():
    parts = dirichlet(LABELS, 10, alpha=0.5, seed=0)
    _assert_disjoint_cover(parts, len(LABELS))
    assert dirichlet(LABELS, 10, alpha=0.5, seed=0) == parts
    assert dirichlet(LABELS, 10, alpha=0.5, seed=1) != parts
    skew = {a: np.mean([_label_skew(dirichlet(LABELS, 10, a, seed=s), LABELS) for s in range(3)])
            for a in (0.1, 1.0, 100.0)}
    assert skew[0.1] > 0.6 > skew[1.0] > skew[100.0] and skew[100.0] < 0.1, skew
    assert _label_skew(iid(len(LABELS), 10, seed=0), LABELS) < 0.1


def test_dirichlet_respects_min_size():
    parts = dirichlet(LABELS, 20, alpha=0.1, seed=0, min_size=20)
    assert min(len(p) for p in parts) >= 20


def test_dirichlet_gives_up_with_the_client_and_what_to_change():
    labels = np.repeat([0, 1], 10)
    with pytest.raises(ConfigError) as err:
        dirichlet(labels, 10, alpha=0.01, seed=0, min_size=2, max_tries=5)
    msg = str(err.value)
    assert "after 5 draws client" in msg and "still held" in msg
    assert "use fewer clients, a larger `alpha`, or a smaller `min_size`" in msg


@pytest.mark.parametrize("call, match", [
    (lambda: iid(5, 6, seed=0), "6 clients but only 5 examples"),
    (lambda: iid(5, 0, seed=0), "`num_clients` must be at least 1"),
    (lambda: dirichlet([0, 1, 0], 4, 1.0, seed=0), "4 clients but only 3 examples"),
    (lambda: dirichlet([0, 1, 0, 1], 3, 1.0, seed=0, min_size=2), "need at least 6 examples"),
    (lambda: dirichlet([0, 1], 2, 0.0, seed=0), "`alpha` must be positive"),
    (lambda: dirichlet([0.5, 1.2], 2, 1.0, seed=0), "needs class ids"),
    (lambda: by_task(["a", "a", "b"], 3, seed=0), "3 clients but only 2 tasks"),
])
def test_impossible_partitions_are_config_errors(call, match):
    with pytest.raises(ConfigError, match=match):
        call()


def test_by_task_gives_whole_tasks():
    tasks = ["qa", "sum", "qa", "nli", "sum", "mt", "qa", "nli", "ner"]
    parts = by_task(tasks, 2, seed=0)
    _assert_disjoint_cover(parts, len(tasks))
    held = [{tasks[i] for i in p} for p in parts]
    assert not held[0] & held[1] and {len(h) for h in held} == {2, 3}
    assert by_task(tasks, 2, seed=0) == parts
    one_each = by_task(tasks, 5, seed=1)
    assert all(len({tasks[i] for i in p}) == 1 for p in one_each)


def test_test_split_mirrors_each_clients_label_mix():
    train_labels = LABELS
    test_labels = np.repeat(np.arange(10), 50)
    train_parts = dirichlet(train_labels, 5, alpha=0.3, seed=2)
    test_parts = match_label_proportions(train_parts, train_labels, test_labels, seed=0)
    _assert_disjoint_cover(test_parts, len(test_labels))
    train_mix = label_counts(train_parts, train_labels, 10)
    test_mix = label_counts(test_parts, test_labels, 10)
    # per class, the test examples are dealt in proportion to the training counts (within one)
    expected = train_mix / train_mix.sum(axis=0) * 50
    assert np.all(np.abs(test_mix - expected) < 1)
    assert match_label_proportions(train_parts, train_labels, test_labels, seed=0) == test_parts


def test_test_split_names_a_client_left_without_test_examples():
    train_parts = [[0, 1], [2]]
    with pytest.raises(ConfigError, match=r"client 1 gets no test example \(it trains on 1 exa"):
        match_label_proportions(train_parts, [0, 0, 1], [0, 0, 0], seed=0)
