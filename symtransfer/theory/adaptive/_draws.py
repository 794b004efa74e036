"""Elliptical-slice draws of the tilted single-site measure with common random numbers, the adapted
Gaussian reference, and the normalisability index tau(v) (docs/adaptive.md, sections 1-2, eq. (A.3))."""

from __future__ import annotations

import functools
import logging
import math
import os

import numpy as np

from ...activations import apply_elementwise
from .. import _sampling
from ._linalg import _gram
from ._representation import _NO_KINKS, _gauss_pair_moments
from ._samples import _SampleSet

_KISH_IS = 0.3  # i.i.d. draws from the reference are used when their weights keep this fraction
_REF_INFLATE = 1.1   # a reference wider than the target keeps the slice likelihood decaying in the tails
_DIVERGED_SQ = 6.0   # mean |zeta|^2 / r above this: the chains run away (tilt not normalisable)
_POOL = 64           # directions kept for the normalisability estimate; at the edge they are the
# SYMTRANSFER_DEBUG=1: per-iteration solver trace, at DEBUG level of this logger (formatting it costs
# time, so it is built only when asked for)
_DEBUG = bool(os.environ.get("SYMTRANSFER_DEBUG"))
_log = logging.getLogger("symtransfer.theory.adaptive")


class _Diverged(Exception):
    pass


@functools.lru_cache(maxsize=64)
def _asymptotic_slopes(act):
    """Slopes ``(a+, a-)`` of ``phi(x) ~ a+- x`` at ``x -> +-inf`` (zero for bounded ``phi``), derived
    once on the activation (:attr:`symtransfer.activations.Activation.asymptotic_slopes`).

    The tilt of eq. (2.4) along a ray ``z = t e`` grows like ``t^2 (v . phi_inf(L e))^2`` with
    ``phi_inf(u) = a+ max(u, 0) + a- min(u, 0)``; this decides normalisability (eq. (2.6)).
    """
    ap, am = act.asymptotic_slopes
    # superlinear phi reach the sampler only at gamma = 0, where no tilt (and no edge) exists
    return (ap, am) if math.isfinite(ap) and math.isfinite(am) else (0.0, 0.0)


def _kappa(v, L, slopes, starts, n_ascent=20):
    """Lower estimate of ``kappa(v) = max_{|e|=1} (v . phi_inf(L e))^2`` by multistart ascent.

    For a fixed sign pattern of ``L e`` the objective is linear in ``e`` and its maximiser on the
    sphere is the normalised gradient; alternating pattern and maximiser is run from every start and
    the best value seen is returned with, per start, the best direction and value. The measure is normalisable iff
    ``2 c s^2 kappa(v) < 1`` (docs/adaptive.md, eq. (A.3)).
    """
    ap, am = slopes
    if (ap == 0.0 and am == 0.0) or L.shape[1] == 0 or not np.any(v):
        return 0.0, None, None
    E = starts / np.maximum(np.linalg.norm(starts, axis=1, keepdims=True), 1e-300)
    bestE, bestf = E.copy(), np.zeros(E.shape[0])
    for _ in range(n_ascent):
        Hs = E @ L.T
        d = np.where(Hs > 0.0, ap, am)
        f = (Hs * d) @ v
        better = f * f > bestf
        bestf = np.where(better, f * f, bestf)
        bestE[better] = E[better]
        grad = np.sign(f)[:, None] * ((d * v) @ L)
        nrm = np.linalg.norm(grad, axis=1, keepdims=True)
        E = np.where(nrm > 0.0, grad / np.maximum(nrm, 1e-300), E)
    return float(bestf.max()), bestE, bestf


