"""Tokenize a dataset once into tensors, so workers receive tensors (cheap to send) not strings.

A tokenized dataset is a tuple ``(input_ids, attention_mask[, token_type_ids], labels)``: the
model inputs in :data:`INPUT_NAMES` order, then the labels (always last). ``token_type_ids`` is kept
only for text pairs, where BERT-like models use it to tell the two texts apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


class Texts(Protocol):
    """What :func:`tokenize` reads (``glora.data.TextDataset`` has it)."""

    texts: Sequence[str]
    labels: Sequence[int] | Sequence[float]
    text_pairs: Sequence[str] | None
    task_type: str  # "classification" | "regression"


def tokenize(tokenizer: Any, data: Texts, max_length: int) -> tuple[Tensor, ...]:
    """Pad (on the right) and truncate every example to ``max_length`` tokens.

    Labels are ``int64`` class ids, or ``float32`` for ``task_type == "regression"``.
    """
    if len(data.texts) == 0:
        raise ValueError("cannot tokenize an empty dataset.")
    pairs = None if data.text_pairs is None else list(data.text_pairs)
    enc = tokenizer(list(data.texts), pairs, padding="max_length", truncation=True,
                    max_length=max_length, padding_side="right", return_tensors="pt")
    names = INPUT_NAMES if pairs is not None and "token_type_ids" in enc else INPUT_NAMES[:2]
    dtype = torch.float32 if data.task_type == "regression" else torch.long
    return (*(enc[n] for n in names), torch.tensor(list(data.labels), dtype=dtype))


def batch_inputs(data: Sequence[Tensor], idx: Tensor | slice) -> tuple[dict[str, Tensor], Tensor]:
    """Model inputs and labels of the examples ``idx``, cut to the batch's longest example.

    Padding columns no example of the batch uses are dropped: being masked they change the outputs
    only by rounding, and they cost most of the time on short texts. Needs right padding, which
    :func:`tokenize` uses.
    """
    *inputs, labels = (t[idx] for t in data)
    width = int(inputs[1].sum(dim=1).max())
    return {n: t[:, :width] for n, t in zip(INPUT_NAMES, inputs)}, labels
