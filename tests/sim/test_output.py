"""Nothing already done is lost: a run's folder is never reused silently, a resumed run keeps
its config, two runs never write one folder, and a checkpoint never runs code."""

from __future__ import annotations

import json

import pytest
import torch

from glora.cli import main
from glora.config import save_config
from glora.errors import CheckpointError, ConfigError
from glora.federation import output
from glora.federation.server import load_state
from glora.sim.experiment import run_experiment


def untimed(text: str) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if not k.endswith("seconds")}
            for line in text.splitlines()]


def test_a_folder_holding_a_run_is_refused_unless_resumed_or_overwritten(tiny_config, tmp_path,
                                                                        capsys):
    cfg = tiny_config("train.rounds=1")
    run_experiment(cfg, export=False)
    metrics = tmp_path / "run" / "glora" / "metrics.jsonl"
    before = metrics.read_text()
    with pytest.raises(ConfigError, match=r"already holds a run; pass `--resume` to continue it, "
                                          r"`--overwrite` to delete it"):
        run_experiment(cfg, export=False)
    assert metrics.read_text() == before  # nothing was touched
    save_config(cfg, tmp_path / "again.yaml")
    assert main(["run", "--config", str(tmp_path / "again.yaml")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    (tmp_path / "run" / "stale.txt").write_text("left by the old run")
    assert main(["run", "--overwrite", "--config", str(tmp_path / "again.yaml")]) == 0
    assert not (tmp_path / "run" / "stale.txt").exists()
    assert untimed(metrics.read_text()) == untimed(before)  # the same run, from scratch


def test_resume_refuses_a_changed_config_unless_forced(tiny_config, tmp_path):
    run_experiment(tiny_config("train.rounds=2"), stop_after=1, export=False)
    changed = tiny_config("train.rounds=2", "train.lr=0.02", "workers=2")  # workers: harmless
    with pytest.raises(ConfigError, match=r"`train.lr` 0.01 -> 0.02") as err:
        run_experiment(changed, resume=True, export=False)
    assert "workers" not in str(err.value)
    rows = run_experiment(changed, resume=True, force=True, export=False)
    assert rows[0]["rounds"] == 2
    run_experiment(changed, resume=True, export=False)  # the forced config is now the stored one
    with pytest.raises(ConfigError, match=r"`train.lr` 0.02 -> 0.01"):
        run_experiment(tiny_config("train.rounds=2"), resume=True, export=False)


def test_two_runs_never_write_one_folder(tiny_config, tmp_path):
    cfg = tiny_config("train.rounds=1")
    with output.locked(tmp_path / "run"):  # as another process writing it would
        with pytest.raises(ConfigError, match=r"run is being written by process \d+"):
            run_experiment(cfg, export=False)
    run_experiment(cfg, export=False)  # released: the run goes ahead


def test_a_checkpoint_holding_code_is_refused_not_run(tmp_path):
    """Checkpoints load with ``torch.load(weights_only=True)``: a pickled callable is an error
    naming the file, and nothing runs."""
    import os as victim

    path = tmp_path / "checkpoint.pt"
    torch.save({"model": victim.getcwd}, path)
    with pytest.raises(CheckpointError, match=rf"{path} is not a glora checkpoint this version "
                                              "can load safely"):
        load_state(path)
