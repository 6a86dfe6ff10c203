"""``glora sweep``: a grid of runs (settings x method variants x seeds) from one YAML file.

A sweep file::

    name: data_heterogeneity             # optional title (default: the file's stem)
    base_config: ../default.yaml         # optional; relative to the sweep file's folder
    base: {train.rounds: 4}              # dotted overrides of every run
    seeds: [0, 1, 2]                     # default [0]
    methods:                             # variant label -> registry method and its options
      glora: {method: glora}
      glora_energy: {method: glora, options: {consensus: energy}}
      fedit: {method: fedit}
    settings:                            # each a row of the table of its group (default Results)
      - {name: alpha_0.1, group: Data heterogeneity, overrides: {data.alpha: 0.1}}
      - {name: p10, group: Participation, overrides: {train.participation: 0.1},
         methods: [glora, fedit]}        # optional subset of the variants
      - {name: p10_indep, group: Participation, overrides: {train.init: independent},
         paired_with: p10}               # optional: the report pairs each variant's seeds here
                                         # with its seeds in that setting (this - that)

Every run is one :func:`~glora.sim.experiment.run_experiment` call with one method, seed and
``output_dir=<store>/<setting>/<variant>/seed_<k>``, its config built by
:func:`~glora.config.load_config` from ``base_config`` and, in this order, ``workers=1``, ``base``,
the command line's ``key=value`` overrides, the setting's overrides, then the run's method, options
and seed. The sweep sets ``methods``, ``method_options``, ``seed`` and ``output_dir`` itself, so
the file may not. Every problem of the file is reported at once, before anything runs.

A finished run writes ``result.json`` into its folder (:func:`write_result`), so calling the
sweep again runs only what is missing; an interrupted run resumes from its checkpoint; a store
whose runs hold results of another config is refused. A failed run leaves ``error.txt`` and the
others go on; a run's progress bars and warnings go to its ``log.txt``. Runs execute in spawned
processes (``jobs`` at a time, or inline for one), each with one torch thread: parallel runs, not
threads, keep a multi-core machine busy. The resolved file (``base_config`` absolute, the command
line's overrides in ``base``) is saved as ``<store>/sweep.yaml``, from which ``glora report
STORE`` makes tables and plots (:mod:`glora.report`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing as mp
import os
import re
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml
from tqdm.auto import tqdm

from glora.aggregation import methods
from glora.atomic import write_atomic
from glora.config import (ExperimentConfig, config_changes, flatten, load_config,
                          parse_overrides, read_yaml_mapping)
from glora.errors import ConfigError
from glora.federation.records import read_history

log = logging.getLogger("glora.sweep")

RESULT, ERROR, LOG, SWEEP_FILE = "result.json", "error.txt", "log.txt", "sweep.yaml"
DEFAULT_GROUP = "Results"
#: Config keys each run gets from the sweep, and where a sweep file sets them instead.
RESERVED = {"methods": "`methods:` (and a setting's `methods:`)",
            "method_options": "a variant's `options:`", "seed": "`seeds:`",
            "output_dir": "`--store`"}
_TOP_KEYS = ("name", "base_config", "base", "seeds", "methods", "settings")
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


# -- the sweep file ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """A column of the report: a registry method with its options."""

    method: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Setting:
    """A row of the report: overrides on top of ``base``, run with some or all variants."""

    name: str
    group: str
    overrides: dict[str, Any]  # dotted key -> value
    variants: tuple[str, ...]
    paired_with: str | None = None  # another setting the report compares this one with


@dataclass(frozen=True)
class Run:
    """One cell of the grid: a setting, a variant and a seed, in its own folder."""

    setting: Setting
    variant: str
    method: str
    seed: int
    dir: Path

    @property
    def name(self) -> str:
        return f"{self.setting.name}/{self.variant}/seed_{self.seed}"


@dataclass
class Sweep:
    """A parsed sweep file (``base`` already holds the command line's overrides)."""

    name: str
    base_config: str | None  # absolute path
    base: dict[str, Any]  # dotted key -> value
    seeds: list[int]
    variants: dict[str, Variant]
    settings: list[Setting]

    def runs(self, store: Path) -> list[Run]:
        """Every run, seed by seed (then setting by setting, variant by variant): a sweep stopped
        part-way has covered every cell once before it repeats any with another seed."""
        return [Run(s, v, self.variants[v].method, k, store / s.name / v / f"seed_{k}")
                for k in self.seeds for s in self.settings for v in s.variants]

    def overrides(self, run: Run) -> list[str]:
        """The ``key=value`` list that :func:`load_config` turns into the run's config."""
        variant = self.variants[run.variant]
        pairs = {"workers": 1, **self.base, **run.setting.overrides, "methods": [run.method],
                 "method_options": {run.method: variant.options} if variant.options else {},
                 "seed": run.seed, "output_dir": str(run.dir)}
        return _as_overrides(pairs)

    def to_dict(self) -> dict[str, Any]:
        """The resolved file: ``glora sweep`` on it repeats this sweep."""
        return {"name": self.name, "base_config": self.base_config, "base": self.base,
                "seeds": self.seeds,
                "methods": {k: {"method": v.method, "options": v.options}
                            for k, v in self.variants.items()},
                "settings": [{"name": s.name, "group": s.group, "overrides": s.overrides,
                              "methods": list(s.variants),
                              **({"paired_with": s.paired_with} if s.paired_with else {})}
                             for s in self.settings]}


def _as_overrides(pairs: dict[str, Any]) -> list[str]:
    """Dotted keys and values as ``key=value`` strings (JSON values are valid YAML)."""
    return [f"{k}={json.dumps(v, default=str)}" for k, v in pairs.items()]


def read_sweep(path: str | Path, overrides: Sequence[str] = ()) -> tuple[Sweep, list[str]]:
    """Parse a sweep file and the command line's ``key=value`` overrides of ``base``.

    Returns the sweep (entries with problems left out) and the problems of its structure, each
    naming the key; an unreadable file raises :class:`ConfigError` at once.
    """
    path = Path(path)
    raw = read_yaml_mapping(path, "sweep file")
    problems = [f"unknown key `{k}`; allowed keys: {list(_TOP_KEYS)}." for k in raw
                if k not in _TOP_KEYS]
    name = raw.get("name", path.stem)
    if not isinstance(name, str):
        problems.append(f"`name` must be a string, got {name!r}.")
    base = _mapping(raw.get("base") or {}, "`base`", problems)
    base.update(flatten(parse_overrides(list(overrides))))
    _check_reserved(base, "`base` or the command line", problems)
    variants = _variants(raw.get("methods"), problems)
    labels = list(raw["methods"]) if isinstance(raw.get("methods"), dict) else []
    sweep = Sweep(str(name), _base_config(raw.get("base_config"), path.parent.resolve(), problems),
                  base, _seeds(raw.get("seeds", [0]), problems), variants,
                  _settings(raw.get("settings"), labels, variants, problems))
    return sweep, problems


def _mapping(value: Any, where: str, problems: list[str]) -> dict[str, Any]:
    """Overrides as dotted keys; a problem unless ``value`` is a mapping."""
    if not isinstance(value, dict):
        problems.append(f"{where} must be a mapping of dotted keys to values "
                        f"(e.g. {{train.rounds: 4}}), got {value!r}.")
        return {}
    return flatten(value)


def _check_reserved(overrides: dict[str, Any], where: str, problems: list[str]) -> None:
    for key in overrides:
        top = key.split(".")[0]
        if top in RESERVED:
            problems.append(f"{where} sets `{key}`, which the sweep sets for every run; use "
                            f"{RESERVED[top]} instead.")


def _base_config(value: Any, folder: Path, problems: list[str]) -> str | None:
    """The absolute path (a relative one is read from ``folder``, the sweep file's)."""
    if value is None:
        return None
    if not isinstance(value, str):
        problems.append(f"`base_config` must be a path, got {value!r}.")
        return None
    return str(folder / value)  # an absolute value stays as it is


def _seeds(value: Any, problems: list[str]) -> list[int]:
    if (not isinstance(value, list) or not value or len(set(value)) < len(value)
            or not all(isinstance(k, int) and not isinstance(k, bool) for k in value)):
        problems.append(f"`seeds` must be a non-empty list of distinct integers, got {value!r}.")
        return [0]  # a stand-in, so that every run's config is still checked
    return value


def _variants(value: Any, problems: list[str]) -> dict[str, Variant]:
    """``methods:``: label -> {method, options}; labels must name folders."""
    if not isinstance(value, dict) or not value:
        problems.append("`methods` must be a non-empty mapping of variant labels to "
                        f"{{method: NAME, options: {{...}}}}, got {value!r}.")
        return {}
    variants = {}
    for label, spec in value.items():
        where = f"`methods.{label}`"
        if not isinstance(label, str) or not _SAFE.fullmatch(label):
            problems.append(f"{where}: the label names a folder; use letters, digits, `.`, `_` "
                            "and `-`.")
            continue
        if not isinstance(spec, dict) or set(spec) - {"method", "options"}:
            problems.append(f"{where} must be a mapping with keys `method` and (optional) "
                            f"`options`, got {spec!r}.")
            continue
        method, options = spec.get("method"), spec.get("options") or {}
        if method not in methods():
            problems.append(f"{where}: unknown method {method!r}; known methods: {methods()}.")
        elif not isinstance(options, dict):
            problems.append(f"{where}.options must be a mapping of {method}'s options, "
                            f"got {options!r}.")
        else:
            variants[label] = Variant(method, options)
    return variants


def _settings(value: Any, labels: list[str], variants: dict[str, Variant],
              problems: list[str]) -> list[Setting]:
    """``settings:``: a list of {name, group, overrides, methods}, names unique and folder-safe.

    ``labels`` are all variant labels of the file, ``variants`` those without problems.
    """
    if not isinstance(value, list) or not value:
        problems.append("`settings` must be a non-empty list of {name, group, overrides, "
                        f"methods}} mappings, got {value!r}.")
        return []
    allowed = ("name", "group", "overrides", "methods", "paired_with")
    settings: list[Setting] = []
    for i, item in enumerate(value):
        name = item.get("name") if isinstance(item, dict) else None
        where = f"setting `{name}`" if isinstance(name, str) else f"`settings[{i}]`"
        if not isinstance(item, dict) or not isinstance(name, str) or not _SAFE.fullmatch(name):
            problems.append(f"{where} must be a mapping with a `name` made of letters, digits, "
                            f"`.`, `_` and `-` (it names a folder), got {item!r}.")
            continue
        if any(s.name == name for s in settings):
            problems.append(f"{where}: the name is used twice; setting names must be unique.")
            continue
        problems += [f"{where}: unknown key `{k}`; allowed keys: {list(allowed)}."
                     for k in item if k not in allowed]
        group = item.get("group", DEFAULT_GROUP)
        if not isinstance(group, str):
            problems.append(f"{where}: `group` must be a string, got {group!r}.")
        overrides = _mapping(item.get("overrides") or {}, f"{where}: `overrides`", problems)
        _check_reserved(overrides, f"{where}: `overrides`", problems)
        chosen = item.get("methods", labels)
        if not isinstance(chosen, list) or not chosen:
            problems.append(f"{where}: `methods` must be a non-empty list of variant labels "
                            f"from `methods` ({labels}), got {chosen!r}.")
            continue
        unknown = [v for v in chosen if v not in labels]
        if unknown:
            problems.append(f"{where}: `methods` names unknown variants {unknown}; the variants "
                            f"are the labels under `methods`: {labels}.")
            continue
        runnable = tuple(v for v in dict.fromkeys(chosen) if v in variants)
        if runnable:  # else every chosen variant has a problem of its own
            settings.append(Setting(name, str(group), overrides, runnable,
                                    item.get("paired_with")))
    names = [s.name for s in settings]
    problems += [f"setting `{s.name}`: `paired_with` must name another setting of the file "
                 f"({names}), got {s.paired_with!r}." for s in settings
                 if s.paired_with is not None and (s.paired_with not in names
                                                    or s.paired_with == s.name)]
    return settings


# -- planning ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """A run with its validated config."""

    run: Run
    cfg: ExperimentConfig


@dataclass
class Plan:
    """A checked sweep: every run with its config, in a store."""

    sweep: Sweep
    store: Path
    jobs: list[Job]

    def listing(self) -> str:
        """One line per run with its status (``--dry-run``)."""
        rows = [(j.run.setting.name, j.run.variant, str(j.run.seed), status(j.run))
                for j in self.jobs]
        head = ("setting", "variant", "seed", "status")
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
                         for r in [head, *rows])


