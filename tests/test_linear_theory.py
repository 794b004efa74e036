"""Exact linear theory (docs/theory.md eqs. 2.8-2.11, 3.4-3.7) against direct D-dimensional formulas and limits."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.exceptions import NotFittedError

from symtransfer.theory.linear import LinearTheory


def _data(seed, D=10, P1=18, P2=12):
    rng = np.random.default_rng(seed)
    X1 = rng.standard_normal((P1, D))
    X2 = rng.standard_normal((P2, D))
    beta = rng.standard_normal(D)
    y1 = X1 @ beta / math.sqrt(D) + 0.2 * rng.standard_normal(P1)
    y2 = X2 @ (0.6 * beta + 0.8 * rng.standard_normal(D)) / math.sqrt(D)
    return X1, y1, X2, y2


def _direct_source(X, gamma, lam, T, v):
    """Sigma = s^2 (I - gamma^2 u u^T)^-1 (eq. 2.8) built in weight space."""
    D = X.shape[1]
    u = X.T @ v / math.sqrt(D)
    return (T / lam) * np.linalg.inv(np.eye(D) - gamma**2 * np.outer(u, u))


hyper = st.tuples(st.floats(0.0, 3.0), st.floats(0.2, 3.0), st.floats(0.2, 3.0))


@settings(max_examples=25, deadline=None)
@given(hyper, st.integers(0, 10_000))
def test_single_task_is_saddle_point_of_weight_space_measure(h, seed):
    gamma, lam, T = h
    X1, y1, _, _ = _data(seed)
    th = LinearTheory(gamma=gamma, weight_decay=lam, temperature=T).fit(X1, y1)
    Sigma = _direct_source(X1, gamma, lam, T, th.v_)
    Phi = X1 @ Sigma @ X1.T / X1.shape[1]
    # v = (Phi + lam)^-1 y with Phi from the Gaussian measure: the fixed point holds to round-off
    assert np.abs((Phi + lam * np.eye(len(y1))) @ th.v_ - y1).max() < 1e-9 * (1 + np.abs(y1).max())
    assert np.allclose(th.Phi_, Phi, atol=1e-9 * np.abs(Phi).max())
    assert np.allclose(th.weight_covariance(), Sigma, atol=1e-9 * np.abs(Sigma).max())
    assert 0.0 <= th.chi_ < 1.0  # normalisable region (section 2)
    assert th.a_ >= T / lam - 1e-12
    assert th.eta_ == pytest.approx(th.a_ - T / lam)


@settings(max_examples=20, deadline=None)
@given(hyper, st.integers(0, 10_000))
def test_predictor_is_ridge_with_effective_ridge(h, seed):
    gamma, lam, T = h
    X1, y1, X2, _ = _data(seed)
    th = LinearTheory(gamma=gamma, weight_decay=lam, temperature=T).fit(X1, y1)
    D = X1.shape[1]
    K, Kx = X1 @ X1.T / D, X2 @ X1.T / D
    ridge = Kx @ np.linalg.solve(K + lam / th.a_ * np.eye(len(y1)), y1)  # eq. 2.10
    assert np.allclose(th.predict(X2), ridge, atol=1e-10)


def test_lazy_limit_is_nngp_ridge():
    X1, y1, X2, _ = _data(3)
    lam, T = 0.7, 1.3
    th = LinearTheory(gamma=0.0, weight_decay=lam, temperature=T).fit(X1, y1)
    D = X1.shape[1]
    s2 = T / lam
    K, Kx = X1 @ X1.T / D, X2 @ X1.T / D
    expected = s2 * Kx @ np.linalg.solve(s2 * K + lam * np.eye(len(y1)), y1)
    assert np.allclose(th.predict(X2), expected, atol=1e-12)
    # small gamma approaches the lazy predictor continuously
    small = LinearTheory(gamma=1e-4, weight_decay=lam, temperature=T).fit(X1, y1)
    assert np.abs(small.predict(X2) - expected).max() < 1e-6


def test_feature_learning_lowers_effective_ridge_monotonically():
    X1, y1, _, _ = _data(5)
    amps = [LinearTheory(gamma=g).fit(X1, y1).a_ for g in np.linspace(0, 4, 9)]
    assert np.all(np.diff(amps) > 0)


@settings(max_examples=20, deadline=None)
@given(st.floats(0.0, 2.5), st.floats(0.0, 2.5), st.sampled_from([0.0, 0.1, 1.0, 10.0, math.inf]),
       st.integers(0, 10_000))
def test_transfer_is_saddle_point_of_weight_space_measure(g1, g2, delta, seed):
    X1, y1, X2, y2 = _data(seed)
    lam1, T1, lam2, T2 = 1.0, 0.8, 0.6, 1.2
    src = LinearTheory(gamma=g1, weight_decay=lam1, temperature=T1).fit(X1, y1)
    tgt = src.transfer(X2, y2, gamma=g2, weight_decay=lam2, temperature=T2, coupling=delta)
    D = X1.shape[1]
    Sigma1 = _direct_source(X1, g1, lam1, T1, src.v_)
    if math.isinf(delta):
        C2 = Sigma1
    else:
        m, sc2 = delta / (lam2 + delta), T2 / (lam2 + delta)
        u2 = X2.T @ tgt.v_ / math.sqrt(D)
        Lam = np.eye(D) / sc2 - (g2**2 * lam2 / T2) * np.outer(u2, u2)  # THEORY.md section 3
        Li = np.linalg.inv(Lam)
        C2 = Li + (m**2 / sc2**2) * Li @ Sigma1 @ Li
    Phi2 = X2 @ C2 @ X2.T / D
    scale = 1 + np.abs(y2).max()
    assert np.abs((Phi2 + lam2 * np.eye(len(y2))) @ tgt.v_ - y2).max() < 1e-9 * scale
    assert np.allclose(tgt.Phi_, Phi2, atol=1e-9 * np.abs(Phi2).max())
    assert np.allclose(tgt.weight_covariance(), C2, atol=1e-9 * np.abs(C2).max())
    Xt = np.random.default_rng(seed + 1).standard_normal((7, D))
    assert np.allclose(tgt.predict(Xt), Xt @ C2 @ (X2.T @ tgt.v_) / D, atol=1e-9 * scale)


def test_coupling_limits():
    X1, y1, X2, y2 = _data(7)
    src = LinearTheory(gamma=1.5).fit(X1, y1)
    kw = dict(gamma=1.2, weight_decay=0.9, temperature=1.1)
    Xt = np.random.default_rng(0).standard_normal((20, X1.shape[1]))
    # delta = 0: the target forgets the source -> identical to training from scratch
    scratch = src.transfer(X2, y2, coupling=0.0, **kw)
    fresh = LinearTheory(**kw).fit(X2, y2)
    assert np.allclose(scratch.predict(Xt), fresh.predict(Xt), atol=1e-12)
    # delta = inf: kernel ridge regression with the source kernel on target inputs
    ft = src.transfer(X2, y2, coupling=math.inf, **kw)
    Phi1 = src.kernel(X2)
    expected = src.kernel(Xt, X2) @ np.linalg.solve(Phi1 + 0.9 * np.eye(len(y2)), y2)
    assert np.allclose(ft.predict(Xt), expected, atol=1e-12)
    # delta -> inf approaches it continuously (the error is O(1/delta))
    big = src.transfer(X2, y2, coupling=1e7, **kw)
    assert np.abs(big.predict(Xt) - expected).max() < 1e-5
    # gamma2 -> 0 (lazy target): kernel s_c^2 K + m^2 Phi1
    lazy = src.transfer(X2, y2, gamma=0.0, weight_decay=0.9, temperature=1.1, coupling=2.0)
    m, sc2 = 2.0 / 2.9, 1.1 / 2.9
    D = X1.shape[1]
    kern = lambda A, B: sc2 * A @ B.T / D + m**2 * src.kernel(A, B)  # noqa: E731
    exp_lazy = kern(Xt, X2) @ np.linalg.solve(kern(X2, X2) + 0.9 * np.eye(len(y2)), y2)
    assert np.allclose(lazy.predict(Xt), exp_lazy, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(st.floats(0.0, 3.0), st.sampled_from([0.0, 0.5, math.inf]), st.integers(0, 1000))
def test_kernels_symmetric_psd(gamma, delta, seed):
    X1, y1, X2, y2 = _data(seed)
    src = LinearTheory(gamma=gamma).fit(X1, y1)
    tgt = src.transfer(X2, y2, gamma=gamma, weight_decay=1.0, temperature=1.0, coupling=delta)
    Xall = np.vstack([X1, X2])
    for model in (src, tgt):
        K = model.kernel(Xall)
        assert np.allclose(K, K.T, atol=1e-12 * np.abs(K).max())
        assert np.linalg.eigvalsh(K).min() > -1e-10 * np.abs(K).max()
        assert np.allclose(model.kernel(X1, X2), model.kernel(Xall)[: len(X1), len(X1):], atol=1e-12)


def test_bad_input():
    X1, y1, X2, y2 = _data(0)
    with pytest.raises(ValueError, match="weight_decay"):
        LinearTheory(weight_decay=0.0).fit(X1, y1)
    with pytest.raises(ValueError, match="temperature"):
        LinearTheory(temperature=-1.0).fit(X1, y1)
    with pytest.raises(ValueError, match="gamma"):
        LinearTheory(gamma=float("nan")).fit(X1, y1)
    with pytest.raises(ValueError, match="shapes disagree"):
        LinearTheory().fit(X1, y1[:-1])
    with pytest.raises(ValueError, match="non-finite"):
        LinearTheory().fit(np.where(X1 > 2, np.inf, X1), y1)
    src = LinearTheory().fit(X1, y1)
    with pytest.raises(ValueError, match="coupling"):
        src.transfer(X2, y2, gamma=1.0, weight_decay=1.0, temperature=1.0, coupling=-1.0)
    with pytest.raises(ValueError, match="features"):
        src.transfer(X2[:, :-1], y2, gamma=1.0, weight_decay=1.0, temperature=1.0, coupling=1.0)
    with pytest.raises(NotFittedError, match="not fitted"):
        LinearTheory().predict(X1)
