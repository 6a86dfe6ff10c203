"""`glora report`: the numbers (pure, hand-made values), a hand-made store, a real sweep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from glora.cli import main
from glora.errors import ConfigError
from glora.report import (Cell, Paired, cell_text, mean_by_round, mean_std, paired, paired_text,
                          significance, total_mb, write_report)
from tests.sim.test_sweep import tiny_base, write_sweep

METHODS = {"glora": "glora", "glora_energy": "glora", "fedit": "fedit"}


# -- the numbers -------------------------------------------------------------------------------
def test_mean_and_sample_std():
    assert mean_std([0.8, 0.9, 1.0]) == (pytest.approx(0.9), pytest.approx(0.1))
    assert mean_std([0.6, 0.8]) == (pytest.approx(0.7), pytest.approx(0.1414214))
    assert mean_std([0.5]) == (0.5, None)  # no spread from one seed
    with pytest.raises(ValueError):
        mean_std([])


def test_paired_differences_and_their_t_interval():
    # differences 0.1, 0.2, 0.3: mean 0.2, sd 0.1, t(0.975, 2) = 4.3027
    p = paired({0: 0.9, 1: 0.8, 2: 0.7, 3: 0.5}, {0: 0.8, 1: 0.6, 2: 0.4})
    assert p.n == 3 and p.mean == pytest.approx(0.2)
    assert p.half == pytest.approx(4.302653 * 0.1 / 3 ** 0.5, rel=1e-6) and not p.significant
    assert paired_text(p) == "+0.2000 [-0.0484, +0.4484] (n=3)"
    tight = paired({0: 0.9, 1: 0.8, 2: 0.7}, {0: 0.8, 1: 0.69, 2: 0.61})
    assert tight.significant and tight.mean > 0
    assert paired({0: 0.9}, {0: 0.8}) == Paired(pytest.approx(0.1), None, 1)
    # two seeds whose differences are equal (13 of 2,015 sentences twice): no spread estimated
    same = paired({0: 0.8237, 1: 0.8257}, {0: 0.8173, 1: 0.8193})
    assert same.half == pytest.approx(0.0, abs=1e-12) and not same.significant
    assert paired({0: 0.9}, {1: 0.8}) is None and paired_text(None) == "n/a"


def test_significance_names_only_intervals_that_exclude_zero():
    ok, no = Paired(0.05, 0.01, 5), Paired(-0.02, 0.03, 5)
    assert significance("a", "glora", {"fedit": ok, "flora": no}) == (
        "`a`: significant: `glora` better than `fedit` by 0.0500 ± 0.0100; the others are not.")
    assert significance("a", "glora", {"fedit": ok}, lower=True).startswith(
        "`a`: significant: `glora` worse than `fedit`")  # a higher loss
    assert "no difference between `glora` and the 2 other variant(s) is significant" in \
        significance("b", "glora", {"fedit": no, "flora": no})
    assert "fewer than two paired seeds" in significance("c", "glora", {"fedit": Paired(0.1, None, 1)})


def test_cell_text():
    assert cell_text(Cell((0.8, 0.9))) == "0.8500 ± 0.0707 (n=2)"
    assert cell_text(Cell((0.9,), 1, 1, equal_rank="fedit (all r=2)")) == \
        "0.9000 (n=1; 1 failed) †"
    assert cell_text(Cell(planned=False)) == "not run"
    assert cell_text(Cell(failed=2)) == "failed"
    assert cell_text(Cell()) == "pending"
    assert cell_text(Cell(finished=2)) == "n/a"  # finished, but without this metric


def test_curves_and_traffic():
    runs = [[{"round": 1, "m": 0.2}, {"round": 2, "m": 0.4}],
            [{"round": 1, "m": 0.4}, {"round": 2}]]
    assert mean_by_round(runs, "m") == [(1, pytest.approx(0.3)), (2, pytest.approx(0.4))]
    assert total_mb([{"bytes_up": 1_000_000, "bytes_down": 500_000}] * 2) == 3.0


# -- a hand-made store -------------------------------------------------------------------------
#: (setting, variant) -> final accuracy per seed (``None``: that seed failed)
FINAL = {("a", "glora"): [0.8, 0.9], ("a", "glora_energy"): [0.7, 0.7], ("a", "fedit"): [0.6, 0.8],
         ("b", "glora"): [0.5, 0.6], ("b", "fedit"): [0.9, None]}


def hand_made_store(store: Path) -> Path:
    """2 settings (``b`` without ``glora_energy``) x 3 variants x 2 seeds, one failed run."""
    store.mkdir()
    (store / "sweep.yaml").write_text(yaml.safe_dump({
        "name": "hand", "seeds": [0, 1],
        "methods": {"glora": {"method": "glora"},
                    "glora_energy": {"method": "glora", "options": {"consensus": "energy"}},
                    "fedit": {"method": "fedit"}},
        "settings": [{"name": "a", "group": "Data"},
                     {"name": "b", "group": "Data", "methods": ["glora", "fedit"]}]},
        sort_keys=False))
    for (setting, variant), finals in FINAL.items():
        method = METHODS[variant]
        label = "fedit (all r=2)" if method == "fedit" else method
        for seed, final in enumerate(finals):
            run = store / setting / variant / f"seed_{seed}"
            (run / method).mkdir(parents=True)
            if final is None:
                (run / "error.txt").write_text("Traceback ...\nValueError: the round diverged\n")
                continue
            history = [{"round": r, "label": label, "method": method, "train_loss": 1.0 / r,
                        "bytes_up": 1_000_000, "bytes_down": 500_000, "server_seconds": 0.002 * r,
                        "global_accuracy": final - 0.1 * (2 - r), "global_f1": final / 2}
                       for r in (1, 2)]
            (run / method / "metrics.jsonl").write_text(
                "".join(json.dumps(h) + "\n" for h in history))
            summary = {"method": label, "rounds": 2, "global_accuracy": final,
                       "global_f1": final / 2}
            (run / "result.json").write_text(json.dumps({
                "setting": setting, "group": "Data", "variant": variant, "method": method,
                "label": label, "seed": seed, "summary": summary, "final": history[-1],
                "wall_seconds": 1.0, "command": f"glora run --config {run / 'config.yaml'}"}))
    return store


def table_rows(report: str, metric: str) -> dict[str, list[str]]:
    """The rows of the (first) table under ``### `metric` ``: setting -> cells."""
    section = report.split(f"### `{metric}`")[1].split("###")[0].strip()
    table = section.split("\n\n")[0]
    rows = [line.strip("|").split(" | ") for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| setting")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows}


def test_the_report_of_a_hand_made_store(tmp_path):
    store = hand_made_store(tmp_path / "store")
    out = write_report(store)
    assert out == store / "report.md"
    report = out.read_text()
    assert "10 runs, 9 finished, 1 failed, 0 not yet run" in report
    assert "### `global_accuracy`" in report and "### `global_f1`" not in report  # the default
    assert report.count("| setting | glora | glora_energy | fedit |") == 1
    assert table_rows(report, "global_accuracy") == {
        "a": ["0.8500 ± 0.0707 (n=2)", "0.7000 ± 0.0000 (n=2)", "0.7000 ± 0.1414 (n=2) †"],
        "b": ["0.5500 ± 0.0707 (n=2)", "not run", "0.9000 (n=1; 1 failed) †"]}
    assert "**" not in report  # no mean is marked best
    assert "† Run with every client at one rank (`fedit (all r=2)`)" in report
    # glora - glora_energy: 0.1, 0.2 (paired by seed); glora - fedit: 0.2, 0.1
    assert "| a | +0.1500 [-0.4853, +0.7853] (n=2) | +0.1500 [-0.4853, +0.7853] (n=2) |" in report
    assert "| b | not run | -0.4000 (n=1) |" in report
    assert ("- `a`: no difference between `glora` and the 2 other variant(s) is significant"
            in report)
    assert "- `b`: fewer than two paired seeds; nothing can be called significant." in report
    assert "`b/fedit/seed_1`: ValueError: the round diverged" in report
    assert f"glora sweep {store / 'sweep.yaml'} --store {store}" in report
    assert "Seeds: 0, 1" in report
    links = [line[line.index("(") + 1:-1] for line in report.splitlines() if line.startswith("![")]
    assert links == ["report_plots/1-data_global_accuracy_rounds.png",
                     "report_plots/1-data_global_accuracy_vs_MB.png",
                     "report_plots/1-data_server_ms.png"]
    assert all((store / link).stat().st_size > 1000 for link in links)


def test_a_table_per_metric_and_a_failed_cell(tmp_path, capsys):
    store = hand_made_store(tmp_path / "store")
    for seed in (0, 1):  # glora in setting b: both seeds failed
        run = store / "b" / "glora" / f"seed_{seed}"
        (run / "result.json").unlink()
        (run / "error.txt").write_text("RuntimeError: out of memory\n")
    out = tmp_path / "elsewhere" / "sweep.md"
    assert main(["report", str(store), "--out", str(out),
                 "--metric", "global_f1,global_accuracy"]) == 0
    report = out.read_text()
    assert report.index("### `global_f1`") < report.index("### `global_accuracy`")
    assert table_rows(report, "global_f1")["a"][0] == "0.4250 ± 0.0354 (n=2)"
    assert table_rows(report, "global_accuracy")["b"][:2] == ["failed", "not run"]
    assert "| b | not run | n/a |" in report  # no glora seed to pair fedit's with
    assert len(list((tmp_path / "elsewhere" / "sweep_plots").glob("*.png"))) == 5


def test_only_reports_the_named_settings_and_refuses_an_unknown_one(tmp_path):
    store = hand_made_store(tmp_path / "store")
    out = tmp_path / "b.md"
    assert main(["report", str(store), "--out", str(out), "--only", "b"]) == 0
    report = out.read_text()
    assert "4 runs, 3 finished, 1 failed, 0 not yet run" in report
    assert table_rows(report, "global_accuracy") == {
        "b": ["0.5500 ± 0.0707 (n=2)", "0.9000 (n=1; 1 failed) †"]}  # no glora_energy column
    assert f"--store {store} --only b`" in report
    assert f"`glora report {store} --only b --paired glora --out {out}`" in report
    with pytest.raises(ConfigError, match=r"`--only`: no setting 'c' in this store \(its "
                                          r"settings: a, b\)"):
        write_report(store, only=["b", "c"])


def test_bad_metric_or_store_names_the_problem(tmp_path):
    store = hand_made_store(tmp_path / "store")
    with pytest.raises(ConfigError, match=r"`--metric`: \['accuracy'\].*available: "
                                          r"\['global_accuracy', 'global_f1'\]"):
        write_report(store, metrics="accuracy")
    with pytest.raises(ConfigError, match="sweep.yaml does not exist"):
        write_report(tmp_path)


# -- a real sweep ------------------------------------------------------------------------------
def test_report_of_a_real_sweep(tmp_path, tiny_model_dir, tiny_csv, capsys):
    file = write_sweep(tmp_path / "real.yaml", tiny_base(tiny_model_dir, tiny_csv),
                       settings=[{"name": "iid", "group": "Partition"}], seeds=[0])
    store = tmp_path / "store"
    assert main(["sweep", str(file), "--store", str(store), "--jobs", "1"]) == 0
    assert main(["report", str(store)]) == 0
    report = (store / "report.md").read_text()
    (row,) = table_rows(report, "global_accuracy").values()
    glora, fedit = row
    assert glora.endswith("(n=1)") and fedit.endswith("(n=1) †")  # fedit ran at one rank
    assert "| iid | " in report.split("Paired differences `glora` − X")[1]
    # the runs record shadow distances: their per-round plots join the metric and server plots
    assert len(list((store / "report_plots").glob("*.png"))) == 5
