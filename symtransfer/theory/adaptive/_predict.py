"""Prediction, kernels, observables and Monte Carlo error bars shared by the one-task and the
transfer model (docs/theory.md, eqs. (2.5), (3.3); docs/adaptive.md, eq. (A.4))."""

from __future__ import annotations

import math
import warnings

import numpy as np

from ..._validation import check_inputs
from ...errors import ConvergenceWarning
from ._linalg import _group_sums, _matmul, _one_blas_thread, _wsum
from ._samples import _batch_stderr, _batch_weight_matrix

# independent re-solves (fresh solver seeds) that calibrate the error bar at the edge: at relu gamma = 8
# 2 / 3 / 4 of them gave a coverage rms z of 1.15 / 1.11 / 1.09 over 8 seeds (docs/adaptive.md section 7)
_EDGE_REPLICATES = 3
_N_PROBE, _PROBE_SEED = 32, 20261202   # probe inputs of mc_std_


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
            edge (a condensate, eq. (A.6)) of a one-task fit it is calibrated against independent
            re-solves (``_EDGE_REPLICATES`` more fits, made once per fit on first use).
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
        """Monte Carlo error of the predictions (eq. (A.4)): the larger of the root mean square errors
        on the training inputs and on ``_N_PROBE`` held-out-like probe inputs (drawn from a Gaussian
        with the training inputs' mean and covariance, fixed seed); computed on first access (one more
        error pass over the samples). The probes matter at the edge, where the training predictions
        ``y - lambda v`` are pinned by the active slabs (there 0.004-0.005 against 0.036-0.059 on held-out
        inputs, relu gamma 8, docs/adaptive.md section 7)."""
        if "_mc_std" not in self.__dict__:
            self._check_fitted()
            self._mc_std = self._mc_std_value()
        return self._mc_std

    @_one_blas_thread
    def _mc_std_value(self):
        if self._rep is None:
            return 0.0
        # on the training inputs the cross kernel is Phi_ and the conditional features are the samples'
        # own (they lie in the span): no quadrature, no weighted sum over the sample set
        e0 = self._predict_std(self._psi.copy(), self.Phi_, self.X_, calibrated=False)
        Xp = self._probe_inputs()
        k, F = self._cross(Xp)
        probe = self._predict_std(F, k, Xp, calibrated=False)
        fac = 1.0 if self._kkt is None else self._edge_factor(e0)
        return fac * max(float(np.sqrt(np.mean(e0**2))), float(np.sqrt(np.mean(probe**2))))

    def _probe_inputs(self):
        """``_N_PROBE`` inputs ``mean + sum_mu z_mu (x_mu - mean) / sqrt(P - 1)``, ``z ~ N(0, 1)``: the
        training inputs' mean and covariance, inside their span (no quadrature)."""
        X = self.X_
        mu = X.mean(axis=0)
        Z = np.random.default_rng(_PROBE_SEED).standard_normal((_N_PROBE, X.shape[0]))
        return mu + Z @ (X - mu) / math.sqrt(max(X.shape[0] - 1, 1))

    def _predict_std(self, F, k, X, calibrated=True):
        B = self._rep.n_batches
        # every batch's own estimate at once: rows of Wb are the batches' weights
        rep = self._rep
        Wb = _batch_weight_matrix(rep.w, rep.u, rep.batch, B)
        dev = self._linear_dev(F, k, X, Wb)
        sd = np.sqrt(np.sum(dev**2, axis=0) / (B * (B - 1)))
        if self._kkt is not None and calibrated:
            sd = sd * self._edge_factor()
        return sd

    def _linear_dev(self, F, k, X, Wrows):
        """Deviations of the predictions at ``X`` (delta method through the fixed point, eq. (A.4)) for
        the batches' own sample weights, the rows of ``Wrows``. ``F`` is overwritten."""
        rep, psi, v, c = self._rep, self._psi, self.v_, self._c
        w, weff, s = rep.w, rep.weff, psi @ v
        G = self._n_groups
        Fs = np.multiply(F, s[:, None], out=F)   # F is not needed again: no second copy of its size
        kv = weff @ Fs              # k(x).v without the constant E_q part
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
        dkv = _matmul(Wrows, Fs) - kv
        U = (_matmul(Wrows * s, psi) - Phiv) @ Hinv.T
        if self._kkt is None:
            return dkv - U @ J.T
        dmu = -(U @ A.T) @ Sinv.T
        return dkv - (U + dmu @ HA.T) @ J.T + dmu @ Fc.T

    def _edge_factor(self, e0=None):
        """Calibration factor (>= 1) of the error bar of an edge solution (a condensate, eq. (A.6)).

        The delta method (A.4) at the edge holds the active set and the condensate directions fixed, and
        which directions a solve finds depends on its whole sampling path (reference fits, chain
        mixing, rejected draws), not only on the final samples: at relu gamma = 8 the seed-to-seed
        scatter was 2-4 times the reported error, and re-solves on halves of the final samples saw
        almost none of it (factors 1.0-1.2). So the training predictions ``y - lambda v`` of
        ``_EDGE_REPLICATES`` independent solves (fresh seeds, the same sample size) are compared with
        this one's: every solve has the same error, so ``sum_k |f_k - f|^2 / (2 K)`` estimates this
        solve's squared error, and the factor is its ratio to the delta method's (at least 1).
        Computed once per fit; replicates that fail are left out.
        """
        if "_edge_fac" in self.__dict__:
            return self.__dict__["_edge_fac"]
        fac = 1.0
        vs = self._edge_replicates()
        if vs:
            lam = float(self._check_hyper()["weight_decay"])
            if e0 is None:   # the delta method's error on the training inputs
                e0 = self._predict_std(self._psi.copy(), self.Phi_, self.X_, calibrated=False)
            spread = sum(float(np.sum((lam * (vk - self.v_)) ** 2)) for vk in vs)
            den = 2.0 * len(vs) * float(np.sum(e0 ** 2))
            if den > 0.0 and math.isfinite(spread):
                fac = max(1.0, math.sqrt(spread / den))
        elif vs is not None:
            warnings.warn(ConvergenceWarning(
                f"{type(self).__name__}: every independent re-solve behind the error bar at the edge failed; "
                f"return_std and mc_std_ are the uncalibrated delta method, which at the edge can be 2-4 times "
                f"too small (docs/adaptive.md section 7)"), stacklevel=4)
        self.__dict__["_edge_fac"] = fac
        return fac

    def _edge_replicates(self):
        """``v_`` of independent solves of the same edge problem (see :meth:`_edge_factor`), or ``None``
        where the model has none to make."""
        return None

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

