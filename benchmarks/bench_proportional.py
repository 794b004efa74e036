"""Benchmark: a 100 x 100 transfer phase diagram from the proportional-limit closed forms.

Target (issue 5): the grid in under 2 s on 2 cores. Prints

* the time of ``phase_diagram`` (scratch + transfer at every point) for fine-tuning and for jointly
  rich training, after a warm-up call that compiles (compile time printed separately);
* the ratio against a plain NumPy reference evaluating the same equations (P.6)-(P.12) vectorised
  over the grid with nested bisection, run in the same process (and checked to agree);
* the equivalent number of exact finite-D solves per second: one grid point stands for the
  D -> infinity limit of ``LinearTheory`` (docs/theory.md, eqs. 2.9, 3.4-3.6), whose single solve at
  D = 500 / 1000 is timed here for comparison.

Run: ``.venv/bin/python benchmarks/bench_proportional.py``.
"""

from __future__ import annotations

import math
import time

import numpy as np

from symtransfer.theory import proportional as pr

N = 100
PARAMS = dict(pr.DEFAULT_PARAMETERS)
for k in ("alpha", "nu2"):
    PARAMS.pop(k)


# --------------------------------------------------------------------------- NumPy reference


def _mp(r, nu):
    b = r + nu - 1.0
    disc = np.sqrt(b * b + 4.0 * r)
    G = np.where(b > 0, 2.0 / (b + disc), (disc - b) / (2.0 * r))
    Gp = G * (1.0 + G) / disc
    m = nu * G / (1.0 + G)
    V = nu * G / ((1.0 + G) * disc)
    Sq = nu * G * (1.0 + nu + G * (1.0 - nu)) / ((1.0 + G) ** 2 * disc)
    return G, Gp, m, V, Sq


def _bisect(f, lo, hi, iters=60):
    """Vectorised bisection for increasing f with f(lo) <= 0 < f(hi) (brackets grown beforehand)."""
    for _ in range(200):
        bad = f(hi) <= 0
        if not bad.any():
            break
        lo = np.where(bad, hi, lo)
        hi = np.where(bad, 2 * hi, hi)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        pos = f(mid) > 0
        hi = np.where(pos, mid, hi)
        lo = np.where(pos, lo, mid)
    return 0.5 * (lo + hi)


def _target(c0, c1, p, nu2, lam2, sig2, s1, a1):
    r, rs = lam2 / c0, lam2 / (c0 + c1)
    G, Gp, m, V, Sq = _mp(r, nu2)
    den = m + rs * G
    om = p * m / den
    err = Gp * ((1 - p * p) * r * r + p * p * rs * rs / den**2) + sig2**2 * V
    perp = p * p * rs * rs * G * G * V / den**2 + (1 - p * p) * Sq + sig2**2 * V
    kap = perp / c0**2 + om**2 / (c0 + c1) ** 2
    rho = s1 * perp / c0**2 + a1 * om**2 / (c0 + c1) ** 2
    return err, kap, rho


def _amplitude(nu, g, lam, T, sig):
    s2 = T / lam

    def f(a):
        G, Gp, m, V, Sq = _mp(lam / a, nu)
        return a - g * g * (Sq + sig * sig * V) / (nu * a) - s2

    return _bisect(f, s2 + 0 * nu, 2 * s2 + 0 * nu)


