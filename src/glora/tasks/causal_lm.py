"""Causal-LM instruction tuning: a causal LM without a head, next-token loss on the answer
tokens only, greedy generation scored by ROUGE-L on seen and unseen tasks.

Claims ``data.dataset`` ``natural_instructions`` (the 61 tasks of the ``bigbench`` archive) and
``natural_instructions:<folder>`` (a folder of task files, BIG-bench ``*/task.json`` or
Super-NaturalInstructions ``*.json``); ``data.options`` sets :data:`LM_OPTIONS`. Clients hold
whole tasks (``data.partition: task``); some tasks are never trained on and evaluated only.
The default backbone is the packaged SmolLM2-135M-Instruct (:func:`glora.backbones.packaged_lm`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from peft import TaskType
from torch import Tensor, nn

from glora.backbones import load_tokenizer, packaged_lm, resolve_model
from glora.errors import ConfigError

from .base import TaskData, lora_spec, register_task
from .generation import evaluate_generation
from .prompts import IGNORE_INDEX, encode_prompts, encode_training, format_prompt, lm_batch

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


def _source(name: str) -> str | None:
    """The task folder ``data.dataset`` names (``None``: the packaged BIG-bench tasks)."""
    return name.split(":", 1)[1] if ":" in name else None


def is_lm_dataset(name: str | None) -> bool:
    """Whether ``data.dataset`` names Natural Instructions tasks (``natural_instructions[:...]``)."""
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
class InstructionData(TaskData):
    """Tokenized prompts and answers (``input_ids, attention_mask, labels``, labels ``-100``
    outside the answer), and the seen/unseen evaluation sets; ``test_parts`` index ``seen``."""

    seen: EvalSet | None = None
    unseen: EvalSet | None = None
    tokenizer: Any = None
    max_new_tokens: int = 32
    client_tasks: list[list[str]] | None = None

    def evaluate(self, model: nn.Module, prefix: str, client: int | None = None,
                 batch_size: int = 16) -> dict[str, float]:
        """Mean-over-tasks ROUGE-L on the seen tasks' held-out examples (``<prefix>rougeL``)
        and on the unseen tasks (``<prefix>rougeL_unseen``); a client's own tasks only when
        ``client`` is given."""
        sets = {"rougeL": self.seen if client is None else self.seen.subset(self.test_parts[client])}
        if client is None and self.unseen is not None:
            sets["rougeL_unseen"] = self.unseen
        out = {}
        for name, data in sets.items():
            res = evaluate_generation(model, self.tokenizer, data.prompts, data.references,
                                      data.tasks, self.max_new_tokens, batch_size)
            out[prefix + name] = float(res["rougeL"])
        return out


def _prompts(tokenizer: Any, data: Any, opts: dict[str, Any]) -> list[str]:
    words = opts["max_instruction_words"]
    cut = (lambda s: " ".join(s.split()[:words])) if words else (lambda s: s)  # noqa: E731
    return [format_prompt(tokenizer, cut(e.instruction), e.input, opts["chat"])
            for e in data.examples]


def eval_set(tokenizer: Any, data: Any, opts: dict[str, Any], max_length: int) -> EvalSet | None:
    if len(data) == 0:
        return None
    return EvalSet(encode_prompts(tokenizer, _prompts(tokenizer, data, opts), max_length),
                   [e.outputs for e in data.examples], data.tasks)


#: Architectures whose logits are exactly ``lm_head(final hidden state)`` (no soft-capping or
#: logit scale), where :func:`answer_loss` projects only the answer positions.
PLAIN_HEAD_TYPES = ("llama", "mistral", "qwen2", "qwen3", "smollm3", "olmo", "olmo2")


def answer_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Mean next-token cross-entropy over the answer tokens (labels not ``-100``).

    Equal to Hugging Face's ``model(**batch).loss``, but for the architectures of
    :data:`PLAIN_HEAD_TYPES` the output layer runs on the answer positions only, not on every
    position of the batch: with a 49k-token vocabulary that saves the ``batch x length x vocab``
    logits (and their gradient), most of the step's memory.
    """
    net = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(net.config, "model_type", None) not in PLAIN_HEAD_TYPES:
        return model(**batch, use_cache=False).loss
    hidden = net.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               use_cache=False).last_hidden_state
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE_INDEX
    logits = net.get_output_embeddings()(hidden[:, :-1][keep]).float()
    return F.cross_entropy(logits, labels[keep])


