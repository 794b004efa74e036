"""Weighted samples of a single-site measure and the Gaussian conditional of preactivations
outside the sampled subspace (docs/theory.md, eq. (2.5); docs/adaptive.md).

Everything about the activation is asked of :class:`symtransfer.activations.Activation` (kinks,
linear pieces, closed-form conditional means); this module only chooses the quadrature."""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np

from ...activations import apply_elementwise
from .. import _sampling

_N_GH = 48      # 1-D Gauss-Hermite nodes for conditional means
_N_GH2 = 16     # per axis for conditional pair moments
_N_GL = 12      # Gauss-Legendre nodes per panel for activations with kinks (conditional means)
_N_GL2 = 12     # per panel and axis for pair moments, on the panels between ...
_GL_BREAKS = np.array([-8.0, 0.0, 8.0])  # ... these breaks and the kinks: < 1e-6 relative
_N_GH_CV = 48   # per axis for the Gaussian-reference moments of the control variate


def _gauss_hermite(n):
    nodes, wts = np.polynomial.hermite_e.hermegauss(n)
    return np.ascontiguousarray(nodes), np.ascontiguousarray(wts / wts.sum())


def _row_basis(X, tol=1e-10):
    """Orthonormal basis ``(D, r)`` of the row space of ``X`` and the factor ``L = X V / sqrt(D)``."""
    D = X.shape[1]
    _, S, Vt = np.linalg.svd(X, full_matrices=False)
    if S.size == 0 or S[0] == 0.0:
        return np.zeros((D, 0)), np.zeros((X.shape[0], 0))
    V = np.ascontiguousarray(Vt[S > tol * S[0]].T)
    return V, X @ V / math.sqrt(D)


def _complement_basis(V, X, tol=1e-10):
    """Orthonormal basis of ``span(V, rows of X)`` minus ``span(V)``."""
    R = X.T - V @ (V.T @ X.T)
    if R.size == 0:
        return np.zeros((V.shape[0], 0))
    U, S, _ = np.linalg.svd(R, full_matrices=False)
    scale = max(np.linalg.norm(X), 1e-300)
    return np.ascontiguousarray(U[:, S > tol * scale])


class _Kinks(NamedTuple):
    """Sorted kink locations of ``phi`` and, when ``phi`` is piecewise linear (ReLU, leaky ReLU, hard
    tanh, ...), slope ``pa[i]`` and intercept ``pb[i]`` of each piece (empty arrays otherwise): Gaussian
    expectations of such ``phi`` are closed forms (:func:`symtransfer.theory._sampling._pl_mean`)."""

    loc: np.ndarray
    pa: np.ndarray
    pb: np.ndarray


_NO_KINKS = _Kinks(np.zeros(0), np.zeros(0), np.zeros(0))


@functools.lru_cache(maxsize=64)
def _kinks(act):
    """:class:`_Kinks` of an activation, from its symbolic pieces
    (:attr:`symtransfer.activations.Activation.linear_pieces`)."""
    loc = np.sort(np.asarray(act.kinks, dtype=np.float64))
    if loc.size == 0:
        return _NO_KINKS
    pl = act.linear_pieces
    if pl is None:
        return _Kinks(loc, np.zeros(0), np.zeros(0))
    return _Kinks(np.ascontiguousarray(pl[0]), np.ascontiguousarray(pl[1]), np.ascontiguousarray(pl[2]))


def _cmean(act):
    """The closed-form conditional mean of a smooth activation, when one is derived."""
    return None if act.kinks else act.conditional_mean_njit()


def _gauss_pair_moments(phi, kinks, mA, mB, R, sA, sB, sym=False):
    """``E[phi(u_a) phi(u_b)]`` for Gaussian ``(u_a, u_b)`` with means ``mA, mB``, covariance ``R``.

    ``sym=True``: the two axes are the same inputs, only the upper triangle is integrated.
    """
    one = np.ones(1)
    mA, mB = np.ascontiguousarray(mA[None, :]), np.ascontiguousarray(mB[None, :])
    R = np.ascontiguousarray(R)
    if kinks.loc.size:
        t, wt = np.polynomial.legendre.leggauss(_N_GL2)
        return _sampling.gl_pair_split(phi, mA, mB, sA, sB, R, one, kinks.loc, _GL_BREAKS, t, wt, kinks.pa,
                                       kinks.pb, sym)
    nodes, wts = _gauss_hermite(_N_GH_CV)
    return _sampling.gh_pair(phi, mA, mB, sA, sB, R, one, nodes, wts, sym)


