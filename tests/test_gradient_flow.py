"""Gradient-flow closed forms (docs/theory.md §7) against the DMFT population and exact finite-D computations.

Two independent oracles:

* ``GradientFlowDMFT`` (linear, ``T = 0``) started from an *exactly isotropic* population: the
  empirical second moments of ``(a, w)`` are whitened to the identity, and for linear ``phi`` the
  population only feels its second moments, so a population of ``4 (D + 1)`` neurons follows the
  infinite-width flow exactly; what remains is the Euler error of the explicit step, ``O(dt)``
  (checked by halving ``dt`` and by Richardson extrapolation).
* Kernel (ridge) regression with the learned kernel on sampled Gaussian target data at growing ``D``,
  in plain NumPy (no SymPy): the proportional-limit closed forms are approached with the
  ``O(1/sqrt(D))`` fluctuations of a finite draw.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from symtransfer.errors import ConvergenceError
from symtransfer.theory import gradient_flow as gf
from symtransfer.theory import proportional as pr
from symtransfer.theory.dmft import GradientFlowDMFT
from threadpoolctl import threadpool_limits


# ------------------------------------------------------------------------------------------ helpers
def _isotropic_population(M, D, rng):
    """Readouts and hidden weights whose empirical second moment is exactly ``I_{D+1}``."""
    Z = rng.standard_normal((M, D + 1))
    L = np.linalg.cholesky(Z.T @ Z / M)
    Z = np.linalg.solve(L, Z.T).T
    return Z[:, 0].copy(), Z[:, 1:].copy()


def _whitened_inputs(P, D, rng):
    Q, _ = np.linalg.qr(rng.standard_normal((P, D)))
    return np.sqrt(P) * Q  # X^T X = P I


def _unit_teacher(D, rng):
    b = rng.standard_normal(D)
    return b * math.sqrt(D) / np.linalg.norm(b)


def _dmft(X, y, X_eval, gamma, lam, dt, t_max, rng, early_stop=True):
    D = X.shape[1]
    a0, W = _isotropic_population(4 * (D + 1), D, rng)
    X_all = X if X_eval is None else np.vstack([X, X_eval])
    model = GradientFlowDMFT(activation="linear", gamma=gamma, weight_decay=lam, dt=dt, t_max=t_max, tol=1e-10,
                             early_stop=early_stop)
    with warnings.catch_warnings():
        # reaching t_max before the early stop is expected for the runs with a finite training time
        warnings.simplefilter("ignore")
        return model.fit(X, y, X_eval, h0=W @ X_all.T / math.sqrt(D), a0=a0)


def _chi_whitened(model, X, beta):
    """Learned weight covariance from the kernel on whitened inputs: ``Sigma = D X^T Phi X / P^2``."""
    P, D = X.shape
    S = D * X.T @ model.Phi_ @ X / P**2
    bh = beta / math.sqrt(D)
    return S, float(bh @ S @ bh)


# ------------------------------------------------------------------- source kernel vs the DMFT
@pytest.mark.parametrize("gamma", [0.5, 1.0])
def test_source_spike_matches_dmft_whitened(gamma):
    """eq. (7.3): D = 8 whitened source inputs (P1 = 160); Euler error O(dt), Richardson within 3e-4."""
    rng = np.random.default_rng(7)
    D, P = 8, 160
    X = _whitened_inputs(P, D, rng)
    beta = _unit_teacher(D, rng)
    y = X @ beta / math.sqrt(D)
    chi = gf.source_spike(gamma * math.sqrt(D))
    assert chi == pytest.approx(math.sqrt(1 + gamma**2 * D) - 1, rel=1e-14)
    gaps, est = [], []
    for dt in (1e-3, 5e-4):
        m = _dmft(X, y, None, gamma, 0.0, dt, 2.0, np.random.default_rng(1))
        S, sb = _chi_whitened(m, X, beta)
        ev = np.linalg.eigvalsh(S)
        np.testing.assert_allclose(ev[:-1], 1.0, atol=1e-9)  # the bulk never moves at lambda = 0
        est.append(sb - 1.0)
        gaps.append(abs(sb - 1.0 - chi))
    # first-order Euler bias: halving dt halves the gap; the extrapolation removes it
    assert 1.6 < gaps[0] / gaps[1] < 2.4
    assert abs(2 * est[1] - est[0] - chi) < 3e-4 * (1 + chi)


def test_limited_source_data_kernel_matches_dmft():
    """eqs. (7.3), (7.5) at finite D: Gaussian X1 with P1 < D and label noise.

    The full D x D weight covariance is read off the kernel on the scaled basis ``sqrt(D) e_i``; the
    prediction is ``I + chi u u^T`` with ``u`` the min-norm fit and ``chi = sqrt(1 + gamma^2 |w|^2) - 1``.
    """
    rng = np.random.default_rng(3)
    D, P, gamma = 12, 8, 0.6
    X = rng.standard_normal((P, D))
    beta = _unit_teacher(D, rng)
    y = X @ beta / math.sqrt(D) + 0.5 * rng.standard_normal(P)
    E = math.sqrt(D) * np.eye(D)
    w = np.linalg.lstsq(X / math.sqrt(D), y, rcond=None)[0]
    chi = math.sqrt(1 + gamma**2 * (w @ w)) - 1
    u = w / np.linalg.norm(w)
    gaps = []
    for dt in (4e-3, 2e-3):
        m = _dmft(X, y, E, gamma, 0.0, dt, 150.0, np.random.default_rng(2), early_stop=False)
        S = m.kernel(E)
        ev, U = np.linalg.eigh(S)
        assert abs(U[:, -1] @ u) > 1 - 1e-6
        gaps.append(max(abs(ev[-1] - 1 - chi), np.max(np.abs(ev[:-1] - 1))))
    assert gaps[1] < 1e-3 and gaps[1] < 0.7 * gaps[0]  # O(dt)


def test_weight_decay_fixed_point_is_rank_one_ridge_estimate():
    """eq. (7.4) at finite D: bulk -> 0, spike gamma |w(tau)| along the ridge estimate with
    ``tau |w(tau)| = lambda / gamma``; the fixed point of the Euler map is the flow's, so exact."""
    rng = np.random.default_rng(3)
    D, P, gamma, lam = 12, 8, 0.6, 0.5
    X = rng.standard_normal((P, D))
    beta = _unit_teacher(D, rng)
    y = X @ beta / math.sqrt(D) + 0.5 * rng.standard_normal(P)
    E = math.sqrt(D) * np.eye(D)
    S1, b = X.T @ X / D, X.T @ y / math.sqrt(D)
    lo, hi = -30.0, 30.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        t = math.exp(mid)
        f = t * np.linalg.norm(np.linalg.solve(S1 + t * np.eye(D), b)) - lam / gamma
        lo, hi = (lo, mid) if f > 0 else (mid, hi)
    tau = math.exp(lo)
    w = np.linalg.solve(S1 + tau * np.eye(D), b)
    m = _dmft(X, y, E, gamma, lam, 4e-3, 80.0, np.random.default_rng(2))
    ev, U = np.linalg.eigh(m.kernel(E))
    assert ev[-1] == pytest.approx(gamma * np.linalg.norm(w), rel=1e-7)
    assert np.max(np.abs(ev[:-1])) < 1e-8
    assert abs(U[:, -1] @ w) / np.linalg.norm(w) > 1 - 1e-10


