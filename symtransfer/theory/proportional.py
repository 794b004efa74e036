"""Proportional-limit closed forms for linear networks on linear teachers (docs/theory.md).

Inputs ``x ~ N(0, I_D)``, teachers ``y_k = beta_k.x/sqrt(D) + sigma_k eps`` with ``|beta_k|^2 = D``,
``beta_2 = alpha beta_1 + sqrt(1 - alpha^2) beta_perp``, ``P_k = nu_k D`` and ``D -> infinity`` with
``gamma_k = g_k / sqrt(P_k)``. The exact finite-``D`` theory (docs/theory.md, eqs. (2.9) and
(3.4)-(3.6)) then reduces to a handful of scalar equations built from one Marchenko-Pastur
resolvent ``G_nu(r)`` (docs/theory.md, eqs. (6.1)-(6.12)):

* source: one amplitude ``a1`` (the top eigenvalue of the learned weight covariance; the rest of
  the spectrum stays at ``s1^2 = T1/lam1``) and the overlap ``cos(theta1)`` of the spike with
  ``beta_1``;
* target: for fine-tuning a closed form; for jointly rich training two scalars ``(t, A)`` solved by
  nested bracketed root finding; from scratch one amplitude ``a2``.

Every reported test error is the population error of the mean predictor against the *noiseless*
teacher, ``E_x (f(x) - beta.x/sqrt(D))^2 = |w_hat - beta|^2 / D`` (no ``sigma^2`` added).

The public functions validate and broadcast in Python; the per-point work runs in a Numba
``prange`` kernel.

Names: ``weight_decay1, weight_decay2, temperature1, temperature2`` are ``lambda_k, T_k`` of the
classes (``weight_decay``, ``temperature``); ``g1, g2`` are *scaled* strengths, ``gamma_k = g_k/sqrt(P_k)``,
not the classes' ``gamma`` (docs/architecture.md, naming table). The old names ``lam1, lam2, T1, T2``
are accepted with a ``DeprecationWarning``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import numba as nb
import numpy as np

from .._validation import broadcast_flat, check_real_array
from ..errors import ConvergenceError

__all__ = [
    "SETTINGS",
    "PARAMETERS",
    "DEFAULT_PARAMETERS",
    "SourceState",
    "PhaseDiagram",
    "LearningCurves",
    "DEPRECATED_NAMES",
    "mp_resolvent",
    "ridge_error",
    "source_state",
    "target_error",
    "target_scalars",
    "transfer_gain",
    "phase_diagram",
    "learning_curves",
]

SETTINGS = ("scratch", "finetune", "joint")
_SETTING_CODE = {"scratch": 0, "finetune": 1, "joint": 2}

#: Parameter names in the order the kernels take them.
PARAMETERS = ("nu1", "nu2", "alpha", "g1", "g2", "weight_decay1", "weight_decay2", "temperature1", "temperature2",
              "coupling", "sigma1", "sigma2")

#: Old spellings of the parameters, accepted with a DeprecationWarning (error messages use the caller's spelling).
DEPRECATED_NAMES = {"lam1": "weight_decay1", "lam2": "weight_decay2", "T1": "temperature1", "T2": "temperature2"}

#: Values used by :func:`phase_diagram` for the parameters that are neither axis nor given.
DEFAULT_PARAMETERS = dict(nu1=4.0, nu2=1.0, alpha=0.5, g1=2.0, g2=2.0, weight_decay1=1.0, weight_decay2=1.0,
                          temperature1=0.5, temperature2=0.5,
                          coupling=1.0, sigma1=0.2, sigma2=0.2)

# Ranges (low, low_open, high, allow_inf); the message names the parameter and the range.
_RANGES = {
    "nu1": (0.0, True, None, False),
    "nu2": (0.0, True, None, False),
    "alpha": (-1.0, False, 1.0, False),
    "g1": (0.0, False, None, False),
    "g2": (0.0, False, None, False),
    "weight_decay1": (0.0, True, None, False),
    "weight_decay2": (0.0, True, None, False),
    "temperature1": (0.0, True, None, False),
    "temperature2": (0.0, True, None, False),
    "coupling": (0.0, False, None, True),
    "sigma1": (0.0, False, None, False),
    "sigma2": (0.0, False, None, False),
}

# Beyond these magnitudes the scalar equations over- or underflow float64 (s^2 = T/lambda = 1e300,
# say): such a value is refused up front, naming the parameter, rather than returned as NaN.
_SCALE_LIMIT = 1e100
# positive scales: both ends bounded
_SCALED = {"nu1", "nu2", "weight_decay1", "weight_decay2", "temperature1", "temperature2"}
_BOUNDED_ABOVE = {"g1", "g2", "coupling", "sigma1", "sigma2"}

_MAXIT = 200
_XTOL = 1e-14  # relative tolerance on every scalar unknown

# ------------------------------------------------------------------------------------------------
# Numba kernels
# ------------------------------------------------------------------------------------------------


@nb.njit(cache=True)
def _mp(r, nu):
    """Marchenko-Pastur scalars at ridge ``r``, docs/theory.md eqs. (6.2)-(6.4).

    Returns ``(G, G', m, V, Sq)``: ``G = tr(S + r)^-1/D`` for ``S = X^T X/D`` with ``P = nu D``,
    ``G' = -dG/dr``, ``m = 1 - r G``, ``V = G - r G'`` and ``Sq = 1 - 2 r G + r^2 G'``, each
    written as a product of positive factors so that nothing cancels when ``r`` is tiny or huge.
    """
    b = r + nu - 1.0
    disc = math.sqrt(b * b + 4.0 * r)
    if b > 0.0:
        G = 2.0 / (b + disc)
    else:
        G = (disc - b) / (2.0 * r)
    Gp = G * (1.0 + G) / disc
    m = nu * G / (1.0 + G)
    V = nu * G / ((1.0 + G) * disc)
    Sq = nu * G * (1.0 + nu + G * (1.0 - nu)) / ((1.0 + G) * (1.0 + G) * disc)
    return G, Gp, m, V, Sq


@nb.njit(cache=True)
def _ridge_q(r, nu, sig):
    """``|w_hat|^2 / D`` of ridge regression with ridge ``r`` on a unit-norm teacher, eq. (6.4)."""
    G, Gp, m, V, Sq = _mp(r, nu)
    return Sq + sig * sig * V


@nb.njit(cache=True)
def _ridge_err(r, nu, sig):
    """Bias + variance of ridge regression against the noiseless teacher, eq. (6.5)."""
    G, Gp, m, V, Sq = _mp(r, nu)
    return r * r * Gp + sig * sig * V


@nb.njit(cache=True)
def _ab_update(x0, x1, f0, f1, x, fx):
    """One Anderson-Bjorck update of the bracket ``[x0, x1]`` (``f0 f1 < 0``) with the new point."""
    if (fx > 0.0) == (f1 > 0.0):
        # Same side as x1: x1 is replaced and the stale end x0 is down-weighted so that the secant
        # point keeps moving towards it (this is what makes regula falsi superlinear).
        g = 1.0 - fx / f1
        if g <= 0.0:
            g = 0.5
        return x0, x, f0 * g, fx
    return x1, x, f1, fx


@nb.njit(cache=True)
def _secant(x0, x1, f0, f1):
    if f1 == f0:
        return 0.5 * (x0 + x1)
    x = x1 - f1 * (x1 - x0) / (f1 - f0)
    lo = min(x0, x1)
    hi = max(x0, x1)
    if not (x > lo and x < hi):
        x = 0.5 * (x0 + x1)
    return x


@nb.njit(cache=True)
def _amp_residual(a, nu, g2, lam, s2, sig):
    """``a (1 - chi(a)) - s^2`` of the single-task equation (6.6); increasing on ``chi < 1``."""
    return a - g2 * _ridge_q(lam / a, nu, sig) / (nu * a) - s2


@nb.njit(cache=True)
def _solve_amplitude(nu, g, lam, T, sig):
    """Root ``a >= s^2`` of eq. (6.6). Returns ``(a, status)``; status 0 = converged."""
    s2 = T / lam
    g2 = g * g
    if g2 == 0.0:
        return s2, 0
    x0 = s2
    f0 = _amp_residual(x0, nu, g2, lam, s2, sig)
    if f0 >= 0.0:
        return x0, 0
    # At the root a = s^2 + g^2 q/(nu a) <= s^2 + g^2 q(lam/a)/(nu s^2); q grows with a, so double.
    x1 = 2.0 * s2
    f1 = _amp_residual(x1, nu, g2, lam, s2, sig)
    n = 0
    while f1 < 0.0:
        x0, f0 = x1, f1
        x1 = 2.0 * x1
        f1 = _amp_residual(x1, nu, g2, lam, s2, sig)
        n += 1
        if n > 2000 or not math.isfinite(f1):
            return x1, 1
    if f1 == 0.0:
        return x1, 0
    for _ in range(_MAXIT):
        x = _secant(x0, x1, f0, f1)
        fx = _amp_residual(x, nu, g2, lam, s2, sig)
        if fx == 0.0 or abs(x - x1) <= _XTOL * x:
            return x, 0
        x0, x1, f0, f1 = _ab_update(x0, x1, f0, f1, x, fx)
    return x1, 1


@nb.njit(cache=True)
def _source(nu, g, lam, T, sig):
    """``(a1, s1^2, cos theta1, source error, status)``, eqs. (6.6)-(6.7)."""
    a, status = _solve_amplitude(nu, g, lam, T, sig)
    r = lam / a
    G, Gp, m, V, Sq = _mp(r, nu)
    cos = m / math.sqrt(Sq + sig * sig * V)
    err = r * r * Gp + sig * sig * V
    return a, T / lam, cos, err, status


@nb.njit(cache=True)
def _target_point(c0, c1, p, nu2, lam2, sig2, s1, a1):
    """Ridge with penalty ``lam2 C^-1``, ``C = c0 I + c1 u u^T``, ``u . beta2 / sqrt(D) = p``.

    Returns ``(error, kappa/D, rho/D)``, docs/theory.md eqs. (6.8)-(6.10): the bulk is
    ridge-regressed with ridge ``r = lam2/c0``, the spike direction with ``r' = lam2/(c0 + c1)``.
    """
    r = lam2 / c0
    rs = lam2 / (c0 + c1)
    G, Gp, m, V, Sq = _mp(r, nu2)
    den = m + rs * G  # = 1 - (r - r') G
    p2 = p * p
    omega = p * m / den  # overlap u . w_hat / sqrt(D)
    s2V = sig2 * sig2 * V
    err = Gp * ((1.0 - p2) * r * r + p2 * rs * rs / (den * den)) + s2V
    perp = p2 * rs * rs * G * G * V / (den * den) + (1.0 - p2) * Sq + s2V  # |(I - uu^T) w_hat|^2 / D
    cs = c0 + c1
    kap = perp / (c0 * c0) + omega * omega / (cs * cs)
    rho = s1 * perp / (c0 * c0) + a1 * omega * omega / (cs * cs)
    return err, kap, rho


@nb.njit(cache=True)
def _inner_residual(A, t, m2, sc2, chat, p, nu2, lam2, sig2, s1, a1):
    M = t * m2
    err, kap, rho = _target_point(A + M * s1, M * (a1 - s1), p, nu2, lam2, sig2, s1, a1)
    return A - t * (sc2 + chat * t * m2 * rho)


@nb.njit(cache=True)
def _solve_A(t, m2, sc2, chat, p, nu2, lam2, sig2, s1, a1):
    """Root in ``A`` of ``A = t (s_c^2 + c t m^2 rho(A))`` at fixed ``t``, eq. (6.11)."""
    x0 = t * sc2
    f0 = _inner_residual(x0, t, m2, sc2, chat, p, nu2, lam2, sig2, s1, a1)
    if f0 >= 0.0:
        return x0, 0
    x1 = x0 - f0  # exact if rho does not change between the two ends
    f1 = _inner_residual(x1, t, m2, sc2, chat, p, nu2, lam2, sig2, s1, a1)
    n = 0
    while f1 < 0.0:
        x0, f0 = x1, f1
        x1 = 2.0 * x1
        f1 = _inner_residual(x1, t, m2, sc2, chat, p, nu2, lam2, sig2, s1, a1)
        n += 1
        if n > 2000 or not math.isfinite(f1):
            return x1, 2
    if f1 == 0.0:
        return x1, 0
    for _ in range(_MAXIT):
        x = _secant(x0, x1, f0, f1)
        fx = _inner_residual(x, t, m2, sc2, chat, p, nu2, lam2, sig2, s1, a1)
        if fx == 0.0 or abs(x - x1) <= _XTOL * x:
            return x, 0
        x0, x1, f0, f1 = _ab_update(x0, x1, f0, f1, x, fx)
    return x1, 2


@nb.njit(cache=True)
def _outer_residual(t, m2, sc2, chat, p, nu2, lam2, sig2, s1, a1):
    A, st = _solve_A(t, m2, sc2, chat, p, nu2, lam2, sig2, s1, a1)
    M = t * m2
    err, kap, rho = _target_point(A + M * s1, M * (a1 - s1), p, nu2, lam2, sig2, s1, a1)
    return 1.0 - 1.0 / t - chat * kap, A, st


@nb.njit(cache=True)
def _solve_joint(m2, sc2, chat, p, nu2, lam2, sig2, s1, a1):
    """``(t, A, status)`` of the target system (6.11): ``t = 1/(1 - c kappa)`` on ``t >= 1``."""
    if chat == 0.0:
        A, st = _solve_A(1.0, m2, sc2, chat, p, nu2, lam2, sig2, s1, a1)
        return 1.0, A, st
    x0 = 1.0
    f0, A, st = _outer_residual(x0, m2, sc2, chat, p, nu2, lam2, sig2, s1, a1)
    if st != 0:
        return x0, A, st
    if f0 >= 0.0:
        return x0, A, 0
    x1 = 2.0
    f1, A, st = _outer_residual(x1, m2, sc2, chat, p, nu2, lam2, sig2, s1, a1)
    n = 0
    while f1 < 0.0:
        if st != 0:
            return x1, A, st
        x0, f0 = x1, f1
        x1 = 2.0 * x1
        f1, A, st = _outer_residual(x1, m2, sc2, chat, p, nu2, lam2, sig2, s1, a1)
        n += 1
        if n > 2000 or not math.isfinite(f1):
            return x1, A, 3
    if st != 0:
        return x1, A, st
    if f1 == 0.0:
        return x1, A, 0
    for _ in range(_MAXIT):
        x = _secant(x0, x1, f0, f1)
        fx, A, st = _outer_residual(x, m2, sc2, chat, p, nu2, lam2, sig2, s1, a1)
        if st != 0:
            return x, A, st
        if fx == 0.0 or abs(x - x1) <= _XTOL * x:
            return x, A, 0
        x0, x1, f0, f1 = _ab_update(x0, x1, f0, f1, x, fx)
    return x1, A, 3


@nb.njit(cache=True)
def _point(code, nu1, nu2, alpha, g1, g2, lam1, lam2, T1, T2, delta, sig1, sig2):
    """Target error of one parameter point; ``(error, t, A, M, status)``."""
    if code == 0:
        # Scratch is the single-task theory on the target, eq. (6.6) with the target's parameters.
        a2, st = _solve_amplitude(nu2, g2, lam2, T2, sig2)
        return _ridge_err(lam2 / a2, nu2, sig2), a2 * lam2 / T2, a2, 0.0, st
    a1, s1, cos1, err1, st = _source(nu1, g1, lam1, T1, sig1)
    if st != 0:
        return np.nan, np.nan, np.nan, np.nan, st
    p = alpha * cos1
    if code == 1 or math.isinf(delta):
        err, kap, rho = _target_point(s1, a1 - s1, p, nu2, lam2, sig2, s1, a1)
        return err, 1.0, 0.0, 1.0, 0
    m = delta / (lam2 + delta)
    m2 = m * m
    sc2 = T2 / (lam2 + delta)
    chat = g2 * g2 * lam2 / (nu2 * (lam2 + delta))
    t, A, st = _solve_joint(m2, sc2, chat, p, nu2, lam2, sig2, s1, a1)
    M = t * m2
    err, kap, rho = _target_point(A + M * s1, M * (a1 - s1), p, nu2, lam2, sig2, s1, a1)
    return err, t, A, M, st


@nb.njit(parallel=True, cache=True)
def _target_kernel(code, nu1, nu2, alpha, g1, g2, lam1, lam2, T1, T2, delta, sig1, sig2, out, status):
    for i in nb.prange(out.shape[0]):
        e, t, A, M, st = _point(code, nu1[i], nu2[i], alpha[i], g1[i], g2[i], lam1[i], lam2[i], T1[i], T2[i],
                                delta[i], sig1[i], sig2[i])
        out[i, 0] = e
        out[i, 1] = t
        out[i, 2] = A
        out[i, 3] = M
        status[i] = st


@nb.njit(parallel=True, cache=True)
def _gain_kernel(code, nu1, nu2, alpha, g1, g2, lam1, lam2, T1, T2, delta, sig1, sig2, out, status):
    """Scratch and transfer errors together (the phase-diagram hot loop)."""
    for i in nb.prange(out.shape[0]):
        e0, t, A, M, st0 = _point(0, nu1[i], nu2[i], alpha[i], g1[i], g2[i], lam1[i], lam2[i], T1[i], T2[i],
                                  delta[i], sig1[i], sig2[i])
        e1, t, A, M, st1 = _point(code, nu1[i], nu2[i], alpha[i], g1[i], g2[i], lam1[i], lam2[i], T1[i], T2[i],
                                  delta[i], sig1[i], sig2[i])
        out[i, 0] = e0
        out[i, 1] = e1
        status[i] = st0 if st0 != 0 else st1


@nb.njit(parallel=True, cache=True)
def _source_kernel(nu, g, lam, T, sig, out, status):
    for i in nb.prange(out.shape[0]):
        a, s1, cos1, err, st = _source(nu[i], g[i], lam[i], T[i], sig[i])
        out[i, 0] = a
        out[i, 1] = s1
        out[i, 2] = cos1
        out[i, 3] = err
        status[i] = st


# ------------------------------------------------------------------------------------------------
# Python layer: validation, broadcasting, errors
# ------------------------------------------------------------------------------------------------


def _check_array(name, value, label=None):
    low, low_open, high, allow_inf = _RANGES[name]
    limit = _SCALE_LIMIT if name in _SCALED or name in _BOUNDED_ABOVE else None
    return check_real_array(label or name, value, low=low, low_open=low_open, high=high, allow_inf=allow_inf,
                            scale_limit=limit, two_sided=name in _SCALED)


_REQUIRED = object()


def _renamed(kw: dict, where: str, labels: dict | None = None) -> dict:
    """``kw`` with the old names (``lam1``, ``T1``, ...) replaced by the new ones, warning once per name.

    ``labels`` (if given) collects new name -> the spelling the caller used, so that a range error
    names the argument as it was written.
    """
    out = dict(kw)
    for old, new in DEPRECATED_NAMES.items():
        if old not in out:
            continue
        value = out.pop(old)
        if out.get(new, _REQUIRED) is not _REQUIRED and out.get(new) is not None:
            raise ValueError(f"{where}: give {new} or its old name {old}, not both")
        warnings.warn(f"{where}: {old} is the old name of {new}; it will be removed", DeprecationWarning,
                      stacklevel=3)
        out[new] = value
        if labels is not None:
            labels[new] = old
    return out


def _missing(kw: dict, names, where: str):
    missing = [k for k in names if kw.get(k, _REQUIRED) is _REQUIRED]
    if missing:
        raise TypeError(f"{where} missing required keyword argument(s): {', '.join(missing)}")


def _call_kernel(kernel, args, out, status, flat, what):
    """Run a Numba kernel; an exception inside it or a non-finite result becomes a ConvergenceError
    naming the first bad point (never NaN, never a SystemError from compiled code)."""
    try:
        kernel(*args, out, status)
    except (SystemError, ArithmeticError) as exc:
        point = ", ".join(f"{k}={v[0]:g}" if v.size == 1 else f"{k}=[{v.min():g}..{v.max():g}]"
                          for k, v in flat.items())
        raise ConvergenceError(f"{what}: the scalar saddle-point equations failed numerically "
                               f"({type(exc.__cause__ or exc).__name__}) for parameters {point}") from None
    if np.any(status):
        _status_error(status, flat, what)
    bad = ~np.all(np.isfinite(out), axis=1)
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        point = ", ".join(f"{k}={flat[k][i]:g}" for k in flat)
        raise ConvergenceError(f"{what}: non-finite result at {int(bad.sum())} of {bad.size} points (the scalar "
                               f"equations lose float64 precision there); first at {point}")


def _status_error(status, arrays, what):
    bad = np.flatnonzero(status)
    i = int(bad[0])
    point = ", ".join(f"{k}={arrays[k][i]:g}" for k in arrays)
    stage = {1: "source amplitude a1 (eq. 6.6)", 2: "target amplitude A (eq. 6.11)",
             3: "target factor t = 1/(1 - c kappa) (eq. 6.11)"}.get(int(status[i]), "?")
    raise ConvergenceError(f"{what}: the root finder for the {stage} failed at {len(bad)} of {status.size} "
                           f"points; first at {point}")


def _setting_code(setting):
    if not isinstance(setting, str) or setting not in _SETTING_CODE:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
    return _SETTING_CODE[setting]


def _broadcast(named: dict, labels=None):
    labels = labels or {}
    return broadcast_flat({k: _check_array(k, v, labels.get(k)) for k, v in named.items()})


def _shape_out(x, shape):
    return float(x.reshape(())) if shape == () else x.reshape(shape)


def _coupling_for(setting, coupling):
    if setting == "joint":
        if coupling is None:
            raise ValueError("coupling (delta, in [0, inf]) is required for setting='joint'")
        return coupling
    if coupling is not None:
        raise ValueError(f"coupling is only used by setting='joint' (setting={setting!r} fixes delta = "
                         f"{'0' if setting == 'scratch' else 'inf'}); leave it as None")
    return 0.0 if setting == "scratch" else np.inf


def _run(setting, kw, *, full=False, labels=None):
    code = _setting_code(setting)
    kw = dict(kw)
    kw["coupling"] = _coupling_for(setting, kw["coupling"])
    shape, flat = _broadcast({k: kw[k] for k in PARAMETERS}, labels)
    n = int(np.prod(shape, dtype=np.int64))
    out = np.empty((n, 4))
    status = np.zeros(n, dtype=np.int64)
    _call_kernel(_target_kernel, (code, *(flat[k] for k in PARAMETERS)), out, status, flat,
                 f"target_error(setting={setting!r})")
    if full:
        return shape, out
    return _shape_out(out[:, 0], shape)


def mp_resolvent(r, nu):
    """Marchenko-Pastur resolvent ``G_nu(r) = lim tr(X^T X/D + r)^-1 / D`` and ``-dG/dr``.

    docs/theory.md, eqs. (6.2)-(6.3). ``X`` is ``P x D`` standard Gaussian with ``P = nu D``.

    Parameters
    ----------
    r : array_like, > 0
        Ridge.
    nu : array_like, > 0
        Samples per dimension.

    Returns
    -------
    G, dG : ndarray
        ``G`` and ``G' = -dG/dr`` (broadcast shapes).
    """
    r = np.asarray(r, dtype=np.float64)
    nu = np.asarray(nu, dtype=np.float64)
    if np.any(~(r > 0)) or np.any(~np.isfinite(r)):
        raise ValueError("r must be finite and > 0")
    if np.any(~(nu > 0)) or np.any(~np.isfinite(nu)):
        raise ValueError("nu must be finite and > 0")
    b = r + nu - 1.0
    disc = np.sqrt(b * b + 4.0 * r)
    with np.errstate(divide="ignore", invalid="ignore"):
        G = np.where(b > 0, 2.0 / (b + disc), (disc - b) / (2.0 * r))
    return G, G * (1.0 + G) / disc


def ridge_error(r, nu, sigma=0.0):
    """Test error (against the noiseless teacher) of ridge regression with ridge ``r``, eq. (6.5).

    ``w_hat = (X^T X/D + r)^-1 X^T y/sqrt(D)`` on ``P = nu D`` samples of ``y = beta.x/sqrt(D) +
    sigma eps``, ``|beta|^2 = D``; returns ``lim |w_hat - beta|^2/D = r^2 G' + sigma^2 (G - r G')``.
    Kernel ridge regression with kernel ``c K`` and ridge ``lam`` is the case ``r = lam/c``.
    """
    G, Gp = mp_resolvent(r, nu)
    sigma = _check_array("sigma2", sigma)
    r = np.asarray(r, dtype=np.float64)
    nu = np.asarray(nu, dtype=np.float64)
    # G - r G' = nu G'/(1 + G)^2 (eq. 6.3): no cancellation as r -> 0
    return r**2 * Gp + sigma**2 * nu * Gp / (1.0 + G) ** 2


class SourceState(NamedTuple):
    """The source's learned weight covariance ``Sigma1 = s1^2 (I - u u^T) + amplitude u u^T``.

    Attributes
    ----------
    amplitude : ndarray
        ``a1``: the variance of the weights along the spike ``u`` (eq. 6.6); the bulk variance is
        ``s1^2 = temperature1/weight_decay1``.
    spike : ndarray
        ``a1 - s1^2``: the excess variance along the spike (0 without feature learning).
    overlap : ndarray
        ``cos(theta1) = u.beta1/|beta1|``: alignment of the spike with the source teacher (eq. 6.7).
    chi : ndarray
        ``chi1 = 1 - s1^2/a1`` (< 1: the tilt normalises).
    effective_ridge : ndarray
        ``weight_decay1/a1``: the source predictor is ridge regression with this ridge (docs/theory.md, eq. (2.10)).
    error : ndarray
        Source test error against the noiseless source teacher.
    """

    amplitude: np.ndarray
    spike: np.ndarray
    overlap: np.ndarray
    chi: np.ndarray
    effective_ridge: np.ndarray
    error: np.ndarray


def source_state(*, nu1, g1, weight_decay1=_REQUIRED, temperature1=_REQUIRED, sigma1=0.0, **old_names) -> SourceState:
    """Spike size and overlap of the source's learned weight covariance in the proportional limit.

    docs/theory.md, eqs. (6.6)-(6.7); ``gamma1 = g1/sqrt(P1)``. Arguments broadcast.

    Parameters
    ----------
    nu1 : array_like, > 0
        ``P1/D``.
    g1 : array_like, >= 0
        Rescaled feature-learning strength, ``gamma1 = g1/sqrt(P1)``.
    weight_decay1, temperature1 : array_like, > 0
        Weight decay and temperature of source training (old names ``lam1``, ``T1``: deprecated).
    sigma1 : array_like, >= 0
        Label-noise standard deviation of the source teacher.

    Returns
    -------
    SourceState
    """
    unknown = set(old_names) - {"lam1", "T1"}
    if unknown:
        raise TypeError(f"source_state() got unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    labels = {}
    kw = _renamed(dict(weight_decay1=weight_decay1, temperature1=temperature1, **old_names), "source_state", labels)
    _missing(kw, ("weight_decay1", "temperature1"), "source_state()")
    shape, flat = _broadcast(dict(nu1=nu1, g1=g1, weight_decay1=kw["weight_decay1"],
                                  temperature1=kw["temperature1"], sigma1=sigma1), labels)
    n = int(np.prod(shape, dtype=np.int64))
    out = np.empty((n, 4))
    status = np.zeros(n, dtype=np.int64)
    _call_kernel(_source_kernel, (flat["nu1"], flat["g1"], flat["weight_decay1"], flat["temperature1"],
                                  flat["sigma1"]), out, status, flat, "source_state")
    a, s1, cos1, err = out.T
    return SourceState(
        amplitude=_shape_out(a, shape),
        spike=_shape_out(a - s1, shape),
        overlap=_shape_out(cos1, shape),
        chi=_shape_out(1.0 - s1 / a, shape),
        effective_ridge=_shape_out(flat["weight_decay1"] / a, shape),
        error=_shape_out(err, shape),
    )


def target_error(setting, *, nu1, nu2, alpha, g1, g2, weight_decay1=_REQUIRED, weight_decay2=_REQUIRED,
                 temperature1=_REQUIRED, temperature2=_REQUIRED, coupling=None, sigma1=0.0, sigma2=0.0,
                 **old_names):
    """Target test error in the proportional limit, against the noiseless target teacher.

    docs/theory.md, eqs. (6.8)-(6.12), the ``D -> infinity`` limit of docs/theory.md eqs.
    (3.4)-(3.6) with ``P_k = nu_k D`` and ``gamma_k = g_k/sqrt(P_k)``. All numeric arguments broadcast
    against each other (NumPy rules); a scalar is returned when all are scalars.

    Parameters
    ----------
    setting : {"scratch", "finetune", "joint"}
        ``"scratch"``: target trained alone (``delta = 0``); ``"finetune"``: readout trained on frozen
        source features (``delta = inf``); ``"joint"``: jointly rich training with coupling
        ``coupling``.
    nu1, nu2 : array_like, > 0
        Samples per input dimension of source and target.
    alpha : array_like, in [-1, 1]
        Teacher alignment ``beta1.beta2/D``.
    g1, g2 : array_like, >= 0
        Rescaled feature-learning strengths, ``gamma_k = g_k/sqrt(P_k)``.
    weight_decay1, weight_decay2, temperature1, temperature2 : array_like, > 0
        Weight decays ``lambda_k`` and temperatures ``T_k`` (old names ``lam1, lam2, T1, T2``:
        deprecated).
    coupling : array_like in [0, inf], optional
        Elastic coupling ``delta``; required for ``"joint"``, must be omitted otherwise.
    sigma1, sigma2 : array_like, >= 0
        Label-noise standard deviations.

    Returns
    -------
    float or ndarray
        ``lim |w_hat2 - beta2|^2/D`` = ``E_x (f2(x) - beta2.x/sqrt(D))^2``.

    Raises
    ------
    ValueError
        A parameter outside its range, or shapes that do not broadcast.
    ConvergenceError
        A scalar root finder failed (names the first failing point).
    """
    unknown = set(old_names) - set(DEPRECATED_NAMES)
    if unknown:
        raise TypeError(f"target_error() got unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    labels = {}
    kw = _renamed(dict(nu1=nu1, nu2=nu2, alpha=alpha, g1=g1, g2=g2, weight_decay1=weight_decay1,
                       weight_decay2=weight_decay2, temperature1=temperature1, temperature2=temperature2,
                       coupling=coupling, sigma1=sigma1, sigma2=sigma2, **old_names), "target_error", labels)
    _missing(kw, PARAMETERS, "target_error()")
    return _run(setting, kw, labels=labels)


def target_scalars(setting, **kw):
    """``(error, t, A, M)`` of :func:`target_error`: the order parameters of eq. (6.11).

    ``t = 1/(1 - c kappa)``, ``A``, ``M = t m^2`` as in docs/theory.md eq. (3.5) (for ``"scratch"``:
    ``t = a2/s2^2``, ``A = a2``, ``M = 0``; for ``"finetune"``: ``t = 1``, ``A = 0``, ``M = 1``).
    Same keywords as :func:`target_error`; returns a tuple of arrays of the broadcast shape.
    """
    full = dict(coupling=None, sigma1=0.0, sigma2=0.0)
    labels = {}
    full.update(_renamed(kw, "target_scalars", labels))
    missing = [k for k in PARAMETERS if k not in full]
    if missing:
        raise ValueError(f"missing parameters: {missing}")
    shape, out = _run(setting, full, full=True, labels=labels)
    return tuple(_shape_out(out[:, j].copy(), shape) for j in range(4))


def transfer_gain(setting, **kw):
    """Scratch error minus transfer error (positive = positive transfer); keywords of :func:`target_error`."""
    if setting == "scratch":
        raise ValueError("setting must be 'finetune' or 'joint' for a transfer gain")
    kw = _renamed(kw, "transfer_gain")
    kw_s = dict(kw)
    kw_s["coupling"] = None
    return target_error("scratch", **kw_s) - target_error(setting, **kw)


# ------------------------------------------------------------------------------------------------
# Phase diagrams
# ------------------------------------------------------------------------------------------------


@dataclass
class PhaseDiagram:
    """Transfer gain over a 2-D grid of two parameters.

    Attributes
    ----------
    x_name, y_name : str
        Parameter names on the axes.
    x, y : ndarray
        Grid values, shapes ``(nx,)`` and ``(ny,)``.
    gain : ndarray
        ``scratch_error - transfer_error``, shape ``(ny, nx)``.
    transfer_error, scratch_error : ndarray
        Shape ``(ny, nx)``.
    boundary : list of ndarray
        The ``gain = 0`` level set (positive vs negative transfer) as polylines, each of shape
        ``(k, 2)`` with columns ``(x, y)``.
    setting : str
        ``"finetune"`` or ``"joint"``.
    params : dict
        The fixed values of the other parameters.
    """

    x_name: str
    y_name: str
    x: np.ndarray
    y: np.ndarray
    gain: np.ndarray
    transfer_error: np.ndarray
    scratch_error: np.ndarray
    boundary: list = field(default_factory=list)
    setting: str = "finetune"
    params: dict = field(default_factory=dict)

    def plot(self, path=None, *, ax=None, xscale="auto", yscale="auto", title=None):
        """Plot with :func:`symtransfer.plotting.plot_phase_diagram`; returns the figure."""
        from ..plotting import plot_phase_diagram

        return plot_phase_diagram(self, path=path, ax=ax, xscale=xscale, yscale=yscale, title=title)


@dataclass
class LearningCurves:
    """Target test error against ``nu2`` for the three settings, one panel per strength ``g``.

    Built by :func:`learning_curves`, drawn by :func:`symtransfer.plotting.plot_learning_curves`.

    Attributes
    ----------
    nu2 : ndarray
        Target samples per dimension, shape ``(n,)``.
    gammas : tuple of float
        The panel values of ``g`` (``gamma = g/sqrt(P)``).
    gamma_applies_to : str
        ``"both"``, ``"g1"`` or ``"g2"``: which strength the panel value sets.
    coupling : float
        ``delta`` of the jointly rich curves.
    curves : list of list of dict
        ``curves[k]`` are panel ``k``'s curves, each ``{"setting", "alpha", "error"}`` (``alpha`` is
        ``None`` for scratch, which does not depend on it; ``error`` has shape ``(n,)``).
    params : dict
        The fixed values of the other parameters.
    """

    nu2: np.ndarray
    gammas: tuple
    gamma_applies_to: str
    coupling: float
    curves: list
    params: dict = field(default_factory=dict)

    def plot(self, path=None, *, logy=True):
        """Plot with :func:`symtransfer.plotting.plot_learning_curves`; returns the figure."""
        from ..plotting import plot_learning_curves

        return plot_learning_curves(self, path=path, logy=logy)


def learning_curves(nu2_values, *, alphas=(0.0, 0.5, 1.0), gammas=(0.5, 2.0), coupling=1.0,
                    settings=SETTINGS, gamma_applies_to="both", **params) -> LearningCurves:
    """Target test error (noiseless teacher), eq. (6.9), against ``nu2`` for each setting and alignment.

    Parameters
    ----------
    nu2_values : array_like
        Target samples per dimension (1-D, at least 2 values).
    alphas : sequence of float
        Task alignments (one curve per alignment and transfer setting).
    gammas : sequence of float
        Values of the scaled strength ``g`` (``gamma = g/sqrt(P)``), one panel each.
    coupling : float
        ``delta`` of the jointly rich setting.
    settings : sequence of str
        Subset of ``("scratch", "finetune", "joint")``.
    gamma_applies_to : {"both", "g1", "g2"}
        Which strength the panel value sets; the other comes from ``params``.
    **params
        The remaining parameters of :func:`target_error` (``nu1, weight_decay1, weight_decay2,
        temperature1, temperature2, sigma1, sigma2`` and, if not set by ``gamma_applies_to``, ``g1``/``g2``);
        missing ones take :data:`DEFAULT_PARAMETERS`.

    Returns
    -------
    LearningCurves
    """
    nu2 = np.asarray(nu2_values, dtype=np.float64)
    if nu2.ndim != 1 or nu2.size < 2:
        raise ValueError("nu2_values must be a 1-D array with at least 2 values")
    if gamma_applies_to not in ("both", "g1", "g2"):
        raise ValueError(f"gamma_applies_to must be 'both', 'g1' or 'g2', got {gamma_applies_to!r}")
    bad = [s for s in settings if s not in SETTINGS]
    if bad:
        raise ValueError(f"settings must be among {SETTINGS}, got {bad}")
    params = _renamed(params, "learning_curves")
    unknown = set(params) - (set(PARAMETERS) - {"nu2", "alpha", "coupling"})
    if unknown:
        raise ValueError(f"unknown or axis parameters {sorted(unknown)} in params")
    gammas, alphas = tuple(gammas), tuple(alphas)
    if not gammas or not alphas:
        raise ValueError("alphas and gammas must be non-empty")
    base = {k: v for k, v in DEFAULT_PARAMETERS.items() if k not in ("nu2", "alpha", "coupling")}
    base.update(params)
    panels = []
    for g in gammas:
        p = dict(base)
        if gamma_applies_to in ("both", "g1"):
            p["g1"] = g
        if gamma_applies_to in ("both", "g2"):
            p["g2"] = g
        curves = []
        if "scratch" in settings:
            curves.append({"setting": "scratch", "alpha": None,
                           "error": target_error("scratch", nu2=nu2, alpha=0.0, **p)})
        for a in alphas:
            for s in settings:
                if s != "scratch":
                    curves.append({"setting": s, "alpha": a, "error": target_error(
                        s, nu2=nu2, alpha=a, coupling=coupling if s == "joint" else None, **p)})
        panels.append(curves)
    return LearningCurves(nu2=nu2, gammas=gammas, gamma_applies_to=gamma_applies_to, coupling=coupling,
                          curves=panels, params=base)


_DEFAULT_AXES = {
    "alpha": lambda n: np.linspace(0.0, 1.0, n),
    "nu1": lambda n: np.geomspace(0.1, 10.0, n),
    "nu2": lambda n: np.geomspace(0.1, 10.0, n),
    "g1": lambda n: np.linspace(0.0, 5.0, n),
    "g2": lambda n: np.linspace(0.0, 5.0, n),
    "weight_decay1": lambda n: np.geomspace(0.01, 10.0, n),
    "weight_decay2": lambda n: np.geomspace(0.01, 10.0, n),
    "temperature1": lambda n: np.geomspace(0.01, 10.0, n),
    "temperature2": lambda n: np.geomspace(0.01, 10.0, n),
    "coupling": lambda n: np.geomspace(0.01, 100.0, n),
    "sigma1": lambda n: np.linspace(0.0, 2.0, n),
    "sigma2": lambda n: np.linspace(0.0, 2.0, n),
}


def zero_level_lines(x, y, z):
    """Polylines of ``z = 0`` on the grid ``z[j, i] = f(x[i], y[j])`` (marching squares via contourpy)."""
    import contourpy

    gen = contourpy.contour_generator(np.asarray(x, float), np.asarray(y, float), np.asarray(z, float),
                                      line_type=contourpy.LineType.Separate)
    return [np.asarray(seg, dtype=np.float64) for seg in gen.lines(0.0)]


def phase_diagram(x="alpha", y="nu2", *, x_values=None, y_values=None, n=100, setting="finetune",
                  **params) -> PhaseDiagram:
    """Transfer gain ``E_scratch - E_transfer`` over a grid of two parameters, with its zero line.

    docs/theory.md, section 6.5.

    Parameters
    ----------
    x, y : str
        Names of the two parameters on the axes (any of :data:`PARAMETERS`, distinct; the old names
        ``lam1, lam2, T1, T2`` are accepted with a ``DeprecationWarning``).
    x_values, y_values : array_like, optional
        Grid values (1-D, strictly monotone); defaults to ``n`` points of a standard range
        (``alpha`` in [0, 1], ``nu`` log-spaced in [0.1, 10], ...).
    n : int
        Points per axis when values are not given.
    setting : {"finetune", "joint"}
        The transfer protocol compared with training from scratch.
    **params
        Values of the remaining parameters (scalars); missing ones take :data:`DEFAULT_PARAMETERS`.
        For ``"finetune"`` the coupling is ignored.

    Returns
    -------
    PhaseDiagram
    """
    if setting not in ("finetune", "joint"):
        raise ValueError(f"setting must be 'finetune' or 'joint', got {setting!r}")
    labels = {}
    params = _renamed(params, "phase_diagram", labels)
    axes = {"x": x, "y": y}
    for old, new in DEPRECATED_NAMES.items():
        for key in ("x", "y"):
            if axes[key] == old:
                warnings.warn(f"phase_diagram: {key}={old!r} is the old name of {new!r}; it will be removed",
                              DeprecationWarning, stacklevel=2)
                axes[key] = new
    x, y = axes["x"], axes["y"]
    for name, val in (("x", x), ("y", y)):
        if val not in PARAMETERS:
            raise ValueError(f"{name} must be one of {PARAMETERS}, got {val!r}")
    if x == y:
        raise ValueError(f"x and y must be different parameters, both are {x!r}")
    if setting == "finetune" and "coupling" in (x, y):
        raise ValueError("coupling cannot be an axis for setting='finetune' (delta = inf); use 'joint'")
    unknown = set(params) - set(PARAMETERS)
    if unknown:
        raise ValueError(f"unknown parameters {sorted(unknown)}; accepted: {PARAMETERS}")
    for name in (x, y):
        if name in params:
            raise ValueError(f"{name} is an axis; give its grid as x_values/y_values, not as a parameter")
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")

    def axis(name, values, label):
        vals = _DEFAULT_AXES[name](int(n)) if values is None else np.asarray(values, dtype=np.float64)
        if vals.ndim != 1 or vals.size < 2:
            raise ValueError(f"{label} must be a 1-D array with at least 2 values")
        d = np.diff(vals)
        if not (np.all(d > 0) or np.all(d < 0)):
            raise ValueError(f"{label} must be strictly monotone")
        _check_array(name, vals)
        return vals

    xv = axis(x, x_values, "x_values")
    yv = axis(y, y_values, "y_values")
    full = dict(DEFAULT_PARAMETERS)
    full.update(params)
    for k, v in full.items():
        if np.ndim(v) != 0:
            raise ValueError(f"{k} must be a scalar in a phase diagram (only the axes vary), got shape "
                             f"{np.shape(v)}")
    full[x] = xv[None, :]
    full[y] = yv[:, None]
    code = _SETTING_CODE[setting]
    if setting == "finetune":
        full["coupling"] = np.inf
    shape, flat = _broadcast({k: full[k] for k in PARAMETERS}, labels)
    npts = int(np.prod(shape, dtype=np.int64))
    out = np.empty((npts, 2))
    status = np.zeros(npts, dtype=np.int64)
    _call_kernel(_gain_kernel, (code, *(flat[k] for k in PARAMETERS)), out, status, flat,
                 f"phase_diagram(setting={setting!r})")
    scratch = out[:, 0].reshape(shape)
    transfer = out[:, 1].reshape(shape)
    gain = scratch - transfer
    fixed = {k: float(v) for k, v in full.items() if k not in (x, y)}
    if setting == "finetune":
        fixed.pop("coupling", None)
    return PhaseDiagram(x_name=x, y_name=y, x=xv, y=yv, gain=gain, transfer_error=transfer,
                        scratch_error=scratch, boundary=zero_level_lines(xv, yv, gain), setting=setting,
                        params=fixed)
