"""Constrained Newton at the edge of the normalisable region: the condensate of runaway neurons
(docs/adaptive.md, section 2, eq. (A.6))."""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import nnls

from ...errors import EdgeOfNormalisabilityError
from ._draws import _DEBUG, _Diverged, _log
from ._samples import _KISH_FINAL, _KISH_REDRAW, _KISH_TRUST, _all_kernel, _all_moments, _record, _reweight

_POOL_EDGE = 256     # cutting planes of the domain, and more are kept
_TAU_LEAVE = 0.9      # an edge path with no active constraint below this tau goes back to the interior
_TAU_CONDENSE = 0.98   # level of the edge constraint tau <= 1 in the condensate solve (section 2)


class _LeftEdge(Exception):
    """Raised by :func:`_newton_edge` when the path has left the edge (no active constraint, ``tau``
    below ``_TAU_LEAVE``): carries ``(v, sample set, n_draws)`` for the interior solver."""

    def __init__(self, v, ss, n_draws):
        super().__init__()
        self.v, self.ss, self.n_draws = v, ss, n_draws


def _edge_qp(H, g, A, r):
    """Step ``d`` minimising ``g.d + d^T H d / 2`` subject to ``A d <= r``, and the multipliers.

    Solved through its dual, ``min_{mu >= 0} mu^T M mu / 2 + mu^T q`` with ``M = A H^-1 A^T`` and
    ``q = A H^-1 g + r``: a non-negative least-squares problem of the size of the active set.
    """
    cho = np.linalg.cholesky(H)
    Hg = np.linalg.solve(cho.T, np.linalg.solve(cho, g))
    HA = np.linalg.solve(cho.T, np.linalg.solve(cho, A.T))
    M = A @ HA
    M = 0.5 * (M + M.T) + 1e-12 * np.trace(M) * np.eye(len(r))
    q = A @ Hg + r
    R = np.linalg.cholesky(M).T                      # M = R^T R
    mu = nnls(R, -np.linalg.solve(R.T, q), maxiter=50 * len(r))[0]
    return -(Hg + HA @ mu), mu


def _backtrack(ss, c, v, d, slope, E0, energy, retract, t_min):
    """Armijo backtracking along ``d`` with retraction into the domain: ``(t, v_t, kish_t)``, with
    ``t < t_min`` when no step is accepted.

    The slabs are tangent planes of a convex domain, so the step ends slightly outside, and they miss
    directions not yet critical: the true ``tau`` decides, by retraction.
    """
    t, vt, kisht = 1.0, v, 0.0
    while t >= t_min:
        vt = retract(v + t * d)
        _, _, lnZt, kisht = _reweight(ss, vt, c)
        if kisht >= _KISH_TRUST and energy(vt, lnZt) <= E0 + 1e-4 * t * min(slope, 0.0):
            break
        t *= 0.5
    return t, vt, kisht


