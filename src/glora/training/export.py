"""Export a global model as a standard PEFT adapter folder.

Each adapted layer's total update ``delta`` (relative to the pretrained ``W0``) is factored by SVD
at its numerical rank, so the adapter is exact (up to float rounding) with the fewest parameters,
and layers may differ in rank (PEFT ``rank_pattern``). The folder's README (the task's) says how
to load it, for a classifier::

    base = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=...)
    model = PeftModel.from_pretrained(base, folder)
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model
from torch import Tensor

from glora.global_model import LORA_A, LORA_B

from .cache import (PEFT_PREFIX, ModelCache, adapter_parameters, check_tensors, copy_into,
                    lora_config)

METADATA_FILE = "glora.json"


def factor_delta(delta: Tensor, rtol: float | None = None) -> tuple[Tensor, Tensor]:
    """``(B, A)`` with ``B @ A == delta`` at the numerical rank of ``delta`` (at least 1).

    Singular values at most ``rtol * s_max`` count as zero; the default ``rtol`` is
    ``max(d_out, d_in) * eps(float32)`` (the updates are float32 sums). A zero delta gives
    rank-1 zero factors, since a PEFT layer cannot have rank 0.
    """
    U, S, Vh = torch.linalg.svd(delta.double(), full_matrices=False)
    if rtol is None:
        rtol = max(delta.shape) * torch.finfo(torch.float32).eps
    rank = max(1, int((S > rtol * S[0]).sum())) if S[0] > 0 else 1
    root = S[:rank].sqrt()
    return (U[:, :rank] * root).to(delta.dtype), (root[:, None] * Vh[:rank]).to(delta.dtype)


def export_adapter(cache: ModelCache, deltas: dict[str, Tensor], head: dict[str, Tensor] | None,
                   path: str | Path, metadata: dict[str, Any] | None = None,
                   rtol: float | None = None) -> dict[str, int]:
    """Write the global model ``W0 + deltas`` with ``head`` as a PEFT adapter folder.

    Layers missing from ``deltas`` are unchanged (zero update); ``head`` ``None``/empty is the
    initial head (a task without a head has none). Besides PEFT's files the folder holds
    ``glora.json`` (``metadata`` plus the task, the backbone, ``null`` for the task's packaged
    model, the number of labels of a classifier, and per-layer ranks) and the task's README.

    Returns:
        The rank of each layer's factors, by PEFT layer prefix.
    """
    check_tensors({k: cache.layers[k] for k in deltas.keys() & cache.layers.keys()}, deltas,
                  "delta")
    factors = {k: factor_delta(deltas[k], rtol) if k in deltas else
               (torch.zeros(cache.layers[k][0], 1), torch.zeros(1, cache.layers[k][1]))
               for k in cache.layers}
    ranks = {k: int(A.shape[0]) for k, (_, A) in factors.items()}
    common = Counter(ranks.values()).most_common(1)[0][0]
    names = {k: k.removeprefix(PEFT_PREFIX) for k in cache.layers}
    pattern = {re.escape(names[k]): r for k, r in ranks.items() if r != common}
    # alpha = rank makes every layer's scaling 1, so B @ A is the layer's whole update.
    config = lora_config(cache.task.peft_type, common, common, sorted(names.values()),
                         rank_pattern=pattern, alpha_pattern=pattern)
    config.base_model_name_or_path = cache.path
    model = get_peft_model(cache.fresh_base(), config)
    values = {k + suffix: t for k, (B, A) in factors.items()
              for suffix, t in ((LORA_B, B), (LORA_A, A))}
    copy_into(adapter_parameters(model, "default"), {**values, **(head or cache.head_init)},
              "exported adapter")
    out = Path(path)
    model.cpu().save_pretrained(out)  # loadable on any machine
    info = {**(metadata or {}), "task": cache.task.name, "base_model": cache.model_name,
            **({"num_labels": cache.num_labels} if cache.head_init else {}),
            "ranks": {names[k]: r for k, r in ranks.items()}}
    (out / METADATA_FILE).write_text(json.dumps(info, indent=2) + "\n")
    (out / "README.md").write_text(cache.task.adapter_readme(info))
    return ranks
