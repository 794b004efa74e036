"""``symtransfer sweep --config FILE [--db FILE] [--scheduler ADDRESS | --local-cluster]``: a resumable
parameter sweep (:func:`symtransfer.sweep.run_sweep`) from a config file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .._validation import check_int
from ._common import EXIT_POINT_FAILURES, load_config

__all__ = ["sweep_cli", "load_sweep_config", "add_parser", "run"]

EPILOG = """config keys (TOML, or JSON for a .json file):
  methods = ["equilibrium"]     equilibrium, gradient_flow, simulation, proportional, or
                                "package.module:function" (runs that code: needs --allow-code)
  seeds = 3                     a count n (seeds 0..n-1) or a list of integers
  db = "results.db"             database, relative to the config (default: config path with .db)
  workers, threads_per_point    local worker processes, threads inside each point
  [params]                      values shared by every point
  [grid]                        name = [values, ...]: the sweep is the Cartesian product
  [<method>]                    options of one method's points
parameters: task ("gaussian", "digits", "file"), activation, gamma1, gamma2, weight_decay1,
  weight_decay2, temperature1, temperature2, coupling, data_seed; gaussian: dim, n_source, n_target,
  n_test, alpha, teacher, noise_source, noise_target; digits: source, target, n_source, n_target,
  n_test; file: path, standardise; options: equilibrium (n_samples, n_chains, tol, max_iter),
  gradient_flow (population, dt, t_max, average_from, tol, n_records, early_stop), simulation
  (width, lr, steps, average_from, batch_size, init_scale)
example: examples/sweep.toml; docs/sweeps.md has the full reference"""


def load_sweep_config(path) -> dict:
    """Read a sweep config: JSON for a ``.json`` suffix, TOML otherwise."""
    return load_config(path)


def sweep_cli(config_path, db_path=None, scheduler=None, local_cluster=False, workers=None, progress=True,
              allow_code=False):
    """``symtransfer sweep --config FILE [--db FILE] [--scheduler ADDRESS | --local-cluster]``.

    The database defaults to the config's ``db`` key (relative to the config file) or, failing that,
    the config path with suffix ``.db``. Prints a one-line summary (and the first failures) and
    returns the :class:`~symtransfer.sweep.SweepReport`; rerunning the same command resumes an
    interrupted sweep.
    """
    from ..sweep import run_sweep

    config_path = Path(config_path)
    cfg = load_sweep_config(config_path)
    base = config_path.resolve().parent
    if db_path is None:
        db = cfg.get("db")
        if db is not None and not isinstance(db, str):
            raise ValueError(f"config key 'db' must be a file name, got {db!r}")
        db_path = (base / Path(db).expanduser()) if db else config_path.with_suffix(".db")
    report = run_sweep(cfg, db_path, scheduler=scheduler, local_cluster=local_cluster, workers=workers,
                       progress=progress, base_dir=base, allow_code=allow_code)
    print(report)
    for params, err in report.failures[:5]:
        print(f"  failed: {json.dumps(params, sort_keys=True)}: {err}")
    return report


def add_parser(sub):
    p = sub.add_parser("sweep", help="resumable parameter sweep stored in SQLite (local processes or Dask)",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="TOML or JSON file (keys below)")
    p.add_argument("--db", default=None, help="SQLite results database (default: next to the config)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help="address of a running Dask scheduler")
    where.add_argument("--local-cluster", action="store_true", help="start a Dask LocalCluster for this sweep")
    p.add_argument("--workers", type=int, default=None, help="number of local worker processes")
    p.add_argument("--allow-code", action="store_true",
                   help="allow methods 'package.module:function' (imports and runs that code)")
    return p


def run(args) -> int:
    if args.workers is not None:
        check_int("--workers", args.workers, low=1)
    report = sweep_cli(args.config, db_path=args.db, scheduler=args.scheduler, local_cluster=args.local_cluster,
                       workers=args.workers, allow_code=args.allow_code)
    return EXIT_POINT_FAILURES if report.failures else 0
