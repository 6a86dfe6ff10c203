#!/usr/bin/env python
"""Server-side speed and peak extra memory of every registered aggregation method, one layer.

For each setting (d_out = d_in = d, N clients of rank r, server rank R) and every method in
``glora.methods()`` (GLoRA in three variants, FlexLoRA on both paths when it offers them), time
``glora.aggregate(name, updates, **options)`` plus one ``state.readout(r, s)`` per distinct client
rank, against baselines measured in the same process: one read of all client factors, a copy
(``torch.cat``) of them, and the input validation every ``glora.aggregate`` call performs.

Usage::

    .venv/bin/python benchmarks/aggregation_speed.py --quick
    .venv/bin/python benchmarks/aggregation_speed.py --out benchmarks/results/aggregation_speed_float32.md
    .venv/bin/python benchmarks/aggregation_speed.py --sizes 768,4096,8192 --dtype float64

Timing: ``time.perf_counter``, one warm-up call, median of ``--repeats`` calls; a call slower than
``--slow-seconds`` is repeated only ``--slow-repeats`` times (the full dense SVD).

Peak extra memory: resident-set high-water mark. Before a call the script collects garbage,
returns freed heap pages to the OS (``malloc_trim(0)``), resets the kernel's peak-RSS counter
(``echo 5 > /proc/self/clear_refs``) and reads the current RSS; after it, the peak RSS (``VmHWM``
in ``/proc/self/status``) minus that baseline is the call's peak extra memory, the returned state
included. This sees every allocation (torch's CPU allocator is not tracked by ``tracemalloc`` and
has no statistics API), needs no sampling (so it does not miss short peaks) and runs in one
process. A calibration row (allocate and fill one dense d x d float32 matrix) should read ~100%.
"""

from __future__ import annotations

import os

# One BLAS/OpenMP thread, set before torch is imported: oversubscribed threads spin-wait.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
             "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import ctypes  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import torch  # noqa: E402

torch.set_num_threads(1)
try:
    torch.set_num_interop_threads(1)
except RuntimeError:  # already set
    pass

import glora  # noqa: E402

CLIENT_RANK = 8
ALPHA = 16.0  # LoRA alpha: scaling s = alpha / r
SERVER_RANK_METHODS = ("glora", "flexlora")  # methods that take the server rank as `rank=`
KEY = dict(d=4096, N=100, R=16)  # the setting of the checked claims


# ----------------------------------------------------------------------------------------------
# Peak extra memory (resident set) of one call.

_PAGE = os.sysconf("SC_PAGE_SIZE")
try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc
    _LIBC = None


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _settle() -> None:
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


MEMORY_OK = _reset_peak()


def median_seconds(fn: Callable[[], Any], repeats: int, warm_up: bool = True) -> float:
    """Median wall time of ``repeats`` calls of ``fn``, after one untimed call unless the caller
    has just made one (``warm_up=False``)."""
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_memory(fn: Callable[[], Any]) -> tuple[float, int | None]:
    """Run ``fn`` once; return (seconds, peak extra resident bytes or None if unavailable)."""
    _settle()
    ok = _reset_peak()
    base = _rss()
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    peak = _peak_rss() if ok else None
    del out
    return dt, (max(peak - base, 0) if peak is not None else None)


# ----------------------------------------------------------------------------------------------
# Inputs.

