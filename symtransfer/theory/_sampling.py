"""Numba kernels of the adaptive-kernel solver (docs/adaptive.md).

* :func:`ess_sample` -- elliptical slice sampling (Murray, Adams & MacKay 2010) of many independent
  chains of a tilted Gaussian ``N(z; mu_prior, s^2 I) exp(c (v . phi(L z))^2)`` in the coordinates
  ``z`` of the hidden weight on the span of the training inputs. The ellipses are drawn around a
  Gaussian *reference* ``N(mu_ref, A A^T)`` fitted to earlier samples, not around the prior: the
  likelihood seen by the slice sampler is then the ratio target/reference, nearly flat, and the
  chains decorrelate in a few steps even when the tilt is strong (docs/adaptive.md, section 2).
* :func:`gh_mean` / :func:`gh_pair` -- Gauss-Hermite expectations of ``phi`` (and of products)
  over the Gaussian conditional of preactivations outside the sampled subspace.

Randomness: the Gaussian directions are pre-drawn by the caller (common random numbers across solver
iterations); the uniforms of the slice come from a splitmix64 stream per chain, so a run gives the
same numbers whatever the number of threads.

Kernels take the activation as a Numba function argument; they are therefore compiled once per
activation and process (no ``cache=True``: the type key holds a function address).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from .._rng import GOLDEN, mix64

_S11 = np.uint64(11)
_TWO_M53 = 1.0 / 9007199254740992.0
_TWO_PI = 2.0 * math.pi
# Sums may be reordered and fused (SIMD dot products: one ESS draw 2.6x faster); no finite-math
# assumptions, because runaway chains are detected by their non-finite values.
_FAST = {"reassoc", "contract"}
# After this many shrinkages the bracket is ~2pi * 2^-60 wide: the step keeps the current point.
_MAX_SHRINK = 60


@nb.njit(inline="always")
def _matvec(M, x, out):
    """``out = M @ x`` without allocating (called per chain and per step)."""
    for i in range(M.shape[0]):
        acc = 0.0
        for k in range(M.shape[1]):
            acc += M[i, k] * x[k]
        out[i] = acc


@nb.njit(inline="always")
def _uniform(state):
    """Next uniform in (0, 1) of the splitmix64 stream held in ``state[0]``."""
    state[0] += GOLDEN
    z = mix64(state[0])
    return (np.float64(z >> _S11) + 0.5) * _TWO_M53


@nb.njit(parallel=True, fastmath=_FAST)
def ess_sample(phi, B, A, href, dref, inv_s2, v, c, zeta0, normals, seeds, n_burn, n_keep,
               zeta_out, s_out, sq_out):
    """Run ``C`` independent elliptical-slice chains in whitened reference coordinates ``zeta``.

    The weight coordinates are ``z = mu_ref + A zeta``; the reference is ``zeta ~ N(0, I)``, and the
    log-likelihood handed to the slice sampler is

        -|z - mu_prior|^2 / (2 s^2) + c (v . phi(h))^2 + |zeta|^2 / 2,     h = L z = href + B zeta.

    Parameters
    ----------
    phi : numba function
        Activation.
    B : (P, r) float64
        ``L A``.
    A : (r, r) float64
        Reference factor.
    href : (C, P) float64
        ``L mu_ref`` per chain.
    dref : (C, r) float64
        ``mu_ref - mu_prior`` per chain.
    inv_s2 : float
        ``1/s^2`` of the prior.
    v : (P,) float64
        Dual vector of the tilt.
    c : float
        Tilt strength ``gamma^2 lambda / (2 T)``.
    zeta0 : (C, r) float64
        Initial states.
    normals : (C, n_burn + n_keep, r) float64
        Standard normal directions of the ellipses.
    seeds : (C,) uint64
        Seeds of the uniform streams.
    n_burn, n_keep : int
    zeta_out : (C, n_keep, r) float64, written
    s_out : (C, n_keep) float64, written: the tilt's ``v . phi(h)`` at the kept states (``phi(h)``
        itself is recomputed from ``z`` by the caller when needed: storing it here would cost a
        sample-set-sized array per draw).
    sq_out : (C,) float64, written: mean ``|zeta|^2`` over kept states (divergence diagnostic).
    """
    C, r = zeta0.shape
    P = B.shape[0]
    n_steps = n_burn + n_keep
    for ch in nb.prange(C):
        state = np.empty(1, dtype=np.uint64)
        state[0] = seeds[ch]
        zeta = zeta0[ch].copy()
        Bz = np.zeros(P)
        Bn = np.zeros(P)
        Az = np.zeros(r)
        An = np.zeros(r)
        _matvec(B, zeta, Bz)
        _matvec(A, zeta, Az)
        # current log-likelihood
        q2 = 0.0
        zz = 0.0
        for j in range(r):
            d = dref[ch, j] + Az[j]
            q2 += d * d
            zz += zeta[j] * zeta[j]
        s = 0.0
        for p in range(P):
            s += v[p] * phi(href[ch, p] + Bz[p])
        ll = -0.5 * inv_s2 * q2 + c * s * s + 0.5 * zz
        s_cur = s
        sq_acc = 0.0
        for step in range(n_steps):
            nu = normals[ch, step]
            _matvec(B, nu, Bn)
            _matvec(A, nu, An)
            logy = ll + math.log(_uniform(state))
            theta = _TWO_PI * _uniform(state)
            lo = theta - _TWO_PI
            hi = theta
            for _ in range(_MAX_SHRINK):
                ct = math.cos(theta)
                st = math.sin(theta)
                q2 = 0.0
                zz = 0.0
                for j in range(r):
                    d = dref[ch, j] + Az[j] * ct + An[j] * st
                    q2 += d * d
                    zt = zeta[j] * ct + nu[j] * st
                    zz += zt * zt
                s = 0.0
                for p in range(P):
                    s += v[p] * phi(href[ch, p] + Bz[p] * ct + Bn[p] * st)
                llt = -0.5 * inv_s2 * q2 + c * s * s + 0.5 * zz
                if llt > logy:
                    for j in range(r):
                        zeta[j] = zeta[j] * ct + nu[j] * st
                        Az[j] = Az[j] * ct + An[j] * st
                    for p in range(P):
                        Bz[p] = Bz[p] * ct + Bn[p] * st
                    ll = llt
                    s_cur = s
                    break
                if theta < 0.0:
                    lo = theta
                else:
                    hi = theta
                theta = lo + (hi - lo) * _uniform(state)
            if step >= n_burn:
                t = step - n_burn
                zz = 0.0
                for j in range(r):
                    zeta_out[ch, t, j] = zeta[j]
                    zz += zeta[j] * zeta[j]
                sq_acc += zz
                s_out[ch, t] = s_cur
        sq_out[ch] = sq_acc / max(n_keep, 1)


@nb.njit(parallel=True)
def closed_mean(mean, M, sig):
    """``E[phi(M[i, a] + sig[a] xi)]`` from a closed form ``mean(m, s)`` derived on the activation
    (:meth:`symtransfer.activations.Activation.conditional_mean_njit`)."""
    n, nA = M.shape
    out = np.empty_like(M)
    for i in nb.prange(n):
        for a in range(nA):
            out[i, a] = mean(M[i, a], sig[a])
    return out


@nb.njit(parallel=True)
def gh_mean(phi, M, sig, nodes, wts):
    """``E[phi(M[i, a] + sig[a] xi)]``, ``xi ~ N(0, 1)``, by Gauss-Hermite quadrature.

    ``nodes``/``wts`` are probabilists' Gauss-Hermite nodes and weights normalised to sum to 1.
    Columns with ``sig[a] == 0`` are evaluated directly.
    """
    n, nA = M.shape
    out = np.empty_like(M)
    G = nodes.shape[0]
    for i in nb.prange(n):
        for a in range(nA):
            if sig[a] == 0.0:
                out[i, a] = phi(M[i, a])
            else:
                acc = 0.0
                for k in range(G):
                    acc += wts[k] * phi(M[i, a] + sig[a] * nodes[k])
                out[i, a] = acc
    return out


@nb.njit(inline="always")
def _cond_split(r, sa, sb):
    """``u' = m' + beta xi1 + tau xi2`` for ``u = m + sa xi1`` with covariance ``r``, variance ``sb^2``."""
    beta = r / sa if sa > 0.0 else 0.0
    tau2 = sb * sb - beta * beta
    return beta, (math.sqrt(tau2) if tau2 > 0.0 else 0.0)


@nb.njit
def _gh_row(phi, MA, MB, SA, SB, RAB, w, nodes, wts, a, b0, out):
    """Row ``a`` of :func:`gh_pair`, columns ``b0..nB-1``."""
    n = MA.shape[0]
    G = nodes.shape[0]
    for b in range(b0, MB.shape[1]):
        beta, tau = _cond_split(RAB[a, b], SA[a], SB[b])
        acc = 0.0
        for i in range(n):
            inner = 0.0
            for k in range(G):
                ua = phi(MA[i, a] + SA[a] * nodes[k])
                if tau == 0.0:
                    inner += wts[k] * ua * phi(MB[i, b] + beta * nodes[k])
                else:
                    e = 0.0
                    for l in range(G):
                        e += wts[l] * phi(MB[i, b] + beta * nodes[k] + tau * nodes[l])
                    inner += wts[k] * ua * e
            acc += w[i] * inner
        out[a, b] = acc


@nb.njit(parallel=True)
def gh_pair(phi, MA, MB, SA, SB, RAB, w, nodes, wts, sym=False):
    """``sum_i w_i E[phi(u) phi(u')]`` for each pair of columns ``(a, b)``.

    ``(u, u')`` is Gaussian with mean ``(MA[i, a], MB[i, b])``, variances ``SA[a]^2, SB[b]^2`` and
    covariance ``RAB[a, b]``; the pair is written ``u = m + SA xi1``,
    ``u' = m' + beta xi1 + tau xi2`` and integrated on the tensor Gauss-Hermite grid. With
    ``sym=True`` (the same inputs on both axes) only ``b >= a`` is integrated and mirrored.
    """
    nA = MA.shape[1]
    out = np.zeros((nA, MB.shape[1]))
    if not sym:
        for a in nb.prange(nA):
            _gh_row(phi, MA, MB, SA, SB, RAB, w, nodes, wts, a, 0, out)
        return out
    # rows a and nA-1-a together: every parallel iteration gets the same triangular work
    for k in nb.prange((nA + 1) // 2):
        _gh_row(phi, MA, MB, SA, SB, RAB, w, nodes, wts, k, k, out)
        if nA - 1 - k != k:
            _gh_row(phi, MA, MB, SA, SB, RAB, w, nodes, wts, nA - 1 - k, nA - 1 - k, out)
    _mirror_upper(out)
    return out


@nb.njit
def _mirror_upper(out):
    for a in range(out.shape[0]):
        for b in range(a):
            out[a, b] = out[b, a]


@nb.njit(inline="always")
def _kink_cuts(out, kinks, m, s, lim):
    """Write the kinks of ``phi(m + s xi)`` in ``xi`` inside ``(-lim, lim)``, sorted; return the count."""
    c = 0
    if s != 0.0:
        nk = kinks.shape[0]
        for k in range(nk):
            kk = k if s > 0.0 else nk - 1 - k
            z = (kinks[kk] - m) / s
            if -lim < z < lim:
                out[c] = z
                c += 1
    return c


@nb.njit(inline="always")
def _panel_cuts(cuts, work, breaks, kinks, m, s):
    """Fill ``cuts`` with the fixed ``breaks`` (sorted, first and last = the truncation) merged with
    the kinks of ``phi(m + s xi)``; return the count. Every panel is then smooth and a few units
    wide, where one panel across ``[-10, 10]`` needs ~40 nodes for 1e-12."""
    nk = _kink_cuts(work, kinks, m, s, breaks[breaks.shape[0] - 1])
    return _merge(cuts, breaks, work, nk)


@nb.njit(inline="always")
def _merge(out, breaks, extra, n_extra):
    """Merge the sorted ``breaks`` and the first ``n_extra`` (sorted) of ``extra`` into ``out``."""
    nbk = breaks.shape[0]
    i = 0
    j = 0
    c = 0
    while i < nbk or j < n_extra:
        if j >= n_extra or (i < nbk and breaks[i] <= extra[j]):
            out[c] = breaks[i]
            i += 1
        else:
            out[c] = extra[j]
            j += 1
        c += 1
    return c


@nb.njit(inline="always")
def _pl_mean(m, s, kinks, pa, pb):
    """``E[phi(m + s xi)]``, ``xi ~ N(0, 1)``, for piecewise-linear ``phi = pa[i] u + pb[i]`` between
    the sorted ``kinks`` (``len(pa) = len(kinks) + 1``): normal CDF and density per piece, exact."""
    if s <= 0.0:
        i = 0
        while i < kinks.shape[0] and m > kinks[i]:
            i += 1
        return pa[i] * m + pb[i]
    acc = 0.0
    cdf_lo = 0.0
    pdf_lo = 0.0
    for i in range(pa.shape[0]):
        if i < kinks.shape[0]:
            z = (kinks[i] - m) / s
            cdf_hi = 0.5 * math.erfc(-z * 0.7071067811865476)
            pdf_hi = 0.3989422804014327 * math.exp(-0.5 * z * z)
        else:
            cdf_hi = 1.0
            pdf_hi = 0.0
        acc += (pa[i] * m + pb[i]) * (cdf_hi - cdf_lo) + pa[i] * s * (pdf_lo - pdf_hi)
        cdf_lo = cdf_hi
        pdf_lo = pdf_hi
    return acc


@nb.njit(parallel=True)
def gl_mean_split(phi, M, sig, kinks, breaks, t, w, pa, pb):
    """``E[phi(M[i, a] + sig[a] xi)]`` for ``phi`` with kinks, ``xi ~ N(0, 1)`` truncated to the outer ``breaks``.

    Gauss-Legendre (nodes ``t``, weights ``w`` on [-1, 1]) on the panels between the fixed ``breaks``
    and the kinks of ``phi`` mapped to ``xi``: each panel is smooth, so the rule converges spectrally
    where Gauss-Hermite across a kink converges only algebraically (errors ~1e-2 for ReLU at 48 nodes).
    A piecewise-linear ``phi`` (pieces ``pa``, ``pb`` non-empty, see :func:`_pl_mean`) is integrated
    in closed form instead.
    """
    n, nA = M.shape
    nk = kinks.shape[0]
    nbk = breaks.shape[0]
    out = np.empty_like(M)
    for i in nb.prange(n):
        cuts = np.empty(nbk + nk)
        work = np.empty(nk + 1)
        for a in range(nA):
            m = M[i, a]
            s = sig[a]
            if s == 0.0:
                out[i, a] = phi(m)
                continue
            if pa.shape[0] > 0:
                out[i, a] = _pl_mean(m, s, kinks, pa, pb)
                continue
            c = _panel_cuts(cuts, work, breaks, kinks, m, s)
            acc = 0.0
            for p in range(c - 1):
                lo = cuts[p]
                hi = cuts[p + 1]
                half = 0.5 * (hi - lo)
                mid = 0.5 * (hi + lo)
                for q in range(t.shape[0]):
                    xi = mid + half * t[q]
                    acc += half * w[q] * math.exp(-0.5 * xi * xi) * phi(m + s * xi)
            out[i, a] = acc * 0.3989422804014327
    return out


@nb.njit(fastmath=_FAST)
def _gl_row(phi, MA, MB, SA, SB, RAB, w, kinks, breaks, t, wt, pa, pb, a, b0, out):
    """Row ``a`` of :func:`gl_pair_split`, columns ``b0..nB-1``."""
    n = MA.shape[0]
    nk = kinks.shape[0]
    nbk = breaks.shape[0]
    lim = breaks[nbk - 1]
    Q = t.shape[0]
    c1 = np.empty(nbk + 2 * nk)
    c2 = np.empty(nbk + nk)
    k1 = np.empty(2 * nk + 1)
    k2 = np.empty(nk + 1)
    for b in range(b0, MB.shape[1]):
        beta, tau = _cond_split(RAB[a, b], SA[a], SB[b])
        acc = 0.0
        for i in range(n):
            ma = MA[i, a]
            mb = MB[i, b]
            # outer cuts: kinks of phi(u) and, when u' is a function of xi1 alone, of phi(u')
            if tau == 0.0 and beta != 0.0:
                nka = _kink_cuts(k1, kinks, ma, SA[a], lim)
                nka += _kink_cuts(k1[nka:], kinks, mb, beta, lim)
                k1[:nka].sort()
                na = _merge(c1, breaks, k1, nka)
            else:
                na = _panel_cuts(c1, k1, breaks, kinks, ma, SA[a])
            outer = 0.0
            for p in range(na - 1):
                half = 0.5 * (c1[p + 1] - c1[p])
                mid = 0.5 * (c1[p + 1] + c1[p])
                for q in range(Q):
                    x1 = mid + half * t[q]
                    g1 = half * wt[q] * math.exp(-0.5 * x1 * x1) * 0.3989422804014327
                    fa = phi(ma + SA[a] * x1)
                    if tau == 0.0:
                        outer += g1 * fa * phi(mb + beta * x1)
                    elif pa.shape[0] > 0:
                        # piecewise-linear phi: the inner Gaussian integral in closed form
                        outer += g1 * fa * _pl_mean(mb + beta * x1, tau, kinks, pa, pb)
                    else:
                        mb1 = mb + beta * x1
                        nb_ = _panel_cuts(c2, k2, breaks, kinks, mb1, tau)
                        inner = 0.0
                        for p2 in range(nb_ - 1):
                            h2 = 0.5 * (c2[p2 + 1] - c2[p2])
                            m2 = 0.5 * (c2[p2 + 1] + c2[p2])
                            for q2 in range(Q):
                                x2 = m2 + h2 * t[q2]
                                inner += h2 * wt[q2] * math.exp(-0.5 * x2 * x2) * phi(mb1 + tau * x2)
                        outer += g1 * fa * inner * 0.3989422804014327
            acc += w[i] * outer
        out[a, b] = acc


@nb.njit(parallel=True, fastmath=_FAST)
def gl_pair_split(phi, MA, MB, SA, SB, RAB, w, kinks, breaks, t, wt, pa, pb, sym=False):
    """:func:`gh_pair` for ``phi`` with kinks: Gauss-Legendre on panels between the fixed ``breaks``
    (standardised units, sorted; the outer two truncate) and the kinks, both axes. For piecewise-linear
    ``phi`` (``pa``, ``pb`` non-empty) the inner integral is exact (:func:`_pl_mean`)."""
    nA = MA.shape[1]
    out = np.zeros((nA, MB.shape[1]))
    if not sym:
        for a in nb.prange(nA):
            _gl_row(phi, MA, MB, SA, SB, RAB, w, kinks, breaks, t, wt, pa, pb, a, 0, out)
        return out
    for k in nb.prange((nA + 1) // 2):
        _gl_row(phi, MA, MB, SA, SB, RAB, w, kinks, breaks, t, wt, pa, pb, k, k, out)
        if nA - 1 - k != k:
            _gl_row(phi, MA, MB, SA, SB, RAB, w, kinks, breaks, t, wt, pa, pb, nA - 1 - k, nA - 1 - k, out)
    _mirror_upper(out)
    return out
