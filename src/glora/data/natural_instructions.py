"""Natural Instructions: instruction-following tasks for federated instruction tuning.

Two sources:

* the 61 Natural Instructions tasks (Mishra et al. 2022, https://arxiv.org/abs/2104.08773) that
  ship inside the ``bigbench==1.0.0`` source archive on PyPI, under
  ``bigbench/benchmark_tasks/natural_instructions/subtaskNNN_<name>/task.json`` (BIG-bench JSON:
  ``task_prefix`` holds the crowdsourcing instruction, ``examples`` the ``input``/``target``
  pairs, ``target`` one string or a list of references). :func:`fetch_bigbench_tasks` downloads
  the archive once (about 360 MB) and extracts only those files into the cache;
* official Super-NaturalInstructions task files (``Definition``, ``Instances`` with
  ``input``/``output``) for users who have them (:func:`load_superni_task`).

Task heterogeneity (the paper's setting): every client holds whole tasks
(:func:`glora.data.partition.by_task`), and a seeded set of *unseen* tasks is held out of
training altogether and only evaluated (:func:`split_tasks`).
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

import numpy as np

from glora.atomic import write_atomic
from glora.errors import ConfigError, GloraError

from .cache import _safe_relative, cache_dir, fetch_sdist

BIGBENCH_VERSION = "1.0.0"
#: Archive members holding a Natural Instructions task.
TASK_MEMBER = re.compile(r"^[^/]+/bigbench/benchmark_tasks/natural_instructions/"
                         r"(subtask\d+[^/]*)/task\.json$")
NUM_BIGBENCH_TASKS = 61


@dataclass(frozen=True)
class InstructionExample:
    """One example: its task, the task's instruction, the input and the reference outputs."""

    task: str
    instruction: str
    input: str
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class InstructionDataset:
    """Instruction-following examples of several tasks (``tasks`` for partitioning by task)."""

    examples: tuple[InstructionExample, ...]
    name: str = "natural_instructions"
    task_type: str = "generation"
    metrics: tuple[str, ...] = ("rougeL",)

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def tasks(self) -> list[str]:
        return [e.task for e in self.examples]

    @property
    def task_names(self) -> list[str]:
        return sorted(set(self.tasks))

    def subset(self, indices: Sequence[int]) -> InstructionDataset:
        return replace(self, examples=tuple(self.examples[int(i)] for i in indices))


@dataclass(frozen=True)
class InstructionSplits:
    """Training examples of the seen tasks, held-out examples of the seen tasks, and examples of
    the unseen tasks (never trained on)."""

    train: InstructionDataset
    test_seen: InstructionDataset
    test_unseen: InstructionDataset
    seen_tasks: tuple[str, ...]
    unseen_tasks: tuple[str, ...]


def _pip_version() -> str:
    try:
        return metadata.version("pip")
    except metadata.PackageNotFoundError:
        return "none"


def fetch_bigbench_archive() -> Path:
    """The ``bigbench-1.0.0.tar.gz`` source archive, downloaded into the cache once.

    Raises:
        GloraError: the download failed; pip 24 and newer refuse this archive (its metadata does
            not follow current packaging rules), so the message says to use ``pip<24`` or to
            download it by hand.
    """
    try:
        return fetch_sdist("bigbench", BIGBENCH_VERSION)
    except GloraError as err:
        pip = _pip_version()
        major = int(pip.split(".")[0]) if pip.split(".")[0].isdigit() else 0
        hint = (f"This environment has pip {pip}; pip 24 and newer refuse the bigbench 1.0.0 "
                "source archive. " if major >= 24 else "")
        raise GloraError(
            f"Cannot get the Natural Instructions tasks (inside bigbench=={BIGBENCH_VERSION}'s "
            f"source archive). {hint}Use pip<24 (`python -m pip install 'pip<24'`, e.g. in a "
            f"separate virtual environment) or download bigbench-{BIGBENCH_VERSION}.tar.gz from "
            f"https://pypi.org/project/bigbench/{BIGBENCH_VERSION}/#files by hand into "
            f"{cache_dir() / 'sdist'}.\n{err}") from None


def bigbench_tasks_dir() -> Path:
    """Where the Natural Instructions task files are extracted (``$GLORA_CACHE/natural_instructions``)."""
    return cache_dir() / "natural_instructions" / f"bigbench-{BIGBENCH_VERSION}"


