"""A run's summary: one table row per method (final metrics, traffic, server time), as Markdown
and CSV beside the per-method results; both engines write it."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from .plots import plot_metric
from .server import RunState


def summarize(label: str, state: RunState, seconds: float) -> dict[str, Any]:
    """One table row: final and best metrics, traffic and server time per round."""
    hist = state.history
    row: dict[str, Any] = {"method": label, "rounds": state.model.round}
    evaluated = [h for h in hist if any(k.startswith("global_") for k in h)]
    if evaluated:
        last = evaluated[-1]
        for k, v in last.items():
            if k.startswith(("global_", "personal_")):
                row[k] = v
    if hist:
        row["MB_up_per_round"] = sum(h["bytes_up"] for h in hist) / len(hist) / 1e6
        row["MB_down_per_round"] = sum(h["bytes_down"] for h in hist) / len(hist) / 1e6
        row["server_ms_per_round"] = 1000 * sum(h["server_seconds"] for h in hist) / len(hist)
    row["wall_seconds"] = seconds
    return row


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
