"""Plots of a run's results (PNG, no display needed)."""

from __future__ import annotations

from pathlib import Path

from .records import EVAL_PREFIXES, read_history


def plot_metric(out: Path, methods: list[str], path: Path) -> None:
    """Every evaluation metric (:data:`EVAL_PREFIXES`) per round, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    histories = {m: read_history(out / m) for m in methods}
    metrics = sorted({k for h in histories.values() for rec in h for k in rec
                      if k.startswith(EVAL_PREFIXES) and isinstance(rec[k], float)})
    if not metrics:
        return
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for m, hist in histories.items():
            points = [(rec["round"], rec[metric]) for rec in hist if metric in rec]
            if points:
                ax.plot(*zip(*points), marker="o", label=hist[0].get("label", m))
        ax.set_xlabel("round")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
