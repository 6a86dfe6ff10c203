"""Metrics against values worked out by hand."""

import math

import pytest

from glora.data.metrics import accuracy, compute_metrics, f1, macro_f1, matthews, pearson, spearman
from glora.errors import ConfigError

PREDS = [1, 1, 0, 0, 1, 0]
LABELS = [1, 0, 0, 1, 1, 0]  # tp=2, fp=1, fn=1, tn=2


def test_accuracy_and_binary_f1():
    assert accuracy(PREDS, LABELS) == pytest.approx(4 / 6)
    assert f1(PREDS, LABELS) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert f1([0, 0], [0, 0]) == 0.0  # no positive anywhere: undefined, reported as 0


def test_macro_f1_averages_per_class_f1():
    preds, labels = [0, 1, 2, 2], [0, 1, 1, 2]
    # class 0: 1; class 1: tp 1, fn 1 -> 2/3; class 2: tp 1, fp 1 -> 2/3
    assert macro_f1(preds, labels) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_matthews_binary_matches_the_textbook_formula_and_multiclass_extremes():
    tp, tn, fp, fn = 2, 2, 1, 1
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert matthews(PREDS, LABELS) == pytest.approx(expected)  # 1/3
    assert matthews([0, 1, 2, 2], [0, 1, 2, 2]) == pytest.approx(1.0)
    assert matthews([1, 0], [0, 1]) == pytest.approx(-1.0)
    assert matthews([1, 1, 1], [0, 1, 0]) == 0.0  # constant predictions: undefined, reported 0


def test_pearson_and_spearman_with_ties():
    x, y = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 5.0]
    # deviations (-1.5,-.5,.5,1.5) and (-1.75,.25,-.75,2.25): cov 5.5, norms^2 5 and 8.75
    assert pearson(x, y) == pytest.approx(5.5 / math.sqrt(5 * 8.75))
    assert spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)
    # ranks of (1,2,2,3) are (1, 2.5, 2.5, 4): Pearson with (1,2,3,4) is 4.5/sqrt(4.5*5)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))


def test_compute_metrics_by_name_and_errors():
    assert compute_metrics(["accuracy", "f1"], PREDS, LABELS) == pytest.approx(
        {"accuracy": 4 / 6, "f1": 2 / 3})
    with pytest.raises(ConfigError, match=r"unknown metric\(s\) \['bleu'\]; known: \['accuracy'"):
        compute_metrics(["accuracy", "bleu"], PREDS, LABELS)
    with pytest.raises(ValueError, match="one length"):
        accuracy([1, 0], [1])