def make_updates(d: int, n: int, r: int, dtype: torch.dtype, seed: int, data: str = "shared",
                 ) -> tuple[list[glora.ClientUpdate], list[glora.ClientUpdate]]:
    """Client factors with distinct example counts.

    ``data="shared"``: as after a shared start, shared factors plus 50% client noise;
    ``data="independent"``: unrelated Gaussian factors.

    Returns the updates and a copy whose ``A_i`` all equal the shared ``A_0`` (for methods that
    freeze ``A``, FFA-LoRA). Tensors are built directly (no temporaries) so nothing freed lingers.
    """
    g = torch.Generator().manual_seed(seed)
    s = ALPHA / r
    B0 = torch.randn(d, r, generator=g, dtype=dtype) / d**0.5
    A0 = torch.randn(r, d, generator=g, dtype=dtype) / d**0.5
    if data == "independent":
        B0.zero_(), A0.zero_()
    noise = 0.5 if data == "shared" else 1.0
    counts = torch.randperm(50 * n, generator=g)[:n] + 100  # distinct n_i: no accidental ties
    ups, frozen = [], []
    for i in range(n):
        B = torch.randn(d, r, generator=g, dtype=dtype).mul_(noise / d**0.5).add_(B0)
        A = torch.randn(r, d, generator=g, dtype=dtype).mul_(noise / d**0.5).add_(A0)
        ups.append(glora.ClientUpdate(B, A, int(counts[i]), s))
        A_frozen = (A0 if data == "shared" else ups[0].A).clone()
        frozen.append(glora.ClientUpdate(B, A_frozen, int(counts[i]), s))
    return ups, frozen


# ----------------------------------------------------------------------------------------------
# What is measured.

@dataclass
class Case:
    label: str
    fn_factory: Callable[..., Callable[[], Any]]  # (updates, frozen, R) -> callable
    options: str = ""
    kind: str = "method"  # "method" | "baseline" | "calibration"
    readout: str = ""
    notes: list[str] = field(default_factory=list)


def _spec_fields(name: str) -> set[str]:
    return {f.name for f in dataclasses.fields(glora.get_method(name).config_cls)}


