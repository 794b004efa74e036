"""Gradient-flow (and Langevin) dynamics of the infinite-width network as a neuron population.

Implements docs/theory.md section 4. Each neuron is a single-site process in preactivation space
(eq. (4.1)); the ``N -> infinity`` limit is approximated by a population of ``M`` sampled neurons
whose only coupling is the residual on the training points (eq. (4.2)). The cost of a right-hand
side is ``O(M P^2)`` (one BLAS product) plus ``O(M P)`` elementwise work, whatever the input
dimension ``D`` is, because the preactivations on evaluation inputs are never integrated: they are
an affine function of per-neuron coefficients on the training inputs plus a deterministic decay and
an independent Ornstein-Uhlenbeck part (eq. (4.4)). The same affine map, with the untracked initial
preactivations drawn conditionally on the tracked ones, predicts on any input (eq. (4.7)).

Time stepping (docs/theory.md eqs. (4.8)-(4.9)):

* ``dt=None`` and ``temperature=0`` (default): an embedded Runge-Kutta pair with error control
  (Bogacki-Shampine 3(2) by default, Dormand-Prince 5(4) on request), tolerance ``rtol``/``atol`` on
  the root-mean-square error of the population state; the step shrinks when the tangent kernel grows.
* ``dt=None`` and ``temperature>0``: Euler-Maruyama whose step follows the stability bound (4.6),
  re-evaluated at every record, and the weak-error bound ``dt (lambda + delta)/2 <= rtol`` on the
  stationary variance.
* explicit ``dt``: the fixed Euler(-Maruyama) step. Neuron by neuron it is the step of a width-``M``
  network integrated with the same step (docs/theory.md eq. (1.4)) written in preactivation space,
  so a population started from a network's initial preactivations follows that network exactly.
"""

from __future__ import annotations

import functools
import math
import warnings

import numba as nb
import numpy as np
from scipy.linalg import lapack
from threadpoolctl import ThreadpoolController

from .._validation import check_inputs, check_int, check_real, check_targets
from ..activations import get_activation
from ..base import TransferEstimator, target_seed
from ..errors import ConvergenceWarning, DivergenceError

__all__ = ["GradientFlowDMFT", "StepSizeError"]

# The reduction over neurons runs over a fixed number of blocks (not one per thread) so that its
# floating-point order, hence every result, does not depend on the thread count.
_N_BLOCKS = 32
# Default tolerances (rtol=None). T = 0: local error of the adaptive Runge-Kutta step (4.8), which puts
# the linear closed forms within 1e-4 (measured); T > 0: the Euler-Maruyama bias of the stationary
# variance (4.9), 0.2%, below the ~1% Monte Carlo error of a time average of 2000 neurons.
_RTOL_T0 = 1e-3
_RTOL_T = 2e-3
# Largest number of Gaussian draws generated in one NumPy call (bounds the memory of a noise chunk).
_NOISE_CHUNK = 4_000_000


class StepSizeError(DivergenceError):
    """The time stepping of the population cannot go on at the requested accuracy or stability.

    Raised when a fixed Euler step ``dt`` exceeds the linear stability bound (4.6) as the tangent
    kernel grows, when the adaptive step underflows or exceeds ``max_steps`` before ``t_max``, or
    when the population state becomes non-finite.

    Attributes
    ----------
    step : int
        Number of accepted steps when the failure was found.
    dt : float
        The step in use (``lr`` is the same value, kept for backwards compatibility).
    bound : float or None
        The stability bound ``2 / (theta_max + lambda + delta)`` at that point (docs/theory.md eq. (4.6)).
    time : float or None
        Training time reached.
    error : float or None
        The last scaled error estimate of the adaptive step (``<= 1`` is accepted).
    """

    def __init__(self, step: int, dt: float, bound: float | None = None, *, time: float | None = None,
                 error: float | None = None, reason: str | None = None):
        self.step, self.dt, self.lr = int(step), float(dt), float(dt)
        self.bound = None if bound is None else float(bound)
        self.time = None if time is None else float(time)
        self.error = None if error is None else float(error)
        if reason is None:
            msg = (f"dt={dt:g} exceeds the Euler stability bound 2/(theta_max + lambda + delta) = {bound:g} of the "
                   f"population dynamics at step {step} (the neural tangent kernel grew during feature learning); "
                   f"use dt <= {0.5 * bound:g}, or dt=None for the error-controlled step")
        else:
            where = f"at step {step}" + ("" if time is None else f", t = {time:g}")
            diag = [f"dt={dt:g}"]
            if bound is not None:
                diag.append(f"stability bound {bound:g}")
            if error is not None:
                diag.append(f"error estimate {error:.3g} x tolerance")
            msg = f"{reason} {where} ({', '.join(diag)})"
        Exception.__init__(self, msg)


_controller = None  # scanning the loaded libraries costs ~4 ms: once per process


def _one_blas_thread(method):
    """Run ``method`` with single-threaded BLAS.

    The solver alternates parallel Numba kernels with BLAS products of a few milliseconds; when
    other work holds a core every multi-threaded call waits for all its threads (measured, 2 shared
    cores, M = 2000, P = 160: a fit took 20 s with the default pool, 2.8 s single-threaded).
    """
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        global _controller
        if _controller is None:
            _controller = ThreadpoolController()
        with _controller.limit(limits=1, user_api="blas"):
            return method(*args, **kwargs)
    return wrapper


# ------------------------------------------------------------------------------------------ kernels
def _advance_py(phi, dphi, H, C, a, Href, Ktt, y, r, n_steps, dt, gamma, lam, delta, freeze_h,
                noise_on, sq, UhT, UcT, xi, xa):
    """Advance the population ``n_steps`` Euler(-Maruyama) steps of eq. (4.1) in place.

    ``H`` (M, P) preactivations on training inputs, ``C`` (M, P) span coefficients (eq. (4.4)),
    ``a`` (M,) readouts, ``r`` (P,) residuals of the current state (updated on return).
    Noise: ``xi[s]`` (M, rank) drives ``H`` and ``C`` through ``UhT``/``UcT`` (rank, P); ``xa[s]``
    (M,) the readouts. The O(M P^2) products go to BLAS; the O(M P) passes are loops over neurons.
    """
    M, P = H.shape
    nblk = min(_N_BLOCKS, M)
    bs = (M + nblk - 1) // nblk
    lamh = lam + delta
    inv = 1.0 / (gamma * M)
    partial = np.zeros((nblk, P))
    Z = np.empty((M, P))
    KZ = np.empty((M, P))
    NH = np.zeros((M, P))
    NC = np.zeros((M, P))
    for s in range(n_steps):
        # backward signal z = gamma a r phi'(h) and the readout step, from the old state
        for i in nb.prange(M):
            ai = a[i]
            ga = 0.0
            for mu in range(P):
                hm = H[i, mu]
                ga += r[mu] * phi(hm)
                Z[i, mu] = gamma * ai * r[mu] * dphi(hm)
            anew = ai + dt * (gamma * ga - lam * ai)
            if noise_on:
                anew += sq * xa[s, i]
            a[i] = anew
        if not freeze_h:
            np.dot(Z, Ktt, KZ)
            if noise_on:
                np.dot(xi[s], UhT, NH)
                np.dot(xi[s], UcT, NC)
        for b in nb.prange(nblk):
            for mu in range(P):
                partial[b, mu] = 0.0
            for i in range(b * bs, min(M, (b + 1) * bs)):
                if not freeze_h:
                    for mu in range(P):
                        hmu = H[i, mu]
                        drift = KZ[i, mu] - lamh * hmu
                        if delta != 0.0:
                            drift += delta * Href[i, mu]
                        H[i, mu] = hmu + dt * drift + sq * NH[i, mu]
                        C[i, mu] += dt * (Z[i, mu] - lamh * C[i, mu]) + sq * NC[i, mu]
                ai = a[i]
                for mu in range(P):
                    partial[b, mu] += ai * phi(H[i, mu])
        for mu in range(P):
            f = 0.0
            for b in range(nblk):
                f += partial[b, mu]
            r[mu] = y[mu] - f * inv


def _rhs_py(phi, dphi, H, C, a, Href, Ktt, y, gamma, lam, delta, freeze_h, F, Z, kH, kC, ka, r, partial):
    """Right-hand side of eq. (4.1) at ``T = 0`` with (4.4) for the span coefficients.

    Writes ``kH = K_tt z - (lambda+delta) h + delta h_ref``, ``kC = z - (lambda+delta) C`` and
    ``ka = gamma phi(h).r - lambda a`` (``ka`` and ``a`` are (M, 1)), with ``z = gamma a r phi'(h)``
    and ``r = y - E[a phi(h)]/gamma`` reduced over a fixed number of neuron blocks.
    """
    M, P = H.shape
    nblk = partial.shape[0]
    bs = (M + nblk - 1) // nblk
    lamh = lam + delta
    for b in nb.prange(nblk):
        for mu in range(P):
            partial[b, mu] = 0.0
        for i in range(b * bs, min(M, (b + 1) * bs)):
            ai = a[i, 0]
            for mu in range(P):
                v = phi(H[i, mu])
                F[i, mu] = v
                partial[b, mu] += ai * v
    inv = 1.0 / (gamma * M)
    for mu in range(P):
        f = 0.0
        for b in range(nblk):
            f += partial[b, mu]
        r[mu] = y[mu] - f * inv
    for i in nb.prange(M):
        ai = a[i, 0]
        ga = 0.0
        for mu in range(P):
            ga += r[mu] * F[i, mu]
            if not freeze_h:
                Z[i, mu] = gamma * ai * r[mu] * dphi(H[i, mu])
        ka[i, 0] = gamma * ga - lam * ai
    if not freeze_h:
        np.dot(Z, Ktt, kH)
        for i in nb.prange(M):
            for mu in range(P):
                v = kH[i, mu] - lamh * H[i, mu]
                if delta != 0.0:
                    v += delta * Href[i, mu]
                kH[i, mu] = v
                kC[i, mu] = Z[i, mu] - lamh * C[i, mu]