class _ESSDraw:
    """Draws the tilted measure with common random numbers; adapts the Gaussian reference.

    Chain ``k`` has prior ``N(mu_prior[k], s2 I)`` on the coordinates ``z`` (``h = L z``). With
    ``quenched=False`` all chains sample one measure; with ``quenched=True`` chain ``k`` is the
    conditional measure of group ``k`` and the reference mean is regressed on the prior mean.
    """

    def __init__(self, L, s2, c, phi, slopes, mu_prior, n_burn, n_keep, quenched, seed, kinks=None):
        self.L = np.ascontiguousarray(L)
        self.s2, self.c, self.phi = s2, c, phi
        self.mu_prior = np.ascontiguousarray(mu_prior)
        C, r = mu_prior.shape
        self.C, self.r = C, r
        self.n_burn, self.n_keep, self.quenched = n_burn, n_keep, quenched
        rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
        self.normals = rng.standard_normal((C, n_burn + n_keep, r))
        self.zeta0 = rng.standard_normal((C, r))
        self.seeds = rng.integers(1, 2**62, size=C).astype(np.uint64)
        self.A = math.sqrt(s2) * np.eye(r)
        self.mu_ref = self.mu_prior.copy()
        self.z_last = None
        self.kinks = _NO_KINKS if kinks is None else kinks
        # i.i.d. reference draws for importance sampling with a control variate (one task only)
        self.is_normals = None if quenched else rng.standard_normal((C * n_keep, r))
        self.used_is = False
        self.slopes = slopes
        self.has_edge = c > 0.0 and (slopes[0] != 0.0 or slopes[1] != 0.0)
        self.pool = rng.standard_normal((_POOL, r))  # candidate directions of steepest tilt growth
        self.pool_cap = _POOL
        self.extra = None   # a _SourceCondensate, for transfer from a condensed source
        self._full = (n_burn, n_keep)
        self.seed = seed
        self.v_good = None   # the last point where a draw succeeded (restarts of the solver begin here)

    def grow(self, n_keep):
        """Keep ``n_keep`` (more) states per chain from now on, the burn-in unchanged.

        The common random numbers of the smaller set stay a prefix of the new one, so a solve restarted
        on the larger set sees the same directions plus fresh ones (the solver's recovery when Monte Carlo
        noise hides descent, docs/adaptive.md section 6).
        """
        n_burn, full = self._full
        if n_keep <= full:
            return
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 5, n_keep]))
        extra = rng.standard_normal((self.C, n_keep - full, self.r))
        self.normals = np.ascontiguousarray(np.concatenate([self.normals, extra], axis=1))
        if self.is_normals is not None:
            more = rng.standard_normal((self.C * (n_keep - full), self.r))
            self.is_normals = np.concatenate([self.is_normals, more])
        self._full = (n_burn, n_keep)
        self.n_burn, self.n_keep = n_burn, n_keep

    def set_keep(self, n_keep):
        """Keep ``n_keep`` states per chain from now on (burn-in scaled alike; the common random
        numbers are prefixes of the full set, so every level sees the same directions)."""
        n_burn, full = self._full
        if not 1 <= n_keep <= full:
            raise ValueError(f"n_keep must lie in [1, {full}], got {n_keep}")
        self.n_keep = n_keep
        self.n_burn = max(n_burn * n_keep // full, 1)

    def tau(self, v, extra=None):
        """``2 c s^2 kappa(v)``: the tilted measure is normalisable iff this is < 1 (eq. (A.3)).

        ``kappa`` is estimated by ascent from a pool of directions that keeps the best local maxima
        found so far (including those along which earlier chains escaped), so the estimate only
        improves along the solver path.
        """
        if self.c == 0.0:
            return 0.0
        starts = self.pool if extra is None else np.vstack([self.pool, extra])
        if self.extra is not None and self.extra.rays:
            # rays along which the image of a source condensate (A.7) found the target tilt beating its
            # prior: cutting planes of the same domain that the chains may not have found
            starts = np.vstack([starts, np.asarray(self.extra.rays)])
            self.extra.rays.clear()
        k, E, vals = _kappa(v, self.L, self.slopes, starts)
        if E is not None:
            order = np.argsort(vals)[::-1]
            keep = [E[order[0]]]
            for i in order[1:]:
                if len(keep) >= self.pool_cap:
                    break
                if np.max(np.abs(np.asarray(keep) @ E[i])) < 0.999:
                    keep.append(E[i])
            self.pool = np.asarray(keep)
            if self.extra is not None:
                self.extra.dirs = self.pool   # where the image looks for its far maxima
        return 2.0 * self.c * self.s2 * k

    def critical(self, v, tau_min):
        """Directions of the pool with ``2 c s^2 (v . a(e))^2 >= tau_min`` and their ``a(e) = phi_inf(L e)``.

        Always at least the most critical direction, so the constrained step has a constraint.
        """
        self.tau(v)  # refresh the pool at v
        E = self.pool
        Hs = E @ self.L.T
        F = Hs * np.where(Hs > 0.0, self.slopes[0], self.slopes[1])
        t = 2.0 * self.c * self.s2 * (F @ v) ** 2
        keep = t >= min(tau_min, float(t.max()))
        return E[keep], F[keep]

    def __call__(self, v):
        Z, s = self._ess(v)
        self.v_good = np.array(v, dtype=np.float64)
        if self.is_normals is not None and self.r > 0:
            ss = self._importance(v)
            if ss is not None:
                self.used_is = True
                return ss
        self.used_is = False
        Z = Z.reshape(-1, self.r)
        return _SampleSet(self._phi_of(Z), Z, self.C, self.quenched, v)

    def _phi_of(self, Z):
        """``phi(L z)`` for the rows of ``Z``: the samples' activations on the training inputs."""
        Hz = Z @ self.L.T
        return apply_elementwise(self.phi, Hz, out=Hz)

    def _ess(self, v):
        """Advance the chains at ``v`` from their last states; adapt the reference to the kept states.

        Returns the kept ``Z`` and their ``s = v . phi(L z)``, shapes ``(C, n_keep, r)`` and
        ``(C, n_keep)``; raises :class:`_Diverged` when the chains run away.
        """
        C, r = self.C, self.r
        A = np.ascontiguousarray(self.A)
        B = np.ascontiguousarray(self.L @ A)
        mu_ref = np.ascontiguousarray(self.mu_ref)
        href = np.ascontiguousarray(mu_ref @ self.L.T)
        dref = np.ascontiguousarray(mu_ref - self.mu_prior)
        if self.z_last is None:
            zeta0 = self.zeta0
        else:
            # warm start from the last states: a fresh start from the reference would let a reference
            # wider than the target feed back into the next fit through slow mixing
            zeta0 = np.linalg.solve(A, (self.z_last - mu_ref).T).T
        zeta = np.empty((C, self.n_keep, r))
        s = np.empty((C, self.n_keep))
        sq = np.empty(C)
        normals = np.ascontiguousarray(self.normals[:, :self.n_burn + self.n_keep])
        _sampling.ess_sample(self.phi, B, A, href, dref, 1.0 / self.s2, np.ascontiguousarray(v), self.c,
                             np.ascontiguousarray(zeta0), normals, self.seeds, self.n_burn, self.n_keep,
                             zeta, s, sq)
        if not (np.all(np.isfinite(s)) and np.all(np.isfinite(zeta))):
            raise _Diverged()
        Z = mu_ref[:, None, :] + zeta @ A.T
        # escaping chains point along the directions where the tilt beats the prior: they seed the
        # pool of the normalisability estimate even when this draw is rejected
        rel = (Z - self.mu_prior[:, None, :]).reshape(-1, r)
        s_abs = np.abs(s.reshape(-1)) / np.maximum(np.linalg.norm(rel, axis=1), 1e-300)
        top = rel[np.argsort(s_abs)[-128:]]
        # runaway chains signal a non-normalisable tilt only where one can exist: a bounded
        # activation's tilt is bounded, and wide chains there mean a too-narrow reference, not divergence
        tau_top = self.tau(v, extra=top)
        if tau_top >= 1.0 or (self.has_edge and np.mean(sq) > _DIVERGED_SQ * max(r, 1)):
            if _DEBUG:
                _log.debug(f"  draw rejected: tau {tau_top:.5f}, mean |zeta|^2 / r {np.mean(sq) / max(r, 1):.3g}")
            raise _Diverged()
        self.z_last = np.ascontiguousarray(Z[:, -1, :])
        self._adapt(Z)
        return Z, s

    def _importance(self, v):
        """I.i.d. draws from the just-fitted Gaussian reference q, weighted by p/q, with the control
        variate ``E_q[psi psi^T]`` computed by quadrature (docs/adaptive.md, eq. (A.5)).

        Returns ``None`` when the weights are too uneven (the reference misses the target's shape).
        """
        mu, A = self.mu_ref[0], self.A
        zeta = self.is_normals[:self.C * self.n_keep]
        Z = mu + zeta @ A.T
        psi = self._phi_of(Z)
        sv = psi @ v
        logw = -0.5 * np.sum(Z * Z, axis=1) / self.s2 + self.c * sv * sv + 0.5 * np.sum(zeta * zeta, axis=1)
        e = np.exp(logw - logw.max())
        if not (np.all(np.isfinite(e)) and e.sum() ** 2 / np.sum(e * e) >= _KISH_IS * len(e)):
            return None
        B = self.L @ A
        R = B @ B.T
        sd = np.sqrt(np.maximum(np.diag(R), 0.0))
        m = self.L @ mu
        Q = _gauss_pair_moments(self.phi, self.kinks, m, m, R, sd, sd, sym=True)
        cv = Q - _gram(psi, np.full(len(psi), 1.0 / len(psi)))
        return _SampleSet(psi, Z, self.C, False, v, logw0=logw, cv=cv, q=(mu.copy(), A @ A.T))

    def _adapt(self, Z):
        C, n, r = Z.shape
        if r == 0:
            return
        if not self.quenched:
            flat = Z.reshape(-1, r)
            mu = flat.mean(axis=0)
            cov = np.cov(flat, rowvar=False).reshape(r, r)
            self.mu_ref = np.tile(mu, (C, 1))
        else:
            means = Z.mean(axis=1)
            within = Z - means[:, None, :]
            cov = np.einsum("cni,cnj->ij", within, within) / max(C * (n - 1), 1)
            Xd = np.hstack([self.mu_prior, np.ones((C, 1))])
            coef = np.linalg.lstsq(Xd, means, rcond=None)[0]
            self.mu_ref = Xd @ coef
        cov = _REF_INFLATE * 0.5 * (cov + cov.T) + 1e-10 * self.s2 * np.eye(r)
        try:
            self.A = np.linalg.cholesky(cov)
        except np.linalg.LinAlgError:
            self.A = math.sqrt(self.s2) * np.eye(r)