def extract_task_files(archive: Path, dest: Path) -> list[Path]:
    """Stream ``archive`` once and extract every member matching :data:`TASK_MEMBER` to
    ``dest/<task>/task.json``; return the task files (sorted). An ``index.json`` listing them is
    written last, so a complete extraction is recognized and never repeated."""
    index = dest / "index.json"
    if index.is_file():
        return [dest / t / "task.json" for t in json.loads(index.read_text())["tasks"]]
    dest.mkdir(parents=True, exist_ok=True)
    found = []
    with tarfile.open(archive, "r|gz") as tar:
        for info in tar:
            match = TASK_MEMBER.match(info.name)
            if not match or not info.isfile():
                continue
            task = match.group(1)
            target = dest / _safe_relative(task) / "task.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(info)
            assert source is not None
            write_atomic(target, source.read())
            found.append(task)
    if not found:
        raise GloraError(f"{archive} holds no Natural Instructions task (no member like "
                         f"'bigbench/benchmark_tasks/natural_instructions/subtask*/task.json'); "
                         f"delete it and fetch it again.")
    found.sort()
    write_atomic(index, json.dumps({"tasks": found}, indent=1))
    return [dest / t / "task.json" for t in found]


def fetch_bigbench_tasks() -> list[Path]:
    """The 61 Natural Instructions task files, downloaded and extracted into the cache once."""
    dest = bigbench_tasks_dir()
    if (dest / "index.json").is_file():
        return extract_task_files(Path(), dest)
    return extract_task_files(fetch_bigbench_archive(), dest)


def _strip_definition(text: str) -> str:
    text = " ".join(text.split())
    return text[len("Definition:"):].strip() if text.startswith("Definition:") else text


def _as_outputs(value: object, where: str) -> tuple[str, ...]:
    outputs = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, list) else ()
    if not outputs or not all(isinstance(o, str) for o in outputs):
        raise ConfigError(f"{where}: the reference output must be a string or a list of strings, "
                          f"got {value!r:.80}.")
    return outputs


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read task file {str(path)!r}: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"task file {str(path)!r} must hold a JSON object.")
    return data


def load_bigbench_task(path: str | Path) -> list[InstructionExample]:
    """Examples of one BIG-bench-format Natural Instructions ``task.json``.

    The instruction is ``task_prefix`` (else ``description``) without its leading
    ``Definition:``; ``target`` is one reference or a list of them.
    """
    data = _read_json(Path(path))
    name = data.get("name") or Path(path).parent.name
    instruction = _strip_definition(str(data.get("task_prefix") or data.get("description") or ""))
    examples = data.get("examples")
    if not isinstance(examples, list) or not examples:
        raise ConfigError(f"task file {str(path)!r} has no `examples` list.")
    return [InstructionExample(name, instruction, str(e.get("input", "")),
                               _as_outputs(e.get("target"), f"{path} example {i}"))
            for i, e in enumerate(examples)]


def load_superni_task(path: str | Path) -> list[InstructionExample]:
    """Examples of one official Super-NaturalInstructions task file (``taskNNN_<name>.json``:
    ``Definition`` a string or list of strings, ``Instances`` with ``input`` and ``output``)."""
    data = _read_json(Path(path))
    if "Instances" not in data or "Definition" not in data:
        raise ConfigError(f"task file {str(path)!r} is not a Super-NaturalInstructions task: it "
                          f"needs `Definition` and `Instances` (has {sorted(data)[:6]}).")
    definition = data["Definition"]
    instruction = " ".join(definition) if isinstance(definition, list) else str(definition)
    name = Path(path).stem
    return [InstructionExample(name, " ".join(instruction.split()), str(inst.get("input", "")),
                               _as_outputs(inst.get("output"), f"{path} instance {i}"))
            for i, inst in enumerate(data["Instances"])]


def load_task_file(path: str | Path) -> list[InstructionExample]:
    """Examples of one task file in either format (recognized by its keys)."""
    data = _read_json(Path(path))
    return load_superni_task(path) if "Instances" in data else load_bigbench_task(path)


def task_files(source: str | Path) -> list[Path]:
    """The task files of a folder: ``*/task.json`` (BIG-bench layout) or ``*.json`` (Super-NI)."""
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"task folder {str(source)!r} does not exist.")
    files = sorted(folder.glob("*/task.json")) or sorted(
        p for p in folder.glob("*.json") if p.name != "index.json")
    if not files:
        raise ConfigError(f"task folder {str(source)!r} holds no task file (`<task>/task.json` "
                          "or `<task>.json`).")
    return files


