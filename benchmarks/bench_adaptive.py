"""Benchmark: equilibrium adaptive-kernel theory vs Langevin simulation reaching the same accuracy.

Usage::

    .venv/bin/python benchmarks/bench_adaptive.py [--act tanh] [--P 40] [--D 20] [--gamma 1.0]
        [--widths 250 1000] [--steps 20000] [--tol 1e-3]

Prints the theory solve time (compile excluded: a warm-up solve runs first), the simulation time
per width with its RMS gap to the theory on held-out inputs, and the ratio simulation/theory time
for the narrowest width whose gap is within 2 theory Monte Carlo standard errors (or the widest).

Status (see docs/adaptive.md, section 6): the issue asks for relu at P = 200; at that size the
solver does not yet converge (relu: chains leave the normalisable region; tanh: Monte Carlo noise of
a 200 x 200 kernel moves the solution between draws), so the defaults are a smaller tanh problem.
Measured on 2 shared cores (tanh, P = 40, D = 20, 16384 samples, 10000 simulation steps): theory
2.7 s; simulation N = 250 16.7 s (RMS gap 0.016 = theory Monte Carlo error 0.015), N = 1000
19.3 s (gap 0.016); ratio 6.2x. Target of the issue (>= 20x at P = 200): not met.
No plain-NumPy reference of the sampler is timed yet.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from symtransfer.sim import WideNetwork
from symtransfer.theory.adaptive import AdaptiveKernel


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--act", default="tanh")
    ap.add_argument("--P", type=int, default=40)
    ap.add_argument("--D", type=int, default=20)
    ap.add_argument("--gamma", type=float, default=1.0)
    ap.add_argument("--widths", type=int, nargs="+", default=[250, 1000])
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--n-samples", type=int, default=16384)
    args = ap.parse_args(argv)

    rng = np.random.default_rng(0)
    beta = rng.standard_normal(args.D)
    X = rng.standard_normal((args.P, args.D))
    Xt = rng.standard_normal((100, args.D))
    y = np.sign(X @ beta)

    # warm-up: Numba compilation of the sampler for this activation
    AdaptiveKernel(args.act, gamma=args.gamma, n_samples=1024, tol=1e-2).fit(X[:10], y[:10])
    t0 = time.perf_counter()
    theory = AdaptiveKernel(args.act, gamma=args.gamma, n_samples=args.n_samples, tol=args.tol).fit(X, y)
    f, sd = theory.predict(Xt, return_std=True)
    t_theory = time.perf_counter() - t0
    rms_sd = float(np.sqrt(np.mean(sd**2)))
    print(f"theory: {t_theory:.2f} s  ({theory.n_iter_} Newton iterations, {theory.n_draws_} draws, "
          f"residual {theory.residual_:.1e}, MC error of predictions {rms_sd:.3g})")

    chosen = None
    for N in args.widths:
        t0 = time.perf_counter()
        net = WideNetwork(N, args.act, gamma=args.gamma, weight_decay=1.0, temperature=1.0, steps=args.steps,
                          average_from=0.2, seed=1, progress=False).fit(X, y)
        gap = float(np.sqrt(np.mean((net.predict(Xt) - f) ** 2)))
        t_sim = time.perf_counter() - t0
        print(f"simulation N={N}: {t_sim:.2f} s, RMS gap to theory {gap:.3g}")
        if chosen is None and gap <= 2 * rms_sd:
            chosen = (N, t_sim)
    if chosen is None:
        chosen = (args.widths[-1], t_sim)
    print(f"ratio simulation(N={chosen[0]}) / theory = {chosen[1] / t_theory:.1f}x")


if __name__ == "__main__":
    main()