def load_causal_lm(path: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The causal LM at ``path`` (folder or hub id), in eval mode, its weights in ``dtype``."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        net = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as err:
        raise ConfigError(f"cannot load causal LM {path!r}: {err}") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return net.eval()


class CausalLMTask:
    """Instruction tuning of a causal LM on Natural Instructions tasks (no head)."""

    name = "causal_lm"
    peft_type = TaskType.CAUSAL_LM

    def claims(self, dataset: str) -> bool:
        return is_lm_dataset(dataset)

    def resolve(self, model: str | None) -> str:
        return resolve_model(model, packaged_lm)

    def load_model(self, path: str, num_labels: int, problem_type: str | None, seed: int,
                   dtype: torch.dtype = torch.float32) -> nn.Module:
        return load_causal_lm(path, dtype)  # no head: nothing to size or seed

    def head_modules(self, model: nn.Module) -> tuple[str, ...]:
        return ()

    def data_problems(self, data: tuple[Tensor, ...]) -> list[str]:
        if len(data) != 3 or len({tuple(t.shape) for t in data}) != 1 or data[0].ndim != 2:
            return ["causal-LM `data` must be (input_ids, attention_mask, labels), three tensors "
                    f"of one shape n x length, got shapes {[tuple(t.shape) for t in data]}."]
        empty = (data[2] == IGNORE_INDEX).all(dim=1)
        if bool(empty.any()):
            return [f"{int(empty.sum())} example(s) have no answer token to train on (all labels "
                    f"-100), e.g. row {int(empty.nonzero()[0])}; raise `data.max_length`."]
        return []

    def loss(self, model: nn.Module, data: tuple[Tensor, ...], idx: Tensor) -> Tensor:
        return answer_loss(model, lm_batch(data, idx))

    def loss_weight(self, data: tuple[Tensor, ...], idx: Tensor) -> int:
        return int((data[2][idx][:, 1:] != IGNORE_INDEX).sum())  # the tokens predicted

    def prepare(self, cfg: Any) -> InstructionData:
        """Load the tasks, split seen/unseen, partition seen tasks over clients, tokenize."""
        from glora.data import partition
        from glora.data.natural_instructions import load_natural_instructions

        opts = lm_options(cfg)
        source = _source(cfg.data.dataset)
        if cfg.data.partition != "task":
            raise ConfigError(f"{DATASET_PREFIX} is partitioned by task (task heterogeneity); "
                              f"set `data.partition: task` (got {cfg.data.partition!r}).")
        splits = load_natural_instructions(source, unseen=opts["unseen"],
                                           train_per_task=opts["train_per_task"],
                                           test_per_task=opts["test_per_task"],
                                           tasks=opts["tasks"], seed=cfg.seed)
        train = splits.train
        parts = partition.by_task(train.tasks, cfg.data.num_clients, cfg.seed)
        model_spec, metrics = self.model_spec(cfg)
        tokenizer = load_tokenizer(self.resolve(cfg.model.name), pad=True)
        tensors = encode_training(tokenizer, _prompts(tokenizer, train, opts),
                                  [e.outputs[0] for e in train.examples], cfg.data.max_length,
                                  opts["max_answer_tokens"])
        seen = eval_set(tokenizer, splits.test_seen, opts, cfg.data.max_length)
        if seen is None:
            raise ConfigError("no evaluation example of a seen task; raise `test_per_task`.")
        unseen = eval_set(tokenizer, splits.test_unseen, opts, cfg.data.max_length)
        client_tasks = [sorted({train.tasks[i] for i in p}) for p in parts]
        test_parts = [[i for i, t in enumerate(seen.tasks) if t in set(ct)] for ct in client_tasks]
        return InstructionData(model_spec, tensors, parts, test_parts, metrics, seen=seen,
                               unseen=unseen, tokenizer=tokenizer,
                               max_new_tokens=int(opts["max_new_tokens"]),
                               client_tasks=client_tasks)

    def model_spec(self, cfg: Any) -> tuple[dict[str, Any], tuple[str, ...]]:
        return lora_spec(self.name, cfg), ("rougeL",)

    def write_partitions(self, cfg: Any, folder: Path) -> tuple[list[dict[str, str]], list[str]]:
        """Each client's seen tasks as Super-NaturalInstructions files in ``client-<i>/``, every
        example in source order, so the node draws the same test and training examples per task
        (the draws are per task); the override ``unseen: 0`` keeps each node from holding out
        some of its own tasks (the run's unseen tasks are on no node)."""
        from glora.data import partition
        from glora.data.natural_instructions import (fetch_bigbench_tasks,
                                                     load_natural_instructions, load_task_file,
                                                     task_files)

        opts, source = lm_options(cfg), _source(cfg.data.dataset)
        splits = load_natural_instructions(source, unseen=opts["unseen"],
                                           train_per_task=opts["train_per_task"],
                                           test_per_task=opts["test_per_task"],
                                           tasks=opts["tasks"], seed=cfg.seed)
        parts = partition.by_task(splits.train.tasks, cfg.data.num_clients, cfg.seed)
        examples: dict[str, list[Any]] = {}
        for f in task_files(source) if source is not None else fetch_bigbench_tasks():
            for e in load_task_file(f):
                examples.setdefault(e.task, []).append(e)
        nodes = []
        for i, part in enumerate(parts):
            (folder / f"client-{i}").mkdir(parents=True, exist_ok=True)
            for task in sorted({splits.train.tasks[j] for j in part}):
                ex = examples[task]
                (folder / f"client-{i}" / f"{task}.json").write_text(json.dumps(
                    {"Definition": ex[0].instruction,
                     "Instances": [{"input": e.input, "output": list(e.outputs)} for e in ex]}))
            nodes.append({"data-path": f"{DATASET_PREFIX}:{folder / f'client-{i}'}"})
        flow = json.dumps({**dict(cfg.data.options or {}), "unseen": 0})
        return nodes, [f"data.options={flow}"]

    def adapter_readme(self, info: dict[str, Any]) -> str:
        packaged = info["base_model"] is None
        backbone = "packaged_lm()" if packaged else repr(info["base_model"])
        return "\n".join([
            f"# glora adapter: {info.get('method', 'global model')}", "",
            "A causal-LM LoRA adapter exported by glora: each layer's factors are the SVD of the "
            "global model's total update at its numerical rank (scaling 1).", "", "```python",
            "from peft import PeftModel", "from transformers import AutoModelForCausalLM",
            *(["from glora.backbones import packaged_lm"] if packaged else []), "",
            f"base = AutoModelForCausalLM.from_pretrained({backbone})",
            "model = PeftModel.from_pretrained(base, 'path/to/this/folder')", "```", ""])


register_task(CausalLMTask())
