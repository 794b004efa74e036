"""Target-side image of a source condensate in jointly rich transfer (docs/adaptive.md, eq. (A.7))."""

from __future__ import annotations

import math

import numpy as np

from ._draws import _Diverged, _kappa
from ._image_kernels import ascend_all

_N_RAYS = 4     # most critical directions of the sampler's pool along which far maxima are looked for
_N_KEEP = 16    # distinct maximisers kept per source direction (branches tracked from point to point)
_N_EXPLORE = 8  # random starts per source direction at each new Newton point (in :meth:`hessian`)
_EPS_REL = 1e-2  # temperature of the log-sum-exp over a direction's maxima, relative to the largest


class _SourceCondensate:
    """Target-side image of a source condensate in jointly rich transfer (docs/adaptive.md, eq. (A.7)).

    A source neuron ``w1 = t u_j`` (``t -> inf``, measure ``eps`` with ``eps t^2 = rho_j``) has the
    target conditional ``w2 = t (m u_j + delta) + O(1)``, where ``delta`` maximises
    ``F_j(delta) = -|delta|^2 / (2 s_c^2) + c2 (v . phi_inf(X2 (m u_j + delta) / sqrt(D)))^2`` (Laplace
    at large ``t``; only ``delta`` in the span of ``X2`` matters). It adds ``rho_j F_j*(v) / (2 c2)`` to
    the target potential (A.1), whose gradient is ``rho_j (a_j . v) a_j`` with
    ``a_j = phi_inf(X2 (m u_j + delta*) / sqrt(D))``: a kernel ``sum_j rho_j a_j a_j^T``.

    ``F_j`` is not concave and has several local maxima: near ``delta = 0``, others a random start
    finds, and, near the target's edge of normalisability, one far out along the critical directions
    ``e`` of the target, where ``F_j(t e) ~ c2 beta_e^2 / (1 - tau_e)`` (a pole: the image is a barrier
    at the edge). They are searched by a monotone ascent from ``delta = 0``, from the best maximisers
    found so far (``_N_KEEP`` per direction), from the exact maxima along the rays of the ``_N_RAYS``
    most critical directions of the sampler's pool ``dirs``, and, once per Newton point, from
    ``_N_EXPLORE`` random starts; the best is kept. The archive only grows the value, so ``F_j*`` is
    a lower estimate of the global maximum that improves along the path, like the estimate of ``tau``.
    Rays along which ``F_j`` is unbounded are handed back in ``rays`` (cutting planes of the same domain
    for the sampler's estimate of ``tau``).

    The line searches and ascents of all starts run in one Numba kernel (:mod:`._image_kernels`, most
    of the run time of such transfers); this class keeps the archive, the random starts, the
    log-sum-exp and the derivatives.
    """

    def __init__(self, W, rho, slopes, X2, L2, V2, m, s2c, c2):
        # (J, P2) preactivations of m u_j, one contiguous row per direction (the kernels' layout)
        self._H0 = np.ascontiguousarray((m * (X2 @ W.T) / math.sqrt(X2.shape[1])).T, dtype=np.float64)
        self.W, self.rho, self.slopes = W, rho, slopes
        self.L2 = np.ascontiguousarray(L2, dtype=np.float64)
        self.V2, self.m, self.s2c, self.c2 = V2, m, s2c, c2
        self.k = 2.0 * c2 * s2c
        self.rays = []       # unbounded directions found (span coordinates), read by _ESSDraw.tau
        self.dirs = None     # the sampler's pool of critical directions (set by _ESSDraw.tau)
        self.eps = None   # temperature of the log-sum-exp over maxima (set at the first tilted solve)
        # per source direction, the best distinct maximisers found so far: starts that keep a branch
        self._archive = [[] for _ in range(W.shape[0])]
        self._rng = np.random.default_rng(12345)   # exploration starts: a fixed stream, reproducible
        self._memo = (None, None)

    @property
    def h0(self):
        """``(P2, J)`` preactivations of ``m u_j`` on the target inputs."""
        return self._H0.T

    # -- all J ----------------------------------------------------------------------------------
    def _starts(self, v):
        """Ray maxima along the most critical pool directions: ``(e, L2 e)`` pairs."""
        if self.dirs is None or not np.any(v):
            return []
        _, E, vals = _kappa(v, self.L2, self.slopes, self.dirs)
        if E is None:
            return []
        out = []
        for i in np.argsort(vals)[::-1]:
            if vals[i] <= 0.0 or any(abs(E[i] @ o) > 0.999 for o in out):
                continue
            out.append(E[i])
            if len(out) >= _N_RAYS:
                break
        return out

    def solve(self, v, explore=0):
        """Per source direction ``j`` the branches ``(pi, A, Z, pinned)`` (weights, rows ``a``,
        maximisers ``delta`` in span coordinates, the kinks each sits on) and the smoothed maximum
        ``F_j*``; ``None`` when some ``F_j`` is unbounded (the target tilt beats its prior along a ray).

        Where two local maxima of ``F_j`` are (nearly) equally high the potential ``max F_j`` has a kink
        and the solution can sit on it, the image neurons of ``u_j`` splitting between the two. So
        ``F_j*`` is the log-sum-exp of the distinct maxima (distinct features ``a``) at a temperature
        ``eps`` far below their scale (``_EPS_REL`` of the largest maximum at the first tilted solve,
        then fixed), whose weights ``pi`` are the split; away from ties ``pi = (1, 0, ...)`` and it is
        the maximum. Each entry is ``(pi, A, Z, pinned, F_j*, eps)``.
        ``explore``: random starts per direction in addition to the deterministic ones.
        """
        key = v.tobytes()
        if self._memo[0] == key and not explore:
            return self._memo[1]
        J, P = self._H0.shape
        r = self.L2.shape[1]
        rays = self._starts(v)
        E = np.asarray(rays, dtype=np.float64).reshape(len(rays), r)
        # starts per direction: delta = 0, its archive, then `explore` random ones (the ray maxima are
        # added by the kernel); all directions' random starts in one draw, the stream of one per direction
        n0 = np.array([1 + len(arch) + explore for arch in self._archive], dtype=np.int64)
        Z0 = np.zeros((J, int(n0.max()) + len(E), r))
        state = self._rng.bit_generator.state
        noise = self._rng.standard_normal((J * explore, r))
        for j, arch in enumerate(self._archive):
            scale = max([float(np.linalg.norm(z)) for z in arch] + [math.sqrt(self.s2c)])
            Z0[j, 1:1 + len(arch)] = np.reshape(arch, (len(arch), r))
            Z0[j, 1 + len(arch):n0[j]] = scale * noise[j * explore:(j + 1) * explore]
        S = Z0.shape[1]
        F, keep = np.empty((J, S)), np.zeros((J, S), dtype=bool)
        A, Z, pin = np.empty((J, S, P)), np.empty((J, S, r)), np.zeros((J, S, P), dtype=bool)
        n_start, status, ray = np.zeros(J, dtype=np.int64), np.zeros(J, dtype=np.int64), np.empty((J, r))
        ap, am = (float(s) for s in self.slopes)
        ascend_all(np.ascontiguousarray(v, dtype=np.float64), self._H0, self.L2, Z0, n0, E, ap, am,
                   float(self.s2c), float(self.c2), float(self.k), F, A, Z, pin, keep, n_start, status, ray)
        bad = np.flatnonzero(status)
        out = []
        for j in range(J if bad.size == 0 else bad[0]):
            # distinct maxima, best first (a stable sort: equal values stay in the order of their starts)
            s = np.flatnonzero(keep[j, :n_start[j]])
            s = s[np.argsort(-F[j, s], kind="stable")]
            self._archive[j] = [Z[j, i].copy() for i in s[:_N_KEEP] if np.any(Z[j, i])]
            out.append((F[j, s], A[j, s], Z[j, s], pin[j, s]))
        if bad.size:
            # F_j unbounded: the directions after j are not searched, so their random starts were not
            # drawn (the stream stays that of a search stopped at j)
            j = bad[0]
            if status[j] == 1:
                self.rays.append(ray[j].copy())
            self._rng.bit_generator.state = state
            self._rng.standard_normal(((j + 1) * explore, r))
            self._memo = (key, None)
            return None
        top = max(f[0][0] for f in out)
        if self.eps is None and top > 0.0:
            # fixed from the first point with a tilt on: a constant temperature keeps value, gradient
            # and Hessian of one smooth function
            self.eps = _EPS_REL * top
        eps = 1e-300 if self.eps is None else self.eps
        sol = []
        for F, A, Z, pin in out:
            on = F >= F[0] - 40.0 * eps
            e = np.exp((F[on] - F[0]) / eps)
            sol.append((e / e.sum(), A[on], Z[on], pin[on], float(F[0] + eps * math.log(e.sum())), eps))
        self._memo = (key, sol)
        return sol

    def _solved(self, v, explore=0):
        sol = self.solve(v, explore)
        if sol is None:
            raise _Diverged()
        return sol

    def kernel(self, v):
        K = np.zeros((len(v), len(v)))
        for rho, (pi, A, *_) in zip(self.rho, self._solved(v)):
            K += (A.T * (rho * pi)) @ A
        return K

    def moments(self, v):
        """Gradient and Hessian of the extra potential at a new Newton point (after a search for new
        maxima)."""
        H = self.hessian(v)
        return self.kernel(v) @ v, H

    def hessian(self, v):
        """Hessian of the extra potential (docs/adaptive.md, eq. (A.7)): per branch
        ``rho_j (a a^T + a (w^T J) + p D L2 J)``, ``J = d delta*/dv`` by implicit differentiation of the
        stationarity of ``F_j`` on its cell (``w`` the gradient of ``p = v . a`` in ``delta``, projected
        off the pinned kinks), averaged with the weights ``pi``, plus the log-sum-exp's covariance of the
        branch gradients ``2 c2 rho_j Cov_pi(p a) / eps``."""
        sol = self._solved(v, explore=_N_EXPLORE)   # called once per Newton point: look for new maxima
        ap, am = self.slopes
        L2, k = self.L2, self.k
        P = len(v)
        H = np.zeros((P, P))
        for j, (pi, Aj, Zj, pj, _, eps) in enumerate(sol):
            G = np.empty((len(pi), P))
            for b, (a, z, pin) in enumerate(zip(Aj, Zj, pj)):
                pre = self._H0[j] + L2 @ z
                d = np.where(pin, 0.0, np.where(pre > 0.0, ap, am))
                p = float(v @ a)
                G[b] = p * a
                u = L2.T @ (d * v)
                Pr = np.eye(L2.shape[1])
                if pin.any():
                    Ls = L2[pin]
                    Pr = Pr - Ls.T @ np.linalg.pinv(Ls @ Ls.T) @ Ls
                w = Pr @ u
                den = 1.0 - k * (w @ w)
                Hb = np.outer(a, a)
                if den > 1e-12:
                    B = Pr @ (L2.T * d)                     # P_S L2^T D, (r, P)
                    wJ = k * ((w @ w) * a + p * (w @ B)) / den
                    Jm = k * np.outer(w, a) + k * np.outer(w, wJ) + k * p * B
                    Hb = Hb + np.outer(a, wJ) + p * (d[:, None] * (L2 @ Jm))
                H += self.rho[j] * pi[b] * Hb
            if len(pi) > 1:
                D = G - pi @ G
                H += (2.0 * self.c2 * self.rho[j] / eps) * (D.T * pi) @ D
        return 0.5 * (H + H.T)

    def energy(self, v):
        sol = self.solve(v)
        return np.inf if sol is None else float(self.rho @ np.array([b[4] for b in sol])) / (2.0 * self.c2)

    def neurons(self, v):
        """Target weight directions ``m u_j + V2 delta`` of the image neurons and their kernel weights
        ``rho_j pi`` (for test inputs)."""
        sol = self._solved(v)
        W = np.vstack([self.m * self.W[j] + b[2] @ self.V2.T for j, b in enumerate(sol)])
        rho = np.concatenate([self.rho[j] * b[0] for j, b in enumerate(sol)])
        on = rho > 1e-12 * rho.max()
        return W[on], rho[on]
