"""The glora app's Flower run config: which experiment to run, and how long to wait for nodes.

Defaults live in ``pyproject.toml`` under ``[tool.flwr.app.config]``; ``flwr run --run-config``
overrides them. Both apps read the same run config, so every node resolves the same experiment.

Keys:
    config: path of a glora YAML (``""``: the built-in defaults). Resolved on each machine
        (relative paths against the working directory of the SuperLink or SuperNode).
    overrides: ``key=value`` overrides, space-separated (``"train.rounds=3 methods=[glora]"``).
    resume: continue from the checkpoints under ``output_dir``.
    round-timeout: seconds to wait for the replies of a round (and of the partition query).

How many valid replies a round needs, and how often it is retried, are the experiment's
``server.min_clients`` and ``server.retries``, as in the simulator.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from glora.config import ExperimentConfig, load_config
from glora.errors import ConfigError


@dataclass(frozen=True)
class RunOptions:
    """The run config as typed fields (kebab-case keys become snake_case)."""

    config: str
    overrides: str
    resume: bool
    round_timeout: float

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> RunOptions:
        """Read and check the run config.

        Raises:
            ConfigError: listing every missing or invalid key.
        """
        problems, values = [], {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            if key not in run_config:
                problems.append(f"run config lacks `{key}`; is [tool.flwr.app.config] complete?")
                continue
            value = run_config[key]
            wanted = {"str": str, "bool": bool, "float": (int, float)}[str(f.type)]
            if not isinstance(value, wanted) or (f.type != "bool" and isinstance(value, bool)):
                problems.append(f"run config `{key}` must be a {f.type}, got {value!r}.")
            values[f.name] = float(value) if f.type == "float" else value
        if not problems and values["round_timeout"] <= 0:
            problems.append(f"`round-timeout` must be positive, got {values['round_timeout']}.")
        if problems:
            raise ConfigError(problems)
        return cls(**values)

    def experiment(self) -> ExperimentConfig:
        """The experiment config: the YAML (or defaults) with the overrides applied."""
        return load_config(self.config or None, shlex.split(self.overrides))
