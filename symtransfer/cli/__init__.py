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

This package is the only place that parses arguments, reads config files and prints: each command
module turns its options into calls of the domain modules and formats what they return
(docs/architecture.md).
"""

from __future__ import annotations

import argparse

from . import advise, compare, demo, derive, experiment, phase_diagram, simulate, sweep
from ._common import EXIT_ERROR, EXIT_INTERNAL, EXIT_POINT_FAILURES, EXPECTED_ERRORS, load_config, report_error
# the simulate config's key sets and checker stay readable as symtransfer.cli.* (tests, examples)
from .simulate import (_NET_KEYS, _TASK_KEYS, _TRANSFER_KEYS, _checked_simulate_config,  # noqa: F401
                       simulate_from_config)

__all__ = ["main", "build_parser", "load_config", "simulate_from_config", "EXIT_ERROR", "EXIT_POINT_FAILURES",
           "EXIT_INTERNAL"]

# the order of ``symtransfer --help``; each module has add_parser(subparsers) and run(args) -> exit status
_COMMANDS = {"demo": demo, "simulate": simulate, "compare": compare, "phase-diagram": phase_diagram,
             "sweep": sweep, "experiment": experiment, "derive": derive, "advise": advise}


def build_parser() -> argparse.ArgumentParser:
    """The ``symtransfer`` argument parser with one sub-command per entry of the commands table."""
    parser = argparse.ArgumentParser(prog="symtransfer", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for module in _COMMANDS.values():
        module.add_parser(sub)
    return parser


def main(argv=None) -> int:
    """Run ``symtransfer`` with ``argv``; returns the exit status.

    0 success; 1 (:data:`EXIT_POINT_FAILURES`) some points of a sweep/experiment failed (the rest is
    stored); 2 (:data:`EXIT_ERROR`) a bad config or output path -- reported before anything is
    computed -- or a run that failed (divergence, a solver that did not converge); 3
    (:data:`EXIT_INTERNAL`) an unexpected error. Errors are one line,
    ``symtransfer <command>: error: ...``, on standard error.
    """
    from ..errors import SymtransferError

    args = build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command].run(args)
    except (*EXPECTED_ERRORS, SymtransferError) as exc:
        return report_error(args.command, exc)
    except Exception as exc:  # noqa: BLE001 - a one-line report instead of a traceback; bugs exit 3
        return report_error(args.command, exc, expected=False)
