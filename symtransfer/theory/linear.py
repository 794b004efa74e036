"""Exact equilibrium theory for the linear activation ``phi(h) = h`` (docs/theory.md, sections 2-3).

For linear ``phi`` the single-site measure is Gaussian and the saddle point reduces to scalars:
one amplitude ``a`` for a single task (eq. 2.9) and two, ``t`` and ``A``, for transfer (eq. 3.5).
Everything is expressed through the input kernel ``K``, so one eigendecomposition of the training
Gram matrix makes every root-finding evaluation ``O(P)``.

The estimators follow the package's contract (:class:`~symtransfer.base.TransferEstimator`,
docs/estimators.md): hyper-parameters in the constructor, ``fit`` returns ``self``, fitted state ends
in ``_``, and :meth:`LinearTheory.transfer` with ``coupling=inf`` (or ``readout_only=True``) is
readout fine-tuning.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import numpy as np
from scipy.optimize import brentq

from .._validation import check_inputs, check_real, check_Xy
from ..base import TransferEstimator
from ..errors import ConvergenceError

__all__ = ["LinearTheory", "LinearTransferTheory", "linear_kernel"]


def linear_kernel(XA: np.ndarray, XB: np.ndarray) -> np.ndarray:
    """Input kernel ``K(x, x') = x.x'/D`` (eq. 1.1)."""
    return XA @ XB.T / XA.shape[1]


class _EigenRidge:
    """Solves ``(alpha K + beta g g^T + lam I) v = y`` in the eigenbasis of ``K`` in ``O(P)``.

    ``K``, ``y`` and ``g`` are fixed; ``alpha``, ``beta`` vary inside the root finders.
    """

    def __init__(self, K: np.ndarray, y: np.ndarray, g: np.ndarray | None, lam: float):
        evals, U = np.linalg.eigh(0.5 * (K + K.T))
        # Zero modes come out as +-P eps kmax round-off; a large amplitude (a ~ T/lambda) would
        # turn those into spurious directions of the predictor, so they are set to exactly zero.
        floor = evals.size * np.finfo(float).eps * max(float(evals[-1]) if evals.size else 0.0, 0.0)
        self.k = np.where(evals > floor, evals, 0.0)
        self.U = U
        self.yt = U.T @ y
        self.gt = U.T @ g if g is not None else np.zeros_like(self.yt)
        self.lam = lam
        self.n_solves = 0  # reported as n_iter_: the root finders' evaluations

    def solve(self, alpha: float, beta: float) -> np.ndarray:
        """``v`` in the eigenbasis (multiply by ``U`` for the original basis)."""
        self.n_solves += 1
        r = 1.0 / (alpha * self.k + self.lam)
        vt = r * self.yt
        if beta != 0.0:
            rg = r * self.gt
            vt = vt - rg * (beta * (self.gt @ vt) / (1.0 + beta * (self.gt @ rg)))
        return vt

    def kappa(self, vt: np.ndarray) -> float:
        """``v^T K v``."""
        return float(np.sum(self.k * vt * vt))


def _bracket_root(f: Callable[[float], float], lo: float, hi: float, name: str, grow: float = 2.0,
                  max_doublings: int = 200) -> float:
    """Root of an increasing-at-infinity ``f`` with ``f(lo) <= 0``: expand ``hi`` until ``f(hi) > 0``."""
    f_lo = f(lo)
    if f_lo == 0.0:
        return lo
    if f_lo > 0.0:
        raise ConvergenceError(f"{name}: no sign change, f(lower bracket {lo:g}) = {f_lo:g} > 0")
    f_hi = f(hi)
    n = 0
    while not f_hi > 0.0:
        if not math.isfinite(f_hi) or n >= max_doublings:
            raise ConvergenceError(f"{name}: could not bracket the root (upper bracket {hi:g}, f = {f_hi:g})")
        lo, hi = hi, lo + (hi - lo) * grow + 1.0
        f_hi = f(hi)
        n += 1
    return brentq(f, lo, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=500)


def _solve_target(ridge: _EigenRidge, *, c: float, s2c: float, m2: float, sig1: float, beta1: float):
    """Solve the scalar system (3.5): ``v = (A K + M Q + lam)^-1 y``, ``Q = sig1 K + beta1 g g^T``.

    ``A = t (s2c + c t m2 rho)``, ``M = t m2``, ``t = 1/(1 - c kappa)``, ``kappa = v^T K v``,
    ``rho = v^T Q v``. The single task (2.9) is ``m2 = 0``.

    Returns ``(t, A, M, vt)`` with ``vt`` in the eigenbasis.
    """

    def inner(t: float):
        M = t * m2
        beta = M * beta1

        def rho_of(A: float):
            vt = ridge.solve(A + M * sig1, beta)
            kap = ridge.kappa(vt)
            return sig1 * kap + beta1 * float(ridge.gt @ vt) ** 2, vt

        base = t * s2c
        if m2 == 0.0 or c == 0.0:
            A = base
        else:
            # A - t(s2c + c t m2 rho(A)) is <= 0 at A = base and > 0 for A large (rho is bounded).
            A = _bracket_root(lambda A: A - base - c * t * t * m2 * rho_of(A)[0], base, 2.0 * base + 1.0,
                              "target amplitude A")
        vt = ridge.solve(A + M * sig1, beta)
        return A, M, vt

    if c == 0.0:
        A, M, vt = inner(1.0)
        return 1.0, A, M, vt

    def outer(t: float) -> float:
        _, _, vt = inner(t)
        return 1.0 - 1.0 / t - c * ridge.kappa(vt)

    # t = 1/(1 - c kappa) >= 1; outer(1) = -c kappa <= 0 and outer -> 1 as t -> inf.
    t = _bracket_root(outer, 1.0, 2.0, "normalisation factor t = 1/(1 - c kappa)")
    A, M, vt = inner(t)
    return t, A, M, vt


# Scales beyond this over- or underflow the amplitude a ~ T/lambda and the kernel in float64.
_SCALE_LIMIT = 1e100


def _check_hyper(gamma, weight_decay, temperature, suffix=""):
    g = check_real("gamma" + suffix, gamma, low=0.0, high=_SCALE_LIMIT)
    lam = check_real("weight_decay" + suffix, weight_decay, low=1.0 / _SCALE_LIMIT, high=_SCALE_LIMIT)
    T = check_real("temperature" + suffix, temperature, low=1.0 / _SCALE_LIMIT, high=_SCALE_LIMIT)
    if not 1.0 / _SCALE_LIMIT <= T / lam <= _SCALE_LIMIT:
        raise ValueError(f"temperature{suffix}/weight_decay{suffix} (the prior variance s^2, eq. 2.1) must lie in "
                         f"[{1 / _SCALE_LIMIT:g}, {_SCALE_LIMIT:g}], got {T:g}/{lam:g} = {T / lam:g}")
    return g, lam, T


def _check_finite_state(model, what, Phi):
    """A saddle point that over- or underflowed is an error, not a NaN/inf predictor."""
    vals = [model.a_ if hasattr(model, "a_") else 0.0, *(getattr(model, k, 0.0) for k in ("t_", "A_", "M_"))]
    if not (all(math.isfinite(float(v)) for v in vals) and np.all(np.isfinite(model.v_))
            and np.all(np.isfinite(Phi))):
        raise ConvergenceError(f"{what}: the saddle point is not representable in float64 (amplitude "
                               f"{float(vals[0]):g}); rescale the data or bring temperature/weight_decay closer to 1")


def _set_history(model, X, y, eval_set):
    """One-entry ``history_`` (docs/estimators.md): the saddle point is found by scalar root finding,
    whose iterates are not models, so the only entry is the solution (``time`` = ``n_iter_``)."""
    test = [] if eval_set is None else [float(np.mean((model.predict(eval_set[0]) - eval_set[1]) ** 2))]
    model.history_ = {"time": np.array([float(model.n_iter_)]),
                      "train_loss": np.array([float(np.mean((model.predict(X) - y) ** 2))]),
                      "test_loss": np.array(test, dtype=np.float64)}


class LinearTheory(TransferEstimator):
    """Exact ``N -> infinity`` equilibrium of a linear-activation network on one task.

    Regime ``"equilibrium"`` (docs/estimators.md): ``weight_decay > 0`` and ``temperature > 0``; the
    default ``temperature=1`` (the dynamics models default to ``0``, gradient flow).

    Parameters
    ----------
    gamma : float, >= 0
        Feature-learning strength; ``0`` is the lazy (NNGP ridge) limit.
    weight_decay : float, > 0
        ``lambda``; also the ridge of the readout.
    temperature : float, > 0
        ``T``; the prior variance is ``s^2 = T/lambda`` (eq. 2.1). Default ``1``.
    input_kernel : callable, optional
        Input kernel ``K(XA, XB)``; default ``x.x'/D`` (eq. 1.1). ``weight_covariance`` needs the default.

    Attributes
    ----------
    n_features_in_ : int
    converged_ : bool
        Always ``True`` (a root finder that fails raises :class:`~symtransfer.errors.ConvergenceError`).
    n_iter_ : int
        Evaluations of the scalar root finders (each one ``O(P)``).
    history_ : dict of ndarray
        ``"time"``, ``"train_loss"``, ``"test_loss"`` (docs/estimators.md) with one entry, the solution
        (``time = n_iter_``); ``"test_loss"`` is empty without ``eval_set``.
    a_ : float
        Amplitude ``a = s^2/(1 - chi)`` (eq. 2.9); the effective ridge is ``lambda/a``.
    chi_, eta_ : float
        ``chi = gamma^2 v^T K v`` and ``eta = a - s^2``.
    v_ : ndarray (P,)
        Dual vector ``(Phi + lambda I)^-1 y``.
    Phi_ : ndarray (P, P)
        Adapted kernel on the training inputs (eq. 2.11).
    """

    def __init__(self, gamma=1.0, weight_decay=1.0, temperature=1.0, input_kernel=None):
        self.gamma = gamma
        self.weight_decay = weight_decay
        self.temperature = temperature
        self.input_kernel = input_kernel

    # -- helpers shared with LinearTransferTheory
    def _K(self, XA, XB):
        return (self.input_kernel or linear_kernel)(XA, XB)

    def _check_hyper(self) -> dict:
        g, lam, T = _check_hyper(self.gamma, self.weight_decay, self.temperature)
        return {"gamma": g, "weight_decay": lam, "temperature": T}

    def _set_predictive(self, ridge, vt):
        # The null modes of K(X, X) are also null for K(x, X) at any x (K is PSD), so they add
        # nothing to a predictor in exact arithmetic; dropping them keeps their round-off from
        # being multiplied by a large amplitude (a ~ T/lambda).
        self._vp = ridge.U @ np.where(ridge.k > 0.0, vt, 0.0)

    def _check_X(self, X, name="X"):
        self._check_fitted()
        return check_inputs(X, name, self.X_.shape[1])

    def fit(self, X, y, eval_set=None):
        """Solve the saddle point (eq. 2.9) on the training set ``(X, y)``; returns ``self``.

        ``eval_set=(X_test, y_test)`` only fills ``history_["test_loss"]``.
        """
        gamma, lam, T = self._check_hyper().values()
        X, y = check_Xy(X, y)
        eval_set = self._check_eval_set(eval_set, X.shape[1])
        s2 = T / lam
        K = self._K(X, X)
        ridge = _EigenRidge(K, y, None, lam)
        t, A, _, vt = _solve_target(ridge, c=gamma**2, s2c=s2, m2=0.0, sig1=0.0, beta1=0.0)
        self.X_, self.y_ = X, y
        self.s2_ = s2
        self.a_ = A
        self.chi_ = 1.0 - 1.0 / t
        self.eta_ = A - s2
        self.v_ = ridge.U @ vt
        self._set_predictive(ridge, vt)
        g = K @ self._vp
        with np.errstate(over="ignore", invalid="ignore"):  # reported just below
            Phi = s2 * K + gamma**2 * A * np.outer(g, g)
        self.n_features_in_ = X.shape[1]
        self._finish(Phi, ridge, X, y, eval_set, "LinearTheory.fit")
        return self

    def _finish(self, Phi, ridge, X, y, eval_set, what):
        """Set the common fitted attributes once the state is known to be finite."""
        _check_finite_state(self, what, Phi)
        self.Phi_ = Phi  # last: a model whose solve failed is not fitted
        self.converged_ = True
        self.n_iter_ = int(ridge.n_solves)
        _set_history(self, X, y, eval_set)

    def features(self, X) -> np.ndarray:
        """``K(x, X) v``: the learned direction evaluated on inputs ``X``, shape ``(n,)`` (eq. 2.10)."""
        X = self._check_X(X)
        return self._K(X, self.X_) @ self._vp

    def feature(self, X) -> np.ndarray:
        """Deprecated alias of :meth:`features`."""
        warnings.warn("LinearTheory.feature is deprecated: use features", DeprecationWarning, stacklevel=2)
        return self.features(X)

    def predict(self, X) -> np.ndarray:
        """Mean predictor ``a K(x, X) v`` (eq. 2.10)."""
        g = self.features(X)
        return self.a_ * g

    def kernel(self, XA, XB=None) -> np.ndarray:
        """Adapted kernel ``Phi(x, x')`` (eq. 2.11) between rows of ``XA`` and ``XB``."""
        XA = self._check_X(XA, "XA")
        XB = XA if XB is None else self._check_X(XB, "XB")
        gA = self._K(XA, self.X_) @ self._vp
        gB = gA if XB is XA else self._K(XB, self.X_) @ self._vp
        return self.s2_ * self._K(XA, XB) + float(self.gamma) ** 2 * self.a_ * np.outer(gA, gB)

    def weight_covariance(self) -> np.ndarray:
        """Learned hidden-weight covariance ``Sigma = s^2 I + gamma^2 a u u^T`` (eq. 2.8), ``D x D``."""
        self._check_fitted()
        if self.input_kernel is not None:
            raise ValueError("weight_covariance needs the default input kernel x.x'/D (input_kernel=None)")
        u = self.X_.T @ self._vp / math.sqrt(self.X_.shape[1])
        return self.s2_ * np.eye(self.X_.shape[1]) + float(self.gamma) ** 2 * self.a_ * np.outer(u, u)

    def _transfer(self, X2, y2, *, coupling, gamma, weight_decay, temperature, eval_set=None,
                  **options) -> "LinearTransferTheory":
        """Fitted target model trained from this source (section 3), via :meth:`transfer`.

        ``coupling=inf`` (or ``readout_only=True``) is readout fine-tuning on source features,
        ``coupling=0`` training from scratch; omitted hyper-parameters are the source's.
        """
        if options:
            raise ValueError(f"LinearTheory.transfer got unknown options {sorted(options)}; it accepts "
                             f"coupling, readout_only, gamma, weight_decay, temperature and eval_set")
        return LinearTransferTheory(self, gamma=gamma, weight_decay=weight_decay, temperature=temperature,
                                    coupling=coupling).fit(X2, y2, eval_set=eval_set)


class LinearTransferTheory(LinearTheory):
    """Exact equilibrium of the target network after transfer from a fitted :class:`LinearTheory`.

    Parameters
    ----------
    source : LinearTheory
        Fitted source model.
    gamma, weight_decay, temperature : float
        Target hyper-parameters ``(gamma2, lambda2, T2)``.
    coupling : float, >= 0 or inf
        ``delta``, the elastic pull of the target hidden weights towards the source weights.

    Attributes
    ----------
    t_, A_, M_ : float
        Scalars of eq. (3.5); the predictor is ridge regression with kernel ``A K + M Phi1``.
    kappa_, rho_ : float
        ``v2^T K22 v2`` and ``v2^T Phi1(X2, X2) v2``.
    """

    # clone keeps the fitted source (a fresh copy of it would not be fitted)
    _shared_params = ("source",)

    def __init__(self, source, gamma=1.0, weight_decay=1.0, temperature=1.0, coupling=0.0):
        self.source = source
        self.gamma = gamma
        self.weight_decay = weight_decay
        self.temperature = temperature
        self.coupling = coupling

    @property
    def input_kernel(self):
        """The source's input kernel (the target has no kernel of its own)."""
        return getattr(self.source, "input_kernel", None)

    def fit(self, X, y, eval_set=None):
        """Solve eq. (3.5) on the target training set; returns ``self``."""
        src = self.source
        if not isinstance(src, LinearTheory) or not hasattr(src, "v_"):
            raise ValueError("source must be a fitted LinearTheory")
        gamma, lam, T = self._check_hyper().values()
        delta = check_real("coupling", self.coupling, low=0.0, allow_inf=True)
        X, y = check_Xy(X, y, "X2", "y2", n_features=src.X_.shape[1])
        eval_set = self._check_eval_set(eval_set, X.shape[1])
        if math.isinf(delta):
            m2, s2c, c = 1.0, 0.0, 0.0
        else:
            m2 = (delta / (lam + delta)) ** 2
            s2c = T / (lam + delta)
            c = gamma**2 * lam / (lam + delta)
        sig1 = src.s2_
        beta1 = float(src.gamma) ** 2 * src.a_
        g = src._K(X, src.X_) @ src._vp  # source feature on target inputs
        K = self._K(X, X)
        ridge = _EigenRidge(K, y, g, lam)
        t, A, M, vt = _solve_target(ridge, c=c, s2c=s2c, m2=m2, sig1=sig1, beta1=beta1)
        v = ridge.U @ vt
        self._set_predictive(ridge, vt)
        self.X_, self.y_ = X, y
        self.m2_, self.s2c_, self.c_ = m2, s2c, c
        self.t_, self.A_, self.M_ = t, A, M
        self.b_ = c * t
        self.v_ = v
        self.kappa_ = float(v @ K @ v)
        self.rho_ = sig1 * self.kappa_ + beta1 * float(g @ v) ** 2
        self.n_features_in_ = X.shape[1]
        with np.errstate(over="ignore", invalid="ignore"):  # reported just below
            Phi = self._kernel(X, X, same=True)
        self._finish(Phi, ridge, X, y, eval_set, "LinearTransferTheory.fit")
        return self

    def _source_kernel(self, XA, XB):
        return self.source.kernel(XA, XB)

    def predict(self, X) -> np.ndarray:
        """Target mean predictor ``(A K(x, X2) + M Phi1(x, X2)) v2`` (eq. 3.6)."""
        X = self._check_X(X)
        return self.A_ * (self._K(X, self.X_) @ self._vp) + self.M_ * (self._source_kernel(X, self.X_) @ self._vp)

    def kernel(self, XA, XB=None) -> np.ndarray:
        """Target adapted kernel ``Phi2(x, x')`` (eq. 3.7)."""
        XA = self._check_X(XA, "XA")
        same = XB is None
        XB = XA if same else self._check_X(XB, "XB")
        return self._kernel(XA, XB, same)

    def _kernel(self, XA, XB, same):
        gA = self._K(XA, self.X_) @ self._vp
        gB = gA if same else self._K(XB, self.X_) @ self._vp
        P1A = self._source_kernel(XA, self.X_) @ self._vp
        P1B = P1A if same else self._source_kernel(XB, self.X_) @ self._vp
        b, m2, s2c = self.b_, self.m2_, self.s2c_
        out = s2c * (self._K(XA, XB) + b * np.outer(gA, gB))
        if m2 > 0.0:
            out += m2 * (self._source_kernel(XA, XB) + b * np.outer(gA, P1B) + b * np.outer(P1A, gB)
                         + b * b * self.rho_ * np.outer(gA, gB))
        return out

    def weight_covariance(self) -> np.ndarray:
        """Target second moment ``E[w2 w2^T] = s_c^2 Pi + m^2 Pi Sigma1 Pi`` (eq. 3.4), ``D x D``."""
        self._check_fitted()
        S1 = self.source.weight_covariance()
        D = self.X_.shape[1]
        u = self.X_.T @ self._vp / math.sqrt(D)
        Pi = np.eye(D) + self.b_ * np.outer(u, u)
        return self.s2c_ * Pi + self.m2_ * Pi @ S1 @ Pi

    def _transfer(self, *args, **kwargs):
        raise NotImplementedError("chained transfer (a target used as a new source) is not supported")
