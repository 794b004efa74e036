"""Damped Newton on the convex potential (A.1) inside the normalisable region, coarse to fine
(docs/adaptive.md, section 1)."""

from __future__ import annotations

import math

import numpy as np

from ...errors import ConvergenceError, EdgeOfNormalisabilityError
from ._draws import _DEBUG, _Diverged
from ._edge import _newton_edge
from ._samples import _KISH_FINAL, _KISH_REDRAW, _KISH_TRUST, _all_kernel, _all_moments, _kernel_of, _record, _reweight

_FULL_STEP = 0.25   # squared Newton decrement below which full steps are taken
_TAU_EDGE = 0.995    # 2 c s^2 kappa(v) this close to 1 counts as pressing against the edge (A.3)
_COARSE = 4          # the coarse stage of the solve keeps 1/_COARSE of the samples per chain ...
_COARSE_MIN_KEEP = 16  # ... when that leaves at least this many
_COARSE_TOL = 1e-2   # and stops here: its answer is only a starting point for the full sample set


def _pinned_at_edge(history, taus, window=6):
    """True when ``tau`` has stayed above ``_TAU_EDGE`` for ``window`` iterations without the residual
    halving: the iterates press against the boundary of the domain of (A.1) and make no progress."""
    if len(taus) < window or min(taus[-window:]) < _TAU_EDGE:
        return False
    return history[-1] > 0.5 * history[-window]


