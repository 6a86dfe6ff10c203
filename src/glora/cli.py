"""The ``glora`` command: ``run``, ``methods`` (and later ``sweep``, ``report``).

``glora run [--config FILE] [--resume] [key=value ...]`` runs the embedded default comparison
unless told otherwise; overrides use dotted keys (``train.rounds=3 methods=[glora,fedit]``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from glora.errors import GloraError

EPILOG = """examples:
  glora run                                   # the default comparison on the packaged model and data
  glora run train.rounds=3 methods=[glora,fedit]
  glora run --config configs/default.yaml output_dir=runs/mine
  glora run --resume output_dir=runs/mine     # continue an interrupted run
  glora run --engine flower methods=[glora]   # a SuperLink and a SuperNode per client, on loopback
  glora run --engine flower --superlink host:8000 --root-certificates ca.pem   # docs/flower.md
  glora methods                               # list the aggregation methods
"""


def _run(args: argparse.Namespace) -> None:
    from glora.config import load_config
    from glora.sim.experiment import markdown_table, run_experiment

    cfg = load_config(args.config, args.overrides)
    if args.engine == "flower":
        from glora.flower.launch import run_flower

        table = run_flower(cfg, args.config, args.overrides, args.resume, args.superlink,
                           args.root_certificates, args.insecure)
    else:
        table = markdown_table(run_experiment(cfg, resume=args.resume))
    print()
    print(table)
    print(f"\nresults, plots and adapters: {cfg.output_dir}")


def _methods(args: argparse.Namespace) -> None:
    from glora.aggregation import get_method, methods

    for name in methods():
        spec = get_method(name)
        print(f"{name:10s} ranks: {'mixed' if spec.mixed_ranks else 'equal'}  {spec.paper}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glora", description=__doc__.splitlines()[0],
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a federated experiment", epilog=EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--config", help="YAML config (defaults are built in)")
    run.add_argument("--resume", action="store_true", help="continue from the last checkpoints")
    run.add_argument("--engine", choices=["sim", "flower"], default="sim",
                     help="in-process simulator, or a Flower deployment (docs/flower.md)")
    run.add_argument("--superlink", metavar="HOST:PORT",
                     help="flower: use this SuperLink instead of starting one (and a SuperNode "
                     "per client) on loopback")
    run.add_argument("--root-certificates", metavar="CA_PEM", help="flower: CA of --superlink")
    run.add_argument("--insecure", action="store_true",
                     help="flower: reach --superlink without TLS")
    run.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.rounds=3")
    run.set_defaults(func=_run)
    sub.add_parser("methods", help="list aggregation methods").set_defaults(func=_methods)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except GloraError as err:
        print(f"glora: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
