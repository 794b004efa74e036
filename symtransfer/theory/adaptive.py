"""Equilibrium adaptive-kernel theory for any activation (docs/theory.md, sections 2, 3 and 5).

:class:`AdaptiveKernel` solves the saddle point (2.3)-(2.4) of the mean-field action on a finite data
set and predicts with kernel ridge regression in the adapted kernel (2.5); :meth:`AdaptiveKernel.transfer`
solves the quenched target problem (3.1)-(3.3). The numerical method is described in docs/adaptive.md:

* The saddle point is the unique minimiser of a convex function of the dual vector ``v`` (adaptive
  eq. (A.1)); it is found by damped Newton steps whose gradient and Hessian are moments of the
  single-site measure. The plain fixed-point iteration ``v <- (Phi(v) + lambda)^-1 y`` is that Newton
  step with the (positive) covariance part of the Hessian dropped, which is why it overshoots out of
  the normalisable region for linearly growing activations. The first iterations run on a quarter
  of the samples (coarse to fine).
* For ReLU-type activations the minimiser can lie on the edge of the normalisable region; it is then
  found by constrained Newton steps, and the constraint forces become the kernel of a condensate of
  runaway neurons (eq. (A.6)), which transfer carries to the target (eq. (A.7)).
* Moments are Monte Carlo averages over the single-site measure, sampled by elliptical slice sampling
  in the weight coordinates of the span of the training inputs (Numba, parallel over chains, see
  :mod:`symtransfer.theory._sampling`). Between draws the same samples are importance-reweighted to
  the current ``v``: the map being solved is then a deterministic function (common random numbers),
  so the residual can be driven far below the Monte Carlo error, which is reported separately.
* For one task, each draw also yields i.i.d. samples of the Gaussian fitted to the measure; with
  importance weights and the Gaussian's own moments as a control variate (adaptive eq. (A.5)) the
  Monte Carlo error drops about tenfold (exact for linear ``phi``).
* Preactivations on inputs outside the sampled subspace are Gaussian given the sample; they enter by
  quadrature (Gauss-Hermite, or Gauss-Legendre panels split at kinks, with closed-form inner integrals
  for piecewise-linear ``phi``), and the lazy kernel
  (``gamma = 0``) by the closed-form dual kernels of
  :meth:`symtransfer.activations.Activation.dual_kernel`.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from typing import NamedTuple

import numpy as np
from scipy.optimize import nnls
from threadpoolctl import ThreadpoolController

from .._validation import check_inputs, check_int, check_real, check_Xy
from ..activations import apply_elementwise, get_activation
from ..errors import ConvergenceError, EdgeOfNormalisabilityError, NoSaddlePointError
from . import _sampling

__all__ = ["AdaptiveKernel", "AdaptiveTransfer"]

_N_GH = 48      # 1-D Gauss-Hermite nodes for conditional means
_N_GH2 = 16     # per axis for conditional pair moments
_N_GL = 12      # Gauss-Legendre nodes per panel for activations with kinks (conditional means)
_N_GL2 = 12     # per panel and axis for pair moments, on the panels between ...
_GL_BREAKS = np.array([-8.0, 0.0, 8.0])  # ... these breaks and the kinks: < 1e-6 relative
_N_GH_CV = 48   # per axis for the Gaussian-reference moments of the control variate
_KISH_IS = 0.3  # i.i.d. draws from the reference are used when their weights keep this fraction
_REF_INFLATE = 1.1   # a reference wider than the target keeps the slice likelihood decaying in the tails
_KISH_TRUST = 0.3    # reweighted estimates are trusted down to this effective-sample fraction
_KISH_REDRAW = 0.7   # below this, draw fresh samples at the current v
_KISH_FINAL = 0.9    # the answer is accepted only from samples drawn this close to the solution
_FULL_STEP = 0.25   # squared Newton decrement below which full steps are taken
_DIVERGED_SQ = 6.0   # mean |zeta|^2 / r above this: the chains run away (tilt not normalisable)
_TAU_EDGE = 0.995    # 2 c s^2 kappa(v) this close to 1 counts as pressing against the edge (A.3)
_POOL = 64           # directions kept for the normalisability estimate; at the edge they are the
_POOL_EDGE = 256     # cutting planes of the domain, and more are kept
_TAU_CONDENSE = 0.98   # level of the edge constraint tau <= 1 in the condensate solve (section 2)
_COARSE = 4          # the coarse stage of the solve keeps 1/_COARSE of the samples per chain ...
_COARSE_MIN_KEEP = 16  # ... when that leaves at least this many
_COARSE_TOL = 1e-2   # and stops here: its answer is only a starting point for the full sample set
_DEBUG = bool(os.environ.get("SYMTRANSFER_DEBUG"))  # per-iteration solver trace on stdout


# BLAS threads outside the solver; large Gram matrices get them back (see _one_blas_thread)
_blas_threads = 1
_BIG_GRAM = 2**27   # n P^2 above which a Gram matrix is worth the BLAS thread pool
_BLOCK = 2048       # rows per block of weighted sums over samples (_wsum)
_controller = None  # scanning the loaded libraries costs ~4 ms: once per process


def _blas():
    global _controller
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller


def _one_blas_thread(method):
    """Run ``method`` with single-threaded BLAS, except for large Gram matrices (:func:`_gram`).

    The solver alternates parallel Numba kernels with many small BLAS calls (P x P solves, the
    normalisability ascent). When other work holds a core, every multi-threaded small call waits for
    all its threads to be scheduled (a 200 x 200 solve took 76 ms instead of < 1 ms); the large Gram
    matrices still gain from threads. Measured, relu, digits P = 200, fit + predict, 8192 / 32768
    samples: idle machine 2.3 / 7.1 s (all threaded 2.0 / 6.7, all single 2.7 / 9.8); one core busy
    with another process 3.6 / 10.7 s (all threaded 4.3 / 13.6).
    """
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        global _blas_threads
        info = [i["num_threads"] for i in _blas().info() if i["user_api"] == "blas"]
        with _blas().limit(limits=1, user_api="blas"):
            outer, _blas_threads = _blas_threads, max(info, default=1)
            try:
                return method(*args, **kwargs)
            finally:
                _blas_threads = outer
    return wrapper


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


class _SampleSet:
    """Samples of ``phi(h)`` on the training inputs, drawn at ``v0``, grouped for quenched averages."""

    def __init__(self, psi, Z, n_groups, quenched, v0, logw0=None, cv=None, q=None):
        self.psi, self.Z = psi, Z
        self.G = n_groups
        self.quenched = quenched
        self.v0 = v0.copy()
        self.s0 = psi @ v0
        # i.i.d. draws from a Gaussian reference q carry importance weights p/q (logw0) and the
        # control variate cv = E_q[psi psi^T] - mean(psi psi^T) (docs/adaptive.md, eq. (A.5))
        self.logw0 = np.zeros(len(psi)) if logw0 is None else logw0
        self.cv = cv
        self.q = q
        self.kish0 = 1.0
        self.kish0 = _reweight(self, v0, 0.0)[3]


def _threaded(n_flops):
    """The BLAS thread pool for a product of ``n_flops`` multiply-adds, if large enough, else a no-op."""
    if _blas_threads > 1 and n_flops >= _BIG_GRAM:
        return _blas().limit(limits=_blas_threads, user_api="blas")
    return contextlib.nullcontext()


def _gram(psi, w):
    """``sum_i w_i psi_i psi_i^T`` (weights may be negative: control-variate batch estimates)."""
    return _wsum(psi, w, psi)


def _group_sums(w, M, G):
    """``sum_i w_i M_i`` within each of ``G`` equal consecutive groups of rows, shape ``(G, M.shape[1])``
    (one batched product: no weighted copy of ``M``)."""
    n, k = M.shape
    return (w.reshape(G, 1, n // G) @ M.reshape(G, n // G, k))[:, 0, :]


def _wsum(A, w, B):
    """``A^T diag(w) B`` over blocks of rows.

    A weighted copy of a whole sample set is as large as the set, and on first touch its pages cost
    more than the product (measured: 0.25 s for 32768 x 200, the product 0.03 s); blocks of
    ``_BLOCK`` rows stay in cache and are recycled. With ``A is B`` and ``w >= 0`` each block is a
    symmetric rank-k update ``C^T C`` with ``C = sqrt(w) A`` (half the flops of a general product).
    Large products get the BLAS thread pool (:func:`_threaded`).
    """
    n = A.shape[0]
    sym = A is B and bool(np.all(w >= 0.0))
    out = np.zeros((A.shape[1], B.shape[1]))
    sw = np.sqrt(w) if sym else w
    with _threaded(n * A.shape[1] * B.shape[1]):
        for i in range(0, n, _BLOCK):
            Ci = A[i:i + _BLOCK] * sw[i:i + _BLOCK, None]
            out += Ci.T @ (Ci if sym else B[i:i + _BLOCK])
    return out


def _matmul(a, b):
    """``a @ b``, with the BLAS thread pool when it is large (see :func:`_one_blas_thread`)."""
    with _threaded(a.shape[0] * a.shape[1] * b.shape[-1]):
        return a @ b


def _reweight(ss, v, c):
    """Normalised importance weights from ``v0`` to ``v``, ``ln Z(v)/Z(v0)`` and the Kish fraction."""
    s = ss.psi @ v
    a = c * (s * s - ss.s0 * ss.s0) + ss.logw0
    G = ss.G if ss.quenched else 1
    a = a.reshape(G, -1)
    amax = a.max(axis=1, keepdims=True)
    e = np.exp(a - amax)
    Zg = e.sum(axis=1)
    ng = a.shape[1]
    w = (e / Zg[:, None] / G).reshape(-1)
    lnZ = float(np.mean(np.log(Zg / ng) + amax[:, 0]))
    kish = float(np.mean(Zg**2 / np.sum(e * e, axis=1)) / ng) / ss.kish0
    return w, s, lnZ, kish


def _kernel_of(ss, w):
    """Kernel estimate ``Phi`` from the sample set's weights ``w`` (plus its control variate)."""
    Phi = _gram(ss.psi, w)
    return Phi if ss.cv is None else Phi + ss.cv


