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

Modules, by concern: :mod:`._representation` (weighted samples of a measure and the Gaussian
conditional of untracked preactivations), :mod:`._samples` (sample sets, reweighting, moments of
(A.1), batch errors), :mod:`._draws` (elliptical-slice draws, the Gaussian reference, the
normalisability index), :mod:`._interior` (damped Newton inside the domain), :mod:`._edge` (the
constrained solve at the edge, eq. (A.6)), :mod:`._source_condensate` (its image in transfer,
eq. (A.7)), :mod:`._predict` (prediction and error bars, eq. (A.4)), :mod:`._linalg` (weighted sums
and the BLAS thread policy); the estimators are here.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np

from ..._validation import check_int, check_real, check_Xy
from ...activations import apply_elementwise, get_activation
from ...base import TransferEstimator, target_seed
from ...errors import ConvergenceError, ConvergenceWarning, EdgeOfNormalisabilityError, NoSaddlePointError
from ._draws import _Diverged, _ESSDraw, _asymptotic_slopes
from ._interior import _solve
from ._linalg import _one_blas_thread
from ._predict import _EDGE_REPLICATES, _AdaptiveBase
from ._representation import _Rep, _cmean, _kinks, _row_basis
from ._source_condensate import _SourceCondensate

# private names that tests and benchmarks reach through this package (kept importable from here)
from ._edge import _TAU_CONDENSE  # noqa: E402,F401
from ._representation import _GL_BREAKS, _N_GL, _N_GL2  # noqa: E402,F401

__all__ = ["AdaptiveKernel", "AdaptiveTransfer"]


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


_LARGE_VARIANCE = 1e2
_MC_TOL_ROUNDS = 4   # solves at most for one mc_tol request
# target states per source sample in the quenched average: the group normalisation is biased by
# O(1/n_inner), 0.029 RMS at 8 on a digits transfer, 32 and 64 agree (docs/adaptive.md section 7)
_N_INNER = 32


def _solve_to_mc_tol(model, solve, n_samples, granule, mc_tol, max_samples):
    """``solve(n)``, repeated with more samples until the Monte Carlo error of the training
    predictions is at most ``mc_tol`` (docs/adaptive.md section 7); sets ``n_samples_total_``
    (``mc_std_`` is computed from the final solve on first access), and warns when ``max_samples`` or the round limit stops it short."""
    total = 0
    for _ in range(_MC_TOL_ROUNDS):
        solve(n_samples)
        total += model.n_samples_
        model.__dict__.pop("_mc_std", None)   # mc_std_ is computed on first use (a second error pass)
        if mc_tol is None or model.mc_std_ <= mc_tol or n_samples >= max_samples:
            break
        # the error of a mean over n samples falls like n^-1/2; 20 % over the estimate, so that
        # the scatter of the error estimate itself rarely asks for one more round
        want = n_samples * 1.2 * (model.mc_std_ / mc_tol) ** 2
        n_samples = min(max_samples, granule * math.ceil(want / granule))
    model.n_samples_total_ = total
    if mc_tol is not None and model.mc_std_ > mc_tol:
        warnings.warn(ConvergenceWarning(
            f"{type(model).__name__}: Monte Carlo error {model.mc_std_:.3g} of the predictions is above "
            f"mc_tol = {mc_tol:g} after {total} samples in all (last solve {model.n_samples_}, max_samples "
            f"{max_samples}); raise max_samples or loosen mc_tol"), stacklevel=3)


def _noted(exc, note):
    """A copy of the convergence error ``exc`` (same public class, histories kept) with ``note``
    appended to its message; other errors unchanged."""
    msg = f"{exc.args[0] if exc.args else exc}. Note: {note}"
    if isinstance(exc, EdgeOfNormalisabilityError):
        new = EdgeOfNormalisabilityError(msg)
        new.taus = exc.taus
    elif type(exc) is ConvergenceError:
        new = ConvergenceError(msg)
    else:
        return exc
    new.residuals = exc.residuals
    return new


def _finite_modes_noted(exc, act):
    """``exc`` with the likely cause named when the constrained solve failed for a linearly growing
    activation that is not piecewise linear (silu, gelu, softplus): there ``phi - phi_inf`` adds a
    term linear in ``t`` to the log-density along near-critical rays, so the measure near the edge can
    have modes at a finite distance (silu) that the chains do not resolve (docs/adaptive.md section 7)."""
    if not isinstance(exc, EdgeOfNormalisabilityError) or act.linear_pieces is not None:
        return exc
    return _noted(exc, f"{act.name} is not piecewise linear: near the edge phi - phi_inf reshapes the "
                       f"single-site measure at a finite distance (for silu into modes that this sampler does "
                       f"not resolve, docs/adaptive.md section 7), which the condensate (mass at infinity) "
                       f"does not describe; a smaller gamma, or relu, avoids this")


