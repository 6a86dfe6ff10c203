"""``glora report``: a sweep's store as Markdown tables and plots.

For each group of settings and each metric, a table: rows are settings, columns are method
variants, a cell is the mean ± sample standard deviation (n - 1) over seeds of the metric's
final-round value (the last round is always evaluated), n the number of seeds that finished.
No mean is marked best: seeds are noisy, so comparisons are paired. Beside it, the paired
differences ``reference - X`` (the reference variant, by default ``glora``, against every other
variant of the row, seed by seed: the same seed gives every method the same split, partition and
start), with a 95% Student-t interval; a sentence per row names the differences whose interval
excludes zero. A setting with ``paired_with`` gets the same per variant against that setting.
Plots (PNG) go to ``<report stem>_plots/`` beside the report: the metric per round and against
MB communicated, the server time and the shadow distances per round.

The numbers (:func:`mean_std`, :func:`paired`, :func:`cell_text`, :func:`paired_text`,
:func:`significance`, :func:`mean_by_round`, :func:`total_mb`) are pure functions, apart from
reading the store and drawing.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from glora.errors import ConfigError
from glora.federation.records import read_history
from glora.sweep import ERROR, RESULT, SWEEP_FILE, Run, Sweep, read_sweep

MARK = "†"
METRIC_PREFIXES = ("global_", "personal_")


# -- the numbers (pure) ------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """What one table cell summarizes: a variant's runs in a setting, for one metric."""

    values: tuple[float, ...] = ()  # the metric's final value, one per finished seed having it
    finished: int = 0
    failed: int = 0
    planned: bool = True  # False: the setting does not run this variant
    equal_rank: str | None = None  # the label, where the method ran every client at one rank
    pending: int = 0  # seeds neither finished nor failed yet


