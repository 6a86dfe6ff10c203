"""The default data set: Rotten Tomatoes review sentences with human sentiment scores.

The 10,605 sentence-level snippets from rottentomatoes.com (after Pang and Lee) were each rated
on a -4..4 scale by at least 20 screened raters for the VADER paper (Hutto and Gilbert, ICWSM
2014; see the archive's ``_README_.txt``). The ground truth ships inside the
``vaderSentiment==3.3.2`` source archive on PyPI, as
``additional_resources/hutto_ICWSM_2014.tar.gz`` -> ``movieReviewSnippets_GroundTruth.txt``
(tab-separated: id, mean score, sentence). That route works on machines that reach only the
package index. The binary task labels a sentence positive (1) when its mean score is positive;
sentences rated close to neutral are dropped, because their sign is rater noise.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from glora.atomic import write_atomic
from glora.errors import GloraError

from .cache import cache_dir, extract_members, fetch_sdist
from .dataset import Splits, TextDataset, train_test_split

NAME = "rotten_tomatoes"
SOURCE = ("vaderSentiment", "3.3.2")
NESTED_ARCHIVE = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
MEMBER = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
#: Sentences with ``|mean score| < 0.5`` are dropped: 533 of 10,605 (5.0%).
DEFAULT_THRESHOLD = 0.5
_PARSED_FORMAT = 1


def parse_ground_truth(text: str) -> tuple[list[str], list[float]]:
    """Sentences and mean scores from the ground-truth file's text (``id<TAB>score<TAB>sentence``).

    Raises:
        GloraError: a non-empty line does not have that form.
    """
    sentences, scores = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t", 2)
        try:
            scores.append(float(fields[1]))
            sentences.append(fields[2].strip())
        except (IndexError, ValueError) as err:
            raise GloraError(f"{MEMBER}, line {number}: expected `id<TAB>score<TAB>sentence`, "
                             f"got {line[:80]!r}.") from err
    return sentences, scores


def binarize(scores: Sequence[float], threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """``(kept, labels)``: indices with ``|score| >= threshold`` (and non-zero), and their labels.

    A label is 1 for a positive mean score, 0 for a negative one.
    """
    if threshold < 0:
        raise ValueError(f"`threshold` must be non-negative, got {threshold}.")
    s = np.asarray(scores, dtype=np.float64)
    kept = np.flatnonzero((np.abs(s) >= threshold) & (s != 0))
    return kept, (s[kept] > 0).astype(np.int64)


def load_scores() -> tuple[list[str], list[float]]:
    """All 10,605 sentences with their mean scores, parsed once and cached as JSON.

    The first call downloads the source archive (about 2.5 MB) and extracts the two files it
    needs; later calls read only the parsed JSON.
    """
    folder = cache_dir() / NAME
    parsed = folder / "movie_review_snippets.json"
    if parsed.is_file():
        data = json.loads(parsed.read_text(encoding="utf-8"))
        if data.get("format") == _PARSED_FORMAT and data.get("sentences"):
            return data["sentences"], data["scores"]
    (nested,) = extract_members(fetch_sdist(*SOURCE), [NESTED_ARCHIVE], folder)
    (member,) = extract_members(nested, [MEMBER], folder)
    sentences, scores = parse_ground_truth(member.read_text(encoding="utf-8"))
    if not sentences:  # earlier versions could leave it empty when parallel runs extracted it
        raise GloraError(f"{member} holds no sentences: the cache is damaged. Delete the folder "
                         f"{folder} and run again (it is fetched anew).")
    write_atomic(parsed, json.dumps({"format": _PARSED_FORMAT, "source": "==".join(SOURCE),
                                     "member": MEMBER, "sentences": sentences, "scores": scores}))
    return sentences, scores


def load_rotten_tomatoes(threshold: float = DEFAULT_THRESHOLD, test_fraction: float = 0.2,
                         seed: int = 0) -> Splits:
    """Binary sentiment (1 positive) on Rotten Tomatoes sentences, split train/test.

    Args:
        threshold: drop sentences whose mean human score (-4..4) is below this in absolute value.
        test_fraction: share of each class held out for testing.
        seed: seed of the stratified split.
    """
    sentences, scores = load_scores()
    kept, labels = binarize(scores, threshold)
    data = TextDataset(texts=[sentences[i] for i in kept], labels=labels.tolist(),
                       label_names=("negative", "positive"), metrics=("accuracy", "f1"), name=NAME)
    return train_test_split(data, test_fraction, seed)