def test_weight_decay_whitened_source_kernel_matches_dmft():
    """eqs. (7.2), (7.4) on whitened data: time and weight decay per unit nu1 (lambda = lt nu1)."""
    rng = np.random.default_rng(11)
    D, P = 8, 40
    nu1 = P / D
    X = _whitened_inputs(P, D, rng)
    beta = _unit_teacher(D, rng)
    y = X @ beta / math.sqrt(D)
    gamma, lt = 0.8, 0.4
    g = gamma * math.sqrt(D)
    # t = inf: rank one with spike g - lt
    m = _dmft(X, y, None, gamma, lt * nu1, 2e-3, 8.0, np.random.default_rng(4))
    S, sb = _chi_whitened(m, X, beta)
    k = gf.source_kernel(g, lt)
    assert k.bulk == 0.0 and k.spike == pytest.approx(g - lt, rel=1e-14)
    assert sb == pytest.approx(k.spike, rel=1e-6)
    assert np.max(np.abs(np.linalg.eigvalsh(S)[:-1])) < 1e-6
    # finite time T: bulk e^{-2 lambda T} exactly on the Euler grid up to O(dt), spike from the ODE (7.2)
    T = 0.25
    gaps = []
    for dt in (2e-3, 1e-3):
        m = _dmft(X, y, None, gamma, lt * nu1, dt, T, np.random.default_rng(4), early_stop=False)
        S, sb = _chi_whitened(m, X, beta)
        kt = gf.source_kernel(g, lt, time=nu1 * T)
        ev = np.linalg.eigvalsh(S)
        assert kt.bulk == pytest.approx(math.exp(-2 * lt * nu1 * T), rel=1e-12)
        np.testing.assert_allclose(ev[:-1], (1 - dt * lt * nu1) ** (2 * round(T / dt)), rtol=1e-9)
        gaps.append(abs(sb - kt.bulk - kt.spike) / kt.spike)
    assert gaps[1] < 0.01 and 1.5 < gaps[0] / gaps[1] < 2.5
    chi_t = gf.source_spike(g, lt, time=nu1 * T)
    assert chi_t == pytest.approx(kt.spike / kt.bulk, rel=1e-12)
    assert gf.source_spike(g, lt) == np.inf
    # lambda = 0: the closed solution (7.2c) reaches (7.3) and agrees with the RK4 path at tiny lambda
    assert gf.source_spike(g, 0.0, time=40.0) == pytest.approx(gf.source_spike(g), rel=1e-12)
    for tt in (0.05, 0.4, 3.0):
        assert gf.source_kernel(g, 1e-10, time=tt).spike == pytest.approx(
            gf.source_kernel(g, 0.0, time=tt).spike, rel=1e-8)


