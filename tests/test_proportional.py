"""Proportional-limit closed forms (docs/theory.md, section 6) against the exact finite-D linear theory.

Two finite-D references are used. ``LinearTheory`` (docs/theory.md, eqs. 2.9 and 3.4-3.6) on dense
Gaussian data is the literal target. For many draws at D up to 2000 the same equations are solved
in the eigenbasis of X^T X/D (``_finite_source``/``_finite_target``, checked against
``LinearTheory`` to 1e-10 below) with the spectrum drawn from the Dumitriu-Edelman bidiagonal
model and the fixed vectors in Haar-distributed coordinates: for Gaussian inputs that is the same
distribution as dense data, at O(D^2) instead of O(D^3) per draw.

Every error is the population test error against the noiseless teacher, |w_hat - beta|^2/D.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import integrate
from scipy.linalg import eigvalsh_tridiagonal
from scipy.optimize import brentq

from symtransfer.errors import ConvergenceError
from symtransfer.theory import proportional as pr

BASE = dict(nu1=2.0, nu2=0.7, alpha=0.8, g1=3.0, g2=2.0, weight_decay1=1.0, weight_decay2=0.5, temperature1=0.5,
            temperature2=0.3, sigma1=0.3, sigma2=0.5)
DELTA = {"scratch": 0.0, "finetune": math.inf, "joint": 1.0}


def _err(setting, **kw):
    p = dict(BASE)
    p.update(kw)
    if setting == "joint":
        p.setdefault("coupling", DELTA["joint"])
    return pr.target_error(setting, **p)


# ------------------------------------------------------------------------------------------------
# exact finite-D theory in the eigenbasis of S = X^T X / D
# ------------------------------------------------------------------------------------------------


def _root_up(f, lo, hi):
    """Root of ``f`` with ``f(lo) <= 0``, expanding ``hi`` until ``f(hi) > 0``."""
    if f(lo) >= 0:
        return lo
    while f(hi) <= 0:
        lo, hi = hi, 2.0 * hi
    return brentq(f, lo, hi, xtol=1e-14, rtol=1e-14)


def _finite_source(e1, b1c, n1c, P1, g1, lam1, T1, sig1):
    """Eq. (2.9): ``a1`` and ``w1 = a1 u1`` (ridge with ridge lam1/a1) in the eigenbasis of S1."""
    s1 = T1 / lam1
    rhs = e1 * b1c + sig1 * n1c  # X1^T y1 / sqrt(D)

    def w_of(a):
        return rhs / (e1 + lam1 / a)

    a1 = _root_up(lambda a: a * (1.0 - g1**2 / P1 * np.sum(w_of(a) ** 2) / a**2) - s1, s1, 2.0 * s1)
    return a1, s1, w_of(a1)


def _finite_target(setting, e2, uc, b2c, n2c, P2, s1, a1, g2, lam2, T2, delta, sig2):
    """Eqs. (3.4)-(3.6) in the eigenbasis of S2: ``w2 = (S2 + lam2 C^-1)^-1 X2^T y2/sqrt(D)``,
    ``C = A I + M Sigma1``, ``Sigma1 = s1 I + (a1 - s1) u u^T``; returns ``(|w2 - beta2|^2/D, t, A, M)``."""
    D = e2.size
    rhs = e2 * b2c + sig2 * n2c

    def solve(A, M):
        c0, c1 = A + M * s1, M * (a1 - s1)
        r, tau = lam2 / c0, lam2 / c0 - lam2 / (c0 + c1)
        R = 1.0 / (e2 + r)
        Rb, Ru = R * rhs, R * uc
        w = Rb + tau * Ru * (uc @ Rb) / (1.0 - tau * (uc @ Ru))
        n = w / c0 + (1.0 / (c0 + c1) - 1.0 / c0) * (uc @ w) * uc  # X2^T v2 / sqrt(D) = C^-1 w2
        kap = n @ n
        return w, kap, s1 * kap + (a1 - s1) * (uc @ n) ** 2

    delta = {"scratch": 0.0, "finetune": math.inf}.get(setting, delta)
    if math.isinf(delta):
        t, A, M = 1.0, 0.0, 1.0
    else:
        m2 = (delta / (lam2 + delta)) ** 2
        sc2 = T2 / (lam2 + delta)
        c = g2**2 / P2 * lam2 / (lam2 + delta)

        def A_of(t):
            if m2 == 0.0:
                return t * sc2
            return _root_up(lambda A: A - t * (sc2 + c * t * m2 * solve(A, t * m2)[2]), t * sc2, 2 * t * sc2 + 1)

        t = 1.0 if c == 0 else _root_up(lambda t: 1 - 1 / t - c * solve(A_of(t), t * m2)[1], 1.0, 2.0)
        A, M = A_of(t), t * m2
    w = solve(A, M)[0]
    return float(np.sum((w - b2c) ** 2) / D), t, A, M


def _laguerre_eigs(P, D, rng):
    """Eigenvalues of X^T X / D for a P x D standard Gaussian X (Dumitriu-Edelman, exact law)."""
    n, m = (P, D) if P >= D else (D, P)
    d = np.sqrt(rng.chisquare(n - np.arange(m)))
    o = np.sqrt(rng.chisquare(m - 1 - np.arange(m - 1)))
    ev = eigvalsh_tridiagonal(d**2 + np.append(o**2, 0.0), o * d[1:], lapack_driver="sterf")
    ev = np.clip(ev, 0.0, None) / D
    return np.concatenate([np.zeros(D - m), ev]) if m < D else ev


def _unit_pair(D, overlap, rng):
    """Two unit vectors with the given inner product in uniformly random coordinates."""
    z = rng.standard_normal((2, D))
    o1 = z[0] / np.linalg.norm(z[0])
    o2 = z[1] - (z[1] @ o1) * o1
    o2 /= np.linalg.norm(o2)
    return o1, overlap * o1 + math.sqrt(max(0.0, 1.0 - overlap**2)) * o2


def _finite_draw(D, rng, settings_=("scratch", "finetune", "joint"), **kw):
    """One draw of data at dimension D; the finite-D target errors of the requested settings."""
    p = dict(BASE)
    p.update(kw)
    P1, P2 = int(round(p["nu1"] * D)), int(round(p["nu2"] * D))
    e1 = _laguerre_eigs(P1, D, rng)
    b1c = rng.standard_normal(D)
    b1c *= math.sqrt(D) / np.linalg.norm(b1c)
    # The eigenvectors of a Gaussian Gram matrix are Haar and independent of its eigenvalues, so the
    # label-noise vector X^T eps/sqrt(D) has independent coordinates sqrt(e_i) z_i in that basis.
    a1, s1, w1c = _finite_source(e1, b1c, np.sqrt(e1) * rng.standard_normal(D), P1, p["g1"], p["weight_decay1"],
                                 p["temperature1"], p["sigma1"])
    cos1 = (w1c @ b1c) / (np.linalg.norm(w1c) * math.sqrt(D))
    # beta_perp is uniform on the sphere orthogonal to beta1 (as in symtransfer.tasks), independent of
    # the source noise: its overlap with the spike's part orthogonal to beta1 is one coordinate of a
    # uniform unit vector in D - 1 dimensions.
    zeta = _unit_pair(D - 1, 0.0, rng)[0][0]
    al = p["alpha"]
    overlap = al * cos1 + math.sqrt(1 - al**2) * math.sqrt(max(0.0, 1 - cos1**2)) * zeta
    e2 = _laguerre_eigs(P2, D, rng)
    uc, b2 = _unit_pair(D, overlap, rng)
    n2c = np.sqrt(e2) * rng.standard_normal(D)
    return {s: _finite_target(s, e2, uc, math.sqrt(D) * b2, n2c, P2, s1, a1, p["g2"], p["weight_decay2"],
                              p["temperature2"], p.get("coupling", DELTA["joint"]), p["sigma2"])[0] for s in settings_}


def _dense_finite(pair, D, g1, g2, lam1, lam2, T1, T2, delta, setting):
    """The eigenbasis solver on dense data (labels carry their own noise)."""
    s, tg = pair.source, pair.target
    e1, V1 = np.linalg.eigh(s.X_train.T @ s.X_train / D)
    e1 = np.clip(e1, 0.0, None)
    b1c = V1.T @ s.beta
    n1c = V1.T @ (s.X_train.T @ s.y_train / math.sqrt(D)) - e1 * b1c
    a1, s1, w1c = _finite_source(e1, b1c, n1c, s.X_train.shape[0], g1, lam1, T1, 1.0)
    u = V1 @ w1c
    u /= np.linalg.norm(u)
    e2, V2 = np.linalg.eigh(tg.X_train.T @ tg.X_train / D)
    e2 = np.clip(e2, 0.0, None)
    b2c = V2.T @ tg.beta
    n2c = V2.T @ (tg.X_train.T @ tg.y_train / math.sqrt(D)) - e2 * b2c
    return _finite_target(setting, e2, V2.T @ u, b2c, n2c, tg.X_train.shape[0], s1, a1, g2, lam2, T2, delta,
                          1.0)[0], a1


def _linear_theory_errors(pair, D, g1, g2, lam1, lam2, T1, T2, delta, settings_=("scratch", "finetune", "joint")):
    """Population target errors of ``LinearTheory`` for the requested settings, and ``a1``."""
    from symtransfer.theory.linear import LinearTheory

    s, tg = pair.source, pair.target
    P1, P2 = s.X_train.shape[0], tg.X_train.shape[0]
    src = LinearTheory(gamma=g1 / math.sqrt(P1), weight_decay=lam1, temperature=T1).fit(s.X_train, s.y_train)
    out = {}
    for setting in settings_:
        hyper = dict(gamma=g2 / math.sqrt(P2), weight_decay=lam2, temperature=T2)
        if setting == "scratch":
            tgt = LinearTheory(**hyper).fit(tg.X_train, tg.y_train)
        else:
            tgt = src.transfer(tg.X_train, tg.y_train, coupling=math.inf if setting == "finetune" else delta,
                               **hyper)
        # f(x) = x.w/sqrt(D) exactly, so predicting at sqrt(D) e_i reads off w; the population error
        # against the noiseless teacher is then |w - beta|^2/D (no test-set noise).
        w = tgt.predict(math.sqrt(D) * np.eye(D))
        out[setting] = float(np.sum((w - tg.beta) ** 2) / D)
    return out, src.a_


# ------------------------------------------------------------------------------------------------
# Marchenko-Pastur building blocks
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nu", [0.3, 1.0, 2.5])
@pytest.mark.parametrize("r", [0.05, 1.0])
def test_resolvent_matches_marchenko_pastur_density(nu, r):
    # G(r) = (1/D) tr (S + r)^-1: integrate 1/(x + r) against the MP law of S = X^T X/D,
    # eigenvalues nu * (1 +- 1/sqrt(nu))^2 with an atom 1 - nu at 0 when nu < 1.
    lo, hi = (math.sqrt(nu) - 1) ** 2, (math.sqrt(nu) + 1) ** 2

    def dens(x):
        return math.sqrt(max((hi - x) * (x - lo), 0.0)) / (2 * math.pi * x)

    G_num = integrate.quad(lambda x: dens(x) / (x + r), lo, hi, limit=200)[0] + max(0.0, 1 - nu) / r
    dG_num = integrate.quad(lambda x: dens(x) / (x + r) ** 2, lo, hi, limit=200)[0] + max(0.0, 1 - nu) / r**2
    mass = integrate.quad(dens, lo, hi, limit=200)[0] + max(0.0, 1 - nu)
    G, dG = pr.mp_resolvent(r, nu)
    assert mass == pytest.approx(1.0, abs=1e-7)
    assert G == pytest.approx(G_num, rel=1e-7)
    assert dG == pytest.approx(dG_num, rel=1e-6)


@settings(max_examples=40, deadline=None)
@given(nu=st.floats(0.05, 20.0), sigma=st.floats(0.05, 2.0), f=st.floats(0.05, 20.0))
def test_ridge_error_is_minimal_at_bayes_ridge(nu, sigma, f):
    # With a unit-variance isotropic prior on beta the posterior mean is ridge with r = sigma^2, so no
    # other ridge can have a lower error: an independent check of bias and variance terms (P.5).
    r_opt = sigma**2
    e_opt = pr.ridge_error(r_opt, nu, sigma)
    assert pr.ridge_error(r_opt * f, nu, sigma) >= e_opt - 1e-12
    # at the optimum the error equals the Bayes MMSE, sigma^2 G(sigma^2) (Gaussian linear model)
    assert e_opt == pytest.approx(sigma**2 * pr.mp_resolvent(r_opt, nu)[0], rel=1e-9)


def test_eigenbasis_solver_equals_linear_theory_on_dense_data():
    from symtransfer.tasks import make_transfer_pair

    D, P1, P2 = 100, 200, 70
    pair = make_transfer_pair(D, P1, P2, 0, 0.8, noise_source=0.3, noise_target=0.5, seed=3)
    hyper = dict(g1=3.0, g2=2.0, lam1=1.0, lam2=0.5, T1=0.5, T2=0.3, delta=1.0)
    ref, a_ref = _linear_theory_errors(pair, D, **hyper)
    for setting in ("scratch", "finetune", "joint"):
        e_ref = ref[setting]
        e, a1 = _dense_finite(pair, D, setting=setting, **hyper)
        assert e == pytest.approx(e_ref, rel=1e-9, abs=1e-12)
        assert a1 == pytest.approx(a_ref, rel=1e-9)


# ------------------------------------------------------------------------------------------------
# agreement with finite D and the 1/sqrt(D) approach
# ------------------------------------------------------------------------------------------------


def test_source_state_matches_finite_d():
    rng = np.random.default_rng(5)
    D, nu1 = 1000, BASE["nu1"]
    st_ = pr.source_state(nu1=nu1, g1=BASE["g1"],
                          weight_decay1=BASE["weight_decay1"], temperature1=BASE["temperature1"], sigma1=BASE["sigma1"])
    a, cos = [], []
    for _ in range(6):
        P1 = int(nu1 * D)
        e1 = _laguerre_eigs(P1, D, rng)
        b1c = rng.standard_normal(D)
        b1c *= math.sqrt(D) / np.linalg.norm(b1c)
        a1, s1, w1c = _finite_source(e1, b1c, np.sqrt(e1) * rng.standard_normal(D), P1, BASE["g1"],
                                     BASE["weight_decay1"],
                                     BASE["temperature1"], BASE["sigma1"])
        a.append(a1)
        cos.append((w1c @ b1c) / (np.linalg.norm(w1c) * math.sqrt(D)))
    # draw-to-draw spread at D = 1000 is ~0.01 for both; the mean of 6 draws is within ~0.005
    assert np.mean(a) == pytest.approx(st_.amplitude, abs=0.02)
    assert np.mean(cos) == pytest.approx(st_.overlap, abs=0.01)
    assert st_.spike == pytest.approx(st_.amplitude - BASE["temperature1"] / BASE["weight_decay1"])
    assert st_.chi == pytest.approx(1 - (BASE["temperature1"] / BASE["weight_decay1"]) / st_.amplitude)


def test_agreement_and_one_over_sqrt_d_convergence():
    theory = {s: _err(s) for s in ("scratch", "finetune", "joint")}
    dims, n_draws = (250, 500, 1000, 2000), 10
    rms, means, sems = [], {}, {}
    for D in dims:
        rng = np.random.default_rng(1000 + D)
        draws = [_finite_draw(D, rng) for _ in range(n_draws)]
        dev = np.array([[d[s] - theory[s] for s in theory] for d in draws])  # (draws, settings)
        rms.append(np.sqrt(np.mean(dev**2)))
        means[D] = dev.mean(0)
        sems[D] = dev.std(0, ddof=1) / math.sqrt(n_draws)
    # mean finite-D error agrees with the limit within Monte Carlo error (+ an O(1/D) bias allowance)
    for D in dims:
        assert np.all(np.abs(means[D]) < 4 * sems[D] + 2.0 / D), (D, means[D], sems[D])
    # the gap shrinks like D^-1/2: least-squares slope of log rms vs log D. With 30 deviations per
    # D the rms has ~13% relative error, giving a slope standard error of ~0.1.
    slope = np.polyfit(np.log(dims), np.log(rms), 1)[0]
    assert -0.8 < slope < -0.25, (slope, rms)
    # and sqrt(D) * rms stays O(1)
    scaled = np.array(rms) * np.sqrt(dims)
    assert scaled.max() / scaled.min() < 2.0, scaled


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_alignment_extremes_agree_with_finite_d(alpha):
    p = dict(nu1=1.5, nu2=0.6, alpha=alpha)
    theory = {s: _err(s, **p) for s in ("scratch", "finetune", "joint")}
    rng = np.random.default_rng(7 + int(alpha))
    D, n_draws = 1000, 8
    dev = np.array([[d[s] - theory[s] for s in theory] for d in (_finite_draw(D, rng, **p) for _ in range(n_draws))])
    sem = dev.std(0, ddof=1) / math.sqrt(n_draws)
    assert np.all(np.abs(dev.mean(0)) < 4 * sem + 2.0 / D), (dev.mean(0), sem)


def test_alignment_extremes_agree_with_linear_theory():
    from symtransfer.tasks import make_transfer_pair

    D = 200
    p = dict(BASE, nu1=1.5, nu2=0.6)
    hyper = dict(g1=p["g1"], g2=p["g2"], lam1=p["weight_decay1"], lam2=p["weight_decay2"], T1=p["temperature1"],
                 T2=p["temperature2"], delta=1.0)
    for alpha in (0.0, 1.0):
        errs = {s: [] for s in ("scratch", "finetune", "joint")}
        for seed in range(2):
            pair = make_transfer_pair(D, int(p["nu1"] * D), int(p["nu2"] * D), 0, alpha, noise_source=p["sigma1"],
                                      noise_target=p["sigma2"], seed=seed)
            ref = _linear_theory_errors(pair, D, **hyper)[0]
            for s in errs:
                errs[s].append(ref[s])
        for s, v in errs.items():
            th = _err(s, alpha=alpha, nu1=1.5, nu2=0.6)
            # per-draw spread at D = 200 is <= 1.0/sqrt(200) = 0.07 (sqrt(D) * rms measured 0.5-1.0):
            # 3 sigma for the mean of two draws
            assert np.mean(v) == pytest.approx(th, abs=0.15), (s, alpha, v, th)


@pytest.mark.slow
def test_linear_theory_agreement_all_dimensions():
    from symtransfer.tasks import make_transfer_pair

    hyper = dict(g1=BASE["g1"], g2=BASE["g2"], lam1=BASE["weight_decay1"], lam2=BASE["weight_decay2"],
                 T1=BASE["temperature1"], T2=BASE["temperature2"],
                 delta=1.0)
    theory = {s: _err(s) for s in ("scratch", "finetune", "joint")}
    rms = []
    for D in (250, 500, 1000, 2000):
        dev = []
        for seed in range(3):
            pair = make_transfer_pair(D, int(BASE["nu1"] * D), int(BASE["nu2"] * D), 0, BASE["alpha"],
                                      noise_source=BASE["sigma1"], noise_target=BASE["sigma2"], seed=seed)
            ref = _linear_theory_errors(pair, D, **hyper)[0]
            dev.append([ref[s] - theory[s] for s in theory])
        dev = np.array(dev)
        assert np.all(np.abs(dev.mean(0)) < 3.0 / math.sqrt(D)), (D, dev)
        rms.append(np.sqrt(np.mean(dev**2)))
    assert rms[-1] < rms[0]


# ------------------------------------------------------------------------------------------------
# limits
# ------------------------------------------------------------------------------------------------


def test_no_feature_learning_in_source_gives_lazy_finetuning():
    # gamma1 -> 0: Sigma1 = s1^2 I, so fine-tuning is kernel ridge with s1^2 K, i.e. ridge lam2/s1^2.
    s1 = BASE["temperature1"] / BASE["weight_decay1"]
    lazy = float(pr.ridge_error(BASE["weight_decay2"] / s1, BASE["nu2"], BASE["sigma2"]))
    assert _err("finetune", g1=0.0) == pytest.approx(lazy, rel=1e-12)
    # continuity: the spike grows like g1^2
    d1, d2 = _err("finetune", g1=1e-3) - lazy, _err("finetune", g1=2e-3) - lazy
    assert d2 / d1 == pytest.approx(4.0, rel=1e-2)
    st_ = pr.source_state(nu1=BASE["nu1"], g1=0.0,
                          weight_decay1=BASE["weight_decay1"], temperature1=BASE["temperature1"])
    assert st_.spike == 0.0 and st_.amplitude == pytest.approx(s1)


def test_orthogonal_tasks():
    # alpha = 0: beta2 has no overlap with the spike; fine-tuning sees only the isotropic bulk
    s1 = BASE["temperature1"] / BASE["weight_decay1"]
    lazy = float(pr.ridge_error(BASE["weight_decay2"] / s1, BASE["nu2"], BASE["sigma2"]))
    g1 = np.array([0.0, 1.0, 3.0, 6.0])
    assert np.allclose(_err("finetune", alpha=0.0, g1=g1), lazy, rtol=1e-12)
    # jointly rich training is then independent of what the source learned
    j = _err("joint", alpha=0.0, g1=g1)
    assert np.allclose(j, j[0], rtol=1e-10)
    # and the error is even in alpha
    a = np.array([0.3, 0.9])
    for s in ("finetune", "joint"):
        assert np.allclose(_err(s, alpha=a), _err(s, alpha=-a), rtol=1e-12)


def test_aligned_tasks_with_perfect_infinite_spike():
    # alpha = 1, nu1 -> inf with gamma1 sqrt(D) fixed and large: the spike lies on beta2 and is
    # unpenalised, so the bias vanishes and only the bulk's noise variance sigma2^2 (G - r G') is left.
    nu1 = 1e7
    s1 = BASE["temperature1"] / BASE["weight_decay1"]
    r = BASE["weight_decay2"] / s1
    G, dG = pr.mp_resolvent(r, BASE["nu2"])
    var = BASE["sigma2"] ** 2 * (G - r * dG)
    e = _err("finetune", alpha=1.0, nu1=nu1, g1=1e4 * math.sqrt(nu1))
    assert e == pytest.approx(var, rel=1e-3)
    assert _err("finetune", alpha=1.0, nu1=nu1, g1=1e4 * math.sqrt(nu1), sigma2=0.0) < 1e-4


def test_infinite_source_data():
    # nu1 -> inf at fixed g1: gamma1^2 = g1^2/P1 -> 0, the spike shrinks like g1^2/(nu1 s1^2) while
    # the spike direction converges to beta1.
    s1 = BASE["temperature1"] / BASE["weight_decay1"]
    st_ = pr.source_state(nu1=1e6, g1=BASE["g1"],
                          weight_decay1=BASE["weight_decay1"], temperature1=BASE["temperature1"], sigma1=BASE["sigma1"])
    assert st_.overlap == pytest.approx(1.0, abs=1e-5)
    assert st_.spike * 1e6 == pytest.approx(BASE["g1"] ** 2 / s1, rel=1e-4)
    # nu1 -> inf at fixed gamma1 sqrt(D) = k: chi1 = k/a1^2, so a1 = (s1^2 + sqrt(s1^4 + 4k))/2
    k = 5.0
    st_ = pr.source_state(nu1=1e6, g1=math.sqrt(k * 1e6), weight_decay1=BASE["weight_decay1"],
                          temperature1=BASE["temperature1"], sigma1=BASE["sigma1"])
    assert st_.amplitude == pytest.approx((s1 + math.sqrt(s1**2 + 4 * k)) / 2, rel=1e-4)


def test_coupling_limits():
    # delta = 0 forgets the source: joint == scratch; delta -> inf freezes it: joint -> finetune
    alphas = np.linspace(-1, 1, 7)
    assert np.allclose(_err("joint", coupling=0.0, alpha=alphas), _err("scratch", alpha=alphas), rtol=1e-12)
    assert np.allclose(_err("joint", coupling=np.inf, alpha=alphas), _err("finetune", alpha=alphas), rtol=1e-14)
    big = _err("joint", coupling=1e8, alpha=alphas)
    assert np.allclose(big, _err("finetune", alpha=alphas), rtol=1e-6)
    # approach is O(1/delta)
    fin = _err("finetune")
    r = (_err("joint", coupling=1e4) - fin) / (_err("joint", coupling=2e4) - fin)
    assert r == pytest.approx(2.0, rel=1e-2)


def test_lazy_target_scalars():
    # gamma2 -> 0: t = 1, A = s_c^2, M = m^2 (docs/theory.md, after eq. 3.7)
    d, lam2, T2 = 0.7, BASE["weight_decay2"], BASE["temperature2"]
    e, t, A, M = pr.target_scalars("joint", **dict(BASE, g2=0.0, coupling=d))
    assert t == 1.0
    assert A == pytest.approx(T2 / (lam2 + d), rel=1e-13)
    assert M == pytest.approx((d / (lam2 + d)) ** 2, rel=1e-13)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nu1=st.floats(0.1, 10), nu2=st.floats(0.1, 10), alpha=st.floats(-1, 1), g1=st.floats(0, 6),
       g2=st.floats(0, 6), lam2=st.floats(0.05, 5), T2=st.floats(0.05, 5), delta=st.floats(0.01, 100),
       sigma2=st.floats(0, 1.5))
def test_joint_fixed_point_and_invariants(nu1, nu2, alpha, g1, g2, lam2, T2, delta, sigma2):
    kw = dict(BASE, nu1=nu1, nu2=nu2, alpha=alpha, g1=g1, g2=g2, weight_decay2=lam2, temperature2=T2, sigma2=sigma2,
              coupling=delta)
    e, t, A, M = pr.target_scalars("joint", **kw)
    assert np.isfinite(e) and e >= 0
    # re-evaluate eqs. (P.8)-(P.11) in plain NumPy at the returned scalars: both equations must hold
    src = pr.source_state(nu1=nu1, g1=g1,
                          weight_decay1=BASE["weight_decay1"], temperature1=BASE["temperature1"], sigma1=BASE["sigma1"])
    s1, a1, p = BASE["temperature1"] / BASE["weight_decay1"], src.amplitude, alpha * src.overlap
    m = delta / (lam2 + delta)
    c0, c1 = A + M * s1, M * (a1 - s1)
    r, tau = lam2 / c0, lam2 / c0 - lam2 / (c0 + c1)
    G, dG = pr.mp_resolvent(r, nu2)
    om = p * (1 - r * G) / (1 - tau * G)
    h = tau * om
    q = 1 - 2 * r * G + r * r * dG + sigma2**2 * (G - r * dG) + 2 * h * p * (G - r * dG) + h * h * dG
    kap = (q - om**2) / c0**2 + om**2 / (c0 + c1) ** 2
    rho = s1 * (q - om**2) / c0**2 + a1 * om**2 / (c0 + c1) ** 2
    chat = g2**2 * lam2 / (nu2 * (lam2 + delta))
    assert M == pytest.approx(t * m * m, rel=1e-12)
    assert t == pytest.approx(1 / (1 - chat * kap), rel=1e-9)
    assert A == pytest.approx(t * (T2 / (lam2 + delta) + chat * t * m * m * rho), rel=1e-9)
    assert e == pytest.approx(np.sum(q) - 2 * (1 - r * G + h * p * G) + 1, rel=1e-8, abs=1e-12)
    # t >= 1 and A >= t s_c^2: the tilt only adds variance
    assert t >= 1 and A >= t * T2 / (lam2 + delta) * (1 - 1e-12)


@settings(max_examples=25, deadline=None)
@given(nu1=st.floats(0.05, 50), g1=st.floats(0, 20), lam1=st.floats(0.01, 10), T1=st.floats(0.01, 10),
       sigma1=st.floats(0, 2))
def test_source_invariants(nu1, g1, lam1, T1, sigma1):
    s = pr.source_state(nu1=nu1, g1=g1, weight_decay1=lam1, temperature1=T1, sigma1=sigma1)
    s1 = T1 / lam1
    assert s.amplitude >= s1 * (1 - 1e-14) and 0 <= s.chi < 1 and -1 <= s.overlap <= 1 + 1e-12
    # eq. (P.6): a1 (1 - chi(a1)) = s1^2 with chi = g1^2 q/(nu1 a1^2)
    r = lam1 / s.amplitude
    G, dG = pr.mp_resolvent(r, nu1)
    q = 1 - 2 * r * G + r * r * dG + sigma1**2 * (G - r * dG)
    assert s.chi == pytest.approx(g1**2 * q / (nu1 * s.amplitude**2), rel=1e-9, abs=1e-15)
    assert s.error == pytest.approx(float(pr.ridge_error(r, nu1, sigma1)), rel=1e-12)


def test_broadcasting_and_scratch_is_single_task():
    alphas = np.linspace(0, 1, 3)[:, None]
    nus = np.array([0.5, 1.0, 4.0])
    grid = _err("joint", alpha=alphas, nu2=nus)
    assert grid.shape == (3, 3)
    for i in range(3):
        for j in range(3):
            assert grid[i, j] == _err("joint", alpha=float(alphas[i, 0]), nu2=float(nus[j]))
    # scratch is the single-task theory with the target's parameters
    s = pr.source_state(nu1=nus, g1=BASE["g2"],
                        weight_decay1=BASE["weight_decay2"], temperature1=BASE["temperature2"], sigma1=BASE["sigma2"])
    assert np.allclose(_err("scratch", nu2=nus), s.error, rtol=1e-13)
    assert isinstance(_err("scratch"), float)


def test_validation():
    with pytest.raises(ValueError, match="setting"):
        pr.target_error("lazy", **BASE)
    with pytest.raises(ValueError, match="alpha"):
        _err("finetune", alpha=1.5)
    with pytest.raises(ValueError, match="nu2"):
        _err("finetune", nu2=np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="^temperature1 must"):
        _err("finetune", temperature1=0.0)
    with pytest.raises(ValueError, match="coupling"):
        pr.target_error("joint", **BASE)
    with pytest.raises(ValueError, match="coupling"):
        pr.target_error("finetune", coupling=1.0, **BASE)
    with pytest.raises(ValueError, match="broadcast"):
        _err("finetune", alpha=np.zeros(2), nu2=np.ones(3))
    with pytest.raises(ValueError, match="x and y"):
        pr.phase_diagram("alpha", "alpha")


# ------------------------------------------------------------------------------------------------
# phase diagrams, plots, CLI
# ------------------------------------------------------------------------------------------------


def test_phase_diagram_boundary_is_the_zero_of_the_gain(tmp_path):
    d = pr.phase_diagram("alpha", "nu2", n=40, setting="finetune")
    assert d.gain.shape == (40, 40)
    assert np.allclose(d.gain, d.scratch_error - d.transfer_error)
    # the gain at the first grid column equals a direct evaluation
    p = dict(d.params)
    col = pr.transfer_gain("finetune", alpha=d.x[0], nu2=d.y, **p)
    assert np.allclose(d.gain[:, 0], col, rtol=1e-12)
    # with the defaults transfer is negative for orthogonal tasks and positive for aligned ones
    assert np.all(d.gain[:, 0] < 0) and np.any(d.gain[:, -1] > 0)
    assert d.boundary, "expected a gain = 0 line"
    # points on the boundary have zero gain up to the interpolation error of the grid
    pts = np.concatenate(d.boundary)
    g = pr.transfer_gain("finetune", alpha=pts[:, 0], nu2=pts[:, 1], **p)
    assert np.max(np.abs(g)) < 0.02 * np.max(np.abs(d.gain))


def test_plots_and_cli(tmp_path, capsys):
    from symtransfer import plotting
    from symtransfer.cli.phase_diagram import phase_diagram_cli

    cfg = {"setting": "joint", "x": "alpha", "y": "nu2", "x_grid": {"start": 0, "stop": 1, "num": 12},
           "y_values": [0.2, 0.5, 1.0, 2.0, 5.0], "params": {"coupling": 2.0, "g1": 3.0}, "arrays": "d.npz"}
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    d = phase_diagram_cli(path, tmp_path / "pd.png")
    assert (tmp_path / "pd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"positive transfer on {np.mean(d.gain > 0):.0%}" in capsys.readouterr().out
    z = np.load(tmp_path / "d.npz")
    assert z["gain"].shape == (5, 12) and np.array_equal(z["gain"], d.gain)
    toml = tmp_path / "cfg.toml"
    toml.write_text('x = "g1"\ny = "alpha"\nn = 6\nsetting = "finetune"\n[params]\nnu2 = 1.0\n')
    d2 = phase_diagram_cli(toml, tmp_path / "pd.pdf")
    assert (tmp_path / "pd.pdf").read_bytes()[:4] == b"%PDF" and d2.gain.shape == (6, 6)
    with pytest.raises(ValueError, match="unknown config keys"):
        bad = tmp_path / "bad.json"
        bad.write_text('{"sett": 1}')
        phase_diagram_cli(bad, tmp_path / "x.png")
    curves = pr.learning_curves(np.geomspace(0.2, 5, 8), alphas=(0.0, 1.0), gammas=(0.5, 3.0),
                                **{k: v for k, v in BASE.items() if k not in ("nu2", "alpha", "g1", "g2")})
    fig = plotting.plot_learning_curves(curves, path=tmp_path / "lc.png")
    assert (tmp_path / "lc.png").stat().st_size > 1000
    # the plotted curves are the closed forms
    line = fig.axes[0].lines[0]
    assert np.allclose(line.get_ydata(), _err("scratch", nu2=line.get_xdata(), g1=0.5, g2=0.5))
    assert len(fig.axes[0].lines) == 1 + 2 * 2  # scratch, then (finetune, joint) per alpha
    assert curves.plot().axes[1].lines[0].get_ydata() == pytest.approx(curves.curves[1][0]["error"])
    with pytest.raises(TypeError, match="learning_curves"):
        plotting.plot_learning_curves(np.geomspace(0.2, 5, 8))


def test_old_parameter_names_are_accepted_with_a_warning():
    old = {"lam1": "weight_decay1", "lam2": "weight_decay2", "T1": "temperature1", "T2": "temperature2"}
    assert pr.DEPRECATED_NAMES == old
    kw = {next((o for o, n in old.items() if n == k), k): v for k, v in BASE.items()}
    assert set(kw) & set(old) == set(old)
    for setting, c in (("scratch", None), ("finetune", None), ("joint", 1.0)):
        with pytest.warns(DeprecationWarning, match="lam1 is the old name of weight_decay1"):
            e_old = pr.target_error(setting, coupling=c, **kw)
        assert e_old == pr.target_error(setting, coupling=c, **BASE)
    with pytest.warns(DeprecationWarning):
        s_old = pr.source_state(nu1=2.0, g1=1.0, lam1=0.7, T1=0.4)
    assert s_old == pr.source_state(nu1=2.0, g1=1.0, weight_decay1=0.7, temperature1=0.4)
    with pytest.warns(DeprecationWarning):
        assert pr.transfer_gain("finetune", **kw) == pr.transfer_gain("finetune", **BASE)
    with pytest.warns(DeprecationWarning, match="'T2' is the old name"):
        d = pr.phase_diagram("alpha", "T2", n=3)
    assert d.y_name == "temperature2" and "weight_decay1" in d.params and "lam1" not in d.params
    # an error names the argument as the caller spelt it
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="^T1 must"):
        pr.target_error("scratch", **{**kw, "T1": 0.0})
    with pytest.raises(ValueError, match="weight_decay1 or its old name lam1"):
        pr.target_error("scratch", **BASE, lam1=1.0)
    with pytest.raises(TypeError, match="weight_decay2"):
        pr.target_error("scratch", **{k: v for k, v in BASE.items() if k != "weight_decay2"})
    with pytest.raises(TypeError, match="lam3"):
        pr.target_error("scratch", **BASE, lam3=1.0)


def test_errors_report_failing_point():
    # status codes map to a ConvergenceError naming the point (exercised directly: the solvers
    # themselves do not fail on valid inputs)
    flat = {"nu1": np.array([1.0, 2.0])}
    with pytest.raises(ConvergenceError, match="nu1=2"):
        pr._status_error(np.array([0, 2]), flat, "x")


@pytest.mark.slow
def test_one_point_against_wide_network_simulation():
    """Langevin simulation (width 1000, linear, time-averaged) vs the closed forms at D = 40.

    Two gaps: simulation vs the exact finite-D theory on the same data (finite width and finite
    averaging time: measured 0.3-1.3%, bound 5%), and simulation vs the D -> infinity limit, which at
    D = 40 is dominated by the draw-to-draw spread of the finite-D error (~0.7/sqrt(40) = 0.11, see
    test_agreement_and_one_over_sqrt_d_convergence; measured gap 0.01-0.03, bound 0.25).
    """
    from symtransfer.sim import WideNetwork
    from symtransfer.tasks import make_transfer_pair
    from symtransfer.theory.linear import LinearTheory

    D, nu1, nu2 = 40, 2.0, 1.0
    p = dict(nu1=nu1, nu2=nu2, alpha=0.8, g1=2.0, g2=2.0, weight_decay1=1.0, weight_decay2=1.0, temperature1=0.5,
             temperature2=0.5, sigma1=0.2, sigma2=0.2)
    P1, P2 = int(nu1 * D), int(nu2 * D)
    pair = make_transfer_pair(D, P1, P2, 0, p["alpha"], noise_source=p["sigma1"], noise_target=p["sigma2"], seed=0)
    s, tg = pair.source, pair.target
    eye = math.sqrt(D) * np.eye(D)  # predictions at sqrt(D) e_i read off w (linear network)
    hyper1 = dict(gamma=p["g1"] / math.sqrt(P1), weight_decay=p["weight_decay1"], temperature=p["temperature1"])
    hyper2 = dict(gamma=p["g2"] / math.sqrt(P2), weight_decay=p["weight_decay2"], temperature=p["temperature2"])
    net = WideNetwork(1000, activation="linear", steps=4000, average_from=0.5, seed=1, progress=False,
                      **hyper1).fit(s.X_train, s.y_train)
    lt = LinearTheory(**hyper1).fit(s.X_train, s.y_train)
    for setting, kw in (("finetune", dict(readout_only=True)), ("joint", dict(coupling=1.0))):
        tnet = net.transfer(tg.X_train, tg.y_train, steps=4000, average_from=0.5, **hyper2, **kw)
        e_sim = np.sum((tnet.predict(eye) - tg.beta) ** 2) / D
        ltt = lt.transfer(tg.X_train, tg.y_train, coupling=kw.get("coupling", math.inf), **hyper2)
        e_lt = np.sum((ltt.predict(eye) - tg.beta) ** 2) / D
        e_prop = pr.target_error(setting, **p, coupling=kw.get("coupling"))
        assert e_sim == pytest.approx(e_lt, rel=0.05), (setting, e_sim, e_lt)
        assert abs(e_sim - e_prop) < 0.25, (setting, e_sim, e_prop)
