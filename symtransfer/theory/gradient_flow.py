"""Closed forms of gradient-flow transfer for linear networks on linear teachers (docs/theory.md §7).

Setting (docs/theory.md eqs. (1.2)-(1.4) with ``phi(h) = h``, ``T = 0``, ``sigma_0 = 1``): a two-layer
linear network of infinite width is trained by gradient flow on a source task, then a fresh readout
is trained on the target task on top of the source features ("readout" fine-tuning, kernel
``Phi_1``) or the whole network is trained in its linearised regime around the source weights
("lazy" fine-tuning, kernel ``Phi_1 + G_1 * K``). Teachers are linear, ``y = beta.x/sqrt(D) +
sigma eps`` with ``|beta|^2 = D``; target inputs are ``N(0, I_D)``, ``P_2 = nu2 D`` and ``D -> inf``.

The structural fact everything rests on (eq. (7.2)): for linear ``phi`` the per-neuron flow of
``(a, w)`` is linear with a generator in the Lorentz algebra ``so(1, D)`` (it conserves
``a^2 - |w|^2``), and the initial law is isotropic, so the covariance of ``(a, w)`` is at all
times ``e^{-2 lambda t}`` times the square of a pure boost. The source kernel is therefore exactly

    Sigma_1 = b I + s u u^T          (bulk b, spike s along the unit vector u = w_eff/|w_eff|),

for any data set, finite or infinite, at any time: at ``lambda = 0``, ``b = 1`` and
``s = chi = sqrt(1 + g^2 q) - 1`` with ``q = |w_eff|^2/D`` and ``g = gamma sqrt(D)`` (eq. (7.3)); the
network's final predictor is the minimum-norm least-squares fit, so ``u`` is the direction of the
min-norm estimate of the source teacher, whose part orthogonal to ``beta_1`` is the source's
finite-sample noise direction (eq. (7.5)). With weight decay the bulk decays to 0 and the flow
converges to a rank-one kernel along a ridge estimate with a self-consistent ridge (eq. (7.4)).

Target errors follow from deterministic equivalents of ridge regression with a spiked penalty
(Marchenko-Pastur, eqs. (7.6)-(7.9)); the spike enters only through ``p = u.beta_2/sqrt(D)``.

Every closed form is a SymPy expression (:func:`expressions`) compiled once with ``lambdify``; the
one scalar root (eq. (7.4)) is solved by vectorised bisection. Reported errors are population test
errors of the mean predictor against the *noiseless* target teacher, ``|w_hat_2 - beta_2|^2/D``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import sympy as sp

from .._validation import broadcast_flat, check_real_array
from ..errors import ConvergenceError

__all__ = [
    "MODES",
    "PARAMETERS",
    "DEFAULT_PARAMETERS",
    "SourceKernel",
    "GradientFlowPhaseDiagram",
    "expressions",
    "source_spike",
    "source_kernel",
    "finetune_error",
    "scratch_error",
    "transfer_gain",
    "rich_limit_error",
    "optimal_source_strength",
    "phase_diagram",
]

MODES = ("readout", "lazy")

#: Parameters of :func:`finetune_error` that may be phase-diagram axes.
PARAMETERS = ("nu2", "alpha", "g1", "nu1", "ridge", "noise", "alpha_noise", "weight_decay", "source_noise")

#: Values used by :func:`phase_diagram` for parameters that are neither axis nor given.
DEFAULT_PARAMETERS = dict(nu2=0.5, alpha=0.8, g1=2.0, nu1=np.inf, ridge=0.0, noise=0.0, alpha_noise=0.0,
                          weight_decay=0.0, source_noise=0.0)

# (low, low_open, high, allow_inf)
_RANGES = {
    "g": (0.0, False, None, False),
    "g1": (0.0, False, None, False),
    "nu1": (0.0, True, None, True),
    "nu2": (0.0, True, None, False),
    "alpha": (-1.0, False, 1.0, False),
    "alpha_noise": (-1.0, False, 1.0, False),
    "ridge": (0.0, False, None, False),
    "noise": (0.0, False, None, False),
    "weight_decay": (0.0, False, None, False),
    "source_noise": (0.0, False, None, False),
    "time": (0.0, False, None, True),
}

# ln(tau) on [-60, 60]: 64 halvings reach 7e-18, below double precision of ln(tau)
_BISECT_ITERS = 64
_LOG_TAU = (-60.0, 60.0)
# Beyond these magnitudes the closed forms over- or underflow float64: refused, naming the parameter,
# rather than returned as NaN (samples per dimension are positive scales, bounded on both sides).
_SCALE_LIMIT = 1e100
_SCALED = {"nu1", "nu2"}
# Ridges below this are ridgeless to double precision (relative difference < 1e-15, measured).
_RIDGE_FLOOR = 1e-100
_RK_MAX_STEPS = 200_000


# ------------------------------------------------------------------------------------------------
# Symbolic layer
# ------------------------------------------------------------------------------------------------


class Expression(NamedTuple):
    """A named closed form: the SymPy expression, its free symbols in call order, its equation."""

    expr: sp.Expr
    symbols: tuple
    equation: str
    description: str


def _mp_symbolic(r, nu):
    """Marchenko-Pastur scalars ``(G, G', m, V, Sq)`` at ridge ``r``, ratio ``nu`` (eq. (7.6))."""
    b = r + nu - 1
    disc = sp.sqrt(b**2 + 4 * r)
    # The two branches are the same root written without cancellation on either side of b = 0.
    G = sp.Piecewise((2 / (b + disc), b > 0), ((disc - b) / (2 * r), True))
    Gp = G * (1 + G) / disc
    m = nu * G / (1 + G)
    V = nu * G / ((1 + G) * disc)
    Sq = nu * G * (1 + nu + (1 - nu) * G) / ((1 + G) ** 2 * disc)
    return G, Gp, m, V, Sq


@functools.lru_cache(maxsize=None)
def _build():
    pos = dict(positive=True, real=True)
    g, q, nu1, nu2, sig1, sig2 = sp.symbols("g q nu_1 nu_2 sigma_1 sigma_2", **pos)
    lam, lam2, tau, chi, s, c0, c1, t = sp.symbols("lambdatilde lambda_2 tau chi s c_0 c_1 t", **pos)
    r, rp = sp.symbols("r r'", **pos)
    m_, q_ = sp.symbols("m q_1", **pos)
    alpha, alpha_xi, p, K = sp.symbols("alpha alpha_xi p K", real=True)

    out = {}

    def add(name, expr, syms, eq, desc):
        out[name] = Expression(expr, tuple(syms), eq, desc)

    add("source_spike_infinite", sp.sqrt(1 + g**2) - 1, (g,), "(7.3)",
        "chi of Sigma_1 = I + chi beta beta^T/D after gradient flow on infinite (whitened) source data, lambda = 0")
    add("source_spike", sp.sqrt(1 + g**2 * q) - 1, (g, q), "(7.3)",
        "chi = sqrt(1 + g^2 q) - 1 for a source predictor with q = |w_eff|^2/D, lambda = 0")
    add("whitened_ode", g - sp.exp(-2 * lam * t) * sp.sinh(2 * K), (g, lam, t, K), "(7.2b)",
        "dK/dt of the boost rapidity K (zeta = 2K) on whitened source data, time and weight decay per unit nu_1")
    # lambda = 0: dt = du/(2 g u - u^2 + 1) for u = e^{2K}, partial fractions at u_pm = g pm R
    R = sp.sqrt(1 + g**2)
    up, um = g + R, g - R
    iQ = sp.exp(-2 * R * t) * (up - 1) / (1 - um)  # 1/Q, no overflow at large t
    add("whitened_rapidity_free", sp.log((um * iQ + up) / (iQ + 1)) / 2, (g, t), "(7.2c)",
        "K(t) of (7.2b) at lambda = 0 in closed form; K -> asinh(g)/2")
    add("whitened_bulk", sp.exp(-2 * lam * t), (lam, t), "(7.2b)", "bulk b(t) on whitened source data")
    add("whitened_spike", sp.exp(-2 * lam * t) * (sp.cosh(2 * K) - 1), (lam, t, K), "(7.2b)",
        "spike s(t) on whitened source data")
    add("whitened_spike_decay", sp.Max(g - lam, 0), (g, lam), "(7.4)",
        "rank-one spike s at t = inf with weight decay lambdatilde per unit nu_1, infinite source data")

    # Min-norm (lambda = 0) source estimate, eq. (7.5)
    q0 = sp.Piecewise((nu1 + sig1**2 * nu1 / (1 - nu1), nu1 < 1), (1 + sig1**2 / (nu1 - 1), True))
    m0 = sp.Piecewise((nu1, nu1 < 1), (1, True))
    add("minnorm_q", q0, (nu1, sig1), "(7.5)", "|w_hat_1|^2/D of the min-norm source fit")
    add("minnorm_m", m0, (nu1,), "(7.5)", "w_hat_1.beta_1/D of the min-norm source fit")

    # Ridge estimate of the source at ridge tau, eq. (7.4)
    G1, Gp1, mm1, V1, Sq1 = _mp_symbolic(tau, nu1)
    qtau = Sq1 + sig1**2 * V1
    add("ridge_q", qtau, (tau, nu1, sig1), "(7.6)", "|w_hat_1(tau)|^2/D of ridge regression on the source")
    add("ridge_m", mm1, (tau, nu1), "(7.6)", "w_hat_1(tau).beta_1/D")
    add("decay_fixed_point", g * tau * sp.sqrt(qtau) - lam * nu1, (tau, g, lam, nu1, sig1), "(7.4)",
        "residual whose root tau fixes the ridge of the rank-one source kernel with weight decay")

    add("overlap", alpha * m_ / sp.sqrt(q_) + alpha_xi * sp.sqrt(1 - m_**2 / q_), (alpha, alpha_xi, m_, q_),
        "(7.5)", "p = u.beta_2/sqrt(D), u the unit spike of the source kernel")

    # Target: ridge with a spiked penalty, eqs. (7.7)-(7.8)
    G, Gp, mm, V, Sq = _mp_symbolic(r, nu2)
    Ep = Gp * ((1 - p**2) * r**2 + p**2 * rp**2 / (mm + rp * G) ** 2) + sig2**2 * V
    add("target_error_ridge", Ep, (r, rp, p, nu2, sig2), "(7.7)",
        "target error, kernel c0 I + c1 u u^T, ridge lambda_2: r = lambda_2/c0, r' = lambda_2/(c0 + c1)")
    E0 = sp.Piecewise(((1 - nu2) * (1 - p**2 + p**2 / (1 + chi * nu2) ** 2) + sig2**2 * nu2 / (1 - nu2), nu2 < 1),
                      (sig2**2 / (nu2 - 1), True))
    add("target_error_ridgeless", E0, (chi, p, nu2, sig2), "(7.8)",
        "ridgeless target error, kernel I + chi u u^T (nu_2 != 1)")
    E1 = 1 - p**2 + p**2 * (lam2 / (lam2 + s * nu2)) ** 2
    add("target_error_rank_one", E1, (s, p, nu2, lam2), "(7.9)", "target error, rank-one kernel s u u^T")
    add("scratch_error_ridge", Ep.subs({rp: r, p: 0}), (r, nu2, sig2), "(7.10)",
        "random-feature (no transfer) error at ridge r")
    Erich = Gp * (1 - p**2) * r**2 + sig2**2 * V
    add("rich_limit_ridge", Erich, (r, p, nu2, sig2), "(7.11)", "g_1 -> inf with a bulk: r' -> 0")
    Erich0 = sp.Piecewise(((1 - nu2) * (1 - p**2) + sig2**2 * nu2 / (1 - nu2), nu2 < 1), (sig2**2 / (nu2 - 1), True))
    add("rich_limit_ridgeless", Erich0, (p, nu2, sig2), "(7.11)", "g_1 -> inf with a bulk, ridgeless (nu_2 != 1)")
    return out


def expressions() -> dict:
    """The closed forms of docs/theory.md §7 as SymPy expressions.

    Returns
    -------
    dict
        ``name -> Expression(expr, symbols, equation, description)``; ``symbols`` is the argument
        order of the compiled function. ``sympy.latex(e.expr)`` renders one.
    """
    return dict(_build())


@functools.lru_cache(maxsize=None)
def _compiled(name):
    e = _build()[name]
    return sp.lambdify(e.symbols, e.expr, modules="numpy", cse=True)


def _call(name, *args):
    with np.errstate(all="ignore"):
        # np.select of the lambdified Piecewise evaluates every branch; the discarded one may divide by 0
        return np.asarray(_compiled(name)(*args), dtype=np.float64)


# ------------------------------------------------------------------------------------------------
# Validation and broadcasting
# ------------------------------------------------------------------------------------------------


def _check_array(name, value):
    low, low_open, high, allow_inf = _RANGES[name]
    return check_real_array(name, value, low=low, low_open=low_open, high=high, allow_inf=allow_inf,
                            scale_limit=_SCALE_LIMIT, two_sided=name in _SCALED)


def _broadcast(named):
    return broadcast_flat({k: _check_array(k, v) for k, v in named.items()})


def _out(x, shape):
    x = np.asarray(x, dtype=np.float64)
    return float(x.reshape(())) if shape == () else x.reshape(shape)


def _check_mode(mode):
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


# ------------------------------------------------------------------------------------------------
# Source kernel
# ------------------------------------------------------------------------------------------------


class SourceKernel(NamedTuple):
    """Learned source weight covariance ``Sigma_1 = bulk I + spike u u^T`` (docs/theory.md eq. (7.3)-(7.4)).

    Attributes
    ----------
    bulk : ndarray
        ``b``: 1 without weight decay; ``e^{-2 lambda t}`` at time ``t``; 0 at ``t = inf`` with weight decay.
    spike : ndarray
        ``s``: excess variance along the unit vector ``u``.
    overlap : ndarray
        ``cos(theta_1) = u.beta_1/sqrt(D)``.
    noise_overlap : ndarray
        ``sin(theta_1)``: the component of ``u`` along the source's finite-sample noise direction.
    q : ndarray
        ``|w_eff|^2/D`` of the source predictor (the min-norm fit at ``lambda = 0``).
    ridge : ndarray
        The ridge ``tau`` whose ridge estimate ``u`` is (0: min-norm); eq. (7.4).
    """

    bulk: np.ndarray
    spike: np.ndarray
    overlap: np.ndarray
    noise_overlap: np.ndarray
    q: np.ndarray
    ridge: np.ndarray


def _whitened_time(g, lam, t):
    """Boost rapidity ``K(t)`` of eq. (7.2b) on whitened source data (vectorised over points).

    ``lam = 0``: the closed solution (7.2c). ``lam > 0``: RK4 with a per-point step below the
    relaxation time ``1/|dK'/dK| = 1/(2 e^{-2 lam t} cosh 2K)`` and the drive time ``1/g``.
    """
    K = np.zeros_like(g)
    free = lam == 0.0
    if np.any(free):
        K[free] = _call("whitened_rapidity_free", g[free], t[free])
    sel = ~free
    if not np.any(sel):
        return K
    f = _compiled("whitened_ode")
    gg, ll, tt = g[sel], lam[sel], t[sel]
    k = np.zeros_like(gg)
    now = np.zeros_like(gg)
    with np.errstate(over="ignore"):
        for it in range(_RK_MAX_STEPS):
            rem = tt - now
            active = rem > 1e-15 * np.maximum(tt, 1.0)
            if not np.any(active):
                break
            rate = gg + ll + 2.0 * np.exp(-2.0 * ll * now) * np.cosh(2.0 * k)
            h = np.where(active, np.minimum(rem, 0.05 / rate), 0.0)
            k1 = f(gg, ll, now, k)
            k2 = f(gg, ll, now + h / 2, k + h / 2 * k1)
            k3 = f(gg, ll, now + h / 2, k + h / 2 * k2)
            k4 = f(gg, ll, now + h, k + h * k3)
            k = k + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            now = now + h
        else:
            i = int(np.flatnonzero(tt - now > 1e-15 * np.maximum(tt, 1.0))[0])
            raise ConvergenceError(
                f"source_kernel: the rapidity ODE (7.2b) needs more than {_RK_MAX_STEPS} steps at g={gg[i]:g}, "
                f"weight_decay={ll[i]:g}, time={tt[i]:g} (reached time {now[i]:g}); use a shorter time")
    K[sel] = k
    return K


def _solve_tau(g, lam, nu1, sig1):
    """Root ``tau`` of eq. (7.4), ``g tau sqrt(q(tau)) = lam nu1``, by bisection in ``ln tau``.

    Returns ``(tau, alive)``; ``alive = False`` where the flow collapses to the zero kernel
    (``g |X^T y|/D <= lam nu1``).
    """
    sup = np.sqrt(nu1 * (1.0 + nu1 + sig1**2))  # lim tau sqrt(q(tau)) as tau -> inf
    alive = g * sup > lam * nu1
    lo = np.full(g.shape, _LOG_TAU[0])
    hi = np.full(g.shape, _LOG_TAU[1])
    for _ in range(_BISECT_ITERS):
        mid = 0.5 * (lo + hi)
        f = _call("decay_fixed_point", np.exp(mid), g, lam, nu1, sig1)
        up = f > 0
        hi = np.where(up, mid, hi)
        lo = np.where(up, lo, mid)
    tau = np.exp(0.5 * (lo + hi))
    res = _call("decay_fixed_point", tau, g, lam, nu1, sig1)
    scale = np.maximum(lam * nu1, 1e-300)
    bad = alive & ~(np.isfinite(res) & (np.abs(res) <= 1e-8 * scale + 1e-12 * g * tau * np.sqrt(
        np.abs(_call("ridge_q", tau, nu1, sig1)))))
    bad &= (tau > math.exp(_LOG_TAU[0] + 1)) & (tau < math.exp(_LOG_TAU[1] - 1))
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        raise ConvergenceError(
            f"source_kernel: bisection for the self-consistent ridge tau of eq. (7.4) did not converge at "
            f"{int(bad.sum())} of {bad.size} points; first at g1={g[i]:g}, weight_decay={lam[i]:g}, "
            f"nu1={nu1[i]:g}, source_noise={sig1[i]:g}", [float(abs(res[i]))])
    return tau, alive


def _source(g, lam, nu1, sig1, time=None):
    """Flat arrays ``(bulk, spike, cos, sin, q, tau)`` of the source kernel, eqs. (7.2)-(7.5)."""
    n = g.size
    bulk = np.ones(n)
    spike = np.zeros(n)
    cos = np.ones(n)
    sin = np.zeros(n)
    q = np.ones(n)
    tau = np.zeros(n)
    inf_data = np.isinf(nu1)
    decay = lam > 0
    finite_t = np.zeros(n, dtype=bool) if time is None else np.isfinite(time)
    if np.any(finite_t & ~inf_data):
        raise ValueError("time < inf is available for nu1 = inf (whitened source data) only")
    if np.any(~decay & ~inf_data & (nu1 == 1.0) & (sig1 > 0)):
        raise ValueError("nu1 = 1 with source_noise > 0 and weight_decay = 0: the min-norm source fit "
                         "diverges (q = inf); use nu1 != 1 or weight_decay > 0")

    # lambda = 0, t = inf: min-norm fit, bulk 1, eq. (7.3), (7.5)
    sel = ~decay & ~finite_t
    if np.any(sel):
        nu = np.where(inf_data[sel], 2.0, nu1[sel])
        s1 = np.where(inf_data[sel], 0.0, sig1[sel])
        qq = _call("minnorm_q", nu, s1) * np.ones_like(nu)
        mm = _call("minnorm_m", nu) * np.ones_like(nu)
        q[sel] = qq
        spike[sel] = _call("source_spike", g[sel], qq)
        cos[sel] = mm / np.sqrt(qq)
        sin[sel] = np.sqrt(np.clip(1.0 - mm * mm / qq, 0.0, 1.0))
    # whitened / infinite data at finite time, eq. (7.2)
    sel = finite_t
    if np.any(sel):
        K = _whitened_time(g[sel], lam[sel], time[sel])
        bulk[sel] = _call("whitened_bulk", lam[sel], time[sel]) * np.ones(int(sel.sum()))
        spike[sel] = _call("whitened_spike", lam[sel], time[sel], K)
        q[sel] = (np.exp(-2 * lam[sel] * time[sel]) * np.sinh(2 * K) / np.where(g[sel] > 0, g[sel], 1.0)) ** 2
    # weight decay, t = inf, infinite data: rank one, eq. (7.4)
    sel = decay & ~finite_t & inf_data
    if np.any(sel):
        bulk[sel] = 0.0
        spike[sel] = _call("whitened_spike_decay", g[sel], lam[sel])
        q[sel] = (spike[sel] / np.where(g[sel] > 0, g[sel], 1.0)) ** 2
    # weight decay, t = inf, finite data: rank one along a ridge estimate, eq. (7.4)
    sel = decay & ~finite_t & ~inf_data
    if np.any(sel):
        # one root per distinct source (a grid over target parameters repeats the same source)
        cols = (g[sel], lam[sel], nu1[sel], sig1[sel])
        order = np.lexsort(cols)
        srt = np.stack([c[order] for c in cols])
        new_grp = np.concatenate([[True], np.any(srt[:, 1:] != srt[:, :-1], axis=0)])
        inv = np.empty(order.size, dtype=np.int64)
        inv[order] = np.cumsum(new_grp) - 1
        tu, au = _solve_tau(*(np.ascontiguousarray(row[new_grp]) for row in srt))
        tt, alive = tu[inv], au[inv]
        qq = _call("ridge_q", tt, nu1[sel], sig1[sel])
        mm = _call("ridge_m", tt, nu1[sel]) * np.ones_like(tt)
        bulk[sel] = 0.0
        spike[sel] = np.where(alive, g[sel] * np.sqrt(qq), 0.0)
        q[sel] = np.where(alive, qq, 0.0)
        tau[sel] = np.where(alive, tt, np.inf)
        cos[sel] = np.where(alive, mm / np.sqrt(qq), 1.0)
        sin[sel] = np.where(alive, np.sqrt(np.clip(1.0 - mm * mm / qq, 0.0, 1.0)), 0.0)
    return bulk, spike, cos, sin, q, tau


def source_kernel(g, weight_decay=0.0, *, nu1=np.inf, source_noise=0.0, time=np.inf) -> SourceKernel:
    """Bulk and spike of the source weight covariance after gradient flow, docs/theory.md eqs. (7.2)-(7.5).

    Parameters
    ----------
    g : array_like, >= 0
        ``g = gamma sqrt(D)`` (this package's ``gamma``, eq. (1.2)).
    weight_decay : array_like, >= 0
        ``lambdatilde``: weight decay per unit ``nu1`` (the flow (1.4) runs with ``lambda = lambdatilde
        P1/D``; equivalently the mean loss over ``P1/D``), so that ``nu1 -> inf`` has a limit.
    nu1 : array_like in (0, inf]
        Source samples per dimension; ``inf`` = infinite (equivalently whitened, ``X^T X = P1 I``) data.
    source_noise : array_like, >= 0
        Label-noise standard deviation of the source teacher.
    time : array_like in [0, inf]
        Pretraining time in units of ``1/nu1`` of the flow (1.4) (finite only for ``nu1 = inf``).

    Returns
    -------
    SourceKernel
    """
    shape, f = _broadcast(dict(g=g, weight_decay=weight_decay, nu1=nu1, source_noise=source_noise, time=time))
    parts = _source(f["g"], f["weight_decay"], f["nu1"], f["source_noise"], f["time"])
    return SourceKernel(*(_out(x, shape) for x in parts))


def source_spike(g, weight_decay=0.0, *, time=np.inf):
    """``chi`` of the source kernel ``I + chi beta beta^T/D`` on infinite source data, eq. (7.3).

    ``chi = sqrt(1 + g^2) - 1`` at ``weight_decay = 0``. With weight decay the bulk decays as
    ``e^{-2 lambda t}`` while the spike does not (eq. (7.2)): ``chi`` is then the spike-to-bulk ratio at
    pretraining time ``time``, which grows without bound; at ``time = inf`` it is ``inf`` (the kernel
    is rank one, ``Sigma_1 = max(g - weight_decay, 0) beta beta^T/D``: use :func:`source_kernel`).

    Parameters
    ----------
    g : array_like, >= 0
        ``gamma sqrt(D)``.
    weight_decay : array_like, >= 0
        Weight decay per unit ``nu1`` (see :func:`source_kernel`).
    time : array_like in [0, inf]
        Pretraining time (units of ``1/nu1``).
    """
    k = source_kernel(g, weight_decay, time=time)
    bulk, spike = np.asarray(k.bulk), np.asarray(k.spike)
    # bulk 0 (t = inf with weight decay): an infinite ratio, or 0 where the flow collapsed to the zero kernel
    chi = np.where(bulk > 0, spike / np.where(bulk > 0, bulk, 1.0), np.where(spike > 0, np.inf, 0.0))
    return _out(chi, bulk.shape)


# ------------------------------------------------------------------------------------------------
# Target errors
# ------------------------------------------------------------------------------------------------

_FT_KEYS = ("nu2", "alpha", "g1", "nu1", "ridge", "noise", "alpha_noise", "weight_decay", "source_noise")


def _target(c0, c1, p, nu2, lam2, sig2):
    """Target error of kernel ridge regression with kernel ``c0 I + c1 u u^T``, eqs. (7.7)-(7.9)."""
    n = c0.size
    E = np.empty(n)
    rank_one = c0 == 0.0
    # Below _RIDGE_FLOOR the ridged form equals the ridgeless one to double precision, while its
    # Marchenko-Pastur scalars (~1/ridge) overflow for subnormal ridges.
    ridged = ~rank_one & (lam2 > _RIDGE_FLOOR)
    ridgeless = ~rank_one & ~ridged
    dead = rank_one & (c1 == 0.0)
    E[dead] = 1.0  # the zero kernel predicts 0
    rank_one &= ~dead
    if np.any(rank_one):
        E[rank_one] = _call("target_error_rank_one", c1[rank_one], p[rank_one], nu2[rank_one], lam2[rank_one])
    if np.any(ridged):
        i = ridged
        E[i] = _call("target_error_ridge", lam2[i] / c0[i], lam2[i] / (c0[i] + c1[i]), p[i], nu2[i], sig2[i])
    if np.any(ridgeless):
        i = ridgeless
        chi = c1[i] / c0[i]
        e = _call("target_error_ridgeless", chi, p[i], nu2[i], sig2[i]) * np.ones(int(i.sum()))
        at_one = nu2[i] == 1.0
        # Interpolation threshold: the bias vanishes, the noise variance diverges.
        e[at_one] = np.where(sig2[i][at_one] > 0, np.inf, 0.0)
        E[i] = e
    return E


def _finetune_flat(f, mode):
    bulk, spike, cos, sin, q, tau = _source(f["g1"], f["weight_decay"], f["nu1"], f["source_noise"])
    p = f["alpha"] * cos + f["alpha_noise"] * sin
    c0 = bulk + (1.0 if mode == "lazy" else 0.0)  # lazy: + G1 K with fresh unit-variance readouts
    return _target(c0, spike, p, f["nu2"], f["ridge"], f["noise"])


def _flat_args(kw):
    shape, f = _broadcast({k: kw[k] for k in _FT_KEYS})
    if np.any(f["alpha"] ** 2 + f["alpha_noise"] ** 2 > 1.0 + 1e-12):
        i = int(np.flatnonzero(f["alpha"] ** 2 + f["alpha_noise"] ** 2 > 1.0 + 1e-12)[0])
        raise ValueError(f"alpha_noise must satisfy alpha^2 + alpha_noise^2 <= 1 (the target teacher has unit "
                         f"norm), got alpha={f['alpha'][i]!r}, alpha_noise={f['alpha_noise'][i]!r}")
    return shape, f


def finetune_error(nu2, alpha, g1, *, nu1=np.inf, ridge=0.0, noise=0.0, alpha_noise=0.0, weight_decay=0.0,
                   source_noise=0.0, mode="readout"):
    """Target test error after fine-tuning on gradient-flow source features, docs/theory.md eqs. (7.7)-(7.9).

    The source kernel is :func:`source_kernel` (eqs. (7.3)-(7.5)); the target is kernel ridge
    regression with kernel ``Sigma_1`` (``mode="readout"``) or ``Sigma_1 + I`` (``mode="lazy"``: the
    tangent kernel ``Phi_1 + G_1 * K`` with fresh unit-variance readouts, ``G_1 = 1``) and ridge
    ``ridge``. With ``nu1 = inf``, ``ridge = noise = 0`` and ``nu2 < 1`` this is
    ``(1 - nu2)[1 - alpha^2 + alpha^2/(1 + chi nu2)^2]``, ``chi = sqrt(1 + g1^2) - 1``.

    Parameters
    ----------
    nu2 : array_like, > 0
        Target samples per dimension.
    alpha : array_like in [-1, 1]
        Overlap ``beta_1.beta_2/D`` of the teachers.
    g1 : array_like, >= 0
        Source strength ``gamma_1 sqrt(D)``.
    nu1 : array_like in (0, inf]
        Source samples per dimension.
    ridge : array_like, >= 0
        Target ridge ``lambda_2`` (readout weight decay in the sum-loss convention).
    noise : array_like, >= 0
        Target label-noise standard deviation.
    alpha_noise : array_like in [-1, 1]
        Overlap of ``beta_2/sqrt(D)`` with the source's finite-sample noise direction (the unit part of
        the source spike orthogonal to ``beta_1``); ``alpha^2 + alpha_noise^2 <= 1``.
    weight_decay : array_like, >= 0
        Source weight decay per unit ``nu1``; ``> 0`` makes the source kernel rank one (eq. (7.4)).
    source_noise : array_like, >= 0
        Source label-noise standard deviation (matters for ``nu1 < inf``).
    mode : {"readout", "lazy"}

    Returns
    -------
    float or ndarray
        ``lim |w_hat_2 - beta_2|^2/D``; ``inf`` at ``nu2 = 1``, ``ridge = 0``, ``noise > 0``.
    """
    mode = _check_mode(mode)
    shape, f = _flat_args(dict(nu2=nu2, alpha=alpha, g1=g1, nu1=nu1, ridge=ridge, noise=noise,
                               alpha_noise=alpha_noise, weight_decay=weight_decay, source_noise=source_noise))
    return _out(_finetune_flat(f, mode), shape)


def scratch_error(nu2, *, ridge=0.0, noise=0.0, mode="readout"):
    """Target error without transfer (random features, ``g1 = 0``), docs/theory.md eq. (7.10).

    ``mode="readout"``: readout on the untrained features (kernel ``I``); ``"lazy"``: the linearised
    network from its random initialisation (kernel ``2I``). Ridgeless this is also the error of the
    rich network trained from scratch by gradient flow (its predictor is the min-norm fit, eq. (7.5)):
    ``1 - nu2 + noise^2 nu2/(1 - nu2)`` below ``nu2 = 1``, ``noise^2/(nu2 - 1)`` above.
    """
    mode = _check_mode(mode)
    shape, f = _broadcast(dict(nu2=nu2, ridge=ridge, noise=noise))
    c0 = np.full(f["nu2"].size, 2.0 if mode == "lazy" else 1.0)
    E = _target(c0, np.zeros_like(c0), np.zeros_like(c0), f["nu2"], f["ridge"], f["noise"])
    return _out(E, shape)


def transfer_gain(nu2, alpha, g1, **kw):
    """``scratch_error - finetune_error`` (positive = positive transfer), docs/theory.md eq. (7.12).

    Keywords of :func:`finetune_error`; the scratch error uses the same ``ridge``, ``noise`` and ``mode``.
    """
    e_ft = finetune_error(nu2, alpha, g1, **kw)
    e_s = scratch_error(nu2, ridge=kw.get("ridge", 0.0), noise=kw.get("noise", 0.0),
                        mode=kw.get("mode", "readout"))
    with np.errstate(invalid="ignore"):
        gain = np.asarray(e_s, dtype=np.float64) - np.asarray(e_ft, dtype=np.float64)
    # Both diverge at the interpolation threshold with noise: no transfer either way there.
    gain = np.where(np.isinf(e_s) & np.isinf(e_ft), 0.0, gain)
    return _out(gain, np.shape(gain))


def rich_limit_error(nu2, alpha, *, nu1=np.inf, ridge=0.0, noise=0.0, alpha_noise=0.0, weight_decay=0.0,
                     source_noise=0.0, mode="readout"):
    """``lim_{g1 -> inf}`` of :func:`finetune_error`, docs/theory.md eq. (7.11).

    The source weights collapse onto the rank-one spike (``chi -> inf``); what remains of the bulk
    still decides how the target's orthogonal part is fitted: ``(1 - nu2)(1 - p^2) + noise^2 nu2/(1 -
    nu2)`` ridgeless below ``nu2 = 1`` with a bulk (``weight_decay = 0`` or lazy), ``1 - p^2`` for the
    readout on a rank-one kernel (``weight_decay > 0``), with ``p`` the min-norm overlap (eq. (7.5)).
    """
    mode = _check_mode(mode)
    shape, f = _flat_args(dict(nu2=nu2, alpha=alpha, g1=1.0, nu1=nu1, ridge=ridge, noise=noise,
                               alpha_noise=alpha_noise, weight_decay=weight_decay, source_noise=source_noise))
    # g1 -> inf makes the ridge of eq. (7.4) vanish: the spike lies along the min-norm fit.
    zero = np.zeros_like(f["g1"])
    bulk, spike, cos, sin, q, tau = _source(f["g1"], zero, f["nu1"], f["source_noise"])
    p = f["alpha"] * cos + f["alpha_noise"] * sin
    c0 = np.where(f["weight_decay"] > 0, 0.0, 1.0) + (1.0 if mode == "lazy" else 0.0)
    nu, lam2, sig = f["nu2"], f["ridge"], f["noise"]
    E = np.empty(nu.size)
    r1 = c0 == 0
    E[r1] = 1.0 - p[r1] ** 2
    rid = ~r1 & (lam2 > _RIDGE_FLOOR)
    if np.any(rid):
        E[rid] = _call("rich_limit_ridge", lam2[rid] / c0[rid], p[rid], nu[rid], sig[rid])
    rl = ~r1 & ~rid
    if np.any(rl):
        e = _call("rich_limit_ridgeless", p[rl], nu[rl], sig[rl]) * np.ones(int(rl.sum()))
        at_one = nu[rl] == 1.0
        e[at_one] = np.where(sig[rl][at_one] > 0, np.inf, 0.0)
        E[rl] = e
    return _out(E, shape)


def optimal_source_strength(nu2, alpha, nu1, *, ridge=0.0, noise=0.0, alpha_noise=0.0, weight_decay=0.0,
                            source_noise=0.0, mode="readout", g_max=1e3, return_error=False):
    """The source strength ``g1*`` that minimises :func:`finetune_error`, docs/theory.md eq. (7.13).

    Without weight decay the error decreases monotonically in ``g1`` (the overlap ``p`` does not depend
    on ``g1``, and the spike only helps, eq. (7.8)): ``g1* = inf``. With weight decay ``g1`` also sets
    the ridge of the source estimate (eq. (7.4)) and a finite optimum appears with noisy source
    labels. Grid search on ``[1e-3, g_max]`` (log-spaced) refined by golden-section search; ``inf`` is
    returned where the rich limit :func:`rich_limit_error` is at least as good as the best finite
    ``g1``.

    Returns
    -------
    g1 : float or ndarray
    error : float or ndarray (only with ``return_error=True``)
    """
    mode = _check_mode(mode)
    kw = dict(nu1=nu1, ridge=ridge, noise=noise, alpha_noise=alpha_noise, weight_decay=weight_decay,
              source_noise=source_noise)
    shape, f = _flat_args(dict(nu2=nu2, alpha=alpha, g1=1.0, **kw))
    g_max = float(g_max)
    if not (math.isfinite(g_max) and g_max > 1e-3):
        raise ValueError(f"g_max must be a finite number > 1e-3, got {g_max!r}")
    grid = np.concatenate([[0.0], np.geomspace(1e-3, g_max, 61)])
    n = f["nu2"].size

    def err(gvals):
        ff = {k: (np.repeat(v, gvals.shape[1]) if k != "g1" else gvals.reshape(-1)) for k, v in f.items()}
        return _finetune_flat(ff, mode).reshape(n, gvals.shape[1])

    E = err(np.broadcast_to(grid, (n, grid.size)).copy())
    j = np.argmin(E, axis=1)
    lo = grid[np.maximum(j - 1, 0)]
    hi = grid[np.minimum(j + 1, grid.size - 1)]
    invphi = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo.copy(), hi.copy()
    c = b - invphi * (b - a)
    d = a + invphi * (b - a)
    fc = err(c[:, None])[:, 0]
    fd = err(d[:, None])[:, 0]
    for _ in range(48):
        left = fc < fd
        a, b = np.where(left, a, c), np.where(left, d, b)
        c_n = np.where(left, b - invphi * (b - a), d)
        d_n = np.where(left, c, a + invphi * (b - a))
        fnew = err(np.where(left, c_n, d_n)[:, None])[:, 0]
        fc, fd = np.where(left, fnew, fd), np.where(left, fc, fnew)
        c, d = c_n, d_n
    gbest = 0.5 * (a + b)
    ebest = err(gbest[:, None])[:, 0]
    use_grid = E[np.arange(n), j] < ebest
    gbest = np.where(use_grid, grid[j], gbest)
    ebest = np.where(use_grid, E[np.arange(n), j], ebest)
    rich = rich_limit_error(f["nu2"], f["alpha"], mode=mode, **{k: f[k] for k in kw})
    rich = np.asarray(rich).reshape(-1)
    to_inf = rich <= ebest + 1e-12
    gbest = np.where(to_inf, np.inf, gbest)
    ebest = np.where(to_inf, rich, ebest)
    if return_error:
        return _out(gbest, shape), _out(ebest, shape)
    return _out(gbest, shape)


# ------------------------------------------------------------------------------------------------
# Phase diagram
# ------------------------------------------------------------------------------------------------


@dataclass
class GradientFlowPhaseDiagram:
    """Transfer gain of gradient-flow fine-tuning over a grid of two parameters (docs/theory.md §7).

    Attributes
    ----------
    x_name, y_name : str
    x, y : ndarray
        Grid values, shapes ``(nx,)`` and ``(ny,)``.
    gain, finetune_error, scratch_error : ndarray
        Shape ``(ny, nx)``; ``gain = scratch_error - finetune_error``.
    mode : str
    params : dict
        Values of the other parameters.
    """

    x_name: str
    y_name: str
    x: np.ndarray
    y: np.ndarray
    gain: np.ndarray
    finetune_error: np.ndarray
    scratch_error: np.ndarray
    mode: str = "readout"
    params: dict = field(default_factory=dict)

    @property
    def negative(self) -> np.ndarray:
        """Boolean mask of negative transfer (``gain < 0``)."""
        return self.gain < 0


_DEFAULT_AXES = {
    "alpha": lambda n: np.linspace(0.0, 1.0, n),
    "nu2": lambda n: np.geomspace(0.05, 5.0, n),
    "nu1": lambda n: np.geomspace(0.1, 10.0, n),
    "g1": lambda n: np.geomspace(0.01, 100.0, n),
    "ridge": lambda n: np.geomspace(1e-3, 10.0, n),
    "noise": lambda n: np.linspace(0.0, 2.0, n),
    "alpha_noise": lambda n: np.linspace(0.0, 1.0, n),
    "weight_decay": lambda n: np.geomspace(1e-3, 10.0, n),
    "source_noise": lambda n: np.linspace(0.0, 2.0, n),
}


def phase_diagram(x="alpha", y="nu2", *, x_values=None, y_values=None, n=100, mode="readout",
                  **params) -> GradientFlowPhaseDiagram:
    """Gain ``scratch - fine-tune`` over a grid of two parameters, docs/theory.md eq. (7.12).

    Parameters
    ----------
    x, y : str
        Axis parameters, distinct members of :data:`PARAMETERS` (e.g. ``("alpha", "nu2")`` or
        ``("g1", "nu2")``).
    x_values, y_values : array_like, optional
        Grid values (1-D); default ``n`` points of a standard range.
    n : int >= 2
    mode : {"readout", "lazy"}
    **params
        Fixed values of the other parameters (default :data:`DEFAULT_PARAMETERS`).
    """
    mode = _check_mode(mode)
    for name, val in (("x", x), ("y", y)):
        if val not in PARAMETERS:
            raise ValueError(f"{name} must be one of {PARAMETERS}, got {val!r}")
    if x == y:
        raise ValueError(f"x and y must be different parameters, both are {x!r}")
    unknown = set(params) - set(PARAMETERS)
    if unknown:
        raise ValueError(f"unknown parameters {sorted(unknown)}; accepted: {PARAMETERS}")
    for name in (x, y):
        if name in params:
            raise ValueError(f"{name} is an axis; give its grid as x_values/y_values")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")

    def axis(name, values, label):
        vals = _DEFAULT_AXES[name](int(n)) if values is None else np.asarray(values, dtype=np.float64)
        if vals.ndim != 1 or vals.size < 2:
            raise ValueError(f"{label} must be a 1-D array with at least 2 values")
        _check_array(name, vals)
        return vals

    xv, yv = axis(x, x_values, "x_values"), axis(y, y_values, "y_values")
    full = dict(DEFAULT_PARAMETERS)
    full.update(params)
    for k, v in full.items():
        if np.ndim(v) != 0:
            raise ValueError(f"{k} must be a scalar in a phase diagram (only the axes vary), got shape {np.shape(v)}")
    fixed = {k: float(v) for k, v in full.items() if k not in (x, y)}
    full[x] = xv[None, :]
    full[y] = yv[:, None]
    shape, f = _flat_args(full)
    ft = _finetune_flat(f, mode).reshape(shape)
    c0 = np.full(f["nu2"].size, 2.0 if mode == "lazy" else 1.0)
    z = np.zeros_like(c0)
    sc = _target(c0, z, z, f["nu2"], f["ridge"], f["noise"]).reshape(shape)
    with np.errstate(invalid="ignore"):
        gain = np.where(np.isinf(sc) & np.isinf(ft), 0.0, sc - ft)
    return GradientFlowPhaseDiagram(x_name=x, y_name=y, x=xv, y=yv, gain=gain, finetune_error=ft,
                                    scratch_error=sc, mode=mode, params=fixed)
