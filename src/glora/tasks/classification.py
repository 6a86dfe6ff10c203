"""Sequence classification (and regression): a ``*ForSequenceClassification`` model whose head is
trained whole, cross-entropy (or MSE) loss, accuracy/F1-style metrics.

Data come from :func:`glora.data.load_dataset` (Rotten Tomatoes, GLUE, CSV/JSONL files),
tokenized once (:mod:`.tokenize`). A global model is scored as dense weights ``W0 + delta`` in a
plain copy of the backbone, one forward pass per batch whatever the method and the ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from peft import TaskType
from torch import Tensor, nn

from glora.backbones import default_model_path, load_tokenizer, resolve_model
from glora.errors import ConfigError

from .base import TaskData, lora_spec, register_task
from .tokenize import batch_inputs, tokenize

#: What PEFT saves as ``modules_to_save`` for SEQ_CLS.
HEAD_MODULES = ("classifier", "score")
MetricFn = Callable[[Tensor, Tensor], dict[str, float]]


@torch.inference_mode()
def logits(model: nn.Module, data: Sequence[Tensor], batch_size: int = 128) -> Tensor:
    """Logits (``n x num_labels``, float32 CPU) of any Hugging Face classifier, plain or PEFT,
    computed on the model's device.

    Examples are batched by length (then put back in order), so a batch is padded only to the
    length of similar examples: on sentences this halves the tokens a pass computes.
    """
    model.eval()
    device = next(model.parameters()).device
    order = torch.argsort(data[1].sum(dim=1), stable=True)
    out = []
    for i in range(0, len(order), batch_size):
        inputs = batch_inputs(data, order[i:i + batch_size])[0]
        out.append(model(**{k: v.to(device) for k, v in inputs.items()}).logits.float().cpu())
    return torch.cat(out)[torch.argsort(order)]


def to_predictions(out: Tensor) -> Tensor:
    """Class ids (argmax), or the values of a one-output regression head."""
    return out[:, 0] if out.shape[1] == 1 else out.argmax(dim=1)


def named_metrics(names: Sequence[str], preds: Tensor, labels: Tensor) -> dict[str, float]:
    """Metrics by name from :mod:`glora.data.metrics`."""
    from glora.data.metrics import compute_metrics

    return compute_metrics(list(names), preds.numpy(), labels.numpy())


def score(model: nn.Module, data: Sequence[Tensor],
          metrics: Sequence[str] | MetricFn = ("accuracy",),
          batch_size: int = 128) -> dict[str, float]:
    """Metrics of ``model`` on tokenized ``data``, plus its mean ``loss`` (cross-entropy, or MSE
    for regression).

    Args:
        metrics: names from ``glora.data.metrics.METRICS``, or a function
            ``(predictions, labels) -> {name: value}``.
    """
    out = logits(model, data, batch_size)
    labels = data[-1]
    preds = to_predictions(out)
    scores = metrics(preds, labels) if callable(metrics) else named_metrics(metrics, preds, labels)
    loss = F.mse_loss(preds, labels.float()) if out.shape[1] == 1 else F.cross_entropy(out, labels)
    return {**{k: float(v) for k, v in scores.items()}, "loss": float(loss)}


def load_classifier(path: str, num_labels: int, problem_type: str | None = None,
                    seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A sequence classifier on the backbone at ``path`` (folder or hub id), in eval mode, its
    weights in ``dtype``.

    The new classification head is initialized from ``seed`` (the caller's RNG is left as it
    was), so every process that loads the same model gets the same head.

    Args:
        problem_type: Hugging Face's ``single_label_classification`` or ``regression``; ``None``
            infers it from ``num_labels`` and the label dtype.
    """
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    extra = {} if problem_type is None else {"problem_type": problem_type}
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the "newly initialized head" warning is expected here
    hf_logging.disable_progress_bar()  # one bar per worker process and evaluation is noise
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels,
                                                                     dtype=dtype, **extra)
    except OSError as err:
        raise ConfigError(f"cannot load model {path!r}: {err}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    return net.eval()


@dataclass
class ClassificationData(TaskData):
    """Tokenized training and test sets (``input_ids, attention_mask[, token_type_ids], labels``)."""

    test: tuple[Tensor, ...] = ()

    def evaluate(self, model: nn.Module, prefix: str, client: int | None = None,
                 batch_size: int = 128) -> dict[str, float]:
        data = self.test
        if client is not None:
            idx = torch.tensor(self.test_parts[client])
            data = tuple(t[idx] for t in self.test)
        return {prefix + k: float(v) for k, v in score(model, data, self.metrics,
                                                       batch_size).items()}


class ClassificationTask:
    """Sequence classification or regression on a ``*ForSequenceClassification`` model."""

    name = "classification"
    peft_type = TaskType.SEQ_CLS

    def claims(self, dataset: str) -> bool:
        return False  # the default task: whatever no other task claims

    def resolve(self, model: str | None) -> str:
        return resolve_model(model, default_model_path)

    def load_model(self, path: str, num_labels: int, problem_type: str | None, seed: int,
                   dtype: torch.dtype = torch.float32) -> nn.Module:
        return load_classifier(path, num_labels, problem_type, seed, dtype)

    def head_modules(self, model: nn.Module) -> tuple[str, ...]:
        heads = tuple(n for n, _ in model.named_children() if n in HEAD_MODULES)
        if not heads:
            raise ConfigError(f"model {type(model).__name__} has no classification head named "
                              f"one of {list(HEAD_MODULES)}; use a *ForSequenceClassification "
                              "model.")
        return heads

    def data_problems(self, data: tuple[Tensor, ...]) -> list[str]:
        if len(data) not in (3, 4):
            return ["`data` must be (input_ids, attention_mask[, token_type_ids], labels), got "
                    f"{len(data)} tensors."]
        return []

    def loss(self, model: nn.Module, data: tuple[Tensor, ...], idx: Tensor) -> Tensor:
        inputs, labels = batch_inputs(data, idx)
        return model(**inputs, labels=labels).loss

    def loss_weight(self, data: tuple[Tensor, ...], idx: Tensor) -> int:
        return len(idx)

    def prepare(self, cfg: Any) -> ClassificationData:
        """Load, split, partition and tokenize; errors name the dataset and the client."""
        train, test, parts, test_parts = self._split(cfg)
        num_labels = cfg.data.num_labels or train.num_labels
        if train.task_type != "regression" and train.num_labels > num_labels:
            raise ConfigError(f"{cfg.data.dataset!r} has {train.num_labels} classes but "
                              f"`data.num_labels` is {num_labels}; raise it or remove it.")
        model_spec = {**lora_spec(self.name, cfg), "num_labels": num_labels}
        tokenizer = load_tokenizer(self.resolve(cfg.model.name))
        return ClassificationData(model_spec, tokenize(tokenizer, train, cfg.data.max_length),
                                  parts, test_parts, tuple(train.metrics),
                                  test=tokenize(tokenizer, test, cfg.data.max_length))

    def write_partitions(self, cfg: Any, folder: Path,
                         ) -> tuple[list[dict[str, str]], list[str]]:
        """Each client's training and test examples as ``client-<i>/{train,test}.jsonl``
        (``text``, ``label`` as a class id), in the order :meth:`prepare` gives them, and the
        number of classes (``data.num_labels``)."""
        train, test, parts, test_parts = self._split(cfg)
        if train.text_pairs is not None or train.task_type == "regression":
            raise ConfigError(f"{cfg.data.dataset!r}: only single-sentence classification is "
                              "written as node files; give each node its own file instead.")
        nodes = []
        for i, (part, test_part) in enumerate(zip(parts, test_parts, strict=True)):
            (folder / f"client-{i}").mkdir(parents=True, exist_ok=True)
            files = folder / f"client-{i}" / "train.jsonl", folder / f"client-{i}" / "test.jsonl"
            for path, data, idx in ((files[0], train, part), (files[1], test, test_part)):
                path.write_text("".join(json.dumps({"text": data.texts[j],
                                                    "label": int(data.labels[j])}) + "\n"
                                        for j in idx))
            nodes.append({"data-path": str(files[0]), "test-path": str(files[1])})
        return nodes, [f"data.num_labels={cfg.data.num_labels or train.num_labels}"]

    def _split(self, cfg: Any) -> tuple[Any, Any, list[list[int]], list[list[int]]]:
        """Training and (capped) test sets, with each client's indices into them."""
        from glora.data import load_dataset, partition

        splits = load_dataset(cfg.data.dataset, test_file=cfg.data.test_file, seed=cfg.seed)
        train, test = splits.train, splits.test
        cap = cfg.data.max_test_examples
        if cap and len(test) > cap:
            g = torch.Generator().manual_seed(cfg.seed)
            test = test.subset(sorted(torch.randperm(len(test), generator=g)[:cap].tolist()))
        n = cfg.data.num_clients
        if cfg.data.partition == "iid":
            parts = partition.iid(len(train), n, cfg.seed)
        elif cfg.data.partition == "dirichlet":
            if train.task_type == "regression":
                raise ConfigError(f"`data.partition=dirichlet` skews labels by class, but "
                                  f"{cfg.data.dataset!r} is a regression task; use iid.")
            parts = partition.dirichlet(train.labels, n, cfg.data.alpha, cfg.seed,
                                        min_size=cfg.data.min_client_size)
        else:
            if getattr(train, "tasks", None) is None:
                raise ConfigError(f"`data.partition=task` needs a dataset with tasks; "
                                  f"{cfg.data.dataset!r} has none. Use iid or dirichlet.")
            parts = partition.by_task(train.tasks, n, cfg.seed)
        if train.task_type == "regression":  # no classes to match: an even split of the test set
            test_parts = partition.iid(len(test), n, cfg.seed)
        else:
            test_parts = partition.match_label_proportions(parts, train.labels, test.labels,
                                                           cfg.seed)
        return train, test, parts, test_parts

    def model_spec(self, cfg: Any) -> tuple[dict[str, Any], tuple[str, ...]]:
        n = cfg.data.num_labels
        if n is None:
            raise ConfigError("the server holds no training data to count the classes: set "
                              "`data.num_labels` (1 for regression).")
        from glora.data.files import BINARY_METRICS, MULTICLASS_METRICS, REGRESSION_METRICS

        metrics = REGRESSION_METRICS if n == 1 else BINARY_METRICS if n == 2 else \
            MULTICLASS_METRICS
        return {**lora_spec(self.name, cfg), "num_labels": n}, tuple(metrics)

    def adapter_readme(self, info: dict[str, Any]) -> str:
        ranks = sorted(set(info["ranks"].values()))
        if info["base_model"] is None:
            imports = ["from glora.backbones import default_model_path"]
            backbone = "default_model_path()"
        else:
            imports, backbone = [], repr(info["base_model"])
        lines = [f"# glora adapter: {info.get('method', 'global model')}", "",
                 "A LoRA adapter exported by glora: each layer's factors are the SVD of the global "
                 "model's total update at its numerical rank (scaling 1), and the classifier head "
                 "is saved as `modules_to_save`.", "",
                 *(f"- {k}: {v}" for k, v in info.items() if k != "ranks" and v is not None),
                 f"- layer ranks: {ranks[0]}..{ranks[-1]} over {len(info['ranks'])} layers "
                 "(per layer in `glora.json`)", "", "```python",
                 "from peft import PeftModel",
                 "from transformers import AutoModelForSequenceClassification", *imports, "",
                 f"base = AutoModelForSequenceClassification.from_pretrained({backbone}, "
                 f"num_labels={info['num_labels']})",
                 "model = PeftModel.from_pretrained(base, 'path/to/this/folder')", "```", ""]
        return "\n".join(lines)


register_task(ClassificationTask())
