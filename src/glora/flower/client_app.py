"""The glora ClientApp: a SuperNode trains the task of its own data partition.

The node's ``partition-id`` (``--node-config "partition-id=0 num-partitions=3"``) is its glora
client id; an optional ``device`` (``"... device=cuda:1"``) is where it trains (default: the
run's ``train.device``). The data come from :func:`glora.federation.prepare.prepare` on the run's
experiment config, cached per process (Flower 1.42's deployment runtime starts a process per
message, so the cache pays off where processes are reused), and training is
:func:`glora.training.train.train_client`, as in the simulator.
"""

from __future__ import annotations

import dataclasses
from functools import cache
from typing import TYPE_CHECKING

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from glora.flower import codec
from glora.flower.run_config import RunOptions

if TYPE_CHECKING:  # the model code loads transformers: keep partition queries light
    from glora.federation.prepare import Prepared

app = ClientApp()


def _partition(context: Context) -> tuple[int, int | None]:
    if "partition-id" not in context.node_config:
        raise ValueError("this SuperNode has no `partition-id`; start it with "
                         "--node-config \"partition-id=<i> num-partitions=<n>\".")
    n = context.node_config.get("num-partitions")
    return int(context.node_config["partition-id"]), None if n is None else int(n)


@cache
def _prepared(options: RunOptions, device: str | None) -> Prepared:
    """Data and model of the run, built once per process (and not for partition queries), on
    the node's ``device`` (node config) or else the run's ``train.device``."""
    from glora.federation.prepare import prepare

    cfg = options.experiment()
    if device is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device=device))
    return prepare(cfg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node serves."""
    return Message(codec.encode_node(*_partition(context)), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the task on this node's partition; reply with the adapter, head and metrics."""
    client, _ = _partition(context)
    device = context.node_config.get("device")
    prepared = _prepared(RunOptions.from_run_config(context.run_config),
                         None if device is None else str(device))
    task = codec.decode_task(msg.content, data=prepared.client_train(client))
    if task.client_id != client:
        raise ValueError(f"this node serves partition {client} but got the task of client "
                         f"{task.client_id}.")
    from glora.training.train import train_client

    result = train_client(prepared.cache, task)
    return Message(codec.encode_result(result), reply_to=msg)
