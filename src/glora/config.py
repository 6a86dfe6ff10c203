"""Experiment configuration: dataclasses validated as a whole, YAML files, ``key=value`` overrides.

Every problem (unknown key, wrong type, impossible combination) is collected and raised together as
one :class:`~glora.errors.ConfigError` before any training starts.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from glora.atomic import write_atomic
from glora.errors import ConfigError


@dataclass
class DataConfig:
    """Dataset and partition. ``dataset``: ``rotten_tomatoes``, ``glue/<task>``, or a CSV/JSONL path."""

    dataset: str = "rotten_tomatoes"
    test_file: str | None = None
    partition: str = "dirichlet"  # iid | dirichlet | task
    alpha: float = 1.0  # Dirichlet concentration: smaller is more skewed
    num_clients: int = 8
    min_client_size: int = 16
    max_length: int = 40  # tokens per example (a Rotten Tomatoes sentence averages ~28)
    max_test_examples: int | None = 500  # cap on the held-out set used for evaluation
    # Classes of a classification task (null: counted from the training labels). A Flower server
    # holds no data and needs it; a node whose data lack the last classes needs it too.
    num_labels: int | None = None
    options: dict[str, Any] = field(default_factory=dict)  # loader options (natural_instructions)


@dataclass
class ModelConfig:
    """Backbone. ``name``: a Hugging Face id or local path; ``None`` is the packaged MiniLM-L6."""

    name: str | None = None
    # Modules that get LoRA; null: PEFT's default for the architecture (query/value for BERT,
    # q_proj/v_proj for Llama), or an error listing the model's linear layers where it has none.
    target_modules: list[str] | None = None
    # The frozen base's dtype: fp32, or bf16/fp16 for half its memory (then `train.precision`
    # must be the same; LoRA factors, head and optimizer state stay float32).
    dtype: str = "fp32"


@dataclass
class LoraConfig:
    """Client adapters. ``ranks`` is cycled over clients (or drawn from, with ``rank_sampling: random``)."""

    ranks: list[int] = field(default_factory=lambda: [2, 4, 8, 16])
    rank_sampling: str = "cycle"  # cycle | random
    alpha: float = 16.0
    rslora: bool = False  # scaling alpha/sqrt(r) instead of alpha/r
    dropout: float = 0.0
    # What a method that needs equal ranks (FedIT, FFA-LoRA, FedSA-LoRA, FedEx-LoRA, LoRA-FAIR)
    # does under mixed ranks: run every client at the smallest (`min`) or largest (`max`) rank of
    # the list, labelled as such in the results, or stop with an error (`error`).
    equal_rank: str = "min"


@dataclass
class TrainConfig:
    """Rounds and local training."""

    rounds: int = 8
    local_steps: int = 10
    batch_size: int = 16
    lr: float = 5e-3
    # The classification head's rate (null: `lr`). A fresh head on label-skewed clients is what
    # Adam moves most per step; a lower rate keeps the averaged head from flipping classes.
    head_lr: float | None = None
    # `constant`, or `cosine`: the rates decay over the rounds (glora.federation.plan.round_lr).
    lr_schedule: str = "cosine"
    optimizer: str = "adamw"  # adamw | sgd
    weight_decay: float = 0.0
    participation: float = 1.0  # fraction of clients sampled per round
    # Fresh adapter inits: `shared` (one per round, every client the same start) or
    # `independent` (one per client and round). FFA-LoRA always shares its frozen `A`.
    init: str = "shared"
    # Where clients train and the server evaluates: auto (CUDA, then MPS, then CPU) | cpu | cuda
    # | cuda:N | mps. Simulator workers take the visible GPUs in turn.
    device: str = "auto"
    precision: str = "fp32"  # fp32 | bf16 | fp16: autocast of the forward pass (LoRA stays fp32)
    grad_accum_steps: int = 1  # micro-batches a step's batch is split into (same step, less memory)
    gradient_checkpointing: bool = False  # recompute activations in the backward pass
    # DP-SGD on every client (Opacus): per-example gradients clipped to dp_max_grad_norm, Gaussian
    # noise of dp_noise_multiplier times that; or dp_epsilon, the ε (at dp_delta) the whole run
    # may spend on the client of the largest sampling rate, from which the noise is set.
    dp_noise_multiplier: float | None = None
    dp_epsilon: float | None = None
    dp_max_grad_norm: float = 1.0
    dp_delta: float = 1e-5


@dataclass
class EvalConfig:
    """Evaluation of the global model (and personalized models where a method keeps local parts)."""

    every: int = 2  # rounds between evaluations (the last round is always evaluated)
    batch_size: int = 128
    baseline: bool = False  # also score the untuned pretrained model once (the table's first row)
    # Federated evaluation: each client scores the global model on its own test split, and the
    # `federated_*` metrics are their means weighted by test examples (always on with Flower).
    federated: bool = False
    # Flower: a held-out set on the server's machine (what `data.dataset` can name) on which the
    # server also scores the global model (`global_*`); null: only the nodes evaluate.
    server_data: str | None = None
    # Each round's update against the exact average and the best rank-R truncation of the same
    # replies (`shadow_*`). Its cost grows as d (sum r_i)^2: turn it off for many clients a round.
    shadow: bool = True


@dataclass
class ServerConfig:
    """How the server screens client replies and guards the aggregate (every method).

    A reply that fails a check (keys, shapes and rank of what was sent, finite values, the bounds
    below) is left out of its round, logged and recorded (``rejected`` in the round's record).
    The robust safeguards (``clip_norm``, ``max_client_weight``) change what valid replies count
    for; both are off by default.
    """

    min_clients: int = 1  # fewest valid replies a round aggregates; fewer: retry, then stop
    retries: int = 0  # times a round with too few valid replies is run again before stopping
    # Reject a reply whose ||s B A||_F exceeds this in a layer: a number, null (no bound), or
    # `auto`: above `norm_factor` times the median of the round's valid replies (3 or more).
    max_update_norm: float | str | None = "auto"
    norm_factor: float = 10.0
    max_examples: int | None = None  # reject a reply claiming more training examples than this
    clip_norm: float | None = None  # scale a reply's update down to ||s B A||_F <= this per layer
    max_client_weight: float | None = None  # cap on one client's share of a round's weight
    # Where the aggregation runs (`cpu`, `auto`, `cuda[:N]`, `mps`); states come back to the CPU.
    device: str = "cpu"
    # Layers aggregated at once, in threads that share the process's torch and BLAS threads.
    threads: int = 1
    # Fold each valid reply into running sums as it is screened (glora.global_model's
    # ModelAccumulator), for the methods whose aggregate is linear in the factors: the server's
    # state stays O(d r) a layer however many clients reply. The other methods aggregate the
    # round's list. Needs the checks that see one reply at a time: `max_update_norm` a number or
    # null, no `max_client_weight`, `eval.shadow: false`.
    stream: bool = False


@dataclass
class ExperimentConfig:
    """One ``glora run``: several methods on the same partitions and seeds."""

    methods: list[str] = field(
        default_factory=lambda: ["glora", "flexlora", "fedit"])
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    seed: int = 0
    output_dir: str = "runs/default"
    workers: int = 2  # simulated clients run in this many processes, one torch thread each
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    server: ServerConfig = field(default_factory=ServerConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: Keys added after runs were stored, with the value those runs had (a saved config without the
#: key ran that way): the sweep compares a stored run's config with this filled in.
IMPLIED_BEFORE = {"train.lr_schedule": "constant", "train.device": "auto",
                  "train.precision": "fp32", "train.grad_accum_steps": 1,
                  "train.gradient_checkpointing": False, "train.dp_noise_multiplier": None,
                  "train.dp_epsilon": None, "train.dp_max_grad_norm": 1.0,
                  "train.dp_delta": 1e-5, "server.norm_factor": 10.0,
                  "data.num_labels": None, "eval.federated": False, "eval.server_data": None,
                  "model.dtype": "fp32", "server.device": "cpu", "server.threads": 1,
                  "server.stream": False, "eval.shadow": True}

CHOICES = {"data.partition": ("iid", "dirichlet", "task"), "lora.rank_sampling": ("cycle", "random"),
           "lora.equal_rank": ("min", "max", "error"), "train.optimizer": ("adamw", "sgd"),
           "train.lr_schedule": ("constant", "cosine"),
           "train.init": ("shared", "independent")}


def _check_type(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_check_type(value, t) for t in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is Any:
        return True
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_check_type(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _as_float(value: Any, tp: Any) -> Any:
    """``value`` as a float where ``tp`` takes one and ``value`` is a number written as text.

    YAML 1.1 (PyYAML) reads ``2e-3`` (no dot in the mantissa) as a string, not a float.
    """
    if isinstance(value, str) and _check_type(1.0, tp):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _build(cls: type, raw: dict[str, Any], prefix: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if key not in fields:
            problems.append(f"unknown key `{path}`; allowed keys here: {sorted(fields)}.")
            continue
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                problems.append(f"`{path}` must be a mapping of {sorted(f.name for f in dataclasses.fields(tp))}.")
                continue
            kwargs[key] = _build(tp, value, path + ".", problems)
            continue
        value = _as_float(value, tp)
        if not _check_type(value, tp):
            problems.append(f"`{path}` must be of type {getattr(tp, '__name__', tp)}, got {value!r}.")
        else:
            kwargs[key] = float(value) if tp is float else value
    return cls(**kwargs)


def _validate(cfg: ExperimentConfig, problems: list[str]) -> None:
    from glora.aggregation import get_method, methods
    from glora.devices import DEVICES, PRECISIONS, is_device_name, resolve_device

    if cfg.train.precision not in PRECISIONS:
        problems.append(f"`train.precision` must be one of {list(PRECISIONS)}, got "
                        f"{cfg.train.precision!r}.")
    if cfg.model.dtype not in PRECISIONS:
        problems.append(f"`model.dtype` must be one of {list(PRECISIONS)}, got "
                        f"{cfg.model.dtype!r}.")
    elif cfg.model.dtype != "fp32" and cfg.train.precision != cfg.model.dtype:
        problems.append(f"`model.dtype: {cfg.model.dtype}` needs `train.precision: "
                        f"{cfg.model.dtype}`: autocast runs the float32 LoRA factors and head "
                        f"against the {cfg.model.dtype} base (got `{cfg.train.precision}`).")
    try:
        resolve_device(cfg.train.device)
    except ConfigError as err:
        problems.append(str(err))
    if not is_device_name(cfg.server.device):  # present where the server runs: checked there
        problems.append(f"`server.device` must be one of {list(DEVICES)}, got "
                        f"{cfg.server.device!r}.")
    _validate_dp(cfg.train, problems)
    if not 1 <= cfg.train.grad_accum_steps <= max(cfg.train.batch_size, 1):
        problems.append(f"`train.grad_accum_steps` must be between 1 and `train.batch_size` "
                        f"({cfg.train.batch_size}), got {cfg.train.grad_accum_steps}.")

    for path, allowed in CHOICES.items():
        section, key = path.split(".")
        value = getattr(getattr(cfg, section), key)
        if value not in allowed:
            problems.append(f"`{path}` must be one of {list(allowed)}, got {value!r}.")
    known = methods()
    for m in cfg.methods:
        if m not in known:
            problems.append(f"unknown method {m!r} in `methods`; known methods: {known}.")
    if not cfg.methods:
        problems.append("`methods` is empty; name at least one of " f"{known}.")
    for m, opts in cfg.method_options.items():
        if m not in known:
            problems.append(f"`method_options.{m}`: unknown method; known methods: {known}.")
            continue
        try:
            get_method(m).make_config(**opts)
        except (ConfigError, TypeError, ValueError) as err:
            problems.append(f"`method_options.{m}`: {err}")
    positive = {"data.num_clients": cfg.data.num_clients, "data.max_length": cfg.data.max_length,
                "train.rounds": cfg.train.rounds, "train.local_steps": cfg.train.local_steps,
                "train.batch_size": cfg.train.batch_size, "workers": cfg.workers,
                "eval.every": cfg.eval.every, "eval.batch_size": cfg.eval.batch_size,
                **({} if cfg.data.num_labels is None else {"data.num_labels": cfg.data.num_labels})}
    for path, value in positive.items():
        if value < 1:
            problems.append(f"`{path}` must be at least 1, got {value}.")
    if not cfg.lora.ranks or any(r < 1 for r in cfg.lora.ranks):
        problems.append(f"`lora.ranks` must be a non-empty list of positive ranks, got {cfg.lora.ranks}.")
    if not 0 < cfg.train.participation <= 1:
        problems.append(f"`train.participation` must be in (0, 1], got {cfg.train.participation}.")
    if cfg.data.alpha <= 0:
        problems.append(f"`data.alpha` must be positive, got {cfg.data.alpha}.")
    if cfg.train.lr <= 0:
        problems.append(f"`train.lr` must be positive, got {cfg.train.lr}.")
    if cfg.train.head_lr is not None and cfg.train.head_lr <= 0:
        problems.append(f"`train.head_lr` must be positive or null, got {cfg.train.head_lr}.")
    _validate_server(cfg, problems)
    if len(set(cfg.lora.ranks)) > 1 and cfg.lora.equal_rank == "error":
        fixed = [m for m in cfg.methods if m in known and not get_method(m).mixed_ranks]
        if fixed:
            problems.append(f"methods {fixed} need equal client ranks but `lora.ranks` is "
                            f"{cfg.lora.ranks}; set `lora.equal_rank=min` (or max) to run them at one "
                            "rank, give one rank, or drop them from `methods`.")


def _validate_dp(train: TrainConfig, problems: list[str]) -> None:
    """The ``train.dp_*`` keys: one way to set the noise, bounds, and what DP-SGD excludes."""
    if train.dp_noise_multiplier is None and train.dp_epsilon is None:
        return
    if train.dp_noise_multiplier is not None and train.dp_epsilon is not None:
        problems.append("set `train.dp_noise_multiplier` or `train.dp_epsilon`, not both.")
    if train.dp_noise_multiplier is not None and not 0 <= train.dp_noise_multiplier < math.inf:
        problems.append(f"`train.dp_noise_multiplier` must be a non-negative number, got "
                        f"{train.dp_noise_multiplier}.")
    if train.dp_epsilon is not None and not 0 < train.dp_epsilon < math.inf:
        problems.append(f"`train.dp_epsilon` must be positive, got {train.dp_epsilon}.")
    if not 0 < train.dp_max_grad_norm < math.inf:
        problems.append(f"`train.dp_max_grad_norm` must be positive, got {train.dp_max_grad_norm}.")
    if not 0 < train.dp_delta < 1:
        problems.append(f"`train.dp_delta` must be in (0, 1), got {train.dp_delta}.")
    if train.grad_accum_steps != 1 or train.gradient_checkpointing or train.precision != "fp32":
        problems.append("DP-SGD (`train.dp_*`) needs `train.precision=fp32`, "
                        "`train.grad_accum_steps=1` and no gradient checkpointing.")


def _validate_server(cfg: ExperimentConfig, problems: list[str]) -> None:
    """Bounds of the ``server`` section, and minimums a round can meet."""
    srv = cfg.server
    if srv.min_clients < 1:
        problems.append(f"`server.min_clients` must be at least 1, got {srv.min_clients}.")
    if srv.retries < 0:
        problems.append(f"`server.retries` must be at least 0, got {srv.retries}.")
    if srv.threads < 1:
        problems.append(f"`server.threads` must be at least 1, got {srv.threads}.")
    if srv.max_examples is not None and srv.max_examples < 1:
        problems.append(f"`server.max_examples` must be a positive integer or null, got "
                        f"{srv.max_examples}.")
    if srv.max_update_norm != "auto" and isinstance(srv.max_update_norm, str):
        problems.append(f"`server.max_update_norm` must be a positive number, `auto` or null, "
                        f"got {srv.max_update_norm!r}.")
    if not 1 < srv.norm_factor < math.inf:
        problems.append(f"`server.norm_factor` must be a number above 1, got {srv.norm_factor}.")
    for key in ("max_update_norm", "clip_norm"):
        value = getattr(srv, key)
        if value is not None and not isinstance(value, str) and not 0 < value < math.inf:
            problems.append(f"`server.{key}` must be a positive number or null, got {value}.")
    if srv.stream:
        whole = [f"`{key}: {value}`" for key, value, needs_all in (
            ("server.max_update_norm", srv.max_update_norm, srv.max_update_norm == "auto"),
            ("server.max_client_weight", srv.max_client_weight, srv.max_client_weight is not None),
            ("eval.shadow", "true", cfg.eval.shadow)) if needs_all]
        if whole:
            problems.append(f"`server.stream: true` folds replies one at a time, but "
                            f"{' and '.join(whole)} need the whole round at once: set "
                            "`server.max_update_norm` to a number or null, "
                            "`server.max_client_weight: null` and `eval.shadow: false`, or "
                            "`server.stream: false`.")
    share = srv.max_client_weight
    if share is not None and not 0 < share <= 1:
        problems.append(f"`server.max_client_weight` must be in (0, 1] or null, got {share}.")
    if cfg.data.num_clients < 1 or not 0 < cfg.train.participation <= 1:
        return  # reported above; the combinations below need a valid round size
    per_round = clients_per_round(cfg)
    if srv.min_clients > per_round:
        problems.append(f"`server.min_clients` is {srv.min_clients} but only {per_round} clients "
                        "take part in a round (`data.num_clients` x `train.participation`); "
                        f"allowed: 1..{per_round}.")
    if share is not None and 0 < share < 1 / per_round:
        problems.append(f"`server.max_client_weight` is {share} but {per_round} clients per round "
                        f"cannot all stay below it; allowed: {1 / per_round:.4g}..1 or null.")


def clients_per_round(cfg: ExperimentConfig) -> int:
    """How many clients a round samples: ``train.participation`` of ``data.num_clients``."""
    n = cfg.data.num_clients
    return min(n, max(1, round(cfg.train.participation * n)))


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["train.rounds=3", "methods=[glora,fedit]"]`` -> a nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item or item.startswith("-"):
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.rounds=3).")
        key, value = item.split("=", 1)
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value) if value != "" else None
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in extra.items():
        merged[k] = _merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The mapping a YAML file holds (empty file: ``{}``).

    Raises:
        ConfigError: the file is missing, not YAML, or not a mapping (``what`` names it).
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {str(p)!r} does not exist.")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {str(p)!r} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} {str(p)!r} must hold a mapping at the top level.")
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Defaults, then the YAML file, then ``key=value`` overrides; validated as a whole."""
    raw = {} if path is None else read_yaml_mapping(path, "config file")
    raw = _merge(raw, parse_overrides(overrides or []))
    problems: list[str] = []
    cfg = _build(ExperimentConfig, raw, "", problems)
    if not problems:
        _validate(cfg, problems)
    if problems:
        raise ConfigError(problems)
    return cfg


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{data: {alpha: 0.1}}`` -> ``{"data.alpha": 0.1}`` (empty mappings stay values)."""
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        flat.update(flatten(v, key + ".") if isinstance(v, dict) and v else {key: v})
    return flat


def config_changes(stored: dict[str, Any], cfg: ExperimentConfig,
                   ignore: tuple[str, ...] = ("output_dir",)) -> list[str]:
    """How ``cfg`` differs from a stored run's config (a ``config.yaml`` read as a mapping):
    ``"`key` old -> new"`` per changed key, keys added since it was stored taken at the value
    the run had (:data:`IMPLIED_BEFORE`); ``ignore`` lists keys that do not change results."""
    old = {**IMPLIED_BEFORE, **flatten(stored)}
    new = flatten(cfg.to_dict())
    return [f"`{k}` {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(old.keys() | new.keys())
            if k not in ignore and old.get(k) != new.get(k)]


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    """Write the resolved config so the run can be repeated with ``glora run --config``;
    atomically, since a run killed while writing it must still resume."""
    write_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
