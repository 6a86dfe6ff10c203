"""Fixtures of the aggregation tests (plain helpers live in ``lora_helpers.py``)."""

from __future__ import annotations

import pytest
from lora_helpers import ShapeRecorder


@pytest.fixture
def shape_recorder() -> ShapeRecorder:
    """A fresh :class:`lora_helpers.ShapeRecorder`; use it as a context manager."""
    return ShapeRecorder()
