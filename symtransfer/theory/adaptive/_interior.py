"""Damped Newton on the convex potential (A.1) inside the normalisable region, coarse to fine
(docs/adaptive.md, section 1)."""

from __future__ import annotations

import math

import numpy as np

from ...errors import ConvergenceError, EdgeOfNormalisabilityError
from ._draws import _DEBUG, _Diverged, _log
from ._edge import _LeftEdge, _newton_edge
from ._samples import _KISH_FINAL, _KISH_REDRAW, _KISH_TRUST, _all_kernel, _all_moments, _kernel_of, _record, _reweight

_FULL_STEP = 0.25   # squared Newton decrement below which full steps are taken
_TAU_EDGE = 0.995    # 2 c s^2 kappa(v) this close to 1 counts as pressing against the edge (A.3)
_COARSE = 4          # the coarse stage of the solve keeps 1/_COARSE of the samples per chain ...
_COARSE_MIN_KEEP = 16  # ... when that leaves at least this many
_COARSE_TOL = 1e-2   # and stops here: its answer is only a starting point for the full sample set
_MAX_LEAVE = 3       # returns from the edge solver to the interior per Newton run
_MAX_GROW = 2        # recoveries on doubled samples per chain before a failure is reported
_STALL = 12          # Newton iterations without a 10 % better residual: stuck on a kink of the image (A.7)


def _pinned_at_edge(history, taus, window=6):
    """True when ``tau`` has stayed above ``_TAU_EDGE`` for ``window`` iterations without the residual
    halving: the iterates press against the boundary of the domain of (A.1) and make no progress."""
    if len(taus) < window or min(taus[-window:]) < _TAU_EDGE:
        return False
    return history[-1] > 0.5 * history[-window]