class _Rep:
    """Weighted samples of a single-site measure in weight space.

    Sample ``i`` carries the part ``Wk[i]`` of its hidden weight that is known; the rest is a centred
    Gaussian independent of everything sampled, with covariance ``sum_k coef_k (I - V_k V_k^T)``. A
    preactivation ``h(x) = w.x/sqrt(D)`` is therefore Gaussian given the sample, with mean
    ``Wk[i].x/sqrt(D)`` and covariance ``sum_k coef_k (x.x' - (V_k^T x).(V_k^T x'))/D`` (eq. (2.5)).
    """

    def __init__(self, Wk, w, batch, n_batches, terms, phi, kinks, u=None, q=None, cmean=None):
        self.Wk, self.w, self.batch, self.n_batches = Wk, w, batch, n_batches
        self.terms, self.phi, self.kinks = terms, phi, kinks
        # closed-form E[phi(m + s xi)] derived on the activation (None: quadrature)
        self.cmean = cmean
        self.D = Wk.shape[1]
        # control variate: estimates are sum_i (w_i - u_i) g_i + E_q[g] with q = N(Vmu, V C V^T) on
        # the sampled coordinates and the prior s2 elsewhere (q = (V mu, V, C, s2))
        self.u = np.zeros_like(w) if u is None else u
        self.q = q
        self.weff = self.w - self.u

    def qkernel(self, XA, XB):
        """``E_q[phi(h(x)) phi(h(x'))]`` under the Gaussian reference (0 without control variate)."""
        if self.q is None:
            return 0.0
        muw, V, C, s2 = self.q
        D = self.D
        PA, PB = XA @ V, XB @ V
        R = (PA @ C @ PB.T + s2 * (XA @ XB.T - PA @ PB.T)) / D
        vA = np.sum((PA @ C) * PA, axis=1) / D + s2 * (np.sum(XA * XA, axis=1) - np.sum(PA * PA, axis=1)) / D
        vB = np.sum((PB @ C) * PB, axis=1) / D + s2 * (np.sum(XB * XB, axis=1) - np.sum(PB * PB, axis=1)) / D
        sA, sB = np.sqrt(np.maximum(vA, 0.0)), np.sqrt(np.maximum(vB, 0.0))
        return _gauss_pair_moments(self.phi, self.kinks, XA @ muw / math.sqrt(D), XB @ muw / math.sqrt(D),
                                   R, sA, sB, sym=XB is XA)

    def means(self, X):
        return np.ascontiguousarray(self.Wk @ X.T / math.sqrt(self.D))

    def resid_cov(self, XA, XB):
        out = np.zeros((XA.shape[0], XB.shape[0]))
        for coef, V in self.terms:
            if coef != 0.0:
                out += coef * (XA @ XB.T - (XA @ V) @ (V.T @ XB.T)) / self.D
        return out

    def resid_sd(self, X):
        var = np.zeros(X.shape[0])
        for coef, V in self.terms:
            if coef != 0.0:
                var += coef * (np.sum(X * X, axis=1) - np.sum((X @ V) ** 2, axis=1)) / self.D
        # below round-off the input lies in the known subspace
        scale = np.sum(X * X, axis=1) / self.D * max(sum(abs(c) for c, _ in self.terms), 1e-300)
        var[var <= 1e-12 * scale] = 0.0
        return np.sqrt(var)

    def features(self, X):
        """``E[phi(h(x)) | sample]``, shape ``(n, len(X))``."""
        sd = self.resid_sd(X)
        M = self.means(X)
        if not np.any(sd > 0.0):
            return apply_elementwise(self.phi, M)
        if self.cmean is not None:
            return _sampling.closed_mean(self.cmean, M, sd)
        if self.kinks.loc.size:
            t, w = np.polynomial.legendre.leggauss(_N_GL)
            return _sampling.gl_mean_split(self.phi, M, sd, self.kinks.loc, _GL_BREAKS, t, w, self.kinks.pa,
                                           self.kinks.pb)
        nodes, wts = _gauss_hermite(_N_GH)
        return _sampling.gh_mean(self.phi, M, sd, nodes, wts)

    def kernel(self, XA, XB):
        out = self._kernel(XA, XB)
        # the feature path (F^T W F) is symmetric only up to round-off
        return 0.5 * (out + out.T) if XB is XA else out

    def _kernel(self, XA, XB):
        R = self.resid_cov(XA, XB)
        sA, sB = self.resid_sd(XA), self.resid_sd(XB)
        tiny = 1e-12 * max(float(np.max(sA, initial=0.0)) * float(np.max(sB, initial=0.0)), 1e-300)
        if np.all(np.abs(R) <= tiny):
            # conditionally independent preactivations: E[phi phi'] = E[phi] E[phi']
            FA = self.features(XA)
            FB = FA if XB is XA else self.features(XB)
            return FA.T @ (self.weff[:, None] * FB) + self.qkernel(XA, XB)
        if self.kinks.loc.size:
            t, wt = np.polynomial.legendre.leggauss(_N_GL2)
            return _sampling.gl_pair_split(self.phi, self.means(XA), self.means(XB), sA, sB, R, self.weff,
                                           self.kinks.loc, _GL_BREAKS, t, wt, self.kinks.pa, self.kinks.pb,
                                           XB is XA) + self.qkernel(XA, XB)
        nodes, wts = _gauss_hermite(_N_GH2)
        return _sampling.gh_pair(self.phi, self.means(XA), self.means(XB), sA, sB, R,
                                 self.weff, nodes, wts, XB is XA) + self.qkernel(XA, XB)

    def extend(self, X2, s2, seed):
        """The same measure with the known subspace enlarged by the row space of ``X2``.

        Only valid when every residual term has the same coefficient ``s2`` over the same basis
        (a one-task measure): the new coordinates are prior draws ``N(0, s2)``.
        """
        (coef, V), = self.terms
        Vn = _complement_basis(V, X2)
        rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
        Wk = self.Wk + math.sqrt(s2) * rng.standard_normal((self.Wk.shape[0], Vn.shape[1])) @ Vn.T
        return _Rep(Wk, self.w, self.batch, self.n_batches, [(coef, np.hstack([V, Vn]))], self.phi,
                    self.kinks, self.u, self.q, self.cmean)
