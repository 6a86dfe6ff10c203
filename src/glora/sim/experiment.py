"""``glora run``: several methods on the same partitions and seeds, then the table and the plot."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from glora.atomic import write_atomic
from glora.config import ExperimentConfig
from glora.federation import output
from glora.federation.prepare import Prepared, prepare
from glora.federation.summary import UNTUNED_FILE, summarize, write_summary
from glora.sim.simulator import Simulation
from glora.sim.workers import ClientExecutor

log = logging.getLogger("glora.sim")
UNTUNED = "untuned (zero-shot)"


def run_experiment(cfg: ExperimentConfig, resume: bool = False, stop_after: int | None = None,
                   export: bool = True, overwrite: bool = False,
                   force: bool = False) -> list[dict[str, Any]]:
    """Run every method of ``cfg``; write results under ``cfg.output_dir``; return summary rows.

    The folder is locked while the run writes it, and claimed first (:func:`output.claim`): a
    folder holding another run is refused unless ``resume`` (under the same config, or
    ``force``) or ``overwrite``.
    """
    out = Path(cfg.output_dir)
    with output.locked(out):
        output.claim(cfg, resume, overwrite, force)
        return _run(cfg, out, resume, stop_after, export)


def _run(cfg: ExperimentConfig, out: Path, resume: bool, stop_after: int | None,
         export: bool) -> list[dict[str, Any]]:
    prepared = prepare(cfg)
    rows = [untuned_row(prepared, out)] if cfg.eval.baseline else []
    with ClientExecutor(prepared.model_spec, cfg.workers, cfg.train.device) as executor:
        for method in cfg.methods:
            sim = Simulation(cfg, method, prepared, out / method, executor)
            started = time.perf_counter()
            bar = tqdm(total=cfg.train.rounds, desc=sim.label, unit="round", leave=True)

            def progress(record: dict[str, Any], bar: tqdm = bar) -> None:
                bar.n = record["round"]  # also right after a resume
                bar.refresh()
                shown = {k: f"{v:.3f}" for k, v in record.items()
                         if k.startswith(("global_", "personal_")) and isinstance(v, float)}
                bar.set_postfix(loss=f"{record['train_loss']:.3f}", **shown)

            state = sim.run(resume=resume, stop_after=stop_after, progress=progress).state
            bar.close()
            if export and state.model.round == cfg.train.rounds:
                prepared.export(state.model, out / method / "adapter")
            rows.append(summarize(sim.label, state.history, time.perf_counter() - started))
    write_summary(rows, out, cfg.methods)
    return rows


def untuned_row(prepared: Prepared, out: Path) -> dict[str, Any]:
    """The pretrained model without any adapter (zero-shot), scored once and kept in
    ``untuned.json`` so a resumed run does not score it again."""
    path = out / UNTUNED_FILE
    if path.is_file():
        return json.loads(path.read_text())
    started = time.perf_counter()
    row = {"method": UNTUNED, "rounds": 0, **prepared.evaluate({}, {}, prefix="global_"),
           "wall_seconds": time.perf_counter() - started}
    write_atomic(path, json.dumps(row))
    return row