@pytest.mark.parametrize("mode", gf.MODES)
def test_dmft_fine_tuning_is_kernel_regression_with_the_learned_kernel(mode):
    """eqs. (7.5)-(7.7) end to end at finite D: DMFT source (P1 < D, noisy), then DMFT fine-tuning.

    Readout: ``readout_only=True``; lazy: ``coupling=0`` at ``gamma2 = 1e-3`` (the tangent kernel
    ``Phi1 + G1 K``, ``G1 = E[a^2] = 1``). Fresh readouts are orthogonal to the population's hidden
    weights so that the initial function vanishes as at infinite width. Predictions must equal
    ridgeless kernel regression with ``I + chi u u^T`` (+ ``I`` for lazy) of the min-norm fit, to
    ``O(dt) + O(gamma2)`` (measured 3e-4 and 2e-4).
    """
    rng = np.random.default_rng(8)
    D, P1, P2, Pt, gamma = 12, 8, 6, 40, 0.6
    X1 = rng.standard_normal((P1, D))
    beta = _unit_teacher(D, rng)
    y1 = X1 @ beta / math.sqrt(D) + 0.5 * rng.standard_normal(P1)
    X2, Xt = rng.standard_normal((P2, D)), rng.standard_normal((Pt, D))
    beta2 = 0.7 * beta + math.sqrt(1 - 0.49) * _unit_teacher(D, rng)
    y2, yt = X2 @ beta2 / math.sqrt(D), Xt @ beta2 / math.sqrt(D)
    Xe = np.vstack([X2, Xt])
    M = 200
    a0, W = _isotropic_population(M, D, rng)
    src = GradientFlowDMFT(activation="linear", gamma=gamma, weight_decay=0.0, dt=2e-3, t_max=150.0,
                           early_stop=False).fit(X1, y1, Xe, h0=W @ np.vstack([X1, Xe]).T / math.sqrt(D), a0=a0)
    H = src.features(Xe)
    a_new = rng.standard_normal(M)
    Q, _ = np.linalg.qr(H)
    a_new -= Q @ (Q.T @ a_new)
    a_new *= math.sqrt(M) / np.linalg.norm(a_new)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if mode == "readout":
            tgt = src.transfer(X2, y2, Xt, readout_only=True, dt=2e-3, t_max=200.0, a0=a_new)
        else:
            tgt = src.transfer(X2, y2, Xt, gamma=1e-3, coupling=0.0, dt=2e-3, t_max=200.0, a0=a_new)
    w = np.linalg.lstsq(X1 / math.sqrt(D), y1, rcond=None)[0]
    chi = math.sqrt(1 + gamma**2 * (w @ w)) - 1
    u = w / np.linalg.norm(w)
    C = np.eye(D) * (2.0 if mode == "lazy" else 1.0) + chi * np.outer(u, u)
    f_krr = (Xt @ C @ X2.T / D) @ np.linalg.solve(X2 @ C @ X2.T / D, y2)
    f = tgt.predict(Xt)
    assert np.max(np.abs(f - f_krr)) < 2e-3
    assert np.mean((f - yt) ** 2) == pytest.approx(np.mean((f_krr - yt) ** 2), abs=1e-3)


# ------------------------------------------------------------------ finite-D kernel regression
def _finite_d_source(D, nu1, sig1, g1, lt, rng):
    """Exact finite-D source kernel (eqs. (7.3)-(7.4) at finite D) and the directions it defines."""
    P1 = int(round(nu1 * D))
    X1 = rng.standard_normal((P1, D))
    beta = _unit_teacher(D, rng)
    y1 = X1 @ beta / math.sqrt(D) + sig1 * rng.standard_normal(P1)
    gamma = g1 / math.sqrt(D)
    if lt == 0.0:
        # min-norm least squares through the smaller Gram matrix
        Xs = X1 / math.sqrt(D)
        w = Xs.T @ np.linalg.solve(Xs @ Xs.T, y1) if P1 < D else np.linalg.solve(Xs.T @ Xs, Xs.T @ y1)
        bulk, spike = 1.0, math.sqrt(1 + gamma**2 * (w @ w)) - 1
    else:
        s, V = np.linalg.eigh(X1.T @ X1 / D)
        bt = V.T @ (X1.T @ y1 / math.sqrt(D))
        target = lt * (P1 / D) / gamma
        lo, hi = -40.0, 40.0
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            t = math.exp(mid)
            f = t * np.linalg.norm(bt / (s + t)) - target
            lo, hi = (lo, mid) if f > 0 else (mid, hi)
        t = math.exp(lo)
        w = V @ (bt / (s + t))
        bulk, spike = 0.0, gamma * np.linalg.norm(w)
    u = w / np.linalg.norm(w)
    bh = beta / math.sqrt(D)
    xi = u - (u @ bh) * bh
    xi /= np.linalg.norm(xi)
    return bulk, spike, u, bh, xi