def _moments(ss, v, w, s, c, lam, y):
    """Gradient ``(Phi + lam) v - y`` and Hessian of (A.1) (docs/adaptive.md, eq. (A.2)).

    ``Phi v = E[psi s]`` needs no Gram matrix, and ``Phi`` and the covariance part of the Hessian
    share one, weighted by ``w (1 + 2 c s^2)``: the kernel itself is formed only when needed.
    """
    psi = ss.psi
    ws = w * s
    G = ss.G if ss.quenched else 1
    Mg = _group_sums(ws, psi, G)   # their sum is Phi v
    g = Mg.sum(axis=0) + lam * v - y
    if ss.cv is not None:
        g = g + ss.cv @ v
    H = _gram(psi, w * (1.0 + 2.0 * c * s * s)) - 2.0 * c * G * (Mg.T @ Mg) + lam * np.eye(len(v))
    if ss.cv is not None:
        H = H + ss.cv
    return g, 0.5 * (H + H.T)


class _Diverged(Exception):
    pass


def _public_errors(fit):
    """Only public errors leave ``fit``: a runaway sampler (:class:`_Diverged`) or a Hessian that sampling
    noise made indefinite (``LinAlgError``) that the solver's own recovery did not absorb becomes a
    :class:`~symtransfer.errors.ConvergenceError` naming the likely cause."""
    @functools.wraps(fit)
    def wrapper(self, *args, **kwargs):
        try:
            return fit(self, *args, **kwargs)
        except _Diverged:
            raise ConvergenceError(
                f"{type(self).__name__}.fit: the tilted single-site chains ran away (the tilt is at or beyond "
                f"the edge of normalisability, docs/adaptive.md (A.3)) and the solver could not recover; "
                f"try a smaller gamma or a larger n_samples") from None
        except np.linalg.LinAlgError as exc:
            raise ConvergenceError(
                f"{type(self).__name__}.fit: a saddle-point Hessian estimated by sampling was not positive "
                f"definite ({exc}); try a larger n_samples or a smaller gamma") from None
    return wrapper