def _solve(draw, y, lam, c, tol, max_iter, condense=True, max_grow=_MAX_GROW):
    """Coarse-to-fine damped Newton with automatic recovery (docs/adaptive.md, sections 1 and 6).

    Most Newton iterations are spent travelling from ``v = 0`` to the neighbourhood of the solution,
    where Monte Carlo precision is wasted: that part runs on ``1/_COARSE`` of the samples (fewer kept
    states per chain, same chains and common random numbers), and the full sample set only polishes
    from the coarse answer. Same returns as :func:`_newton`, with the histories of every stage.

    A stage that fails because sampling noise hides descent (no acceptable step even on fresh samples,
    chains escaping along the path, an indefinite sampled Hessian) is not the end: the solve restarts
    from the last point where a draw succeeded, on twice the samples per chain, up to ``max_grow``
    times. Only ``edge="raise"``'s report that the path is pinned at the edge is final at once: it is a
    property of the problem, not of the sample size.
    """
    full = draw.n_keep
    hist, it, nd = [], 0, 0
    v0, at_edge = None, False
    if full // _COARSE >= _COARSE_MIN_KEEP:
        draw.set_keep(full // _COARSE)
        try:
            v0, _, _, _, _, hist0, it0, nd0, _ = _newton(draw, y, lam, c, max(tol, _COARSE_TOL),
                                                             max_iter, condense=condense)
            hist, it, nd = hist0, it0, nd0
        except ConvergenceError as err:
            if isinstance(err, EdgeOfNormalisabilityError) and not condense:
                raise
            # the coarse noise may hide descent: the full sample set starts from the last good point
            v0, at_edge = draw.v_good, isinstance(err, EdgeOfNormalisabilityError)
            hist, it = list(err.residuals), len(err.residuals)
        finally:
            draw.set_keep(full)
    for attempt in range(max_grow + 1):
        try:
            v, ss, w, Phi, H, h, i, n, cond = _newton(draw, y, lam, c, tol, max_iter, v0=v0, condense=condense,
                                                      at_edge=at_edge)
            return v, ss, w, Phi, H, hist + h, it + i, nd + n, cond
        except ConvergenceError as err:
            if (isinstance(err, EdgeOfNormalisabilityError) and not condense) or attempt == max_grow:
                err.residuals = hist + list(err.residuals)
                raise
            if _DEBUG:
                _log.debug(f"  recovery {attempt + 1}: {str(err)[:80]}... -> {2 * draw.n_keep} per chain")
            hist, it = hist + list(err.residuals), it + len(err.residuals)
            v0, at_edge = draw.v_good, isinstance(err, EdgeOfNormalisabilityError)
            draw.grow(2 * draw.n_keep)
    raise AssertionError("unreachable")  # pragma: no cover


def _newton(draw, y, lam, c, tol, max_iter, v0=None, condense=True, at_edge=False):
    """Damped Newton on the convex potential ``E(v)`` (docs/adaptive.md, eq. (A.1)) from ``v0``.

    ``draw(v)`` returns a :class:`_SampleSet` of the measure tilted by ``v`` or raises
    :class:`_Diverged`. Returns ``(v, sample set, weights, Phi, H, residual history, n_iter, n_draws,
    condensate)``; ``condensate`` is ``None`` or ``(E, rho)`` from :func:`_newton_edge`, which takes
    over when the path presses against the edge of the domain (``condense=False``: raise
    :class:`EdgeOfNormalisabilityError` there instead), or at once with ``at_edge=True``.
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
    if at_edge and condense and draw.has_edge:
        # a restart after a failure at the edge: the interior path would only press against it again
        try:
            return _newton_edge(draw, y, lam, c, tol, max_iter, v, ss, history, taus, n_draws)
        except _LeftEdge as left:
            v, ss, n_draws = left.v.copy(), left.ss, left.n_draws
    n_left = 0 if condense else _MAX_LEAVE

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
        try:
            g, H = _all_moments(draw, ss, v, w, s, c, lam, y)
        except _Diverged:
            # the image of a source condensate (A.7) found, on its search for new maxima, a ray along
            # which it is unbounded at v (handed to the sampler's tau as a cut): retreat towards the
            # draw point, or inwards when v is the draw point
            n_fail += 1
            if n_fail > 20:
                raise ConvergenceError("the image of the source condensate stayed unbounded along the Newton "
                                       "path (eq. (A.7))", history) from None
            v = 0.8 * v if np.array_equal(v, ss.v0) else ss.v0 + 0.25 * (v - ss.v0)
            continue
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
        if (draw.extra is not None and len(history) > _STALL
                and min(history[-_STALL:]) > 0.9 * min(history[:-_STALL])):
            # the potential of a condensed source's image (A.7) has kinks where two maxima of F_j
            # swap; damped Newton can zigzag across one without progress: a restart (finer samples,
            # from the last draw point) gets off it
            raise ConvergenceError(f"the Newton path stalled: no progress of the residual in {_STALL} "
                                   f"iterations (last {res:.3g})", history)
        if _DEBUG:
            _log.debug(f"it {it} res {res:.3g} |g| {np.linalg.norm(g):.3g} kish {kish:.3f} tau {tau_now:.4f} "
                  f"draws {n_draws} is {draw.used_is} |v| {np.linalg.norm(v):.3g}")
        if _pinned_at_edge(history, taus) and condense:
            try:
                return _newton_edge(draw, y, lam, c, tol, max_iter - it, v, ss, history, taus, n_draws)
            except _LeftEdge as left:
                # the edge was a noise artefact of the samples it was entered on: back inside, with
                # fresh pinning statistics (and at most _MAX_LEAVE times, against ping-pong)
                n_left += 1
                if n_left > _MAX_LEAVE:
                    raise ConvergenceError("the Newton path alternated between the edge of the normalisable "
                                           "region and its interior (increase n_samples)", history) from None
                v, ss, n_draws = left.v.copy(), left.ss, left.n_draws
                taus[:] = [0.0] * len(taus)
                continue
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
            if kisht >= _KISH_TRUST and draw.tau(vt) <= tau_max:
                if energy(vt, lnZt) <= E0 + 1e-4 * t * slope:
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
