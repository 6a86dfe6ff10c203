#!/usr/bin/env python
"""A FedIT round through the run's server, ``server.stream`` on and off: time and peak memory.

The replies come from a generator, one at a time, as they would come off the network. With
``server.stream: true`` the server screens each one and folds it into running sums
(``glora.global_model.ModelAccumulator``) and keeps none; with ``false`` it takes the round's list
(its screening, its robust checks and the shadow measurement need every reply at once). Both runs
use the same checks otherwise (``server.max_update_norm: null``, ``eval.shadow: false``) and the
same replies, so the difference is what holding the round costs.

Usage::

    .venv/bin/python benchmarks/server_stream.py --clients 100,1000 --out benchmarks/results/server_stream.md

Peak extra memory: the resident set's high-water mark during the round over the one before it
(``measure_memory`` of ``aggregation_speed.py``), the replies the generator builds included, the
server's state before the round excluded. Time: one round, after a warm-up round of 2 clients.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one thread, set before torch is imported

import argparse  # noqa: E402
import sys  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from aggregation_speed import measure_memory  # noqa: E402
from markdown_report import Report  # noqa: E402

from glora.config import load_config  # noqa: E402
from glora.federation.server import FederatedServer  # noqa: E402
from glora.global_model import LORA_A, LORA_B  # noqa: E402
from glora.validation import ReplySchema  # noqa: E402

RANK, HEAD = 8, 2 * 768


def replies(clients: int, layers: int, d: int, seed: int) -> Iterator[SimpleNamespace]:
    """``clients`` train results of ``layers`` d x d layers at rank 8, made as they are asked for."""
    g = torch.Generator().manual_seed(seed)
    for c in range(clients):
        adapter = {}
        for j in range(layers):
            adapter[f"layer{j}" + LORA_B] = torch.randn(d, RANK, generator=g) * 0.01
            adapter[f"layer{j}" + LORA_A] = torch.randn(RANK, d, generator=g) * 0.01
        yield SimpleNamespace(client_id=c, adapter=adapter, head={"head": torch.randn(HEAD)},
                              num_examples=100 + c, train_loss=0.5)


def round_of(clients: int, layers: int, d: int, stream: bool) -> FederatedServer:
    cfg = load_config(None, [f"data.num_clients={clients}", f"lora.ranks=[{RANK}]",
                             "methods=[fedit]", "server.max_update_norm=null", "eval.shadow=false",
                             f"server.stream={str(stream).lower()}"])
    schema = ReplySchema({f"layer{j}": (d, d) for j in range(layers)}, {"head": (HEAD,)})
    server = FederatedServer(cfg, "fedit", None, schema)
    server.configure(list(range(clients)))
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="100,1000", help="comma-separated round sizes")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--d", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the report here (Markdown)")
    args = parser.parse_args(argv)
    reply_mib = args.layers * 2 * args.d * RANK * 4 / 2**20
    report = Report("A round's server memory with `server.stream`",
                    f"one thread, torch {torch.__version__}",
                    f"FedIT, {args.layers} layers of {args.d} x {args.d} at rank {RANK} (a reply "
                    f"holds {reply_mib:.2f} MiB of factors), replies made by a generator as the "
                    "server asks for them; one round per row, after a 2-client warm-up round.",
                    ["| clients | server.stream | seconds | ms per reply | peak extra MiB | "
                     "replies' MiB |", "|---:|---|---:|---:|---:|---:|"])
    for stream in (False, True):
        warm = round_of(2, args.layers, args.d, stream)
        warm.aggregate(replies(2, args.layers, args.d, args.seed))
    for clients in (int(n) for n in args.clients.split(",")):
        for stream in (False, True):
            server = round_of(clients, args.layers, args.d, stream)
            seconds, peak = measure_memory(
                lambda: server.aggregate(replies(clients, args.layers, args.d, args.seed)))
            assert server.state.history[-1]["clients"] == list(range(clients))
            report.row(f"| {clients} | {str(stream).lower()} | {seconds:.2f} | "
                       f"{1000 * seconds / clients:.1f} | "
                       f"{'n/a' if peak is None else f'{peak / 2**20:.0f}'} | "
                       f"{clients * reply_mib:.0f} |")
    report.save(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