def default_store(path: str | Path) -> Path:
    """``runs/sweeps/<sweep file stem>``."""
    return Path("runs") / "sweeps" / Path(path).stem


def plan_sweep(path: str | Path, overrides: Sequence[str] = (),
               store: str | Path | None = None, only: Sequence[str] = ()) -> Plan:
    """Read a sweep file and build every run's config; all problems at once.

    ``only`` keeps the runs of these settings (a slow row left for later); the saved sweep file
    still lists every setting, so the report shows the others as not run.

    Raises:
        ConfigError: the file's problems and every config problem, each naming the setting,
            variant and key; an unknown name in ``only``; or runs in ``store`` already hold
            results of another config.
    """
    sweep, problems = read_sweep(path, overrides)
    names = [s.name for s in sweep.settings]
    problems += [f"`--only`: no setting {n!r} (the file has {', '.join(names)})"
                 for n in only if n not in names]
    if sweep.base_config is not None and not Path(sweep.base_config).is_file():
        problems.append(f"`base_config`: {sweep.base_config!r} does not exist (a relative path "
                        "is read from the sweep file's folder).")
        sweep.base_config = None  # check the rest against the defaults
    store = Path(store) if store is not None else default_store(path)
    runs = [r for r in sweep.runs(store) if not only or r.setting.name in only]
    configs = _build_configs(sweep, runs, problems)
    if problems:
        raise ConfigError([f"{path}: {p}" for p in problems])
    jobs = [Job(r, cfg) for r, cfg in zip(runs, configs) if cfg is not None]
    _check_store(jobs, store)
    return Plan(sweep, store, jobs)


