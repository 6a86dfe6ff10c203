"""The `glora` command as a user runs it."""

from __future__ import annotations

from pathlib import Path

from glora.aggregation import methods
from glora.cli import main
from glora.config import save_config


def test_methods_lists_every_registered_method(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert methods() and all(m in out for m in methods())


def test_run_prints_the_table_and_writes_results(tiny_config, tiny_model_dir, tiny_csv, tmp_path,
                                                 capsys):
    cfg = tiny_config("train.rounds=1")  # the same overrides, passed on the command line
    overrides = [f"model.name={tiny_model_dir}", f"data.dataset={tiny_csv[0]}",
                 f"data.test_file={tiny_csv[1]}", "data.num_clients=4", "data.partition=iid",
                 "data.max_length=12", "data.min_client_size=1", "train.rounds=1",
                 "train.local_steps=2", "train.batch_size=8", "workers=1", "lora.ranks=[2,4]",
                 f"output_dir={cfg.output_dir}", "methods=[glora,flexlora]"]
    assert main(["run", *overrides]) == 0
    out = capsys.readouterr().out
    assert "| method |" in out and "| glora |" in out and "| flexlora |" in out
    assert (tmp_path / "run" / "config.yaml").exists()


def test_bad_config_exits_2_with_the_key(capsys):
    assert main(["run", "train.roundz=1"]) == 2
    assert "unknown key `train.roundz`" in capsys.readouterr().err


def test_summary_rebuilds_a_runs_table_from_its_metrics(tiny_config, capsys, tmp_path):
    cfg = tiny_config("train.rounds=1", "methods=[glora,fedit]", "eval.baseline=true")
    save_config(cfg, tmp_path / "run.yaml")
    assert main(["run", "--config", str(tmp_path / "run.yaml")]) == 0
    out = Path(cfg.output_dir)
    for checkpoint in out.glob("*/checkpoint.pt"):  # a committed run folder keeps none
        checkpoint.unlink()
    capsys.readouterr()
    assert main(["summary", str(out)]) == 0
    rebuilt = capsys.readouterr().out.strip().splitlines()

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip("|").split(" | ")]

    # the table `glora run` wrote, less the wall time, which the metrics do not keep
    written = [line for line in (out / "summary.md").read_text().splitlines()
               if not line.startswith("|---")]
    wall = cells(written[0]).index("wall_seconds")
    assert len(rebuilt) == len(written) + 1
    assert [cells(line)[:wall] + cells(line)[wall + 1:] for line in written] == \
        [cells(line) for line in rebuilt if not line.startswith("|---")]
    assert cells(rebuilt[2])[0] == "untuned (zero-shot)"
    assert main(["summary", str(tmp_path / "nowhere")]) == 2