def method_variants(diagnostics: bool = True) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, method name, options without rank) for every registered method."""
    out = []
    for name in glora.methods():
        fields = _spec_fields(name)
        if name == "glora":
            exact = {"solver": "exact"} if "solver" in fields else {}
            out += [("glora uniform", name, exact),
                    ("glora energy", name, {"consensus": "energy"}),
                    ("glora two-sided", name, {"two_sided": True})]
            if "solver" in fields:
                out.append(("glora randomized", name, {"solver": "randomized"}))
            if diagnostics and "tie_rtol" in fields:
                out.append(("glora uniform, no tie-break (diagnostic)", name, {"tie_rtol": 0.0}))
        elif name == "flexlora" and "path" in fields:
            out += [("flexlora factored", name, {"path": "factored"}),
                    ("flexlora dense", name, {"path": "dense"}),
                    ("flexlora randomized", name, {"path": "randomized"})]
        else:
            out.append((name, name, {}))
    return out


def method_call(name: str, options: dict[str, Any], updates, frozen, R: int,
                readout_ranks: list[tuple[int, float]], case: Case) -> Callable[[], Any]:
    spec = glora.get_method(name)
    opts = dict(options)
    if name in SERVER_RANK_METHODS and "rank" in _spec_fields(name):
        opts["rank"] = R
    ups = frozen if "A" in spec.frozen_in(0) else updates
    case.options = ", ".join(f"{k}={v}" for k, v in opts.items())
    if ups is frozen:
        case.notes.append("A_i = shared frozen A_0")

    def call():
        state = glora.aggregate(name, ups, **opts)
        outs = [state]
        for rank, scaling in readout_ranks:
            try:
                outs.append(state.readout(rank, scaling))
            except NotImplementedError:
                outs.append(None)
        return outs

    return call


def describe_readout(outs: Any, readout_ranks) -> str:
    if not readout_ranks or not isinstance(outs, list):
        return "-"
    res = outs[1:]
    if not res:
        return "-"
    if all(x is None for x in res):
        return "none (fresh init)"
    return "r=" + ",".join(str(r) for r, _ in readout_ranks)


def baselines(updates, d: int, dtype: torch.dtype) -> list[tuple[str, Callable[[], Any], str]]:
    Bs = [u.B for u in updates]
    As = [u.A for u in updates]

    def read():  # one read of every factor
        acc = Bs[0].new_zeros(())
        for B, A in zip(Bs, As):
            acc += B.sum()
            acc += A.sum()
        return acc

    def copy():  # one read + one write of every factor
        return torch.cat(Bs, dim=1), torch.cat(As, dim=0)

    def validate():  # what every glora.aggregate call checks first
        return glora.aggregation.validate_updates(updates)

    def dense():  # calibration of the memory measurement
        return torch.empty(d, d, dtype=torch.float32).fill_(1.0)

    return [("baseline: read all factors", read, "sum of every B_i and A_i"),
            ("baseline: copy all factors", copy, "torch.cat of all B_i and of all A_i"),
            ("baseline: validate_updates", validate, "input check inside glora.aggregate"),
            ("calibration: dense d x d f32", dense, "alloc+fill; memory should read ~100%")]


# ----------------------------------------------------------------------------------------------
# Running.

@dataclass
class Row:
    d: int
    N: int
    R: int
    label: str
    options: str
    readout: str
    seconds: float | None = None
    fastest: float | None = None
    repeats: int = 0
    peak: int | None = None
    notes: list[str] = field(default_factory=list)
    kind: str = "method"


def run_one(fn: Callable[[], Any], repeats: int, slow_seconds: float, slow_repeats: int,
            readout_ranks=(),
            ) -> tuple[float, float, int, int | None, str, list[str]]:
    """Warm-up, timed repeats (median), then a memory call. Slow calls: fewer repeats, and the
    memory is read during the first timed call (its overhead is negligible there).

    Returns (median seconds, fastest seconds, number of timed calls, peak extra bytes, readout description,
    warnings seen)."""
    caught: list[str] = []
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        _settle()
        t0 = time.perf_counter()
        first = fn()
        t_first = time.perf_counter() - t0
        out_desc = describe_readout(first, readout_ranks)
        del first
        if t_first > slow_seconds:  # slow: the warm-up was enough; memory read in a timed call
            times, peak = [], None
            for _ in range(max(slow_repeats, 1)):
                dt, mem = measure_memory(fn)
                times.append(dt)
                peak = mem if peak is None else peak
        else:
            times = []
            for _ in range(repeats):
                gc.collect()
                t0 = time.perf_counter()
                out = fn()
                times.append(time.perf_counter() - t0)
                del out
            _, peak = measure_memory(fn)
        caught = sorted({f"{x.category.__name__}: {str(x.message)[:60]}" for x in w})
    return statistics.median(times), min(times), len(times), peak, out_desc, caught


def run_setting(d: int, n: int, Rs: list[int], dtype: torch.dtype, args, log) -> list[Row]:
    updates, frozen = make_updates(d, n, CLIENT_RANK, dtype, seed=args.seed + d + n,
                                   data=args.data)
    readout_ranks = sorted({(u.rank, u.scaling) for u in updates})
    rows: list[Row] = []
    variants = method_variants(not args.no_diagnostics)
    if args.methods:
        keep = {m.strip() for m in args.methods.split(",")}
        variants = [v for v in variants if v[0] in keep or v[1] in keep]
    for R in Rs:
        for label, fn, desc in baselines(updates, d, dtype):
            secs, fastest, reps, peak, _, caught = run_one(fn, args.repeats, args.slow_seconds,
                                                           args.slow_repeats, ())
            kind = "calibration" if label.startswith("calibration") else "baseline"
            rows.append(Row(d, n, R, label, desc, "-", secs, fastest, reps, peak, caught, kind))
            log(rows[-1])
        for label, name, options in variants:
            case = Case(label, None)  # type: ignore[arg-type]
            fn = method_call(name, options, updates, frozen, R, readout_ranks, case)
            row = Row(d, n, R, label, case.options, "", notes=list(case.notes))
            if label == "flexlora dense" and d > args.dense_max_d:
                row.readout = "-"
                row.notes.append(f"skipped: d > --dense-max-d {args.dense_max_d}")
                rows.append(row)
                log(row)
                continue
            try:
                secs, fastest, reps, peak, ro, caught = run_one(
                    fn, args.repeats, args.slow_seconds, args.slow_repeats, readout_ranks)
            except Exception as e:  # a method that rejects this input: report, keep going
                row.readout = "-"
                row.notes.append(f"error: {type(e).__name__}: {str(e)[:100]}")
                rows.append(row)
                log(row)
                continue
            row.readout = ro
            row.seconds, row.fastest, row.repeats, row.peak = secs, fastest, reps, peak
            row.notes += caught
            if label in EXACT_OF and not args.no_errors:
                row.notes.append(solver_error(name, options, EXACT_OF[label], updates, frozen, R,
                                              args.exact_max_n >= n))
            rows.append(row)
            log(row)
    return rows


#: A randomized variant -> the exact variant it approximates (its error is measured against it).
EXACT_OF = {"glora randomized": "glora uniform",
            "flexlora randomized": "flexlora factored"}


def solver_error(name: str, options: dict[str, Any], exact_label: str, updates, frozen, R: int,
                 with_exact: bool) -> str:
    """The randomized update's relative Frobenius error against the exact one (one untimed call
    each), beside what the solver reports: its ``error_estimate`` (an a-posteriori bound; GLoRA's
    and FlexLoRA's randomized paths report one) and the products taken."""
    def state(opts):
        return method_call(name, opts, updates, frozen, R, [], Case("", None))()[0]

    fast = state(options)
    info = fast.info
    told = (f"estimate {info['error_estimate']:.1e}" if "error_estimate" in info
            else f"residual {info.get('residual', float('nan')):.1e}")
    told += f", {info.get('iterations', '?')} products"
    if not with_exact:
        return f"{told}; exact not run (N > --exact-max-n)"
    exact_options = next(o for label, _, o in method_variants() if label == exact_label)
    exact = state(exact_options).delta().double()
    error = float((fast.delta().double() - exact).norm() / exact.norm())
    return f"error vs {exact_label} {error:.1e}; {told}"


# ----------------------------------------------------------------------------------------------
# Reporting.

def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total() -> str:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=Path(__file__).resolve().parent, timeout=10
                              ).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def header(args, dtype: torch.dtype, load_start: tuple[float, ...]) -> list[str]:
    return [
        "# Aggregation speed and memory, one layer",
        "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; "
        f"commit {_git_commit()}; command: `{' '.join(['python'] + sys.argv)}`",
        f"- machine: {platform.node()}, {_cpu_model()}, {os.cpu_count()} logical cores, "
        f"{_mem_total()} RAM, {platform.platform()}; shared with other work (load average at "
        f"start {load_start[0]:.2f} / {load_start[1]:.2f} / {load_start[2]:.2f}, 1/5/15 min), "
        "so absolute times are indicative; ratios are measured in the same process minutes apart",
        f"- python {platform.python_version()}, torch {torch.__version__} "
        f"(BLAS/LAPACK: {'MKL' if torch.backends.mkl.is_available() else 'not MKL'}), "
        f"glora {glora.__version__}; methods registered: {', '.join(glora.methods())}",
        f"- threads: torch.get_num_threads()={torch.get_num_threads()}, "
        "OMP/OPENBLAS/MKL_NUM_THREADS=1 set before importing torch",
        f"- dtype {str(dtype).replace('torch.', '')}; d_out = d_in = d; every client rank "
        f"r = {CLIENT_RANK}, scaling alpha/r = {ALPHA / CLIENT_RANK:g}; distinct n_i; clients: "
        + ("shared factors + 50% client noise (as after a shared start, SPEC.md)"
           if args.data == "shared" else "unrelated Gaussian factors")
        + f" (--data {args.data}, seed {args.seed}); R = server rank, passed as "
        f"`rank=` to {', '.join(SERVER_RANK_METHODS)} (other methods do not depend on R)",
        "- each method is timed as `glora.aggregate(name, updates, **options)` (input validation "
        "included) plus one `state.readout(r, s)` per distinct client rank (here one, r = 8); "
        "a readout of `none` means the method starts clients from a fresh LoRA",
        f"- time: time.perf_counter, 1 warm-up call, median of {args.repeats} calls; calls slower "
        f"than {args.slow_seconds:g} s: median of {args.slow_repeats} call(s) after the cold first "
        "call (the `reps` column says how many)",
        "- ratios t/t_X (medians): X = `read` (one read of all client factors: summing every B_i and A_i, "
        "same process, same setting), `flex-f` (flexlora factored), `flex-d` (flexlora dense); "
        "a ratio below 1 means faster than X",
        "- peak extra memory: process resident-set high-water mark during one call minus the "
        "resident set just before it (gc + malloc_trim(0), then the peak counter reset via "
        "`/proc/self/clear_refs` = 5, peak read from VmHWM); it sees every allocation "
        "(torch, MKL, Python), cannot miss short peaks, and includes the returned state; "
        "MKL's own cached scratch buffers, already resident after the timed calls, are not "
        "counted; `%dense` = percent of one dense d x d float32 matrix (4 d^2 bytes)"
        + ("" if MEMORY_OK else " -- UNAVAILABLE here (/proc/self/clear_refs not writable)"),
    ]


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b <= 0:
        return "-"
    x = a / b
    return f"{x:.3g}" if x < 1000 else f"{x:.0f}"


