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

    def solve(self, v):
        """``(A, F, Z, exact)``: rows ``a_j``, values ``F_j*``, maximisers ``delta_j`` (span
        coordinates) and whether every maximiser was found as a consistent stationary point; ``None``
        when some ``F_j`` is unbounded (the target tilt beats its prior along ``delta``).

        For a fixed sign pattern of the preactivations ``F_j`` is a quadratic with maximiser
        ``alpha g``; the pattern is iterated to a fixed point. When it cycles, the maximiser lies on
        the kink hyperplanes of the flipping preactivations: those are pinned to zero and the
        quadratic is maximised on their intersection (Lagrange multipliers).
        """
        ap, am = self.slopes
        k = 2.0 * self.c2 * self.s2c
        L2, s2c = self.L2, self.s2c
        J = self.h0.shape[1]
        A, F, Z = np.empty((J, len(v))), np.empty(J), np.empty((J, L2.shape[1]))
        exact = True
        for j in range(J):
            h0 = self.h0[:, j]
            d = np.where(h0 >= 0.0, ap, am)
            pinned = np.zeros(len(v), dtype=bool)
            seen = set()
            done = False
            a0 = h0 * np.where(h0 > 0.0, ap, am)
            best = (self.c2 * (v @ a0) ** 2, a0, np.zeros(L2.shape[1]))   # delta = 0
            val = best[0]
            for _ in range(100):
                dv = np.where(pinned, 0.0, d * v)
                g = L2.T @ dv
                beta = dv @ h0
                if 1.0 - k * (g @ g) <= 0.0:
                    # the quadratic of this pattern is unbounded along +-g, but F_j only if a ray
                    # along +-g keeps the pattern; else the pattern is not that of the maximiser
                    ray = L2 @ g
                    d_ray = np.where(ray > 0.0, ap, am)
                    if pinned.any() or np.array_equal(d_ray, d) or np.array_equal(np.where(ray < 0.0, ap, am), d):
                        return None
                    d = d_ray
                    continue
                if pinned.any():
                    Ls = L2[pinned]
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
            exact = exact and done and best[0] <= val + 1e-12 * max(abs(val), 1.0)
            F[j], A[j], Z[j] = best
        return A, F, Z, exact

    def kernel(self, v):
        sol = self.solve(v)
        if sol is None:
            raise _Diverged()
        A = sol[0]
        return (A.T * self.rho) @ A

    def hessian(self, v):
        """Hessian of the extra potential, ``K + rho (v . a) da/dv`` (central differences of the
        gradient ``K(v) v``: ``delta*`` moves with ``v``, and ``P2`` gradients are cheap)."""
        h = 1e-6 * max(float(np.linalg.norm(v)), 1.0)
        out = np.empty((len(v), len(v)))
        try:
            for i in range(len(v)):
                e = np.zeros(len(v))
                e[i] = h
                out[:, i] = (self.kernel(v + e) @ (v + e) - self.kernel(v - e) @ (v - e)) / (2.0 * h)
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
