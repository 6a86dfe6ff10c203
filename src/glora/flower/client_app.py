"""The glora ClientApp: a SuperNode trains and evaluates on its own data, and only on it.

A node's config binds it: ``--node-config 'partition-id=0 data-path="/site/train.csv"'`` (TOML
values: quote strings), with optional ``test-path="/site/test.csv"`` (else a seeded split of
``data-path``), ``num-partitions`` (checked against the run's ``data.num_clients``) and ``device``
(``cuda:1``; default the run's ``train.device``). ``partition-id`` is its glora client id;
``data-path`` is whatever ``data.dataset`` can name for the run's task (a CSV/JSONL file;
``natural_instructions:<folder>`` of task files), read by
:func:`glora.federation.prepare.prepare_node` as one client that holds all of it. The data are
cached per process (Flower 1.42's deployment runtime starts a process per message, so the cache pays
off where processes are reused); training is :func:`glora.training.train.train_client`, as in the
simulator.
"""

from __future__ import annotations

import dataclasses
from functools import cache
from typing import TYPE_CHECKING

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from glora.flower import codec
from glora.flower.run_config import RunOptions

if TYPE_CHECKING:  # the model code loads transformers
    from glora.federation.prepare import Prepared

app = ClientApp()
NODE_DATA = "--node-config 'partition-id=<i> data-path=\"<this site's CSV/JSONL file>\"'"


def _partition(context: Context) -> tuple[int, int | None]:
    if "partition-id" not in context.node_config:
        raise ValueError(f"this SuperNode has no `partition-id`; start it with {NODE_DATA}.")
    n = context.node_config.get("num-partitions")
    return int(context.node_config["partition-id"]), None if n is None else int(n)


def _optional(context: Context, key: str) -> str | None:
    value = context.node_config.get(key)
    return None if value is None else str(value)


@cache
def _prepared(options: RunOptions, data_path: str, test_path: str | None,
              device: str | None) -> Prepared:
    """This node's data (and the run's model, built on first use) on the node's ``device``."""
    from glora.federation.prepare import prepare_node

    cfg = options.experiment()
    if device is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device=device))
    return prepare_node(cfg, data_path, test_path)


def _node_data(context: Context) -> Prepared:
    data_path = _optional(context, "data-path")
    if data_path is None:
        raise ValueError(f"this SuperNode has no `data-path`; start it with {NODE_DATA}.")
    return _prepared(RunOptions.from_run_config(context.run_config), data_path,
                     _optional(context, "test-path"), _optional(context, "device"))


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node serves and how many examples it holds."""
    client, n = _partition(context)
    examples = len(_node_data(context).client_train(0)[0])
    return Message(codec.encode_node(client, n, examples), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the task on this node's data; reply with the adapter, head and metrics."""
    client, _ = _partition(context)
    prepared = _node_data(context)
    task = codec.decode_task(msg.content, data=prepared.client_train(0))
    if task.client_id != client:
        raise ValueError(f"this node serves partition {client} but got the task of client "
                         f"{task.client_id}.")
    from glora.training.train import train_client

    result = train_client(prepared.cache, task)
    return Message(codec.encode_result(result), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the global model (and this node's own model, where sent) on this node's test split;
    reply with the metrics (``personal_*`` for its own model) and the split's size."""
    prepared = _node_data(context)
    metrics = prepared.evaluate(*codec.decode_model(msg.content), prefix="", client=0)
    if codec.PERSONAL in msg.content.array_records:
        metrics.update(prepared.evaluate(*codec.decode_model(msg.content, codec.PERSONAL),
                                         prefix="personal_", client=0))
    return Message(codec.encode_scores(metrics, prepared.test_size(0)), reply_to=msg)
