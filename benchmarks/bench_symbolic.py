"""Benchmark: derived closed-form dual kernels against the quadrature path, in the same process.

Prints, for activations whose kernel SymPy derives (docs/symbolic.md, section 1),

* the time to evaluate ``dual_kernel`` on the P x P Gram matrix of P = 100 inputs with the closed form
  and with polar quadrature (``Activation(spec, closed_form=False)``), their ratio and the largest
  difference relative to the kernel's scale;
* the same for the lazy limit of ``AdaptiveKernel`` (``gamma = 0``: fit plus predictions on 50 test
  inputs), which is where the solver uses the kernel;
* the one-off cost of the derivation itself.

Absolute times depend on the machine and its load; the ratios are measured back to back.
Run: ``.venv/bin/python benchmarks/bench_symbolic.py``.
"""

from __future__ import annotations

import time

import numpy as np

from symtransfer.activations import Activation, _KERNEL_CACHE
from symtransfer.theory.adaptive import AdaptiveKernel

SPECS = ["relu", "gelu", "erf", "x*exp(-x**2/4)", "Max(0, x)**2", "abs", "sin"]
P, P_TEST, D = 100, 50, 10


def _best(fn, repeat=3):
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((P, D))
    y = np.tanh(X[:, 0]) + 0.1 * rng.standard_normal(P)
    Xt = rng.standard_normal((P_TEST, D))
    K = X @ X.T / D
    d = np.diag(K)
    print(f"dual_kernel on a {P} x {P} Gram matrix; AdaptiveKernel(gamma=0) fit + predict on {P_TEST} inputs")
    print(f"{'activation':>16} {'derive s':>9} {'closed ms':>10} {'quad ms':>9} {'ratio':>7} {'max rel diff':>12}"
          f" {'lazy ratio':>10}")
    for spec in SPECS:
        _KERNEL_CACHE.clear()
        t0 = time.perf_counter()
        closed = Activation(spec)
        closed.dual_kernel(1.0, 0.5, 1.0)
        t_derive = time.perf_counter() - t0
        quad = Activation(spec, closed_form=False)
        args = (d[:, None], K, d[None, :])
        tc, kc = _best(lambda: closed.dual_kernel(*args))
        tq, kq = _best(lambda: quad.dual_kernel(*args), repeat=1)
        scale = np.sqrt(np.outer(np.diag(kq), np.diag(kq)))
        diff = float(np.max(np.abs(kc - kq) / np.maximum(scale, 1e-300)))

        def lazy(act):
            m = AdaptiveKernel(act, gamma=0.0).fit(X, y)
            return m.predict(Xt)

        tl_c, fc = _best(lambda: lazy(closed))
        tl_q, fq = _best(lambda: lazy(quad), repeat=1)
        assert np.max(np.abs(fc - fq)) <= 1e-9 * max(1.0, np.max(np.abs(fq)))
        print(flush=True, *[f"{spec:>16} {t_derive:9.2f} {1e3 * tc:10.2f} {1e3 * tq:9.1f} {tq / tc:7.0f} {diff:12.1e}"
              f" {tl_q / tl_c:10.0f}"])


if __name__ == "__main__":
    main()