def _combine_py(Y, K, coef, ns, out):
    """``out = Y + sum_{j < ns} coef[j] K[j]`` (a Runge-Kutta stage or the new state)."""
    M, P = Y.shape
    for i in nb.prange(M):
        for mu in range(P):
            v = Y[i, mu]
            for j in range(ns):
                c = coef[j]
                if c != 0.0:
                    v += c * K[j, i, mu]
            out[i, mu] = v


def _err_sq_py(K, ecoef, ns, Y, partial):
    """Blockwise ``(sum (sum_j ecoef[j] K[j])^2, sum Y^2)`` (the embedded error estimate and the
    size of the new state), in a fixed reduction order."""
    M, P = Y.shape
    nblk = partial.shape[0]
    bs = (M + nblk - 1) // nblk
    for b in nb.prange(nblk):
        e2 = 0.0
        y2 = 0.0
        for i in range(b * bs, min(M, (b + 1) * bs)):
            for mu in range(P):
                v = 0.0
                for j in range(ns):
                    v += ecoef[j] * K[j, i, mu]
                e2 += v * v
                y2 += Y[i, mu] * Y[i, mu]
        partial[b, 0] = e2
        partial[b, 1] = y2
    e2 = 0.0
    y2 = 0.0
    for b in range(nblk):
        e2 += partial[b, 0]
        y2 += partial[b, 1]
    return e2, y2


# A parallel region costs a thread wake-up and a barrier; on a loaded machine this dominates small
# populations, so the same bodies are also compiled serially and used below a work threshold.
# (The activation is a function argument, so these specialisations cannot be cached on disk.)
_advance_par = nb.njit(parallel=True)(_advance_py)
_advance_ser = nb.njit(_advance_py)
_rhs_par = nb.njit(parallel=True)(_rhs_py)
_rhs_ser = nb.njit(_rhs_py)
_combine_par = nb.njit(parallel=True, cache=True)(_combine_py)
_combine_ser = nb.njit(cache=True)(_combine_py)
_err_sq_par = nb.njit(parallel=True, cache=True)(_err_sq_py)
_err_sq_ser = nb.njit(cache=True)(_err_sq_py)
# (elementwise work M*P per step; measured on 2 shared cores)
_PARALLEL_MIN_WORK = 2_000_000


@nb.njit
def _features(phi, dphi, H, a, want_g):
    """``phi(H)`` and, if ``want_g``, ``a * phi'(H)`` (both (M, P)), for the summary statistics."""
    M, P = H.shape
    F = np.empty((M, P))
    Gd = np.empty((M, P)) if want_g else np.empty((0, 0))
    for i in range(M):
        for mu in range(P):
            F[i, mu] = phi(H[i, mu])
            if want_g:
                Gd[i, mu] = a[i] * dphi(H[i, mu])
    return F, Gd


# ------------------------------------------------------------------------------------------ tableaus
class _Tableau:
    """An explicit embedded Runge-Kutta pair with the first-same-as-last property: the last stage
    is evaluated at the new state, so an accepted step costs ``stages - 1`` right-hand sides."""

    def __init__(self, A, b, b_low, order_low):
        self.A = np.asarray(A, dtype=np.float64)
        self.b = np.asarray(b, dtype=np.float64)
        self.e = self.b - np.asarray(b_low, dtype=np.float64)
        self.stages = self.A.shape[0]
        self.exponent = 1.0 / (order_low + 1.0)
        assert np.allclose(self.A[-1], self.b)

    def stability(self, z: float) -> float:
        """``R(z) = 1 + z b^T (I - z A)^{-1} 1``: one step of ``de/dt = -(lambda + delta) e`` at
        ``z = -(lambda + delta) h``. The decay of the evaluation inputs (eq. (4.4)) uses it, so that
        they follow the same discrete map as the integrated training preactivations."""
        n = self.stages
        return float(1.0 + z * self.b @ np.linalg.solve(np.eye(n) - z * self.A, np.ones(n)))


_BS3 = _Tableau(
    [[0, 0, 0, 0], [1 / 2, 0, 0, 0], [0, 3 / 4, 0, 0], [2 / 9, 1 / 3, 4 / 9, 0]],
    [2 / 9, 1 / 3, 4 / 9, 0], [7 / 24, 1 / 4, 1 / 3, 1 / 8], 2)
_DP5 = _Tableau(
    [[0, 0, 0, 0, 0, 0, 0],
     [1 / 5, 0, 0, 0, 0, 0, 0],
     [3 / 40, 9 / 40, 0, 0, 0, 0, 0],
     [44 / 45, -56 / 15, 32 / 9, 0, 0, 0, 0],
     [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729, 0, 0, 0],
     [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656, 0, 0],
     [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0]],
    [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0],
    [5179 / 57600, 0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40], 4)
_METHODS = {"bs3": _BS3, "dp5": _DP5}


# ------------------------------------------------------------------------------------------ helpers
def _psd_factor(K: np.ndarray, scale: float, rtol: float = 1e-10):
    """Eigen-factor ``K = U diag(s) U^T`` keeping eigenvalues above ``rtol * scale``.

    ``K`` is a Gram matrix (or Schur complement of one) of rank at most ``D``; ``scale`` is the size
    of the input kernel, so directions below ``rtol * scale`` are round-off even when all of ``K`` is
    (evaluation inputs inside the span of the training inputs).
    """
    s, U = np.linalg.eigh(K)
    keep = s > rtol * scale
    return U[:, keep], s[keep]


def _solve_psd(A, b):
    """``A^{-1} b`` for a PSD ``A``, least squares if singular (no ridge: ``weight_decay = 0``)."""
    try:
        return np.linalg.solve(A, b)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(A, b, rcond=None)[0]


def _gram_factor(K: np.ndarray, rtol: float = 1e-12, scale: float | None = None) -> np.ndarray:
    """``F`` with ``F F^T = K`` from a pivoted Cholesky factorisation (rank-revealing, so a Gram
    matrix of rank ``< len(K)``, e.g. with ``P > D`` or repeated inputs, is factored exactly).
    Pivots below ``rtol * scale`` (default: the largest diagonal entry) are dropped as round-off."""
    n = K.shape[0]
    if n == 0:
        return np.zeros((0, 0))
    top = float(np.max(np.diag(K)))
    scale = top if scale is None else scale
    if top <= rtol * scale or top <= 0.0:
        return np.zeros((n, 0))
    c, piv, rank, info = lapack.dpstrf(K, lower=1, tol=rtol * max(scale, 1e-300))
    if info < 0:  # pragma: no cover - LAPACK argument error
        raise ValueError(f"pivoted Cholesky failed (info={info})")
    L = np.tril(c)[:, :rank]
    F = np.empty((n, rank))
    F[piv - 1] = L
    return F


def _top_eigenvalue(A: np.ndarray, v0: np.ndarray, iters: int = 60) -> tuple[float, np.ndarray]:
    """Largest eigenvalue of a PSD matrix by power iteration from ``v0`` (warm-started across records).

    Cheaper than a LAPACK eigensolver per record and accurate to the digits a step-size check needs.
    """
    v = v0 / max(np.linalg.norm(v0), 1e-300)
    lam = 0.0
    for _ in range(iters):
        w = A @ v
        lam_new = float(v @ w)
        nw = np.linalg.norm(w)
        if nw == 0.0:
            return 0.0, v0
        v = w / nw
        if abs(lam_new - lam) <= 1e-6 * abs(lam_new):
            lam = lam_new
            break
        lam = lam_new
    # both the Rayleigh quotient and |A v| (|v| = 1) approach lambda_max from below; take the closer
    return max(lam, float(np.linalg.norm(A @ v))), v


def _whiten_rows(Xi: np.ndarray) -> np.ndarray:
    """``Xi`` (M, k) mapped so that ``Xi^T Xi / M = I`` exactly (moment-matched Gaussian draws)."""
    M, k = Xi.shape
    if k == 0:
        return Xi
    S = Xi.T @ Xi / M
    s, U = np.linalg.eigh(0.5 * (S + S.T))
    return Xi @ (U / np.sqrt(s)) @ U.T


def _log_grid(t_max: float, n: int) -> np.ndarray:
    """``0`` then ``n - 1`` times uniform in ``log t`` over three decades up to ``t_max``."""
    if n <= 2:  # logspace with one point would return the decade's start, not t_max
        return np.array([0.0, t_max])
    return np.concatenate([[0.0], t_max * np.logspace(-3.0, 0.0, n - 1)])


