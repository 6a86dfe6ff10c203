#!/usr/bin/env python
"""Where GLoRA's randomized consensus solver overtakes the exact one: the time of
``glora.aggregate("glora", updates, rank=R, solver=...)`` for ``exact`` and ``randomized`` as the
number of client directions ``m = N r`` grows, at fixed ``d``, ``r`` and ``R`` (one BLAS thread;
median of ``--repeats`` calls after a warm-up). The smallest ``m`` at which the randomized solver
is faster, at each ``d``, sets :data:`glora.aggregation.glora.AUTO_EXACT_MAX` (``solver="auto"``).

Usage::

    .venv/bin/python benchmarks/solver_crossover.py [--sizes 1024,4096] [--clients 16,32,...]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before torch is imported: oversubscribed threads spin-wait

import argparse  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))
import glora  # noqa: E402
from aggregation_speed import CLIENT_RANK, make_updates, median_seconds  # noqa: E402


def seconds(updates, R: int, solver: str, repeats: int) -> float:
    return median_seconds(lambda: glora.aggregate("glora", updates, rank=R, solver=solver),
                          repeats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1024,4096")
    p.add_argument("--clients", default="16,32,64,128,256,512")
    p.add_argument("--rank", type=int, default=16, help="server rank R")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(f"`python benchmarks/solver_crossover.py --sizes {args.sizes} --clients {args.clients} "
          f"--rank {args.rank}` at commit {commit}; float32 clients of rank {CLIENT_RANK} "
          f"(shared start + 50% noise), one thread, median of {args.repeats} calls.\n")
    print("| d | N | m = N r | exact ms | randomized ms | randomized / exact | products |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for d in (int(x) for x in args.sizes.split(",")):
        crossover = None
        for n in (int(x) for x in args.clients.split(",")):
            updates, _ = make_updates(d, n, CLIENT_RANK, torch.float32, seed=d + n)
            exact = seconds(updates, args.rank, "exact", args.repeats)
            fast = seconds(updates, args.rank, "randomized", args.repeats)
            products = glora.aggregate("glora", updates, rank=args.rank,
                                       solver="randomized").info["iterations"]
            m = n * CLIENT_RANK
            if crossover is None and fast < exact:
                crossover = m
            print(f"| {d} | {n} | {m} | {1000 * exact:.1f} | {1000 * fast:.1f} | "
                  f"{fast / exact:.2f} | {products} |", flush=True)
        print(f"\nd = {d}: the randomized solver is first faster at m = {crossover}.\n")


if __name__ == "__main__":
    main()
