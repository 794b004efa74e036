"""Tests of the gradient-flow / Langevin DMFT population (docs/theory.md section 4).

Three kinds of evidence:

* neuron by neuron: a population started from a simulated network's initial preactivations follows
  that network's Euler steps exactly (eq. (4.1) is eq. (1.4) in preactivation space), one task and
  transfer, linear and relu, including the evaluation inputs that are never integrated step by step;
* the infinite-width limit: independent simulations approach a large population as ``1/sqrt(N)``;
* at ``T > 0`` the long-time population reproduces the equilibrium theory (section 2).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from symtransfer.errors import DivergenceError
from symtransfer.sim import WideNetwork
from symtransfer.theory.dmft import GradientFlowDMFT, StepSizeError
from symtransfer.theory.linear import LinearTheory


def _data(P=12, Pe=7, D=30, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((P, D))
    Xe = rng.standard_normal((Pe, D))
    beta = rng.standard_normal(D)
    g = lambda Z: np.tanh(Z @ beta / math.sqrt(D)) + 0.3 * Z[:, 0]  # noqa: E731
    return X, g(X), Xe, g(Xe)


def _sim_init(net, D):
    """The initial weights WideNetwork.fit draws (its documented seeding: SeedSequence([seed, 0]))."""
    rng = np.random.default_rng(np.random.SeedSequence([net.seed, 0]))
    W = net.init_scale * rng.standard_normal((net.width, D))
    a = net.init_scale * rng.standard_normal(net.width)
    return W, a


def _sim_transfer_readouts(seed, width, init_scale=1.0):
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    return init_scale * rng.standard_normal(width)


# ------------------------------------------------------------------------------ exact agreement
# The simulator's kernels compile for ~10 s per activation on the shared CI machine: relu is in the
# default suite, the identical linear check runs with the slow tests.
@pytest.mark.parametrize("act", [pytest.param("linear", marks=pytest.mark.slow), "relu"])
def test_population_follows_network_step_by_step(act):
    X, y, Xe, ye = _data()
    D = X.shape[1]
    N, lr, steps = 48, 0.02, 200
    net = WideNetwork(N, act, gamma=1.5, weight_decay=0.5, lr=lr, steps=steps, log_every=20, seed=3,
                      progress=False).fit(X, y, eval_set=(Xe, ye))
    W0, a0 = _sim_init(net, D)
    h0 = np.vstack([X, Xe]) @ W0.T / math.sqrt(D)
    pop = GradientFlowDMFT(act, gamma=1.5, weight_decay=0.5, dt=lr, t_max=steps * lr, n_records=11,
                           early_stop=False).fit(X, y, Xe, y_eval=ye, h0=h0.T, a0=a0)
    assert pop.n_steps_ == steps
    np.testing.assert_array_equal(pop.history_["step"], net.history_["step"])
    # fastmath reassociation in the simulator is the only difference: round-off, not O(dt)
    np.testing.assert_allclose(pop.history_["train_loss"], net.history_["train_loss"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(pop.history_["eval_loss"], net.history_["test_loss"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(pop.predict(Xe), net.predict(Xe), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(pop.features(Xe).T, Xe @ net.W_.T / math.sqrt(D), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(pop.kernel(X), net.kernel(X), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("act,coupling,readout_only", [pytest.param("linear", 0.7, False, marks=pytest.mark.slow),
                                                       ("relu", 0.7, False), ("relu", 0.0, True)])
def test_transfer_follows_network_step_by_step(act, coupling, readout_only):
    X1, y1, Xt, yt = _data(seed=1)
    rng = np.random.default_rng(5)
    X2 = rng.standard_normal((10, X1.shape[1]))
    y2 = np.sin(X2[:, 1]) + 0.5 * X2[:, 0]
    D = X1.shape[1]
    N, lr, steps = 40, 0.02, 150
    src = WideNetwork(N, act, gamma=1.2, weight_decay=0.5, lr=lr, steps=steps, seed=2, progress=False).fit(X1, y1)
    tgt = src.transfer(X2, y2, gamma=0.8, weight_decay=0.3, coupling=coupling, readout_only=readout_only,
                       eval_set=(Xt, yt))
    W0, a0 = _sim_init(src, D)
    h0 = np.vstack([X1, X2, Xt]) @ W0.T / math.sqrt(D)
    pop = GradientFlowDMFT(act, gamma=1.2, weight_decay=0.5, dt=lr, t_max=steps * lr, early_stop=False)
    pop.fit(X1, y1, np.vstack([X2, Xt]), h0=h0.T, a0=a0)
    ptgt = pop.transfer(X2, y2, Xt, gamma=0.8, weight_decay=0.3, coupling=coupling, readout_only=readout_only,
                        y2_eval=yt, a0=_sim_transfer_readouts(src.seed + 1, N))
    np.testing.assert_allclose(ptgt.predict(Xt), tgt.predict(Xt), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(ptgt.history_["train_loss"][-1], tgt.history_["train_loss"][-1], rtol=1e-8)
    np.testing.assert_allclose(ptgt.history_["eval_loss"][-1], tgt.history_["test_loss"][-1], rtol=1e-8)
    if readout_only:
        np.testing.assert_array_equal(ptgt.H_, pop.features(np.vstack([X2, Xt])))


# ------------------------------------------------------------------------------ the N -> inf limit
def test_simulations_approach_population_as_width_grows():
    """Finite-width fluctuations of the predictor are O(1/sqrt(N)): 16x the width, ~4x closer."""
    X, y, Xe, ye = _data(P=10, Pe=6, D=16, seed=4)
    kw = dict(gamma=1.0, weight_decay=0.5)
    t_max, lr = 3.0, 0.03
    ref = GradientFlowDMFT("relu", population=30000, dt=lr, t_max=t_max, early_stop=False, n_records=11,
                           seed=11, **kw)
    ref.fit(X, y, Xe, y_eval=ye)
    f_inf = ref.predict(Xe)
    curve_inf = ref.history_["eval_loss"]
    gaps, curve_gaps = {}, {}
    for N in (25, 400):
        errs, cerrs = [], []
        for seed in range(4):
            net = WideNetwork(N, "relu", lr=lr, steps=int(round(t_max / lr)), log_every=10, seed=seed,
                              progress=False, **kw).fit(X, y, eval_set=(Xe, ye))
            errs.append(np.mean((net.predict(Xe) - f_inf) ** 2))
            cerrs.append(np.max(np.abs(net.history_["test_loss"] - curve_inf)))
        gaps[N], curve_gaps[N] = math.sqrt(np.mean(errs)), np.mean(cerrs)
    # 1/sqrt(N) predicts 4; measured 4.7-5.5 (predictor) and 3.8-4.4 (curves) over seed sets;
    # 2.5 leaves room for the 4-seed Monte Carlo error of the gaps
    assert gaps[400] < gaps[25] / 2.5, gaps
    assert curve_gaps[400] < curve_gaps[25] / 2.5, curve_gaps
    assert gaps[400] < 0.05 * np.sqrt(np.mean(f_inf**2))


def test_transfer_simulations_approach_population():
    X1, y1, Xt, yt = _data(P=10, Pe=6, D=16, seed=6)
    rng = np.random.default_rng(8)
    X2 = rng.standard_normal((8, 16))
    y2 = np.tanh(X2[:, 0]) - 0.5 * X2[:, 2]
    lr, steps, kw = 0.05, 60, dict(weight_decay=0.2)  # weak decay: the source features survive
    src_pop = GradientFlowDMFT("relu", population=30000, dt=lr, t_max=lr * steps, early_stop=False, seed=3, **kw)
    src_pop.fit(X1, y1, np.vstack([X2, Xt]))
    f_inf = src_pop.transfer(X2, y2, Xt, coupling=1.0).predict(Xt)
    gaps = {}
    for N in (25, 400):
        errs = []
        for seed in range(4):
            src = WideNetwork(N, "relu", lr=lr, steps=steps, seed=seed, progress=False, **kw).fit(X1, y1)
            errs.append(np.mean((src.transfer(X2, y2, coupling=1.0).predict(Xt) - f_inf) ** 2))
        gaps[N] = math.sqrt(np.mean(errs))
    # 1/sqrt(N) predicts 4; measured 2.7-3.4 over seed sets (N = 25 is not yet asymptotic);
    # no convergence would give ~1
    assert gaps[400] < gaps[25] / 2.0, gaps
    assert gaps[400] < 0.2 * np.sqrt(np.mean(f_inf**2))


# ------------------------------------------------------------------------------ equilibrium (T > 0)
def test_langevin_population_reproduces_linear_equilibrium():
    """Long-time population at T > 0 against the exact linear theory (eqs. (2.9)-(2.11)).

    Tolerance: Euler-Maruyama biases the stationary variance by ~dt*lambda/2 = 0.5%; the Monte Carlo
    error of the time-averaged kernel with M = 2000 neurons over ~10 relaxation times is ~1%.
    """
    X, y, Xe, _ = _data(P=8, Pe=5, D=12, seed=7)
    y = y / np.std(y)
    kw = dict(gamma=1.0, weight_decay=1.0, temperature=0.5)
    theory = LinearTheory(**kw).fit(X, y)
    pop = GradientFlowDMFT("linear", population=2000, dt=0.01, t_max=14.0, average_from=2.0 / 14, seed=1, **kw)
    pop.fit(X, y, Xe)
    scale = np.linalg.norm(theory.Phi_)
    assert np.linalg.norm(pop.Phi_ - theory.Phi_) / scale < 0.04
    Phi_eval = theory.kernel(Xe, X)
    assert np.linalg.norm(pop.kernel(Xe, X) - Phi_eval) / np.linalg.norm(Phi_eval) < 0.04
    f_th = theory.predict(Xe)
    assert np.max(np.abs(pop.predict_kernel(Xe) - f_th)) < 0.04 * np.max(np.abs(f_th))
    # the time-averaged population output is the mean predictor itself (not only its kernel form)
    assert np.max(np.abs(pop.predict(Xe) - f_th)) < 0.08 * np.max(np.abs(f_th))


@pytest.mark.slow
def test_langevin_population_reproduces_adaptive_kernel_relu():
    from symtransfer.theory.adaptive import AdaptiveKernel

    X, y, Xe, _ = _data(P=8, Pe=5, D=12, seed=9)
    y = y / np.std(y)
    kw = dict(gamma=1.0, weight_decay=1.0, temperature=1.0)
    theory = AdaptiveKernel("relu", n_samples=32768, seed=0, **kw).fit(X, y)
    pop = GradientFlowDMFT("relu", population=4000, dt=0.01, t_max=20.0, average_from=0.1, seed=2, **kw)
    pop.fit(X, y, Xe)
    assert np.linalg.norm(pop.Phi_ - theory.Phi_) / np.linalg.norm(theory.Phi_) < 0.04
    f_th = theory.predict(Xe)
    assert np.max(np.abs(pop.predict_kernel(Xe) - f_th)) < 0.05 * np.max(np.abs(f_th))


def test_noise_has_covariance_K_on_all_tracked_inputs():
    """Lazy Langevin (gamma -> 0): h is an OU process with stationary covariance s^2 K/(1 - dt lam/2)
    (the Euler-Maruyama stationary law) on training *and* evaluation inputs, even though the
    evaluation preactivations are reconstructed from span coefficients plus an exact OU part."""
    rng = np.random.default_rng(0)
    D = 6
    X = rng.standard_normal((4, D))
    Xe = np.vstack([rng.standard_normal((3, D)), X[:1] + X[1:2]])  # one eval input in the span
    lam, T, dt = 1.0, 0.7, 0.05
    pop = GradientFlowDMFT("relu", gamma=1e-4, weight_decay=lam, temperature=T, population=20000, dt=dt,
                           t_max=8.0, seed=4).fit(X, np.zeros(4), Xe)
    Xa = np.vstack([X, Xe])
    expected = (T / lam) * (Xa @ Xa.T / D) / (1.0 - dt * lam / 2.0)
    emp = pop.H_.T @ pop.H_ / pop.H_.shape[0]
    # entrywise Monte Carlo error ~ sqrt(2/M) * scale ~ 1%
    assert np.max(np.abs(emp - expected)) < 0.04 * np.max(np.abs(expected))
    np.testing.assert_allclose(pop.H_[:, -1], pop.H_[:, 0] + pop.H_[:, 1], atol=1e-9)


# ------------------------------------------------------------------------------ fixed point, invariants
def test_gradient_flow_fixed_point_is_kernel_ridge():
    """At T = 0 with weight decay the flow stops at a point of eq. (4.3): f = Phi (Phi + lam)^-1 y."""
    X, y, Xe, _ = _data(seed=2)
    pop = GradientFlowDMFT("tanh", gamma=1.0, weight_decay=0.5, population=1000, t_max=200.0, tol=1e-6).fit(X, y, Xe)
    assert pop.converged_ and pop.t_end_ < 200.0
    assert pop.fixed_point_residual_ < 1e-3
    assert pop.krr_residual_ < 1e-5
    np.testing.assert_allclose(pop.predict(Xe), pop.predict_kernel(Xe), atol=1e-5)
    # the readout fixed point a = (gamma/lam) r . phi(h): the residual curve settled too
    assert abs(pop.history_["train_loss"][-1] - pop.history_["train_loss"][-2]) < 1e-6


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(act=st.sampled_from(["linear", "relu", "tanh"]), gamma=st.floats(0.2, 2.0),
       lam=st.floats(0.0, 2.0), T=st.sampled_from([0.0, 0.3]), seed=st.integers(0, 1000))
def test_summary_statistics_are_symmetric_psd(act, gamma, lam, T, seed):
    X, y, Xe, _ = _data(P=6, Pe=3, D=8, seed=seed % 7)
    pop = GradientFlowDMFT(act, gamma=gamma, weight_decay=lam, temperature=T, population=200, t_max=1.0,
                           n_records=5, seed=seed).fit(X, y, Xe)
    for mats in (pop.Phi_t_, pop.G_t_):
        np.testing.assert_allclose(mats, np.transpose(mats, (0, 2, 1)), atol=1e-12)
        assert np.min(np.linalg.eigvalsh(mats)) > -1e-9 * max(1.0, np.max(np.abs(mats)))
    assert np.all(np.diff(pop.history_["time"]) > 0)
    # the population predictor is the readout-weighted mean of the features, on every tracked input
    F = {"linear": lambda h: h, "relu": lambda h: np.maximum(h, 0.0), "tanh": np.tanh}[act](pop.H_)
    np.testing.assert_allclose(pop.predict(np.vstack([X, Xe])), F.T @ pop.a_ / (gamma * pop.H_.shape[0]),
                               atol=1e-10)


def test_results_are_reproducible_and_seeded():
    X, y, Xe, _ = _data(P=6, Pe=3, D=8)
    kw = dict(temperature=0.3, population=300, t_max=1.0)
    p1 = GradientFlowDMFT("relu", seed=5, **kw).fit(X, y, Xe)
    p2 = GradientFlowDMFT("relu", seed=5, **kw).fit(X, y, Xe)
    p3 = GradientFlowDMFT("relu", seed=6, **kw).fit(X, y, Xe)
    np.testing.assert_array_equal(p1.H_, p2.H_)
    assert not np.allclose(p1.H_, p3.H_)


# ------------------------------------------------------------------------------ errors
def test_unstable_dt_is_refused_with_the_bound():
    X, y, Xe, _ = _data(P=6, Pe=3, D=8)
    with pytest.raises(ValueError, match=r"dt must be < 2/\(theta_max"):
        GradientFlowDMFT("relu", population=100, dt=5.0).fit(X, y)


def test_growing_kernel_violating_the_bound_is_reported():
    """Large targets without weight decay: the tangent kernel grows ~|y| within the first steps, past
    the bound (4.6) for the initial dt; the run stops with the bound instead of producing NaNs."""
    X, y, _, _ = _data(P=6, Pe=3, D=8)
    pop = GradientFlowDMFT("relu", gamma=1.0, weight_decay=0.0, population=100, t_max=50.0, n_records=200)
    with pytest.raises(StepSizeError, match="exceeds the Euler stability bound") as info:
        pop.fit(X, 30 * y)
    assert isinstance(info.value, DivergenceError) and info.value.bound < info.value.lr


@pytest.mark.parametrize("kw,match", [({"gamma": 0.0}, "gamma"), ({"population": 0}, "population"),
                                      ({"temperature": -1.0}, "temperature"), ({"dt": -0.1}, "dt"),
                                      ({"average_from": 1.0}, "average_from"), ({"coupling": -1}, "coupling")])
def test_bad_parameters_name_themselves(kw, match):
    X, y, _, _ = _data(P=4, Pe=2, D=5)
    with pytest.raises(ValueError, match=match):
        GradientFlowDMFT("relu", **kw).fit(X, y)


def test_untracked_inputs_are_refused():
    X, y, Xe, _ = _data(P=4, Pe=2, D=5)
    pop = GradientFlowDMFT("relu", population=50, t_max=0.5).fit(X, y, Xe)
    with pytest.raises(ValueError, match="not among the inputs tracked"):
        pop.predict(Xe + 1.0)
    with pytest.raises(ValueError, match="h0 must have shape"):
        GradientFlowDMFT("relu").fit(X, y, Xe, h0=np.zeros((10, 3)))