def _all_moments(draw, ss, v, w, s, c, lam, y):
    """:func:`_moments` plus, in transfer from a condensed source, its image (eq. (A.7))."""
    g, H = _moments(ss, v, w, s, c, lam, y)
    if draw.extra is not None:
        g, H = g + draw.extra.kernel(v) @ v, H + draw.extra.hessian(v)
    return g, H


def _all_kernel(draw, ss, v, w):
    """The kernel at ``v``: sampled part plus, from a condensed source, its image (eq. (A.7))."""
    Phi = _kernel_of(ss, w)
    return Phi if draw.extra is None else Phi + draw.extra.kernel(v)


def _record(history, taus, draw, v, res):
    """Append the residual and the normalisability index at ``v``; return the index."""
    history.append(res)
    taus.append(draw.tau(v))
    return taus[-1]


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
        if _DEBUG:
            print(f"edge it {it} res {res:.3g} |g| {np.linalg.norm(g):.3g} kish {kish:.3f} tau {tau_now:.5f} "
                  f"active {int(np.sum(mu > 0))}/{len(mu)} mu {np.round(mu[mu > 0], 4)} |v| {np.linalg.norm(v):.3g}")
        if res < tol and kish >= _KISH_FINAL:
            on = mu > 0.0
            rho = mu[on] / np.maximum(A[on] @ v, 1e-300)
            return v, ss, w, _all_kernel(draw, ss, v, w), H, history, it, n_draws, (Ecrit[on], rho)
        if res < tol:
            ss, v, n_fail = redraw(v, n_fail)
            n_draws += 1
            continue
        slope = float(g @ d)
        E0 = energy(v, lnZ)
        t = 1.0
        while t >= 1e-10:
            # the slabs are tangent planes of a convex domain, so the step ends slightly outside, and
            # they miss directions not yet critical: the true tau decides, by retraction
            vt = retract(v + t * d)
            _, _, lnZt, kisht = _reweight(ss, vt, c)
            if kisht >= _KISH_TRUST and energy(vt, lnZt) <= E0 + 1e-4 * t * min(slope, 0.0):
                break
            t *= 0.5
        if t < 1e-10:
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
            for _ in range(100):
                dv = np.where(pinned, 0.0, d * v)
                g = L2.T @ dv
                beta = dv @ h0
                if 1.0 - k * (g @ g) <= 0.0:
                    return None
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
        for i in range(len(v)):
            e = np.zeros(len(v))
            e[i] = h
            out[:, i] = (self.kernel(v + e) @ (v + e) - self.kernel(v - e) @ (v - e)) / (2.0 * h)
        return 0.5 * (out + out.T)

    def energy(self, v):
        sol = self.solve(v)
        return np.inf if sol is None else float(self.rho @ sol[1]) / (2.0 * self.c2)

    def directions(self, v):
        """Target weight directions ``m u_j + V2 delta_j`` of the image neurons (for test inputs)."""
        return self.m * self.W + self.solve(v)[2] @ self.V2.T


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
                print(f"  draw rejected: tau {tau_top:.5f}, mean |zeta|^2 / r {np.mean(sq) / max(r, 1):.3g}")
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


def _batch_weights(w, u, idx):
    """Weights of one batch's own estimate (importance part renormalised, control variate uniform)."""
    wb = w[idx] / w[idx].sum()
    ub = u[idx]
    return wb - (ub / ub.sum() if ub.sum() > 0 else ub)


def _batch_weight_matrix(w, u, batch, n_batches):
    """Row ``b``: :func:`_batch_weights` of batch ``b`` spread over all samples (zeros elsewhere)."""
    ws = np.bincount(batch, weights=w, minlength=n_batches)
    us = np.bincount(batch, weights=u, minlength=n_batches)
    per = w / ws[batch] - np.where(us[batch] > 0, u / np.where(us[batch] > 0, us[batch], 1.0), u)
    out = np.zeros((n_batches, len(w)))
    out[batch, np.arange(len(w))] = per
    return out


def _batch_stderr(psi, w, u, batch, n_batches):
    """Standard error of the kernel estimate from batch means (batches are independent chains)."""
    # running sums shifted by the first batch's estimate (no cancellation, no n_batches x P x P array)
    s1 = s2 = shift = None
    for b in range(n_batches):
        idx = batch == b
        e = _gram(psi[idx], _batch_weights(w, u, idx))
        if shift is None:
            shift, s1, s2 = e, np.zeros_like(e), np.zeros_like(e)
            continue
        e -= shift
        s1 += e
        e *= e
        s2 += e
    var = np.maximum(s2 - s1 * s1 / n_batches, 0.0) / (n_batches - 1)
    return np.sqrt(var / n_batches)


