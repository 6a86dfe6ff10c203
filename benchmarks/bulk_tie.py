#!/usr/bin/env python
"""What GLoRA's randomized solver spends when the server rank falls in the clients' noise bulk.

One layer of ``aggregation_speed.py``'s clients (shared start + 50% noise, float32): the first
eigenvalues of ``K`` come from the shared start (as many as the clients' rank), the rest are a
dense bulk. At ``R`` above the shared rank the solver must resolve eigenvectors inside that bulk.
For each server rank and ``solver_tol`` this prints the time as a ratio to one read of the
factors, the products with ``K`` taken, the error estimate and the tied block the solver saw; and
what one product with ``K`` costs against one read (the floor under any Krylov solver's time).
``--exact`` also runs the exact solver at the largest rank: its tied block (where it spans most
of ``K``'s range, the consensus is set by the update's tie-break, not by ``K``), its time and
its warnings, and the randomized updates' distance to it.

Usage::

    .venv/bin/python benchmarks/bulk_tie.py --clients 1000 --out benchmarks/results/bulk_tie.md
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one thread, set before torch is imported

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from aggregation_speed import baselines, make_updates, median_seconds  # noqa: E402
from markdown_report import Report  # noqa: E402

import glora  # noqa: E402
from glora.aggregation import glora as glora_method  # noqa: E402
from glora.aggregation.base import ServerState  # noqa: E402


def timed_state(updates, R: int, repeats: int, **options,
                ) -> tuple[float, ServerState, list[str]]:
    """Median time of ``glora.aggregate`` with ``options`` over ``repeats`` calls after a first
    one (with no ``repeats``, that first call's), its state and its warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        state = glora.aggregate("glora", updates, rank=R, **options)
        seconds = time.perf_counter() - start
    if repeats:  # the call above was the warm-up
        seconds = median_seconds(lambda: glora.aggregate("glora", updates, rank=R, **options),
                                 repeats, warm_up=False)
    return seconds, state, sorted({str(w.message).split(";")[0] for w in caught})


def product_seconds(updates, d: int, block: int) -> float:
    """Median time of one product with GLoRA's ``K`` (``Z (Z^T X)``, ``X`` of ``block`` columns),
    as the randomized solver takes it."""
    left, _ = glora_method.client_spaces(updates, [1 / len(updates)] * len(updates), "uniform")
    Zt = glora_method._stacked_basis(left)
    X = torch.randn(d, block, dtype=torch.float64)
    return median_seconds(lambda: (Zt.mT @ (Zt @ X.to(Zt.dtype))).double(), 7)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=4096)
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--client-rank", type=int, default=8)
    p.add_argument("--server-ranks", default="8,16")
    p.add_argument("--tols", default="1e-10,1e-4,1e-3",
                   help="solver_tol values tried at server ranks above the clients' rank")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--exact", action="store_true",
                   help="also run the exact solver at the largest rank (minutes at N = 1,000)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    d, n, r = args.dim, args.clients, args.client_rank
    updates, _ = make_updates(d, n, r, torch.float32, 0)

    read = median_seconds(baselines(updates, d, torch.float32)[0][1], 7)
    report = Report(
        "GLoRA's randomized solver in the clients' noise bulk",
        f"one thread, torch {torch.__version__}",
        f"d = {d}, N = {n} clients of rank {r} (shared start + 50% noise, float32, seed 0), "
        f"one-sided GLoRA, `solver=\"randomized\"`. One read of all factors: {read * 1e3:.1f} ms "
        f"(median of 7). Times: median of {args.repeats} calls after a warm-up.",
        ["| case | ms | x read | products | error estimate | tied block | warnings |",
         "|---|---:|---:|---:|---|---|---|"])
    for block in (16, 24):
        t = product_seconds(updates, d, block)
        report.row(f"| one product with K, block {block} | {t * 1e3:.1f} | {t / read:.2f} | 1 | | "
                   "| |")
    ranks = [int(x) for x in args.server_ranks.split(",")]
    states = {}
    for R in ranks:
        for tol in [float(x) for x in args.tols.split(",")] if R > r else [1e-10]:
            t, state, said = timed_state(updates, R, args.repeats, solver="randomized",
                                         solver_tol=tol)
            states[R, tol] = state
            info = state.info
            report.row(f"| R = {R}, solver_tol = {tol:g} | {t * 1e3:.0f} | {t / read:.1f} | "
                       f"{info['iterations']} | {info['error_estimate']:.1e} | "
                       f"{info.get('tied', '-')} | {'; '.join(said) or '-'} |")
    if args.exact:
        R = max(ranks)
        t, exact, said = timed_state(updates, R, 0, solver="exact")
        report.row(f"| R = {R}, exact (one call) | {t * 1e3:.0f} | {t / read:.1f} | - | - | "
                   f"{exact.info.get('tied', '-')} | {'; '.join(said) or '-'} |")
        reference = exact.delta().double()
        for (rank, tol), state in states.items():
            if rank == R:
                error = float((state.delta().double() - reference).norm() / reference.norm())
                report.row(f"| R = {R}, solver_tol = {tol:g}: distance to the exact update | | | | "
                           f"{error:.1e} (measured) | | |")
    report.save(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