def _finite_d_target(D, bulk, spike, u, bh, xi, nu2, alpha, alpha_xi, ridge, noise, mode, rng):
    perp = rng.standard_normal(D)
    perp -= (perp @ bh) * bh + (perp @ xi) * xi
    perp /= np.linalg.norm(perp)
    beta2 = math.sqrt(D) * (alpha * bh + alpha_xi * xi + math.sqrt(max(0.0, 1 - alpha**2 - alpha_xi**2)) * perp)
    P2 = int(round(nu2 * D))
    X2 = rng.standard_normal((P2, D))
    y2 = X2 @ beta2 / math.sqrt(D) + noise * rng.standard_normal(P2)
    c0 = bulk + (1.0 if mode == "lazy" else 0.0)
    if P2 < D or c0 == 0.0:
        # kernel form: v = (X2 C X2^T/D + ridge)^-1 y2, w2 = C X2^T v/sqrt(D)
        Xu = X2 @ u
        K = c0 * (X2 @ X2.T) / D + spike * np.outer(Xu, Xu) / D
        v = np.linalg.solve(K + ridge * np.eye(P2), y2) if ridge > 0 else np.linalg.lstsq(K, y2, rcond=None)[0]
        z = X2.T @ v / math.sqrt(D)
        w2 = c0 * z + spike * u * (u @ z)
    else:
        # weight form (push-through): w2 = (S2 + ridge C^-1)^-1 X2^T y2/sqrt(D), C^-1 = I/c0 - c u u^T
        Cinv = np.eye(D) / c0 - (spike / (c0 * (c0 + spike))) * np.outer(u, u)
        w2 = np.linalg.solve(X2.T @ X2 / D + ridge * Cinv, X2.T @ y2 / math.sqrt(D))
    return float(np.sum((w2 - beta2) ** 2) / D)


CASES = [
    # (nu1, sig1, g1, weight_decay, nu2, alpha, alpha_noise, ridge, noise, mode)
    (np.inf, 0.0, 2.0, 0.0, 0.4, 0.8, 0.0, 0.0, 0.0, "readout"),
    (0.5, 0.5, 2.0, 0.0, 0.4, 0.5, 0.6, 0.0, 0.2, "readout"),
    (0.5, 0.5, 2.0, 0.0, 1.5, 0.5, 0.6, 0.1, 0.3, "lazy"),
    (2.0, 0.7, 1.5, 0.3, 0.6, 0.6, 0.5, 0.05, 0.2, "readout"),
]


def _draw(case, D, seed):
    nu1, sig1, g1, lt, nu2, alpha, axi, ridge, noise, mode = case
    rng = np.random.default_rng([seed, D])
    if math.isinf(nu1):
        bh = _unit_teacher(D, rng) / math.sqrt(D)
        xi = rng.standard_normal(D)
        xi -= (xi @ bh) * bh
        xi /= np.linalg.norm(xi)
        bulk, spike, u = 1.0, math.sqrt(1 + g1**2) - 1, bh
    else:
        bulk, spike, u, bh, xi = _finite_d_source(D, nu1, sig1, g1, lt, rng)
    return _finite_d_target(D, bulk, spike, u, bh, xi, nu2, alpha, axi, ridge, noise, mode, rng)


def _theory(case):
    nu1, sig1, g1, lt, nu2, alpha, axi, ridge, noise, mode = case
    return gf.finetune_error(nu2, alpha, g1, nu1=nu1, ridge=ridge, noise=noise, alpha_noise=axi,
                             weight_decay=lt, source_noise=sig1, mode=mode)


@pytest.mark.parametrize("case", CASES)
def test_finetune_error_matches_finite_d_kernel_regression(case):
    """eqs. (7.7)-(7.9): the gap to finite-D kernel regression shrinks with D.

    Fluctuations of one draw are O(1/sqrt(D)); the mean over draws must lie within 4 standard
    errors (plus an O(1/D) allowance of 2/D for the finite-size bias) and the rms gap must shrink by
    more than 1.5 (ideal: 4, but the rms of 4 draws is itself uncertain by ~35%) from D = 100 to 1600.
    Single-threaded BLAS: multithreaded LAPACK is 10x slower on a loaded machine.
    """
    theory = _theory(case)
    rms = {}
    with threadpool_limits(1):
        for D, seeds in ((100, 16), (400, 8), (1600, 4)):
            errs = np.array([_draw(case, D, s) for s in range(seeds)])
            gap = errs - theory
            rms[D] = float(np.sqrt(np.mean(gap**2)))
            sem = errs.std(ddof=1) / math.sqrt(seeds)
            assert abs(gap.mean()) < 4 * sem + 2.0 / D, (D, errs.mean(), theory)
    assert rms[1600] < rms[100] / 1.5, rms


@pytest.mark.slow
def test_finetune_error_gap_scales_like_inverse_sqrt_d():
    case = CASES[1]
    theory = _theory(case)
    rms = []
    Ds = (200, 800, 3200)
    with threadpool_limits(1):
        for D in Ds:
            errs = np.array([_draw(case, D, s) for s in range(6)])
            rms.append(math.sqrt(np.mean((errs - theory) ** 2)))
    slope = np.polyfit(np.log(Ds), np.log(rms), 1)[0]
    assert -0.8 < slope < -0.3


