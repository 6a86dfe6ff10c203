#!/usr/bin/env python
"""Would batching GLoRA's per-client small work pay? One client at a time against batched calls.

GLoRA's randomized solver starts with every client's bases: a float64 thin QR of ``B_i`` and of
``A_i^T`` (``d x r``), then a small SVD and triangular solves (``linalg.factored_column_basis``).
At 1,000 clients that is 2,000 QRs a layer. The scale issue asks to batch such small dense work
across clients and layers of one shape. This script times, in one process, the per-client loop
the solver runs against the same work in batched torch calls of ``--chunk`` clients (the factors
stacked into one float64 tensor in LAPACK's column-major layout, one batched QR, SVD and solve
per chunk), and the batched QR alone on factors stacked beforehand (the best batching can do).

Usage::

    .venv/bin/python benchmarks/batched_bases.py --out benchmarks/results/batched_bases.md
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one thread, set before torch is imported

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from markdown_report import Report  # noqa: E402

from glora.aggregation import linalg  # noqa: E402


def per_client(Bs: list[torch.Tensor], As: list[torch.Tensor]) -> None:
    for B, A in zip(Bs, As):
        linalg.factored_column_basis(B, A)


def batched(Bs: list[torch.Tensor], As: list[torch.Tensor], chunk: int) -> None:
    for lo in range(0, len(Bs), chunk):
        B = _stack64([b.mT for b in Bs[lo:lo + chunk]]).mT  # g x d x r, column-major
        At = _stack64(As[lo:lo + chunk]).mT
        r_b = torch.linalg.qr(B, mode="r")[1]
        r_a = torch.linalg.qr(At, mode="r")[1]
        P, _, Th = torch.linalg.svd(r_b @ r_a.mT)
        torch.linalg.solve_triangular(r_b, P, upper=True)
        torch.linalg.solve_triangular(r_a, Th.mT, upper=True)


def _stack64(factors: list[torch.Tensor]) -> torch.Tensor:
    out = torch.empty((len(factors), *factors[0].shape), dtype=torch.float64)
    for k, f in enumerate(factors):
        out[k].copy_(f)
    return out


def best_of(fn: Callable[[], None], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d", type=int, default=4096)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--ranks", default="4,8,16", help="client ranks; each timed on its own")
    parser.add_argument("--chunk", type=int, default=64, help="clients per batched call")
    parser.add_argument("--repeats", type=int, default=5, help="min of this many")
    parser.add_argument("--out", type=Path, help="also write the report here (Markdown)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    report = Report("Batching the per-client bases", f"one thread, torch {torch.__version__}",
                    f"{args.clients} clients' float32 factors, d = {args.d}; min of "
                    f"{args.repeats}. Batched: {args.chunk} clients a call.",
                    ["| rank | per client (s) | batched, stacking included (s) | ratio | "
                     "batched QRs only, stacked beforehand (s) | per-client QRs only (s) |",
                     "|---:|---:|---:|---:|---:|---:|"])
    g = torch.Generator().manual_seed(0)
    for r in (int(x) for x in args.ranks.split(",")):
        Bs = [torch.randn(args.d, r, generator=g) for _ in range(args.clients)]
        As = [torch.randn(r, args.d, generator=g) for _ in range(args.clients)]
        loop = best_of(lambda: per_client(Bs, As), args.repeats)
        batch = best_of(lambda: batched(Bs, As, args.chunk), args.repeats)
        stacked = [_stack64([b.mT for b in Bs[lo:lo + args.chunk]]).mT
                   for lo in range(0, args.clients, args.chunk)]
        qr_batched = best_of(lambda: [torch.linalg.qr(s, mode="r") for s in stacked],
                             args.repeats)
        doubles = [b.double() for b in Bs]
        qr_loop = best_of(lambda: [torch.linalg.qr(b, mode="r") for b in doubles], args.repeats)
        report.row(f"| {r} | {loop:.3f} | {batch:.3f} | {loop / batch:.2f}x | "
                   f"{qr_batched:.3f} | {qr_loop:.3f} |")
    report.save(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
