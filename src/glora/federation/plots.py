"""Plots of a run's results (PNG, no display needed)."""

from __future__ import annotations

import json
from pathlib import Path

#: Prefix of the metrics of federated evaluation (the clients score the global model).
FEDERATED = "federated_"
#: What a round record's evaluation keys start with: the server's held-out set, the clients' own
#: models (FedSA-LoRA), federated evaluation.
EVAL_PREFIXES = ("global_", "personal_", FEDERATED)


def read_history(method_dir: Path) -> list[dict]:
    path = method_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


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
