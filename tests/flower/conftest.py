"""The tiny setting of the Flower tests: three clients of ranks 2, 4, 8 on a small CSV task;
a round needs two valid replies and is retried once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glora.federation.server import load_state
from tests.sim.conftest import write_csv

EXPERIMENT = ["data.num_clients=3", "data.partition=iid", "data.max_length=12",
              "data.min_client_size=1", "train.rounds=2", "train.local_steps=3",
              "train.batch_size=8", "train.lr=0.01", "lora.ranks=[2,4,8]", "lora.alpha=4",
              "methods=[glora]", "seed=3", "workers=1", "server.min_clients=2", "server.retries=1"]


@pytest.fixture(scope="session")
def overrides(tiny_model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """``key=value`` overrides of the tiny run (without ``output_dir``): 72 training sentences."""
    folder = tmp_path_factory.mktemp("flower_data")
    train, test = write_csv(folder / "train.csv", 72, 1), write_csv(folder / "test.csv", 30, 2)
    return [f"model.name={tiny_model_dir}", f"data.dataset={train}", f"data.test_file={test}",
            *EXPERIMENT]


def history(out: Path, method: str = "glora") -> list[dict]:
    """The records of ``out/<method>/metrics.jsonl``."""
    return [json.loads(line) for line in (out / method / "metrics.jsonl").read_text().splitlines()]


def checkpoint_history(out: Path, method: str = "glora") -> list[dict]:
    """The history in ``out/<method>/checkpoint.pt``, as ``metrics.jsonl`` spells it (JSON)."""
    state = load_state(out / method / "checkpoint.pt")
    return [json.loads(json.dumps(record)) for record in state.history]