def mean_std(values: Iterable[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``None`` for a single value)."""
    values = list(values)
    if not values:
        raise ValueError("mean_std needs at least one value.")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def lower_is_better(metric: str) -> bool:
    """Losses go down; every other metric glora reports goes up."""
    return metric.endswith("loss")


#: A half-width at most this is zero: equal differences leave float rounding, not spread.
ZERO_WIDTH = 1e-12


@dataclass(frozen=True)
class Paired:
    """Paired differences over seeds: their mean, the half-width of its 95% t-interval
    (``None`` below two pairs) and the number of pairs."""

    mean: float
    half: float | None
    n: int

    @property
    def significant(self) -> bool:
        """Whether the interval excludes zero. A zero-width interval (every pair differed by the
        same amount, which a finite test set makes possible at few seeds) estimates no spread,
        so it is not called significant."""
        return self.half is not None and ZERO_WIDTH < self.half < abs(self.mean)


def paired(reference: dict[int, float], other: dict[int, float]) -> Paired | None:
    """``reference[s] - other[s]`` over the seeds ``s`` both have; ``None`` without any."""
    seeds = sorted(reference.keys() & other.keys())
    if not seeds:
        return None
    diffs = [reference[s] - other[s] for s in seeds]
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return Paired(mean, None, 1)
    from scipy.stats import t

    half = float(t.ppf(0.975, len(diffs) - 1)) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return Paired(mean, half, len(diffs))


def paired_text(p: Paired | None) -> str:
    """``+0.0123 [-0.0050, +0.0296] (n=5)``; ``n/a`` without pairs."""
    if p is None:
        return "n/a"
    if p.half is None:
        return f"{p.mean:+.4f} (n=1)"
    return f"{p.mean:+.4f} [{p.mean - p.half:+.4f}, {p.mean + p.half:+.4f}] (n={p.n})"


def significance(row: str, reference: str, diffs: dict[str, Paired | None],
                 lower: bool = False) -> str:
    """One sentence: which of ``reference``'s paired differences in ``row`` exclude zero, and in
    whose favour (``lower``: lower is better, as for a loss)."""
    found = [(v, p) for v, p in diffs.items() if p is not None and p.significant]
    tested = sum(p is not None and p.half is not None for p in diffs.values())
    if not tested:
        return f"`{row}`: fewer than two paired seeds; nothing can be called significant."
    if not found:
        return (f"`{row}`: no difference between `{reference}` and the {tested} other variant(s) "
                "is significant (every 95% interval contains zero).")
    parts = [f"`{reference}` {'better' if (p.mean < 0) == lower else 'worse'} than `{v}` by "
             f"{abs(p.mean):.4f} ± {p.half:.4f}" for v, p in found]
    return f"`{row}`: significant: " + "; ".join(parts) + "; the others are not."


def cell_text(cell: Cell) -> str:
    """``0.8123 ± 0.0100 (n=3)``; ``not run``, ``failed``, ``pending`` or ``n/a`` without values."""
    if not cell.planned:
        return "not run"
    if not cell.values:
        return "failed" if cell.failed else "n/a" if cell.finished else "pending"
    mean, std = mean_std(cell.values)
    n = f"n={len(cell.values)}" + (f"; {cell.failed} failed" if cell.failed else "") \
        + (f"; {cell.pending} pending" if cell.pending else "")
    text = f"{mean:.4f} ± {std:.4f} ({n})" if std is not None else f"{mean:.4f} ({n})"
    return f"{text} {MARK}" if cell.equal_rank else text


def mean_by_round(histories: list[list[dict[str, Any]]], key: str) -> list[tuple[int, float]]:
    """``(round, mean over runs)`` of ``key`` for every round at least one run recorded it."""
    by_round: dict[int, list[float]] = {}
    for history in histories:
        for record in history:
            if isinstance(record.get(key), (int, float)):
                by_round.setdefault(record["round"], []).append(record[key])
    return [(r, statistics.fmean(v)) for r, v in sorted(by_round.items())]


def total_mb(history: list[dict[str, Any]]) -> float:
    """Megabytes up and down over all rounds of a run."""
    return sum(r["bytes_up"] + r["bytes_down"] for r in history) / 1e6


# -- the store ---------------------------------------------------------------------------------
@dataclass
class Outcome:
    """One run of the sweep as its folder holds it."""

    run: Run
    result: dict[str, Any] | None  # result.json, once it finished
    history: list[dict[str, Any]]  # metrics.jsonl
    error: str | None  # the last line of error.txt, when it failed and has not finished since


def collect(store: Path) -> tuple[Sweep, list[Outcome]]:
    """The store's sweep (``sweep.yaml``) and what each of its runs left behind."""
    if not (store / SWEEP_FILE).is_file():
        raise ConfigError(f"{store / SWEEP_FILE} does not exist: is {str(store)!r} a store "
                          "written by `glora sweep`? Run `glora sweep FILE --store STORE` first.")
    sweep, problems = read_sweep(store / SWEEP_FILE)
    if problems:
        raise ConfigError([f"{store / SWEEP_FILE}: {p}" for p in problems])
    outcomes = []
    for run in sweep.runs(store):
        done = run.dir / RESULT
        result = json.loads(done.read_text()) if done.is_file() else None
        error = None
        if result is None and (run.dir / ERROR).is_file():
            lines = (run.dir / ERROR).read_text().strip().splitlines()
            error = lines[-1] if lines else "unknown error"
        outcomes.append(Outcome(run, result, read_history(run.dir / run.method), error))
    return sweep, outcomes


def restrict(sweep: Sweep, outcomes: list[Outcome], only: Sequence[str]
             ) -> tuple[Sweep, list[Outcome]]:
    """The sweep and outcomes of the settings named in ``only``.

    Raises:
        ConfigError: a name is not a setting of the sweep.
    """
    names = [s.name for s in sweep.settings]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise ConfigError(f"`--only`: no setting {', '.join(map(repr, unknown))} in this store "
                          f"(its settings: {', '.join(names)}).")
    kept = dataclasses.replace(sweep, settings=[s for s in sweep.settings if s.name in only])
    return kept, [o for o in outcomes if o.run.setting.name in only]


def choose_metrics(requested: str | None, outcomes: list[Outcome]) -> list[str]:
    """``--metric`` (a comma list) checked against the finished runs' metrics; by default the
    first ``global_*`` one."""
    available = list(dict.fromkeys(
        k for o in outcomes if o.result for k, v in o.result["summary"].items()
        if k.startswith(METRIC_PREFIXES) and isinstance(v, (int, float))))
    if requested is None:
        found = [k for k in available if k.startswith("global_")]
        if not found:
            raise ConfigError("no finished run has a `global_*` metric yet; finish some runs "
                              "with `glora sweep`, or name a metric with `--metric`.")
        return found[:1]
    chosen = [m.strip() for m in requested.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in available]
    if unknown or not chosen:
        raise ConfigError(f"`--metric`: {unknown or requested!r} not among the finished runs' "
                          f"metrics; available: {available}.")
    return chosen


def make_cell(outcomes: list[Outcome], metric: str, planned: bool = True) -> Cell:
    """The cell of one setting and variant (``outcomes``: its runs, one per seed)."""
    results = [o.result for o in outcomes if o.result]
    labels = {r["label"] for r in results if r["label"] != r["method"]}
    return Cell(tuple(r["summary"][metric] for r in results if metric in r["summary"]),
                len(results), sum(o.error is not None for o in outcomes), planned,
                ", ".join(sorted(labels)) or None,
                sum(o.result is None and o.error is None for o in outcomes))


# -- the report --------------------------------------------------------------------------------
def write_report(store: str | Path, out: str | Path | None = None,
                 metrics: str | None = None, only: Sequence[str] = (),
                 reference: str | None = None) -> Path:
    """Write the report of ``store`` (default ``<store>/report.md``) and its plots; its path.

    ``only`` reports these settings alone (as ``glora sweep --only`` runs them); ``reference`` is
    the variant the others are paired with (default ``glora`` where the sweep has it).
    """
    store = Path(store)
    sweep, outcomes = collect(store)
    if only:
        sweep, outcomes = restrict(sweep, outcomes, only)
    if reference is None:
        reference = "glora" if "glora" in sweep.variants else None
    elif reference not in sweep.variants:
        raise ConfigError(f"`--paired`: no variant {reference!r} in this store (its variants: "
                          f"{', '.join(sweep.variants)}).")
    chosen = choose_metrics(metrics, outcomes)
    out = Path(out) if out is not None else store / "report.md"
    plots = out.parent / f"{out.stem}_plots"
    plots.mkdir(parents=True, exist_ok=True)
    command = (f"glora report {store}" + (f" --only {','.join(only)}" if only else "")
               + (f" --metric {','.join(chosen)}" if metrics else "")
               + (f" --paired {reference}" if reference else "") + f" --out {out}")
    lines = _header(sweep, outcomes, store, chosen, reference)
    for i, group in enumerate(dict.fromkeys(s.group for s in sweep.settings), 1):
        lines += _group(sweep, outcomes, group, chosen, plots, f"{i}-{_slug(group)}", reference)
    lines += _failures(outcomes) + _provenance(sweep, store, command, only)
    out.write_text("\n".join(lines) + "\n")
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "group"


def _header(sweep: Sweep, outcomes: list[Outcome], store: Path, metrics: list[str],
            reference: str | None) -> list[str]:
    done = sum(o.result is not None for o in outcomes)
    failed = sum(o.error is not None for o in outcomes)
    pairing = (f" Comparisons are paired by seed: `{reference}` − X, mean difference with its "
               "95% Student-t interval over the seeds both finished (n = pairs); an interval "
               "of nonzero width that excludes zero is called significant, nothing else is."
               if reference else " No reference variant: no paired comparison.")
    return [f"# Sweep report: {sweep.name}", "",
            f"Store `{store}`: {len(outcomes)} runs, {done} finished, {failed} failed, "
            f"{len(outcomes) - done - failed} not yet run. Metric: final "
            + ", ".join(f"`{m}`" for m in metrics)
            + ", mean ± sample std over seeds (n = seeds that finished)." + pairing, ""]


def _seed_values(outcomes: list[Outcome], metric: str) -> dict[int, float]:
    """The metric's final value by seed, of the runs that finished with it."""
    return {o.run.seed: o.result["summary"][metric] for o in outcomes
            if o.result and metric in o.result["summary"]}


def _group(sweep: Sweep, outcomes: list[Outcome], group: str, metrics: list[str], plots: Path,
           stem: str, reference: str | None) -> list[str]:
    """A group's tables, paired differences and plots."""
    settings = [s for s in sweep.settings if s.group == group]
    variants = [v for v in sweep.variants if any(v in s.variants for s in settings)]
    runs = {(s.name, v): [o for o in outcomes
                          if o.run.setting.name == s.name and o.run.variant == v]
            for s in sweep.settings for v in sweep.variants}
    lines = [f"## {group}", ""]
    for metric in metrics:
        lower = lower_is_better(metric)
        cells = {(s.name, v): make_cell(runs[s.name, v], metric, v in s.variants)
                 for s in settings for v in variants}
        lines += [f"### `{metric}`", "", "| setting | " + " | ".join(variants) + " |",
                  "|---" * (len(variants) + 1) + "|"]
        lines += [f"| {s.name} | " + " | ".join(cell_text(cells[s.name, v]) for v in variants)
                  + " |" for s in settings]
        labels = sorted({c.equal_rank for c in cells.values() if c.equal_rank})
        if labels:
            lines += ["", f"{MARK} Run with every client at one rank ("
                      + ", ".join(f"`{label}`" for label in labels) + "): the method cannot take "
                      "mixed ranks, so it used the smallest (or largest, `lora.equal_rank`) rank "
                      "of `lora.ranks`."]
        lines += [""] + _paired_tables(settings, variants, runs, metric, lower, reference)
        for name, title in _plot_metric(plots, f"{stem}_{metric}", settings, variants, runs,
                                        metric):
            lines += [f"![{title}]({plots.name}/{name})", ""]
    name = _plot_rounds(plots / f"{stem}_server_ms.png", settings, variants, runs,
                        "server_seconds", "server ms per round", 1000.0)
    lines += [f"![server ms per round]({plots.name}/{name})", ""]
    if any("shadow_to_exact" in r for o in outcomes for r in o.history[:1]):
        for key, what in (("shadow_to_exact", "the exact average"),
                          ("shadow_to_best", "the best rank-R truncation")):
            name = _plot_rounds(plots / f"{stem}_{key}.png", settings, variants, runs, key,
                                f"distance to {what}")
            lines += [f"![relative distance of each round's update to {what}]"
                      f"({plots.name}/{name})", ""]
    return lines


def _paired_tables(settings: list, variants: list[str], runs: dict[tuple[str, str], list],
                   metric: str, lower: bool, reference: str | None) -> list[str]:
    """Paired differences: the reference against each variant of a row, and each variant of a
    ``paired_with`` setting against itself in the other setting; a sentence per row."""
    lines: list[str] = []
    rows = [s for s in settings if reference in s.variants]
    others = [v for v in variants if v != reference]
    if rows and others:
        lines += [f"Paired differences `{reference}` − X of `{metric}` (95% t-interval):", "",
                  "| setting | " + " | ".join(others) + " |", "|---" * (len(others) + 1) + "|"]
        sentences = []
        for s in rows:
            ref = _seed_values(runs[s.name, reference], metric)
            diffs = {v: paired(ref, _seed_values(runs[s.name, v], metric))
                     for v in others if v in s.variants}
            lines.append(f"| {s.name} | " + " | ".join(
                paired_text(diffs[v]) if v in diffs else "not run" for v in others) + " |")
            sentences.append(significance(s.name, reference, diffs, lower))
        lines += ["", *[f"- {x}" for x in sentences], ""]
    for s in [s for s in settings if s.paired_with]:
        diffs = {v: paired(_seed_values(runs[s.name, v], metric),
                           _seed_values(runs[s.paired_with, v], metric)) for v in s.variants}
        lines += [f"`{s.name}` − `{s.paired_with}` of `{metric}`, each variant paired by seed "
                  "(95% t-interval):", "", "| variant | difference | significant |",
                  "|---|---|---|"]
        lines += [f"| {v} | {paired_text(p)} | {'yes' if p and p.significant else 'no'} |"
                  for v, p in diffs.items()]
        lines.append("")
    return lines


def _failures(outcomes: list[Outcome]) -> list[str]:
    failed = [o for o in outcomes if o.error is not None]
    if not failed:
        return []
    return ["## Failed runs", "", *[f"- `{o.run.name}`: {o.error} (traceback: "
                                    f"`{o.run.dir / ERROR}`)" for o in failed],
            "", "Rerun the sweep to retry them (from their last checkpoint).", ""]


def _provenance(sweep: Sweep, store: Path, command: str, only: Sequence[str] = ()) -> list[str]:
    pattern = store / "<setting>" / "<variant>" / "seed_<k>"
    flag = f" --only {','.join(only)}" if only else ""
    return ["## How these numbers were obtained", "",
            f"- The sweep: `glora sweep {store / SWEEP_FILE} --store {store}{flag}` (the resolved "
            "sweep file: base config, overrides, variants, settings, seeds); then, for this page:",
            f"  `{command}`",
            f"- Seeds: {', '.join(map(str, sweep.seeds))}; one run per setting, variant and seed, "
            "each a separate `glora run` with one method.",
            f"- One run: `glora run --config {pattern / 'config.yaml'}` repeats it; its "
            f"`result.json` holds that command, the summary row, the final round's record and "
            f"the wall time, and `<method>/metrics.jsonl` one record per round.",
            "- A cell: the metric after the last round of each seed, then mean ± sample standard "
            "deviation (n - 1) over seeds. MB communicated: bytes up and down summed over all "
            "rounds. Server ms: the server's aggregation time per round (`server_seconds`). "
            "Shadow distances (where recorded): each round's update against the exact average "
            "of the same replies and against its best rank-R truncation, relative Frobenius "
            "norm over all layers. Curves are means over the seeds that finished.", ""]


# -- plots -------------------------------------------------------------------------------------
def _axes(count: int) -> tuple[Any, list[Any]]:
    """A figure with one subplot per setting (up to 4 a row), on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(count, 4)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.6 * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat[:count]


def _color(variants: list[str], variant: str) -> str:
    """One colour per variant in every subplot of a group."""
    return f"C{variants.index(variant) % 10}"


def _finish(ax: Any, title: str, xlabel: str, ylabel: str) -> None:
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _save(fig: Any, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _plot_rounds(path: Path, settings: list, variants: list[str],
                 runs: dict[tuple[str, str], list[Outcome]], key: str, ylabel: str,
                 scale: float = 1.0) -> str:
    """``key`` per round, mean over finished seeds, a line per variant, a subplot per setting."""
    fig, axes = _axes(len(settings))
    for ax, s in zip(axes, settings):
        for v in s.variants:
            points = mean_by_round([o.history for o in runs[s.name, v] if o.result], key)
            if points:
                ax.plot([r for r, _ in points], [scale * m for _, m in points], marker="o",
                        label=v, color=_color(variants, v))
        _finish(ax, s.name, "round", ylabel)
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _save(fig, path)


def _plot_metric(plots: Path, stem: str, settings: list, variants: list[str],
                 runs: dict[tuple[str, str], list[Outcome]], metric: str) -> list[tuple[str, str]]:
    """The metric per round, and the final metric against MB communicated; (file, title) each."""
    rounds = _plot_rounds(plots / f"{stem}_rounds.png", settings, variants, runs, metric, metric)
    fig, axes = _axes(len(settings))
    for ax, s in zip(axes, settings):
        for v in s.variants:
            done = [o for o in runs[s.name, v] if o.result and metric in o.result["summary"]]
            if done:
                mean, std = mean_std(o.result["summary"][metric] for o in done)
                ax.errorbar(statistics.fmean(total_mb(o.history) for o in done), mean,
                            yerr=std or 0.0, marker="o", capsize=3, label=v,
                            color=_color(variants, v))
        _finish(ax, s.name, "MB communicated (up + down, all rounds)", metric)
    traffic = _save(fig, plots / f"{stem}_vs_MB.png")
    return [(rounds, f"{metric} per round"), (traffic, f"final {metric} against MB communicated")]
