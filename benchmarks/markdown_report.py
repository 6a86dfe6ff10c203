"""The Markdown report of a benchmark: where and how it was measured, then its table.

Every row is printed as it is measured (a long run shows its progress, and what it finished is on
screen if it is stopped); ``--out`` saves the whole report under ``benchmarks/results/``.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path


def git_commit() -> str:
    """The short commit of the checkout the benchmark runs from."""
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).parent).stdout.strip()


class Report:
    """A titled report: the command line, commit, date, ``setup`` (threads, torch) and load at
    start, then ``description`` and the table ``header``, all printed at once; :meth:`row` adds
    and prints a row, :meth:`save` writes it all."""

    def __init__(self, title: str, setup: str, description: str, header: list[str]) -> None:
        command = " ".join([f"benchmarks/{Path(sys.argv[0]).name}"] + sys.argv[1:])
        self.title = title
        self.lines = [f"`python {command}` at commit {git_commit()}, {datetime.date.today()}, "
                      f"{setup}; load average at start {os.getloadavg()[0]:.2f}.", "",
                      description, "", *header]
        print("\n".join(self.lines), flush=True)

    def row(self, line: str) -> None:
        self.lines.append(line)
        print(line, flush=True)

    def save(self, out: Path | None) -> None:
        """Write the report to ``out`` (``--out``); nothing without one."""
        if out:
            out.write_text(f"# {self.title}\n\n" + "\n".join(self.lines) + "\n")