def _rediagnosed(exc, X, s2):
    """``exc`` with the data scale named when it is the likely cause: preactivation variances
    ``s^2 |x|^2/D`` far above 1 make the tilt exp(c (v.phi)^2) so sharp that no sample size resolves
    it, which "increase n_samples" would misdiagnose."""
    var = s2 * float(np.max(np.sum(X * X, axis=1))) / X.shape[1]
    if not var > _LARGE_VARIANCE:
        return exc
    return _noted(exc, f"the prior preactivation variance s^2 |x|^2/D = {var:.3g} is far above 1 (X has rms "
                       f"{math.sqrt(var / s2):.3g} per feature): the data scale, not n_samples, is the likely "
                       "cause; standardise X (unit variance per feature)")


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
    gamma, lam, T = est._check_hyper().values()
    return act, gamma, lam, T


def _set_history(model, X, y, eval_set):
    """``history_`` (docs/estimators.md) with one entry, the solution (``time = n_iter_``): the Newton
    iterates of the saddle point are not models of a network (their kernels are not self-consistent);
    ``residuals_`` keeps the solver's own trace."""
    test = [] if eval_set is None else [float(np.mean((model.predict(eval_set[0]) - eval_set[1]) ** 2))]
    # on the training inputs predict() is Phi_ v_ (eq. (2.5)); the cross-kernel quadrature is not needed
    model.history_ = {"time": np.array([float(model.n_iter_)]),
                      "train_loss": np.array([float(np.mean((model.Phi_ @ model.v_ - y) ** 2))]),
                      "test_loss": np.array(test, dtype=np.float64)}


def _no_saddle(act, where="gamma"):
    return NoSaddlePointError(
        f"activation {act.name!r} grows faster than linearly: the tilt exp(c phi(h)^2) of the "
        f"single-site measure (docs/theory.md, eq. (2.4)) is not normalisable for any {where} > 0, so the "
        f"equilibrium saddle point does not exist (eq. (2.6)); at large width single neurons run away. "
        f"Use the gradient-flow theory (GradientFlowDMFT, docs/theory.md section 4), which still applies.")


