"""Benchmark: DMFT population (docs/theory.md section 4) versus simulating the network.

Setting of issue 3: D = 784-dimensional inputs (MNIST-like), P = 200 training + 200 evaluation points,
relu, gradient flow. Both integrate the same Euler steps (same dt, same width/population, same loss
logging), so "time per unit of training time" compares like with like. Printed:

* population vs WideNetwork at equal width (target >= 5x): a step costs O(M P^2) for the population
  against O(N P D) for the network, and evaluation preactivations are never integrated step by step;
* population (Numba) vs a plain NumPy/BLAS implementation of the same population step, run in the
  same process;
* the error-controlled step (``dt=None``, docs/theory.md eq. (4.8)) against WideNetwork at D = 784
  over the same training time (target >= 5x), and against a fixed Euler step of equal accuracy
  (the fixed step is halved until its error against a tight-tolerance reference is no larger than
  the adaptive run's), on the linear source-spike case and on a ReLU case with lambda = 0.

Run: ``.venv/bin/python benchmarks/bench_dmft.py [--width 1000] [--steps 40]``.
"""

from __future__ import annotations

import argparse
import math
import os
import time

# On a machine shared with other jobs, multithreaded OpenBLAS spin-waits for descheduled threads and
# LAPACK/BLAS calls slow down 10-100x (measured: a 400x400 eigh takes 5 s instead of 0.06 s). The
# population's BLAS calls therefore run single-threaded here unless the caller chose otherwise; the
# simulator keeps its Numba threads, so this setting disadvantages the population, not the network.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numba  # noqa: E402
import numpy as np  # noqa: E402

from symtransfer.sim import WideNetwork  # noqa: E402
from symtransfer.theory.dmft import GradientFlowDMFT  # noqa: E402