def numpy_reference(setting, alpha, nu2, p):
    """Scratch and transfer errors on the grid, plain NumPy (same equations, nested bisection)."""
    shape = np.broadcast_shapes(np.shape(alpha), np.shape(nu2))
    alpha = np.broadcast_to(alpha, shape).ravel()
    nu2 = np.broadcast_to(nu2, shape).ravel()
    a2 = _amplitude(nu2, p["g2"], p["weight_decay2"], p["temperature2"], p["sigma2"])
    G, Gp, m, V, Sq = _mp(p["weight_decay2"] / a2, nu2)
    scratch = (p["weight_decay2"] / a2) ** 2 * Gp + p["sigma2"] ** 2 * V
    a1 = _amplitude(np.full(1, p["nu1"]), p["g1"], p["weight_decay1"], p["temperature1"], p["sigma1"])
    s1 = p["temperature1"] / p["weight_decay1"]
    G1, Gp1, m1, V1, Sq1 = _mp(p["weight_decay1"] / a1, p["nu1"])
    pp = alpha * m1 / np.sqrt(Sq1 + p["sigma1"] ** 2 * V1)
    lam2, sig2 = p["weight_decay2"], p["sigma2"]
    if setting == "finetune":
        return scratch.reshape(shape), _target(s1, a1 - s1, pp, nu2, lam2, sig2, s1, a1)[0].reshape(shape)
    d = p["coupling"]
    m2, sc2 = (d / (lam2 + d)) ** 2, p["temperature2"] / (lam2 + d)
    chat = p["g2"] ** 2 * lam2 / (nu2 * (lam2 + d))

    def A_of(t):
        M = t * m2

        def f(A):
            return A - t * (sc2 + chat * t * m2 * _target(A + M * s1, M * (a1 - s1), pp, nu2, lam2, sig2, s1, a1)[2])

        return _bisect(f, t * sc2, 2 * t * sc2 + 1.0)

    def H(t):
        M = t * m2
        k = _target(A_of(t) + M * s1, M * (a1 - s1), pp, nu2, lam2, sig2, s1, a1)[1]
        return 1 - 1 / t - chat * k

    t = _bisect(H, np.ones_like(nu2), 2 * np.ones_like(nu2), iters=45)
    A, M = A_of(t), t * m2
    return scratch.reshape(shape), _target(A + M * s1, M * (a1 - s1), pp, nu2, lam2, sig2, s1, a1)[0].reshape(shape)


# --------------------------------------------------------------------------- main


def _time(fn, repeat=3):
    best = math.inf
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main():
    import numba

    print(f"numba threads: {numba.get_num_threads()}")
    t0 = time.perf_counter()
    pr.phase_diagram("alpha", "nu2", n=4, setting="joint", **PARAMS)
    pr.phase_diagram("alpha", "nu2", n=4, setting="finetune", **PARAMS)
    print(f"warm-up (compile or load cache): {time.perf_counter() - t0:.2f} s")
    x = np.linspace(0.0, 1.0, N)
    y = np.geomspace(0.1, 10.0, N)
    for setting in ("finetune", "joint"):
        t, d = _time(lambda: pr.phase_diagram("alpha", "nu2", x_values=x, y_values=y, setting=setting, **PARAMS))
        t_ref, (sc, tr) = _time(lambda: numpy_reference(setting, x[None, :], y[:, None], dict(PARAMS)), repeat=1)
        dev = max(np.max(np.abs(sc - d.scratch_error)), np.max(np.abs(tr - d.transfer_error)))
        status = "OK" if t < 2.0 else "SLOWER THAN TARGET"
        rate = N * N / t
        print(f"{setting:9s} {N}x{N} grid: {t:.3f} s ({N * N / t:,.0f} points/s; target < 2 s: {status}); "
              f"NumPy reference {t_ref:.2f} s -> speed-up x{t_ref / t:.1f}; max |difference| {dev:.1e}")
    # exact finite-D reference solve (one draw), for the "equivalent finite-D solves/s" figure
    try:
        from symtransfer.tasks import make_transfer_pair
        from symtransfer.theory.linear import LinearTheory
    except ImportError:  # pragma: no cover - the lead's modules are absent
        return
    p = PARAMS
    for D in (500,):
        pair = make_transfer_pair(D, int(p["nu1"] * D), D, 0, 0.5, noise_source=p["sigma1"],
                                  noise_target=p["sigma2"], seed=0)

        def solve():
            src = LinearTheory(gamma=p["g1"] / math.sqrt(p["nu1"] * D), weight_decay=p["weight_decay1"],
                               temperature=p["temperature1"]).fit(pair.source.X_train, pair.source.y_train)
            return src.transfer(pair.target.X_train, pair.target.y_train, gamma=p["g2"] / math.sqrt(D),
                                weight_decay=p["weight_decay2"], temperature=p["temperature2"], coupling=p["coupling"])

        t_fd, _ = _time(solve, repeat=1)
        print(f"finite-D LinearTheory transfer solve at D={D} (nu1={p['nu1']:g}, nu2=1): {t_fd:.2f} s "
              f"= {1 / t_fd:.2f} solves/s; the joint grid evaluates the D->inf limit at "
              f"{rate:,.0f} points/s, i.e. x{rate * t_fd:,.0f} the rate of single finite-D solves "
              f"(which would also need averaging over draws)")


if __name__ == "__main__":
    main()
