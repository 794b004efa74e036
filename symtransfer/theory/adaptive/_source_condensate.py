"""Target-side image of a source condensate in jointly rich transfer (docs/adaptive.md, eq. (A.7))."""

from __future__ import annotations

import math

import numpy as np

from ._draws import _Diverged


class _SourceCondensate:
    """Target-side image of a source condensate in jointly rich transfer (docs/adaptive.md, eq. (A.7)).

    A source neuron ``w1 = t u_j`` (``t -> inf``, measure ``eps`` with ``eps t^2 = rho_j``) has the
    target conditional ``w2 = t (m u_j + delta) + O(1)``, where ``delta`` maximises
    ``F_j(delta) = -|delta|^2 / (2 s_c^2) + c2 (v . phi_inf(X2 (m u_j + delta) / sqrt(D)))^2`` (Laplace
    at large ``t``; only ``delta`` in the span of ``X2`` matters). It adds ``rho_j F_j*(v) / (2 c2)`` to
    the target potential (A.1), whose gradient is ``rho_j (a_j . v) a_j`` with
    ``a_j = phi_inf(X2 (m u_j + delta*) / sqrt(D))``: a kernel ``sum_j rho_j a_j a_j^T``.
    """

    def __init__(self, W, rho, slopes, X2, L2, V2, m, s2c, c2):
        self.h0 = m * (X2 @ W.T) / math.sqrt(X2.shape[1])   # (P2, J) preactivations of m u_j
        self.W, self.rho, self.slopes = W, rho, slopes
        self.L2, self.V2, self.m, self.s2c, self.c2 = L2, V2, m, s2c, c2
        # directions (span coordinates) along which some F_j was found unbounded: the target tilt
        # beats its prior there, so they are directions with tau >= 1 (A.3) that the sampler's pool
        # may not know yet; _ESSDraw.tau takes them as cutting planes
        self.rays = []
        # directions (span coordinates) the image searches for its far maxima (set by the sampler)
        self.dirs = None

    def solve(self, v, cands=None):
        """``(A, F, Z, exact)``: rows ``a_j``, values ``F_j*``, maximisers ``delta_j`` (span
        coordinates) and whether every maximiser was found as a consistent stationary point; ``None``
        when some ``F_j`` is unbounded (the target tilt beats its prior along ``delta``).

        For a fixed sign pattern of the preactivations ``F_j`` is a quadratic with maximiser
        ``alpha g``; the pattern is iterated to a fixed point. When it cycles, the maximiser lies on
        the kink hyperplanes of the flipping preactivations: those are pinned to zero and the
        quadratic is maximised on their intersection (Lagrange multipliers).

        ``F_j`` is not concave, and the pattern of ``delta = 0`` only finds the local maximum near
        ``m u_j``. Near the target's edge of normalisability the global one lies far out along the
        critical directions ``e`` (``tau_e = k (v . phi_inf(L2 e))^2 -> 1``): along ``t e``,
        ``F_j ~ c2 beta_e^2 / (1 - tau_e)`` (a pole, the image's barrier at the edge). So the
        iteration also starts from ``t* e`` on the most critical directions of the pool ``dirs``
        (kept up to date by the sampler's normalisability estimate) and the best stationary point is kept.
        """
        ap, am = self.slopes
        k = 2.0 * self.c2 * self.s2c
        L2 = self.L2
        J = self.h0.shape[1]
        A, F, Z = np.empty((J, len(v))), np.empty(J), np.empty((J, L2.shape[1]))
        exact = True
        cands = self._critical(v) if cands is None else cands
        for j in range(J):
            h0 = self.h0[:, j]
            starts = [np.zeros(L2.shape[1])]
            for e, a, Le in cands:
                if k * a * a >= 1.0:
                    self.rays.append(e)
                    return None
                t = self._ray_max(v, h0, Le)
                if t > 0.0:
                    starts.append(t * e)
            best, ok, tried = None, True, set()
            for z0 in starts:
                key = np.where(L2 @ z0 + h0 >= 0.0, 1, 0).astype(np.int8).tobytes()
                if key in tried:   # the same starting pattern iterates to the same point
                    continue
                tried.add(key)
                out = self._ascend(v, h0, z0)
                if out is None:
                    return None
                if best is None or out[0][0] > best[0]:
                    best, ok = out[0], out[1]
            exact = exact and ok
            F[j], A[j], Z[j] = best
        return A, F, Z, exact

    def _ray_max(self, v, h0, Le):
        """``argmax_{t >= 0} F_j(t e)`` (``Le = L2 e``): piecewise quadratic in ``t`` between the kinks
        ``t = -h0_i / Le_i``, maximised exactly on every piece (``tau_e < 1``: the last piece is bounded)."""
        ap, am = self.slopes
        k = 2.0 * self.c2 * self.s2c
        with np.errstate(divide="ignore", invalid="ignore"):
            bp = -h0 / Le
        bp = np.sort(bp[np.isfinite(bp) & (bp > 0.0)])
        lo = np.concatenate([[0.0], bp])
        hi = np.concatenate([bp, [np.inf]])
        mid = np.where(np.isfinite(hi), 0.5 * (lo + hi), lo + 1.0)
        pre = h0[None, :] + mid[:, None] * Le[None, :]
        d = np.where(pre > 0.0, ap, am)
        al, be = d @ (v * h0), d @ (v * Le)       # v . phi_inf = al + be t on the piece
        with np.errstate(divide="ignore", invalid="ignore"):
            ts = np.where(1.0 - k * be * be > 0.0, k * al * be / (1.0 - k * be * be), hi)
        ts = np.clip(np.nan_to_num(ts, nan=0.0, posinf=0.0, neginf=0.0), lo, np.where(np.isfinite(hi), hi, lo + 1e6))
        cand = np.concatenate([ts, lo])
        al2, be2 = np.concatenate([al, al]), np.concatenate([be, be])
        val = -cand**2 / (2.0 * self.s2c) + self.c2 * (al2 + be2 * cand) ** 2
        return float(cand[np.argmax(val)])

    def _critical(self, v, n=4):
        """Up to ``n`` distinct most critical directions ``(e, a_e, L2 e)`` of the pool at ``v``
        (``a_e = v . phi_inf(L2 e)``, ``tau_e = k a_e^2``), by the ascent of the normalisability index."""
        if self.dirs is None or not np.any(v):
            return []
        from ._draws import _kappa

        _, E, vals = _kappa(v, self.L2, self.slopes, self.dirs)
        if E is None:
            return []
        ap, am = self.slopes
        out = []
        for i in np.argsort(vals)[::-1]:
            e = E[i]
            if vals[i] <= 0.0 or any(abs(e @ o[0]) > 0.999 for o in out):
                continue
            Le = self.L2 @ e
            out.append((e, float(v @ np.where(Le > 0.0, ap * Le, am * Le)), Le))
            if len(out) >= n:
                break
        return out

    def _ascend(self, v, h0, z0):
        """Pattern iteration for ``max F_j`` from ``delta = z0``: ``((F*, a, delta*), consistent)``, or
        ``None`` when ``F_j`` is unbounded (the ray is recorded in ``rays``)."""
        ap, am = self.slopes
        k = 2.0 * self.c2 * self.s2c
        L2, s2c = self.L2, self.s2c
        pre = L2 @ z0 + h0
        d = np.where(pre >= 0.0, ap, am)
        pinned = np.zeros(len(v), dtype=bool)
        seen = set()
        done = False
        a0 = pre * np.where(pre > 0.0, ap, am)
        best = (-(z0 @ z0) / (2.0 * s2c) + self.c2 * (v @ a0) ** 2, a0, z0.copy())
        val = best[0]
        for _ in range(100):
            dv = np.where(pinned, 0.0, d * v)
            g = L2.T @ dv
            beta = dv @ h0
            # on the pinned kinks (L2[pinned] z = -h0[pinned]) z can only move in the null space of
            # L2[pinned]: the quadratic is unbounded there iff k |P g|^2 >= 1 (P its projector)
            gp = g
            if pinned.any():
                Ls = L2[pinned]
                gp = g - Ls.T @ np.linalg.lstsq(Ls @ Ls.T, Ls @ g, rcond=None)[0]
            if 1.0 - k * (gp @ gp) <= 0.0:
                # the quadratic of this pattern is unbounded along +-gp, but F_j only if a ray
                # along +-gp keeps the pattern (of the free preactivations; the pinned ones stay
                # at 0); else the pattern is not that of the maximiser
                ray = L2 @ gp
                free = ~pinned
                d_ray = np.where(ray > 0.0, ap, am)
                d_neg = np.where(ray < 0.0, ap, am)
                if np.array_equal(d_ray[free], d[free]) or np.array_equal(d_neg[free], d[free]):
                    # e = +-gp/|gp| keeps the pattern, along which (v . phi_inf(L2 e))^2 = |gp|^2:
                    # a direction with tau >= 1 (A.3), handed to the sampler's pool as a cut
                    sgn = 1.0 if np.array_equal(d_ray[free], d[free]) else -1.0
                    self.rays.append(sgn * gp / max(float(np.linalg.norm(gp)), 1e-300))
                    return None
                d = np.where(pinned, d, d_ray)
                continue
            if pinned.any():
                Lg = Ls @ g
                M = np.block([[np.array([[1.0 - k * (g @ g)]]), -s2c * Lg[None, :]],
                              [k * Lg[:, None], s2c * Ls @ Ls.T]])
                x = np.linalg.lstsq(M, np.concatenate([[beta], -h0[pinned]]), rcond=None)[0]
                z = k * x[0] * g + s2c * Ls.T @ x[1:]
            else:
                z = (k * beta / (1.0 - k * (g @ g))) * g
            pre = L2 @ z + h0
            pre[pinned] = 0.0
            a = pre * np.where(pre > 0.0, ap, am)
            val = -(z @ z) / (2.0 * s2c) + self.c2 * (v @ a) ** 2
            if val > best[0]:
                best = (val, a, z)
            d_new = np.where(pinned, d, np.where(pre > 0.0, ap, am))
            if np.array_equal(d_new, d):
                done = True
                break
            key = d_new.tobytes() + pinned.tobytes()
            if key in seen:
                pinned |= d_new != d           # a cycle: the maximiser sits on these kinks
            seen.add(key)
            d = d_new
        # the last stationary point must be the best point seen, else it is no maximiser
        return best, done and best[0] <= val + 1e-12 * max(abs(val), 1.0)

    def kernel(self, v, cands=None):
        sol = self.solve(v, cands)
        if sol is None:
            raise _Diverged()
        A = sol[0]
        return (A.T * self.rho) @ A

    def hessian(self, v):
        """Hessian of the extra potential, ``K + rho (v . a) da/dv`` (central differences of the
        gradient ``K(v) v``: ``delta*`` moves with ``v``, and ``P2`` gradients are cheap)."""
        h = 1e-6 * max(float(np.linalg.norm(v)), 1.0)
        out = np.empty((len(v), len(v)))
        cands = self._critical(v)   # the same starting directions for every difference
        try:
            for i in range(len(v)):
                e = np.zeros(len(v))
                e[i] = h
                out[:, i] = (self.kernel(v + e, cands) @ (v + e) - self.kernel(v - e, cands) @ (v - e)) / (2.0 * h)
        except _Diverged:
            # v within h of the edge of F_j's domain: the kernel alone (its Gauss-Newton part, PSD)
            return self.kernel(v)
        return 0.5 * (out + out.T)

    def energy(self, v):
        sol = self.solve(v)
        return np.inf if sol is None else float(self.rho @ sol[1]) / (2.0 * self.c2)

    def directions(self, v):
        """Target weight directions ``m u_j + V2 delta_j`` of the image neurons (for test inputs)."""
        return self.m * self.W + self.solve(v)[2] @ self.V2.T
