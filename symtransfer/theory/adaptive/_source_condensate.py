"""Target-side image of a source condensate in jointly rich transfer (docs/adaptive.md, eq. (A.7))."""

from __future__ import annotations

import math

import numpy as np

from ._draws import _Diverged, _kappa

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
    """

    def __init__(self, W, rho, slopes, X2, L2, V2, m, s2c, c2):
        self.h0 = m * (X2 @ W.T) / math.sqrt(X2.shape[1])   # (P2, J) preactivations of m u_j
        self.W, self.rho, self.slopes = W, rho, slopes
        self.L2, self.V2, self.m, self.s2c, self.c2 = L2, V2, m, s2c, c2
        self.k = 2.0 * c2 * s2c
        self.rays = []       # unbounded directions found (span coordinates), read by _ESSDraw.tau
        self.dirs = None     # the sampler's pool of critical directions (set by _ESSDraw.tau)
        self.eps = None   # temperature of the log-sum-exp over maxima (set at the first tilted solve)
        # per source direction, the best distinct maximisers found so far: starts that keep a branch
        self._archive = [[] for _ in range(W.shape[0])]
        self._rng = np.random.default_rng(12345)   # exploration starts: a fixed stream, reproducible
        self._memo = (None, None)

    # -- one F_j --------------------------------------------------------------------------------
    def _value(self, v, h0, z):
        pre = h0 + self.L2 @ z
        a = pre * np.where(pre > 0.0, self.slopes[0], self.slopes[1])
        return -(z @ z) / (2.0 * self.s2c) + self.c2 * (v @ a) ** 2

    def _line_max(self, v, h0, z, e, T):
        """``argmax_{0 <= t <= T} F_j(z + t e)`` and its value, exactly (``T`` may be ``inf``): along
        the line ``F_j`` is a quadratic between the kinks ``t = -pre_i / (L2 e)_i``. ``None`` when
        ``T = inf`` and ``F_j`` grows without bound along the ray."""
        ap, am = self.slopes
        q0, q1 = h0 + self.L2 @ z, self.L2 @ e
        with np.errstate(divide="ignore", invalid="ignore"):
            tb = -q0 / q1
        cut = (q1 != 0.0) & (tb > 0.0) & (tb < T)
        idx = np.flatnonzero(cut)
        idx = idx[np.argsort(tb[idx])]
        pos = np.where(q0 != 0.0, q0 > 0.0, q1 > 0.0)    # side of each kink just after t = 0
        d = np.where(pos, ap, am)
        flip = np.where(pos[idx], am - ap, ap - am) * v[idx]
        al = float((v * d) @ q0) + np.concatenate([[0.0], np.cumsum(flip * q0[idx])])
        be = float((v * d) @ q1) + np.concatenate([[0.0], np.cumsum(flip * q1[idx])])
        lo = np.concatenate([[0.0], tb[idx]])
        hi = np.concatenate([tb[idx], [T]])
        ee, ze = e @ e, z @ e
        A2 = self.c2 * be * be - ee / (2.0 * self.s2c)
        A1 = 2.0 * self.c2 * al * be - ze / self.s2c
        A0 = self.c2 * al * al - (z @ z) / (2.0 * self.s2c)
        if math.isinf(T) and A2[-1] >= -1e-12 * ee / (2.0 * self.s2c):
            # tau_e >= 1 - 1e-12 along the ray: its maximum (a pole ~ 1 / (1 - tau_e)) is out of reach
            return None
        with np.errstate(divide="ignore", invalid="ignore"):
            ts = np.where(A2 < 0.0, -A1 / (2.0 * A2), lo)
        ts = np.clip(ts, lo, hi)
        cand = np.concatenate([lo, ts, hi[:-1] if math.isinf(T) else hi])
        c2 = np.concatenate([A2, A2, A2[:-1] if math.isinf(T) else A2])
        c1 = np.concatenate([A1, A1, A1[:-1] if math.isinf(T) else A1])
        c0 = np.concatenate([A0, A0, A0[:-1] if math.isinf(T) else A0])
        val = (c2 * cand + c1) * cand + c0
        i = int(np.argmax(val))
        return float(cand[i]), float(val[i])

    def _ascend(self, v, h0, z0):
        """Monotone ascent of ``F_j`` from ``z0``: ``(F*, a, delta*, pinned)`` or ``None``
        when ``F_j`` is unbounded (the ray is recorded in ``rays``).

        Each step goes towards the maximiser of the quadratic that ``F_j`` is on the current cell of
        sign patterns (on the kink hyperplanes pinned so far), by an exact line search, so ``F_j``
        never decreases. A step blocked by a concave kink (where ``v_i (a+ - a-) (v . a) < 0``: a
        ridge) pins it; a pinned kink is released when leaving it increases ``F_j``.
        """
        ap, am = self.slopes
        L2, k, s2c = self.L2, self.k, self.s2c
        z = z0.copy()
        val = self._value(v, h0, z)
        pinned = np.zeros(len(v), dtype=bool)
        tol = 1e-12
        for _ in range(200):
            pre = h0 + L2 @ z
            d = np.where(pre > 0.0, ap, am)
            dv = np.where(pinned, 0.0, d * v)
            u = L2.T @ dv
            beta = dv @ h0
            w = u
            if pinned.any():
                Ls = L2[pinned]
                w = u - Ls.T @ np.linalg.lstsq(Ls @ Ls.T, Ls @ u, rcond=None)[0]
            p = float(v @ (pre * d))
            if 1.0 - k * (w @ w) <= 0.0:
                # the cell's quadratic is unbounded along w: go out along it as far as F_j rises
                e = (1.0 if p >= 0.0 else -1.0) * w
                out = self._line_max(v, h0, z, e, math.inf)
                if out is None:
                    self.rays.append(e / max(float(np.linalg.norm(e)), 1e-300))
                    return None
                target_reached = False
            else:
                if pinned.any():
                    Lu = Ls @ u
                    M = np.block([[np.array([[1.0 - k * (u @ u)]]), -s2c * Lu[None, :]],
                                  [k * Lu[:, None], s2c * Ls @ Ls.T]])
                    x = np.linalg.lstsq(M, np.concatenate([[beta], -h0[pinned]]), rcond=None)[0]
                    target = k * x[0] * u + s2c * Ls.T @ x[1:]
                else:
                    target = (k * beta / (1.0 - k * (u @ u))) * u
                e = target - z
                out = self._line_max(v, h0, z, e, 1.0)
                target_reached = out[0] >= 1.0 - 1e-12
            t, new = out
            if new > val + tol * max(abs(val), 1.0):
                z, val = z + t * e, new
                if z @ z > 1e16 * s2c:
                    # rising without bound through changing cells: F_j is unbounded for all purposes
                    ez = z / math.sqrt(z @ z)
                    Le = L2 @ ez
                    if k * (v @ np.where(Le > 0.0, ap * Le, am * Le)) ** 2 >= 1.0 - 1e-6:
                        self.rays.append(ez)
                    return None
                if not target_reached:
                    # stopped at a kink: pin it if it is a ridge
                    pre = h0 + L2 @ z
                    near = ~pinned & (np.abs(pre) <= 1e-9 * max(float(np.abs(pre).max()), 1.0))
                    ridge = near & (v * (ap - am) * float(v @ (pre * np.where(pre > 0.0, ap, am))) < 0.0)
                    pinned |= ridge
                continue
            # no rise towards the cell's maximiser: z is its maximiser, or a ridge blocks at once
            pre = h0 + L2 @ z
            near = ~pinned & (np.abs(pre) <= 1e-9 * max(float(np.abs(pre).max()), 1.0))
            ridge = near & (v * (ap - am) * p < 0.0)
            if ridge.any():
                pinned |= ridge
                continue
            if pinned.any():
                # release the pins one at a time if a step off the ridge (either side) rises
                released = False
                for i in np.flatnonzero(pinned):
                    n = L2[i]
                    for sgn in (1.0, -1.0):
                        o = self._line_max(v, h0, z, sgn * n, 1e-3 * max(float(np.linalg.norm(z)), 1.0))
                        if o is not None and o[1] > val + tol * max(abs(val), 1.0):
                            z, val = z + o[0] * sgn * n, o[1]
                            pinned[i] = False
                            released = True
                            break
                    if released:
                        break
                if released:
                    continue
            break
        pre = h0 + L2 @ z
        a = pre * np.where(pre > 0.0, ap, am)
        return val, a, z, pinned

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
        r = self.L2.shape[1]
        rays = self._starts(v)
        out = []
        for j in range(self.h0.shape[1]):
            h0 = self.h0[:, j]
            starts = [np.zeros(r)] + self._archive[j]
            scale = max([float(np.linalg.norm(z)) for z in self._archive[j]] + [math.sqrt(self.s2c)])
            starts += list(scale * self._rng.standard_normal((explore, r)))
            for e in rays:
                o = self._line_max(v, h0, np.zeros(r), e, math.inf)
                if o is None:
                    self.rays.append(e)
                    self._memo = (key, None)
                    return None
                if o[0] > 0.0:
                    starts.append(o[0] * e)
            found = []
            for z0 in starts:
                o = self._ascend(v, h0, z0)
                if o is None:
                    self._memo = (key, None)
                    return None
                # maxima with the same features a (a flat ridge of F_j) are one branch of the potential
                if all(np.linalg.norm(o[1] - q[1]) > 1e-3 * max(np.linalg.norm(q[1]), 1e-12) for q in found):
                    found.append(o)
            found.sort(key=lambda o: -o[0])
            self._archive[j] = [o[2] for o in found[:_N_KEEP] if np.any(o[2])]
            out.append(found)
        top = max(f[0][0] for f in out)
        if self.eps is None and top > 0.0:
            # fixed from the first point with a tilt on: a constant temperature keeps value, gradient
            # and Hessian of one smooth function
            self.eps = _EPS_REL * top
        eps = 1e-300 if self.eps is None else self.eps
        sol = []
        for found in out:
            F = np.array([o[0] for o in found])
            on = F >= F[0] - 40.0 * eps
            F = F[on]
            e = np.exp((F - F[0]) / eps)
            sol.append((e / e.sum(), np.array([o[1] for o, k in zip(found, on) if k]),
                        np.array([o[2] for o, k in zip(found, on) if k]),
                        np.array([o[3] for o, k in zip(found, on) if k]),
                        float(F[0] + eps * math.log(e.sum())), eps))
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
                pre = self.h0[:, j] + L2 @ z
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
