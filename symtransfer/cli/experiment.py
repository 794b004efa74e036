"""``symtransfer experiment NAME [--out DIR] [--fast] [--db FILE]``: one documented figure
(:func:`symtransfer.figures.run_experiment`), with a summary of where theory and simulation disagree."""

from __future__ import annotations

import argparse

from .._validation import check_int
from ._common import EXIT_POINT_FAILURES

__all__ = ["experiment_cli", "add_parser", "run"]

EPILOG = """no config file: the sizes of each experiment are fixed (symtransfer.figures.experiment_config);
--fast gives a tiny version. Output: NAME.png, NAME.pdf, NAME.csv and the resumable NAME.sqlite."""


def _format_disagreement(worst) -> str:
    lines = []
    for q, w in worst.items():
        for key, what in (("z", "|sim - theory| / sem_sim"), ("z_paired", "paired |sim - theory| / sem"),
                          ("rel", "|sim - theory| / theory")):
            if key not in w:
                continue
            it = w[key]
            lines.append(f"  {q:<10} largest {what:<28} = {it[key]:.3g}  at {it['panel']}, {it['setting']}, "
                         f"x={it['x']}: theory {it['theory']:.4g}, sim {it['sim']:.4g} ± {it['sem']:.2g} "
                         f"(paired diff {it['paired_diff']:+.3g} ± {it['paired_diff_sem']:.2g})")
    return "\n".join(lines)


def experiment_cli(name, out=None, fast=False, db=None, threads=1):
    """``symtransfer experiment NAME [--out DIR] [--fast] [--db FILE]``: run, write, print a summary.

    The summary ends with where simulation and theory disagree most
    (:func:`symtransfer.figures.disagreement`). Returns the :class:`~symtransfer.figures.ExperimentRun`.
    """
    from ..figures import DISAGREEMENT_LEGEND, disagreement, run_experiment

    run = run_experiment(name, out, fast=fast, db=db, threads=threads)
    print(run)
    print(DISAGREEMENT_LEGEND)
    print(_format_disagreement(disagreement(run.rows)))
    return run


def add_parser(sub):
    from ..figures import EXPERIMENTS

    p = sub.add_parser("experiment", help="a documented figure: PNG + PDF + tidy CSV, theory and simulation",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", metavar="NAME", help=f"one of: {', '.join(EXPERIMENTS)}")
    p.add_argument("--out", default=None,
                   help="output directory (default: docs/figures inside the symtransfer checkout, "
                        "./symtransfer-figures elsewhere; with --fast: symtransfer-figures-fast)")
    p.add_argument("--fast", action="store_true", help="tiny sizes (seconds), for tests and a first look")
    p.add_argument("--db", default=None, help="SQLite database of finished points (default: <out>/NAME.sqlite); "
                   "rerunning resumes from it")
    p.add_argument("--threads", type=int, default=1, help="Numba/BLAS threads (default 1)")
    return p


def run(args) -> int:
    check_int("--threads", args.threads, low=1)
    result = experiment_cli(args.name, args.out, fast=args.fast, db=args.db, threads=args.threads)
    return EXIT_POINT_FAILURES if result.failures else 0
