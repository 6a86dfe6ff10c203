"""The Rotten Tomatoes sentences: parsing (synthetic) and the real data from the vader archive."""

import json
import shutil

import numpy as np
import pytest

from glora.data import sentiment
from glora.data.sentiment import binarize, load_rotten_tomatoes, load_scores, parse_ground_truth
from glora.errors import GloraError

FIRST = "The Rock is destined to be the 21st Century's new ''Conan''"


def test_parse_handles_crlf_utf8_and_tabs_inside_sentences():
    text = "1\t2.5\tGood film\r\n2\t-0.25\tWe\u2019ve seen it\tbefore\r\n\r\n3\t0\tMeh"
    assert parse_ground_truth(text) == (["Good film", "We\u2019ve seen it\tbefore", "Meh"],
                                        [2.5, -0.25, 0.0])


def test_parse_names_the_bad_line():
    with pytest.raises(GloraError, match=r"line 2: expected `id<TAB>score<TAB>sentence`"):
        parse_ground_truth("1\t2.5\tGood\n2\tnot-a-number\tBad\n")


def test_binarize_drops_near_neutral_and_zero_scores():
    kept, labels = binarize([2.0, -0.4, 0.5, -3.0, 0.0], threshold=0.5)
    assert kept.tolist() == [0, 2, 3] and labels.tolist() == [1, 1, 0]
    kept, labels = binarize([0.1, 0.0, -0.1], threshold=0.0)
    assert kept.tolist() == [0, 2] and labels.tolist() == [1, 0]


def test_all_sentences_with_scores_in_range(vader_cache):
    sentences, scores = load_scores()
    assert len(sentences) == len(scores) == 10_605
    assert sentences[0].startswith(FIRST) and scores[0] == pytest.approx(2.26666666667)
    assert -4 <= min(scores) < -3.5 and 3.5 < max(scores) <= 4
    assert all(s and "\r" not in s for s in sentences)


def test_default_splits_sizes_balance_and_labels(vader_cache):
    splits = load_rotten_tomatoes()
    train, test = splits.train, splits.test
    assert (len(train), len(test)) == (8058, 2014)  # 10,072 sentences with |score| >= 0.5
    assert train.label_names == ("negative", "positive") and train.metrics == ("accuracy", "f1")
    for part in (train, test):
        assert 0.45 < np.mean(part.labels) < 0.55
    assert abs(np.mean(train.labels) - np.mean(test.labels)) < 0.005  # stratified
    labelled = dict(zip(train.texts + test.texts, train.labels + test.labels, strict=True))
    assert len(labelled) >= 10_070 and labelled[load_scores()[0][0]] == 1


def test_split_is_seeded_and_threshold_is_a_parameter(vader_cache):
    a, b, c = (load_rotten_tomatoes(seed=s) for s in (0, 0, 1))
    assert a.test.texts == b.test.texts and a.test.texts != c.test.texts
    strict = load_rotten_tomatoes(threshold=1.0)
    assert len(strict.train) + len(strict.test) == 9173


def test_later_loads_read_only_the_parsed_file(vader_cache, monkeypatch):
    monkeypatch.setattr(sentiment, "fetch_sdist", lambda *a: pytest.fail("archive fetched again"))
    monkeypatch.setattr(sentiment, "extract_members", lambda *a: pytest.fail("archive read again"))
    assert len(load_scores()[0]) == 10_605


def test_an_empty_cached_parse_is_redone_and_an_empty_member_says_how_to_fix_it(
        vader_session_cache, empty_cache):
    """What parallel runs of earlier versions could leave: an empty member and an empty parse."""
    shutil.copytree(vader_session_cache, empty_cache, dirs_exist_ok=True)  # no download
    folder = empty_cache / sentiment.NAME
    parsed = folder / "movie_review_snippets.json"
    parsed.write_text(json.dumps({"format": sentiment._PARSED_FORMAT, "sentences": [],
                                  "scores": []}))
    assert len(load_scores()[0]) == 10_605  # parsed again from the extracted member
    parsed.unlink()
    (folder / sentiment.MEMBER).write_text("")
    with pytest.raises(GloraError, match=f"holds no sentences.*Delete the folder {folder}"):
        load_scores()
