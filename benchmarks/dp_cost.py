"""Cost of DP-SGD on a client, as a ratio to plain training measured in the same run.

One client of the default setting (packaged MiniLM-L6, rank 8, batch 16, 40 sentences long),
alternating plain and DP-SGD (Opacus, noise 1.0, clip 1.0) training tasks of ``--steps`` steps,
``--repeats`` times each; prints seconds per step of each and their ratio (median of the
per-pair ratios). One torch thread. Run::

    python benchmarks/dp_cost.py [--steps 20] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import replace

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from glora.backbones import default_model_path, load_tokenizer  # noqa: E402
from glora.contract import TrainTask  # noqa: E402
from glora.data import load_dataset  # noqa: E402
from glora.tasks.tokenize import tokenize  # noqa: E402
from glora.training.cache import ModelCache  # noqa: E402
from glora.training.train import train_client  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    train = load_dataset("rotten_tomatoes", seed=0).train
    data = tokenize(load_tokenizer(default_model_path()), train.subset(list(range(512))), 40)
    cache = ModelCache(max_rank=8)
    plain = TrainTask(client_id=0, round=0, rank=8, seed=0, adapter=None, init_seed=0, head=None,
                      base={}, frozen=(), data=data, steps=args.steps, batch_size=16, lr=5e-3)
    private = replace(plain, dp_noise_multiplier=1.0, dp_max_grad_norm=1.0)
    train_client(cache, replace(private, steps=2))  # warm-up: adapter creation, hooks
    times: dict[str, list[float]] = {"plain": [], "dp": []}
    for _ in range(args.repeats):
        for name, task in (("plain", plain), ("dp", private)):
            started = time.perf_counter()
            train_client(cache, task)
            times[name].append((time.perf_counter() - started) / args.steps)
    ratio = statistics.median(d / p for p, d in zip(times["plain"], times["dp"]))
    print(f"MiniLM-L6, rank 8, batch 16, {args.steps} steps x {args.repeats} repeats, 1 thread")
    for name, values in times.items():
        print(f"{name:6s} {1000 * statistics.median(values):7.1f} ms per step (median)")
    print(f"DP-SGD / plain: {ratio:.2f}x per step (median of paired ratios)")


if __name__ == "__main__":
    main()