def _best_on_curve(times, loss):
    """Minimum of a recorded loss curve, refined by a parabola in ``log t`` through the best record
    and its neighbours (records are uniform in ``log t`` by default)."""
    times, loss = np.asarray(times), np.asarray(loss)
    k = int(np.argmin(loss))
    t_best, l_best = float(times[k]), float(loss[k])
    if 1 <= k - 1 and k + 1 < len(times) and times[k - 1] > 0:
        u = np.log(times[k - 1:k + 2])
        c = np.polyfit(u - u[1], loss[k - 1:k + 2], 2)
        if c[0] > 0:
            u_opt = -c[1] / (2 * c[0])
            if u[0] - u[1] <= u_opt <= u[2] - u[1]:
                val = float(np.polyval(c, u_opt))
                # a steep, skewed triple can put the parabola's vertex below zero: a loss cannot be
                if 0.0 <= val <= l_best:
                    t_best, l_best = float(math.exp(u[1] + u_opt)), val
    return t_best, l_best


class GradientFlowDMFT(TransferEstimator):
    """Population solver of the gradient-flow / Langevin DMFT (docs/theory.md section 4).

    Regime ``"dynamics"`` (docs/estimators.md): ``weight_decay >= 0``, ``temperature >= 0`` with the
    default ``temperature=0`` (gradient flow; the equilibrium theories default to ``T = 1``).
    :meth:`predict` reaches any input at ``T = 0`` (eq. (4.7)); at ``T > 0`` (or with
    ``average_from``) only the inputs tracked at fit time (``X``, ``X_eval``/``eval_set``).

    Cost: ``O(M P^2)`` per right-hand side (one ``(M, P) x (P, P)`` BLAS product) plus ``O(M P)``
    elementwise work, independent of the input dimension ``D``; records cost ``O(M Q^2)`` with ``Q``
    tracked inputs; memory ``O(s M P)`` for ``s`` Runge-Kutta stages (4 for ``"bs3"``, 7 for
    ``"dp5"``). Predicting on ``n`` untracked inputs costs ``O(M n (P + Q))`` plus an ``O((Q + n) D
    min(Q, D))`` factorisation (eq. (4.7)).

    Parameters
    ----------
    activation : str, sympy.Expr or Activation
        The nonlinearity ``phi``.
    gamma : float > 0
        Feature-learning strength ``gamma``.
    weight_decay : float >= 0
        ``lambda``.
    temperature : float >= 0
        ``T``; ``0`` (default) is gradient flow.
    population : int >= 1
        Number ``M`` of sampled neurons.
    dt : float > 0 or None
        ``None`` (default): error-controlled step (eqs. (4.8)-(4.9)). A number: fixed Euler(-Maruyama)
        step, checked against the stability bound (4.6) when ``check_stability``.
    t_max : float > 0
        Training time (with ``early_stop=False``, the finite training time ``t1`` of a source).
    coupling : float >= 0 or inf
        Elastic coupling ``delta`` to the reference preactivations (``inf``: hidden features frozen,
        only the readouts learn).
    init_scale : float > 0
        ``sigma_0``: ``h(0) ~ N(0, sigma_0^2 K)``, ``a(0) ~ N(0, sigma_0^2)``.
    n_records : int >= 2
        Number of recorded points of the loss and kernel curves.
    tol : float > 0
        Early stop (``temperature = 0`` only) when both the relative change of ``Phi`` and the change
        of the train loss over ``mean(y^2)`` per unit time fall below ``tol``.
    early_stop : bool
        ``False`` runs to ``t_max`` (finite training time) and never warns.
    average_from : float in [0, 1) or None
        If set, predictions and kernels are averaged over the records with ``t >= average_from *
        t_end`` (use at ``temperature > 0``, where the population fluctuates).
    check_stability : bool
        With a fixed ``dt``: check it against the bound (4.6) at the start and at every record.
    seed : int
    rtol : float in (0, 1] or None
        Tolerance of the adaptive step (``dt=None``). At ``temperature = 0`` the root-mean-square local
        error of the preactivations and of the readouts, each relative to the root-mean-square size
        of that block, must stay below ``atol + rtol * size`` (eq. (4.8)); default ``1e-4``. At
        ``temperature > 0`` it bounds the Euler-Maruyama bias of the stationary variance,
        ``dt (lambda + delta) / 2 <= rtol`` (eq. (4.9)); default ``2e-3``.
    atol : float > 0
        Absolute part of the tolerance (eq. (4.8)).
    method : {"bs3", "dp5"}
        Embedded Runge-Kutta pair at ``T = 0``: Bogacki-Shampine 3(2) (default; cheaper at equal
        accuracy, measured, since the ReLU kink limits any higher order) or Dormand-Prince 5(4).
    init : {"auto", "iid", "moment_matched"}
        Initial draw. ``"moment_matched"`` maps the Gaussian draws of ``(a, h)`` so that their
        empirical second moments are exactly the law's (``E[a^2] = sigma_0^2``, ``E[h h^T] =
        sigma_0^2 K``, ``E[a h] = 0``); for linear ``phi`` the population's dynamics depend on these
        moments only, so the result is the infinite-width one at any ``M > rank K``. ``"auto"``:
        moment-matched for linear ``phi``, i.i.d. otherwise.
    record_spacing : {"auto", "log", "uniform"}
        Record times. ``"auto"``: uniform in ``log t`` (three decades up to ``t_max``, the grid on
        which ``best_time_`` is located) for the adaptive ``T = 0`` step, uniform otherwise.
    max_steps : int >= 1
        Largest number of steps of a run; exceeding it raises :class:`StepSizeError`.

    Attributes
    ----------
    history_ : dict of arrays
        ``"time"``, ``"train_loss"``, ``"test_loss"`` (mean squared errors; ``"test_loss"`` is empty
        unless ``y_eval``/``eval_set`` was given; ``"eval_loss"`` is a deprecated alias), ``"step"`` (steps taken), ``"dt"`` (step in use),
        ``"phi_change"`` (relative change of ``Phi`` per unit time: the instantaneous rate from the
        right-hand side with the adaptive ``T = 0`` step, a difference quotient between records otherwise).
        After a lazy :meth:`transfer`, ``Phi_`` and ``ntk_`` are the tangent kernel ``Theta1`` and
        ``a_`` is zero (the linearised flow has no population readouts).
    Phi_t_, G_t_ : ndarray (n_records, P, P)
        ``Phi(t) = E[phi(h) phi(h)^T]`` and ``G(t) = E[a^2 phi'(h) phi'(h)^T]`` on the training inputs.
    Phi_ : ndarray (P, P)
        Final (or time-averaged) ``Phi`` on the training inputs.
    ntk_ : ndarray (P, P)
        Final ``Phi + G * K`` (eq. (4.5)).
    H_, a_ : ndarray
        Final population: preactivations (M, P + P_eval) on ``[X; X_eval]`` and readouts (M,).
    n_features_in_ : int
    converged_ : bool
        Early stop reached (``False`` at ``t_max`` emits a :class:`~symtransfer.errors.ConvergenceWarning`
        when ``early_stop`` is on and ``temperature = 0``).
    n_iter_, n_steps_ : int
        Accepted steps. ``n_rejected_``, ``n_rhs_``: rejected steps and right-hand-side evaluations.
    t_end_, dt_ : float
        Final time and last step.
    best_time_, best_test_loss_ : float
        Early-stopping optimum of the ``"test_loss"`` curve (only when ``y_eval`` was given).
    fixed_point_residual_ : float
        Relative residual of the fixed-point equations (4.3) in the final state (meaningful at ``T = 0``).
    krr_residual_ : float
        ``|f - Phi (Phi + lambda I)^{-1} y| / |y|`` on the training inputs (eq. (4.3)).
    mode_ : str
        ``"fit"`` for a population trained from its initial law, or the :meth:`transfer` mode.
    """

    def __init__(self, activation="relu", gamma=1.0, weight_decay=1.0, temperature=0.0, population=2000,
                 dt=None, t_max=20.0, coupling=0.0, init_scale=1.0, n_records=100, tol=1e-5,
                 early_stop=True, average_from=None, check_stability=True, seed=0, rtol=None, atol=1e-8,
                 method="bs3", init="auto", record_spacing="auto", max_steps=1_000_000):
        self.activation = activation
        self.gamma = gamma
        self.weight_decay = weight_decay
        self.temperature = temperature
        self.population = population
        self.dt = dt
        self.t_max = t_max
        self.coupling = coupling
        self.init_scale = init_scale
        self.n_records = n_records
        self.tol = tol
        self.early_stop = early_stop
        self.average_from = average_from
        self.check_stability = check_stability
        self.seed = seed
        self.rtol = rtol
        self.atol = atol
        self.method = method
        self.init = init
        self.record_spacing = record_spacing
        self.max_steps = max_steps

    _regime = "dynamics"

    # ------------------------------------------------------------------------------ validation
    def _validated(self):
        hyper = self._check_hyper()
        p = {
            "gamma": hyper["gamma"],
            "lam": hyper["weight_decay"],
            "T": hyper["temperature"],
            "M": check_int("population", self.population, low=1),
            "t_max": check_real("t_max", self.t_max, low=0.0, low_open=True),
            "delta": check_real("coupling", self.coupling, low=0.0, allow_inf=True),
            "sigma0": check_real("init_scale", self.init_scale, low=0.0, low_open=True),
            "n_records": check_int("n_records", self.n_records, low=2),
            "tol": check_real("tol", self.tol, low=0.0, low_open=True),
            "seed": check_int("seed", self.seed, low=0),
            "rtol": (_RTOL_T0 if self.temperature == 0 else _RTOL_T) if self.rtol is None else
            check_real("rtol", self.rtol, low=0.0, low_open=True, high=1.0),
            "atol": check_real("atol", self.atol, low=0.0, low_open=True),
            "max_steps": check_int("max_steps", self.max_steps, low=1),
        }
        p["dt"] = None if self.dt is None else check_real("dt", self.dt, low=0.0, low_open=True)
        if self.average_from is None:
            p["avg"] = None
        else:
            p["avg"] = check_real("average_from", self.average_from, low=0.0)
            if p["avg"] >= 1.0:
                raise ValueError(f"average_from must be in [0, 1), got {self.average_from!r}")
        for name, value, allowed in (("method", self.method, _METHODS), ("init", self.init,
                                     ("auto", "iid", "moment_matched")),
                                     ("record_spacing", self.record_spacing, ("auto", "log", "uniform"))):
            if not isinstance(value, str) or value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        for name in ("early_stop", "check_stability"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        self._act = get_activation(self.activation)
        return p

    # ------------------------------------------------------------------------------ fitting
    @_one_blas_thread
    def fit(self, X, y, X_eval=None, *, y_eval=None, eval_set=None, h0=None, a0=None, h_ref=None):
        """Integrate the population dynamics on the training set ``(X, y)``.

        Parameters
        ----------
        X : array (P, D)
            Training inputs; residuals are taken on these only.
        y : array (P,)
        X_eval : array (P_eval, D), optional
            Further inputs on which the preactivations are tracked (test inputs, or target inputs
            of a later :meth:`transfer`). Optional at ``T = 0``, where :meth:`predict` reaches any
            input; needed for the curves ``"test_loss"`` and at ``T > 0``.
        y_eval : array (P_eval,), optional
            Targets on ``X_eval``, for the ``"test_loss"`` curve and ``best_time_``.
        eval_set : tuple (X_test, y_test), optional
            The common spelling (docs/estimators.md) of ``X_eval=X_test, y_eval=y_test``.
        h0 : array (M, P + P_eval), optional
            Initial preactivations on ``[X; X_eval]`` (e.g. those of a simulated network, to follow
            it neuron by neuron); overrides ``population`` with ``M = h0.shape[0]``. Default
            ``h0 ~ N(0, sigma_0^2 K)`` (see ``init``). Untracked inputs are then drawn as if ``h0``
            had that law.
        a0 : array (M,), optional
            Initial readouts; default ``N(0, sigma_0^2)``.
        h_ref : array (M, P + P_eval), optional
            Reference preactivations of the coupling ``delta`` (default: ``h0``); with a custom
            ``h_ref`` only tracked inputs can be predicted.

        Returns
        -------
        self
        """
        p = self._validated()
        X = check_inputs(X, "X")
        y = check_targets(y, X.shape[0], "y")
        D = X.shape[1]
        if eval_set is not None:
            if X_eval is not None or y_eval is not None:
                raise ValueError("pass the test set either as eval_set=(X_test, y_test) or as X_eval/y_eval, "
                                 "not both")
            X_eval, y_eval = self._check_eval_set(eval_set, D)
        if X_eval is None:
            Xe = np.empty((0, D))
        else:
            Xe = check_inputs(X_eval, "X_eval", n_features=D)
        ye = None if y_eval is None else check_targets(y_eval, Xe.shape[0], "y_eval")
        if y_eval is not None and X_eval is None:
            raise ValueError("y_eval was given without X_eval")
        X_all = np.ascontiguousarray(np.vstack([X, Xe]))
        P, Q = X.shape[0], X_all.shape[0]
        K_all = X_all @ X_all.T / D
        rng = np.random.default_rng(p["seed"])
        moment = self.init == "moment_matched" or (self.init == "auto" and self._act.is_linear)

        if h0 is None:
            M = p["M"]
            Fk = _gram_factor(K_all)
            Xi = rng.standard_normal((M, Fk.shape[1]))
            if moment and a0 is None and M > Fk.shape[1] + 1:
                Xa = _whiten_rows(np.hstack([Xi, rng.standard_normal((M, 1))]))
                Xi, A0 = Xa[:, :-1], p["sigma0"] * Xa[:, -1]
            else:
                A0 = None
            H0 = p["sigma0"] * Xi @ Fk.T
        else:
            H0 = np.array(h0, dtype=np.float64)
            if H0.ndim != 2 or H0.shape[1] != Q:
                raise ValueError(f"h0 must have shape (M, {Q}) = (M, len(X) + len(X_eval)), got {H0.shape}")
            if not np.all(np.isfinite(H0)):
                raise ValueError("h0 contains non-finite values")
            M = H0.shape[0]
            A0 = None
        if a0 is not None:
            A0 = np.array(a0, dtype=np.float64).reshape(-1)
            if A0.shape != (M,) or not np.all(np.isfinite(A0)):
                raise ValueError(f"a0 must be a finite array of shape ({M},), got shape {A0.shape}")
        elif A0 is None:
            A0 = p["sigma0"] * rng.standard_normal(M)
        if h_ref is None:
            Href = H0.copy()
            self._custom_ref = False
        else:
            Href = np.array(h_ref, dtype=np.float64)
            if Href.shape != (M, Q) or not np.all(np.isfinite(Href)):
                raise ValueError(f"h_ref must be a finite array of shape ({M}, {Q}), got {Href.shape}")
            self._custom_ref = not getattr(self, "_href_is_h0", False)
        self.n_features_in_ = D
        self.mode_ = getattr(self, "mode_", "fit")
        self._H0 = H0.copy()  # the integration below advances a view of H0 in place
        self._X_extra = np.empty((0, D))
        self._H0_extra = np.empty((M, 0))
        self._n_draws = 0
        self._run(p, X_all, P, K_all, y, ye, H0, A0, Href, rng)
        return self

    def _run(self, p, X_all, P, K_all, y, ye, H0, A0, Href, rng):
        M, Q = H0.shape
        gamma, lam, T, delta = p["gamma"], p["lam"], p["T"], p["delta"]
        freeze = math.isinf(delta)
        dlt = 0.0 if freeze else delta
        lamh = lam + dlt
        Ktt = np.ascontiguousarray(K_all[:P, :P])
        Ket = np.ascontiguousarray(K_all[P:, :P])
        phi, dphi = self._act.compile().phi, self._act.compile().dphi
        adaptive = p["dt"] is None
        spacing = self.record_spacing
        if spacing == "auto":
            spacing = "log" if adaptive and T == 0.0 else "uniform"

        H = np.ascontiguousarray(H0[:, :P])
        C = np.zeros((M, P))
        a = A0.copy()
        Href_t = np.ascontiguousarray(Href[:, :P])
        He0, Href_e = H0[:, P:], Href[:, P:]
        r = y - self._population_f(phi, dphi, H, a, gamma)

        # Noise in preactivation space has covariance K (docs/theory.md eq. (4.4)): on the training
        # inputs through a factor of K_tt, and on the evaluation inputs split into the part the
        # training span explains (carried by C) and an independent residual part of covariance
        # S = K_ee - K_et K_tt^+ K_te, integrated exactly between records.
        noise_on = T > 0.0
        if noise_on:
            kscale = max(float(np.max(np.diag(K_all))), 1e-300)
            U, s = _psd_factor(Ktt, kscale)
            Uh = U * np.sqrt(s)
            Uc = U / np.sqrt(s)
            if Q > P:
                S = K_all[P:, P:] - Ket @ (Uc @ Uc.T) @ Ket.T
                Up, sp_ = _psd_factor(0.5 * (S + S.T), kscale)
                Lperp = Up * np.sqrt(sp_)
            else:
                Lperp = np.zeros((0, 0))
        else:
            Uh = Uc = np.zeros((P, 0))
            Lperp = np.zeros((Q - P, 0))
        if freeze:
            Lperp = np.zeros((Q - P, 0))
        rank = Uh.shape[1]
        Nperp = np.zeros((M, Lperp.shape[1]))

        F, Gd = _features(phi, dphi, H, a, True)
        theta0 = self._theta_max(F, Gd, Ktt, freeze)
        bound0 = 2.0 / (theta0 + lamh) if theta0 + lamh > 0 else math.inf
        if not adaptive:
            dt = p["dt"]
            if self.check_stability and dt >= bound0:
                raise ValueError(
                    f"dt must be < 2/(theta_max + lambda + delta) = {bound0:g} for a stable Euler step of "
                    f"this population (theta_max = {theta0:g} is the largest eigenvalue of the initial "
                    f"tangent kernel Phi + G*K), got dt={dt:g}; try dt={0.25 * bound0:g}, or dt=None for "
                    f"the error-controlled step"
                )
        state = {"decay": 1.0, "k": 0, "t": 0.0, "dt": 0.0}

        def eval_H():
            if Q == P:
                return np.zeros((M, 0))
            if freeze:
                return He0.copy()
            ak = state["decay"]
            out = ak * He0 + C @ Ket.T
            if dlt:
                out += (dlt / lamh) * (1.0 - ak) * Href_e
            if Nperp.shape[1]:
                out += Nperp @ Lperp.T
            return out

        hist = {"step": [], "time": [], "dt": [], "train_loss": [], "phi_change": [], "test_loss": []}
        Phi_t, G_t = [], []
        y2 = max(float(np.mean(y * y)), 1e-300)
        avg = {"n": 0, "f": np.zeros(Q), "Phi": np.zeros((Q, Q))}
        self.converged_ = False

        def record(last_time, avg_start, rates=None):
            nonlocal F, Gd
            k, t = state["k"], state["t"]
            F, Gd = _features(phi, dphi, H, a, True)
            Phi = F.T @ F / M
            G = Gd.T @ Gd / M
            f_tr = F.T @ a / (gamma * M)
            hist["step"].append(k)
            hist["time"].append(t)
            hist["dt"].append(state["dt"])
            hist["train_loss"].append(float(np.mean((y - f_tr) ** 2)))
            if not (np.all(np.isfinite(Phi)) and np.isfinite(hist["train_loss"][-1])):
                raise StepSizeError(k, state["dt"], time=t, reason="the population state became non-finite")
            He = None
            averaging = avg_start is not None and t >= avg_start
            if ye is not None or averaging:
                He = eval_H()
                Fe = _features(phi, dphi, np.ascontiguousarray(He), a, False)[0]
            if ye is not None:
                f_e = Fe.T @ a / (gamma * M)
                hist["test_loss"].append(float(np.mean((ye - f_e) ** 2)))
            if averaging:
                Fa = np.hstack([F, Fe])
                avg["n"] += 1
                avg["f"] += Fa.T @ a / (gamma * M)
                avg["Phi"] += Fa.T @ Fa / M
            if rates is not None and Phi_t:
                # instantaneous rates from the right-hand side at this state (kH, ka): a difference
                # quotient over a long (log-spaced) record interval would underestimate them
                kH, ka = rates
                if not freeze:
                    Gd1 = _features(dphi, dphi, H, a, False)[0]  # phi'(H)
                    dF = Gd1 * kH
                    dPhi = dF.T @ F / M
                    dPhi = dPhi + dPhi.T
                    df = (dF.T @ a + F.T @ ka) / (gamma * M)
                else:
                    dPhi = np.zeros_like(Phi)
                    df = F.T @ ka / (gamma * M)
                ch = np.linalg.norm(dPhi) / max(np.linalg.norm(Phi), 1e-300)
                lch = abs(2.0 * np.mean((y - f_tr) * df)) / y2
            elif Phi_t:
                prev = Phi_t[-1]
                dtime = max(t - last_time, 1e-300)
                ch = np.linalg.norm(Phi - prev) / max(np.linalg.norm(prev), 1e-300) / dtime
                lch = abs(hist["train_loss"][-1] - hist["train_loss"][-2]) / y2 / dtime
            else:
                ch = lch = math.inf
            hist["phi_change"].append(ch)
            Phi_t.append(Phi)
            G_t.append(G)
            return max(ch, lch)

        common = dict(phi=phi, dphi=dphi, H=H, C=C, a=a, Href_t=Href_t, Ktt=Ktt, y=y, r=r, gamma=gamma,
                      lam=lam, dlt=dlt, lamh=lamh, freeze=freeze, state=state, record=record, p=p)
        if adaptive and T == 0.0:
            self._integrate_rk(spacing=spacing, **common)
        else:
            self._integrate_euler(spacing=spacing, adaptive=adaptive, bound0=bound0, noise_on=noise_on,
                                  rank=rank, Uh=Uh, Uc=Uc, Nperp=Nperp, rng=rng, T=T, **common)

        k = state["k"]
        if not self.converged_ and self.early_stop and T == 0.0:
            warnings.warn(
                f"GradientFlowDMFT reached t_max={p['t_max']:g} before the early-stop criterion (relative change "
                f"of Phi and of the train loss per unit time < tol={p['tol']:g}); last change "
                f"{hist['phi_change'][-1]:.3g}. Increase t_max, or set early_stop=False for a finite training time",
                ConvergenceWarning, stacklevel=3)
        self.dt_ = state["dt"]
        self.n_steps_ = self.n_iter_ = k
        self.t_end_ = state["t"]
        self.history_ = {key: np.asarray(v, dtype=np.float64 if key != "step" else np.int64)
                         for key, v in hist.items()}
        self.history_["eval_loss"] = self.history_["test_loss"]  # deprecated alias
        if ye is not None:
            self.best_time_, self.best_test_loss_ = _best_on_curve(self.history_["time"], self.history_["test_loss"])
        self.Phi_t_ = np.asarray(Phi_t)
        self.G_t_ = np.asarray(G_t)
        self.times_ = self.history_["time"]
        He = eval_H()
        self.H_ = np.hstack([H, He])
        self.a_ = a.copy()
        self.C_ = C.copy()
        self.X_all_ = X_all
        self.n_train_ = P
        self.y_ = y
        self.K_all_ = K_all
        self._params = p
        self._decay = state["decay"]
        self._lamh, self._dlt, self._freeze = lamh, dlt, freeze
        Fall = _features(phi, dphi, self.H_, a, False)[0]
        if avg["n"] > 0:
            self._f_all = avg["f"] / avg["n"]
            self._Phi_all = avg["Phi"] / avg["n"]
        else:
            self._f_all = Fall.T @ a / (gamma * M)
            self._Phi_all = Fall.T @ Fall / M
        self.Phi_ = self._Phi_all[:P, :P].copy()
        self.ntk_ = self.Phi_t_[-1] + self.G_t_[-1] * Ktt
        self._index = {row.tobytes(): j for j, row in enumerate(X_all)}
        self._residuals(Fall, H, a, K_all, P, gamma, lam, dlt, freeze, Href)

    # ------------------------------------------------------------------------------ integrators
    def _record_times(self, spacing, t_max, n):
        return _log_grid(t_max, n) if spacing == "log" else np.linspace(0.0, t_max, n)

    def _integrate_rk(self, *, phi, dphi, H, C, a, Href_t, Ktt, y, r, gamma, lam, dlt, lamh, freeze, state,
                      record, p, spacing):
        """Embedded Runge-Kutta pair with error control (docs/theory.md eq. (4.8))."""
        tab = _METHODS[self.method]
        S = tab.stages
        M, P = H.shape
        par = M * P >= _PARALLEL_MIN_WORK
        rhs = _rhs_par if par else _rhs_ser
        comb = _combine_par if par else _combine_ser
        errsq = _err_sq_par if par else _err_sq_ser
        nblk = min(_N_BLOCKS, M)
        KH, KC, KA = np.zeros((S, M, P)), np.zeros((S, M, P)), np.zeros((S, M, 1))
        Hs, Cs, As = np.empty((M, P)), np.empty((M, P)), np.empty((M, 1))
        A2 = a.reshape(M, 1)
        Fb, Zb, rb = np.empty((M, P)), np.zeros((M, P)), np.empty(P)
        partial, epart = np.zeros((nblk, P)), np.zeros((nblk, 2))
        n_rhs = 0

        def f_eval(Hx, Cx, Ax, j):
            nonlocal n_rhs
            rhs(phi, dphi, Hx, Cx, Ax, Href_t, Ktt, y, gamma, lam, dlt, freeze, Fb, Zb, KH[j], KC[j], KA[j], rb,
                partial)
            n_rhs += 1

        rtol, atol, t_max = p["rtol"], p["atol"], p["t_max"]
        times = self._record_times(spacing, t_max, p["n_records"])
        f_eval(H, C, A2, 0)
        # initial step: a fraction of the Euler stability scale of the initial tangent kernel
        F, Gd = _features(phi, dphi, H, a, True)
        theta0 = self._theta_max(F, Gd, Ktt, freeze)
        h = min(0.1 / max(theta0 + lamh, 1e-12), t_max / 100.0)
        record(0.0, None)
        last_t = 0.0
        n_rej = 0
        err = 0.0
        t = 0.0
        h_min = 1e-13 * t_max
        for t_rec in times[1:]:
            while t < t_rec * (1.0 - 1e-13):
                hs = min(h, t_rec - t)
                for s in range(1, S):
                    coef = hs * tab.A[s, :s]
                    comb(H, KH, coef, s, Hs)
                    comb(A2, KA, coef, s, As)
                    if not freeze:
                        comb(C, KC, coef, s, Cs)
                    f_eval(Hs, Cs, As, s)
                ecoef = hs * tab.e
                ea, ya = errsq(KA, ecoef, S, As, epart)
                err = math.sqrt(ea / M) / (atol + rtol * math.sqrt(ya / M))
                if not freeze:
                    eh, yh = errsq(KH, ecoef, S, Hs, epart)
                    err = max(err, math.sqrt(eh / (M * P)) / (atol + rtol * math.sqrt(yh / (M * P))))
                if not math.isfinite(err):
                    err = math.inf
                if err <= 1.0:
                    t += hs
                    H[...] = Hs
                    A2[...] = As
                    if not freeze:
                        C[...] = Cs
                    KH[0], KC[0], KA[0] = KH[S - 1], KC[S - 1], KA[S - 1]
                    if lamh:
                        state["decay"] *= tab.stability(-lamh * hs)
                    state["k"] += 1
                    state["dt"] = hs
                    fac = 5.0 if err == 0.0 else min(5.0, max(0.2, 0.9 * err ** (-tab.exponent)))
                    # a step shortened to land on a record says nothing about the next one
                    h = max(h, hs * fac) if hs < h else hs * fac
                    if state["k"] >= p["max_steps"] and t < t_max * (1 - 1e-13):
                        raise StepSizeError(state["k"], hs, time=t, error=err,
                                            reason=f"the adaptive step needed more than max_steps={p['max_steps']} "
                                                   f"steps to reach t_max={t_max:g} at rtol={rtol:g}")
                else:
                    n_rej += 1
                    h = hs * (0.2 if not math.isfinite(err) else max(0.2, 0.9 * err ** (-tab.exponent)))
                    if h < h_min:
                        raise StepSizeError(state["k"], h, time=t, error=err,
                                            reason=f"the adaptive step underflowed (the population state cannot "
                                                   f"be integrated to rtol={rtol:g}; non-finite or exploding "
                                                   f"dynamics)")
            r[:] = rb
            state["t"] = t
            change = record(last_t, None, rates=(KH[0], KA[0][:, 0]))
            last_t = t
            if self.early_stop and change < p["tol"]:
                self.converged_ = True
                break
        self.n_rejected_, self.n_rhs_ = n_rej, n_rhs

    def _integrate_euler(self, *, phi, dphi, H, C, a, Href_t, Ktt, y, r, gamma, lam, dlt, lamh, freeze, state,
                         record, p, spacing, adaptive, bound0, noise_on, rank, Uh, Uc, Nperp, rng, T):
        """Euler(-Maruyama) with a fixed ``dt``, or (``dt=None``, ``T > 0``) with the step re-chosen at
        every record from the stability bound and the weak-error bound (docs/theory.md eq. (4.9))."""
        M, P = H.shape
        Lrank = Nperp.shape[1]
        avg_start = None
        t_max = p["t_max"]

        def choose_dt(bound):
            # stability: a quarter of the bound (4.6); weak error of the stationary law: dt lamh/2 <= rtol
            d = 0.25 * bound if math.isfinite(bound) else 0.1
            if noise_on and lamh > 0:
                d = min(d, 2.0 * p["rtol"] / lamh)
            return d

        if adaptive:
            dt = choose_dt(bound0)
            times = self._record_times(spacing, t_max, p["n_records"])
            intervals = np.diff(times)
        else:
            dt = p["dt"]
            n_total = max(1, int(math.ceil(t_max / dt - 1e-9)))
            rec_every = max(1, n_total // (p["n_records"] - 1))
            intervals = None
        if p["avg"] is not None:
            # known up front: the fixed grid ends at n_total*dt, the adaptive one at t_max
            avg_start = p["avg"] * (t_max if adaptive else n_total * dt)
        state["dt"] = dt
        record(0.0, avg_start)
        last_t = 0.0
        max_draws_steps = max(1, _NOISE_CHUNK // max(1, M * (rank + 1)))
        UhT = np.ascontiguousarray(Uh.T) if not freeze else np.zeros((0, P))
        UcT = np.ascontiguousarray(Uc.T) if not freeze else np.zeros((0, P))
        kern = _advance_par if M * P >= _PARALLEL_MIN_WORK else _advance_ser
        j = 0
        while True:
            if adaptive:
                if j >= len(intervals):
                    break
                span = intervals[j]
                n = max(1, int(math.ceil(span / dt - 1e-9)))
                dt_i = span / n
            else:
                if state["k"] >= n_total:
                    break
                n = min(rec_every, n_total - state["k"])
                dt_i = dt
            j += 1
            if state["k"] + n > p["max_steps"]:
                raise StepSizeError(state["k"], dt_i, time=state["t"],
                                    reason=f"the run needs more than max_steps={p['max_steps']} steps")
            sq = math.sqrt(2.0 * T * dt_i) if noise_on else 0.0
            alpha = 1.0 - dt_i * lamh
            done = 0
            while done < n:
                m = min(n - done, max_draws_steps) if noise_on else n - done
                if noise_on:
                    xi = rng.standard_normal((m, M, rank)) if not freeze else np.zeros((1, 1, 0))
                    xa = rng.standard_normal((m, M))
                else:
                    xi, xa = np.zeros((1, 1, 0)), np.zeros((1, 1))
                kern(phi, dphi, H, C, a, Href_t, Ktt, y, r, m, dt_i, gamma, lam, dlt, freeze, noise_on, sq,
                     UhT, UcT, xi, xa)
                done += m
            if Lrank:
                # exact law of the discretised OU recursion n <- alpha n + sq xi over n steps
                a2 = alpha * alpha
                var = n if abs(1.0 - a2) < 1e-15 else (1.0 - a2 ** n) / (1.0 - a2)
                Nperp *= alpha ** n
                Nperp += sq * math.sqrt(var) * rng.standard_normal(Nperp.shape)
            state["k"] += n
            state["t"] = state["t"] + n * dt_i if adaptive else state["k"] * dt
            state["decay"] *= alpha ** n
            state["dt"] = dt_i
            change = record(last_t, avg_start)
            last_t = state["t"]
            F, Gd = _features(phi, dphi, H, a, True)
            if adaptive or self.check_stability:
                theta = self._theta_max(F, Gd, Ktt, freeze)
                bound = 2.0 / (theta + lamh)
                if adaptive:
                    dt = choose_dt(bound)
                elif dt_i >= bound:
                    raise StepSizeError(state["k"], dt_i, bound)
            if self.early_stop and T == 0.0 and change < p["tol"]:
                self.converged_ = True
                break
        self.n_rejected_, self.n_rhs_ = 0, state["k"]

    def _residuals(self, Fall, H, a, K_all, P, gamma, lam, delta, freeze, Href):
        """Fixed-point residuals of eq. (4.3) in the final state."""
        M = a.shape[0]
        f_tr = Fall[:, :P].T @ a / (gamma * M)
        r = self.y_ - f_tr
        force_a = gamma * Fall[:, :P] @ r
        num = np.sum((force_a - lam * a) ** 2)
        den = np.sum(force_a ** 2) + np.sum((lam * a) ** 2)
        if not freeze:
            Z = gamma * _features(self._act.compile().phi, self._act.compile().dphi, H, a, True)[1] * r[None, :]
            force_h = Z @ K_all[:P, :]
            decay_h = (lam + delta) * self.H_ - delta * Href
            drift = force_h - decay_h
            # A preactivation within one step of a kink of phi (relu at 0) chatters across it: the
            # flow slides along the kink (a Filippov fixed point), which no step resolves exactly.
            drift[np.abs(self.H_) <= max(self.dt_, 1e-3) * np.abs(drift)] = 0.0
            num += np.sum(drift ** 2)
            den += np.sum(force_h ** 2) + np.sum(decay_h ** 2)
        self.fixed_point_residual_ = float(math.sqrt(num / max(den, 1e-300)))
        Phi = self._Phi_all[:P, :P]
        lamI = lam * np.eye(P)
        f_krr = Phi @ _solve_psd(Phi + lamI, self.y_)
        self.krr_residual_ = float(np.linalg.norm(self._f_all[:P] - f_krr) /
                                   max(np.linalg.norm(self.y_), 1e-300))

    @staticmethod
    def _population_f(phi, dphi, H, a, gamma):
        F, _ = _features(phi, dphi, H, a, False)
        return F.T @ a / (gamma * H.shape[0])

    def _theta_max(self, F, Gd, Ktt, freeze):
        """Largest eigenvalue of the tangent kernel ``Phi + G*K`` (eq. (4.5))."""
        M = F.shape[0]
        theta = F.T @ F / M
        if not freeze:
            theta = theta + (Gd.T @ Gd / M) * Ktt
        v0 = getattr(self, "_theta_vec", None)
        if v0 is None or v0.shape[0] != theta.shape[0]:
            v0 = np.ones(theta.shape[0])
        lam, self._theta_vec = _top_eigenvalue(theta, v0)
        return lam

    # ------------------------------------------------------------------------------ any input (4.7)
    def _lookup(self, X, name):
        self._check_fitted()
        X = check_inputs(X, name, n_features=self.n_features_in_)
        idx = np.array([self._index.get(row.tobytes(), -1) for row in X], dtype=np.int64)
        return X, idx

    def _untracked_refusal(self, name):
        p = self._params
        why = None
        if p["T"] > 0:
            why = "at temperature > 0 the untracked inputs carry an Ornstein-Uhlenbeck part that is not sampled"
        elif p["avg"] is not None:
            why = "with average_from the predictor is a time average over the records of the tracked inputs"
        elif self._custom_ref:
            why = "the coupling's reference h_ref was given on the tracked inputs only"
        if why is not None:
            raise ValueError(
                f"{name} has rows that are not among the inputs tracked at fit time, and {why}; pass these "
                f"inputs as X_eval to fit")

    def _initial_untracked(self, Xu):
        """Initial preactivations (M, n) on untracked inputs, jointly in law with the tracked ones.

        A population started from a source: the source's final features (eq. (4.7) of the source).
        A fresh population: ``h(0) | h_tracked(0)`` is Gaussian (docs/theory.md eq. (4.7)); draws are
        kept, so later calls condition on them too and every answer is one joint sample.
        """
        src = getattr(self, "_source", None)
        if src is not None:
            return src._features_any(Xu, "X")
        D = self.n_features_in_
        if self._X_extra.shape[0]:
            ids = {row.tobytes(): j for j, row in enumerate(self._X_extra)}
            jdx = np.array([ids.get(row.tobytes(), -1) for row in Xu], dtype=np.int64)
        else:
            jdx = np.full(Xu.shape[0], -1, dtype=np.int64)
        new = jdx < 0
        if np.any(new):
            Xn = np.unique(Xu[new], axis=0)
            Xc = np.vstack([self.X_all_, self._X_extra])
            Hc = np.hstack([self._H0, self._H0_extra])
            # weight space: w = Pi_c w + (I - Pi_c) xi; the first part is fixed by h on the tracked rows
            Uc, sc, Vt = np.linalg.svd(Xc, full_matrices=False)
            keep = sc > 1e-10 * max(sc[0], 1e-300)
            Uc, sc, Vt = Uc[:, keep], sc[keep], Vt[keep]
            B = (Uc / sc) @ (Vt @ Xn.T)  # (n_c, n): h_new mean = Hc @ B
            Aperp = (Xn - (Xn @ Vt.T) @ Vt) / math.sqrt(D)
            # inputs in the span of the conditioning set are determined: their residual is round-off
            Lf = _gram_factor(Aperp @ Aperp.T, rtol=1e-10, scale=float(np.max(np.sum(Xn * Xn, axis=1))) / D)
            rng = np.random.default_rng(np.random.SeedSequence([self._params["seed"], 2, self._n_draws]))
            self._n_draws += 1
            h_new = Hc @ B
            if Lf.shape[1]:
                h_new += self._params["sigma0"] * rng.standard_normal((Hc.shape[0], Lf.shape[1])) @ Lf.T
            self._X_extra = np.vstack([self._X_extra, Xn])
            self._H0_extra = np.hstack([self._H0_extra, h_new])
            ids = {row.tobytes(): j for j, row in enumerate(self._X_extra)}
            jdx = np.array([ids[row.tobytes()] for row in Xu], dtype=np.int64)
        return self._H0_extra[:, jdx]

    def _features_any(self, X, name="X"):
        """Final preactivations (M, len(X)) on any inputs (docs/theory.md eq. (4.7))."""
        X, idx = self._lookup(X, name)
        if hasattr(self, "_lazy"):
            return self._source._features_any(X, name)
        out = np.empty((self.H_.shape[0], X.shape[0]))
        tracked = idx >= 0
        out[:, tracked] = self.H_[:, idx[tracked]]
        if not np.all(tracked):
            self._untracked_refusal(name)
            Xu = X[~tracked]
            h0 = self._initial_untracked(Xu)
            if self._freeze:
                hu = h0
            else:
                # h_ref = h(0) off the tracked set: a fresh population's reference is its start, a
                # target's start and reference are both the source features
                e = self._decay
                Ku = Xu @ self.X_all_[:self.n_train_].T / self.n_features_in_
                hu = (e + (self._dlt / self._lamh) * (1.0 - e) if self._lamh > 0 else e) * h0 + self.C_ @ Ku.T
            out[:, ~tracked] = hu
        return out

    # ------------------------------------------------------------------------------ outputs
    def _rows(self, X, name="X"):
        """Tracked indices of ``X`` (kept for callers that need tracked inputs)."""
        X, idx = self._lookup(X, name)
        if np.any(idx < 0):
            raise ValueError(f"{name} has rows that are not among the inputs tracked at fit time")
        return idx

    def predict(self, X):
        """Population predictor ``f(x) = E[a phi(h(x))]/gamma`` (eq. (4.2)) on any inputs.

        Tracked inputs use the recorded state (time-averaged over the last ``1 - average_from`` of
        training when ``average_from`` is set). Untracked inputs at ``T = 0`` get their preactivations
        from eq. (4.7): exact in law (conditional Gaussian initial values, then the affine map of
        eq. (4.4)); at ``T > 0`` or with ``average_from`` they are refused with a ``ValueError``.
        After a lazy :meth:`transfer` this is the linearised flow's closed form (eq. (4.10)).
        """
        X, idx = self._lookup(X, "X")
        if hasattr(self, "_lazy"):
            return self._lazy_predict(X)
        out = np.empty(X.shape[0])
        tracked = idx >= 0
        out[tracked] = self._f_all[idx[tracked]]
        if not np.all(tracked):
            Hn = self._features_any(X[~tracked])
            c = self._act.compile()
            out[~tracked] = self._population_f(c.phi, c.dphi, np.ascontiguousarray(Hn), self.a_,
                                               self._params["gamma"])
        return out

    def predict_kernel(self, X):
        """Kernel-ridge form ``Phi(x, X)(Phi + lambda I)^{-1} y`` of the predictor (eq. (4.3))."""
        X, idx = self._lookup(X, "X")
        P = self.n_train_
        Phi = self._Phi_all[:P, :P]
        v = _solve_psd(Phi + self._params["lam"] * np.eye(P), self.y_)
        return self._cross_kernel(X, idx) @ v

    def _cross_kernel(self, X, idx):
        P = self.n_train_
        if np.all(idx >= 0):
            return self._Phi_all[idx, :P]
        if hasattr(self, "_lazy"):
            return self._lazy_theta(self._source._features_any(X, "X"), self.H_[:, :P], X, self.X_all_[:P])
        phi = self._act.compile().phi
        Fx = _features(phi, phi, np.ascontiguousarray(self._features_any(X)), self.a_, False)[0]
        Ft = _features(phi, phi, np.ascontiguousarray(self.H_[:, :P]), self.a_, False)[0]
        return Fx.T @ Ft / Fx.shape[0]

    def kernel(self, XA, XB=None):
        """Population kernel ``E[phi(h(x)) phi(h(x'))]`` between any inputs (eq. (4.7) off the tracked set)."""
        XA, ia = self._lookup(XA, "XA")
        if XB is None:
            XB, ib = XA, ia
        else:
            XB, ib = self._lookup(XB, "XB")
        if np.all(ia >= 0) and np.all(ib >= 0):
            return self._Phi_all[np.ix_(ia, ib)].copy()
        if hasattr(self, "_lazy"):  # the tangent kernel of the linearised flow
            return self._lazy_theta(self._source._features_any(XA, "XA"), self._source._features_any(XB, "XB"),
                                    XA, XB)
        phi = self._act.compile().phi
        M = self.H_.shape[0]
        FA = _features(phi, phi, np.ascontiguousarray(self._features_any(XA, "XA")), self.a_, False)[0]
        FB = _features(phi, phi, np.ascontiguousarray(self._features_any(XB, "XB")), self.a_, False)[0]
        return FA.T @ FB / M

    def features(self, X):
        """Final preactivations (M, len(X)) of the population on any inputs (eq. (4.7))."""
        return self._features_any(X, "X").copy()

    # ------------------------------------------------------------------------------ transfer
    def transfer(self, X2, y2, X2_eval=None, *, coupling=0.0, gamma=None, weight_decay=None, temperature=None,
                 readout_only=None, eval_set=None, mode=None, y2_eval=None, dt=None, t_max=None, seed=None,
                 a0=None, **options):
        """Train a target population that starts from this (source) population's features.

        Each target neuron starts at, and is coupled with strength ``coupling`` to, the source
        preactivations on ``[X2; X2_eval]`` (docs/theory.md section 4, transfer); readouts are
        drawn fresh. At ``T = 0`` the target inputs need not have been tracked by the source
        (eq. (4.7)); at ``T > 0`` pass them as ``X_eval`` when fitting the source.

        Parameters
        ----------
        X2, y2 : target training set.
        X2_eval : target evaluation inputs (test points), optional.
        gamma, weight_decay, temperature : target hyper-parameters (default: the source's).
        coupling : float >= 0 or inf
            ``delta``; ``inf`` (or ``readout_only=True``) fine-tunes the readout on frozen features.
        readout_only : bool, optional
            Synonym of ``coupling=inf``; with a finite non-zero ``coupling`` a ``ValueError``.
        eval_set : tuple (X2_test, y2_test), optional
            The common spelling of ``X2_eval=X2_test, y2_eval=y2_test``.
        mode : {"joint", "readout", "lazy"} or None
            ``"joint"``: gradient flow of features and fresh readout (``coupling=0`` is the paper's
            jointly rich setting). ``"readout"``: readout-only fine-tuning (same as ``coupling=inf``).
            ``"lazy"``: the linearised dynamics around the source weights with a fresh readout
            (``gamma2 -> 0``), kernel gradient flow with the tangent kernel ``Phi1 + sigma_0^2
            E[phi'(h1) phi'(h1)^T] * K`` of the source population, in closed form (eq. (4.10)).
            ``None``: ``"readout"`` if ``coupling=inf`` or ``readout_only``, else ``"joint"``.
        y2_eval : targets on ``X2_eval`` for the ``"test_loss"`` curve and ``best_time_``.
        dt, t_max, seed : integration settings of the target run (default: the source's; the seed
            defaults to ``seed + 1``).
        a0 : array (M,), optional
            Fresh readouts (default ``N(0, sigma_0^2)``), e.g. those of a simulated target network.
        **options
            Other constructor arguments of the target (``rtol``, ``n_records``, ``early_stop``, ...;
            default: the source's).

        Returns
        -------
        GradientFlowDMFT
            The fitted target population.
        """
        self._check_fitted()
        if eval_set is not None:
            if X2_eval is not None or y2_eval is not None:
                raise ValueError("pass the target test set either as eval_set=(X2_test, y2_test) or as "
                                 "X2_eval/y2_eval, not both")
            X2_eval, y2_eval = self._check_eval_set(eval_set, self.n_features_in_)
        if mode is not None and mode not in ("joint", "readout", "lazy"):
            raise ValueError(f"mode must be one of 'joint', 'readout', 'lazy' or None, got {mode!r}")
        if mode == "readout" and readout_only is None:
            readout_only = True  # so that a finite non-zero coupling is reported as a contradiction
        return super().transfer(X2, y2, coupling=coupling, gamma=gamma, weight_decay=weight_decay,
                                temperature=temperature, readout_only=readout_only, X2_eval=X2_eval,
                                y2_eval=y2_eval, mode=mode, dt=dt, t_max=t_max, seed=seed, a0=a0, **options)

    def _transfer(self, X2, y2, *, coupling, gamma, weight_decay, temperature, eval_set=None, X2_eval=None,
                  y2_eval=None, mode=None, dt=None, t_max=None, seed=None, a0=None, **options):
        X2 = check_inputs(X2, "X2", n_features=self.n_features_in_)
        if X2_eval is None:
            X2e = np.empty((0, X2.shape[1]))
        else:
            X2e = check_inputs(X2_eval, "X2_eval", n_features=X2.shape[1])
        delta = coupling
        if mode is None:
            mode = "readout" if math.isinf(delta) else "joint"
        if mode == "readout":
            delta = math.inf
        elif math.isinf(delta):
            raise ValueError(f"mode={mode!r} contradicts readout_only=True / coupling=inf (readout fine-tuning)")
        if mode == "lazy" and delta != 0.0:
            raise ValueError(f"coupling must be 0 with mode='lazy' (the linearised flow has no coupling), "
                             f"got {coupling!r}")
        unknown = set(options) - set(self.get_params(deep=False))
        if unknown:
            raise ValueError(f"unknown target options {sorted(unknown)}; accepted: constructor arguments of "
                             f"GradientFlowDMFT")
        Xt_all = np.vstack([X2, X2e])
        Href = np.ascontiguousarray(self._features_any(Xt_all, "X2"))
        seed = target_seed(self.seed) if seed is None else seed
        params = self.get_params(deep=False)
        params.update(activation=self._act, gamma=gamma, weight_decay=weight_decay, temperature=temperature,
                      population=self.H_.shape[0], dt=self.dt if dt is None else dt,
                      t_max=self.t_max if t_max is None else t_max, coupling=delta, seed=seed)
        params.update(options)
        target = GradientFlowDMFT(**params)
        target.mode_ = mode
        target._source = self
        if mode == "lazy":
            return target._fit_lazy(self, X2, y2, X2e, y2_eval, Href)
        # a separate stream: the target's own generator (same seed) drives its noise
        rng = np.random.default_rng([check_int("seed", seed, low=0), 1])
        if a0 is None:
            sigma0 = check_real("init_scale", self.init_scale, low=0.0, low_open=True)
            a0 = sigma0 * rng.standard_normal(Href.shape[0])
            moment = target.init == "moment_matched" or (target.init == "auto" and self._act.is_linear)
            M = Href.shape[0]
            if moment and M > Href.shape[1] + 1:
                # fresh readouts orthogonal to the source features, with exact second moment sigma_0^2:
                # for linear phi the target then sees the infinite-width law of (a, h)
                Q_, _ = np.linalg.qr(Href)
                a0 = a0 - Q_ @ (Q_.T @ a0)
                a0 *= sigma0 * math.sqrt(M) / max(np.linalg.norm(a0), 1e-300)
        target._href_is_h0 = True
        target.fit(X2, y2, X2e if X2e.shape[0] else None, y_eval=y2_eval, h0=Href, a0=a0, h_ref=Href)
        return target

    # ------------------------------------------------------------------------------ lazy fine-tuning
    @_one_blas_thread
    def _fit_lazy(self, source, X2, y2, X2e, y2e, Href):
        """Linearised target flow around the source weights with fresh readouts (eq. (4.10)).

        ``df/dt = Theta (y - f) - lambda f``, ``f(0) = 0`` with ``Theta = Phi1 + sigma_0^2 G1' * K`` and
        ``G1' = E[phi'(h1) phi'(h1)^T]`` over the source population: the infinite-width limit, where the
        fresh readouts make ``f(0)`` and the weight decay of the source weights' own output vanish.
        """
        p = self._validated()
        if p["T"] > 0:
            raise ValueError("mode='lazy' is the gradient-flow linearisation: temperature must be 0")
        y2 = check_targets(y2, X2.shape[0], "y2")
        ye = None if y2e is None else check_targets(y2e, X2e.shape[0], "y2_eval")
        if y2e is not None and X2e.shape[0] == 0:
            raise ValueError("y2_eval was given without X2_eval")
        P = X2.shape[0]
        self.n_features_in_ = X2.shape[1]
        self._lazy = True
        self._source = source
        self._params = p
        self.X_all_ = np.vstack([X2, X2e])
        self.n_train_ = P
        self.y_ = y2
        self._index = {row.tobytes(): j for j, row in enumerate(self.X_all_)}
        Theta_all = self._lazy_theta(Href, Href[:, :P], self.X_all_, X2)
        Th = 0.5 * (Theta_all[:P] + Theta_all[:P].T)
        w, V = np.linalg.eigh(Th + p["lam"] * np.eye(P))
        w = np.maximum(w, 0.0)
        self._lazy_eig = (w, V)
        times = self._record_times("log" if self.record_spacing in ("auto", "log") else "uniform",
                                   p["t_max"], p["n_records"])
        Vy = V.T @ y2
        hist = {"step": np.arange(len(times)), "time": times, "dt": np.zeros(len(times)),
                "train_loss": np.empty(len(times)), "phi_change": np.zeros(len(times)),
                "test_loss": np.empty(len(times) if ye is not None else 0)}
        for j, t in enumerate(times):
            c = self._lazy_coef(w, t) * Vy
            f = Theta_all @ (V @ c)
            hist["train_loss"][j] = np.mean((y2 - f[:P]) ** 2)
            if ye is not None:
                hist["test_loss"][j] = np.mean((ye - f[P:]) ** 2)
        self.history_ = hist
        hist["eval_loss"] = hist["test_loss"]  # deprecated alias
        if ye is not None:
            self.best_time_, self.best_test_loss_ = _best_on_curve(times, hist["test_loss"])
        self.t_end_ = float(times[-1])
        self.times_ = times
        self._lazy_vec = V @ (self._lazy_coef(w, self.t_end_) * Vy)
        self._f_all = Theta_all @ self._lazy_vec
        self.Phi_ = Th
        self.ntk_ = Th
        self._Phi_all = self._lazy_theta(Href, Href, self.X_all_, self.X_all_)
        Phi1, G1 = self._lazy_theta(Href[:, :P], Href[:, :P], X2, X2, parts=True)
        self.Phi_t_, self.G_t_ = Phi1[None], G1[None]
        self.H_ = Href
        self.a_ = np.zeros(Href.shape[0])
        self.converged_ = True
        self.n_steps_ = self.n_iter_ = 0
        self.n_rejected_ = self.n_rhs_ = 0
        self.dt_ = 0.0
        self.fixed_point_residual_ = 0.0
        f_krr = Th @ _solve_psd(Th + p["lam"] * np.eye(P), y2)
        self.krr_residual_ = float(np.linalg.norm(self._f_all[:P] - f_krr) / max(np.linalg.norm(y2), 1e-300))
        return self

    @staticmethod
    def _lazy_coef(w, t):
        """``(1 - exp(-w t)) / w`` with its limit ``t`` at ``w = 0``."""
        wt = w * t
        out = np.empty_like(w)
        small = wt < 1e-12
        out[small] = t
        out[~small] = -np.expm1(-wt[~small]) / w[~small]
        return out

    def _lazy_K(self, XA, XB):
        return XA @ XB.T / self.n_features_in_

    def _lazy_theta(self, HA, HB, XA, XB, parts=False):
        """Tangent kernel ``Phi1 + sigma_0^2 E[phi'(h1) phi'(h1)] * K`` of the source population
        (``parts``: the two kernels ``Phi1`` and ``G1 = sigma_0^2 E[phi' phi'^T]`` separately)."""
        c = self._act.compile()
        M = HA.shape[0]
        FA = _features(c.phi, c.dphi, np.ascontiguousarray(HA), np.ones(M), True)
        FB = _features(c.phi, c.dphi, np.ascontiguousarray(HB), np.ones(M), True)
        s2 = self._params["sigma0"] ** 2
        Phi, G = FA[0].T @ FB[0] / M, s2 * (FA[1].T @ FB[1] / M)
        return (Phi, G) if parts else Phi + G * self._lazy_K(XA, XB)

    def _lazy_predict(self, X):
        Hx = self._source._features_any(X, "X")
        P = self.n_train_
        Theta_x = self._lazy_theta(Hx, self.H_[:, :P], X, self.X_all_[:P])
        return Theta_x @ self._lazy_vec