def split_tasks(tasks: Sequence[str], unseen: float | int, seed: int) -> tuple[list[str], list[str]]:
    """A seeded split of task names into (seen, unseen), both sorted.

    Args:
        unseen: a fraction in ``[0, 1)`` of the tasks, or a whole number of tasks, held out.
    """
    names = sorted(set(tasks))
    if isinstance(unseen, bool) or unseen < 0:
        raise ConfigError(f"`unseen` must be a fraction in [0, 1) or a number of tasks, "
                          f"got {unseen!r}.")
    k = int(unseen) if isinstance(unseen, int) or unseen >= 1 else round(unseen * len(names))
    if k >= len(names):
        raise ConfigError(f"{k} unseen tasks of {len(names)} leave none to train on; hold out "
                          "fewer.")
    order = np.random.default_rng([seed, 23]).permutation(len(names))
    held = {names[i] for i in order[:k]}
    return [t for t in names if t not in held], sorted(held)


def cap_examples(examples: Sequence[InstructionExample], cap: int | None,
                 seed: int) -> list[InstructionExample]:
    """At most ``cap`` examples per task, a seeded sample (in file order); all with ``None``."""
    if cap is None:
        return list(examples)
    if cap < 1:
        raise ConfigError(f"the cap on examples per task must be at least 1, got {cap}.")
    by_task: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        by_task.setdefault(e.task, []).append(i)
    keep: list[int] = []
    for t, idx in sorted(by_task.items()):
        rng = np.random.default_rng([seed, 29, *t.encode()])
        keep += sorted(rng.permutation(idx)[:cap].tolist()) if len(idx) > cap else idx
    return [examples[i] for i in sorted(keep)]


def load_natural_instructions(source: str | Path | None = None, *, unseen: float | int = 0.2,
                              train_per_task: int | None = 64, test_per_task: int = 16,
                              tasks: Sequence[str] | None = None,
                              seed: int = 0) -> InstructionSplits:
    """Seen/unseen task splits of Natural Instructions.

    Args:
        source: a folder of task files (BIG-bench layout or Super-NI ``*.json``); ``None`` is the
            61 tasks of the ``bigbench`` archive (downloaded and extracted once).
        unseen: fraction (or number) of tasks held out of training, evaluated only.
        train_per_task: cap on training examples per seen task (``None``: all).
        test_per_task: held-out examples per task (seen tasks: drawn before the training cap so
            they are never trained on; unseen tasks: a sample of their examples).
        tasks: use only these tasks (names as in the files); ``None``: all.
        seed: seed of the task split and the samples.
    """
    files = task_files(source) if source is not None else fetch_bigbench_tasks()
    examples: list[InstructionExample] = []
    for f in files:
        examples += load_task_file(f)
    names = sorted({e.task for e in examples})
    if tasks is not None:
        missing = sorted(set(tasks) - set(names))
        if missing:
            raise ConfigError(f"unknown task(s) {missing[:4]}; known tasks look like {names[:3]}.")
        examples = [e for e in examples if e.task in set(tasks)]
    if test_per_task < 1:
        raise ConfigError(f"`test_per_task` must be at least 1, got {test_per_task}.")
    seen, held = split_tasks([e.task for e in examples], unseen, seed)
    held_set = set(held)
    test_idx = {id(e) for e in cap_examples(examples, test_per_task, seed + 1)}
    test = [e for e in examples if id(e) in test_idx]
    rest = [e for e in examples if id(e) not in test_idx and e.task not in held_set]
    train = cap_examples(rest, train_per_task, seed)
    too_few = sorted({e.task for e in test} & set(seen) - {e.task for e in train})
    if too_few:
        raise ConfigError(f"seen task(s) {too_few[:4]} have no example left for training after "
                          f"{test_per_task} test examples; lower `test_per_task`.")
    make = lambda ex, tag: InstructionDataset(tuple(ex), name=f"natural_instructions/{tag}")  # noqa: E731
    return InstructionSplits(make(train, "train"),
                             make([e for e in test if e.task not in held_set], "seen"),
                             make([e for e in test if e.task in held_set], "unseen"),
                             tuple(seen), tuple(held))
