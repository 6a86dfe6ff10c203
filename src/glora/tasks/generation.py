"""Evaluation of instruction following: greedy generation with a length cap, ROUGE-L per task.

ROUGE-L is the ``rougeL`` F-measure of the ``rouge_score`` package (Porter stemming, as
Super-NaturalInstructions scores English tasks), the best over an example's reference outputs;
a task's score is the mean over its examples and the headline is the mean over tasks (every task
counts the same, however many examples it has).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor, nn


@lru_cache(maxsize=1)
def _scorer():  # -> rouge_score.rouge_scorer.RougeScorer
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, references: Sequence[str]) -> float:
    """ROUGE-L F-measure of ``prediction``, the maximum over ``references`` (0 with none)."""
    scorer = _scorer()
    return max((scorer.score(ref, prediction)["rougeL"].fmeasure for ref in references),
               default=0.0)


def per_task_rouge(predictions: Sequence[str], references: Sequence[Sequence[str]],
                   tasks: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-L of each task's examples."""
    scores: dict[str, list[float]] = defaultdict(list)
    for pred, refs, task in zip(predictions, references, tasks, strict=True):
        scores[task].append(rouge_l(pred, refs))
    return {t: sum(v) / len(v) for t, v in sorted(scores.items())}


@torch.inference_mode()
def generate(model: nn.Module, prompts: Sequence[Tensor], max_new_tokens: int, pad_id: int,
             eos_id: int | None, batch_size: int = 16) -> list[list[int]]:
    """Greedy continuations (token ids, EOS and what follows dropped) of right-padded prompts
    ``(input_ids, attention_mask)``; at most ``max_new_tokens`` each."""
    if max_new_tokens < 1:
        raise ValueError(f"`max_new_tokens` must be at least 1, got {max_new_tokens}.")
    ids, mask = prompts
    lengths = mask.sum(dim=1)
    model.eval()
    out: list[list[int]] = []
    for start in range(0, len(ids), batch_size):
        n = lengths[start:start + batch_size]
        width = int(n.max())
        batch = torch.full((len(n), width), pad_id, dtype=torch.long)
        attn = torch.zeros((len(n), width), dtype=torch.long)
        for j, k in enumerate(n.tolist()):  # left padding: every prompt ends at the last column
            batch[j, width - k:] = ids[start + j, :k]
            attn[j, width - k:] = 1
        device = next(model.parameters()).device
        gen = model.generate(input_ids=batch.to(device), attention_mask=attn.to(device),
                             do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                             eos_token_id=eos_id, num_beams=1, top_p=None, top_k=None,
                             temperature=None)
        for row in gen[:, width:].cpu().tolist():
            if eos_id is not None and eos_id in row:
                row = row[:row.index(eos_id)]
            out.append(row[:max_new_tokens])
    return out


def evaluate_generation(model: nn.Module, tokenizer: Any, prompts: Sequence[Tensor],
                        references: Sequence[Sequence[str]], tasks: Sequence[str],
                        max_new_tokens: int, batch_size: int = 16) -> dict[str, Any]:
    """``{"rougeL": mean over tasks, "per_task": {task: mean ROUGE-L}, "predictions": [...]}``."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = generate(model, prompts, max_new_tokens, pad, tokenizer.eos_token_id, batch_size)
    predictions = [tokenizer.decode(r, skip_special_tokens=True).strip() for r in ids]
    per_task = per_task_rouge(predictions, references, tasks)
    mean = sum(per_task.values()) / len(per_task) if per_task else float("nan")
    return {"rougeL": mean, "per_task": per_task, "predictions": predictions}