def _ms(s: float | None) -> str:
    if s is None:
        return "-"
    ms = s * 1e3
    return f"{ms:.3g}" if ms < 1000 else f"{ms:.0f}"


def table(rows: list[Row]) -> list[str]:
    lines = ["| d | N | R | method | options | readout | median ms | min ms | reps | t/t_read | t/t_flex-f "
             "| t/t_flex-d | peak extra MiB | %dense | notes |",
             "|---:|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    ref: dict[tuple[int, int, int], dict[str, float | None]] = {}
    for r in rows:
        ref.setdefault((r.d, r.N, r.R), {})[r.label] = r.seconds
    for r in rows:
        k = ref[(r.d, r.N, r.R)]
        dense_bytes = 4 * r.d * r.d
        peak = "-" if r.peak is None else f"{r.peak / 2**20:.2f}"
        pct = "-" if r.peak is None else f"{100 * r.peak / dense_bytes:.1f}"
        lines.append(
            f"| {r.d} | {r.N} | {r.R} | {r.label} | {r.options or '-'} | {r.readout or '-'} "
            f"| {_ms(r.seconds)} | {_ms(r.fastest)} | {r.repeats or '-'} "
            f"| {_ratio(r.seconds, k.get('baseline: read all factors'))} "
            f"| {_ratio(r.seconds, k.get('flexlora factored'))} "
            f"| {_ratio(r.seconds, k.get('flexlora dense'))} | {peak} | {pct} "
            f"| {'; '.join(r.notes) or ''} |")
    return lines


def claims(rows: list[Row]) -> list[str]:
    d, n, R = KEY["d"], KEY["N"], KEY["R"]
    at = {r.label: r for r in rows if (r.d, r.N, r.R) == (d, n, R)}
    where = f"d={d}, N={n}, r={CLIENT_RANK}, R={R}"
    out = [f"Claims at {where}:"]
    if "glora uniform" not in at:
        return out + [f"SKIPPED: setting {where} not in this run (use the default --sizes / "
                      "--clients, not --quick)"]
    read = at.get("baseline: read all factors")
    dense = at.get("flexlora dense")
    for label in ("glora uniform", "glora energy", "glora two-sided"):
        g = at.get(label)
        if g is None or g.seconds is None:
            out.append(f"SKIPPED: {label}: no measurement")
            continue
        tag = "" if label == "glora uniform" else " (variant, informational)"
        if dense is None or dense.seconds is None:
            out.append(f"SKIPPED: {label}{tag}: >= 50x faster than flexlora dense "
                       "(flexlora path='dense' not measured/registered)")
        else:
            x = dense.seconds / g.seconds
            out.append(f"{'PASS' if x >= 50 else 'FAIL'}: {label}{tag} >= 50x faster than "
                       f"flexlora dense: {x:.0f}x ({_ms(dense.seconds)} ms vs {_ms(g.seconds)} ms)")
        x = g.seconds / read.seconds
        out.append(f"{'PASS' if x <= 100 else 'FAIL'}: {label}{tag} within 100x of one read of "
                   f"all client factors: {x:.0f}x ({_ms(g.seconds)} ms vs {_ms(read.seconds)} ms)")
        if g.peak is None:
            out.append(f"SKIPPED: {label}{tag} peak memory: not measurable here")
        else:
            pct = 100 * g.peak / (4 * d * d)
            out.append(f"{'PASS' if pct < 10 else 'FAIL'}: {label}{tag} peak extra memory < 10% "
                       f"of one dense d x d float32 matrix: {pct:.1f}% "
                       f"({g.peak / 2**20:.1f} MiB of {4 * d * d / 2**20:.0f} MiB)")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="768,4096",
                   help="comma-separated d (d_out = d_in); e.g. 768,4096,8192 (default 768,4096)")
    p.add_argument("--clients", default="10,100", help="comma-separated N (default 10,100)")
    p.add_argument("--server-ranks", default="8,16", help="comma-separated R (default 8,16)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--repeats", type=int, default=7, help="timed calls per measurement (median)")
    p.add_argument("--slow-seconds", type=float, default=5.0,
                   help="a call slower than this gets --slow-repeats timed calls")
    p.add_argument("--slow-repeats", type=int, default=1)
    p.add_argument("--dense-max-d", type=int, default=8192,
                   help="skip flexlora path='dense' above this d (its full SVD is O(d^3))")
    p.add_argument("--methods", default="",
                   help="comma-separated labels or method names to run (default: all registered)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", choices=("shared", "independent"), default="shared",
                   help="client factors: shared start + 50%% noise (default) or unrelated")
    p.add_argument("--no-errors", action="store_true",
                   help="skip the randomized variants' error against the exact ones")
    p.add_argument("--exact-max-n", type=int, default=1000,
                   help="above this N the exact reference of an error is not run (default 1000)")
    p.add_argument("--no-diagnostics", action="store_true",
                   help="omit the diagnostic row (glora uniform with tie_rtol=0: no tie-break)")
    p.add_argument("--quick", action="store_true",
                   help="d=768, N=10 only (under a minute)")
    p.add_argument("--out", type=Path, help="also write the header, table and claims as Markdown")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.clients = "768", "10"
        args.repeats = min(args.repeats, 3)
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    clients = [int(x) for x in args.clients.split(",") if x.strip()]
    ranks = [int(x) for x in args.server_ranks.split(",") if x.strip()]
    dtype = getattr(torch, args.dtype)
    load_start = os.getloadavg()

    # Load every code path once at a tiny size, so first-call costs (library pages, lazy init)
    # land neither in times nor in memory.
    tiny, tiny_frozen = make_updates(64, 3, CLIENT_RANK, dtype, seed=1)
    for label, name, options in method_variants():
        case = Case(label, None)  # type: ignore[arg-type]
        try:
            method_call(name, options, tiny, tiny_frozen, 8, [(CLIENT_RANK, ALPHA / CLIENT_RANK)],
                        case)()
        except Exception:
            pass
    for _, fn, _ in baselines(tiny, 64, dtype):
        fn()

    head = header(args, dtype, load_start)
    print("\n".join(head), flush=True)
    print("\n(progress: one line per measurement; table at the end)", flush=True)

    def log(row: Row) -> None:
        peak = "-" if row.peak is None else f"{row.peak / 2**20:.1f} MiB"
        print(f"  d={row.d} N={row.N} R={row.R} {row.label:<30} {_ms(row.seconds):>8} ms "
              f"x{row.repeats} peak {peak} {'; '.join(row.notes)}", file=sys.stderr, flush=True)

    t_start = time.perf_counter()
    rows: list[Row] = []
    for d in sizes:
        for n in clients:
            rows += run_setting(d, n, ranks, dtype, args, log)
    load_end = os.getloadavg()
    footer = [f"- total wall time {time.perf_counter() - t_start:.0f} s; load average at end "
              f"{load_end[0]:.2f} / {load_end[1]:.2f} / {load_end[2]:.2f}"]
    lines = head + footer + [""] + table(rows) + [""] + claims(rows)
    print()
    print("\n".join(footer + [""] + table(rows) + [""] + claims(rows)), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
        print(f"\nwritten: {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
