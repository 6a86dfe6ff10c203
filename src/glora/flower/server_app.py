"""The glora ServerApp: the experiment from the run config, one strategy run per method.

Writes what ``glora run`` writes with the simulator: under ``output_dir``, ``config.yaml``, the
summary table and plot, and per method ``checkpoint.pt`` and ``metrics.jsonl`` (after every round)
and the exported adapter.
"""

from __future__ import annotations

import time
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from glora.config import save_config
from glora.federation import rounds
from glora.federation.prepare import prepare
from glora.federation.server import FederatedServer
from glora.federation.summary import summarize, write_summary
from glora.flower.run_config import RunOptions
from glora.flower.strategy import GloraStrategy

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run every method of the experiment on the connected SuperNodes."""
    options = RunOptions.from_run_config(context.run_config)
    cfg = options.experiment()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    prepared = prepare(cfg)
    rows = []
    for method in cfg.methods:
        started = time.perf_counter()
        server = FederatedServer(cfg, method, prepared, prepared.reply_schema(),
                                 [len(p) for p in prepared.parts])
        strategy = GloraStrategy(server, out / method)
        if options.resume:
            rounds.resume(server, out / method)
        strategy.start(grid, timeout=options.round_timeout)
        prepared.export(strategy.server.state.model, out / method / "adapter")
        rows.append(summarize(strategy.server.label, strategy.server.state.history,
                              time.perf_counter() - started))
    write_summary(rows, out, cfg.methods)
