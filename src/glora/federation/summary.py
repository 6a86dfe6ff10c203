"""A run's summary: one table row per method (final metrics, traffic, server time), as Markdown
and CSV beside the per-method results; both engines write it, and :func:`summary_rows` rebuilds
it from a run folder's ``metrics.jsonl`` files alone (``glora summary DIR``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import yaml

from glora.errors import ConfigError

from .plots import plot_metric
from .records import EVAL_PREFIXES, read_history

UNTUNED_FILE = "untuned.json"


def summarize(label: str, history: list[dict[str, Any]],
              seconds: float | None = None) -> dict[str, Any]:
    """One table row: the last evaluated metrics, traffic and server time per round, and the
    wall time where it is known."""
    hist = history
    row: dict[str, Any] = {"method": label, "rounds": hist[-1]["round"] if hist else 0}
    evaluated = [h for h in hist if any(k.startswith(EVAL_PREFIXES) for k in h)]
    if evaluated:
        last = evaluated[-1]
        for k, v in last.items():
            if k.startswith(EVAL_PREFIXES) and isinstance(v, float):  # not the client counts
                row[k] = v
    if hist and "dp_epsilon_max" in hist[-1]:
        row["dp_epsilon_max"] = hist[-1]["dp_epsilon_max"]
    if hist:
        row["MB_up_per_round"] = sum(h["bytes_up"] for h in hist) / len(hist) / 1e6
        row["MB_down_per_round"] = sum(h["bytes_down"] for h in hist) / len(hist) / 1e6
        row["server_ms_per_round"] = 1000 * sum(h["server_seconds"] for h in hist) / len(hist)
    if seconds is not None:
        row["wall_seconds"] = seconds
    return row


def summary_rows(out: Path) -> list[dict[str, Any]]:
    """The summary of the run in ``out`` from what it keeps: ``config.yaml`` (the methods),
    ``untuned.json`` where the untuned model was scored, and each method's ``metrics.jsonl``
    (wall times are not kept there, so the rows have none).

    Raises:
        ConfigError: ``out`` holds no run's config or a method without metrics.
    """
    out = Path(out)
    if not (out / "config.yaml").is_file():
        raise ConfigError(f"{out / 'config.yaml'} does not exist: is {str(out)!r} the "
                          "`output_dir` of a `glora run`?")
    methods = yaml.safe_load((out / "config.yaml").read_text())["methods"]
    rows = []
    if (out / UNTUNED_FILE).is_file():
        untuned = json.loads((out / UNTUNED_FILE).read_text())
        rows.append({k: v for k, v in untuned.items() if k != "wall_seconds"})
    for method in methods:
        history = read_history(out / method)
        if not history:
            raise ConfigError(f"{out / method / 'metrics.jsonl'} is missing or empty: the run "
                              "of that method has not finished a round.")
        rows.append(summarize(history[-1].get("label", method), history))
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Rows as a Markdown table (metrics to 4 digits)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else ("n/a" if v is None else str(v))  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def write_summary(rows: list[dict[str, Any]], out: Path, methods: list[str]) -> None:
    """``summary.md``, ``summary.csv`` and the plot of every metric per round
    (``metric_per_round.png``) beside the per-method results of ``methods``."""
    (out / "summary.md").write_text(markdown_table(rows) + "\n")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    plot_metric(out, methods, out / "metric_per_round.png")
