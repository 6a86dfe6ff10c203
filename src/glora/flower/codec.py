"""Wire format of a round: a :class:`TrainTask` down to a node, a :class:`TrainResult` back up;
a node's partition and example count in its answer to the query; the global model down and its
scores up in federated evaluation.

Tensors travel in :class:`~flwr.app.ArrayRecord`\\ s under PEFT's adapter-name-free keys (bytes
exact: a float32 tensor arrives bit for bit), scalars in a :class:`~flwr.app.ConfigRecord` (down)
or :class:`~flwr.app.MetricRecord` (up) under Flower's kebab-case keys. An optional tensor dict
(``adapter``, ``head`` of a task) that is ``None`` is simply absent from the message. A task's
``data`` never travels: each node attaches its own partition when decoding.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from torch import Tensor

from glora.contract import TrainResult, TrainTask
from glora.errors import GloraError
from glora.global_model import LORA_A, LORA_B, GlobalModel
from glora.training.export import factor_delta

#: TrainTask scalar field -> ConfigRecord key.
TASK_SCALARS = {"client_id": "client-id", "round": "round", "rank": "rank", "seed": "seed",
                "init_seed": "init-seed", "steps": "steps", "batch_size": "batch-size",
                "lr": "lr", "optimizer": "optimizer", "weight_decay": "weight-decay",
                "precision": "precision", "grad_accum_steps": "grad-accum-steps",
                "gradient_checkpointing": "gradient-checkpointing",
                "dp_max_grad_norm": "dp-max-grad-norm"}
#: TrainTask scalar fields that may be ``None`` (then left out of the record).
TASK_OPTIONAL = {"head_lr": "head-lr", "init_rank": "init-rank",
                 "dp_noise_multiplier": "dp-noise-multiplier"}
#: TrainTask tensor-dict fields (``adapter`` and ``head`` may be ``None``).
TASK_TENSORS = ("adapter", "head", "base")
#: TrainResult scalar field -> MetricRecord key (``num-examples`` is Flower's default weight key).
RESULT_SCALARS = {"client_id": "client-id", "num_examples": "num-examples",
                  "train_loss": "train-loss", "seconds": "seconds"}
RESULT_TENSORS = ("adapter", "head")
TASK, RESULT, NODE, MODEL, PERSONAL, SCORES = "task", "result", "node", "model", "personal", \
    "scores"


class CodecError(GloraError, ValueError):
    """A message does not hold what the glora protocol expects (names the missing part)."""


def _arrays(tensors: dict[str, Tensor]) -> ArrayRecord:
    return ArrayRecord({k: v.contiguous() for k, v in tensors.items()})


#: Floating dtypes an adapter or head may travel in.
FLOAT_DTYPES = ("float16", "float32", "float64")


def _npy_header_bytes(data: bytes) -> int:
    """Length of the ``.npy`` header that starts ``data`` (format 1, 2 or 3), read from the
    header itself; ``-1`` when ``data`` does not start with one."""
    if data[:6] != b"\x93NUMPY" or len(data) < 12:
        return -1
    if data[6] == 1:
        return 10 + int.from_bytes(data[8:10], "little")
    return 12 + int.from_bytes(data[8:12], "little")


def _tensors(record: RecordDict, key: str) -> dict[str, Tensor] | None:
    """The tensors of array record ``key``; every array's declared type, shape and byte count
    is checked before any is decoded, and the decoded array against its declaration.

    Raises:
        CodecError: naming the array and what is wrong with it.
    """
    arrays = record.array_records.get(key)
    if arrays is None:
        return None
    out = {}
    for name, array in arrays.items():
        where = f"array `{key}/{name}`"
        try:
            shape = tuple(array.shape)
            if array.stype != "numpy.ndarray" or array.dtype not in FLOAT_DTYPES:
                raise CodecError(f"{where}: {array.stype!r} of {array.dtype!r}; expected a "
                                 f"numpy.ndarray of one of {list(FLOAT_DTYPES)}")
            if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
                raise CodecError(f"{where}: shape {shape!r} is not a tuple of sizes")
            payload = math.prod(shape) * np.dtype(array.dtype).itemsize
            if len(array.data) - _npy_header_bytes(array.data) != payload:
                raise CodecError(f"{where}: {len(array.data)} bytes for a declared "
                                 f"{array.dtype} array of shape {shape} ({payload} bytes)")
            value = array.numpy()
            if value.shape != shape or str(value.dtype) != array.dtype:
                raise CodecError(f"{where}: holds {value.dtype} {value.shape}, declared "
                                 f"{array.dtype} {shape}")
            out[name] = torch.from_numpy(value.copy())
        except CodecError:
            raise
        except Exception as err:  # noqa: BLE001 - any decoding failure is this array's fault
            raise CodecError(f"{where}: cannot be decoded ({type(err).__name__}: {err})") from None
    return out


def _require(record: RecordDict, key: str, kind: str, what: str) -> Any:
    records = record.config_records if kind == "config" else record.metric_records
    if key not in records:
        raise CodecError(f"{what} message has no {kind} record {key!r}; is the node running "
                         "the glora ClientApp of the same version?")
    return records[key]


def encode_task(task: TrainTask) -> RecordDict:
    """A task as message content (without ``data``)."""
    config = ConfigRecord({key: getattr(task, name) for name, key in TASK_SCALARS.items()})
    config["frozen"] = list(task.frozen)
    config.update({key: getattr(task, name) for name, key in TASK_OPTIONAL.items()
                   if getattr(task, name) is not None})
    content = RecordDict({TASK: config})
    for name in TASK_TENSORS:
        value = getattr(task, name)
        if value is not None:
            content[name] = _arrays(value)
    return content


def decode_task(content: RecordDict, data: tuple[Tensor, ...]) -> TrainTask:
    """The task in ``content``, training on ``data`` (the receiving node's partition).

    Raises:
        CodecError: the task record is missing or lacks a field.
    """
    config = _require(content, TASK, "config", "train")
    missing = [key for key in (*TASK_SCALARS.values(), "frozen") if key not in config]
    if missing:
        raise CodecError(f"train message lacks task fields {missing}.")
    scalars = {name: config[key] for name, key in TASK_SCALARS.items()}
    scalars.update({name: config.get(key) for name, key in TASK_OPTIONAL.items()})
    return TrainTask(**scalars, frozen=tuple(config["frozen"]), data=data,
                     adapter=_tensors(content, "adapter"), head=_tensors(content, "head"),
                     base=_tensors(content, "base") or {})


def encode_result(result: TrainResult) -> RecordDict:
    """A result as reply content."""
    content = RecordDict({RESULT: MetricRecord(
        {key: getattr(result, name) for name, key in RESULT_SCALARS.items()})})
    for name in RESULT_TENSORS:
        content[name] = _arrays(getattr(result, name))
    return content


def decode_result(content: RecordDict) -> TrainResult:
    """The result in a reply's ``content``.

    Raises:
        CodecError: the result record or a tensor record is missing.
    """
    metrics = _require(content, RESULT, "metric", "reply")
    tensors = {name: _tensors(content, name) for name in RESULT_TENSORS}
    missing = [k for k in RESULT_SCALARS.values() if k not in metrics] + \
        [name for name, value in tensors.items() if value is None]
    if missing:
        raise CodecError(f"reply lacks result fields {missing}.")
    scalars = {name: metrics[key] for name, key in RESULT_SCALARS.items()}
    return TrainResult(**scalars, **tensors)


def encode_node(partition_id: int, num_partitions: int | None, examples: int) -> RecordDict:
    """A node's answer to the partition query: its partition and how many training examples it
    holds (the cap on what its replies may claim)."""
    info = ConfigRecord({"partition-id": partition_id, "num-examples": examples})
    if num_partitions is not None:
        info["num-partitions"] = num_partitions
    return RecordDict({NODE: info})


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CodecError(f"{what} must be a non-negative integer, got {value!r}.")
    return value


def decode_node(content: RecordDict) -> tuple[int, int | None, int]:
    """``(partition id, number of partitions or None, training examples)`` of a query reply."""
    info = _require(content, NODE, "config", "query reply")
    missing = [k for k in ("partition-id", "num-examples") if k not in info]
    if missing:
        raise CodecError(f"query reply lacks {missing}; is the node running the glora ClientApp "
                         "of the same version?")
    n = info.get("num-partitions")
    return (_count(info["partition-id"], "`partition-id`"),
            None if n is None else _count(n, "`num-partitions`"),
            _count(info["num-examples"], "`num-examples`"))


def model_arrays(deltas: dict[str, Tensor], head: dict[str, Tensor]) -> ArrayRecord:
    """A model as arrays under PEFT keys: each layer's update ``W - W0`` factored at its
    numerical rank with scaling 1 (``lora_B @ lora_A``, as the exported adapter holds it), and
    the head."""
    factors = {}
    for layer, delta in deltas.items():
        B, A = factor_delta(delta)
        factors[layer + LORA_B], factors[layer + LORA_A] = B.contiguous(), A.contiguous()
    return ArrayRecord({**factors, **{k: v.contiguous() for k, v in head.items()}})


def global_arrays(model: GlobalModel) -> ArrayRecord:
    """The global model's :func:`model_arrays`."""
    return model_arrays(model.total_delta(), model.head)


def decode_model(content: RecordDict, key: str = MODEL,
                 ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(dense update per layer, head)`` of the model under ``key`` of an evaluate message
    (:data:`MODEL`, or :data:`PERSONAL`: the node's own model, where a method keeps parts).

    Raises:
        CodecError: no such record, a layer with only one factor, or factors that do not chain.
    """
    tensors = _tensors(content, key)
    if tensors is None:
        raise CodecError(f"evaluate message has no {key} record.")
    layers = {k.removesuffix(LORA_B) for k in tensors if k.endswith(LORA_B)} | \
        {k.removesuffix(LORA_A) for k in tensors if k.endswith(LORA_A)}
    deltas = {}
    for layer in sorted(layers):
        B, A = tensors.get(layer + LORA_B), tensors.get(layer + LORA_A)
        if B is None or A is None or B.dim() != 2 or A.dim() != 2 or B.shape[1] != A.shape[0]:
            raise CodecError(f"evaluate message: layer `{layer}` needs factors B (d_out x r) and "
                             "A (r x d_in).")
        deltas[layer] = B @ A
    head = {k: v for k, v in tensors.items() if not k.endswith((LORA_A, LORA_B))}
    return deltas, head


def encode_scores(metrics: dict[str, float], examples: int) -> RecordDict:
    """A node's evaluation of the global model on its test split, with its size (the weight)."""
    return RecordDict({SCORES: MetricRecord({**metrics, "num-examples": examples})})


def decode_scores(content: RecordDict) -> tuple[dict[str, float], int]:
    """``(metrics, test examples)`` of an evaluate reply.

    Raises:
        CodecError: no scores record, no example count, or a metric that is not a finite number.
    """
    scores = dict(_require(content, SCORES, "metric", "evaluate reply"))
    if "num-examples" not in scores:
        raise CodecError("evaluate reply lacks `num-examples`.")
    examples = _count(scores.pop("num-examples"), "`num-examples`")
    bad = [k for k, v in scores.items() if isinstance(v, (bool, list)) or
           not isinstance(v, (int, float)) or not math.isfinite(v)]
    if bad:
        raise CodecError(f"evaluate reply: metrics {bad} are not finite numbers.")
    return {k: float(v) for k, v in scores.items()}, examples