class _AdaptiveBase:
    """Prediction, kernels and observables shared by the one-task and the transfer model."""

    def _check_fitted(self):
        if not hasattr(self, "Phi_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted yet: call fit(X, y) first")

    def _check_X(self, X, name="X"):
        self._check_fitted()
        return check_inputs(X, name, self.X_.shape[1])

    @_one_blas_thread
    def kernel(self, XA, XB=None):
        """Adapted kernel ``Phi(x, x')`` between the rows of ``XA`` and ``XB`` (eq. (2.5), (3.3)).

        Inputs outside the span of the training inputs enter through their Gaussian conditional
        (Gauss-Hermite quadrature); ``kernel(X_train)`` equals ``Phi_``.
        """
        XA = self._check_X(XA, "XA")
        XB = XA if XB is None else self._check_X(XB, "XB")
        if self._exact is not None:
            return self._exact.kernel(XA, XB)
        if self._rep is None:
            return self._lazy_kernel(XA, XB)
        return self._rep.kernel(XA, XB) + self._cond_kernel(XA, XB)

    def _lazy_kernel(self, XA, XB):
        s2 = self.s2_
        kAB = XA @ XB.T / XA.shape[1]
        dA = np.sum(XA * XA, axis=1)[:, None] / XA.shape[1]
        dB = np.sum(XB * XB, axis=1)[None, :] / XB.shape[1]
        # keep the correlation inside [-1, 1] against round-off
        lim = np.sqrt(dA * dB)
        kAB = np.clip(kAB, -lim, lim)
        return np.asarray(self.activation_.dual_kernel(s2 * dA, s2 * kAB, s2 * dB), dtype=np.float64)

    def _cross(self, X):
        """``Phi(x, X_train)`` and, when sampled, the conditional features ``F``."""
        if self._rep is None:
            return self._lazy_kernel(X, self.X_), None
        F = self._rep.features(X)
        return (_wsum(F, self._rep.weff, self._psi) + self._rep.qkernel(X, self.X_)
                + self._cond_kernel(X, self.X_)), F

    @_one_blas_thread
    def predict(self, X, return_std=False):
        """Mean predictor ``Phi(x, X)(Phi + lambda I)^-1 y`` (eq. (2.5), (3.3)).

        Parameters
        ----------
        X : array (n, D)
        return_std : bool
            Also return the Monte Carlo standard error of each prediction (delta method through the
            fixed point, docs/adaptive.md, eq. (A.4)); zeros for the exact and lazy solutions.
        """
        X = self._check_X(X)
        if self._exact is not None:
            f = self._exact.predict(X)
            return (f, np.zeros_like(f)) if return_std else f
        k, F = self._cross(X)
        f = k @ self.v_
        if not return_std:
            return f
        if F is None:
            return f, np.zeros_like(f)
        return f, self._predict_std(F, k, X)

    def _predict_std(self, F, k, X):
        rep, psi, v, c = self._rep, self._psi, self.v_, self._c
        w, weff, s = rep.w, rep.weff, psi @ v
        G = self._n_groups
        B = rep.n_batches
        Fs = np.multiply(F, s[:, None], out=F)   # F is not needed again: no second copy of its size
        kv = weff @ Fs                                  # k(x).v without the constant E_q part
        Phiv = psi.T @ (weff * s)
        # derivative of f(x; v) = k(x; v).v with respect to v, eq. (A.4)
        J = k.copy()
        if c > 0.0:
            FG, MG = _group_sums(w, Fs, G), _group_sums(w * s, psi, G)
            J = J + 2.0 * c * (_wsum(Fs, w * s, psi) - G * FG.T @ MG)
        Hinv = np.linalg.inv(self._H)
        if self._kkt is not None:
            # at the edge v moves only along the active slabs (A dv = 0) and the noise goes into the
            # multipliers, i.e. into the condensate part sum_j mu_j sigma_j phi_inf(h_j(x)) of f (A.6)
            A = self._kkt
            HA = Hinv @ A.T
            Sinv = np.linalg.pinv(A @ HA)
            Fc = self._cond_features(X) * np.sign(self._cond_features(self.X_).T @ v)[None, :]
        # every batch's own estimate at once: rows of Wb are the batches' weights
        Wb = _batch_weight_matrix(w, rep.u, rep.batch, B)
        dkv = _matmul(Wb, Fs) - kv
        U = (_matmul(Wb * s, psi) - Phiv) @ Hinv.T
        if self._kkt is None:
            dev = dkv - U @ J.T
        else:
            dmu = -(U @ A.T) @ Sinv.T
            dev = dkv - (U + dmu @ HA.T) @ J.T + dmu @ Fc.T
        return np.sqrt(np.sum(dev**2, axis=0) / (B * (B - 1)))

    def test_error(self, X, y):
        """Mean squared error ``mean (f(x) - y)^2`` on held-out data (section 5)."""
        X, y = check_Xy(X, y)
        return float(np.mean((self.predict(X) - y) ** 2))

    def score(self, X, y):
        """Coefficient of determination ``R^2`` of :meth:`predict` (scikit-learn convention)."""
        X, y = check_Xy(X, y)
        f = self.predict(X)
        ss = float(np.sum((y - y.mean()) ** 2))
        return 1.0 - float(np.sum((y - f) ** 2)) / ss if ss > 0 else float("nan")

    def alignment(self, X, y):
        """Kernel-task alignment ``A = y^T Phi y / (||Phi||_F ||y||^2)`` on ``(X, y)`` (section 5)."""
        X, y = check_Xy(X, y)
        Phi = self.kernel(X)
        return float(y @ Phi @ y / (np.linalg.norm(Phi) * (y @ y)))

    def _set_no_solver(self):
        self.converged_, self.n_iter_, self.n_draws_ = True, 0, 0
        self.residuals_ = [0.0]
        self.residual_ = 0.0

    def _set_exact_diagnostics(self):
        self.Phi_stderr_ = np.zeros_like(self.Phi_)
        self.mc_error_ = 0.0
        self._set_no_solver()

    def _set_condensate(self, cond, V, slopes):
        """Store the condensate ``(E, rho)`` of :func:`_newton_edge` (directions in the coordinates of
        ``V``) and add its kernel to ``Phi_`` (docs/adaptive.md, eq. (A.6))."""
        if cond is None:
            self._cond, self._kkt, self.condensate_weights_ = None, None, np.zeros(0)
            return
        E, rho = cond
        self._cond = (np.ascontiguousarray(E @ V.T), rho, slopes)
        self.condensate_weights_ = rho
        Fc = self._cond_features(self.X_)
        self.Phi_ = self.Phi_ + (Fc * rho) @ Fc.T
        self._kkt = (Fc * np.sign(Fc.T @ self.v_)[None, :]).T   # active slabs sigma_j a_j, rows

    def _cond_features(self, X, cond=None):
        """``phi_inf(h_j(x))`` of the condensate directions (own, or ``cond``): those weights are
        infinitely long, so only the asymptotic slopes of ``phi`` and the part of ``x`` in the
        training span matter."""
        W, _, (ap, am) = self._cond if cond is None else cond
        H = X @ W.T / math.sqrt(X.shape[1])
        return H * np.where(H > 0.0, ap, am)

    def _cond_kernel(self, XA, XB):
        """Kernel of the own condensate and of the source's (transfer, eqs. (A.6), (A.7))."""
        out = 0.0
        for cond in (self._cond, getattr(self, "_cond_src", None)):
            if cond is not None:
                FA = self._cond_features(XA, cond)
                FB = FA if XB is XA else self._cond_features(XB, cond)
                out = out + (FA * cond[1]) @ FB.T
        return out

    def _set_from_samples(self, rep, psi, Phi, v, H, c, n_groups):
        self._rep, self._psi, self._H, self._c, self._n_groups = rep, psi, H, c, n_groups
        self.Phi_ = 0.5 * (Phi + Phi.T)
        self.v_ = v
        self.Phi_stderr_ = _batch_stderr(psi, rep.w, rep.u, rep.batch, rep.n_batches)
        norm = float(np.linalg.norm(self.Phi_))
        err = float(np.linalg.norm(self.Phi_stderr_))
        # a kernel that vanishes identically (phi = 0) is known exactly: no relative error to report
        self.mc_error_ = err / norm if norm > 0.0 else (0.0 if err == 0.0 else math.inf)


