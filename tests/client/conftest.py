"""Fixtures of the client tests: one model cache per module over the tiny BERT."""

from __future__ import annotations

import pytest

from glora.training.cache import ModelCache


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "pretrained: loads the packaged MiniLM-L6 (a few seconds)")


@pytest.fixture(scope="module")
def cache(tiny_model_dir: str) -> ModelCache:
    return ModelCache(tiny_model_dir, num_labels=2, alpha=8.0)