def _newton_edge(draw, y, lam, c, tol, max_iter, v, ss, history, taus, n_draws):
    """Minimise (A.1) over the closed domain ``tau(v) <= 1`` (docs/adaptive.md, section 2, eq. (A.6)).

    Entered when the unconstrained path presses against the edge. The domain is the intersection of
    the slabs ``|v . a(e)| <= b`` over all directions ``e`` (``a(e) = phi_inf(L e)``,
    ``b^2 = tau / (2 c s^2)``), so each step is a Newton step with the slabs of the currently critical
    directions as linear constraints (cutting planes refreshed every iteration), at the level
    ``tau = _TAU_CONDENSE`` where the tilted measure can still be sampled. At the solution
    ``(Phi + lam) v - y = -sum_j mu_j sigma_j a_j`` with ``mu_j >= 0``: the constraint forces act like
    a kernel ``sum_j rho_j a_j a_j^T``, ``rho_j = mu_j / b``, carried by a vanishing fraction of
    neurons whose weights run off along ``e_j`` (the condensate). Returns :func:`_newton`'s tuple with
    ``(E, rho)``.
    """
    b = math.sqrt(_TAU_CONDENSE / (2.0 * c * draw.s2))
    it0 = len(history)
    n_fail = 0

    def retract(vv):
        # tau is homogeneous of degree 2 in v: scaling is the cheapest way back into the domain
        tv = draw.tau(vv)
        return vv * math.sqrt(_TAU_CONDENSE / tv) if tv > _TAU_CONDENSE else vv

    def redraw(vv, n_fail):
        while True:
            try:
                return draw(vv), vv, 0   # count consecutive rejections only: each one adds a cut
            except _Diverged:
                # the escaping chains have fed the direction they took into the pool of tau
                n_fail += 1
                if n_fail > 20:
                    raise EdgeOfNormalisabilityError(
                        "the single-site measure stayed non-normalisable along the constrained Newton path "
                        "at the edge (chains diverged 20 times)", history, taus) from None
                vv = retract(vv) if draw.tau(vv) > _TAU_CONDENSE else 0.99 * vv

    def energy(vv, lnZ):
        cvq = 0.0 if ss.cv is None else 0.5 * vv @ ss.cv @ vv
        ext = 0.0 if draw.extra is None else draw.extra.energy(vv)
        return 0.5 * lam * vv @ vv - y @ vv + cvq + ext + lnZ / (2.0 * c)

    draw.pool_cap = _POOL_EDGE
    v = retract(v)
    for it in range(it0 + 1, it0 + max_iter + 1):
        w, s, lnZ, kish = _reweight(ss, v, c)
        g, H = _all_moments(draw, ss, v, w, s, c, lam, y)
        Ecrit, F = draw.critical(v, 0.8 * _TAU_CONDENSE)
        sig = np.sign(F @ v)
        A = sig[:, None] * F
        d, mu = _edge_qp(H, g, A, b - A @ v)
        # stationarity of the Lagrangian: what is left of the gradient after the constraint forces
        res = float(np.linalg.norm(g + A.T @ mu) / max(np.linalg.norm(y), 1e-300))
        tau_now = _record(history, taus, draw, v, res)
        if not np.any(mu > 0.0) and tau_now < _TAU_LEAVE and it > it0 + 1:
            # fresh samples put the minimiser back inside the domain: the interior solver takes over
            raise _LeftEdge(v, ss, n_draws)
        if _DEBUG:
            _log.debug(f"edge it {it} res {res:.3g} |g| {np.linalg.norm(g):.3g} kish {kish:.3f} tau {tau_now:.5f} "
                  f"active {int(np.sum(mu > 0))}/{len(mu)} mu {np.round(mu[mu > 0], 4)} |v| {np.linalg.norm(v):.3g}")
        if res < tol and kish >= _KISH_FINAL:
            on = mu > 0.0
            rho = mu[on] / np.maximum(A[on] @ v, 1e-300)
            return (v, ss, w, _all_kernel(draw, ss, v, w), H, history, it, n_draws,
                    (Ecrit[on], rho))
        if res < tol:
            ss, v, n_fail = redraw(v, n_fail)
            n_draws += 1
            continue
        t, vt, kisht = _backtrack(ss, c, v, d, float(g @ d), energy(v, lnZ), energy, retract, 1e-10)
        if t < 1e-10:
            if np.array_equal(v, ss.v0) and draw.tau(v) > _TAU_CONDENSE * (1.0 + 1e-9):
                # the fresh draw's chains found cuts that put v itself outside the level: every trial
                # point is retracted and none can beat the unretracted v, so retract v first
                v = retract(v)
                continue
            if np.array_equal(v, ss.v0):
                raise EdgeOfNormalisabilityError(
                    "the constrained Newton step at the edge of the normalisable region found no descent "
                    "even on samples drawn at the current point (increase n_samples)", history, taus)
            ss, v, n_fail = redraw(v, n_fail)
            n_draws += 1
            continue
        v = vt
        if kisht < _KISH_REDRAW:
            ss, v, n_fail = redraw(v, n_fail)
            n_draws += 1
    raise EdgeOfNormalisabilityError(
        f"no convergence to tol={tol:g} at the edge of the normalisable region in max_iter={max_iter} "
        f"constrained Newton iterations", history, taus)