_LARGE_VARIANCE = 1e2


def _rediagnosed(exc, X, s2):
    """``exc`` with the data scale named when it is the likely cause: preactivation variances
    ``s^2 |x|^2/D`` far above 1 make the tilt exp(c (v.phi)^2) so sharp that no sample size resolves
    it, which "increase n_samples" would misdiagnose."""
    var = s2 * float(np.max(np.sum(X * X, axis=1))) / X.shape[1]
    if not var > _LARGE_VARIANCE:
        return exc
    msg = (f"{exc.args[0] if exc.args else exc}. Note: the prior preactivation variance "
           f"s^2 |x|^2/D = {var:.3g} is far above 1 (X has rms {math.sqrt(var / s2):.3g} per feature): the data "
           "scale, not n_samples, is the likely cause; standardise X (unit variance per feature)")
    if isinstance(exc, EdgeOfNormalisabilityError):
        new = EdgeOfNormalisabilityError(msg)
        new.taus = exc.taus
    elif type(exc) is ConvergenceError:
        new = ConvergenceError(msg)
    else:
        return exc
    new.residuals = exc.residuals
    return new


_MAX_VARIANCE = 1e100


def _check_scale(X, s2, name="X"):
    """Refuse data whose preactivation variances overflow float64 when squared (kernels are quadratic
    in them): the failure would otherwise surface deep inside the sampler as NaN error bars."""
    var = s2 * float(np.max(np.sum(X * X, axis=1))) / X.shape[1]
    if not var <= _MAX_VARIANCE:
        raise ValueError(f"{name} is too large: the prior preactivation variance s^2 |x|^2/D reaches {var:.3g} "
                         f"(accepted up to {_MAX_VARIANCE:g}); rescale {name} (e.g. unit variance per feature)")


def _check_common(est):
    act = get_activation(est.activation)
    gamma = check_real("gamma", est.gamma, low=0.0)
    lam = check_real("weight_decay", est.weight_decay, low=0.0, low_open=True)
    T = check_real("temperature", est.temperature, low=0.0, low_open=True)
    return act, gamma, lam, T


def _no_saddle(act, where="gamma"):
    return NoSaddlePointError(
        f"activation {act.name!r} grows faster than linearly: the tilt exp(c phi(h)^2) of the "
        f"single-site measure (docs/theory.md, eq. (2.4)) is not normalisable for any {where} > 0, so the "
        f"equilibrium saddle point does not exist (eq. (2.6)); at large width single neurons run away. "
        f"Use the gradient-flow theory (GradientFlowDMFT, docs/theory.md section 4), which still applies.")