# --------------------------------------------------------------------------- closed-form checks
def test_closed_form_of_the_issue():
    g = math.sqrt((1 + 1.0) ** 2 - 1)  # chi = 1
    assert gf.source_spike(g) == pytest.approx(1.0, rel=1e-14)
    nu2 = np.linspace(0.05, 0.95, 7)
    for a in (0.0, 0.3, 1.0):
        e = gf.finetune_error(nu2, a, g)
        np.testing.assert_allclose(e, (1 - nu2) * (1 - a**2 + a**2 / (1 + nu2) ** 2), rtol=1e-13)
    assert gf.finetune_error(0.3, 1.0, g) == pytest.approx(0.41420118, abs=1e-8)


def test_scratch_error_is_proportional_ridge_error():
    """Independent implementation: theory.proportional.ridge_error (eq. (6.5)) with kernel I."""
    nu = np.geomspace(0.1, 5.0, 9)
    for lam, sig in ((0.1, 0.0), (1.0, 0.5), (3.0, 1.2)):
        np.testing.assert_allclose(gf.scratch_error(nu, ridge=lam, noise=sig), pr.ridge_error(lam, nu, sig),
                                   rtol=1e-12)
        np.testing.assert_allclose(gf.scratch_error(nu, ridge=lam, noise=sig, mode="lazy"),
                                   pr.ridge_error(lam / 2, nu, sig), rtol=1e-12)


def test_ridgeless_is_the_small_ridge_limit():
    kw = dict(nu1=0.6, source_noise=0.4, alpha_noise=0.3, noise=0.3)
    for nu2 in (0.3, 0.8, 1.7, 4.0):
        for mode in gf.MODES:
            e0 = gf.finetune_error(nu2, 0.7, 1.5, mode=mode, **kw)
            e1 = gf.finetune_error(nu2, 0.7, 1.5, mode=mode, ridge=1e-9, **kw)
            assert e1 == pytest.approx(e0, rel=1e-6, abs=1e-9)
    assert gf.scratch_error(1.0, noise=0.1) == np.inf
    assert gf.scratch_error(1.0) == 0.0
    assert gf.transfer_gain(1.0, 0.5, 1.0, noise=0.1) == 0.0


def test_minnorm_source_geometry():
    """eq. (7.5): noiseless nu1 < 1 learns the projection of beta (q = nu1, cos^2 = nu1); nu1 > 1 learns beta."""
    k = gf.source_kernel(2.0, nu1=0.3)
    assert k.q == pytest.approx(0.3) and k.overlap == pytest.approx(math.sqrt(0.3))
    assert k.spike == pytest.approx(math.sqrt(1 + 4 * 0.3) - 1)
    assert k.overlap**2 + k.noise_overlap**2 == pytest.approx(1.0)
    k = gf.source_kernel(2.0, nu1=3.0)
    assert k.overlap == pytest.approx(1.0) and k.spike == pytest.approx(gf.source_spike(2.0))
    k = gf.source_kernel(2.0, nu1=3.0, source_noise=1.0)
    assert k.q == pytest.approx(1.5) and k.overlap == pytest.approx(1 / math.sqrt(1.5))
    # infinite data with weight decay per unit nu1 is the limit of finite nu1
    kd = gf.source_kernel(2.0, 0.5, nu1=1e7)
    assert kd.spike == pytest.approx(gf.source_kernel(2.0, 0.5).spike, rel=1e-5)
    # the flow collapses to the zero kernel when weight decay beats the drive g |X^T y|/D
    assert gf.source_kernel(0.1, 5.0, nu1=2.0).spike == 0.0


# ------------------------------------------------------------------------------------ limits
def test_limits():
    nu2 = np.geomspace(0.05, 4.0, 11)
    kw = dict(nu1=0.7, source_noise=0.3, ridge=0.2, noise=0.4, alpha_noise=0.4)
    for mode in gf.MODES:
        # g1 -> 0: no transfer
        e = gf.finetune_error(nu2, 0.6, 0.0, mode=mode, **kw)
        np.testing.assert_allclose(e, gf.scratch_error(nu2, ridge=0.2, noise=0.4, mode=mode), rtol=1e-12)
        e_small = gf.finetune_error(nu2, 0.6, 1e-4, mode=mode, **kw)
        np.testing.assert_allclose(e_small, e, rtol=1e-6)
        # g1 -> inf: the rich limit
        np.testing.assert_allclose(gf.finetune_error(nu2, 0.6, 1e7, mode=mode, **kw),
                                   gf.rich_limit_error(nu2, 0.6, mode=mode, **kw), rtol=1e-5)
    # alpha = 0 with infinite source data: the spike is orthogonal to the target, no transfer
    np.testing.assert_allclose(gf.finetune_error(nu2, 0.0, 3.0, ridge=0.3),
                               gf.scratch_error(nu2, ridge=0.3), rtol=1e-12)
    # alpha = 1 ridgeless noiseless: (1 - nu2)/(1 + chi nu2)^2 below nu2 = 1, exact fit above
    chi = gf.source_spike(3.0)
    e = gf.finetune_error(nu2, 1.0, 3.0)
    np.testing.assert_allclose(e, np.where(nu2 < 1, (1 - nu2) / (1 + chi * nu2) ** 2, 0.0), atol=1e-14)
    # rich limit, alpha = 1: the target is learned exactly along the spike
    np.testing.assert_allclose(gf.rich_limit_error(nu2, 1.0), 0.0, atol=1e-12)
    # nu2 -> 0: nothing learned
    assert gf.finetune_error(1e-9, 0.9, 2.0, **kw) == pytest.approx(1.0, abs=1e-6)
    # label noise: ridgeless variance nu2/(1 - nu2) sigma^2 below, sigma^2/(nu2 - 1) above
    assert gf.finetune_error(0.4, 0.5, 1.0, noise=0.5) - gf.finetune_error(0.4, 0.5, 1.0) == pytest.approx(
        0.25 * 0.4 / 0.6)
    assert gf.finetune_error(3.0, 0.5, 1.0, noise=0.5) == pytest.approx(0.25 / 2.0)
    # ridge -> inf: predictor -> 0, error -> 1
    assert gf.finetune_error(0.5, 0.5, 2.0, ridge=1e9) == pytest.approx(1.0, abs=1e-6)
    # lazy ridgeless = readout with chi/2 (kernel 2I + chi u u^T)
    assert gf.finetune_error(0.4, 0.8, 2.0, mode="lazy") == pytest.approx(
        (1 - 0.4) * (1 - 0.64 + 0.64 / (1 + gf.source_spike(2.0) / 2 * 0.4) ** 2))