def _build_configs(sweep: Sweep, runs: list[Run], problems: list[str]
                   ) -> list[ExperimentConfig | None]:
    """Every run's config (``None`` where it has problems).

    A problem is told once, where it arises: in ``base``, in a setting, in a variant, or only in
    a setting with a variant.
    """

    found: dict[str, set[str]] = {}  # where -> its problems

    def attempt(overrides: list[str], known: set[str], where: str) -> ExperimentConfig | None:
        try:
            return load_config(sweep.base_config, overrides)
        except ConfigError as err:
            found[where] = set(err.problems)
            problems.extend(f"{where}: {p}" for p in err.problems
                            if p not in known and f"{where}: {p}" not in problems)
            return None

    base = _as_overrides(sweep.base)
    attempt(base, set(), "`base`")
    in_base = found.get("`base`", set())
    for s in sweep.settings:  # the setting's overrides alone, with its first variant's method
        first = sweep.variants[s.variants[0]].method
        attempt(base + _as_overrides({**s.overrides, "methods": [first]}), in_base,
                f"setting `{s.name}`")
    for label, v in sweep.variants.items():
        attempt(base + _as_overrides({"methods": [v.method],
                                      "method_options": {v.method: v.options}}),
                in_base, f"variant `{label}`")
    configs = []
    for run in runs:
        known = (in_base | found.get(f"setting `{run.setting.name}`", set())
                 | found.get(f"variant `{run.variant}`", set()))
        configs.append(attempt(sweep.overrides(run), known,
                               f"setting `{run.setting.name}`, variant `{run.variant}`"))
    return configs


