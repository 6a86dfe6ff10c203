"""`glora sweep`: a grid of runs from one file that skips what is done and resumes what is not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from glora.cli import main
from glora.config import load_config
from glora.sim.experiment import run_experiment
from glora.federation.records import read_history
from glora.sweep import plan_sweep, run_plan

SETTINGS = [{"name": "iid", "group": "Partition"},
            {"name": "skewed", "group": "Partition",
             "overrides": {"data.partition": "dirichlet", "data.alpha": 1.0}}]
VARIANTS = {"glora": {"method": "glora"}, "fedit": {"method": "fedit"}}


def tiny_base(model_dir: str, csv: tuple[str, str], **extra: Any) -> dict[str, Any]:
    """Overrides of the tiny setting of tests/sim/conftest.py: one round, two local steps."""
    return {"model.name": model_dir, "data.dataset": csv[0], "data.test_file": csv[1],
            "data.num_clients": 4, "data.partition": "iid", "data.max_length": 12,
            "data.min_client_size": 1, "train.rounds": 1, "train.local_steps": 2,
            "train.batch_size": 8, "train.lr": 0.01, "lora.ranks": [2, 4], "lora.alpha": 4,
            **extra}


def write_sweep(path: Path, base: dict[str, Any], settings: list | None = None,
                methods: dict | None = None, seeds: list[int] | None = None) -> Path:
    path.write_text(yaml.safe_dump({"name": "tiny", "base": base, "seeds": seeds or [0, 1],
                                    "methods": methods or VARIANTS,
                                    "settings": settings or SETTINGS}, sort_keys=False))
    return path


def results(store: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(store)): json.loads(p.read_text())
            for p in sorted(store.glob("*/*/seed_*/result.json"))}


@pytest.fixture(scope="module")
def grid(tmp_path_factory, tiny_model_dir, tiny_csv) -> tuple[Path, Path]:
    """A 2-setting x 2-variant x 2-seed sweep, run once inline: (sweep file, store)."""
    folder = tmp_path_factory.mktemp("grid")
    file = write_sweep(folder / "grid.yaml", tiny_base(tiny_model_dir, tiny_csv))
    store = folder / "store"
    assert main(["sweep", str(file), "--store", str(store), "--jobs", "1"]) == 0
    return file, store


def test_every_run_writes_its_result(grid):
    file, store = grid
    found = results(store)
    assert sorted(found) == [f"{s}/{v}/seed_{k}" for s in ("iid", "skewed")
                             for v in ("fedit", "glora") for k in (0, 1)]
    r = found["skewed/fedit/seed_1"]
    run_dir = store / "skewed" / "fedit" / "seed_1"
    assert (r["setting"], r["group"], r["variant"], r["method"], r["seed"]) == \
        ("skewed", "Partition", "fedit", "fedit", 1)
    assert r["label"] == r["summary"]["method"] == "fedit (all r=2)"  # ranks [2, 4]: one rank
    assert r["final"]["round"] == 1 and "global_accuracy" in r["final"]
    assert r["summary"]["global_accuracy"] == r["final"]["global_accuracy"]
    assert r["wall_seconds"] > 0 and not (run_dir / "error.txt").exists()
    assert r["command"] == f"glora run --config {run_dir / 'config.yaml'}"
    cfg = load_config(run_dir / "config.yaml")  # the command reruns exactly this run
    assert (cfg.methods, cfg.seed, cfg.workers, cfg.data.partition, cfg.data.alpha) == \
        (["fedit"], 1, 1, "dirichlet", 1.0)
    assert cfg.output_dir == str(run_dir)
    saved = yaml.safe_load((store / "sweep.yaml").read_text())
    assert saved["base"]["train.rounds"] == 1 and saved["seeds"] == [0, 1]
    assert [s["methods"] for s in saved["settings"]] == [["glora", "fedit"]] * 2


def test_a_second_call_runs_nothing_and_a_lost_result_reruns_alone(grid, capsys):
    file, store = grid
    before = {k: (store / k / "result.json").stat().st_mtime_ns for k in results(store)}
    assert main(["sweep", str(file), "--store", str(store), "--jobs", "1"]) == 0
    assert {k: (store / k / "result.json").stat().st_mtime_ns for k in before} == before

    lost = store / "iid" / "glora" / "seed_0" / "result.json"
    old = json.loads(lost.read_text())
    lost.unlink()
    capsys.readouterr()
    assert main(["sweep", "--dry-run", str(file), "--store", str(store)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split() == ["setting", "variant", "seed", "status"]
    assert len(listing) == 9 and sum(line.endswith(" done") for line in listing) == 7
    assert any(line.split()[:3] == ["iid", "glora", "0"] and "resumes after round 1" in line
               for line in listing)
    assert main(["sweep", str(file), "--store", str(store), "--jobs", "1"]) == 0
    after = {k: (store / k / "result.json").stat().st_mtime_ns for k in before}
    assert [k for k in before if after[k] != before[k]] == ["iid/glora/seed_0"]
    assert json.loads(lost.read_text())["final"] == old["final"]  # resumed, not retrained


def test_only_keeps_the_named_settings_and_an_unknown_name_is_refused(grid, capsys):
    file, store = grid
    capsys.readouterr()
    assert main(["sweep", "--dry-run", "--only", "skewed", str(file), "--store", str(store)]) == 0
    listing = capsys.readouterr().out.splitlines()[1:]
    assert sorted(tuple(line.split()[:3]) for line in listing) == \
        [("skewed", v, k) for v in ("fedit", "glora") for k in ("0", "1")]
    assert main(["sweep", "--dry-run", "--only", "skewed,iid_typo", str(file)]) == 2
    assert "`--only`: no setting 'iid_typo' (the file has iid, skewed)" in capsys.readouterr().err


def test_a_changed_config_is_refused_on_a_store_with_results(grid, capsys):
    file, store = grid
    assert main(["sweep", "--dry-run", "--store", str(store), str(file), "train.lr=0.5"]) == 2
    err = capsys.readouterr().err
    assert "holds results of another config" in err and "`train.lr` 0.01 -> 0.5" in err
    assert err.count("`train.lr`") == 8  # every run is named


def test_a_run_stored_before_a_key_existed_compares_with_the_value_it_ran_with(grid, capsys):
    """A config saved before `train.lr_schedule` existed ran with a constant rate."""
    file, store = grid
    saved = store / "iid" / "glora" / "seed_0" / "config.yaml"
    text = saved.read_text()
    try:
        cfg = yaml.safe_load(text)
        assert cfg["train"].pop("lr_schedule") == "cosine"
        saved.write_text(yaml.safe_dump(cfg, sort_keys=False))
        capsys.readouterr()
        assert main(["sweep", "--dry-run", "--store", str(store), str(file)]) == 2
        err = capsys.readouterr().err
        assert "iid/glora/seed_0: `train.lr_schedule` 'constant' -> 'cosine'" in err
        assert err.count("lr_schedule") == 1
    finally:
        saved.write_text(text)


def test_jobs_2_runs_in_worker_processes_with_the_same_results(grid, tmp_path, tiny_model_dir,
                                                               tiny_csv):
    file = write_sweep(tmp_path / "two.yaml", tiny_base(tiny_model_dir, tiny_csv),
                       settings=[SETTINGS[0]], methods={"glora": {"method": "glora"}})
    store = tmp_path / "store"
    assert main(["sweep", str(file), "--store", str(store), "--jobs", "2"]) == 0
    found, inline = results(store), results(grid[1])
    assert sorted(found) == ["iid/glora/seed_0", "iid/glora/seed_1"]
    for key, r in found.items():
        same = inline[key]["final"]
        assert r["final"]["global_accuracy"] == pytest.approx(same["global_accuracy"])
        assert r["final"]["train_loss"] == pytest.approx(same["train_loss"], rel=1e-5)


def test_an_interrupted_run_resumes_from_its_checkpoint(tmp_path, tiny_model_dir, tiny_csv):
    file = write_sweep(tmp_path / "resume.yaml",
                       tiny_base(tiny_model_dir, tiny_csv, **{"train.rounds": 2}),
                       settings=[SETTINGS[0]], methods={"glora": {"method": "glora"}}, seeds=[3])
    plan = plan_sweep(file, store=tmp_path / "store")
    (job,) = plan.jobs
    run_experiment(job.cfg, stop_after=1, export=False)  # killed after round 1
    first = read_history(job.run.dir / "glora")
    assert len(first) == 1
    assert run_plan(plan, jobs=1) == {}
    history = read_history(job.run.dir / "glora")
    assert len(history) == 2 and history[0] == first[0]  # round 1 kept (its timings too)
    assert json.loads((job.run.dir / "result.json").read_text())["final"] == history[1]


def test_a_failed_run_is_recorded_and_the_sweep_goes_on(tmp_path, tiny_model_dir, tiny_csv,
                                                        capsys):
    settings = [SETTINGS[0], {"name": "broken", "overrides": {"data.test_file": "missing.csv"}}]
    file = write_sweep(tmp_path / "fail.yaml", tiny_base(tiny_model_dir, tiny_csv),
                       settings=settings, methods={"glora": {"method": "glora"}}, seeds=[0])
    store = tmp_path / "store"
    assert main(["sweep", str(file), "--store", str(store), "--jobs", "1"]) == 2
    err = capsys.readouterr().err
    assert "1 of 2 runs failed" in err and "broken/glora/seed_0" in err and "missing.csv" in err
    assert (store / "iid" / "glora" / "seed_0" / "result.json").exists()
    failed = store / "broken" / "glora" / "seed_0"
    assert "missing.csv" in (failed / "error.txt").read_text()
    assert not (failed / "result.json").exists()


def test_a_bad_sweep_file_names_every_problem_and_runs_nothing(tmp_path, tiny_model_dir, tiny_csv,
                                                               capsys):
    file = tmp_path / "bad.yaml"
    file.write_text(yaml.safe_dump({
        "base": tiny_base(tiny_model_dir, tiny_csv, seed=4), "seeds": [0, 0], "colour": "blue",
        "base_config": "nowhere.yaml",
        "methods": {"glora": {"method": "glora", "options": {"consensus": "loud"}},
                    "mystery": {"method": "nosuchmethod"}, "fedit": {"method": "fedit"}},
        "settings": [{"name": "a", "overrides": {"data.alpha": -1}},
                     {"name": "a"},
                     {"name": "b c"},
                     {"name": "d", "methods": ["fedit", "ghost"]},
                     {"name": "e", "overrides": {"lora.equal_rank": "error"},
                      "methods": ["glora", "fedit"]},
                     {"name": "f", "overrides": {"train.roundz": 2}}]}))
    store = tmp_path / "store"
    assert main(["sweep", str(file), "--store", str(store), "train.rounds=0"]) == 2
    err = capsys.readouterr().err
    expected = ["unknown key `colour`", "nowhere.yaml", "`seeds`", "`base` or the command line "
                "sets `seed`", "`methods.mystery`: unknown method 'nosuchmethod'",
                "variant `glora`: `method_options.glora`",
                "`base`: `train.rounds` must be at least 1",
                "setting `a`: `data.alpha` must be positive", "setting `a`: the name is used twice",
                "setting `b c`", "'ghost'", "setting `f`: unknown key `train.roundz`",
                "setting `e`, variant `fedit`: methods ['fedit'] need equal client ranks"]
    assert [e for e in expected if e not in err] == [], err
    # told once where it arises, not once per run
    assert err.count("train.rounds` must be") == 1 and err.count("train.roundz") == 1
    assert "variant `glora`: methods" not in err  # glora takes mixed ranks
    assert not store.exists()
