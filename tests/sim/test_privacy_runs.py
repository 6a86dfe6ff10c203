"""DP-SGD runs through the simulator: every round records each client's ε, a run spending a
target ε ends there, a DP run resumes to the same ε, and the causal LM trains privately too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glora.sim.experiment import run_experiment
from tests.lm.conftest import tiny_lm_dir, tiny_tasks_dir  # noqa: F401 (fixtures)
from tests.lm.test_lm_run import lm_config


def records(out: Path, method: str = "glora") -> list[dict]:
    return [json.loads(line) for line in (out / method / "metrics.jsonl").read_text().splitlines()]


def untimed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in history]


def test_every_round_records_the_clients_epsilon_and_a_resume_keeps_it(tiny_config, tmp_path):
    dp = ("train.dp_noise_multiplier=1.0", "train.dp_max_grad_norm=1.0", "train.rounds=3")
    straight = run_experiment(tiny_config(*dp, f"output_dir={tmp_path / 'a'}"), export=False)
    history = records(tmp_path / "a")
    spent = [r["dp_epsilon_max"] for r in history]
    assert spent[0] < spent[1] < spent[2] and straight[0]["dp_epsilon_max"] == spent[2]
    assert set(history[0]["dp_epsilon"]) == {"0", "1", "2", "3"}
    interrupted = tiny_config(*dp, f"output_dir={tmp_path / 'b'}")
    run_experiment(interrupted, stop_after=1, export=False)
    run_experiment(interrupted, resume=True, export=False)
    assert untimed(records(tmp_path / "b")) == untimed(history)


def test_a_target_epsilon_sets_the_noise_to_spend_it(tiny_config, tmp_path):
    run_experiment(tiny_config("train.dp_epsilon=8.0", "train.rounds=2"), export=False)
    final = records(tmp_path / "run")[-1]
    assert final["dp_epsilon_max"] == pytest.approx(8.0, rel=0.05)


def test_a_causal_lm_trains_privately(tiny_lm_dir, tiny_tasks_dir, tmp_path):  # noqa: F811
    cfg = lm_config(tiny_lm_dir, tiny_tasks_dir, tmp_path, "methods=[glora]", "train.rounds=1",
                    "train.dp_noise_multiplier=0.5")
    (row,) = run_experiment(cfg, export=False)
    assert row["dp_epsilon_max"] > 0 and "global_rougeL" in row
