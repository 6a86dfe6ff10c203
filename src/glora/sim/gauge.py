"""The gauge experiment (``glora gauge``): clients refactor their adapters, does the server notice?

A LoRA update ``s B A`` equals ``s (B M)(M^-1 A)`` for every invertible ``r x r`` matrix ``M``
(a gauge). A gauge-invariant method (GLoRA, FLoRA, FlexLoRA, FedEx-LoRA) aggregates the same
update whichever gauge each client picks; factor averaging (FedIT) does not. Here every client
applies its own random gauge to every layer after training (:class:`GaugeInjector`), and each
round records how much that changed the server's update, aggregating the same replies untouched
and gauged from the same server state (:func:`update_change`).

A factor the method freezes (FFA-LoRA's shared ``A``) is never uploaded: the server uses its own
copy. A client that gauges its factors therefore uploads ``B M`` while the server keeps ``A``, so
the server's update ``s (B M) A`` changes; that is what an FFA-LoRA server does with such a client.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from glora.atomic import write_atomic
from glora.config import CHOICES, ExperimentConfig, save_config
from glora.errors import ConfigError
from glora.global_model import LORA_A, LORA_B, ClientReply, GlobalModel, aggregate_model
from glora.federation.records import read_history
from glora.federation.prepare import Prepared, prepare
from glora.federation.summary import markdown_table, summarize
from glora.sim.simulator import Simulation
from glora.sim.workers import ClientExecutor

CHANGE_MAX, CHANGE_MEAN = "gauge_update_change_max", "gauge_update_change_mean"
OPTIONS_FILE = "gauge.json"
FLOOR = "gauge_rounding_floor"
SUFFIX = {"A": LORA_A, "B": LORA_B}


# -- the gauge -------------------------------------------------------------------------------
def gauge_matrix(rank: int, cond: float, rng: np.random.Generator) -> np.ndarray:
    """A random ``rank x rank`` float64 ``M = U diag(s) V^T`` with condition number ``cond``.

    ``U``, ``V`` are uniformly random orthogonal; ``s`` is log-spaced from ``cond^-1/2`` to
    ``cond^1/2`` (geometric mean 1, so ``B M`` and ``M^-1 A`` keep the scale of ``B`` and ``A``).
    At rank 1 a gauge is a number: ``M = +-1``.
    """
    U, V = (_orthogonal(rank, rng) for _ in range(2))
    s = cond ** np.linspace(-0.5, 0.5, rank) if rank > 1 else np.ones(1)
    return (U * s) @ V.T


def _orthogonal(n: int, rng: np.random.Generator) -> np.ndarray:
    """Haar-random orthogonal matrix (QR of a Gaussian, signs fixed by R's diagonal)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def layer_gauge(seed: int, round_: int, client: int, layer: str, rank: int,
                cond_range: tuple[float, float]) -> tuple[np.ndarray, float]:
    """The gauge of one client's layer in one round, and its condition number.

    The condition number is drawn log-uniformly from ``cond_range``; everything is a pure
    function of ``(seed, round_, client, layer)``, so a resumed run gauges exactly as before.
    """
    rng = np.random.default_rng([seed, round_, client, zlib.crc32(layer.encode()), 23])
    lo, hi = math.log(cond_range[0]), math.log(cond_range[1])
    cond = math.exp(rng.uniform(lo, hi)) if hi > lo else cond_range[0]
    return gauge_matrix(rank, cond, rng), cond


def gauge_adapter(adapter: dict[str, Tensor], seed: int, round_: int, client: int,
                  cond_range: tuple[float, float]) -> dict[str, Tensor]:
    """A copy of a PEFT adapter with ``B -> B M`` and ``A -> M^-1 A`` in every LoRA layer.

    Computed in float64 and cast back to each factor's dtype (clients send float32), so ``s B A``
    is unchanged up to rounding (about ``1e-8 cond(M)`` relative in float32).
    """
    out = dict(adapter)
    for key_a in sorted(k for k in adapter if k.endswith(LORA_A)):
        layer = key_a.removesuffix(LORA_A)
        key_b = layer + LORA_B
        B, A = adapter[key_b], adapter[key_a]
        M = torch.from_numpy(layer_gauge(seed, round_, client, layer, A.shape[0], cond_range)[0])
        out[key_b] = (B.double() @ M).to(B.dtype)
        out[key_a] = torch.linalg.solve(M, A.double()).to(A.dtype)
    return out


