"""``symtransfer advise``: "should I pretrain?" for a user's source and target data.

``add_parser(subparsers)`` adds the sub-command to ``symtransfer``; :func:`main` runs it on its own
(``python -m symtransfer.advise_cli ...``, the old entry point). The domain logic is
:func:`symtransfer.advisor.advise`.
"""

from __future__ import annotations

import argparse
import math
import sys

from .._validation import check_output_file
from ._common import EXIT_ERROR, one_line

__all__ = ["add_parser", "run", "main", "advise_cli", "EPILOG"]

EPILOG = """data files (symtransfer.datasets.load_task): .npz with arrays X (n, D) and y (n,), or CSV with a
header, a 'y' column and feature columns. --source and --target are required; without --test the
errors are cross-validated over target folds.
output: the table of every protocol and setting (error, error bar, gain, cost in seconds), the
recommendation and the verdict on standard output; --out writes the HTML report and
<stem>-curves.png/.pdf beside it. --store DB makes the run resumable (finished rows are reused).
example: symtransfer advise --source src.npz --target tgt.npz --test test.npz --activation linear \\
         --out advice.html --verify"""

def _floats(text):
    try:
        vals = [float(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    return vals


def add_parser(subparsers):
    """Add the ``advise`` sub-command to an ``argparse`` sub-parser collection; returns it."""
    p = subparsers.add_parser("advise", help="should I pretrain? predicted target error of every use of a source",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _arguments(p)
    return p


def _arguments(p):
    p.add_argument("--source", required=True, help="source data file (.npz with X, y, or CSV)")
    p.add_argument("--target", required=True, help="target training data file")
    p.add_argument("--test", default=None, help="target test data file (default: cross-validation)")
    p.add_argument("--activation", default="relu", help="activation name or formula (default relu; linear is exact)")
    p.add_argument("--dynamics", default="gradient_flow", choices=["gradient_flow", "equilibrium"])
    p.add_argument("--out", default=None, help="HTML report (PNG/PDF figures beside it)")
    p.add_argument("--verify", action="store_true", help="simulate wide networks for the recommendation and scratch")
    p.add_argument("--fast", action="store_true", help="small grid, one seed, small population (seconds)")
    p.add_argument("--gammas", type=_floats, default=None, help="source strengths gamma1, comma-separated")
    p.add_argument("--gammas2", type=_floats, default=None, help="target strengths gamma2, comma-separated")
    p.add_argument("--n-splits", type=int, default=5, help="cross-validation folds without --test (default 5)")
    p.add_argument("--store", default=None, help="SQLite results store: resumable, finished rows reused")
    p.add_argument("--dask", action="store_true", help="with --store: run the tasks on a Dask LocalCluster")
    p.add_argument("--workers", type=int, default=1, help="worker processes with --store (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def advise_cli(args) -> tuple:
    """Load the files named in ``args`` (a namespace or a dict of the command's options), check the
    output paths, run :func:`~symtransfer.advisor.advise`; returns ``(advice, text)``."""
    from ..advisor import advise
    from ..datasets import load_task

    if isinstance(args, dict):
        ns = argparse.Namespace(test=None, activation="relu", dynamics="gradient_flow", out=None, verify=False,
                                fast=False, gammas=None, gammas2=None, n_splits=5, store=None, dask=False, workers=1,
                                seed=0, quiet=True)
        for k, v in args.items():
            setattr(ns, k.replace("-", "_"), v)
        args = ns
    if args.out is not None:
        check_output_file(args.out, "--out")
        if not str(args.out).lower().endswith((".html", ".htm")):
            raise ValueError(f"--out must end in .html, got {args.out!r}")
    if args.store is not None:
        check_output_file(args.store, "--store")
    X1, y1 = load_task(args.source)
    X2, y2 = load_task(args.target)
    Xt, yt = load_task(args.test) if args.test is not None else (None, None)
    kw = {}
    if args.fast:
        kw.update(n_seeds=1, population=200, n_samples=1024, verify_width=500, verify_steps=1500, verify_seeds=2)
        if args.gammas is None:
            D = X1.shape[1]
            args.gammas = [2.0 / math.sqrt(D), 8.0 / math.sqrt(D)]
    advice = advise(X1, y1, X2, y2, X_test=Xt, y_test=yt, activation=args.activation, dynamics=args.dynamics,
                    gammas=args.gammas, gammas2=args.gammas2, n_splits=args.n_splits, verify=args.verify,
                    progress=not args.quiet, store=args.store, backend="dask" if args.dask else "local",
                    workers=args.workers, seed=args.seed, **kw)
    lines = [advice.table(), "", f"recommendation: {advice_best(advice)}", f"verdict: {advice.verdict}"]
    if advice.verification:
        lines += ["", "theory and simulation side by side:", advice.verification_table(),
                  f"simulated verdict agrees: {'yes' if advice.verification['verdict_agrees'] else 'no'}"]
    lines.append(f"total {advice.seconds:.2f} s")
    if args.out is not None:
        path = advice.to_html(args.out)
        lines.append(f"wrote {path}")
    return advice, "\n".join(lines)


def advice_best(advice) -> str:
    from ..advisor import describe

    b = advice.best
    return f"{describe(b)}: error {b['error']:.4g} ± {b['stderr']:.2g}"


def run(args) -> int:
    """Run the command for parsed ``args``; print the results; return the exit status (0, or 2 with
    one error line ``symtransfer advise: error: ...`` on standard error)."""
    from ..errors import SymtransferError

    try:
        _, text = advise_cli(args)
    except (ValueError, SymtransferError, OSError, ArithmeticError, RuntimeError, ImportError) as exc:
        print(f"symtransfer advise: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    print(text)
    return 0


def main(argv=None) -> int:
    """``python -m symtransfer.advise_cli ARGS``: the same command on its own."""
    parser = argparse.ArgumentParser(prog="symtransfer advise", description=__doc__.split("\n\n")[0],
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _arguments(parser)
    return run(parser.parse_args(argv))
