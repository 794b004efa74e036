"""Sample sets of the tilted measure on the training inputs: importance reweighting between
draws, the moments of the potential (A.1), and batch standard errors (docs/adaptive.md, eqs. (A.2), (A.5))."""

from __future__ import annotations

import numpy as np

from ._linalg import _gram, _group_sums

_KISH_TRUST = 0.3    # reweighted estimates are trusted down to this effective-sample fraction
_KISH_REDRAW = 0.7   # below this, draw fresh samples at the current v
_KISH_FINAL = 0.9    # the answer is accepted only from samples drawn this close to the solution


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


def _all_moments(draw, ss, v, w, s, c, lam, y):
    """:func:`_moments` plus, in transfer from a condensed source, its image (eq. (A.7))."""
    g, H = _moments(ss, v, w, s, c, lam, y)
    if draw.extra is not None:
        gx, Hx = draw.extra.moments(v)
        g, H = g + gx, H + Hx
    return g, _at_least(H, lam)


def _at_least(H, lam):
    """``H`` with its eigenvalues below ``lam`` raised to ``lam``.

    The exact Hessian of (A.1) is ``lam I + E[psi psi^T] + 2 c Cov(s psi) >= lam I`` (``ln Z`` is
    convex, eq. (A.2)); a sampled one below that (the covariance of a few samples per quenched group,
    a strong tilt) is wrong only by noise there, and an indefinite Newton matrix would give ascent
    directions and fail the Cholesky factor of the edge step.
    """
    P = H.shape[0]
    try:
        np.linalg.cholesky(H - (1.0 - 1e-9) * lam * np.eye(P))
        return H
    except np.linalg.LinAlgError:
        e, U = np.linalg.eigh(H)
        return (U * np.maximum(e, lam)) @ U.T


def _all_kernel(draw, ss, v, w):
    """The kernel at ``v``: sampled part plus, from a condensed source, its image (eq. (A.7))."""
    Phi = _kernel_of(ss, w)
    return Phi if draw.extra is None else Phi + draw.extra.kernel(v)


def _record(history, taus, draw, v, res):
    """Append the residual and the normalisability index at ``v``; return the index."""
    history.append(res)
    taus.append(draw.tau(v))
    return taus[-1]


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