class GaugeInjector:
    """Callable like the executor it wraps: trains the tasks, returns every result gauged.

    Of the last call it keeps the untouched results (``raw``), the gauged factors the clients
    hold (``held``) and what they send (``gauged``, returned): ``held`` with the factors each
    task froze as they were, since the server keeps its own shared copy of a frozen factor
    (FFA-LoRA's ``A``, the factor RoLoRA does not train in a round) and never receives the
    client's.
    """

    def __init__(self, execute: Callable[[list], list], seed: int,
                 cond_range: tuple[float, float]) -> None:
        self.execute, self.seed, self.cond_range = execute, seed, cond_range
        self.raw: list = []
        self.held: list = []
        self.gauged: list = []

    def __call__(self, tasks: list) -> list:
        self.raw = self.execute(tasks)
        self.held = [dataclasses.replace(r, adapter=gauge_adapter(
            r.adapter, self.seed, t.round, r.client_id, self.cond_range))
            for t, r in zip(tasks, self.raw)]
        self.gauged = [dataclasses.replace(h, adapter={
            k: r.adapter[k] if k.endswith(tuple(SUFFIX[f] for f in t.frozen)) else v
            for k, v in h.adapter.items()}) for t, r, h in zip(tasks, self.raw, self.held)]
        return self.gauged


# -- what the gauge changes on the server ----------------------------------------------------
def update_change(previous: GlobalModel, raw: list[ClientReply], gauged: list[ClientReply],
                  held: list[ClientReply]) -> dict[str, float]:
    """How much the gauge changes one round's server update (pure: ``previous`` is untouched).

    Per layer ``||dW_gauged - dW_raw||_F / ||dW_raw||_F``, ``dW`` being the round's change of the
    global model's total delta on the frozen weight (adapter plus folded FLoRA merges and FedEx
    residuals) when aggregating ``raw`` or ``gauged`` from ``previous``: max and mean over layers.
    Beside it, the rounding floor: the change of the exact average ``sum_i p_i s_i B_i A_i`` from
    ``raw`` to ``held`` (the clients' own gauged factors) over the same ``||dW_raw||_F``, which
    an exactly gauge-invariant server would also show (max over layers).
    """
    before = previous.total_delta()
    plain = aggregate_model(previous, raw).total_delta()
    changed = aggregate_model(previous, gauged).total_delta()
    ratios, floors = [], []
    for key, new in plain.items():
        step = new.double() - before[key].double() if key in before else new.double()
        norm = float(torch.linalg.norm(step))
        ratios.append(_ratio(float(torch.linalg.norm(changed[key].double() - new.double())), norm))
        rounding = _exact_average(held, key) - _exact_average(raw, key)
        floors.append(_ratio(float(torch.linalg.norm(rounding)), norm))
    return {CHANGE_MAX: max(ratios), CHANGE_MEAN: sum(ratios) / len(ratios), FLOOR: max(floors)}


def _ratio(diff: float, norm: float) -> float:
    return diff / norm if norm > 0 else (0.0 if diff == 0 else math.inf)


def _exact_average(replies: list[ClientReply], layer: str) -> Tensor:
    """Dense float64 ``sum_i p_i s_i B_i A_i`` of one layer."""
    total = sum(r.num_examples for r in replies)
    return sum((r.num_examples / total * r.scaling) * r.adapter[layer + LORA_B].double()
               @ r.adapter[layer + LORA_A].double() for r in replies)


