"""Test oracle for the symbolic engine: the derived equations solved numerically on their own.

The update maps are lambdified from the equations that :func:`symtransfer.symbolic.derive` writes
and iterated by a damped, safeguarded fixed point; the tests compare the result with the package's
solvers (:class:`~symtransfer.theory.linear.LinearTheory`, :class:`~symtransfer.theory.adaptive.AdaptiveKernel`),
so an error in a derivation shows up as a disagreement. It was ``symtransfer.symbolic.CompiledSaddlePoint``;
the package itself solves only through its estimators, so this third implementation of the linear
theory lives in the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba as nb
import numpy as np
import sympy as sp

from symtransfer._validation import check_inputs, check_int, check_real, check_Xy
from symtransfer.activations import apply_elementwise
from symtransfer.errors import ConvergenceError, NoSaddlePointError
from symtransfer.symbolic import SaddlePointSystem, _Sym

__all__ = ["compile_oracle", "CompiledSaddlePoint", "SaddlePointSolution"]


def _njit_scalar(expr, args):
    """Lambdify a scalar SymPy expression with ``math`` and compile it with Numba."""
    return nb.njit(sp.lambdify(args, expr, modules="math"))


@nb.njit(cache=True)
def _kappa_eig(a, k, yt, lam):
    """v^T K v for v = (a K + lam I)^-1 y in the eigenbasis of K."""
    s = 0.0
    for i in range(k.shape[0]):
        r = yt[i] / (a * k[i] + lam)
        s += k[i] * r * r
    return s


@nb.njit
def _solve_single_linear(update, k, yt, lam, gamma, s2, damping, tol, max_iter, hist):
    """Damped fixed point a <- (1-beta) a + beta F(a), F(a) = s^2/(1 - chi(a)) (lambdified from the
    derivation), safeguarded by a bracket on h(a) = a - F(a): h is increasing where chi < 1, so
    steps that leave the bracket or the normalisable region are replaced by bisection."""
    g2 = gamma * gamma
    lo = s2
    hi = s2
    # grow hi until h(hi) > 0 (F(a) -> s^2 as a -> inf)
    for _ in range(2000):
        chi = g2 * _kappa_eig(hi, k, yt, lam)
        if chi < 1.0 and hi - update(chi, s2) > 0.0:
            break
        hi = 2.0 * hi + 1e-300
    a = lo
    chi = g2 * _kappa_eig(a, k, yt, lam)
    if not chi < 1.0:
        a = 0.5 * (lo + hi)
    n = 0
    while n < max_iter:
        chi = g2 * _kappa_eig(a, k, yt, lam)
        if chi < 1.0:
            F = update(chi, s2)
            h = a - F
            if h > 0.0:
                hi = a
            else:
                lo = a
            a_new = (1.0 - damping) * a + damping * F
        else:
            lo = a  # outside the normalisable region: a is too small
            a_new = 0.5 * (lo + hi)
        if not (lo < a_new < hi) and hi > lo:
            a_new = 0.5 * (lo + hi)
        hist[n] = abs(a_new - a) / a
        n += 1
        if abs(a_new - a) <= tol * a:
            return a_new, n, True
        a = a_new
    return a, n, False


def _ridge_stats(A, M, K2, Q, y2, lam2):
    # every step is one dense P x P solve in LAPACK, so these loops stay in Python (compiling them
    # with Numba costs ~20 s per process for no gain); the update maps they call are Numba kernels
    v = np.linalg.solve(A * K2 + M * Q + lam2 * np.eye(y2.shape[0]), y2)
    return v, float(v @ (K2 @ v)), float(v @ (Q @ v))


@nb.njit(cache=True)
def _safeguarded_step(x, F, lo, hi, damping):
    """Damped fixed-point step x <- (1-beta) x + beta F, replaced by bisection of the bracket when it
    leaves it (the maps here have x - F(x) increasing, so the bracket always holds the root)."""
    x_new = (1.0 - damping) * x + damping * F
    if not (lo < x_new < hi):
        x_new = 0.5 * (lo + hi)
    return x_new


def _inner_A(A_upd, t, K2, Q, y2, lam2, c, m, sc2, damping, tol, max_iter):
    """For fixed t, A = A_upd(c, m, rho(A), s_c^2, t) (eq. 3.5): A - A_upd is increasing in A."""
    M = t * m * m
    lo = t * sc2  # rho >= 0, so A >= t s_c^2
    hi = lo + 1.0
    for _ in range(2000):
        v, kap, rho = _ridge_stats(hi, M, K2, Q, y2, lam2)
        if hi - A_upd(c, m, rho, sc2, t) > 0.0:
            break
        hi = 2.0 * hi
    A = lo
    for _ in range(max_iter):
        v, kap, rho = _ridge_stats(A, M, K2, Q, y2, lam2)
        F = A_upd(c, m, rho, sc2, t)
        if A - F > 0.0:
            hi = A
        else:
            lo = A
        A_new = _safeguarded_step(A, F, lo, hi, damping)
        if abs(A_new - A) <= tol * max(A, 1e-300) or hi - lo <= tol * hi:
            return A_new, True
        A = A_new
    return A, False


def _solve_joint_linear(t_upd, A_upd, K2, Q, y2, lam2, c, m, sc2, damping, tol, max_iter, hist):
    """Nested damped fixed points of eq. (3.5): outer t <- t_upd(c, kappa(t)) with t - t_upd increasing
    on the normalisable region c kappa < 1 (outside it t is too small), inner A for each t."""
    lo = 1.0
    hi = 2.0
    for _ in range(2000):
        A, ok = _inner_A(A_upd, hi, K2, Q, y2, lam2, c, m, sc2, damping, tol, max_iter)
        v, kap, rho = _ridge_stats(A, hi * m * m, K2, Q, y2, lam2)
        if c * kap < 1.0 and hi - t_upd(c, kap) > 0.0:
            break
        hi = 2.0 * hi
    t = 1.0
    n = 0
    while n < max_iter:
        A, ok = _inner_A(A_upd, t, K2, Q, y2, lam2, c, m, sc2, damping, tol, max_iter)
        if not ok:
            return t, A, n, False
        v, kap, rho = _ridge_stats(A, t * m * m, K2, Q, y2, lam2)
        if c * kap < 1.0:
            F = t_upd(c, kap)
            if t - F > 0.0:
                hi = t
            else:
                lo = t
            t_new = _safeguarded_step(t, F, lo, hi, damping)
        else:
            lo = t
            t_new = 0.5 * (lo + hi)
        hist[n] = abs(t_new - t) / t
        n += 1
        if abs(t_new - t) <= tol * t or hi - lo <= tol * hi:
            A, ok = _inner_A(A_upd, t_new, K2, Q, y2, lam2, c, m, sc2, damping, tol, max_iter)
            return t_new, A, n, ok
        t = t_new
    return t, A, n, False


@dataclass
class SaddlePointSolution:
    """Numerical solution returned by :meth:`CompiledSaddlePoint.solve` (test oracle).

    ``values`` holds the scalar order parameters (``a, chi, eta`` for a single linear task; ``t, A, M,
    kappa, rho`` for transfer), ``v`` the dual vector, ``Phi`` the train kernel, ``n_iter`` and
    ``residuals`` the solver history; :meth:`predict` is the mean predictor.
    """

    setting: str
    values: dict
    v: np.ndarray
    Phi: np.ndarray
    n_iter: int
    residuals: np.ndarray
    _predict: object = None
    source: "SaddlePointSolution | None" = None
    mc_error: float | None = None

    def predict(self, X) -> np.ndarray:
        """Mean predictor on the rows of ``X`` (eqs. (2.5), (2.10), (3.6))."""
        return self._predict(check_inputs(X, "X"))

    def __getattr__(self, name):
        values = self.__dict__.get("values", {})
        if name in values:
            return values[name]
        raise AttributeError(name)


def _K(XA, XB):
    return XA @ XB.T / XA.shape[1]


def compile_oracle(system) -> "CompiledSaddlePoint":
    """The executable oracle of a derived system (what ``SaddlePointSystem.compile()`` used to return)."""
    if system.activation.growth == "superlinear":
        raise NoSaddlePointError(f"activation {system.activation.name!r} has no saddle point")
    return CompiledSaddlePoint(system)


class CompiledSaddlePoint:
    """Executable form of a :class:`SaddlePointSystem`, built from the derived equations alone.

    The update maps are lambdified from the derived equations and compiled with Numba; the loops
    that iterate them are Numba kernels. Linear activation: the reduced scalar systems (2.9) and
    (3.5), exact. Other activations (setting ``"single"``): the equations (2.3)-(2.5) with the tilted
    average estimated by self-normalised importance sampling from the prior on common random
    numbers, with continuation in ``gamma``; it raises :class:`ConvergenceError` when the effective
    sample size collapses (strong tilt), where ``symtransfer.AdaptiveKernel`` is the tool.
    """

    def __init__(self, system: SaddlePointSystem):
        self.system = system
        self.activation = system.activation
        self.linear = system.is_linear
        S = _Sym
        if self.linear:
            red = (system.source.reduced if system.source is not None else system.reduced)
            self._a_update = _njit_scalar(red["a"].rhs, (S.chi, S.s2 if system.source is None else S.s12))
            if system.setting == "joint":
                self._t_update = _njit_scalar(system.reduced["t"].rhs, (S.c, S.kappa))
                self._A_update = _njit_scalar(system.reduced["A"].rhs, (S.c, S.m, S.rho, S.sc2, S.t))
                self._m_def = sp.lambdify((S.delta, S.lam2), system.reduced["m"].rhs)
                self._sc2_def = sp.lambdify((S.delta, S.lam2, S.T2), system.reduced["s_c^2"].rhs)
                self._c_def = sp.lambdify((S.gamma2, S.delta, S.lam2), system.reduced["c"].rhs)
        else:
            if system.setting != "scratch":
                raise NotImplementedError(
                    "compiled transfer solvers exist for the linear activation; for nonlinear phi use "
                    "symtransfer.AdaptiveKernel(...).transfer(...)")
            self._compiled = self.activation.compile()
            # the tilt exponent c (v.phi)^2 with c = gamma^2/(2 s^2), lambdified from the derivation
            self._coef = _njit_scalar(S.gamma**2 / (2 * S.s2), (S.gamma, S.s2))

    # ------------------------------------------------------------------ single task
    def _solve_single_linear(self, X, y, gamma, lam, T, tol, max_iter, damping):
        s2 = T / lam
        K = _K(X, X)
        evals, U = np.linalg.eigh(0.5 * (K + K.T))
        k = np.ascontiguousarray(np.clip(evals, 0.0, None))
        yt = np.ascontiguousarray(U.T @ y)
        hist = np.zeros(max_iter)
        a, n, ok = _solve_single_linear(self._a_update, k, yt, lam, gamma, s2, damping, tol, max_iter, hist)
        if not ok:
            raise ConvergenceError(f"linear saddle point did not converge in {max_iter} iterations", hist[:n])
        v = U @ (yt / (a * k + lam))
        chi = gamma**2 * float(v @ K @ v)
        g = K @ v
        Phi = s2 * K + gamma**2 * a * np.outer(g, g)
        Xtr = X.copy()

        def predict(Xt, a=a, v=v, Xtr=Xtr):
            return a * (_K(Xt, Xtr) @ v)

        def kernel(XA, XB, s2=s2, gamma=gamma, a=a, v=v, Xtr=Xtr):
            return s2 * _K(XA, XB) + gamma**2 * a * np.outer(_K(XA, Xtr) @ v, _K(XB, Xtr) @ v)

        sol = SaddlePointSolution("scratch", dict(a=a, chi=chi, eta=a - s2, s2=s2), v, Phi, n, hist[:n], predict)
        sol.kernel = kernel
        return sol

    def _solve_single_nonlinear(self, X, y, gamma, lam, T, tol, max_iter, damping, n_samples, seed, n_continuation):
        s2 = T / lam
        P, D = X.shape
        rng = np.random.default_rng(seed)
        Z = rng.standard_normal((n_samples, D))
        Psi = apply_elementwise(self._compiled.phi, np.ascontiguousarray(math.sqrt(s2) * Z @ X.T / math.sqrt(D)))
        hist = []
        # Control variate: the same samples estimate the lazy kernel, whose exact value is the dual
        # kernel; adding (exact - estimate) removes most of the Monte Carlo error at small gamma and
        # makes gamma = 0 exact (eq. (2.7)).
        Kx = _K(X, X)
        d = np.diag(Kx)
        lazy_exact = self.activation.dual_kernel(s2 * d[:, None], s2 * Kx, s2 * d[None, :])
        lazy_mc = Psi.T @ Psi / n_samples
        correction = lazy_exact - lazy_mc
        w = np.full(n_samples, 1.0 / n_samples)
        Phi = lazy_exact.copy()
        n = 0
        ess = float(n_samples)
        for g in np.linspace(0.0, gamma, n_continuation + 1)[1:]:
            c = self._coef(g, s2)
            for _ in range(max_iter):
                v = np.linalg.solve(Phi + lam * np.eye(P), y)
                proj = Psi @ v
                logw = c * proj * proj
                logw -= logw.max()
                w = np.exp(logw)
                w /= w.sum()
                ess = 1.0 / float(np.sum(w * w))
                if ess < 0.01 * n_samples:
                    raise ConvergenceError(
                        f"importance sampling of the tilted measure degenerated (effective sample size "
                        f"{ess:.0f} of {n_samples}) at gamma={g:.3g}: the tilt is too strong for the compiled "
                        "fallback; use symtransfer.AdaptiveKernel", hist)
                Phi_new = Psi.T @ (w[:, None] * Psi) + correction
                err = float(np.linalg.norm(Phi_new - Phi) / np.linalg.norm(Phi_new))
                Phi = (1.0 - damping) * Phi + damping * Phi_new
                hist.append(err)
                n += 1
                if err <= tol:
                    break
            else:
                raise ConvergenceError(f"saddle point did not converge in {max_iter} iterations at gamma={g:.3g}", hist)
        v = np.linalg.solve(Phi + lam * np.eye(P), y)
        phi = self._compiled.phi
        Zc, wc, Xtr = Z, w, X.copy()

        act = self.activation

        def kernel(XA, XB=None):
            XB = Xtr if XB is None else XB
            PA = apply_elementwise(phi, np.ascontiguousarray(math.sqrt(s2) * Zc @ XA.T / math.sqrt(D)))
            PB = apply_elementwise(phi, np.ascontiguousarray(math.sqrt(s2) * Zc @ XB.T / math.sqrt(D)))
            KAB = _K(XA, XB)
            dA, dB = np.einsum("ij,ij->i", XA, XA) / D, np.einsum("ij,ij->i", XB, XB) / D
            exact = act.dual_kernel(s2 * dA[:, None], s2 * KAB, s2 * dB[None, :])
            return PA.T @ (wc[:, None] * PB) + exact - PA.T @ PB / PA.shape[0]

        def predict(Xt):
            return kernel(Xt, Xtr) @ v

        sol = SaddlePointSolution("scratch", dict(ess=ess, s2=s2), v, Phi, n, np.array(hist), predict,
                                  mc_error=1.0 / math.sqrt(ess))
        sol.kernel = kernel
        return sol

    def solve(self, X=None, y=None, *, gamma=1.0, weight_decay=1.0, temperature=1.0, tol=1e-13, max_iter=10000,
              damping=0.5, n_samples=20000, seed=0, n_continuation=5):
        """Solve the single-task saddle point on ``(X, y)``.

        Parameters
        ----------
        X, y : arrays (P, D), (P,)
            Training data; default: ``task.X_train``, ``task.y_train`` of the ``task`` given to :func:`derive`.
        gamma : float >= 0;  weight_decay : float > 0;  temperature : float > 0
        tol : float
            Relative step size at which the iteration stops.
        damping : float in (0, 1]
            Fraction of the fixed-point update taken per step.
        n_samples, seed, n_continuation :
            Nonlinear activations only: prior samples (common random numbers), seed, and number of
            continuation steps in ``gamma``.

        Returns
        -------
        SaddlePointSolution
        """
        if self.system.setting != "scratch":
            raise ValueError(f"solve() is for setting 'scratch'; this system is {self.system.setting!r}: "
                             "use solve_transfer()")
        if X is None and y is None and self.system.task is not None:
            X, y = self.system.task.X_train, self.system.task.y_train
        X, y = check_Xy(X, y)
        gamma = check_real("gamma", gamma, low=0.0)
        lam = check_real("weight_decay", weight_decay, low=0.0, low_open=True)
        T = check_real("temperature", temperature, low=0.0, low_open=True)
        tol = check_real("tol", tol, low=0.0, low_open=True)
        damping = check_real("damping", damping, low=0.0, low_open=True, high=1.0)
        max_iter = check_int("max_iter", max_iter, low=1)
        if self.linear:
            return self._solve_single_linear(X, y, gamma, lam, T, tol, max_iter, damping)
        n_samples = check_int("n_samples", n_samples, low=100)
        n_continuation = check_int("n_continuation", n_continuation, low=1)
        return self._solve_single_nonlinear(X, y, gamma, lam, T, max(tol, 1e-10), max_iter, damping,
                                            n_samples, seed, n_continuation)

    # ------------------------------------------------------------------ transfer (linear)
    def solve_transfer(self, X1, y1, X2, y2, *, source=None, gamma=1.0, weight_decay=1.0, temperature=1.0,
                       coupling=None, tol=1e-13, max_iter=10000, damping=0.5):
        """Solve source then target (settings ``"finetune"`` and ``"joint"``, linear activation).

        ``source`` is a dict of the source hyper-parameters (``gamma, weight_decay, temperature``);
        ``gamma, weight_decay, temperature`` are the target's; ``coupling`` is ``delta`` (ignored for
        ``"finetune"``, which is ``delta -> inf``).
        """
        if self.system.setting == "scratch":
            raise ValueError("solve_transfer() needs setting 'finetune' or 'joint'")
        if not self.linear:
            raise NotImplementedError("compiled transfer needs the linear activation")
        X1, y1 = check_Xy(X1, y1, "X1", "y1")
        X2, y2 = check_Xy(X2, y2, "X2", "y2", n_features=X1.shape[1])
        src = {"gamma": 1.0, "weight_decay": 1.0, "temperature": 1.0, **(source or {})}
        g1 = check_real("source gamma", src["gamma"], low=0.0)
        lam1 = check_real("source weight_decay", src["weight_decay"], low=0.0, low_open=True)
        T1 = check_real("source temperature", src["temperature"], low=0.0, low_open=True)
        s_sol = self._solve_single_linear(X1, y1, g1, lam1, T1, tol, max_iter, damping)
        g2 = check_real("gamma", gamma, low=0.0)
        lam2 = check_real("weight_decay", weight_decay, low=0.0, low_open=True)
        T2 = check_real("temperature", temperature, low=0.0, low_open=True)
        K2 = _K(X2, X2)
        Q = s_sol.kernel(X2, X2)
        if self.system.setting == "finetune":
            delta = math.inf
        else:
            delta = check_real("coupling", coupling if coupling is not None else 1.0, low=0.0, allow_inf=True)
        if math.isinf(delta):
            t, A, M, n, hist = 1.0, 0.0, 1.0, 0, np.zeros(0)
            v = np.linalg.solve(Q + lam2 * np.eye(len(y2)), y2)
        else:
            m = float(self._m_def(delta, lam2))
            sc2 = float(self._sc2_def(delta, lam2, T2))
            c = float(self._c_def(g2, delta, lam2))
            hist = np.zeros(max_iter)
            t, A, n, ok = _solve_joint_linear(self._t_update, self._A_update, np.ascontiguousarray(K2),
                                              np.ascontiguousarray(Q), y2, lam2, c, m, sc2, damping, tol,
                                              max_iter, hist)
            hist = hist[:n]
            if not ok:
                raise ConvergenceError(f"transfer saddle point did not converge in {max_iter} iterations", hist)
            M = t * m * m
            v = np.linalg.solve(A * K2 + M * Q + lam2 * np.eye(len(y2)), y2)
        kap, rho = float(v @ K2 @ v), float(v @ Q @ v)
        X2c = X2.copy()

        def predict(Xt, A=A, M=M, v=v):
            return (A * _K(Xt, X2c) + M * s_sol.kernel(Xt, X2c)) @ v

        return SaddlePointSolution(self.system.setting, dict(t=t, A=A, M=M, kappa=kap, rho=rho), v,
                                   A * K2 + M * Q, n, hist, predict, source=s_sol)
