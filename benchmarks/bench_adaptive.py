"""Benchmark: equilibrium adaptive-kernel theory vs Langevin simulation reaching the same accuracy.

Usage::

    .venv/bin/python benchmarks/bench_adaptive.py [--act relu] [--gammas 0.3 1.0] [--P 200]
        [--widths 250 1000 4000] [--steps 2500 5000 10000 20000] [--tol 1e-3] [--n-samples 32768]

Problem (issue 7): scikit-learn digits 3 (+1) vs 8 (-1), standardised (61 pixels), ``P`` training
images, the rest held out; temperature = weight decay = 1.

Prints

1. the theory solve time to relative residual ``--tol`` with the held-out predictions (Numba
   compilation excluded: a warm-up solve runs first; median over ``--repeats`` solver seeds, each
   printed), the reported Monte Carlo error of those predictions and the seed-to-seed scatter that
   checks it (when the scatter exceeds 1.5 times the reported error, the comparison uses the scatter);
2. per width and run length (shortest first, time-averaged predictor over the last 80 %), the
   simulation time and its RMS gap to the theory. The gap combines both errors,
   ``gap^2 ~ sd_theory^2 + err_sim^2``, so the simulation "reaches the same accuracy" when
   ``gap <= sqrt(2) sd_theory``; the ratio simulation time / theory time is printed for the cheapest
   such run, and also for the looser criterion ``gap <= 2 sd_theory``;
One block per ``--gammas`` value: the default pair is the interior problem (``gamma = 0.3``) and the
condensate (``gamma = 1``, issue 15), each with its own line ``ratio simulation(...) / theory, as
accurate as the theory: Rx`` (simulation and theory timed in the same process, so the ratio does not
depend on the machine's speed, only on its load).

3. one elliptical-slice draw (the sampler at the solved ``v``) by the Numba kernel against a plain
   NumPy implementation vectorised over chains, and their ratio.

ReLU at P = 200 solves inside the normalisable domain up to gamma ~ 0.5; at gamma = 1 the solution
lies on its edge and carries a condensate (docs/adaptive.md, section 2). Measured on an idle 2-core
machine on 2026-12-02 (docs/adaptive.md, section 7), networks with the step control of
``WideNetwork``: gamma = 0.3: theory 1.30 s (MC error 0.0074, seed scatter 0.0093); as accurate as the
theory: N = 4000 x 5000 steps, 33.0 s, ratio 25.3x (target >= 100x); gamma = 1: theory 37.2 s
including the three independent re-solves that calibrate the error bar at the edge (reported 0.019-0.023
against a seed scatter of 0.023; 0.011-0.013 before the calibration), reached by N = 250 x 5000 steps
(4.0 s): ratio 0.1x; ESS draw Numba vs NumPy 301-339x.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from symtransfer.activations import get_activation
from symtransfer.datasets import digits_pair
from symtransfer.sim import WideNetwork
from symtransfer.theory import _sampling
from symtransfer.theory.adaptive import AdaptiveKernel, _row_basis


def ess_numpy(phi, B, A, href, dref, inv_s2, v, c, zeta0, normals, rng, n_burn, n_keep):
    """Plain NumPy elliptical slice sampling, all chains advanced together (the reference).

    Same target, proposals and shrinkage as :func:`symtransfer.theory._sampling.ess_sample`; the
    uniforms come from ``rng`` instead of per-chain splitmix64 streams, so the draws differ, not the
    distribution.
    """
    C, r = zeta0.shape

    def loglik(zeta, rows):
        d = dref[rows] + zeta @ A.T
        s = phi(href[rows] + zeta @ B.T) @ v
        return -0.5 * inv_s2 * np.sum(d * d, axis=1) + c * s * s + 0.5 * np.sum(zeta * zeta, axis=1)

    zeta = zeta0.copy()
    ll = loglik(zeta, np.arange(C))
    out = np.empty((C, n_keep, r))
    for step in range(n_burn + n_keep):
        nu = normals[:, step]
        logy = ll + np.log(rng.random(C))
        theta = 2.0 * math.pi * rng.random(C)
        lo, hi = theta - 2.0 * math.pi, theta.copy()
        todo = np.arange(C)
        for _ in range(60):
            prop = zeta[todo] * np.cos(theta[todo])[:, None] + nu[todo] * np.sin(theta[todo])[:, None]
            llt = loglik(prop, todo)
            ok = llt > logy[todo]
            zeta[todo[ok]], ll[todo[ok]] = prop[ok], llt[ok]
            todo = todo[~ok]
            if todo.size == 0:
                break
            neg = theta[todo] < 0.0
            lo[todo[neg]] = theta[todo[neg]]
            hi[todo[~neg]] = theta[todo[~neg]]
            theta[todo] = lo[todo] + (hi[todo] - lo[todo]) * rng.random(todo.size)
        if step >= n_burn:
            out[:, step - n_burn] = zeta
    return out


def bench_sampler(act, X, gamma, v, n_samples, n_chains=64, n_burn=32):
    """One ESS draw at the solved ``v`` (prior as reference): Numba kernel vs NumPy reference."""
    _, L = _row_basis(X)
    P, r = L.shape
    c = gamma**2 / 2.0
    A, B = np.eye(r), np.ascontiguousarray(L)
    href, dref = np.zeros((n_chains, P)), np.zeros((n_chains, r))
    n_keep = n_samples // n_chains
    rng = np.random.default_rng(2)
    normals = rng.standard_normal((n_chains, n_burn + n_keep, r))
    zeta0 = rng.standard_normal((n_chains, r))
    seeds = rng.integers(1, 2**62, size=n_chains).astype(np.uint64)
    phi = get_activation(act).compile().phi
    zeta, s, sq = np.empty((n_chains, n_keep, r)), np.empty((n_chains, n_keep)), np.empty(n_chains)

    def numba_draw():
        _sampling.ess_sample(phi, B, A, href, dref, 1.0, v, c, zeta0, normals, seeds, n_burn, n_keep,
                             zeta, s, sq)

    numba_draw()  # compile
    t0 = time.perf_counter()
    numba_draw()
    t_nb = time.perf_counter() - t0
    phi_np = get_activation(act)  # vectorised NumPy evaluation
    t0 = time.perf_counter()
    ref = ess_numpy(phi_np, B, A, href, dref, 1.0, v, c, zeta0, normals, np.random.default_rng(3), n_burn, n_keep)
    t_np = time.perf_counter() - t0
    # same distribution: compare the mean squared radius of the kept states
    print(f"one ESS draw ({n_chains} chains x {n_burn}+{n_keep} steps, r={r}, P={P}): Numba {t_nb:.3f} s, "
          f"NumPy {t_np:.3f} s, ratio {t_np / t_nb:.1f}x  (mean |zeta|^2/r: {np.mean(zeta**2):.3f} vs "
          f"{np.mean(ref**2):.3f})")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--act", default="relu")
    ap.add_argument("--gammas", type=float, nargs="+", default=[0.3, 1.0])
    ap.add_argument("--P", type=int, default=200)
    ap.add_argument("--widths", type=int, nargs="+", default=[250, 1000, 4000])
    ap.add_argument("--steps", type=int, nargs="+", default=[2500, 5000, 10000, 20000])
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--n-samples", type=int, default=32768)
    ap.add_argument("--repeats", type=int, default=3,
                    help="theory solves, solver seeds 0..repeats-1 (median time; their scatter checks the MC error)")
    args = ap.parse_args(argv)
    for gamma in args.gammas:
        run(args, gamma)


def run(args, gamma):
    """One problem: theory, simulations against it, the ratio lines and the sampler comparison."""
    args = argparse.Namespace(**{**vars(args), "gamma": gamma})

    X_all, y_all = digits_pair("3-8")
    idx = np.random.default_rng(0).permutation(len(y_all))
    X, y = X_all[idx[:args.P]], y_all[idx[:args.P]]
    Xt = X_all[idx[args.P:]]

    # compile every kernel the timed run uses (fit, and predict's conditional quadrature)
    AdaptiveKernel(args.act, gamma=args.gamma, n_samples=1024, tol=1e-2).fit(X[:10], y[:10]).predict(
        Xt[:5], return_std=True)
    # one solve per solver seed 0, 1, ...: the median is the time, and the seed-to-seed scatter of the
    # predictions checks the reported Monte Carlo error (at the edge it is larger, docs/adaptive.md
    # section 7); the gaps below are to the seed-0 solve
    times, preds, sds = [], [], []
    for seed in range(args.repeats):
        t0 = time.perf_counter()
        model = AdaptiveKernel(args.act, gamma=args.gamma, n_samples=args.n_samples, tol=args.tol,
                               seed=seed).fit(X, y)
        f_s, sd_s = model.predict(Xt, return_std=True)
        times.append(time.perf_counter() - t0)
        preds.append(f_s)
        sds.append(float(np.sqrt(np.mean(sd_s**2))))
        if seed == 0:
            theory, f = model, f_s
    t_theory = float(np.median(times))
    rms_sd = sds[0]
    scatter = float(np.sqrt(np.mean(np.var(preds, axis=0, ddof=1)))) if len(preds) > 1 else math.nan
    print(f"theory ({args.act}, gamma={args.gamma}, P={args.P}, {args.n_samples} samples): {t_theory:.2f} s "
          f"(median over solver seeds 0-{args.repeats - 1}: {', '.join(f'{t:.2f}' for t in times)}; seed 0: "
          f"{theory.n_iter_} Newton iterations, {theory.n_draws_} draws, residual {theory.residual_:.1e}, "
          f"condensate directions {theory.condensate_weights_.size}); MC error of {len(Xt)} held-out "
          f"predictions: reported {', '.join(f'{e:.3g}' for e in sds)}, seed-to-seed scatter "
          f"{'n/a (one seed)' if math.isnan(scatter) else f'{scatter:.3g}'}",
          flush=True)
    if scatter > 1.5 * rms_sd:
        # the reported error misses part of the scatter: the honest error is the observed one
        print(f"gamma={args.gamma}: the seed scatter exceeds the reported error; the comparison below uses "
              f"{scatter:.3g}", flush=True)
        rms_sd = scatter

    # gap^2 ~ (theory MC error)^2 + (simulation error)^2: the simulation is at least as accurate as
    # the theory when gap <= sqrt(2) MC errors; the looser 2 MC errors is reported alongside
    WideNetwork(args.widths[0], args.act, gamma=args.gamma, weight_decay=1.0, temperature=1.0, steps=10,
                seed=1, progress=False).fit(X, y)  # compile
    chosen = chosen_loose = None
    for N in args.widths:
        for steps in sorted(args.steps):
            t0 = time.perf_counter()
            net = WideNetwork(N, args.act, gamma=args.gamma, weight_decay=1.0, temperature=1.0, steps=steps,
                              average_from=0.2, seed=1, progress=False).fit(X, y)
            gap = float(np.sqrt(np.mean((net.predict(Xt) - f) ** 2)))
            t_sim = time.perf_counter() - t0
            loose, ok = gap <= 2 * rms_sd, gap <= math.sqrt(2) * rms_sd
            mark = "  <- as accurate as the theory" if ok else ("  <- within 2 MC errors" if loose else "")
            print(f"simulation N={N}, {steps} steps ({net.history_['time'][-1]:.0f} time units): {t_sim:.2f} s, "
                  f"RMS gap to theory {gap:.3g}{mark}", flush=True)
            if loose and (chosen_loose is None or t_sim < chosen_loose[2]):
                chosen_loose = (N, steps, t_sim)
            if ok:
                if chosen is None or t_sim < chosen[2]:
                    chosen = (N, steps, t_sim)
                break
    for what, ch in (("within 2 MC errors", chosen_loose), ("as accurate as the theory", chosen)):
        if ch is None:
            print(f"gamma={args.gamma}: no simulation {what}: ratio not defined (add widths/steps)")
        else:
            print(f"gamma={args.gamma}: ratio simulation(N={ch[0]}, {ch[1]} steps) / theory, {what}: "
                  f"{ch[2] / t_theory:.1f}x")
    bench_sampler(args.act, X, args.gamma, theory.v_, args.n_samples)


if __name__ == "__main__":
    main()
