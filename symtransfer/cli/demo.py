"""``symtransfer demo [--fast]``: the built-in end-to-end example (:func:`symtransfer.demo.run_demo`)
as a table with a header that defines its columns."""

from __future__ import annotations

import argparse
import time

__all__ = ["main_demo", "add_parser", "run"]


def main_demo(fast: bool = False) -> str:
    """Run the demo (small sizes with ``fast``) and return the text the command prints."""
    from .. import demo

    t0 = time.perf_counter()
    kw = dict(width=128, steps=1500, n_samples=2048) if fast else dict(width=256, steps=4000, n_samples=8192)
    rows = demo.run_demo(progress=True, nonlinear=True, **kw)
    text = (
        f"symtransfer demo: T = lambda = gamma = 1, alpha = 0.9, D = 20, P1 = 60 source and P2 = 20 target points\n"
        f"simulation: width N = {kw['width']} network, Langevin for {kw['steps']} steps, time-averaged predictor;\n"
        f"theory: N -> infinity equilibrium, exact for phi = linear (LinearTheory), adaptive kernel with "
        f"{kw['n_samples']} Monte Carlo samples for phi = tanh (AdaptiveKernel); docs/theory.md sections 2-3\n"
        f"E_g = test error, mean over test inputs of (f(x) - y(x))^2 against the noiseless teacher y; "
        f"gain = E_g(scratch) - E_g(setting);\nrms(f_sim-f_th) = root-mean-square over test inputs of the "
        f"difference between the simulated and the theoretical predictor (finite-N fluctuations)\n\n"
        + demo.format_table(rows)
        + f"\n\n({time.perf_counter() - t0:.1f} s)"
    )
    return text


def add_parser(sub):
    p = sub.add_parser("demo", help="small end-to-end run (seconds with --fast): theory next to simulation",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fast", action="store_true", help="smaller width and fewer steps")
    return p


def run(args) -> int:
    print(main_demo(fast=args.fast))
    return 0
