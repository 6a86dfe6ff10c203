"""Everything an instruction-tuning run needs before round 1 (the causal-LM twin of
:class:`glora.sim.prepare.Prepared`): task partitions, tokenized prompts and answers, the
seen/unseen evaluation sets and the model spec every worker builds its cache from.

Selected by :func:`glora.sim.prepare.prepare` when ``data.dataset`` starts with
``natural_instructions``: ``natural_instructions`` is the 61 tasks of the ``bigbench`` archive,
``natural_instructions:<folder>`` a folder of task files (BIG-bench ``*/task.json`` or
Super-NaturalInstructions ``*.json``). ``data.options`` (when the config has it) sets
:data:`LM_OPTIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from glora.errors import ConfigError

DATASET_PREFIX = "natural_instructions"
#: Options of the instruction-tuning data path and their defaults.
LM_OPTIONS: dict[str, Any] = {
    "unseen": 0.2,  # fraction (or number) of tasks never trained on, evaluated only
    "train_per_task": 64,  # cap on training examples per seen task
    "test_per_task": 8,  # evaluation examples per task (seen: held out of training)
    "max_new_tokens": 32,  # generation cap at evaluation
    "max_answer_tokens": None,  # answer tokens kept in training (default: max_length // 2)
    "max_instruction_words": 160,  # instructions are cut to this many words (None: whole)
    "chat": None,  # use the tokenizer's chat template (None: when it has one)
    "tasks": None,  # only these task names (None: all)
}


def is_lm_dataset(name: str | None) -> bool:
    return bool(name) and str(name).split(":", 1)[0] == DATASET_PREFIX


def lm_options(cfg: Any) -> dict[str, Any]:
    """:data:`LM_OPTIONS` updated with ``cfg.data.options``; unknown keys are an error."""
    given = dict(getattr(cfg.data, "options", None) or {})
    unknown = sorted(set(given) - set(LM_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown `data.options` {unknown} for {DATASET_PREFIX}; allowed: "
                          f"{sorted(LM_OPTIONS)}.")
    return {**LM_OPTIONS, **given}


@dataclass
class EvalSet:
    """Prompts (right-padded ids and mask), reference outputs and task of each example."""

    prompts: tuple[Tensor, Tensor]
    references: list[tuple[str, ...]]
    tasks: list[str]

    def subset(self, idx: list[int]) -> EvalSet:
        t = torch.tensor(idx, dtype=torch.long)
        return EvalSet((self.prompts[0][t], self.prompts[1][t]),
                       [self.references[i] for i in idx], [self.tasks[i] for i in idx])


@dataclass
class LMPrepared:
    """Tokenized data per client, the seen/unseen evaluation sets and the evaluation model."""

    cfg: Any
    model_spec: dict[str, Any]
    train: tuple[Tensor, ...]  # input_ids, attention_mask, labels (-100 outside answers)
    parts: list[list[int]]  # client -> train indices
    seen: EvalSet
    unseen: EvalSet | None
    test_parts: list[list[int]]  # client -> indices into `seen` (its own tasks)
    max_new_tokens: int
    client_tasks: list[list[str]]
    metrics: tuple[str, ...] = ("rougeL",)
    _cache: Any = field(default=None, repr=False)

    def client_train(self, client: int) -> tuple[Tensor, ...]:
        idx = torch.tensor(self.parts[client])
        return tuple(t[idx] for t in self.train)

    @property
    def cache(self) -> Any:
        if self._cache is None:
            from glora.lm.models import CausalLMCache

            spec = {k: v for k, v in self.model_spec.items() if k != "kind"}
            self._cache = CausalLMCache(**spec)
        return self._cache

    def evaluate(self, deltas: dict[str, Tensor], head: dict[str, Tensor], prefix: str,
                 client: int | None = None) -> dict[str, float]:
        """Mean-over-tasks ROUGE-L of ``W0 + deltas`` on the seen tasks' held-out examples
        (``<prefix>rougeL``) and on the unseen tasks (``<prefix>rougeL_unseen``); a client's
        own tasks only when ``client`` is given."""
        from glora.lm.evaluate import evaluate_generation

        cache = self.cache
        model = cache.global_model(deltas, head)
        bs = self.cfg.eval.batch_size
        sets = {"rougeL": self.seen if client is None else self.seen.subset(self.test_parts[client])}
        if client is None and self.unseen is not None:
            sets["rougeL_unseen"] = self.unseen
        out = {}
        for name, data in sets.items():
            res = evaluate_generation(model, cache.tokenizer, data.prompts, data.references,
                                      data.tasks, self.max_new_tokens, bs)
            out[prefix + name] = float(res["rougeL"])
        return out

    def reply_schema(self) -> Any:  # -> glora.validation.ReplySchema
        """The layer shapes of the model (no head), which every valid client reply has."""
        from glora.validation import ReplySchema

        return ReplySchema(dict(self.cache.layers), {})

    def export(self, model: Any, path: Path) -> None:
        from glora.lm.export import export_lm_adapter

        export_lm_adapter(self.cache, model.total_delta(), path,
                          metadata={"method": model.method, "rounds": model.round})


def _prompts(tokenizer: Any, data: Any, opts: dict[str, Any]) -> list[str]:
    from glora.lm.tokenize import format_prompt

    words = opts["max_instruction_words"]
    cut = (lambda s: " ".join(s.split()[:words])) if words else (lambda s: s)  # noqa: E731
    return [format_prompt(tokenizer, cut(e.instruction), e.input, opts["chat"])
            for e in data.examples]


def eval_set(tokenizer: Any, data: Any, opts: dict[str, Any], max_length: int) -> EvalSet | None:
    from glora.lm.tokenize import encode_prompts

    if len(data) == 0:
        return None
    return EvalSet(encode_prompts(tokenizer, _prompts(tokenizer, data, opts), max_length),
                   [e.outputs for e in data.examples], data.tasks)


def prepare_lm(cfg: Any) -> LMPrepared:
    """Load the tasks, split seen/unseen, partition seen tasks over clients, tokenize."""
    from glora.data import partition
    from glora.data.natural_instructions import load_natural_instructions
    from glora.lm.models import DEFAULT_LM_TARGETS, load_lm_tokenizer
    from glora.lm.tokenize import encode_training

    opts = lm_options(cfg)
    name = cfg.data.dataset
    source = name.split(":", 1)[1] if ":" in name else None
    if cfg.data.partition != "task":
        raise ConfigError(f"{DATASET_PREFIX} is partitioned by task (task heterogeneity); set "
                          f"`data.partition: task` (got {cfg.data.partition!r}).")
    splits = load_natural_instructions(source, unseen=opts["unseen"],
                                       train_per_task=opts["train_per_task"],
                                       test_per_task=opts["test_per_task"], tasks=opts["tasks"],
                                       seed=cfg.seed)
    train = splits.train
    parts = partition.by_task(train.tasks, cfg.data.num_clients, cfg.seed)
    targets = list(cfg.model.target_modules)
    if targets == ["query", "value"]:  # the classifier default: say what LoRA adapts here
        targets = list(DEFAULT_LM_TARGETS)
    model_spec = {"kind": "causal_lm", "model": cfg.model.name, "target_modules": targets,
                  "alpha": cfg.lora.alpha, "rslora": cfg.lora.rslora,
                  "dropout": cfg.lora.dropout, "max_rank": max(cfg.lora.ranks)}
    tokenizer = load_lm_tokenizer(cfg.model.name)
    tensors = encode_training(tokenizer, _prompts(tokenizer, train, opts),
                              [e.outputs[0] for e in train.examples], cfg.data.max_length,
                              opts["max_answer_tokens"])
    seen = eval_set(tokenizer, splits.test_seen, opts, cfg.data.max_length)
    if seen is None:
        raise ConfigError("no evaluation example of a seen task; raise `test_per_task`.")
    unseen = eval_set(tokenizer, splits.test_unseen, opts, cfg.data.max_length)
    client_tasks = [sorted({train.tasks[i] for i in p}) for p in parts]
    test_parts = [[i for i, t in enumerate(seen.tasks) if t in set(ct)] for ct in client_tasks]
    return LMPrepared(cfg, model_spec, tensors, parts, seen, unseen, test_parts,
                      int(opts["max_new_tokens"]), client_tasks)