def _solve(draw, y, lam, c, tol, max_iter, condense=True):
    """Coarse-to-fine damped Newton (docs/adaptive.md, section 1).

    Most Newton iterations are spent travelling from ``v = 0`` to the neighbourhood of the solution,
    where Monte Carlo precision is wasted: that part runs on ``1/_COARSE`` of the samples (fewer kept
    states per chain, same chains and common random numbers), and the full sample set only polishes
    from the coarse answer. Same returns as :func:`_newton`, with the histories of both stages.
    """
    full = draw.n_keep
    if full // _COARSE < _COARSE_MIN_KEEP:
        return _newton(draw, y, lam, c, tol, max_iter, condense=condense)
    draw.set_keep(full // _COARSE)
    try:
        v0, _, _, _, _, hist0, it0, nd0, _ = _newton(draw, y, lam, c, max(tol, _COARSE_TOL), max_iter,
                                                     condense=condense)
    except EdgeOfNormalisabilityError:
        raise  # the edge is a property of v, not of the sample size
    except ConvergenceError as err:
        # the coarse noise may hide descent: the full sample set starts over from v = 0
        v0, hist0, it0, nd0 = None, err.residuals, len(err.residuals), 0
    finally:
        draw.set_keep(full)
    v, ss, w, Phi, H, hist, it, nd, cond = _newton(draw, y, lam, c, tol, max_iter, v0=v0, condense=condense)
    return v, ss, w, Phi, H, hist0 + hist, it0 + it, nd0 + nd, cond


def _newton(draw, y, lam, c, tol, max_iter, v0=None, condense=True):
    """Damped Newton on the convex potential ``E(v)`` (docs/adaptive.md, eq. (A.1)) from ``v0``.

    ``draw(v)`` returns a :class:`_SampleSet` of the measure tilted by ``v`` or raises
    :class:`_Diverged`. Returns ``(v, sample set, weights, Phi, H, residual history, n_iter, n_draws,
    condensate)``; ``condensate`` is ``None`` or ``(E, rho)`` from :func:`_newton_edge`, which takes
    over when the path presses against the edge of the domain (``condense=False``: raise
    :class:`EdgeOfNormalisabilityError` there instead).
    """
    P = len(y)
    v = np.zeros(P) if v0 is None else v0.copy()
    n_draws = 1
    while True:
        try:
            ss = draw(v)
            break
        except _Diverged:
            # a start found on fewer samples can sit where more chains see the tilt win: move inwards
            if not v.any() or n_draws > 20:
                raise ConvergenceError("the single-site measure is not normalisable at the starting point "
                                       "(chains diverged)") from None
            v *= 0.8
            n_draws += 1
    history, taus = [], []
    n_fail = 0

    def redraw(vv, v_good, n_fail):
        while True:
            try:
                return draw(vv), vv, n_fail
            except _Diverged:
                # outside the normalisable region (eq. 2.6): retreat towards the last good point
                n_fail += 1
                if n_fail > 20:
                    raise ConvergenceError(
                        "the single-site measure stayed non-normalisable along the Newton path "
                        "(chains diverged 20 times)", history) from None
                vv = v_good + 0.25 * (vv - v_good)

    def energy(vv, lnZ):
        # the control variate shifts Phi by a constant matrix: its potential is 1/2 v^T cv v
        cvq = 0.0 if ss.cv is None else 0.5 * vv @ ss.cv @ vv
        ext = 0.0 if draw.extra is None else draw.extra.energy(vv)
        return 0.5 * lam * vv @ vv - y @ vv + cvq + ext + (lnZ / (2.0 * c) if c > 0.0 else 0.0)

    for it in range(1, max_iter + 1):
        w, s, lnZ, kish = _reweight(ss, v, c)
        g, H = _all_moments(draw, ss, v, w, s, c, lam, y)
        # the kernel residual alone vanishes at any v when the tilt is weak: include the dual equation
        res = float(np.linalg.norm(g) / max(np.linalg.norm(y), 1e-300))
        if res < tol:
            # the relative change of Phi under one fixed-point step (two more Gram matrices, so it is
            # evaluated only once the dual equation holds; before that res >= tol anyway)
            Phi = _all_kernel(draw, ss, v, w)
            vp = np.linalg.solve(Phi + lam * np.eye(P), y)
            Phip = _kernel_of(ss, _reweight(ss, vp, c)[0])
            if draw.extra is not None:
                try:
                    Phip = Phip + draw.extra.kernel(vp)
                except _Diverged:
                    Phip = np.full_like(Phi, np.inf)
            res = max(res, float(np.linalg.norm(Phip - Phi) / max(np.linalg.norm(Phi), 1e-300)))
        tau_now = _record(history, taus, draw, v, res)
        if _DEBUG:
            print(f"it {it} res {res:.3g} |g| {np.linalg.norm(g):.3g} kish {kish:.3f} tau {tau_now:.4f} "
                  f"draws {n_draws} is {draw.used_is} |v| {np.linalg.norm(v):.3g}")
        if _pinned_at_edge(history, taus) and condense:
            return _newton_edge(draw, y, lam, c, tol, max_iter - it, v, ss, history, taus, n_draws)
        if _pinned_at_edge(history, taus):
            raise EdgeOfNormalisabilityError(
                f"the Newton path is pinned at the edge of the normalisable region (2 c s^2 kappa(v) = "
                f"{tau_now:.4f} -> 1, eq. (A.3)) while the gradient stays at {np.linalg.norm(g):.3g}: within "
                f"reach of the samples the potential (A.1) keeps decreasing towards the edge, so the saddle "
                f"point is either at the edge or governed by a tail the sampler cannot resolve "
                f"(docs/adaptive.md, section 2). Use a smaller gamma, or GradientFlowDMFT for the dynamics",
                history, taus)
        if res < tol and kish >= _KISH_FINAL:
            return v, ss, w, Phi, H, history, it, n_draws, None
        if res < tol:
            # solved on samples drawn too far away: redraw here and polish
            ss, v, n_fail = redraw(v, ss.v0, n_fail)
            n_draws += 1
            continue
        d = -np.linalg.solve(H, g)
        slope = float(g @ d)
        E0 = energy(v, lnZ)
        # fraction to the boundary of the normalisable region, as in interior-point methods:
        # E(v) is infinite outside it and the reweighted estimate cannot see that (eq. (A.3))
        tau_max = 0.5 * (1.0 + tau_now)
        # damped Newton (Nesterov-Nemirovski): a step of Hessian length < 1 stays inside the domain of
        # a self-concordant barrier; ln Z behaves like one near the edge of normalisability
        # (bounded activations have no edge: plain Newton with the line search)
        t = (1.0 / (1.0 + math.sqrt(max(-slope, 0.0)))
             if draw.has_edge and -slope > _FULL_STEP else 1.0)
        while True:
            vt = v + t * d
            _, _, lnZt, kisht = _reweight(ss, vt, c)
            if (kisht >= _KISH_TRUST and energy(vt, lnZt) <= E0 + 1e-4 * t * slope
                    and draw.tau(vt) <= tau_max):
                break
            t *= 0.5
            if t < 1e-10:
                break
        if t < 1e-10:
            if np.array_equal(v, ss.v0):
                raise ConvergenceError(
                    "the Newton step found no descent on the reweighted potential even on samples drawn "
                    "at the current point (Monte Carlo noise dominates, or the solution lies at the edge "
                    "of normalisability, docs/adaptive.md section 6: increase n_samples)", history)
            ss, v, n_fail = redraw(v, ss.v0, n_fail)  # the old samples are exhausted: draw here
            n_draws += 1
            continue
        v = vt
        if kisht < _KISH_REDRAW:
            ss, v, n_fail = redraw(v, ss.v0, n_fail)
            n_draws += 1
    raise ConvergenceError(f"no convergence to tol={tol:g} in max_iter={max_iter} Newton iterations",
                           history)
