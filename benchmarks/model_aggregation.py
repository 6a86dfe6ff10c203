#!/usr/bin/env python
"""A whole adapter set's server step: every layer of a model at once, in one thread or several.

Times ``glora.global_model.aggregate_model`` (what a round's server does: validation and the
method on every layer) on ``--layers`` matrices of ``d x d``, ``--clients`` clients with ranks
cycling through ``--ranks``, for each method and each ``--threads`` count
(``server.threads``: layers aggregated at once, torch's threads shared out among them). Every
layer holds the same client factors (a view, so the factors take one layer's memory however many
layers there are); each layer is still aggregated on its own, so the work is that of distinct
layers.

Usage::

    .venv/bin/python benchmarks/model_aggregation.py --layers 64 --d 4096 --clients 100 \\
        --threads 1,2 --out benchmarks/results/model_aggregation.md

The 7B shape of the scale issue is ``--layers 64 --d 4096 --clients 1000``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, str(os.cpu_count() or 1))

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from aggregation_speed import make_updates, measure_memory  # noqa: E402
from markdown_report import Report  # noqa: E402

from glora.global_model import (  # noqa: E402
    LORA_A, LORA_B, ClientReply, GlobalModel, aggregate_model)


def replies(layers: int, d: int, clients: int, ranks: list[int], seed: int) -> list[ClientReply]:
    """``clients`` replies of ``layers`` layers each, every layer the same float32 factors."""
    per_rank = {r: make_updates(d, -(-clients // len(ranks)), r, torch.float32, seed + r)[0]
                for r in ranks}
    out = []
    for i in range(clients):
        u = per_rank[ranks[i % len(ranks)]][i // len(ranks)]
        adapter = {}
        for j in range(layers):
            adapter[f"layer{j}" + LORA_B], adapter[f"layer{j}" + LORA_A] = u.B, u.A
        out.append(ClientReply(i, adapter, {}, u.num_examples, u.scaling))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=64)
    parser.add_argument("--d", type=int, default=4096)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--ranks", default="4,8,16", help="client ranks, in turn")
    parser.add_argument("--rank", type=int, default=16, help="server rank R")
    parser.add_argument("--methods", default="glora,fedit", help="comma-separated")
    parser.add_argument("--threads", default="1,2", help="server.threads values to time")
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=1, help="calls timed (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the report here (Markdown)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    ranks = [int(r) for r in args.ranks.split(",")]
    reps = replies(args.layers, args.d, args.clients, ranks, args.seed)
    equal = [r for r in reps if r.adapter["layer0" + LORA_A].shape[0] == ranks[0]]
    report = Report("A whole adapter set's server step",
                    f"{os.cpu_count()} cores, torch {torch.__version__} with "
                    f"{args.torch_threads} threads shared out among the layer threads",
                    f"{args.layers} layers of {args.d} x {args.d}, {args.clients} clients of ranks "
                    f"{ranks} in turn (equal-rank methods: the {len(equal)} clients of rank "
                    f"{ranks[0]}), server rank R = {args.rank}, float32; median of "
                    f"{args.repeats} call(s) of a round's server step, after a warm-up call on "
                    "one layer; peak extra memory: the resident set's high-water mark during a "
                    "call over the one before it (the clients' factors excluded, the returned "
                    "states included).",
                    ["| method | server.threads | seconds | per layer (ms) | speed-up | "
                     "peak extra MiB |", "|---|---:|---:|---:|---:|---:|"])
    for method in args.methods.split(","):
        options = {"rank": args.rank} if method in ("glora", "flexlora") else {}
        clients = reps if method in ("glora", "flexlora", "flora", "hetlora") else equal
        warm_up = [ClientReply(r.client_id, {k: v for k, v in r.adapter.items()
                                          if k.startswith("layer0.")}, {}, r.num_examples,
                               r.scaling) for r in clients]
        aggregate_model(GlobalModel(method, options), warm_up, merge=False)
        first = None
        for threads in (int(t) for t in args.threads.split(",")):
            infos: list[dict] = []

            def step(threads: int = threads) -> None:
                model = aggregate_model(GlobalModel(method, options), clients, merge=False,
                                        threads=threads)
                infos.append(model.layers["layer0"].info)

            runs = [measure_memory(step) for _ in range(args.repeats)]
            seconds = statistics.median(t for t, _ in runs)
            peaks = [p for _, p in runs if p is not None]
            first = first or seconds
            info = infos[-1]
            solver = info.get("solver", "")
            if "iterations" in info:
                solver += f", {info['iterations']} products"
            peak = f"{max(peaks) / 2**20:.0f}" if peaks else "n/a"
            report.row(f"| {method}{f' ({solver})' if solver else ''} | {threads} | "
                       f"{seconds:.2f} | {1000 * seconds / args.layers:.0f} | "
                       f"{first / seconds:.2f}x | {peak} |")
    report.save(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
