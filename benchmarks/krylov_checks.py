#!/usr/bin/env python
"""When GLoRA's randomized solver checks for convergence: inside a Krylov cycle or at its end.

The block Krylov iteration (``glora.aggregation.subspace``) takes Rayleigh-Ritz pairs to decide
whether it has converged. ``CHECK_SHARE = 0`` checks only at the end of a cycle (``DEPTH``
products), as the solver did before; the default checks inside the cycle as often as a check
costs at most that share of the products since the last one. Both are timed in one process,
alternating, on the same clients (float32, rank 8, shared start + 50% noise, d = 4096).

Usage::

    .venv/bin/python benchmarks/krylov_checks.py --out benchmarks/results/krylov_checks.md
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one thread, set before torch is imported

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from aggregation_speed import make_updates  # noqa: E402
from markdown_report import Report  # noqa: E402

import glora  # noqa: E402
from glora.aggregation import subspace  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d", type=int, default=4096)
    parser.add_argument("--settings", default="1000:8,1000:16,300:16,100:16",
                        help="comma-separated N:R (clients, server rank)")
    parser.add_argument("--repeats", type=int, default=4, help="alternating calls of each")
    parser.add_argument("--out", type=Path, help="also write the report here (Markdown)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    shares = (0.0, subspace.CHECK_SHARE)
    report = Report("Convergence checks of the randomized solver",
                    f"one thread, torch {torch.__version__}",
                    f"GLoRA `solver=\"randomized\"`, d = {args.d}, float32 clients of rank 8; "
                    f"{args.repeats} calls of each rule, alternating, after a warm-up; min and "
                    "median ms.",
                    ["| N | R | m | products: cycle end | products: in cycle | ms: cycle end "
                     "(min / median) | ms: in cycle (min / median) | median ratio |",
                     "|---:|---:|---:|---:|---:|---:|---:|---:|"])
    for setting in args.settings.split(","):
        n, rank = (int(x) for x in setting.split(":"))
        ups = make_updates(args.d, n, 8, torch.float32, 0)[0]
        times: dict[float, list[float]] = {s: [] for s in shares}
        products: dict[float, int] = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unconverged in a tie: reported by `products`
            glora.aggregate("glora", ups, rank=rank, solver="randomized")
            for _ in range(args.repeats):
                for share in shares:
                    subspace.CHECK_SHARE = share
                    t = time.perf_counter()
                    state = glora.aggregate("glora", ups, rank=rank, solver="randomized")
                    times[share].append(1000 * (time.perf_counter() - t))
                    products[share] = state.info["iterations"]
        old, new = (times[s] for s in shares)
        report.row(f"| {n} | {rank} | {8 * n} | {products[shares[0]]} | "
                   f"{products[shares[1]]} | {min(old):.0f} / {statistics.median(old):.0f} | "
                   f"{min(new):.0f} / {statistics.median(new):.0f} | "
                   f"{statistics.median(new) / statistics.median(old):.2f} |")
    subspace.CHECK_SHARE = shares[1]
    report.save(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