def numpy_population(X, y, Xe, H0, a0, gamma, lam, dt, steps, log_every):
    """Reference: the population step of eq. (4.1) written directly in NumPy (relu, T = 0),
    integrating the preactivations on train and evaluation inputs together."""
    D = X.shape[1]
    P = X.shape[0]
    Xa = np.vstack([X, Xe])
    K = Xa @ Xa[:P].T / D  # (P + Pe, P)
    H = H0.copy()
    a = a0.copy()
    M = a.size
    for s in range(steps):
        F = np.maximum(H[:, :P], 0.0)
        r = y - F.T @ a / (gamma * M)
        Z = gamma * a[:, None] * (H[:, :P] > 0) * r[None, :]
        a = a + dt * (gamma * F @ r - lam * a)
        H = H + dt * (Z @ K.T - lam * H)
        if (s + 1) % log_every == 0:
            Fe = np.maximum(H[:, P:], 0.0)
            float(np.mean((Fe.T @ a / (gamma * M)) ** 2))
    return H, a


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--dim", type=int, default=784)
    ap.add_argument("--n-train", type=int, default=200)
    ap.add_argument("--n-eval", type=int, default=200)
    ap.add_argument("--skip-accuracy", action="store_true", help="skip the equal-accuracy comparison")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    D, P, Pe, N = args.dim, args.n_train, args.n_eval, args.width
    X = rng.standard_normal((P, D))
    Xe = rng.standard_normal((Pe, D))
    beta = rng.standard_normal(D)
    y = np.sign(X @ beta)
    ye = np.sign(Xe @ beta)
    gamma, lam, dt, steps = 1.0, 1.0, 0.002, args.steps

    # compile both (small runs), outside the timings
    GradientFlowDMFT("relu", population=8, dt=dt, t_max=2 * dt, early_stop=False).fit(X[:5], y[:5], Xe[:3])
    WideNetwork(8, "relu", lr=dt, steps=2, progress=False).fit(X[:5], y[:5], eval_set=(Xe[:3], ye[:3]))

    def time_net(n_steps):
        net = WideNetwork(N, "relu", gamma=gamma, weight_decay=lam, lr=dt, steps=n_steps,
                          log_every=max(1, n_steps // 10), progress=False, seed=1)
        t0 = time.perf_counter()
        net.fit(X, y, eval_set=(Xe, ye))
        return time.perf_counter() - t0

    def time_pop(n_steps):
        pop = GradientFlowDMFT("relu", gamma=gamma, weight_decay=lam, population=N, dt=dt, t_max=n_steps * dt,
                               n_records=11, early_stop=False, seed=1)
        t0 = time.perf_counter()
        pop.fit(X, y, Xe, y_eval=ye)
        return time.perf_counter() - t0, pop

    def time_np(n_steps, pop):
        t0 = time.perf_counter()
        numpy_population(X, y, Xe, pop.H_.copy(), pop.a_.copy(), gamma, lam, dt, n_steps, max(1, n_steps // 10))
        return time.perf_counter() - t0

    # Each method runs S and 2S steps with the same 10 loss records: the difference is the cost of S
    # steps of training time without the fixed costs (set-up, initial sample, final diagnostics).
    # The cheap methods run 4x more steps (and the best of two repeats) so that the difference of
    # two timings is not swamped by the noise of a shared machine.
    S, S_pop = steps, 4 * steps
    t_net = [time_net(S), time_net(2 * S)]
    t_pop = [min(time_pop(n)[0] for _ in range(2)) for n in (S_pop, 2 * S_pop)]
    pop = time_pop(S)[1]
    t_np = [min(time_np(n, pop) for _ in range(2)) for n in (S_pop, 2 * S_pop)]

    def rate(t, n):  # seconds per unit of training time, marginal (nan: the longer run was not slower)
        return (t[1] - t[0]) / (n * dt) if t[1] > t[0] else math.nan

    r_net, r_pop, r_np = rate(t_net, S), rate(t_pop, S_pop), rate(t_np, S_pop)
    # total time per unit training time of one full run each, fixed costs included
    tot_net, tot_pop = t_net[1] / (2 * S * dt), t_pop[1] / (2 * S_pop * dt)
    print(f"OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}, numba threads={numba.get_num_threads()}")
    print(f"D={D}, P={P} train + {Pe} eval, width = population = {N}, dt={dt}; network runs of {S} and "
          f"{2 * S} steps, population runs of {S_pop} and {2 * S_pop} steps, 10 loss records per run")
    print(f"{'':28s}{'s per unit time (marginal)':>28s}{'s per unit time (whole run)':>30s}")
    for name, r, tot in (("WideNetwork (Numba)", r_net, tot_net), ("GradientFlowDMFT (Numba)", r_pop, tot_pop),
                         ("population, plain NumPy", r_np, t_np[1] / (2 * S_pop * dt))):
        print(f"{name:28s}{r:28.2f}{tot:30.2f}")
    print(f"ratio WideNetwork / DMFT   : {r_net / r_pop:6.2f}x marginal, {tot_net / tot_pop:6.2f}x whole run"
          f"   (target >= 5x)")
    print(f"ratio NumPy / DMFT (Numba) : {r_np / r_pop:6.2f}x marginal")
    print(f"flop ratio 2D/P per step   : {2 * D / P:6.2f}   (network O(N P D) vs population O(M P^2))")
    assert math.isfinite(pop.history_["train_loss"][-1])

    # the adaptive step over the same training time as the network's runs (S and 2S steps of lr)
    def time_adaptive(t_end):
        pa = GradientFlowDMFT("relu", gamma=gamma, weight_decay=lam, population=N, t_max=t_end, n_records=11,
                              early_stop=False, seed=1)
        t0 = time.perf_counter()
        pa.fit(X, y, Xe, y_eval=ye)
        return time.perf_counter() - t0, pa

    ta = [min(time_adaptive(n * dt)[0] for _ in range(2)) for n in (S_pop, 2 * S_pop)]
    pa = time_adaptive(2 * S_pop * dt)[1]
    r_ad = rate(ta, S_pop)
    print(f"adaptive step (dt=None)    : {r_ad:6.2f} s per unit time marginal, {pa.n_rhs_} right-hand sides for "
          f"t = {2 * S_pop * dt:g} (mean step {2 * S_pop * dt / max(pa.n_steps_, 1):.2e})")
    print(f"ratio WideNetwork / DMFT (adaptive step): {r_net / r_ad:6.2f}x marginal   (target >= 5x)")
    if not args.skip_accuracy:
        equal_accuracy()


def _whitened(P, D, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((P, D))
    s, U = np.linalg.eigh(X.T @ X / P)
    X = X @ U @ np.diag(s ** -0.5) @ U.T
    beta = rng.standard_normal(D)
    beta *= math.sqrt(D) / np.linalg.norm(beta)
    return X, X @ beta / math.sqrt(D)


def equal_accuracy():
    """Adaptive step against the fixed Euler step that reaches the same error, same process."""
    import warnings

    warnings.simplefilter("ignore")
    rng = np.random.default_rng(1)
    Xr = rng.standard_normal((48, 16))
    Xre = rng.standard_normal((48, 16))
    beta = rng.standard_normal(16)
    beta *= 4.0 / np.linalg.norm(beta)

    def teacher(Z):
        z = Z @ beta / 4.0
        return z + (z * z - 1.0) / math.sqrt(2.0)

    Xl, yl = _whitened(160, 8)
    cases = [
        ("linear, g = 3, P = 160, D = 8 (source spike)", "linear", dict(gamma=3 / math.sqrt(8), weight_decay=0.0,
                                                                          population=2000, t_max=0.5), Xl, yl, Xl),
        ("relu, lambda = 0, P = 48, D = 16, M = 300", "relu", dict(gamma=1.0, weight_decay=0.0, population=300,
                                                                    t_max=4.0), Xr, teacher(Xr), Xre),
    ]
    print("\nadaptive step vs fixed Euler step of equal accuracy (error: RMS over the held-out predictor and "
          "the learned kernel Phi, relative to their RMS, against rtol = 1e-6)")
    for name, act, kw, Xa, ya, Xb in cases:
        def run(**extra):
            pop = GradientFlowDMFT(act, early_stop=False, n_records=5, record_spacing="uniform", **kw, **extra)
            t0 = time.perf_counter()
            pop.fit(Xa, ya, Xb)
            return time.perf_counter() - t0, pop, np.concatenate([pop.predict(Xb), pop.kernel(Xa).ravel()])

        _, _, ref = run(rtol=1e-6)
        scale = math.sqrt(np.mean(ref ** 2))
        ta, pa, fa = run()
        ea = math.sqrt(np.mean((fa - ref) ** 2)) / scale
        dtf = 0.25 * 2.0 / (np.max(np.linalg.eigvalsh(pa.Phi_t_[0] + pa.G_t_[0] * (Xa @ Xa.T / Xa.shape[1]))))
        while True:
            tf, pf, ff = run(dt=dtf, check_stability=False)
            ef = math.sqrt(np.mean((ff - ref) ** 2)) / scale
            if ef <= ea or pf.n_steps_ > 200 * pa.n_rhs_:
                break
            dtf /= 2
        print(f"{name}: adaptive {pa.n_rhs_} RHS ({pa.n_steps_} steps, {pa.n_rejected_} rejected), error {ea:.2e}, "
              f"{ta:.2f} s; Euler dt={dtf:.2e}: {pf.n_steps_} steps, error {ef:.2e}, {tf:.2f} s; "
              f"ratio fixed/adaptive {tf / ta:.2f}x")


if __name__ == "__main__":
    main()
