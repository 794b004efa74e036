"""Command-line interface: ``symtransfer <command>``.

Commands
--------
demo        small end-to-end run: pretraining, then scratch / fine-tuning / coupled, theory next to simulation
simulate    run simulations described by a TOML or JSON config and write the results as JSON
compare     scratch / fine-tuning / jointly rich on one task pair, by theory, gradient flow or simulation
phase-diagram  transfer gain of the proportional-limit linear theory over a grid, plotted
sweep       a grid of parameters x seeds x methods, stored point by point in SQLite (resumable)
experiment  one of the documented figures (theory lines, simulation points): PNG, PDF and tidy CSV (resumable)
derive      equilibrium saddle point or gradient-flow DMFT equations of an activation/setting (text, Markdown, LaTeX)
advise      should I pretrain? predicted target error of scratch / fine-tuning / lazy / jointly rich, HTML report
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from ._config import load_config
from ._validation import check_int, check_output_file

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


def _checked_simulate_config(config: dict):
    """``(seed, task_kw, net_kw, transfers)`` with every value checked, before anything is trained."""
    from .sim import WideNetwork
    from .tasks import make_transfer_pair

    if not isinstance(config, dict):
        raise ValueError("the config must be a table/object")
    unknown = set(config) - {"seed", "task", "network", "transfer"}
    if unknown:
        raise ValueError(f"unknown top-level config keys {sorted(unknown)}; allowed: seed, task, network, transfer")
    seed = check_int("seed", config.get("seed", 0), low=0)
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
    if not isinstance(transfers, list):
        raise ValueError(f"config key 'transfer' must be a table or a list of tables ([[transfer]]), got {transfers!r}")
    make_transfer_pair(**{**task_kw, "n_source": 1, "n_target": 1, "n_test": 1}, seed=seed)  # checks the values
    for k in ("n_source", "n_target"):
        check_int(f"task.{k}", task_kw[k], low=1)
    check_int("task.n_test", task_kw["n_test"], low=1)
    source = WideNetwork(seed=seed, **net_kw)
    source._validated()
    checked = []
    for i, tr in enumerate(transfers):
        kw = _only(tr, _TRANSFER_KEYS, f"transfer[{i}]")
        name = kw.pop("name", f"transfer{i}")
        if not isinstance(name, str):
            raise ValueError(f"transfer[{i}].name must be a string, got {name!r}")
        readout_only = kw.get("readout_only", False)
        if not isinstance(readout_only, bool):
            raise ValueError(f"transfer[{i}].readout_only must be true or false, got {readout_only!r}")
        if not readout_only:
            if "coupling" not in kw:
                raise ValueError(f"transfer[{i}] needs coupling (>= 0) unless readout_only = true")
            from ._validation import check_real

            check_real(f"transfer[{i}].coupling", kw["coupling"], low=0.0)
        params = source.get_params()
        params.update({k: v for k, v in kw.items() if k not in ("coupling", "readout_only")})
        try:
            WideNetwork(**params)._validated()
        except ValueError as exc:
            raise ValueError(f"transfer[{i}]: {exc}") from None
        checked.append((name, kw))
    return seed, task_kw, net_kw, checked


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

    seed, task_kw, net_kw, transfers = _checked_simulate_config(config)
    pair = make_transfer_pair(seed=seed, **task_kw)

    def summary(net, task):
        out = {"test_error": float(np.mean((net.predict(task.X_test) - task.y_test_clean) ** 2)),
               "lr": net.lr_,
               "history": {k: v.tolist() for k, v in net.history_.items()}}
        return out

    src = WideNetwork(seed=seed, progress=progress, **net_kw).fit(
        pair.source.X_train, pair.source.y_train, eval_set=(pair.source.X_test, pair.source.y_test_clean))
    results = {"config": config, "source": summary(src, pair.source), "transfer": []}
    for name, kw in transfers:
        kw = dict(kw)
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


_EPILOG = {
    "simulate": """config keys (TOML, or JSON for a .json file):
  seed = 0                      top level
  [task]                        dim (20), n_source (60), n_target (20), n_test (200), alpha (1.0),
                                teacher ("linear" or {degree = coefficient}), target_teacher,
                                noise_source (0), noise_target (0)
  [network]                     width (512), activation ("relu"), gamma (1), weight_decay (1),
                                temperature (0), lr (automatic), steps (2000), batch_size (full),
                                init_scale (1), average_from, max_snapshots (200), log_every
  [[transfer]]                  any number: name, coupling (required unless readout_only),
                                readout_only (false), gamma, weight_decay, temperature, lr, steps,
                                batch_size, average_from
