"""Check the CUDA path where a GPU exists: one short federated round on the GPU, then GLoRA's
aggregation of its replies on the GPU against the CPU.

The round: the packaged MiniLM-L6, 4 clients (Dirichlet 0.5, ranks 2/4/8/16), 1 round of 10
local steps at batch 16, ``train.precision=bf16``, ``model.dtype=bf16`` and
``train.gradient_checkpointing=true``, aggregated by the server on the GPU
(``server.device=cuda``) and evaluated on 500 test sentences. Prints the client step time, the
peak CUDA memory and the metrics, then the relative difference between the server's GLoRA update
(aggregated on the GPU) and the same replies aggregated on the CPU. Where no CUDA GPU is present
it says so and exits 0. Run::

    python benchmarks/gpu_check.py [--out benchmarks/results/gpu_check.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time

import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="also write the output to this Markdown file")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("No CUDA GPU on this machine: nothing to check (the CPU paths are in `make test`).")
        return 0

    from glora import aggregate
    from glora.config import load_config
    from glora.federation.prepare import prepare
    from glora.federation.server import FederatedServer
    from glora.global_model import layer_updates
    from glora.training.train import train_client

    lines = [f"# GPU check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", ""]
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(None, [
            "data.num_clients=4", "train.rounds=1", "train.local_steps=10",
            "train.batch_size=16", "train.device=cuda", "train.precision=bf16",
            "train.gradient_checkpointing=true", "model.dtype=bf16", "server.device=cuda",
            "methods=[glora]", "workers=1",
            f"output_dir={out}"])
        prepared = prepare(cfg)
        server = FederatedServer(cfg, "glora", prepared, prepared.reply_schema(),
                                 prepared.examples)
        tasks = [dataclasses.replace(t, data=prepared.client_train(t.client_id))
                 for t in server.configure()]
        train_client(prepared.cache, dataclasses.replace(tasks[0], steps=1))  # warm-up
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        results = [train_client(prepared.cache, t) for t in tasks]
        torch.cuda.synchronize()
        step = (time.perf_counter() - started) / sum(t.steps for t in tasks)
        peak = torch.cuda.max_memory_allocated() / 2**20
        record = server.aggregate(results)
        lines += [f"- client step (bf16, gradient checkpointing, batch 16): {1000 * step:.1f} ms",
                  f"- peak CUDA memory while training: {peak:.0f} MiB",
                  f"- round 1: train loss {record['train_loss']:.4f}, "
                  + ", ".join(f"{k} {v:.4f}" for k, v in record.items()
                              if k.startswith("global_"))]
        worst = 0.0
        for key, updates in layer_updates(_replies(server, results)).items():
            cpu = aggregate("glora", updates, rank=16).delta()
            gpu = server.state.model.layers[key].delta()  # server.device=cuda, back on the CPU
            worst = max(worst, float((gpu - cpu).norm() / cpu.norm()))
        lines.append(f"- GLoRA aggregated by the server on the GPU (`server.device=cuda`) vs on "
                     f"the CPU, worst layer: {worst:.2e} relative")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


def _replies(server, results):
    """The round's results as the server aggregates them (its scalings)."""
    from glora.global_model import ClientReply

    return [ClientReply(r.client_id, r.adapter, r.head, r.num_examples,
                        server.scaling(r.client_id)) for r in results]


if __name__ == "__main__":
    sys.exit(main())