def _check_store(jobs: list[Job], store: Path) -> None:
    """Refuse to skip or resume runs whose folder holds another config's results."""
    stale = []
    for job in jobs:
        has_results = (job.run.dir / RESULT).is_file() or \
            (job.run.dir / job.run.method / "checkpoint.pt").is_file()
        if not has_results or not (job.run.dir / "config.yaml").is_file():
            continue
        changed = config_changes(yaml.safe_load((job.run.dir / "config.yaml").read_text()) or {},
                                 job.cfg)
        if changed:
            stale.append(f"{job.run.name}: " + ", ".join(changed[:3]))
    if stale:
        raise ConfigError([f"{store} holds results of another config for these runs "
                           "(use another `--store`, or delete their folders to rerun them):",
                           *stale])


def status(run: Run) -> str:
    """``done``, ``failed``, ``resumes after round k`` or ``to run``."""
    if (run.dir / RESULT).is_file():
        return "done"
    if (run.dir / ERROR).is_file():
        return "failed"
    rounds = len(read_history(run.dir / run.method))
    return f"resumes after round {rounds}" if rounds else "to run"


# -- running -----------------------------------------------------------------------------------
def run_plan(plan: Plan, jobs: int = 2) -> dict[str, str]:
    """Run every job without ``result.json``, ``jobs`` at a time; return failures by run name.

    Saves the resolved sweep file as ``<store>/sweep.yaml`` first. A failed run's traceback goes
    to its ``error.txt``; the sweep goes on.
    """
    if jobs < 1:
        raise ConfigError(f"`--jobs` must be at least 1, got {jobs}.")
    plan.store.mkdir(parents=True, exist_ok=True)
    (plan.store / SWEEP_FILE).write_text(yaml.safe_dump(plan.sweep.to_dict(), sort_keys=False))
    todo = [j for j in plan.jobs if status(j.run) != "done"]
    log.info("%s: %d of %d runs to run, the others are done", plan.store, len(todo),
             len(plan.jobs))
    failures: dict[str, str] = {}
    bar = tqdm(total=len(todo), desc=f"sweep {plan.sweep.name}", unit="run")

    def finished(job: Job, error: str | None) -> None:
        if error is not None:
            failures[job.run.name] = error
            log.error("%s failed: %s (see %s)", job.run.name, error, job.run.dir / ERROR)
        bar.update()
        bar.set_postfix(failed=len(failures))

    if jobs == 1 or len(todo) <= 1:
        for job in todo:
            finished(job, execute(job))
    else:
        with ProcessPoolExecutor(min(jobs, len(todo)), mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(execute, job): job for job in todo}
            for future in as_completed(futures):
                job = futures[future]
                try:
                    error = future.result()
                except Exception as err:  # the worker process died (killed, out of memory)
                    error = f"worker process failed: {type(err).__name__}: {err}"
                    job.run.dir.mkdir(parents=True, exist_ok=True)
                    (job.run.dir / ERROR).write_text(error + "\n")
                finished(job, error)
    bar.close()
    return failures


