"""Round trips of TrainTask / TrainResult through Flower records, serialized as on the wire."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from flwr.app import ConfigRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

from glora.contract import TrainResult, TrainTask
from glora.flower import codec
from glora.global_model import GlobalModel

LAYER = "base_model.model.bert.encoder.layer.0.attention.self.query"
HEAD = "base_model.model.classifier.weight"


def over_the_wire(content: RecordDict) -> RecordDict:
    """Deflate every object of ``content`` to bytes and inflate it back, as a pull would."""
    objects = get_all_nested_objects(content)
    inflated = inflate_object_from_contents(
        content.object_id, {oid: obj.deflate() for oid, obj in objects.items()})
    assert isinstance(inflated, RecordDict)
    return inflated


def data() -> tuple[torch.Tensor, ...]:
    return torch.ones(4, 6, dtype=torch.long), torch.ones(4, 6, dtype=torch.long), \
        torch.tensor([0, 1, 0, 1])


def make_task(**changes: object) -> TrainTask:
    g = torch.Generator().manual_seed(0)
    task = TrainTask(
        client_id=2, round=3, rank=4, seed=123456789, init_seed=2**31 - 1, init_rank=16,
        adapter={LAYER + ".lora_A.weight": torch.randn(4, 32, generator=g),
                 LAYER + ".lora_B.weight": torch.randn(32, 4, generator=g)},
        head={HEAD: torch.randn(2, 32, generator=g, dtype=torch.float64)},
        base={LAYER: torch.randn(32, 32, generator=g)}, frozen=("A",), data=data(), steps=5,
        batch_size=8, lr=3e-4, optimizer="sgd", weight_decay=0.01, head_lr=1e-4)
    return dataclasses.replace(task, **changes)


def assert_tensors_equal(a: dict[str, torch.Tensor] | None,
                         b: dict[str, torch.Tensor] | None) -> None:
    assert (a is None) == (b is None)
    if a is not None and b is not None:
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def assert_tasks_equal(a: TrainTask, b: TrainTask) -> None:
    for f in dataclasses.fields(TrainTask):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "data":
            assert all(torch.equal(s, t) for s, t in zip(x, y, strict=True))
        elif f.name in codec.TASK_TENSORS:
            assert_tensors_equal(x, y)
        else:
            assert x == y and type(x) is type(y), f.name


@pytest.mark.parametrize("changes", [
    {},
    {"adapter": None, "head": None, "base": {}, "frozen": ()},  # a fresh start
    {"frozen": ("A", "B"), "optimizer": "adamw", "weight_decay": 0.0, "head_lr": None},
], ids=["warm", "fresh", "frozen-both"])
def test_task_round_trip(changes: dict[str, object]) -> None:
    # Prepare
    task = make_task(**changes)
    # Execute
    back = codec.decode_task(over_the_wire(codec.encode_task(task)), data=task.data)
    # Assert
    assert_tasks_equal(task, back)


def test_task_data_stays_on_the_node() -> None:
    content = codec.encode_task(make_task())
    assert set(content) == {codec.TASK, "adapter", "head", "base"}
    assert "data" not in content[codec.TASK]


def test_result_round_trip() -> None:
    # Prepare
    task = make_task()
    result = TrainResult(client_id=2, adapter=task.adapter, head=task.head, num_examples=37,
                         train_loss=0.6931471805599453, seconds=1.25)
    # Execute
    back = codec.decode_result(over_the_wire(codec.encode_result(result)))
    # Assert
    assert (back.client_id, back.num_examples, back.train_loss, back.seconds) == \
        (2, 37, 0.6931471805599453, 1.25)
    assert type(back.num_examples) is int
    assert_tensors_equal(back.adapter, result.adapter)
    assert_tensors_equal(back.head, result.head)


def test_node_round_trip() -> None:
    assert codec.decode_node(over_the_wire(codec.encode_node(1, 3, 24))) == (1, 3, 24)
    assert codec.decode_node(codec.encode_node(0, None, 0)) == (0, None, 0)


@pytest.mark.parametrize("examples", [-1, 2.5, True, "7"])
def test_a_node_declaring_an_impossible_example_count_is_refused(examples: object) -> None:
    content = RecordDict({codec.NODE: ConfigRecord({"partition-id": 0, "num-examples": 1})})
    content[codec.NODE]["num-examples"] = examples
    with pytest.raises(codec.CodecError, match="`num-examples` must be a non-negative integer"):
        codec.decode_node(content)


def test_the_global_model_reaches_a_node_as_its_update_and_head() -> None:
    """An evaluate message carries each layer's ``W - W0`` as factors (scaling 1) and the head;
    the node rebuilds the dense update to float precision."""
    g = torch.Generator().manual_seed(1)
    B, A = torch.randn(32, 3, generator=g), torch.randn(3, 32, generator=g)
    model = GlobalModel("glora", {})
    model.base = {LAYER: (B @ A).double()}
    model.head = {HEAD: torch.randn(2, 32, generator=g)}
    content = RecordDict({codec.MODEL: codec.global_arrays(model)})
    deltas, head = codec.decode_model(over_the_wire(content))
    assert deltas.keys() == {LAYER} and torch.allclose(deltas[LAYER].float(), B @ A, atol=1e-5)
    assert_tensors_equal(head, model.head)
    broken = RecordDict({codec.MODEL: codec.global_arrays(model)})
    del broken[codec.MODEL][LAYER + ".lora_A.weight"]
    with pytest.raises(codec.CodecError, match=f"layer `{LAYER}` needs factors B"):
        codec.decode_model(broken)


def test_scores_round_trip_and_a_bad_score_is_named() -> None:
    sent = {"accuracy": 0.75, "loss": 0.5}
    assert codec.decode_scores(over_the_wire(codec.encode_scores(sent, 12))) == (sent, 12)
    with pytest.raises(codec.CodecError, match=r"metrics \['loss'\] are not finite"):
        codec.decode_scores(codec.encode_scores({"accuracy": 1.0, "loss": float("nan")}, 3))
    with pytest.raises(codec.CodecError, match="lacks `num-examples`"):
        content = codec.encode_scores(sent, 3)
        del content[codec.SCORES]["num-examples"]
        codec.decode_scores(content)


def test_codec_covers_every_field() -> None:
    """A field added to TrainTask or TrainResult must be added to the wire format too."""
    task_fields = {f.name for f in dataclasses.fields(TrainTask)}
    result_fields = {f.name for f in dataclasses.fields(TrainResult)}
    assert task_fields == {*codec.TASK_SCALARS, *codec.TASK_OPTIONAL, *codec.TASK_TENSORS,
                           "frozen", "data"}
    assert result_fields == {*codec.RESULT_SCALARS, *codec.RESULT_TENSORS}


def test_missing_parts_are_named() -> None:
    with pytest.raises(codec.CodecError, match="no config record 'task'"):
        codec.decode_task(RecordDict(), data=data())
    with pytest.raises(codec.CodecError, match=r"lacks task fields \['rank'"):
        content = codec.encode_task(make_task())
        del content[codec.TASK]["rank"]
        codec.decode_task(content, data=data())
    reply = codec.encode_result(TrainResult(2, {}, {}, 3, 0.5, 1.0))
    del reply["head"]
    with pytest.raises(codec.CodecError, match=r"lacks result fields \['head'\]"):
        codec.decode_result(reply)
    with pytest.raises(codec.CodecError, match=r"lacks \['partition-id', 'num-examples'\]"):
        codec.decode_node(RecordDict({codec.NODE: ConfigRecord()}))


@pytest.mark.parametrize("corrupt, message", [
    (lambda a: setattr(a, "data", a.data[:-8]), r"bytes for a declared float32 array of shape"),
    (lambda a: setattr(a, "shape", (1000, 1000)), r"bytes for a declared float32 array of shape"),
    (lambda a: setattr(a, "stype", "pickle"), r"'pickle' of 'float32'; expected a numpy"),
    (lambda a: setattr(a, "dtype", "object"), r"expected a numpy.ndarray of one of"),
    (lambda a: setattr(a, "data", a.data[:10] + b"#" * 10 + a.data[20:]), r"cannot be decoded"),
    (lambda a: setattr(a, "shape", (2, 3)), r"holds float32 \(3, 2\), declared float32 \(2, 3\)"),
])
def test_a_malformed_array_is_a_codec_error_naming_it(corrupt, message) -> None:
    """Declared type, shape and byte count are checked before an array is decoded, and the
    decoded array against them; whatever breaks, it is a CodecError naming the array."""
    reply = codec.encode_result(TrainResult(2, {"w": torch.ones(3, 2)}, {}, 3, 0.5, 1.0))
    corrupt(reply.array_records["adapter"]["w"])
    with pytest.raises(codec.CodecError, match=rf"array `adapter/w`: .*({message})"):
        codec.decode_result(reply)