class GaugedSimulation(Simulation):
    """A :class:`Simulation` whose clients gauge their results; every round's record also holds
    :func:`update_change` over its accepted replies (``gauge_update_change_max`` / ``_mean``,
    ``gauge_rounding_floor``), so they land in ``metrics.jsonl`` and the checkpoint."""

    def __init__(self, cfg: ExperimentConfig, method: str, prepared: Prepared, out_dir: Path,
                 executor: Callable[[list], list], cond_range: tuple[float, float]) -> None:
        self.injector = GaugeInjector(executor, cfg.seed, cond_range)
        super().__init__(cfg, method, prepared, out_dir, self.injector)

    def _round(self) -> dict[str, Any]:
        previous = self.server.state.model
        record = super()._round()  # already in the history: updating it updates the metrics
        accepted = set(record["clients"])
        replies = [self._replies([r for r in results if r.client_id in accepted])
                   for results in (self.injector.raw, self.injector.gauged, self.injector.held)]
        record.update(update_change(previous, *replies))
        return record

    def _replies(self, results: list) -> list[ClientReply]:
        """Results as the server aggregates them: its scalings and its safeguards."""
        replies = [ClientReply(r.client_id, r.adapter, r.head, r.num_examples,
                               self.server.scaling(r.client_id)) for r in results]
        return self.server._guard(replies)


# -- the command -----------------------------------------------------------------------------
def check_options(cond_range: tuple[float, float], inits: list[str]) -> None:
    """Reject a bad condition-number range or init list, naming the option and the fix."""
    problems = []
    lo, hi = cond_range
    if not (1 <= lo <= hi < math.inf):
        problems.append(f"`--cond-min` {lo} and `--cond-max` {hi} must satisfy "
                        "1 <= cond-min <= cond-max (finite), e.g. --cond-min 1 --cond-max 1000.")
    allowed = CHOICES["train.init"]
    if not inits or any(i not in allowed for i in inits) or len(set(inits)) != len(inits):
        problems.append(f"`--init` must be a comma-separated list of distinct values from "
                        f"{list(allowed)}, got {','.join(inits) or 'nothing'!r}.")
    if problems:
        raise ConfigError(problems)


def run_gauge(cfg: ExperimentConfig, cond_range: tuple[float, float] = (1.0, 1000.0),
              inits: list[str] | None = None, resume: bool = False) -> list[dict[str, Any]]:
    """Every method of ``cfg`` and init mode, untouched and gauged; write and return the rows.

    ``resume``: continue every run from its checkpoint (finished runs are only read back).

    Results go to ``<output_dir>/gauge/<init>/<method>/{plain,gauged}/`` (each with its
    ``metrics.jsonl``), the table to ``<output_dir>/gauge/gauge.md`` and ``gauge.csv``, the
    options to ``gauge.json`` (:func:`report_gauge` rebuilds the table from these files alone).
    """
    inits = list(CHOICES["train.init"]) if inits is None else inits
    check_options(cond_range, inits)
    out = Path(cfg.output_dir) / "gauge"
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    prepared = prepare(cfg)
    metric = "global_" + prepared.metrics[0]
    write_atomic(out / OPTIONS_FILE, json.dumps({"cond_range": list(cond_range), "inits": inits,
                                                 "methods": cfg.methods, "metric": metric}))
    bar = tqdm(total=2 * len(inits) * len(cfg.methods) * cfg.train.rounds, unit="round")
    with ClientExecutor(prepared.model_spec, cfg.workers, cfg.train.device) as executor:
        for init in inits:
            run_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init=init))
            (out / init).mkdir(exist_ok=True)
            save_config(run_cfg, out / init / "config.yaml")  # `glora run --config`: the plain runs
            for method in cfg.methods:
                where = out / init / method
                plain = Simulation(run_cfg, method, prepared, where / "plain", executor)
                gauged = GaugedSimulation(run_cfg, method, prepared, where / "gauged", executor,
                                          cond_range)
                for name, sim in (("plain", plain), ("gauged", gauged)):
                    bar.set_description(f"{sim.label} {init} {name}")
                    sim.run(resume=resume, progress=lambda record: bar.update())
    bar.close()
    return report_gauge(out)


