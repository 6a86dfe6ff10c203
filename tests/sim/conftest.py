"""A tiny end-to-end setting: the tiny BERT of tests/conftest.py on a small CSV task."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from glora.config import ExperimentConfig, load_config
from tests.conftest import sentiment_texts


def write_csv(path: Path, n: int, seed: int) -> Path:
    data = sentiment_texts(n, seed)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(zip(data.texts, data.labels))
    return path


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("tiny_data")
    return str(write_csv(folder / "train.csv", 96, 1)), str(write_csv(folder / "test.csv", 40, 2))


@pytest.fixture
def tiny_config(tiny_model_dir: str, tiny_csv: tuple[str, str], tmp_path: Path):
    """``make(*overrides) -> ExperimentConfig`` for a 4-client, 3-round run on the tiny setting."""

    def make(*overrides: str) -> ExperimentConfig:
        base = [f"model.name={tiny_model_dir}", f"data.dataset={tiny_csv[0]}",
                f"data.test_file={tiny_csv[1]}", "data.num_clients=4", "data.partition=iid",
                "data.max_length=12", "data.min_client_size=1", "train.rounds=3",
                "train.local_steps=3", "train.batch_size=8", "train.lr=0.01", "workers=1",
                "lora.ranks=[2,4]", "lora.alpha=4", f"output_dir={tmp_path / 'run'}",
                "model.target_modules=[query,value]", "methods=[glora]"]
        return load_config(None, base + list(overrides))

    return make