def test_no_negative_transfer_without_weight_decay_but_with_it():
    """eq. (7.12): with a bulk the spike never hurts; the rank-one kernel of weight decay does at large nu2."""
    xa = np.linspace(0.0, 0.95, 100)  # alpha^2 + alpha_noise^2 <= 1
    d = gf.phase_diagram("alpha", "nu2", x_values=xa, nu1=0.5, source_noise=0.5, ridge=0.1, noise=0.2,
                         alpha_noise=0.3)
    assert np.all(d.gain >= -1e-12) and np.any(d.gain > 0.05)
    d = gf.phase_diagram("alpha", "nu2", x_values=xa, nu1=0.5, source_noise=0.5, weight_decay=0.1,
                         alpha_noise=0.3)
    assert d.gain.shape == (100, 100) and d.finetune_error.shape == (100, 100)
    big = d.y > 1.0
    assert np.all(d.negative[big, :])  # nu2 > 1: scratch fits exactly, the rank-one readout cannot
    small = d.y < 0.2
    assert np.any(~d.negative[small][:, d.x > 0.8])  # few target samples, aligned: positive transfer
    # overlap with the noise direction raises the overlap p and so lowers the error
    e0 = gf.finetune_error(0.3, 0.3, 2.0, nu1=0.4, source_noise=0.5, weight_decay=0.1)
    e1 = gf.finetune_error(0.3, 0.3, 2.0, nu1=0.4, source_noise=0.5, weight_decay=0.1, alpha_noise=0.8)
    assert e1 < e0
    d2 = gf.phase_diagram("g1", "nu2", n=20, nu1=2.0, source_noise=0.5, weight_decay=0.2, ridge=0.1)
    assert d2.gain.shape == (20, 20) and d2.x_name == "g1"


def test_optimal_source_strength():
    nu2 = np.array([0.2, 0.5, 1.0, 2.0, 4.0])
    # without weight decay more feature learning always helps
    g_star = gf.optimal_source_strength(nu2, 0.8, 0.5, source_noise=0.5, ridge=0.1)
    assert np.all(np.isinf(g_star))
    g_star, e_star = gf.optimal_source_strength(nu2, 0.8, 2.0, weight_decay=0.2, source_noise=1.0, ridge=0.1,
                                                return_error=True)
    assert np.all(np.isfinite(g_star)) and np.all(np.diff(g_star) < 0)  # decreasing in nu2
    for gs, es, n2 in zip(g_star, e_star, nu2):
        kw = dict(nu1=2.0, weight_decay=0.2, source_noise=1.0, ridge=0.1)
        assert gf.finetune_error(n2, 0.8, gs, **kw) == pytest.approx(es, rel=1e-12)
        for f in (0.8, 1.25):
            assert gf.finetune_error(n2, 0.8, gs * f, **kw) >= es - 1e-12


# ------------------------------------------------------------------------- properties (hypothesis)
_nu = st.floats(0.02, 6.0)
_unit = st.floats(-1.0, 1.0)


@settings(max_examples=40)
@given(nu2=_nu, alpha=_unit, g1=st.floats(0.0, 30.0), nu1=st.one_of(st.just(math.inf), st.floats(0.05, 6.0)),
       ridge=st.one_of(st.just(0.0), st.floats(1e-4, 10.0)), noise=st.floats(0.0, 1.5),
       frac=st.floats(0.0, 1.0), lt=st.one_of(st.just(0.0), st.floats(1e-3, 2.0)),
       sig1=st.floats(0.0, 1.0), mode=st.sampled_from(gf.MODES))