def report_gauge(out: Path) -> list[dict[str, Any]]:
    """Rebuild ``gauge.md`` and ``gauge.csv`` in a gauge folder (``<output_dir>/gauge``) from its
    ``gauge.json`` and the runs' ``metrics.jsonl`` (no checkpoint needed); return the rows.

    Raises:
        ConfigError: the folder is not a finished gauge experiment (names what is missing).
    """
    out = Path(out)
    if not (out / OPTIONS_FILE).is_file():
        raise ConfigError(f"{out / OPTIONS_FILE} does not exist: is {str(out)!r} the `gauge` "
                          "folder of a finished `glora gauge` run?")
    options = json.loads((out / OPTIONS_FILE).read_text())
    metric = options["metric"]
    rows = []
    for init in options["inits"]:
        for method in options["methods"]:
            plain, gauged = (read_history(out / init / method / name)
                             for name in ("plain", "gauged"))
            if not plain or not gauged:
                raise ConfigError(f"{out / init / method}: the plain or gauged run has no "
                                  "`metrics.jsonl`; finish it with `glora gauge --resume`.")
            rows.append(_row(plain, gauged, init, [metric, "global_loss"]))
    write_gauge_table(rows, out, tuple(options["cond_range"]), metric)
    return rows


def _row(plain: list[dict[str, Any]], gauged: list[dict[str, Any]], init: str,
         metrics: list[str]) -> dict[str, Any]:
    """One table row from the untouched and the gauged run's records: the largest update change,
    round 1's, and each final metric both ways (the loss too: it moves where an accuracy does
    not)."""
    label = plain[-1].get("label", plain[-1]["method"])
    row: dict[str, Any] = {"method": label, "init": init,
                           "update_change_max": max(h[CHANGE_MAX] for h in gauged),
                           "update_change_round1": gauged[0][CHANGE_MAX],
                           "rounding_floor": max(h[FLOOR] for h in gauged)}
    for metric in dict.fromkeys(metrics):
        untouched = summarize(label, plain).get(metric)
        with_gauge = summarize(label, gauged).get(metric)
        row.update({f"{metric}_untouched": untouched, f"{metric}_gauged": with_gauge,
                    f"{metric}_difference": None if untouched is None or with_gauge is None
                    else with_gauge - untouched})
    return row


def gauge_note(cond_range: tuple[float, float], metric: str) -> str:
    """What the table's columns mean, and how FFA-LoRA is treated."""
    return (
        f"Every client gauges every layer after training: `B -> B M`, `A -> M^-1 A`, `M` random "
        f"with condition number log-uniform in [{cond_range[0]:g}, {cond_range[1]:g}], sent in "
        "float32. `update_change` = `||dW_gauged - dW_raw||_F / ||dW_raw||_F` per layer, `dW` the "
        "round's change of the global model's total delta on the frozen weight (FLoRA merges and "
        "FedEx residuals included), aggregating the same replies untouched and gauged from the "
        "same server state: the max over layers and rounds, and over layers in round 1. "
        "`rounding_floor`: the same ratio for the exact average `sum p_i s_i B_i A_i` of the "
        "clients' gauged float32 factors, what an exactly gauge-invariant server would show "
        "from rounding alone (max over layers and rounds). "
        f"`{metric}`, `global_loss`: the final global model of the run without and with gauges "
        "(same seeds and data). FFA-LoRA freezes a shared `A` that clients never upload: a gauging client uploads "
        "`B M` and the server keeps its `A`, so its update changes; FFA-LoRA also keeps that "
        "shared `A` under `init=independent`.")


def write_gauge_table(rows: list[dict[str, Any]], out: Path, cond_range: tuple[float, float],
                      metric: str) -> None:
    """``gauge.md`` (table and note) and ``gauge.csv`` under ``out``."""
    shown = [{k: f"{v:.2e}" if k.startswith(("update_change", "rounding")) else v
              for k, v in r.items()}
             for r in rows]
    (out / "gauge.md").write_text(markdown_table(shown) + "\n\n" + gauge_note(cond_range, metric)
                                  + "\n")
    with open(out / "gauge.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