def execute(job: Job) -> str | None:
    """Run one job to its ``result.json`` with one torch thread; the error if it failed.

    Resumes from the run's checkpoint when there is one. Progress bars and warnings of the run
    go to its ``log.txt``, its traceback to ``error.txt``.
    """
    from glora.sim.experiment import run_experiment  # transformers: only where a run trains

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    run = job.run
    run.dir.mkdir(parents=True, exist_ok=True)
    (run.dir / ERROR).unlink(missing_ok=True)
    started = time.perf_counter()
    try:
        with open(run.dir / LOG, "a") as out, contextlib.redirect_stderr(out):
            (row,) = run_experiment(job.cfg, resume=True, export=False)
    except Exception as err:
        (run.dir / ERROR).write_text(traceback.format_exc())
        return f"{type(err).__name__}: {err}"
    write_result(run, row, time.perf_counter() - started)
    return None


def write_result(run: Run, row: dict[str, Any], seconds: float) -> None:
    """``result.json``: what ran, its summary row and last record, and how to repeat it."""
    history = read_history(run.dir / run.method)
    result = {"setting": run.setting.name, "group": run.setting.group, "variant": run.variant,
              "method": run.method, "label": row["method"], "seed": run.seed, "summary": row,
              "final": history[-1] if history else None, "wall_seconds": seconds,
              "command": f"glora run --config {run.dir / 'config.yaml'}"}
    write_atomic(run.dir / RESULT, json.dumps(result, indent=1) + "\n")
