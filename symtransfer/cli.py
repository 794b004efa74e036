"""Command-line interface: ``symtransfer <command>``.

Commands
--------
demo        small end-to-end run: pretraining, then scratch / fine-tuning / coupled, theory next to simulation
simulate    run simulations described by a TOML or JSON config and write the results as JSON
compare     scratch / fine-tuning / jointly rich on one task pair, by theory, gradient flow or simulation
phase-diagram  transfer gain of the proportional-limit linear theory over a grid, plotted
sweep       a grid of parameters x seeds x methods, stored point by point in SQLite (resumable)
experiment  one of the documented figures (theory lines, simulation points): PNG, PDF and tidy CSV (resumable)
derive      mean-field action and saddle-point equations of an activation/setting (text, Markdown, LaTeX)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from ._config import load_config

__all__ = ["main", "load_config", "simulate_from_config"]


_TASK_KEYS = {"dim", "n_source", "n_target", "n_test", "alpha", "teacher", "target_teacher", "noise_source",
              "noise_target"}
_NET_KEYS = {"width", "activation", "gamma", "weight_decay", "temperature", "lr", "steps", "batch_size",
             "init_scale", "average_from", "max_snapshots", "log_every"}
_TRANSFER_KEYS = {"name", "gamma", "weight_decay", "temperature", "coupling", "readout_only", "lr", "steps",
                  "batch_size", "average_from"}


def _only(section: dict, allowed: set, where: str) -> dict:
    if not isinstance(section, dict):
        raise ValueError(f"config section {where!r} must be a table/object")
    unknown = set(section) - allowed
    if unknown:
        raise ValueError(f"unknown keys in config section {where!r}: {sorted(unknown)}; allowed: {sorted(allowed)}")
    return dict(section)


def simulate_from_config(config: dict, progress: bool = False) -> dict:
    """Pretrain on the source task and run every listed transfer; return JSON-ready results.

    Config layout (TOML shown)::

        seed = 0
        [task]        # make_transfer_pair arguments
        dim = 20
        n_source = 60
        n_target = 20
        n_test = 200
        alpha = 0.9
        [network]     # WideNetwork arguments
        width = 512
        activation = "relu"
        temperature = 1.0
        [[transfer]]  # any number; WideNetwork.transfer arguments plus a name
        name = "joint"
        coupling = 1.0
    """
    import numpy as np

    from .sim import WideNetwork
    from .tasks import make_transfer_pair

    unknown = set(config) - {"seed", "task", "network", "transfer"}
    if unknown:
        raise ValueError(f"unknown top-level config keys {sorted(unknown)}; allowed: seed, task, network, transfer")
    seed = config.get("seed", 0)
    task_kw = _only(config.get("task", {}), _TASK_KEYS, "task")
    task_kw.setdefault("dim", 20)
    task_kw.setdefault("n_source", 60)
    task_kw.setdefault("n_target", 20)
    task_kw.setdefault("n_test", 200)
    task_kw.setdefault("alpha", 1.0)
    net_kw = _only(config.get("network", {}), _NET_KEYS, "network")
    net_kw.setdefault("width", 512)
    transfers = config.get("transfer", [])
    if isinstance(transfers, dict):
        transfers = [transfers]
    pair = make_transfer_pair(seed=seed, **task_kw)

    def summary(net, task):
        out = {"test_error": float(np.mean((net.predict(task.X_test) - task.y_test_clean) ** 2)),
               "lr": net.lr_,
               "history": {k: v.tolist() for k, v in net.history_.items()}}
        return out

    src = WideNetwork(seed=seed, progress=progress, **net_kw).fit(
        pair.source.X_train, pair.source.y_train, eval_set=(pair.source.X_test, pair.source.y_test_clean))
    results = {"config": config, "source": summary(src, pair.source), "transfer": []}
    for i, tr in enumerate(transfers):
        kw = _only(tr, _TRANSFER_KEYS, f"transfer[{i}]")
        name = kw.pop("name", f"transfer{i}")
        tgt = src.transfer(pair.target.X_train, pair.target.y_train,
                           eval_set=(pair.target.X_test, pair.target.y_test_clean), **kw)
        row = summary(tgt, pair.target)
        row.update(name=name, coupling=kw.get("coupling"), readout_only=bool(kw.get("readout_only", False)))
        results["transfer"].append(row)
    return results


def _json_default(obj):
    if isinstance(obj, float) and math.isinf(obj):
        return "inf"
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="symtransfer", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="small end-to-end run (< 60 s): theory next to simulation")
    p.add_argument("--fast", action="store_true", help="smaller width and fewer steps")

    p = sub.add_parser("simulate", help="simulations from a TOML/JSON config, results as JSON")
    p.add_argument("--config", required=True, help="TOML or JSON file (see simulate_from_config)")
    p.add_argument("--out", default="-", help="output JSON file (default: standard output)")
    p.add_argument("--progress", action="store_true", help="show progress bars")

    p = sub.add_parser("compare", help="table of scratch / finetune / joint target errors and transfer gains")
    p.add_argument("--config", required=True, help="TOML or JSON (see symtransfer.experiments.compare_cli)")
    p.add_argument("--out", default=None, help="write the table as CSV to this file")

    p = sub.add_parser("phase-diagram", help="proportional-limit transfer gain over a grid, with gain = 0 boundary")
    p.add_argument("--config", required=True, help="TOML or JSON (see symtransfer.theory.proportional.phase_diagram_cli)")
    p.add_argument("--out", required=True, help="figure file (.png, .pdf or .svg)")

    p = sub.add_parser("sweep", help="resumable parameter sweep stored in SQLite (local processes or Dask)")
    p.add_argument("--config", required=True, help="TOML or JSON (see symtransfer.sweep.sweep_cli)")
    p.add_argument("--db", default=None, help="SQLite results database (default: next to the config)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help="address of a running Dask scheduler")
    where.add_argument("--local-cluster", action="store_true", help="start a Dask LocalCluster for this sweep")
    p.add_argument("--workers", type=int, default=None, help="number of local worker processes")

    from .figures import EXPERIMENTS

    p = sub.add_parser("experiment", help="a documented figure: PNG + PDF + tidy CSV, theory and simulation")
    p.add_argument("name", metavar="NAME", help=f"one of: {', '.join(EXPERIMENTS)}")
    p.add_argument("--out", default=None,
                   help="output directory (default: docs/figures; with --fast: symtransfer-figures-fast)")
    p.add_argument("--fast", action="store_true", help="tiny sizes (seconds), for tests and a first look")
    p.add_argument("--db", default=None, help="SQLite database of finished points (default: <out>/NAME.sqlite); "
                   "rerunning resumes from it")
    p.add_argument("--threads", type=int, default=1, help="Numba/BLAS threads (default 1)")

    p = sub.add_parser("derive", help="action and saddle-point equations; --latex FILE or --markdown")
    p.add_argument("--activation", required=True, help="registered name or formula in x, e.g. 'x*exp(-x**2/4)'")
    p.add_argument("--setting", required=True, choices=["single", "finetune", "joint"])
    out = p.add_mutually_exclusive_group()
    out.add_argument("--latex", metavar="FILE", help="write a complete LaTeX document to FILE")
    out.add_argument("--markdown", action="store_true", help="print Markdown instead of plain text")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import main_demo

            print(main_demo(fast=args.fast))
        elif args.command == "simulate":
            results = simulate_from_config(load_config(args.config), progress=args.progress)
            text = json.dumps(results, indent=1, default=_json_default)
            if args.out == "-":
                print(text)
            else:
                Path(args.out).write_text(text)
                print(f"wrote {args.out}", file=sys.stderr)
        elif args.command == "compare":
            from .experiments import compare_cli

            compare_cli(args.config, args.out)
        elif args.command == "phase-diagram":
            from .theory.proportional import phase_diagram_cli

            phase_diagram_cli(args.config, args.out)
        elif args.command == "sweep":
            from .sweep import sweep_cli

            report = sweep_cli(args.config, db_path=args.db, scheduler=args.scheduler,
                               local_cluster=args.local_cluster, workers=args.workers)
            if report.failures:
                return 1
        elif args.command == "experiment":
            from .figures import experiment_cli

            run = experiment_cli(args.name, args.out, fast=args.fast, db=args.db, threads=args.threads)
            if run.failures:
                return 1
        elif args.command == "derive":
            from .symbolic import derive_cli

            print(derive_cli(args.activation, args.setting, latex=args.latex, markdown=args.markdown))
    except (ValueError, RuntimeError) as exc:
        print(f"symtransfer {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