example: examples/simulate.toml""",
    "compare": """config keys (TOML, or JSON for a .json file):
  method = "gradient_flow"      "equilibrium", "gradient_flow" or "simulation"
  seeds = [0]                   list of integers >= 0
  [task]                        dim, n_source, n_target, n_test, alpha, teacher, target_teacher,
                                noise_source, noise_target, seed, clean_test (true)
  [data]  path = "file.npz"     instead of [task]: arrays X1, y1, X2, y2, X_test, y_test
  [settings]                    activation ("relu"), couplings ([1.0])
  [settings.source], [settings.target]   gamma (1), weight_decay (1), temperature (1 equilibrium, else 0)
  [settings.gradient_flow]      population (2000), dt, t_max (20) and other GradientFlowDMFT arguments
  [settings.simulation]         width (1000), lr, steps (2000), average_from and other WideNetwork arguments
  [settings.equilibrium]        AdaptiveKernel arguments (n_samples, ...)
example: examples/compare.toml""",
    "phase-diagram": """config keys (TOML, or JSON for a .json file), all optional:
  setting = "finetune"          or "joint"
  x = "alpha", y = "nu2"        axis parameters: nu1, nu2, alpha, g1, g2, lam1, lam2, T1, T2, coupling,
                                sigma1, sigma2
  n = 100                       points per axis of the default grids
  x_values = [...]              or x_grid = {start, stop, num, scale = "linear" | "log"};
  y_values = [...]              or y_grid = {...}
  xscale, yscale                "auto", "linear" or "log"
  title = "..."
  arrays = "diagram.npz"        also save the arrays (relative to the figure's folder)
  [params]                      fixed values of the other parameters (coupling may be "inf")
example: examples/phase-diagram.toml""",
    "sweep": """config keys (TOML, or JSON for a .json file):
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
example: examples/sweep.toml; docs/sweeps.md has the full reference""",
    "experiment": """no config file: the sizes of each experiment are fixed (symtransfer.figures.experiment_config);
--fast gives a tiny version. Output: NAME.png, NAME.pdf, NAME.csv and the resumable NAME.sqlite.""",
}


def _sub(sub, name, help_, **kw):
    epilog = _EPILOG.get(name)
    return sub.add_parser(name, help=help_, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter,
                          **kw)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="symtransfer", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = _sub(sub, "demo", "small end-to-end run (seconds with --fast): theory next to simulation")
    p.add_argument("--fast", action="store_true", help="smaller width and fewer steps")

    p = _sub(sub, "simulate", "simulations from a TOML/JSON config, results as JSON")
    p.add_argument("--config", required=True, help="TOML or JSON file (keys below)")
    p.add_argument("--out", default="-", help="output JSON file (default: standard output)")
    p.add_argument("--progress", action="store_true", help="show progress bars")

    p = _sub(sub, "compare", "table of scratch / finetune / joint target errors and transfer gains")
    p.add_argument("--config", required=True, help="TOML or JSON file (keys below)")
    p.add_argument("--out", default=None, help="write the table as CSV to this file")

    p = _sub(sub, "phase-diagram", "proportional-limit transfer gain over a grid, with gain = 0 boundary")
    p.add_argument("--config", required=True, help="TOML or JSON file (keys below)")
    p.add_argument("--out", required=True, help="figure file (.png, .pdf or .svg)")

    p = _sub(sub, "sweep", "resumable parameter sweep stored in SQLite (local processes or Dask)")
    p.add_argument("--config", required=True, help="TOML or JSON file (keys below)")
    p.add_argument("--db", default=None, help="SQLite results database (default: next to the config)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help="address of a running Dask scheduler")
    where.add_argument("--local-cluster", action="store_true", help="start a Dask LocalCluster for this sweep")
    p.add_argument("--workers", type=int, default=None, help="number of local worker processes")
    p.add_argument("--allow-code", action="store_true",
                   help="allow methods 'package.module:function' (imports and runs that code)")

    from .figures import EXPERIMENTS

    p = _sub(sub, "experiment", "a documented figure: PNG + PDF + tidy CSV, theory and simulation")
    p.add_argument("name", metavar="NAME", help=f"one of: {', '.join(EXPERIMENTS)}")
    p.add_argument("--out", default=None,
                   help="output directory (default: docs/figures inside the symtransfer checkout, "
                        "./symtransfer-figures elsewhere; with --fast: symtransfer-figures-fast)")
    p.add_argument("--fast", action="store_true", help="tiny sizes (seconds), for tests and a first look")
    p.add_argument("--db", default=None, help="SQLite database of finished points (default: <out>/NAME.sqlite); "
                   "rerunning resumes from it")
    p.add_argument("--threads", type=int, default=1, help="Numba/BLAS threads (default 1)")

    p = _sub(sub, "derive", "equilibrium saddle point or gradient-flow DMFT equations; --latex FILE or --markdown")
    p.add_argument("--activation", required=True, help="registered name or formula in x, e.g. 'x*exp(-x**2/4)'")
    p.add_argument("--setting", required=True, choices=["scratch", "single", "finetune", "lazy_finetune", "joint"],
                   help="'single' is the old name of 'scratch'")
    p.add_argument("--dynamics", default="equilibrium", choices=["equilibrium", "gradient_flow"],
                   help="equilibrium (Langevin, T > 0) saddle point, or the gradient-flow DMFT (default equilibrium)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--latex", metavar="FILE", help="write a complete LaTeX document to FILE")
    out.add_argument("--markdown", action="store_true", help="print Markdown instead of plain text")

    from . import advise_cli

    advise_cli.add_parser(sub)
    return parser


#: Exit status of a bad config, bad input, unwritable output or a solver/run failure.
EXIT_ERROR = 2
#: Exit status of points that failed inside an otherwise finished sweep or experiment.
EXIT_POINT_FAILURES = 1
#: Exit status of an unexpected internal error (a bug: set SYMTRANSFER_DEBUG=1 for the traceback).
EXIT_INTERNAL = 3


def _one_line(exc) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv=None) -> int:
    """Run ``symtransfer`` with ``argv``; returns the exit status.

    0 success; 1 (:data:`EXIT_POINT_FAILURES`) some points of a sweep/experiment failed (the rest is
    stored); 2 (:data:`EXIT_ERROR`) a bad config or output path -- reported before anything is
    computed -- or a run that failed (divergence, a solver that did not converge); 3
    (:data:`EXIT_INTERNAL`) an unexpected error. Errors are one line,
    ``symtransfer <command>: error: ...``, on standard error.
    """
    from .errors import SymtransferError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except (ValueError, RuntimeError, SymtransferError, ArithmeticError, OSError, ImportError) as exc:
        if os.environ.get("SYMTRANSFER_DEBUG"):
            raise
        what = "" if isinstance(exc, (ValueError, RuntimeError)) and type(exc).__module__ == "builtins" else (
            f"{type(exc).__name__}: ")
        print(f"symtransfer {args.command}: error: {what}{_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - a one-line report instead of a traceback; bugs exit 3
        if os.environ.get("SYMTRANSFER_DEBUG"):
            raise
        print(f"symtransfer {args.command}: error: unexpected {type(exc).__name__}: {_one_line(exc)} "
              f"(set SYMTRANSFER_DEBUG=1 for the traceback and please report it)", file=sys.stderr)
        return EXIT_INTERNAL


def _dispatch(args) -> int:
    if args.command == "demo":
        from .demo import main_demo

        print(main_demo(fast=args.fast))
    elif args.command == "simulate":
        config = load_config(args.config)
        _checked_simulate_config(config)
        if args.out != "-":
            check_output_file(args.out, "--out")
        results = simulate_from_config(config, progress=args.progress)
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

        if args.workers is not None:
            check_int("--workers", args.workers, low=1)
        report = sweep_cli(args.config, db_path=args.db, scheduler=args.scheduler,
                           local_cluster=args.local_cluster, workers=args.workers, allow_code=args.allow_code)
        if report.failures:
            return EXIT_POINT_FAILURES
    elif args.command == "experiment":
        from .figures import experiment_cli

        check_int("--threads", args.threads, low=1)
        run = experiment_cli(args.name, args.out, fast=args.fast, db=args.db, threads=args.threads)
        if run.failures:
            return EXIT_POINT_FAILURES
    elif args.command == "derive":
        from .symbolic import derive_cli

        if args.latex is not None:
            check_output_file(args.latex, "--latex")
        print(derive_cli(args.activation, args.setting, latex=args.latex, markdown=args.markdown,
                         dynamics=args.dynamics))
    elif args.command == "advise":
        from . import advise_cli

        return advise_cli.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