class AdaptiveKernel(_AdaptiveBase):
    """Infinite-width equilibrium of a two-layer mean-field network on one task (docs/theory.md §2).

    Parameters
    ----------
    activation : str, sympy.Expr or Activation
        ``phi``; must not grow faster than linearly when ``gamma > 0`` (eq. (2.6)).
    gamma : float, >= 0
        Feature-learning strength; ``0`` is the lazy limit (NNGP kernel ridge regression, eq. (2.7)).
    weight_decay : float, > 0
        ``lambda``; also the ridge of the predictor.
    temperature : float, > 0
        ``T``; prior variance ``s^2 = T/lambda`` (eq. (2.1)).
    n_samples : int
        Monte Carlo samples of the single-site measure (``n_chains`` chains of ``n_samples/n_chains``).
    n_chains : int
        Independent elliptical-slice chains (parallel; also the batches of the error estimate).
    tol : float
        Stop when the relative fixed-point residual ``||Phi(v(Phi)) - Phi||_F/||Phi||_F`` of the
        (common-random-number) estimator falls below ``tol``.
    max_iter : int
        Maximum number of Newton iterations per stage (a coarse stage on 1/8 of the samples, then the
        full set; ``n_iter_`` counts both).
    method : {"auto", "sampling"}
        ``"auto"`` uses the exact solution for ``activation="linear"``
        (:class:`symtransfer.theory.linear.LinearTheory`) and the closed-form dual kernel at
        ``gamma = 0``; ``"sampling"`` always uses the Monte Carlo solver.
    edge : {"condensate", "raise"}
        What to do when the solution lies on the edge of the normalisable region (ReLU-type
        activations at strong feature learning, docs/adaptive.md section 2): ``"condensate"`` minimises
        (A.1) over the closed domain, which adds the kernel of a condensate of runaway neurons
        (eq. (A.6)); ``"raise"`` raises :class:`~symtransfer.errors.EdgeOfNormalisabilityError`.
    seed : int
        Seeds every random number (results are reproducible and thread-count independent).

    Attributes
    ----------
    Phi_ : ndarray (P, P)
        Adapted kernel on the training inputs (eq. (2.4)), condensate included.
    condensate_weights_ : ndarray (m,)
        Weights ``rho_j`` of the condensate directions (eq. (A.6)); empty when the solution is interior.
    v_ : ndarray (P,)
        Dual vector ``(Phi + lambda I)^-1 y`` (eq. (2.3)).
    Phi_stderr_ : ndarray (P, P)
        Monte Carlo standard error of each entry of ``Phi_`` (at fixed ``v``).
    mc_error_ : float
        ``||Phi_stderr_||_F / ||Phi_||_F``.
    converged_ : bool
    n_iter_ : int
        Newton iterations.
    n_draws_ : int
        Fresh Monte Carlo draws of the single-site measure.
    residual_ : float
        Final relative residual; ``residuals_`` holds the history.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((20, 10)); y = np.sign(X[:, 0])
    >>> model = AdaptiveKernel("relu", gamma=1.0, n_samples=2048).fit(X, y)
    >>> model.predict(X[:3]).shape
    (3,)
    """

    def __init__(self, activation="relu", gamma=1.0, weight_decay=1.0, temperature=1.0, n_samples=8192,
                 n_chains=64, tol=1e-4, max_iter=100, method="auto", edge="condensate", seed=0):
        self.activation = activation
        self.gamma = gamma
        self.weight_decay = weight_decay
        self.temperature = temperature
        self.n_samples = n_samples
        self.n_chains = n_chains
        self.tol = tol
        self.max_iter = max_iter
        self.method = method
        self.edge = edge
        self.seed = seed

    def get_params(self):
        """Constructor parameters (scikit-learn convention)."""
        names = ("activation", "gamma", "weight_decay", "temperature", "n_samples", "n_chains", "tol",
                 "max_iter", "method", "edge", "seed")
        return {k: getattr(self, k) for k in names}

    def _validated(self):
        act, gamma, lam, T = _check_common(self)
        n_chains = check_int("n_chains", self.n_chains, low=2)
        n_samples = check_int("n_samples", self.n_samples, low=4 * n_chains)
        tol = check_real("tol", self.tol, low=0.0, low_open=True)
        max_iter = check_int("max_iter", self.max_iter, low=1)
        seed = check_int("seed", self.seed, low=0)
        if self.method not in ("auto", "sampling"):
            raise ValueError(f"method must be 'auto' or 'sampling', got {self.method!r}")
        if self.edge not in ("condensate", "raise"):
            raise ValueError(f"edge must be 'condensate' or 'raise', got {self.edge!r}")
        return act, gamma, lam, T, n_samples, n_chains, tol, max_iter, seed

    @_one_blas_thread
    @_public_errors
    def fit(self, X, y):
        """Solve the saddle point (eqs. (2.3)-(2.4)) on ``(X, y)``; returns ``self``.

        Raises
        ------
        NoSaddlePointError
            ``gamma > 0`` with an activation growing faster than linearly.
        EdgeOfNormalisabilityError
            A ``ConvergenceError``: the iterates pressed against the edge of the normalisable region
            (linearly growing activations such as ReLU at strong feature learning; residual and
            ``tau`` histories attached, docs/adaptive.md section 2) with ``edge="raise"``, or the
            constrained solve at the edge failed.
        ConvergenceError
            The Newton iteration did not reach ``tol`` (the residual history is attached).
        """
        act, gamma, lam, T, n_samples, n_chains, tol, max_iter, seed = self._validated()
        X, y = check_Xy(X, y)
        _check_scale(X, T / lam)
        if gamma > 0.0 and act.growth == "superlinear":
            raise _no_saddle(act)
        self.activation_ = act
        self.X_, self.y_ = X, y
        self.s2_ = T / lam
        self._exact = None
        self._rep = None
        self._cond, self._kkt, self.condensate_weights_ = None, None, np.zeros(0)
        self._cond_src = None
        P = X.shape[0]
        if self.method == "auto" and act.name == "linear":
            from .linear import LinearTheory

            self._exact = LinearTheory(gamma=gamma, weight_decay=lam, temperature=T).fit(X, y)
            self.Phi_, self.v_ = self._exact.Phi_, self._exact.v_
            self._set_exact_diagnostics()
            return self
        if self.method == "auto" and gamma == 0.0:
            self.Phi_ = self._lazy_kernel(X, X)
            self.v_ = np.linalg.solve(self.Phi_ + lam * np.eye(P), y)
            self._set_exact_diagnostics()
            return self
        c = gamma**2 / (2.0 * self.s2_)
        V, L = _row_basis(X)
        if V.shape[1] == 0:
            # every training preactivation is 0: the tilt is a constant, the measure is the prior,
            # and the lazy kernel (phi(0)^2 on the training set) is exact
            self.Phi_ = self._lazy_kernel(X, X)
            self.v_ = np.linalg.solve(self.Phi_ + lam * np.eye(P), y)
            self._set_exact_diagnostics()
            return self
        n_keep = max(n_samples // n_chains, 1)
        draw = _ESSDraw(L, self.s2_, c, act.compile().phi, _asymptotic_slopes(act), np.zeros((n_chains, V.shape[1])),
                        n_burn=max(n_keep // 4, 16), n_keep=n_keep, quenched=False, seed=seed,
                        kinks=_kinks(act))
        try:
            v, ss, w, Phi, H, hist, n_iter, n_draws, cond = _solve(draw, y, lam, c, tol, max_iter,
                                                                   condense=self.edge == "condensate")
        except ConvergenceError as exc:
            raise _rediagnosed(exc, X, self.s2_) from None
        batch = np.repeat(np.arange(n_chains), n_keep)
        if ss.cv is not None:
            mu, C = ss.q
            rep = _Rep(ss.Z @ V.T, w, batch, n_chains, [(self.s2_, V)], act.compile().phi, _kinks(act),
                       u=np.full(len(w), 1.0 / len(w)), q=(V @ mu, V, C, self.s2_), cmean=_cmean(act))
        else:
            rep = _Rep(ss.Z @ V.T, w, batch, n_chains, [(self.s2_, V)], act.compile().phi, _kinks(act),
                       cmean=_cmean(act))
        self._set_from_samples(rep, ss.psi, Phi, v, H, c, n_groups=1)
        self._set_condensate(cond, V, _asymptotic_slopes(act))
        self.converged_, self.n_iter_, self.n_draws_ = True, n_iter, n_draws
        self.residuals_ = hist
        self.residual_ = hist[-1]
        return self

    def _source_rep(self, X2, n_samples, seed):
        """Samples of the source measure with the known subspace covering ``X1 u X2``."""
        if self._rep is not None:
            return self._rep.extend(X2, self.s2_, seed)
        # lazy source: the measure is the prior, drawn directly
        V, _ = _row_basis(np.vstack([self.X_, X2]))
        rng = np.random.default_rng(np.random.SeedSequence([seed, 11]))
        Wk = math.sqrt(self.s2_) * rng.standard_normal((n_samples, V.shape[1])) @ V.T
        n_batches = 64
        batch = np.arange(n_samples) * n_batches // n_samples
        return _Rep(Wk, np.full(n_samples, 1.0 / n_samples), batch, n_batches, [(self.s2_, V)],
                    self.activation_.compile().phi, _kinks(self.activation_), cmean=_cmean(self.activation_))

    def transfer(self, X2, y2, *, gamma, weight_decay, temperature, coupling, n_samples=None, n_inner=8,
                 seed=None):
        """Fitted target model trained from this source (docs/theory.md, section 3).

        Parameters
        ----------
        X2, y2 : arrays
            Target training set.
        gamma, weight_decay, temperature : float
            Target ``(gamma2, lambda2, T2)``.
        coupling : float, >= 0 or inf
            ``delta``: ``inf`` is readout fine-tuning on the source features (kernel ridge regression
            with the source kernel), ``0`` is training from scratch, anything between is jointly rich.
            A source condensate (eq. (A.6)) enters the target through its image (eq. (A.7)).
        n_samples : int, optional
            Target Monte Carlo samples (default: the source's ``n_samples``).
        n_inner : int
            Samples of the target conditional per source sample (quenched average, eq. (3.2)).
        seed : int, optional
            Default: source seed + 1.

        Returns
        -------
        AdaptiveTransfer
        """
        self._check_fitted()
        return AdaptiveTransfer(self, gamma=gamma, weight_decay=weight_decay, temperature=temperature,
                                coupling=coupling, n_samples=n_samples, n_inner=n_inner,
                                seed=seed).fit(X2, y2)


class AdaptiveTransfer(_AdaptiveBase):
    """Target model after transfer from a fitted :class:`AdaptiveKernel` (docs/theory.md, section 3).

    Built by :meth:`AdaptiveKernel.transfer`; has the same prediction and observable methods and
    fitted attributes (``Phi_``, ``v_``, ``Phi_stderr_``, ``mc_error_``, ``converged_``, ``n_iter_``,
    ``residual_``) plus ``m_`` and ``s2c_`` of eq. (3.1).
    """

    def __init__(self, source, gamma=1.0, weight_decay=1.0, temperature=1.0, coupling=0.0, n_samples=None,
                 n_inner=8, seed=None):
        self.source = source
        self.activation = source.activation
        self.gamma = gamma
        self.weight_decay = weight_decay
        self.temperature = temperature
        self.coupling = coupling
        self.n_samples = n_samples
        self.n_inner = n_inner
        self.seed = seed

    @_one_blas_thread
    @_public_errors
    def fit(self, X2, y2):
        """Solve the quenched target saddle point (eqs. (3.1)-(3.3)); returns ``self``."""
        src = self.source
        if not isinstance(src, AdaptiveKernel) or not hasattr(src, "Phi_"):
            raise ValueError("source must be a fitted AdaptiveKernel")
        act, gamma, lam, T = _check_common(self)
        delta = check_real("coupling", self.coupling, low=0.0, allow_inf=True)
        n_samples = src.n_samples if self.n_samples is None else self.n_samples
        n_samples = check_int("n_samples", n_samples, low=64)
        n_inner = check_int("n_inner", self.n_inner, low=2)
        seed = src.seed + 1 if self.seed is None else check_int("seed", self.seed, low=0)
        X2, y2 = check_Xy(X2, y2, "X2", "y2", n_features=src.X_.shape[1])
        _check_scale(X2, max(src.s2_, T / lam), "X2")
        self.activation_ = src.activation_
        self.X_, self.y_ = X2, y2
        self.s2_ = T / lam
        self._exact = None
        self._rep = None
        self._cond, self._kkt, self.condensate_weights_ = None, None, np.zeros(0)
        self._cond_src = None
        P2 = X2.shape[0]
        if math.isinf(delta):
            self.m_, self.s2c_ = 1.0, 0.0
        else:
            self.m_, self.s2c_ = delta / (lam + delta), T / (lam + delta)
        if src._exact is not None:
            self._exact = src._exact.transfer(X2, y2, gamma=gamma, weight_decay=lam, temperature=T,
                                              coupling=delta)
            self.Phi_, self.v_ = self._exact.Phi_, self._exact.v_
            self._set_exact_diagnostics()
            return self
        if gamma > 0.0 and not math.isinf(delta) and act.growth == "superlinear":
            raise _no_saddle(act, "gamma2")
        if delta == 0.0:
            # m = 0: the target prior forgets w1 and the quenched problem is the one-task problem
            scratch = AdaptiveKernel(act, gamma=gamma, weight_decay=lam, temperature=T, n_samples=n_samples,
                                     n_chains=src.n_chains, tol=src.tol, max_iter=src.max_iter,
                                     method=src.method, edge=src.edge, seed=seed).fit(X2, y2)
            for k in ("Phi_", "v_", "Phi_stderr_", "mc_error_", "converged_", "n_iter_", "n_draws_",
                      "residuals_", "residual_", "_rep", "_psi", "_H", "_c", "_n_groups", "_cond", "_kkt", "_cond_src",
                      "condensate_weights_"):
                if hasattr(scratch, k):
                    setattr(self, k, getattr(scratch, k))
            self._exact = scratch._exact
            return self
        rep1 = src._source_rep(X2, n_samples, seed)
        if math.isinf(delta):
            # w2 = w1: only the readout learns, kernel ridge regression with the source kernel
            psi = apply_elementwise(act.compile().phi, rep1.means(X2))
            self._cond_src = src._cond  # the source's condensate neurons keep their features too
            Phi = psi.T @ (rep1.weff[:, None] * psi) + rep1.qkernel(X2, X2) + self._cond_kernel(X2, X2)
            Phi = 0.5 * (Phi + Phi.T)
            v = np.linalg.solve(Phi + lam * np.eye(P2), y2)
            self._set_from_samples(rep1, psi, Phi, v, Phi + lam * np.eye(P2), 0.0, n_groups=1)
            self._set_no_solver()
            return self
        # jointly rich: w2 | w1 ~ N(m w1, s_c^2 I) tilted by exp(c2 (v2.phi(h2))^2), quenched over w1
        c2 = gamma**2 * lam / (2.0 * T)
        m, s2c = self.m_, self.s2c_
        V2, L2 = _row_basis(X2)
        n_outer = max(n_samples // n_inner, 2)
        pick = np.linspace(0, rep1.Wk.shape[0] - 1, n_outer).round().astype(int)
        W1 = rep1.Wk[pick]
        w1_weights = rep1.w[pick]
        if not np.allclose(w1_weights, w1_weights[0]):
            # reweighted source samples: resample them to equal weights (systematic resampling)
            cdf = np.cumsum(rep1.w)
            u = (np.arange(n_outer) + 0.5) / n_outer
            W1 = rep1.Wk[np.minimum(np.searchsorted(cdf, u * cdf[-1]), len(cdf) - 1)]
        mu_prior = m * (W1 @ V2)
        draw = _ESSDraw(L2, s2c, c2, act.compile().phi, _asymptotic_slopes(act), mu_prior, n_burn=max(n_inner, 8), n_keep=n_inner,
                        quenched=True, seed=seed)
        if src._cond is not None:
            # the source's runaway neurons drag their target weights along (eq. (A.7))
            W, rho, slopes = src._cond
            draw.extra = _SourceCondensate(W, rho, slopes, X2, L2, V2, m, s2c, c2)
        v, ss, w, Phi, H, hist, n_iter, n_draws, cond = _solve(draw, y2, lam, c2, src.tol, src.max_iter,
                                                               condense=src.edge == "condensate")
        W1_perp = W1 - (W1 @ V2) @ V2.T
        Wk = ss.Z @ V2.T + m * np.repeat(W1_perp, n_inner, axis=0)
        (coef1, V12), = rep1.terms
        n_batches = min(64, n_outer)
        batch = np.repeat(np.arange(n_outer) * n_batches // n_outer, n_inner)
        rep = _Rep(Wk, w, batch, n_batches, [(m * m * coef1, V12), (s2c, V2)], act.compile().phi,
                   _kinks(act), cmean=_cmean(act))
        self._set_from_samples(rep, ss.psi, Phi, v, H, c2, n_groups=n_outer)   # Phi: with the image
        self._set_condensate(cond, V2, _asymptotic_slopes(act))
        if draw.extra is not None:
            self._cond_src = (draw.extra.directions(v), draw.extra.rho, draw.extra.slopes)
        self.converged_, self.n_iter_, self.n_draws_ = True, n_iter, n_draws
        self.residuals_ = hist
        self.residual_ = hist[-1]
        return self

