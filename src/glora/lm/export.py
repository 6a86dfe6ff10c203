"""Export an instruction-tuned global model as a standard PEFT causal-LM adapter folder.

As :func:`glora.export.export_adapter`: each layer's total update is factored by SVD at its
numerical rank, with scaling 1 (``alpha = rank``). Load it with::

    base = AutoModelForCausalLM.from_pretrained(backbone)   # glora.lm.models.resolve_lm(None)
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

from glora.export import METADATA_FILE, factor_delta
from glora.models import LORA_A, LORA_B, PEFT_PREFIX, adapter_parameters, check_tensors, copy_into


def export_lm_adapter(cache: Any, deltas: dict[str, Tensor], path: str | Path,
                      metadata: dict[str, Any] | None = None) -> dict[str, int]:
    """Write ``W0 + deltas`` of a :class:`~glora.lm.models.CausalLMCache` as a PEFT adapter;
    return each layer's rank."""
    from glora.lm.models import lm_lora_config, resolve_lm

    check_tensors({k: cache.layers[k] for k in deltas.keys() & cache.layers.keys()}, deltas,
                  "delta")
    factors = {k: factor_delta(deltas[k]) if k in deltas else
               (torch.zeros(cache.layers[k][0], 1), torch.zeros(1, cache.layers[k][1]))
               for k in cache.layers}
    ranks = {k: int(A.shape[0]) for k, (_, A) in factors.items()}
    common = Counter(ranks.values()).most_common(1)[0][0]
    names = {k: k.removeprefix(PEFT_PREFIX) for k in cache.layers}
    pattern = {re.escape(names[k]): r for k, r in ranks.items() if r != common}
    config = lm_lora_config(common, common, sorted(names.values()))
    config.rank_pattern, config.alpha_pattern = dict(pattern), dict(pattern)
    config.base_model_name_or_path = resolve_lm(cache.model_name)
    model = get_peft_model(cache.fresh_base(), config)
    values = {k + suffix: t for k, (B, A) in factors.items()
              for suffix, t in ((LORA_B, B), (LORA_A, A))}
    copy_into(adapter_parameters(model, "default"), values, "exported adapter")
    out = Path(path)
    model.save_pretrained(out)
    info = {**(metadata or {}), "base_model": cache.model_name, "kind": "causal_lm",
            "ranks": {names[k]: r for k, r in ranks.items()}}
    (out / METADATA_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return ranks
