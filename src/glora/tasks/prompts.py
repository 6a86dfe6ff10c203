"""Prompts and answers as tensors: the loss is taken on the answer tokens only.

A training example is ``prompt + answer + EOS`` in one row, right-padded to ``max_length``;
``labels`` repeats ``input_ids`` on the answer (and its EOS) and is ``-100`` on the prompt and the
padding, so the causal LM loss (Hugging Face shifts labels by one inside the model) scores exactly
the answer tokens. An evaluation example is the prompt alone (right-padded; generation re-pads it
on the left).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

IGNORE_INDEX = -100

#: The plain prompt: the task's instruction, then the input, then where the answer starts.
PLAIN_TEMPLATE = "Definition: {instruction}\n\nInput: {input}\nOutput:"


def format_prompt(tokenizer: Any, instruction: str, input_text: str, chat: bool | None = None) -> str:
    """The prompt text of one example.

    With ``chat`` (default: whenever the tokenizer has a chat template) the plain prompt is the
    user turn of the model's chat template, followed by the assistant turn's opening, as
    instruction-tuned models expect; otherwise :data:`PLAIN_TEMPLATE` with a trailing space.
    """
    text = PLAIN_TEMPLATE.format(instruction=instruction.strip(), input=input_text.strip())
    if chat is None:
        chat = bool(getattr(tokenizer, "chat_template", None))
    if chat:
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return text + " "


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_prompt(tokenizer: Any, prompt: str, max_prompt: int) -> list[int]:
    """Prompt token ids (with the tokenizer's BOS where it uses one), cut on the left to
    ``max_prompt`` tokens so that the end of the prompt, where the answer follows, is kept."""
    ids = _ids(tokenizer, prompt)
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and getattr(tokenizer, "add_bos_token", False) and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids[-max_prompt:] if max_prompt > 0 else []


def encode_training(tokenizer: Any, prompts: Sequence[str], answers: Sequence[str],
                    max_length: int, max_answer: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``(input_ids, attention_mask, labels)`` for training, each ``n x max_length``.

    The answer (plus EOS) is cut to ``max_answer`` tokens (default half of ``max_length``), the
    prompt is cut on the left to fill the rest; ``labels`` is ``-100`` outside the answer.
    """
    if len(prompts) != len(answers) or not prompts:
        raise ValueError(f"need one answer per prompt and at least one example, got "
                         f"{len(prompts)} prompts and {len(answers)} answers.")
    if max_length < 2:
        raise ValueError(f"`max_length` must be at least 2, got {max_length}.")
    cap = max(1, min(max_answer or max_length // 2, max_length - 1))
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if pad is None:
        pad = eos
    ids = torch.full((len(prompts), max_length), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), max_length), dtype=torch.long)
    labels = torch.full((len(prompts), max_length), IGNORE_INDEX, dtype=torch.long)
    for i, (prompt, answer) in enumerate(zip(prompts, answers)):
        a = (_ids(tokenizer, answer) + ([eos] if eos is not None else []))[:cap]
        p = encode_prompt(tokenizer, prompt, max_length - len(a))
        row = p + a
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
        labels[i, len(p):len(row)] = torch.tensor(a)
    return ids, mask, labels


def encode_prompts(tokenizer: Any, prompts: Sequence[str], max_length: int) -> tuple[Tensor, Tensor]:
    """``(input_ids, attention_mask)`` of prompts alone, right-padded, cut on the left."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = [encode_prompt(tokenizer, p, max_length) for p in prompts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


def lm_batch(data: Sequence[Tensor], idx: Tensor | slice) -> dict[str, Tensor]:
    """Model inputs and labels of the examples ``idx``, cut to the batch's longest example."""
    ids, mask, labels = (t[idx] for t in data)
    width = int(mask.sum(dim=1).max())
    return {"input_ids": ids[:, :width], "attention_mask": mask[:, :width],
            "labels": labels[:, :width]}
