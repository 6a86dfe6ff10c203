"""The ``glora`` command: ``run``, ``methods``, ``summary``, ``gauge``, ``sweep``, ``report``.

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
  glora gauge --cond-max 1000 methods=[glora,fedit]   # gauge-invariance check (docs/gauge.md)
  glora sweep --dry-run my_sweep.yaml         # list a sweep's runs (settings x variants x seeds)
  glora sweep --jobs 2 my_sweep.yaml train.rounds=4   # run what is missing; overrides apply to base
  glora sweep --only iid,dirichlet_0.1 my_sweep.yaml   # only these settings' runs
  glora report runs/sweeps/my_sweep           # tables and plots: runs/sweeps/my_sweep/report.md
  glora summary runs/default                  # a run's table again, from its metrics.jsonl files
"""


def _run(args: argparse.Namespace) -> None:
    from glora.config import load_config
    from glora.federation.summary import markdown_table
    from glora.sim.experiment import run_experiment

    cfg = load_config(args.config, args.overrides)
    if args.engine == "flower":
        from pathlib import Path

        from glora.federation import output
        from glora.flower.launch import run_flower

        with output.locked(Path(cfg.output_dir)):
            output.claim(cfg, args.resume, args.overwrite, args.force)
            table = run_flower(cfg, args.config, args.overrides, args.resume, args.superlink,
                               args.root_certificates, args.insecure)
    else:
        table = markdown_table(run_experiment(cfg, resume=args.resume, overwrite=args.overwrite,
                                              force=args.force))
    print()
    print(table)
    print(f"\nresults, plots and adapters: {cfg.output_dir}")


def _gauge(args: argparse.Namespace) -> None:
    from pathlib import Path

    from glora.config import load_config
    from glora.sim.gauge import report_gauge, run_gauge

    cfg = load_config(args.config, args.overrides)
    out = Path(cfg.output_dir) / "gauge"
    if args.report:
        report_gauge(out)
    else:
        inits = [i.strip() for i in args.init.split(",") if i.strip()]
        run_gauge(cfg, (args.cond_min, args.cond_max), inits, resume=args.resume)
    print()
    print((out / "gauge.md").read_text())
    print(f"runs, metrics and tables: {out}")


def _sweep(args: argparse.Namespace) -> None:
    from glora.sweep import plan_sweep, run_plan

    plan = plan_sweep(args.file, args.overrides, args.store, _names(args.only))
    if args.dry_run:
        print(plan.listing())
        return
    failures = run_plan(plan, args.jobs)
    print(f"\n{len(plan.jobs)} runs in {plan.store}; report: glora report {plan.store}")
    if failures:
        raise GloraError(f"{len(failures)} of {len(plan.jobs)} runs failed (the others finished); "
                         "rerun the same command to retry them:\n"
                         + "\n".join(f"- {name}: {err}" for name, err in failures.items()))


def _report(args: argparse.Namespace) -> None:
    from glora.report import write_report

    path = write_report(args.store, args.out, args.metric, _names(args.only), args.paired)
    print(f"report: {path}")


def _summary(args: argparse.Namespace) -> None:
    from glora.federation.summary import markdown_table, summary_rows

    print(markdown_table(summary_rows(args.run_dir)))


def _names(text: str | None) -> list[str]:
    """``--only a,b`` as a list of setting names."""
    return [n.strip() for n in (text or "").split(",") if n.strip()]


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
    run.add_argument("--resume", action="store_true", help="continue from the last checkpoints "
                     "(refused if the config changed since, unless --force)")
    run.add_argument("--overwrite", action="store_true",
                     help="delete what output_dir holds and start again")
    run.add_argument("--force", action="store_true",
                     help="with --resume: continue under a changed config")
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
    summary = sub.add_parser("summary", help="print a run's summary table from the "
                             "metrics.jsonl files in its output_dir (no checkpoint needed)")
    summary.add_argument("run_dir", metavar="DIR", help="the output_dir of a `glora run`")
    summary.set_defaults(func=_summary)
    gauge = sub.add_parser("gauge", help="does a method's update change when clients refactor "
                           "their LoRA factors? (docs/gauge.md)", epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    gauge.add_argument("--config", help="YAML config (defaults are built in)")
    gauge.add_argument("--cond-min", type=float, default=1.0,
                       help="smallest condition number of a client's gauge (default 1)")
    gauge.add_argument("--cond-max", type=float, default=1000.0,
                       help="largest condition number of a client's gauge (default 1000)")
    gauge.add_argument("--resume", action="store_true",
                       help="continue from the runs' checkpoints (finished runs are read back)")
    gauge.add_argument("--report", action="store_true",
                       help="only rebuild gauge.md from the finished runs' metrics (no training)")
    gauge.add_argument("--init", default="shared,independent",
                       help="comma-separated train.init modes to run (default shared,independent)")
    gauge.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.rounds=3")
    gauge.set_defaults(func=_gauge)
    sweep = sub.add_parser("sweep", help="run a grid of settings x method variants x seeds "
                           "from a sweep file (glora/sweep.py documents the format)", epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    sweep.add_argument("file", metavar="FILE", help="sweep YAML file")
    sweep.add_argument("--store", metavar="DIR",
                       help="folder of the runs (default runs/sweeps/<FILE stem>)")
    sweep.add_argument("--jobs", type=int, default=2, metavar="N",
                       help="runs at a time, each a process with one torch thread (default 2)")
    sweep.add_argument("--only", metavar="NAMES",
                       help="comma-separated settings to run (default: all); the report shows "
                       "the others as not run")
    sweep.add_argument("--dry-run", action="store_true", help="list the runs and which are done")
    sweep.add_argument("overrides", nargs="*",
                       help="key=value overrides of every run's base, e.g. train.rounds=3")
    sweep.set_defaults(func=_sweep)
    report = sub.add_parser("report", help="Markdown tables and plots of a sweep's store",
                            epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    report.add_argument("store", metavar="STORE", help="folder written by `glora sweep`")
    report.add_argument("--out", metavar="FILE.md", help="report file (default "
                        "STORE/report.md); plots go to <its stem>_plots/ beside it")
    report.add_argument("--metric", metavar="KEY[,KEY...]",
                        help="comma-separated metric keys, one table each (default: the first "
                        "global_* metric, e.g. global_accuracy)")
    report.add_argument("--only", metavar="NAMES",
                        help="comma-separated settings to report (default: all)")
    report.add_argument("--paired", metavar="VARIANT",
                        help="variant every other one is compared with, seed by seed (default: "
                        "glora where the sweep has it)")
    report.set_defaults(func=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse takes positionals in one go: `sweep FILE --store DIR k=v` leaves `k=v` over.
    if extra:
        if not hasattr(args, "overrides") or any("=" not in e or e[0] == "-" for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    try:
        args.func(args)
    except GloraError as err:
        print(f"glora: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nglora: interrupted; finished rounds are checkpointed: rerun the same command "
              "with --resume (`glora sweep` resumes by itself).", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
