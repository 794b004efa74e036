"""Numba WideNetwork against a plain NumPy implementation of the same update (eq. 1.4).

Width 4096, D = 64, P = 256, mini-batch 64, ReLU; gradient descent (T = 0) and Langevin (T = 1).
Prints steps/s of both and their ratio, then the cost of the default loss logging: steps/s at the
default ``log_every`` against logging off, as a ratio measured in this process.
Usage: python benchmarks/bench_simulator.py [--steps N]
"""

import argparse
import math
import time

import numpy as np

from symtransfer._reference import langevin_step_numpy
from symtransfer.sim import WideNetwork, _BatchStream
from symtransfer.tasks import make_task


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--width", type=int, default=4096)
    args = parser.parse_args()
    N, D, P, B, steps = args.width, 64, 256, 64, args.steps
    task = make_task(P, 1, D, seed=0)
    X, y = task.X_train, task.y_train
    for T in (0.0, 1.0):
        kw = dict(activation="relu", gamma=1.0, weight_decay=1.0, temperature=T, lr=1e-3, batch_size=B,
                  log_every=10**9, seed=0, progress=False)
        WideNetwork(N, steps=2, **kw).fit(X, y)  # compile outside the timing
        t0 = time.perf_counter()
        WideNetwork(N, steps=steps, **kw).fit(X, y)
        t_nb = time.perf_counter() - t0

        rng = np.random.default_rng(0)
        W, a = rng.standard_normal((N, D)), rng.standard_normal(N)
        batches = _BatchStream(P, B, np.random.default_rng(1)).take(steps)
        t0 = time.perf_counter()
        for idx in batches:
            W, a = langevin_step_numpy(X, y, W, a, idx, lr=1e-3, gamma=1.0, weight_decay=1.0, temperature=T,
                                       phi=lambda h: np.maximum(h, 0.0), dphi=lambda h: (h > 0).astype(float),
                                       rng=rng)
        t_np = time.perf_counter() - t0
        print(f"T={T:g}: numba {steps / t_nb:8.1f} steps/s   numpy {steps / t_np:8.1f} steps/s   "
              f"ratio {t_np / t_nb:5.2f}x   (N={N}, D={D}, P={P}, B={B})")
    logging_cost(X, y, N, B, steps)


def logging_cost(X, y, N, B, steps, repeats=3):
    """Default logging against none, interleaved runs, best of ``repeats`` each (load spikes only slow)."""
    kw = dict(activation="relu", gamma=1.0, weight_decay=1.0, temperature=0.0, lr=1e-3, batch_size=B, seed=0,
              progress=False)
    best = {"default": math.inf, "off": math.inf}
    n_log = 0
    for _ in range(repeats):
        for name, log_every in (("default", None), ("off", 10**9)):
            t0 = time.perf_counter()
            net = WideNetwork(N, steps=steps, log_every=log_every, **kw).fit(X, y)
            best[name] = min(best[name], time.perf_counter() - t0)
            if name == "default":
                n_log = len(net.history_["step"])
    ratio = best["off"] / best["default"]
    print(f"default logging ({n_log} entries over {steps} steps): {steps / best['default']:8.1f} steps/s, off "
          f"{steps / best['off']:8.1f} steps/s   ratio {ratio:5.3f} (cost {100 * (1 - ratio):.1f}%)")


if __name__ == "__main__":
    main()
