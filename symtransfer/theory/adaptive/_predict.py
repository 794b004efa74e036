"""Prediction, kernels, observables and Monte Carlo error bars shared by the one-task and the
transfer model (docs/theory.md, eqs. (2.5), (3.3); docs/adaptive.md, eq. (A.4))."""

from __future__ import annotations

import math

import numpy as np

from ..._validation import check_inputs
from ._draws import _kappa
from ._edge import _TAU_CONDENSE, _backtrack, _edge_qp
from ._linalg import _gram, _group_sums, _matmul, _one_blas_thread, _wsum
from ._samples import _SampleSet, _at_least, _batch_stderr, _batch_weight_matrix, _moments, _reweight

_EDGE_HALVES = 8      # half-sample re-solves of the edge problem behind the error bar's nonlinearity factor
_EDGE_RESOLVE_IT = 6  # constrained Newton iterations per re-solve (they start at the solution) ...
_EDGE_RESOLVE_TOL = 1e-4  # ... down to this residual: v to ~1e-4 |y| / lambda, far below its noise


class _AdaptiveBase:
    """Prediction, kernels and observables shared by the one-task and the transfer model."""

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
            fixed point, docs/adaptive.md, eq. (A.4)); zeros for the exact and lazy solutions. At the
            edge (a condensate, eq. (A.6)) of a one-task fit it is scaled by the nonlinear response of
            half-sample re-solves (computed once per fit, on first use).
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

    @property
    def mc_std_(self):
        """Root mean square Monte Carlo error of the predictions on the training inputs (eq. (A.4));
        computed on first access (it costs one more error pass over the samples)."""
        if "_mc_std" not in self.__dict__:
            self._check_fitted()
            self._mc_std = self._train_std()
        return self._mc_std

    @_one_blas_thread
    def _train_std(self):
        """Root mean square Monte Carlo error of the predictions on the training inputs (eq. (A.4))."""
        if self._rep is None:
            return 0.0
        # on the training inputs the cross kernel is Phi_ and the conditional features are the samples'
        # own (they lie in the span): no quadrature, no weighted sum over the sample set
        return float(np.sqrt(np.mean(self._predict_std(self._psi.copy(), self.Phi_, self.X_) ** 2)))

    def _predict_std(self, F, k, X):
        B = self._rep.n_batches
        # every batch's own estimate at once: rows of Wb are the batches' weights
        rep = self._rep
        Wb = _batch_weight_matrix(rep.w, rep.u, rep.batch, B)
        dev = self._linear_dev(F, k, X, Wb, centred=False)
        sd = np.sqrt(np.sum(dev**2, axis=0) / (B * (B - 1)))
        if self._kkt is not None:
            sd = sd * self._edge_factor()
        return sd

    def _linear_dev(self, F, k, X, Wrows, centred):
        """Deviations of the predictions at ``X`` (delta method through the fixed point, eq. (A.4)) for
        the sample weights of the rows of ``Wrows``: a batch's own weights (``centred=False``) or the
        change of the weights (``centred=True``). ``F`` is overwritten."""
        rep, psi, v, c = self._rep, self._psi, self.v_, self._c
        w, weff, s = rep.w, rep.weff, psi @ v
        G = self._n_groups
        Fs = np.multiply(F, s[:, None], out=F)   # F is not needed again: no second copy of its size
        kv = 0.0 if centred else weff @ Fs              # k(x).v without the constant E_q part
        Phiv = 0.0 if centred else psi.T @ (weff * s)
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
        dkv = _matmul(Wrows, Fs) - kv
        U = (_matmul(Wrows * s, psi) - Phiv) @ Hinv.T
        if self._kkt is None:
            return dkv - U @ J.T
        dmu = -(U @ A.T) @ Sinv.T
        return dkv - (U + dmu @ HA.T) @ J.T + dmu @ Fc.T

    def _edge_factor(self):
        """Ratio (>= 1) of the nonlinear to the linear Monte Carlo response of the edge solution.

        The delta method (A.4) at the edge holds the active set and the condensate directions fixed.
        Here the constrained problem (A.6) is solved again, without new draws, on ``_EDGE_HALVES``
        random halves of the batches (complementary pairs), with the directions found afresh by the
        ascent of (A.3) and the active set free; each half's change of the training predictions
        ``-lambda (v_h - v)`` is compared with the delta method's prediction of the same change. A half
        perturbs the samples by about one full-set standard error, so the ratio measures how far the
        linear response understates the noise at that scale. Computed once per fit.
        """
        if "_edge_fac" in self.__dict__:
            return self.__dict__["_edge_fac"]
        fac = 1.0
        if self._n_groups == 1 and getattr(self, "_cond_src", None) is None \
                and getattr(self, "_edge_pool", None) is not None:
            nl, lin = self._half_resolves()
            if lin > 0.0 and np.isfinite(nl):
                fac = max(1.0, math.sqrt(nl / lin))
        self.__dict__["_edge_fac"] = fac
        return fac

    def _half_resolves(self):
        rep, psi, v, c = self._rep, self._psi, self.v_, self._c
        lam = float(self._check_hyper()["weight_decay"])
        y = self.y_
        (_, V), = rep.terms[:1]
        L = self.X_ @ V / math.sqrt(self.X_.shape[1])
        slopes = self._cond[2]
        b = math.sqrt(_TAU_CONDENSE / (2.0 * c * self.s2_))
        w, u = rep.w, rep.u
        Q = None
        if rep.q is not None:
            # E_q[psi psi^T] of the control variate: Phi_ without its condensate minus the weighted part
            Q = self.Phi_ - self._cond_kernel(self.X_, self.X_) - _gram(psi, w) + _gram(psi, u)
        rng = np.random.default_rng(12345)
        B = rep.n_batches
        rows, dv = [], []
        for _ in range(_EDGE_HALVES // 2):
            perm = rng.permutation(B)
            for half in (perm[:B // 2], perm[B // 2:]):
                sel = np.isin(rep.batch, half)
                wh = np.where(sel, w, 0.0)
                wh /= wh.sum()
                uh = np.where(sel, u, 0.0)
                if uh.sum() > 0:
                    uh /= uh.sum()
                cv = None if Q is None else Q - _gram(psi[sel], uh[sel])
                with np.errstate(divide="ignore"):
                    ss = _SampleSet(psi[sel], None, 1, False, v, logw0=np.log(wh[sel]), cv=cv)
                vh = self._resolve_edge(ss, v, y, lam, c, b, L, slopes)
                if vh is None:
                    continue
                rows.append((wh - uh) - (w - u))
                dv.append(vh - v)
        if not rows:
            return math.nan, 0.0
        dev = self._linear_dev(psi.copy(), self.Phi_, self.X_, np.asarray(rows), centred=True)
        nl = float(np.sum((lam * np.asarray(dv)) ** 2))
        return nl, float(np.sum(dev**2))

    def _resolve_edge(self, ss, v, y, lam, c, b, L, slopes):
        """Constrained Newton (as in :func:`._edge._newton_edge`) on fixed samples ``ss`` from ``v``, with
        cutting planes from the ascent of (A.3) started at the fit's pool; ``None`` if it fails."""
        starts = self._edge_pool
        s2 = self.s2_

        def tau(vv, st):
            k, E, vals = _kappa(vv, L, slopes, st)
            return 2.0 * c * s2 * k, E, 2.0 * c * s2 * vals

        def retract(vv):
            tv = tau(vv, starts)[0]
            return vv * math.sqrt(_TAU_CONDENSE / tv) if tv > _TAU_CONDENSE else vv

        def energy(vv, lnZ):
            cvq = 0.0 if ss.cv is None else 0.5 * vv @ ss.cv @ vv
            return 0.5 * lam * vv @ vv - y @ vv + cvq + lnZ / (2.0 * c)

        ynorm = max(float(np.linalg.norm(y)), 1e-300)
        try:
            for _ in range(_EDGE_RESOLVE_IT):
                w, s, lnZ, _ = _reweight(ss, v, c)
                g, H = _moments(ss, v, w, s, c, lam, y)
                H = _at_least(H, lam)
                _, E, taus = tau(v, starts)
                E, taus = E[taus >= 0.8 * _TAU_CONDENSE], taus[taus >= 0.8 * _TAU_CONDENSE]
                if len(E) == 0:
                    return None
                E = E[_distinct(E)]
                Hs = E @ L.T
                Fa = Hs * np.where(Hs > 0.0, slopes[0], slopes[1])
                A = np.sign(Fa @ v)[:, None] * Fa
                d, mu = _edge_qp(H, g, A, b - A @ v)
                if np.linalg.norm(g + A.T @ mu) / ynorm < _EDGE_RESOLVE_TOL:
                    break
                t, vt, _ = _backtrack(ss, c, v, d, float(g @ d), energy(v, lnZ), energy, retract, 1e-3)
                if t < 1e-3:
                    break   # no descent left at this sample size: v is as good as the samples make it
                v = vt
        except np.linalg.LinAlgError:
            return None
        return v

    def features(self, X):
        """Mean preactivations ``E[h(x) | sample]`` of the sampled neurons on ``X``, shape
        ``(n_samples, len(X))`` (the layout of :meth:`symtransfer.sim.WideNetwork.features`); the samples
        carry the weights ``sample_weights_``. Exact and lazy solutions have no samples.
        """
        X = self._check_X(X)
        if self._rep is None:
            raise ValueError(f"{type(self).__name__}.features: this solution is exact (linear activation or "
                             f"gamma = 0) and has no sampled neurons; use method='sampling'")
        return self._rep.means(X)

    def _set_no_solver(self):
        self.converged_, self.n_iter_, self.n_draws_ = True, 0, 0
        self.residuals_ = [0.0]
        self.residual_ = 0.0

    def _set_exact_diagnostics(self):
        self.sample_weights_ = np.zeros(0)
        self.n_samples_ = 0
        self.Phi_stderr_ = np.zeros_like(self.Phi_)
        self.mc_error_ = 0.0
        self._set_no_solver()

    def _set_condensate(self, cond, V, slopes):
        """Store the condensate ``(E, rho)`` of :func:`_newton_edge` (directions in the coordinates of
        ``V``) and add its kernel to ``Phi_`` (docs/adaptive.md, eq. (A.6))."""
        self.__dict__.pop("_edge_fac", None)
        if cond is None:
            self._cond, self._kkt, self.condensate_weights_ = None, None, np.zeros(0)
            self._edge_pool = None
            return
        E, rho = cond[:2]
        # the pool of directions of the normalisability ascent (starts of the error bar's re-solves)
        self._edge_pool = np.vstack([E, cond[2]]) if len(cond) > 2 else None
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
        self.sample_weights_ = rep.w
        self.n_samples_ = len(rep.w)
        self.Phi_ = 0.5 * (Phi + Phi.T)
        self.v_ = v
        # Phi_stderr_ and mc_error_ are computed on first access (one more pass over the samples)
        self.__dict__.pop("_Phi_stderr", None)
        self.__dict__.pop("_mc_error", None)

    @property
    def Phi_stderr_(self):
        """Batch-means standard error of every entry of ``Phi_`` at fixed ``v_`` (docs/adaptive.md,
        section 4); computed on first access."""
        if "_Phi_stderr" not in self.__dict__:
            self._check_fitted()
            rep = self._rep
            self._Phi_stderr = _batch_stderr(self._psi, rep.w, rep.u, rep.batch, rep.n_batches)
        return self._Phi_stderr

    @Phi_stderr_.setter
    def Phi_stderr_(self, value):
        self._Phi_stderr = value

    @property
    def mc_error_(self):
        """``||Phi_stderr_||_F / ||Phi_||_F``; computed on first access."""
        if "_mc_error" not in self.__dict__:
            norm = float(np.linalg.norm(self.Phi_))
            err = float(np.linalg.norm(self.Phi_stderr_))
            # a kernel that vanishes identically (phi = 0) is known exactly: no relative error to report
            self._mc_error = err / norm if norm > 0.0 else (0.0 if err == 0.0 else math.inf)
        return self._mc_error

    @mc_error_.setter
    def mc_error_(self, value):
        self._mc_error = value


def _distinct(E, tol=0.999):
    """Indices of the rows of ``E`` (unit vectors) that are not repeats of an earlier row."""
    keep = []
    for i in range(len(E)):
        if not keep or np.max(np.abs(E[keep] @ E[i])) < tol:
            keep.append(i)
    return np.asarray(keep)