class AdaptiveKernel(_AdaptiveBase, TransferEstimator):
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
        Monte Carlo samples of the single-site measure (``n_chains`` chains of ``n_samples/n_chains``);
        with ``mc_tol``, the first sample size tried.
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
    mc_tol : float, optional
        Wanted Monte Carlo standard error of the predictions (``mc_std_``: root mean square over the
        training inputs or over held-out-like probe inputs, whichever is larger, as reported by
        ``predict(X, return_std=True)``, docs/adaptive.md eq. (A.4)). The solve is repeated
        with the sample size scaled by ``(achieved / mc_tol)^2`` (the error falls like
        ``n_samples^-1/2``) until it is met or ``max_samples`` is reached (at most 4 solves; a
        :class:`~symtransfer.errors.ConvergenceWarning` says when it was not met). ``None``: one solve
        with ``n_samples``.
    max_samples : int
        Largest sample size ``mc_tol`` may ask for (memory grows like ``max_samples * P``).

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
    mc_std_ : float
        Achieved Monte Carlo standard error of the predictions: the larger of the rms of
        ``predict(X, return_std=True)[1]`` on the training inputs and on 32 held-out-like probe inputs
        (the training inputs' mean and covariance); ``0`` for exact solutions.
    n_samples_ : int
        Samples of the final solve (the solver may add samples to recover from noise, and ``mc_tol``
        chooses the size); ``n_samples_total_`` counts the samples of every solve made.
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
                 n_chains=64, tol=1e-4, max_iter=100, method="auto", edge="condensate", seed=0, mc_tol=None,
                 max_samples=2**20):
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
        self.mc_tol = mc_tol
        self.max_samples = max_samples

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

    def fit(self, X, y, eval_set=None):
        """Solve the saddle point (eqs. (2.3)-(2.4)) on ``(X, y)``; returns ``self``.

        ``eval_set=(X_test, y_test)`` only fills ``history_["test_loss"]``.

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
        eval_set = self._check_eval_set(eval_set, X.shape[1])
        for k in ("Phi_", "n_features_in_"):   # a model whose solve fails is not fitted
            self.__dict__.pop(k, None)
        mc_tol = None if self.mc_tol is None else check_real("mc_tol", self.mc_tol, low=0.0, low_open=True)
        max_samples = check_int("max_samples", self.max_samples, low=n_samples)
        _solve_to_mc_tol(self, lambda n: self._fit(X, y, act, gamma, lam, T, n, n_chains, tol, max_iter, seed),
                         n_samples, n_chains, mc_tol, max_samples)
        self.n_features_in_ = X.shape[1]
        _set_history(self, X, y, eval_set)
        return self

    @_one_blas_thread
    @_public_errors
    def _fit(self, X, y, act, gamma, lam, T, n_samples, n_chains, tol, max_iter, seed):
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
            from ..linear import LinearTheory

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
            raise _finite_modes_noted(_rediagnosed(exc, X, self.s2_), act) from None
        batch = np.repeat(np.arange(n_chains), draw.n_keep)   # the solver may have grown the set
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

    def _edge_replicates(self):
        """``v_`` of ``_EDGE_REPLICATES`` independent solves of this edge problem: the same
        hyper-parameters and sample size, fresh solver seeds, no ``mc_tol``; failed ones left out."""
        n = self.n_samples_
        params = {**self.get_params(), "mc_tol": None, "n_samples": n, "max_samples": max(self.max_samples, n)}
        vs = []
        for s in np.random.SeedSequence([int(self.seed), 29]).generate_state(_EDGE_REPLICATES):
            try:
                vs.append(type(self)(**{**params, "seed": int(s)}).fit(self.X_, self.y_).v_)
            except ConvergenceError:
                pass
        return vs

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

    def _transfer(self, X2, y2, *, coupling, gamma, weight_decay, temperature, eval_set=None, n_samples=None,
                  n_inner=_N_INNER, seed=None, mc_tol=None, max_samples=None, **options):
        """Fitted target model trained from this source (docs/theory.md, section 3), via :meth:`transfer`.

        ``coupling`` (``delta``): ``inf`` (or ``readout_only=True``) is readout fine-tuning on the source
        features (kernel ridge regression with the source kernel), ``0`` is training from scratch,
        anything between is jointly rich; a source condensate (eq. (A.6)) enters the target through its
        image (eq. (A.7)). Omitted ``gamma``, ``weight_decay``, ``temperature`` are the source's.

        Other Parameters
        ----------------
        n_samples : int, optional
            Target Monte Carlo samples (default: the source's ``n_samples``).
        n_inner : int
            Samples of the target conditional per source sample (quenched average, eq. (3.2)). Each group is
            normalised on its own, which biases the quenched average by O(1/n_inner): at 8 (the default
            before issue 15) a digits transfer moved by 0.029 RMS, three times its Monte Carlo error; 32
            and 64 agree within it (docs/adaptive.md section 7). The time is the same at every value; fewer
            source samples make the reported Monte Carlo error larger (x1.45 at 8 -> 32, equal n_samples,
            measured on two problems), but that error is reported and the bias is not.
        seed : int, optional
            Default: source seed + 1.
        mc_tol, max_samples : optional
            As for :class:`AdaptiveKernel` (target sample size chosen for the wanted Monte Carlo error
            of the target predictions); default: the source's.

        Returns
        -------
        AdaptiveTransfer
        """
        if options:
            raise ValueError(f"AdaptiveKernel.transfer got unknown options {sorted(options)}; it accepts "
                             f"coupling, readout_only, gamma, weight_decay, temperature, eval_set, n_samples, "
                             f"n_inner, seed, mc_tol and max_samples")
        return AdaptiveTransfer(self, gamma=gamma, weight_decay=weight_decay, temperature=temperature,
                                coupling=coupling, n_samples=n_samples, n_inner=n_inner, seed=seed,
                                mc_tol=mc_tol, max_samples=max_samples).fit(X2, y2, eval_set=eval_set)


class AdaptiveTransfer(_AdaptiveBase, TransferEstimator):
    """Target model after transfer from a fitted :class:`AdaptiveKernel` (docs/theory.md, section 3).

    Built by :meth:`AdaptiveKernel.transfer`; has the same prediction and observable methods and
    fitted attributes (``Phi_``, ``v_``, ``Phi_stderr_``, ``mc_error_``, ``converged_``, ``n_iter_``,
    ``residual_``) plus ``m_`` and ``s2c_`` of eq. (3.1).
    """

    # clone keeps the fitted source (a fresh copy of it would not be fitted)
    _shared_params = ("source",)

    def __init__(self, source, gamma=1.0, weight_decay=1.0, temperature=1.0, coupling=0.0, n_samples=None,
                 n_inner=_N_INNER, seed=None, mc_tol=None, max_samples=None):
        self.source = source
        self.mc_tol = mc_tol
        self.max_samples = max_samples
        self.gamma = gamma
        self.weight_decay = weight_decay
        self.temperature = temperature
        self.coupling = coupling
        self.n_samples = n_samples
        self.n_inner = n_inner
        self.seed = seed

    @property
    def activation(self):
        """The source's activation (the target network has the same neurons)."""
        return self.source.activation

    def _edge_replicates(self):
        """At ``coupling = 0`` the target problem is the one-task problem: its re-solves."""
        scratch = getattr(self, "_scratch", None)
        return None if scratch is None else scratch._edge_replicates()

    def fit(self, X2, y2, eval_set=None):
        """Solve the quenched target saddle point (eqs. (3.1)-(3.3)); returns ``self``.

        ``eval_set=(X_test, y_test)`` only fills ``history_["test_loss"]``.
        """
        src = self.source
        if not isinstance(src, AdaptiveKernel) or not hasattr(src, "Phi_"):
            raise ValueError("source must be a fitted AdaptiveKernel")
        X2, y2 = check_Xy(X2, y2, "X2", "y2", n_features=src.X_.shape[1])
        eval_set = self._check_eval_set(eval_set, X2.shape[1])
        for k in ("Phi_", "n_features_in_"):   # a model whose solve fails is not fitted
            self.__dict__.pop(k, None)
        n_samples = src.n_samples if self.n_samples is None else self.n_samples
        n_samples = check_int("n_samples", n_samples, low=64)
        mc_tol = src.mc_tol if self.mc_tol is None else self.mc_tol
        mc_tol = None if mc_tol is None else check_real("mc_tol", mc_tol, low=0.0, low_open=True)
        max_samples = check_int("max_samples", src.max_samples if self.max_samples is None else self.max_samples,
                                low=n_samples)
        _solve_to_mc_tol(self, lambda n: self._fit(X2, y2, n), n_samples, 64, mc_tol, max_samples)
        self.n_features_in_ = X2.shape[1]
        _set_history(self, X2, y2, eval_set)
        return self

    @_one_blas_thread
    @_public_errors
    def _fit(self, X2, y2, n_samples):
        src = self.source
        act, gamma, lam, T = _check_common(self)
        delta = check_real("coupling", self.coupling, low=0.0, allow_inf=True)
        n_inner = check_int("n_inner", self.n_inner, low=2)
        seed = target_seed(src.seed) if self.seed is None else check_int("seed", self.seed, low=0)
        _check_scale(X2, max(src.s2_, T / lam), "X2")
        self.activation_ = src.activation_
        self.X_, self.y_ = X2, y2
        self.s2_ = T / lam
        self._exact = None
        self._rep = None
        self._cond, self._kkt, self.condensate_weights_ = None, None, np.zeros(0)
        self._cond_src = None
        self._scratch = None
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
                      "residuals_", "residual_", "n_samples_", "sample_weights_", "_rep", "_psi", "_H", "_c", "_n_groups", "_cond", "_kkt", "_cond_src",
                      "condensate_weights_"):
                if hasattr(scratch, k):
                    setattr(self, k, getattr(scratch, k))
            self._exact = scratch._exact
            self._scratch = scratch   # its error bar is calibrated as the one-task problem's
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
        n_inner = draw.n_keep   # the solver may have grown the set
        Wk = ss.Z @ V2.T + m * np.repeat(W1_perp, n_inner, axis=0)
        (coef1, V12), = rep1.terms
        n_batches = min(64, n_outer)
        batch = np.repeat(np.arange(n_outer) * n_batches // n_outer, n_inner)
        rep = _Rep(Wk, w, batch, n_batches, [(m * m * coef1, V12), (s2c, V2)], act.compile().phi,
                   _kinks(act), cmean=_cmean(act))
        self._set_from_samples(rep, ss.psi, Phi, v, H, c2, n_groups=n_outer)   # Phi: with the image
        self._set_condensate(cond, V2, _asymptotic_slopes(act))
        if draw.extra is not None:
            self._cond_src = (*draw.extra.neurons(v), draw.extra.slopes)
        self.converged_, self.n_iter_, self.n_draws_ = True, n_iter, n_draws
        self.residuals_ = hist
        self.residual_ = hist[-1]
        return self
