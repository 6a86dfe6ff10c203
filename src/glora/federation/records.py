"""A round's record as a run stores it: its evaluation keys, and reading ``metrics.jsonl`` back.

The server writes the records (:mod:`.rounds`); summaries, plots, the report and the Flower
strategy read them by these keys.
"""

from __future__ import annotations

import json
from pathlib import Path

#: Prefix of the metrics of federated evaluation (the clients score the global model).
FEDERATED = "federated_"
#: What a round record's evaluation keys start with: the server's held-out set, the clients' own
#: models (FedSA-LoRA), federated evaluation.
EVAL_PREFIXES = ("global_", "personal_", FEDERATED)


def read_history(method_dir: Path) -> list[dict]:
    """A method's round records (its ``metrics.jsonl``; none if it has not run)."""
    path = method_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
