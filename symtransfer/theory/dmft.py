"""Gradient-flow (and Langevin) dynamics of the infinite-width network as a neuron population.

Implements docs/theory.md section 4. Each neuron is a single-site process in preactivation space
(eq. (4.1)); the ``N -> infinity`` limit is approximated by a population of ``M`` sampled neurons
whose only coupling is the residual on the training points (eq. (4.2)). The cost of a step is
``O(M P^2)`` whatever the input dimension ``D`` is, because the preactivations on evaluation inputs
are never integrated step by step: they are an affine function of per-neuron coefficients on the
training inputs plus a deterministic decay and an independent Ornstein-Uhlenbeck part (eq. (4.4)).

The Euler(-Maruyama) step of the population is, neuron by neuron, the step of a width-``M``
network integrated with the same step (docs/theory.md eq. (1.4)) written in preactivation space,
so a population started from a network's initial preactivations follows that network exactly; the
infinite-width limit is approached as ``M`` grows.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
from scipy.linalg import lapack

from .._validation import check_inputs, check_int, check_real, check_targets
from ..activations import get_activation
from ..errors import DivergenceError

__all__ = ["GradientFlowDMFT", "StepSizeError"]

# The reduction over neurons runs over a fixed number of blocks (not one per thread) so that its
# floating-point order, hence every result, does not depend on the thread count.
_N_BLOCKS = 32
# Largest number of Gaussian draws generated in one NumPy call (bounds the memory of a noise chunk).
_NOISE_CHUNK = 4_000_000


class StepSizeError(DivergenceError):
    """The Euler step ``dt`` exceeds the linear stability bound of the population dynamics.

    Attributes
    ----------
    step : int
        Step at which the bound was found violated.
    lr : float
        The step ``dt`` in use.
    bound : float
        The stability bound ``2 / (theta_max + lambda + delta)`` at that step (docs/theory.md eq. (4.6)).
    """

    def __init__(self, step: int, dt: float, bound: float):
        self.step, self.lr, self.bound = int(step), float(dt), float(bound)
        Exception.__init__(
            self,
            f"dt={dt:g} exceeds the Euler stability bound 2/(theta_max + lambda + delta) = {bound:g} of the "
            f"population dynamics at step {step} (the neural tangent kernel grew during feature learning); "
            f"use dt <= {0.5 * bound:g}",
        )


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


# A parallel region costs a thread wake-up and a barrier; on a loaded machine this dominates small
# populations, so the same body is also compiled serially and used below a work threshold.
_advance_par = nb.njit(parallel=True)(_advance_py)
_advance_ser = nb.njit(_advance_py)
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


def _gram_factor(K: np.ndarray, rtol: float = 1e-12) -> np.ndarray:
    """``F`` with ``F F^T = K`` from a pivoted Cholesky factorisation (rank-revealing, so a Gram
    matrix of rank ``< len(K)``, e.g. with ``P > D`` or repeated inputs, is factored exactly)."""
    n = K.shape[0]
    if n == 0:
        return np.zeros((0, 0))
    c, piv, rank, info = lapack.dpstrf(K, lower=1, tol=rtol * max(float(np.max(np.diag(K))), 1e-300))
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


class GradientFlowDMFT:
    """Population solver of the gradient-flow / Langevin DMFT (docs/theory.md section 4).

    Parameters
    ----------
    activation : str, sympy.Expr or Activation
        The nonlinearity ``phi``.
    gamma : float > 0
        Feature-learning strength ``gamma``.
    weight_decay : float >= 0
        ``lambda``.
    temperature : float >= 0
        ``T``; ``0`` is gradient flow.
    population : int >= 1
        Number ``M`` of sampled neurons.
    dt : float > 0 or None
        Euler step. ``None`` picks ``0.25 * 2 / (theta_max(0) + lambda + delta)`` (eq. (4.6)).
    t_max : float > 0
        Training time.
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
    average_from : float in [0, 1) or None
        If set, predictions and kernels are averaged over the records with ``t >= average_from *
        t_end`` (use at ``temperature > 0``, where the population fluctuates).
    check_stability : bool
        Check ``dt`` against the bound (4.6) at the start and at every record.
    seed : int

    Attributes
    ----------
    history_ : dict of arrays
        ``"step"``, ``"time"``, ``"train_loss"``, ``"eval_loss"`` (if ``y_eval`` was given; mean
        squared errors), ``"phi_change"`` (relative change of ``Phi`` per unit time).
    Phi_t_, G_t_ : ndarray (n_records, P, P)
        ``Phi(t) = E[phi(h) phi(h)^T]`` and ``G(t) = E[a^2 phi'(h) phi'(h)^T]`` on the training inputs.
    Phi_ : ndarray (P, P)
        Final (or time-averaged) ``Phi`` on the training inputs.
    ntk_ : ndarray (P, P)
        Final ``Phi + G * K`` (eq. (4.5)).
    H_, a_ : ndarray
        Final population: preactivations (M, P + P_eval) on ``[X; X_eval]`` and readouts (M,).
    converged_, n_steps_, t_end_, dt_
    fixed_point_residual_ : float
        Relative residual of the fixed-point equations (4.3) in the final state (meaningful at ``T = 0``).
    krr_residual_ : float
        ``|f - Phi (Phi + lambda I)^{-1} y| / |y|`` on the training inputs (eq. (4.3)).
    """

    def __init__(self, activation="relu", gamma=1.0, weight_decay=1.0, temperature=0.0, population=2000,
                 dt=None, t_max=20.0, coupling=0.0, init_scale=1.0, n_records=100, tol=1e-5,
                 early_stop=True, average_from=None, check_stability=True, seed=0):
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

    # ------------------------------------------------------------------------------ validation
    def _validated(self):
        p = {
            "gamma": check_real("gamma", self.gamma, low=0.0, low_open=True),
            "lam": check_real("weight_decay", self.weight_decay, low=0.0),
            "T": check_real("temperature", self.temperature, low=0.0),
            "M": check_int("population", self.population, low=1),
            "t_max": check_real("t_max", self.t_max, low=0.0, low_open=True),
            "delta": check_real("coupling", self.coupling, low=0.0, allow_inf=True),
            "sigma0": check_real("init_scale", self.init_scale, low=0.0, low_open=True),
            "n_records": check_int("n_records", self.n_records, low=2),
            "tol": check_real("tol", self.tol, low=0.0, low_open=True),
            "seed": check_int("seed", self.seed, low=0),
        }
        p["dt"] = None if self.dt is None else check_real("dt", self.dt, low=0.0, low_open=True)
        if self.average_from is None:
            p["avg"] = None
        else:
            p["avg"] = check_real("average_from", self.average_from, low=0.0)
            if p["avg"] >= 1.0:
                raise ValueError(f"average_from must be in [0, 1), got {self.average_from!r}")
        self._act = get_activation(self.activation)
        return p

    # ------------------------------------------------------------------------------ fitting
    def fit(self, X, y, X_eval=None, *, y_eval=None, h0=None, a0=None, h_ref=None):
        """Integrate the population dynamics on the training set ``(X, y)``.

        Parameters
        ----------
        X : array (P, D)
            Training inputs; residuals are taken on these only.
        y : array (P,)
        X_eval : array (P_eval, D), optional
            Further inputs on which the preactivations are tracked (test inputs, or target inputs
            that a later :meth:`transfer` will need).
        y_eval : array (P_eval,), optional
            Targets on ``X_eval``, for the ``"eval_loss"`` curve.
        h0 : array (M, P + P_eval), optional
            Initial preactivations on ``[X; X_eval]`` (e.g. those of a simulated network, to follow
            it neuron by neuron); overrides ``population`` with ``M = h0.shape[0]``. Default
            ``h0 ~ N(0, sigma_0^2 K)``.
        a0 : array (M,), optional
            Initial readouts; default ``N(0, sigma_0^2)``.
        h_ref : array (M, P + P_eval), optional
            Reference preactivations of the coupling ``delta`` (default: ``h0``).

        Returns
        -------
        self
        """
        p = self._validated()
        X = check_inputs(X, "X")
        y = check_targets(y, X.shape[0], "y")
        D = X.shape[1]
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

        if h0 is None:
            M = p["M"]
            Fk = _gram_factor(K_all)
            H0 = p["sigma0"] * rng.standard_normal((M, Fk.shape[1])) @ Fk.T
        else:
            H0 = np.array(h0, dtype=np.float64)
            if H0.ndim != 2 or H0.shape[1] != Q:
                raise ValueError(f"h0 must have shape (M, {Q}) = (M, len(X) + len(X_eval)), got {H0.shape}")
            if not np.all(np.isfinite(H0)):
                raise ValueError("h0 contains non-finite values")
            M = H0.shape[0]
        if a0 is None:
            A0 = p["sigma0"] * rng.standard_normal(M)
        else:
            A0 = np.array(a0, dtype=np.float64).reshape(-1)
            if A0.shape != (M,) or not np.all(np.isfinite(A0)):
                raise ValueError(f"a0 must be a finite array of shape ({M},), got shape {A0.shape}")
        if h_ref is None:
            Href = H0.copy()
        else:
            Href = np.array(h_ref, dtype=np.float64)
            if Href.shape != (M, Q) or not np.all(np.isfinite(Href)):
                raise ValueError(f"h_ref must be a finite array of shape ({M}, {Q}), got {Href.shape}")
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
        if p["dt"] is None:
            dt = 0.25 * bound0 if math.isfinite(bound0) else 0.1
        else:
            dt = p["dt"]
            if self.check_stability and dt >= bound0:
                raise ValueError(
                    f"dt must be < 2/(theta_max + lambda + delta) = {bound0:g} for a stable Euler step of "
                    f"this population (theta_max = {theta0:g} is the largest eigenvalue of the initial "
                    f"tangent kernel Phi + G*K), got dt={dt:g}; try dt={0.25 * bound0:g}"
                )
        sq = math.sqrt(2.0 * T * dt) if noise_on else 0.0
        n_total = max(1, int(math.ceil(p["t_max"] / dt - 1e-9)))
        rec_every = max(1, n_total // (p["n_records"] - 1))
        alpha = 1.0 - dt * lamh

        def eval_H(k):
            if Q == P:
                return np.zeros((M, 0))
            if freeze:
                return He0.copy()
            ak = alpha ** k
            bk = (dlt / lamh) * (1.0 - ak) if lamh > 0 else 0.0
            out = ak * He0 + C @ Ket.T
            if dlt:
                out += bk * Href_e
            if Nperp.shape[1]:
                out += Nperp @ Lperp.T
            return out

        hist = {"step": [], "time": [], "train_loss": [], "phi_change": []}
        if ye is not None:
            hist["eval_loss"] = []
        Phi_t, G_t = [], []
        y2 = max(float(np.mean(y * y)), 1e-300)
        avg = {"n": 0, "f": np.zeros(Q), "Phi": np.zeros((Q, Q))}
        avg_start = None if p["avg"] is None else p["avg"] * n_total
        self.converged_ = False

        def record(k, last_time):
            nonlocal F, Gd
            F, Gd = _features(phi, dphi, H, a, True)
            Phi = F.T @ F / M
            G = Gd.T @ Gd / M
            f_tr = F.T @ a / (gamma * M)
            hist["step"].append(k)
            hist["time"].append(k * dt)
            hist["train_loss"].append(float(np.mean((y - f_tr) ** 2)))
            He = None
            if ye is not None or (avg_start is not None and k >= avg_start):
                He = eval_H(k)
                Fe = _features(phi, dphi, np.ascontiguousarray(He), a, False)[0]
            if ye is not None:
                f_e = Fe.T @ a / (gamma * M)
                hist["eval_loss"].append(float(np.mean((ye - f_e) ** 2)))
            if avg_start is not None and k >= avg_start:
                Fa = np.hstack([F, Fe])
                avg["n"] += 1
                avg["f"] += Fa.T @ a / (gamma * M)
                avg["Phi"] += Fa.T @ Fa / M
            if Phi_t:
                prev = Phi_t[-1]
                dtime = max(k * dt - last_time, 1e-300)
                ch = np.linalg.norm(Phi - prev) / max(np.linalg.norm(prev), 1e-300) / dtime
                lch = abs(hist["train_loss"][-1] - hist["train_loss"][-2]) / y2 / dtime
            else:
                ch = lch = math.inf
            hist["phi_change"].append(ch)
            Phi_t.append(Phi)
            G_t.append(G)
            if not (np.all(np.isfinite(Phi)) and np.isfinite(hist["train_loss"][-1])):
                raise DivergenceError(k, dt, "population state")
            if self.check_stability:
                theta = self._theta_max(F, Gd, Ktt, freeze)
                bound = 2.0 / (theta + lamh)
                if dt >= bound:
                    raise StepSizeError(k, dt, bound)
            return max(ch, lch)

        record(0, 0.0)
        k = 0
        last_t = 0.0
        max_draws_steps = max(1, _NOISE_CHUNK // max(1, M * (rank + 1)))
        UhT = np.ascontiguousarray(Uh.T) if not freeze else np.zeros((0, P))
        UcT = np.ascontiguousarray(Uc.T) if not freeze else np.zeros((0, P))
        kern = _advance_par if M * P >= _PARALLEL_MIN_WORK else _advance_ser
        while k < n_total:
            n = min(rec_every, n_total - k)
            done = 0
            while done < n:
                m = min(n - done, max_draws_steps) if noise_on else n - done
                if noise_on:
                    xi = rng.standard_normal((m, M, rank)) if not freeze else np.zeros((1, 1, 0))
                    xa = rng.standard_normal((m, M))
                else:
                    xi, xa = np.zeros((1, 1, 0)), np.zeros((1, 1))
                kern(phi, dphi, H, C, a, Href_t, Ktt, y, r, m, dt, gamma, lam, dlt, freeze, noise_on, sq,
                     UhT, UcT, xi, xa)
                done += m
            if Nperp.shape[1]:
                # exact law of the discretised OU recursion n <- alpha n + sq xi over n steps
                a2 = alpha * alpha
                var = n if abs(1.0 - a2) < 1e-15 else (1.0 - a2 ** n) / (1.0 - a2)
                Nperp *= alpha ** n
                Nperp += sq * math.sqrt(var) * rng.standard_normal(Nperp.shape)
            k += n
            change = record(k, last_t)
            last_t = k * dt
            if self.early_stop and T == 0.0 and change < p["tol"]:
                self.converged_ = True
                break

        self.dt_ = dt
        self.n_steps_ = k
        self.t_end_ = k * dt
        self.history_ = {key: np.asarray(v, dtype=np.float64 if key != "step" else np.int64)
                         for key, v in hist.items()}
        if "eval_loss" in self.history_:
            self.history_["test_loss"] = self.history_["eval_loss"]  # WideNetwork's name
        self.Phi_t_ = np.asarray(Phi_t)
        self.G_t_ = np.asarray(G_t)
        self.times_ = self.history_["time"]
        He = eval_H(k)
        self.H_ = np.hstack([H, He])
        self.a_ = a.copy()
        self.X_all_ = X_all
        self.n_train_ = P
        self.y_ = y
        self.K_all_ = K_all
        self._params = p
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
            # A preactivation within one Euler step of a kink of phi (relu at 0) chatters across it:
            # the flow slides along the kink (a Filippov fixed point), which Euler cannot resolve.
            drift[np.abs(self.H_) <= self.dt_ * np.abs(drift)] = 0.0
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

    # ------------------------------------------------------------------------------ outputs
    def _check_fitted(self):
        if not hasattr(self, "H_"):
            raise RuntimeError("this GradientFlowDMFT is not fitted yet: call fit first")

    def _rows(self, X, name="X"):
        self._check_fitted()
        X = check_inputs(X, name, n_features=self.X_all_.shape[1])
        idx = np.empty(X.shape[0], dtype=np.int64)
        for j, row in enumerate(X):
            k = self._index.get(row.tobytes())
            if k is None:
                raise ValueError(
                    f"{name} row {j} is not among the inputs tracked at fit time: the population only "
                    f"knows its preactivations on X and X_eval; pass these inputs as X_eval to fit"
                )
            idx[j] = k
        return idx

    def predict(self, X):
        """Population predictor ``f(x) = E[a phi(h(x))]/gamma`` (eq. (4.2)) on tracked inputs.

        Time-averaged over the last ``1 - average_from`` of training when ``average_from`` is set.
        """
        return self._f_all[self._rows(X)].copy()

    def predict_kernel(self, X):
        """Kernel-ridge form ``Phi(x, X)(Phi + lambda I)^{-1} y`` of the predictor (eq. (4.3))."""
        idx = self._rows(X)
        P = self.n_train_
        Phi = self._Phi_all[:P, :P]
        v = _solve_psd(Phi + self._params["lam"] * np.eye(P), self.y_)
        return self._Phi_all[idx, :P] @ v

    def kernel(self, XA, XB=None):
        """Population kernel ``E[phi(h(x)) phi(h(x'))]`` between tracked inputs."""
        ia = self._rows(XA, "XA")
        ib = ia if XB is None else self._rows(XB, "XB")
        return self._Phi_all[np.ix_(ia, ib)].copy()

    def test_error(self, X, y):
        """Mean squared error of :meth:`predict` on ``(X, y)`` (docs/theory.md section 5)."""
        idx = self._rows(X)
        y = check_targets(y, idx.size, "y")
        return float(np.mean((self._f_all[idx] - y) ** 2))

    def features(self, X):
        """Final preactivations (M, len(X)) of the population on tracked inputs."""
        return self.H_[:, self._rows(X)].copy()

    # ------------------------------------------------------------------------------ transfer
    def transfer(self, X2, y2, X2_eval=None, *, gamma=None, weight_decay=None, temperature=None,
                 coupling=0.0, readout_only=False, y2_eval=None, dt=None, t_max=None, seed=None, a0=None):
        """Train a target population that starts from this (source) population's features.

        Each target neuron starts at, and is coupled with strength ``coupling`` to, the source
        preactivations on ``[X2; X2_eval]`` (docs/theory.md section 4, transfer); readouts are
        drawn fresh. ``X2`` and ``X2_eval`` must be among the inputs tracked by this population
        (pass them as ``X_eval`` when fitting the source).

        Parameters
        ----------
        X2, y2 : target training set.
        X2_eval : target evaluation inputs (test points), optional.
        gamma, weight_decay, temperature : target hyper-parameters (default: the source's).
        coupling : float >= 0 or inf
            ``delta``; ``inf`` (or ``readout_only=True``) fine-tunes the readout on frozen features.
        readout_only : bool
        y2_eval : targets on ``X2_eval`` for the eval-loss curve.
        dt, t_max, seed : integration settings of the target run (default: the source's; the seed
            defaults to ``seed + 1``).
        a0 : array (M,), optional
            Fresh readouts (default ``N(0, sigma_0^2)``), e.g. those of a simulated target network.

        Returns
        -------
        GradientFlowDMFT
            The fitted target population.
        """
        self._check_fitted()
        X2 = check_inputs(X2, "X2", n_features=self.X_all_.shape[1])
        if X2_eval is None:
            X2e = np.empty((0, X2.shape[1]))
        else:
            X2e = check_inputs(X2_eval, "X2_eval", n_features=X2.shape[1])
        if not isinstance(readout_only, (bool, np.bool_)):
            raise ValueError(f"readout_only must be a bool, got {readout_only!r}")
        delta = check_real("coupling", coupling, low=0.0, allow_inf=True)
        if readout_only:
            delta = math.inf
        idx = np.concatenate([self._rows(X2, "X2"), self._rows(X2e, "X2_eval") if X2e.shape[0] else
                              np.empty(0, dtype=np.int64)])
        Href = np.ascontiguousarray(self.H_[:, idx])
        seed = self.seed + 1 if seed is None else seed
        target = GradientFlowDMFT(
            activation=self._act,
            gamma=self.gamma if gamma is None else gamma,
            weight_decay=self.weight_decay if weight_decay is None else weight_decay,
            temperature=self.temperature if temperature is None else temperature,
            population=self.H_.shape[0],
            dt=self.dt if dt is None else dt,
            t_max=self.t_max if t_max is None else t_max,
            coupling=delta,
            init_scale=self.init_scale,
            n_records=self.n_records,
            tol=self.tol,
            early_stop=self.early_stop,
            average_from=self.average_from,
            check_stability=self.check_stability,
            seed=seed,
        )
        # a separate stream: the target's own generator (same seed) drives its noise
        rng = np.random.default_rng([check_int("seed", seed, low=0), 1])
        if a0 is None:
            a0 = check_real("init_scale", self.init_scale, low=0.0, low_open=True) * rng.standard_normal(Href.shape[0])
        target.fit(X2, y2, X2e if X2e.shape[0] else None, y_eval=y2_eval, h0=Href, a0=a0, h_ref=Href)
        return target
