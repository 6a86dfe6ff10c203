"""The glora ServerApp: the experiment from the run config, one strategy run per method.

The server holds no training data: it loads the model only, to check replies against it and to
export it; the nodes train and evaluate on their own data (:mod:`glora.flower.client_app`) and
declare how many examples they hold. With ``eval.server_data`` it also scores the global model on
that held-out set (``global_*``). Writes what ``glora run`` writes with the simulator: under
``output_dir``, ``config.yaml``, the summary table and plot, and per method ``checkpoint.pt`` and
``metrics.jsonl`` (after every round) and the exported adapter.
"""

from __future__ import annotations

import time
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from glora.config import save_config
from glora.federation import rounds
from glora.federation.prepare import prepare_server
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
    prepared = prepare_server(cfg)
    rows = []
    for method in cfg.methods:
        started = time.perf_counter()
        evaluator = None if prepared.data is None else prepared  # eval.server_data
        server = FederatedServer(cfg, method, evaluator, prepared.reply_schema(), examples={})
        strategy = GloraStrategy(server, out / method)
        if options.resume:
            rounds.resume(server, out / method)
        strategy.start(grid, timeout=options.round_timeout)
        prepared.export(strategy.server.state.model, out / method / "adapter")
        rows.append(summarize(strategy.server.label, strategy.server.state.history,
                              time.perf_counter() - started))
    write_summary(rows, out, cfg.methods)
