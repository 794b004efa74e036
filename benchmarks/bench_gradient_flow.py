"""Benchmark: 100 x 100 gradient-flow phase diagrams from the closed forms (docs/theory.md §7).

Prints, for a grid over ``(alpha, nu2)`` and one over ``(g1, nu2)``, the time of
``gradient_flow.phase_diagram`` (compiled SymPy expressions on NumPy arrays; with weight decay the
root of eq. (7.4) by vectorised bisection) and the ratio against a plain-Python loop evaluating the
same equations point by point with ``math`` (checked to agree), both measured in this process.

Run: ``.venv/bin/python benchmarks/bench_gradient_flow.py``.
"""

from __future__ import annotations

import math
import time

import numpy as np

from symtransfer.theory import gradient_flow as gf

N = 100


def _mp(r, nu):
    b = r + nu - 1.0
    disc = math.sqrt(b * b + 4.0 * r)
    G = 2.0 / (b + disc) if b > 0 else (disc - b) / (2.0 * r)
    Gp = G * (1.0 + G) / disc
    m = nu * G / (1.0 + G)
    V = nu * G / ((1.0 + G) * disc)
    Sq = nu * G * (1.0 + nu + G * (1.0 - nu)) / ((1.0 + G) ** 2 * disc)
    return G, Gp, m, V, Sq


def _source_py(g, lt, nu1, sig1):
    """(bulk, spike, cos, sin) by eqs. (7.3)-(7.5), one point."""
    if lt == 0.0:
        if math.isinf(nu1):
            q, m = 1.0, 1.0
        elif nu1 < 1:
            q, m = nu1 + sig1**2 * nu1 / (1 - nu1), nu1
        else:
            q, m = 1 + sig1**2 / (nu1 - 1), 1.0
        return 1.0, math.sqrt(1 + g * g * q) - 1, m / math.sqrt(q), math.sqrt(max(0.0, 1 - m * m / q))
    if math.isinf(nu1):
        return 0.0, max(g - lt, 0.0), 1.0, 0.0
    if g * math.sqrt(nu1 * (1 + nu1 + sig1**2)) <= lt * nu1:
        return 0.0, 0.0, 1.0, 0.0
    lo, hi = -60.0, 60.0
    for _ in range(64):
        mid = 0.5 * (lo + hi)
        tau = math.exp(mid)
        G, Gp, m, V, Sq = _mp(tau, nu1)
        if g * tau * math.sqrt(Sq + sig1**2 * V) - lt * nu1 > 0:
            hi = mid
        else:
            lo = mid
    tau = math.exp(0.5 * (lo + hi))
    G, Gp, m, V, Sq = _mp(tau, nu1)
    q = Sq + sig1**2 * V
    return 0.0, g * math.sqrt(q), m / math.sqrt(q), math.sqrt(max(0.0, 1 - m * m / q))


def _target_py(c0, c1, p, nu2, lam2, sig2):
    if c0 == 0.0:
        return 1.0 if c1 == 0.0 else 1 - p * p + p * p * (lam2 / (lam2 + c1 * nu2)) ** 2
    if lam2 > 0:
        r, rp = lam2 / c0, lam2 / (c0 + c1)
        G, Gp, m, V, Sq = _mp(r, nu2)
        return Gp * ((1 - p * p) * r * r + p * p * rp * rp / (m + rp * G) ** 2) + sig2**2 * V
    chi = c1 / c0
    if nu2 < 1:
        return (1 - nu2) * (1 - p * p + p * p / (1 + chi * nu2) ** 2) + sig2**2 * nu2 / (1 - nu2)
    return sig2**2 / (nu2 - 1)


def _gain_py(x_name, y_name, xv, yv, params):
    out = np.empty((len(yv), len(xv)))
    for j, yy in enumerate(yv):
        for i, xx in enumerate(xv):
            p = dict(params)
            p[x_name], p[y_name] = xx, yy
            b, s, c, sn = _source_py(p["g1"], p["weight_decay"], p["nu1"], p["source_noise"])
            pp = p["alpha"] * c + p["alpha_noise"] * sn
            ft = _target_py(b, s, pp, p["nu2"], p["ridge"], p["noise"])
            sc = _target_py(1.0, 0.0, 0.0, p["nu2"], p["ridge"], p["noise"])
            out[j, i] = sc - ft
    return out


def _bench(label, x_name, y_name, xv, yv, **params):
    gf.phase_diagram(x_name, y_name, x_values=xv[:3], y_values=yv[:3], **params)  # compile the expressions
    reps = 3
    t0 = time.perf_counter()
    for _ in range(reps):
        d = gf.phase_diagram(x_name, y_name, x_values=xv, y_values=yv, **params)
    t_fast = (time.perf_counter() - t0) / reps
    full = dict(gf.DEFAULT_PARAMETERS)
    full.update(params)
    t0 = time.perf_counter()
    ref = _gain_py(x_name, y_name, xv, yv, full)
    t_py = time.perf_counter() - t0
    err = float(np.max(np.abs(ref - d.gain)))
    print(f"{label}: phase_diagram {t_fast * 1e3:8.1f} ms   plain-Python loop {t_py * 1e3:8.1f} ms   "
          f"ratio {t_py / t_fast:6.1f}x   max |difference| {err:.1e}   negative transfer on "
          f"{np.mean(d.gain < 0):.0%} of the grid")


def main():
    alpha = np.linspace(0.0, 1.0, N)
    nu2 = np.geomspace(0.05, 5.0, N)
    g1 = np.geomspace(0.01, 100.0, N)
    _bench("(alpha, nu2), lambda = 0, nu1 = 0.5, ridge 0.1     ", "alpha", "nu2", alpha, nu2,
           nu1=0.5, source_noise=0.5, ridge=0.1, noise=0.2)
    _bench("(alpha, nu2), weight decay 0.1, nu1 = 0.5 (root)  ", "alpha", "nu2", alpha, nu2,
           nu1=0.5, source_noise=0.5, weight_decay=0.1)
    _bench("(g1, nu2), weight decay 0.2, nu1 = 2, ridge 0.1   ", "g1", "nu2", g1, nu2,
           nu1=2.0, source_noise=1.0, weight_decay=0.2, ridge=0.1)


if __name__ == "__main__":
    main()
