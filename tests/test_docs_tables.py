"""Every results page under docs/ that `glora report` wrote is what its committed store gives now.

A page names the command that made it (`glora report STORE ... --out docs/PAGE.md`, in its "How
these numbers were obtained" section); this re-runs that command into a temporary folder and
compares the tables, line by line, with the page's first tables (text added by hand below them
is not compared).
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from glora.cli import main

ROOT = Path(__file__).resolve().parent.parent
COMMAND = re.compile(r"`(glora report [^`]+ --out (docs/[\w./-]+\.md))`")


def generated_pages() -> list[tuple[Path, list[str]]]:
    """``(page, report arguments)`` of every docs page that names the report that wrote it."""
    pages = []
    for page in sorted((ROOT / "docs").glob("*.md")):
        for command, out in COMMAND.findall(page.read_text()):
            if ROOT / out == page:
                pages.append((page, shlex.split(command)[1:]))
    return pages


def tables(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")]


def test_the_results_pages_name_their_reports():
    names = {page.name for page, _ in generated_pages()}
    assert {"results.md", "results_backbone.md", "task_heterogeneity.md", "results_privacy.md",
            "privacy_budgets.md"} <= names


@pytest.mark.parametrize("page,args", generated_pages(), ids=lambda x: getattr(x, "name", ""))
def test_a_page_equals_what_its_store_gives(page: Path, args: list[str], tmp_path,
                                            monkeypatch):
    monkeypatch.chdir(ROOT)  # the command's store path is relative to the repository
    out = args.index("--out")
    args[out + 1] = str(tmp_path / page.name)
    assert main(args) == 0
    fresh = tables((tmp_path / page.name).read_text())
    assert fresh, f"{page.name}: the report has no table"
    assert tables(page.read_text())[:len(fresh)] == fresh, (
        f"{page.relative_to(ROOT)} differs from `{' '.join(args)}`; rebuild it with the command "
        "its provenance section names.")


SUMMARY = re.compile(r"^<!-- (glora summary (\S+)) -->$", re.MULTILINE)


def test_the_readme_tables_equal_what_their_runs_give(capsys, monkeypatch):
    """A README table under ``<!-- glora summary DIR -->`` is that command's output, from the run
    folder committed under ``results/``."""
    monkeypatch.chdir(ROOT)
    readme = (ROOT / "README.md").read_text()
    found = SUMMARY.findall(readme)
    assert found, "the README's default table names no `glora summary` command"
    for command, folder in found:
        assert (ROOT / folder / "config.yaml").is_file(), f"{folder} is not committed"
        assert main(shlex.split(command)[1:]) == 0
        fresh = capsys.readouterr().out.strip().splitlines()
        after = readme.split(f"<!-- {command} -->\n", 1)[1].splitlines()
        assert after[:len(fresh)] == fresh, f"README: rebuild the table with `{command}`"


GAUGE = re.compile(r"`(glora gauge [^`]+ --report output_dir=(results/[\w./-]+))`")


def test_the_gauge_page_equals_what_its_store_gives(tmp_path, monkeypatch):
    """docs/gauge.md's table is `glora gauge --report` over its committed store (a copy: the
    report writes its table into the store)."""
    monkeypatch.chdir(ROOT)
    page = ROOT / "docs" / "gauge.md"
    command, store = GAUGE.search(" ".join(page.read_text().split())).groups()
    copy = tmp_path / "store"
    shutil.copytree(ROOT / store, copy, ignore=shutil.ignore_patterns("checkpoint.pt", "gauge.md"))
    args = shlex.split(command)[1:]
    args[-1] = f"output_dir={copy}"
    assert main(args) == 0
    fresh = tables((copy / "gauge" / "gauge.md").read_text())
    assert fresh and tables(page.read_text())[:len(fresh)] == fresh, (
        f"docs/gauge.md differs from `{command}`; rebuild it with that command.")