def test_error_bounds_and_gain_sign(nu2, alpha, g1, nu1, ridge, noise, frac, lt, sig1, mode):
    if abs(nu2 - 1.0) < 1e-3 or (abs(nu1 - 1.0) < 1e-3 and lt == 0.0):
        return
    axi = frac * math.sqrt(1 - alpha**2)
    kw = dict(nu1=nu1, ridge=ridge, noise=noise, alpha_noise=axi, weight_decay=lt, source_noise=sig1, mode=mode)
    e = gf.finetune_error(nu2, alpha, g1, **kw)
    s = gf.scratch_error(nu2, ridge=ridge, noise=noise, mode=mode)
    assert np.isfinite(e) and e >= 0.0
    if lt == 0.0:
        assert e <= s + 1e-10  # a spike on top of the untouched bulk never hurts (eq. (7.12))
    elif mode == "readout":
        assert e <= 1.0 + 1e-12  # rank-one readout: 1 - p^2 + p^2 (ridge term)^2, eq. (7.9)
    # (lazy after weight decay has bulk 1 < 2 of lazy scratch: worse with a ridge, no bound asserted)


@given(nu2=_nu, a1=st.floats(0.0, 1.0), a2=st.floats(0.0, 1.0), g1=st.floats(0.0, 20.0),
       ridge=st.floats(0.0, 3.0), mode=st.sampled_from(gf.MODES))
def test_error_decreases_in_alpha_squared(nu2, a1, a2, g1, ridge, mode):
    if abs(nu2 - 1.0) < 1e-3:
        return
    lo, hi = sorted((a1, a2))
    e_lo = gf.finetune_error(nu2, lo, g1, ridge=ridge, mode=mode)
    e_hi = gf.finetune_error(nu2, -hi, g1, ridge=ridge, mode=mode)  # even in alpha
    assert e_hi <= e_lo + 1e-12


def test_broadcasting_shapes():
    e = gf.finetune_error(np.linspace(0.1, 2, 5)[:, None], np.linspace(0, 1, 3)[None, :], 2.0)
    assert e.shape == (5, 3)
    e = gf.finetune_error(np.ones((2, 1, 4)) * 0.5, 0.5, np.array([0.5, 1.0, 2.0])[:, None], nu1=0.5)
    assert e.shape == (2, 3, 4)
    assert isinstance(gf.finetune_error(0.5, 0.5, 1.0), float)
    assert gf.source_kernel(np.array([1.0, 2.0]), np.array([[0.0], [0.5]])).spike.shape == (2, 2)
    assert gf.transfer_gain(np.array([0.3, 0.6]), 0.5, 1.0).shape == (2,)
    assert gf.optimal_source_strength(np.array([0.3, 0.6]), 0.5, 1.0).shape == (2,)


# ------------------------------------------------------------------------------- symbolic layer
def test_expressions_are_sympy_and_compile_to_the_same_numbers():
    ex = gf.expressions()
    for name in ("source_spike_infinite", "source_spike", "target_error_ridge", "target_error_ridgeless",
                 "target_error_rank_one", "decay_fixed_point", "minnorm_q", "overlap", "rich_limit_ridge"):
        assert name in ex
        e = ex[name]
        assert isinstance(e.expr, sp.Basic) and e.equation.startswith("(7.")
        assert set(e.expr.free_symbols) <= set(e.symbols)
        assert sp.latex(e.expr)
    g = ex["source_spike_infinite"].symbols[0]
    assert float(ex["source_spike_infinite"].expr.subs(g, 3)) == pytest.approx(gf.source_spike(3.0))
    chi, p, nu2, sig = ex["target_error_ridgeless"].symbols
    val = ex["target_error_ridgeless"].expr.subs({chi: 1, p: 1, nu2: sp.Rational(3, 10), sig: 0})
    assert float(val) == pytest.approx(gf.finetune_error(0.3, 1.0, math.sqrt(3)), rel=1e-13)


# ------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kw, name", [
    (dict(nu2=0.0), "nu2"), (dict(nu2=-1.0), "nu2"), (dict(nu2=np.nan), "nu2"), (dict(nu2=[0.5, -0.1]), "nu2"),
    (dict(alpha=1.5), "alpha"), (dict(alpha=np.nan), "alpha"), (dict(g1=-0.1), "g1"), (dict(g1=np.inf), "g1"),
    (dict(nu1=0.0), "nu1"), (dict(nu1=-2.0), "nu1"), (dict(ridge=-1e-3), "ridge"), (dict(noise=-0.1), "noise"),
    (dict(alpha_noise=0.9, alpha=0.9), "alpha_noise"), (dict(weight_decay=-1.0), "weight_decay"),
    (dict(source_noise=-1.0), "source_noise"), (dict(noise="x"), "noise"), (dict(mode="full"), "mode"),
    (dict(nu1=1.0, source_noise=0.5), "nu1"),
])
def test_bad_input_names_the_parameter(kw, name):
    args = dict(nu2=0.5, alpha=0.5, g1=1.0)
    args.update(kw)
    with pytest.raises(ValueError, match=name):
        gf.finetune_error(args.pop("nu2"), args.pop("alpha"), args.pop("g1"), **args)


def test_bad_input_other_entry_points():
    with pytest.raises(ValueError, match="nu2"):
        gf.scratch_error(-1.0)
    with pytest.raises(ValueError, match="g"):
        gf.source_spike(np.nan)
    with pytest.raises(ValueError, match="weight_decay"):
        gf.source_spike(1.0, -0.5)
    with pytest.raises(ValueError, match="time"):
        gf.source_kernel(1.0, 0.1, nu1=2.0, time=1.0)
    with pytest.raises(ValueError, match="do not broadcast"):
        gf.finetune_error(np.ones(3), np.ones(2) * 0.5, 1.0)
    with pytest.raises(ValueError, match="x must be one of"):
        gf.phase_diagram("coupling", "nu2")
    with pytest.raises(ValueError, match="different"):
        gf.phase_diagram("nu2", "nu2")
    with pytest.raises(ValueError, match="axis"):
        gf.phase_diagram("alpha", "nu2", alpha=0.3)
    with pytest.raises(ValueError, match="g_max"):
        gf.optimal_source_strength(0.5, 0.5, 1.0, g_max=np.inf)


def test_bisection_failure_raises_convergence_error(monkeypatch):
    monkeypatch.setattr(gf, "_BISECT_ITERS", 2)
    with pytest.raises(ConvergenceError, match="eq. \\(7.4\\)"):
        gf.source_kernel(2.0, 0.3, nu1=2.0, source_noise=0.5)


@pytest.mark.slow
def test_limited_source_kernel_matches_wide_network():
    """eqs. (7.3), (7.5) against a simulated width-4000 linear network (Gaussian X1, P1 = D/2, noisy).

    Width-N fluctuations of ``u^T Sigma_w u`` are ``sqrt(2/N) (1 + chi)`` (4% tolerance = ~2 sd at N = 4000
    plus the O(lr) Euler bias); the network's weight vector is the min-norm fit to 2% in the row space of X1.
    """
    from symtransfer.sim import WideNetwork

    rng = np.random.default_rng(5)
    D, P, g = 40, 20, 2.0
    X = rng.standard_normal((P, D))
    beta = _unit_teacher(D, rng)
    y = X @ beta / math.sqrt(D) + 0.5 * rng.standard_normal(P)
    gamma = g / math.sqrt(D)
    net = WideNetwork(4000, activation="linear", gamma=gamma, weight_decay=0.0, steps=12000, seed=3,
                      progress=False).fit(X, y)
    N = net.W_.shape[0]
    Sigma = net.W_.T @ net.W_ / N
    w_net = net.a_ @ net.W_ / (gamma * N)
    w = np.linalg.lstsq(X / math.sqrt(D), y, rcond=None)[0]
    chi = math.sqrt(1 + gamma**2 * (w @ w)) - 1
    u = w / np.linalg.norm(w)
    # in the row space of X1 the network is the min-norm fit; outside it keeps its initial function,
    # w_eff(0) = E_N[a w]/gamma, of size sqrt((D - P)/(gamma^2 N)) (zero at infinite width)
    Q, _ = np.linalg.qr(X.T)
    w_row = Q @ (Q.T @ w_net)
    assert np.linalg.norm(w_row - w) / np.linalg.norm(w) < 0.02
    null = np.linalg.norm(w_net - w_row) / math.sqrt((D - P) / (gamma**2 * N))
    assert 0.5 < null < 2.0
    assert u @ Sigma @ u == pytest.approx(1 + chi, rel=0.04)


@pytest.mark.parametrize("mode", gf.MODES)
@pytest.mark.parametrize("nu2", [0.3, 0.99, 1.5])
def test_subnormal_ridge_is_ridgeless_not_nan(nu2, mode):
    """A ridge of 2e-311 (found by hypothesis) overflowed the Marchenko-Pastur scalars to NaN."""
    kw = dict(noise=0.1, mode=mode)
    r0 = gf.finetune_error(nu2, 0.7, 1.5, **kw)
    for ridge in (2.225073858507e-311, 1e-200, 1e-100):
        assert gf.finetune_error(nu2, 0.7, 1.5, ridge=ridge, **kw) == pytest.approx(r0, rel=1e-14)
        assert gf.scratch_error(nu2, ridge=ridge, **kw) == pytest.approx(gf.scratch_error(nu2, **kw), rel=1e-14)
        assert gf.rich_limit_error(nu2, 0.7, ridge=ridge, **kw) == pytest.approx(
            gf.rich_limit_error(nu2, 0.7, **kw), rel=1e-14)


@pytest.mark.parametrize("kw, name", [(dict(noise=1e200), "noise"), (dict(nu1=1e-300), "nu1"),
                                      (dict(ridge=1e300), "ridge"), (dict(g1=1e300), "g1"),
                                      (dict(nu2=1e-300), "nu2"), (dict(weight_decay=1e300), "weight_decay")])
def test_float64_breaking_scales_are_refused_not_nan(kw, name):
    """Magnitudes beyond 1e100 (or below 1e-100 for nu1, nu2) gave NaN or inf; now a ValueError naming them."""
    args = dict(nu2=0.5, alpha=0.7, g1=1.5)
    args.update(kw)
    nu2, alpha, g1 = args.pop("nu2"), args.pop("alpha"), args.pop("g1")
    with pytest.raises(ValueError, match=name):
        gf.finetune_error(nu2, alpha, g1, source_noise=0.5, **args)
