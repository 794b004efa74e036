"""Robustness of the adaptive solver at default settings (issue #15) and its estimator contract
(symtransfer.base.TransferEstimator). The KKT check is the suite's own (tests/test_adaptive.py)."""

import math

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from symtransfer.theory.adaptive import AdaptiveKernel, AdaptiveTransfer

from test_adaptive import _assert_kkt


def _sign_task():
    X = np.random.default_rng(0).standard_normal((20, 10))
    return X, np.sign(X[:, 0])


def _check_edge_solution(gamma, seed):
    X, y = _sign_task()
    model = AdaptiveKernel("relu", gamma=gamma, seed=seed).fit(X, y)
    _assert_kkt(model, X, y)
    assert model.residual_ < model.tol
    return model


@pytest.fixture(scope="module")
def gamma8_seed1():
    return _check_edge_solution(8.0, 1)


def test_relu_gamma8_seed1_solves_at_defaults(gamma8_seed1):
    """Failed before the solver recovered by itself ("no descent even on samples drawn at the current
    point" in the coarse stage at the edge): now the solve restarts from the last good point on more
    samples per chain, and the KKT conditions (A.6) hold (checked by the fixture)."""
    assert len(gamma8_seed1.condensate_weights_) > 0


def test_mc_std_at_the_edge_is_the_held_out_error_not_the_pinned_training_one(gamma8_seed1):
    """At the edge the active slabs pin the training predictions ``y - lambda v``: their error bar was
    0.004-0.005 against 0.036-0.059 on held-out inputs (relu gamma 8), so ``mc_tol`` was met with
    held-out errors twice the request. ``mc_std_`` also takes 32 probe inputs of the training inputs'
    mean and covariance, and is the larger (docs/adaptive.md section 7)."""
    m = gamma8_seed1
    X, _ = _sign_task()
    Xt = np.random.default_rng(5).standard_normal((25, 10))
    _, sd_train = m.predict(X, return_std=True)
    _, sd_test = m.predict(Xt, return_std=True)
    train, test = np.sqrt(np.mean(sd_train**2)), np.sqrt(np.mean(sd_test**2))
    assert test > 3 * train
    assert m.mc_std_ > 3 * train
    assert 0.5 * test < m.mc_std_ < 2 * test


def test_relu_gamma8_edge_solution_agrees_with_langevin_networks(gamma8_seed1):
    """The condensate solution against a width-250 Langevin network at defaults (docs/adaptive.md,
    section 7): the network's automatic step follows its tangent kernel, which the runaway neurons
    make ~90x larger than at initialisation. Measured gaps (25 test inputs, N = 250 / 1000 / 4000): single
    theory seeds 0.025-0.072 (this seed: 0.053), the mean of seeds 0-7 0.023 / 0.023 / 0.023, against
    a theory seed-to-seed scatter of 0.047 at this gamma; the tolerance 0.08 is 1.7 times that
    scatter. Kept at the
    initial step, the same network is 0.19 off, whatever its width or run length."""
    from symtransfer.sim import WideNetwork

    X, y = _sign_task()
    Xt = np.random.default_rng(5).standard_normal((25, 10))
    kw = dict(gamma=8.0, weight_decay=1.0, temperature=1.0, steps=20000, average_from=0.2, seed=1,
              progress=False)
    net = WideNetwork(250, **kw).fit(X, y)
    f_theory = gamma8_seed1.predict(Xt)
    gap = float(np.sqrt(np.mean((net.predict(Xt) - f_theory) ** 2)))
    assert gap < 0.08
    with pytest.warns(UserWarning, match="stability limit"):
        stale = WideNetwork(250, lr=float(net.history_["lr"][0]), **kw).fit(X, y)
    assert float(np.sqrt(np.mean((stale.predict(Xt) - f_theory) ** 2))) > 2 * gap


@pytest.mark.slow
@pytest.mark.parametrize("gamma, seed", [(8.0, 0), (8.0, 2), (16.0, 0), (16.0, 1), (16.0, 2), (16.0, 5), (16.0, 6)])
def test_relu_strong_feature_learning_solves_at_defaults(gamma, seed):
    """gamma 16 seeds 5 and 6 failed ("no descent even on samples drawn at the current point"): a fresh
    draw's chains had found cuts that put v itself outside the level, so every retracted trial point
    lost against the unretracted v; the edge solver now retracts v first."""
    _check_edge_solution(gamma, seed)


@pytest.mark.slow
def test_digits_transfer_from_condensed_source_solves_at_defaults():
    """Issue #15's digits case: relu, source 3-vs-8 (P1 = 120, gamma1 = 2, condensed), target 5-vs-8
    (P2 = 30, gamma2 = 1, coupling = 2), all at default solver settings. Was
    EdgeOfNormalisabilityError (source), then LinAlgError and the private _Diverged (transfer)."""
    from symtransfer.datasets import digits_transfer

    d = digits_transfer("3-8", "5-8", n_source=120, n_target=30, seed=0)
    src = AdaptiveKernel("relu", gamma=2.0, weight_decay=1.0, temperature=1.0).fit(d.X1, d.y1)
    _assert_kkt(src, d.X1, d.y1)
    tgt = src.transfer(d.X2, d.y2, gamma=1.0, coupling=2.0)
    assert tgt.converged_ and tgt.residual_ < src.tol
    # the target saddle point (3.3): (Phi2 + lambda) v2 = y2, image of the source condensate included
    g = (tgt.Phi_ + np.eye(len(d.y2))) @ tgt.v_ - d.y2
    assert np.linalg.norm(g) / np.linalg.norm(d.y2) < 10 * src.tol
    assert np.linalg.eigvalsh(tgt.Phi_).min() > -1e-10
    # transfer helps over the lazy predictor on this pair (test error well below 1, the error of f = 0)
    assert tgt.test_error(d.X_test, d.y_test) < 0.5


@pytest.fixture(scope="module", params=[3.0, 8.0])
def condensed_source(request):
    """Issue #15's random-data source: relu, y = sign(x0); gamma 3 (10 condensate directions) and 8 (18)."""
    X = np.random.default_rng(0).standard_normal((30, 12))
    src = AdaptiveKernel("relu", gamma=request.param, seed=0).fit(X, np.sign(X[:, 0]))
    _assert_kkt(src, X, np.sign(X[:, 0]))
    return src


@pytest.mark.slow
@pytest.mark.parametrize("coupling", [0.3, 1.0, 3.0, 10.0])
def test_transfer_from_a_condensed_source_solves_at_any_coupling(condensed_source, coupling):
    """Failed at three (gamma 3) and four (gamma 8) of these four couplings (the chains ran away, or the
    path stalled): the image (A.7) maximised F_j only locally (its value and gradient disagreed by 2.5x
    and it missed maxima 2-5x higher) and the potential's kinks, where two maxima of F_j swap, made
    Newton zigzag."""
    src = condensed_source
    X2 = np.random.default_rng(1).standard_normal((20, 12))
    y2 = np.sign(X2[:, 0] + X2[:, 1])
    tgt = src.transfer(X2, y2, coupling=coupling)
    assert tgt.converged_ and tgt.residual_ < src.tol
    # the target saddle point (3.3) with the image of the source condensate in Phi_
    g = (tgt.Phi_ + np.eye(len(y2))) @ tgt.v_ - y2
    assert np.linalg.norm(g) / np.linalg.norm(y2) < 10 * src.tol
    assert np.allclose(tgt.Phi_, tgt.Phi_.T) and np.linalg.eigvalsh(tgt.Phi_).min() > -1e-10
    # the image carries the source condensate into the target: without it the equation is off by O(1)
    bulk = tgt.Phi_ - tgt._cond_kernel(X2, X2)
    assert np.linalg.norm((bulk + np.eye(len(y2))) @ tgt.v_ - y2) / np.linalg.norm(y2) > 0.05


# ---------------------------------------------------------------------------------- contract
@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((12, 4))
    y = np.tanh(X[:, 0])
    Xt = rng.standard_normal((6, 4))
    src = AdaptiveKernel("tanh", gamma=1.0, n_samples=1024, n_chains=16).fit(X, y, eval_set=(Xt, np.tanh(Xt[:, 0])))
    return src, X, y, Xt


def test_contract_clone_params_and_not_fitted(small):
    src, X, y, _ = small
    est = clone(src)
    assert est.get_params() == src.get_params() and not hasattr(est, "Phi_")
    with pytest.raises(NotFittedError, match="not fitted"):
        est.predict(X)
    est.set_params(n_samples=2048)
    assert est.n_samples == 2048


def test_contract_fitted_attributes_and_history(small):
    src, X, y, Xt = small
    assert src.n_features_in_ == 4 and src.converged_ and src.n_iter_ >= 1
    assert src.n_samples_ == 1024 and src.sample_weights_.shape == (1024,)
    assert set(src.history_) == {"time", "train_loss", "test_loss"}
    assert src.history_["time"].tolist() == [float(src.n_iter_)]
    np.testing.assert_allclose(src.history_["train_loss"][0], np.mean((src.predict(X) - y) ** 2), rtol=1e-12)
    assert src.history_["test_loss"].shape == (1,)
    assert src.features(Xt).shape == (1024, 6)
    assert math.isfinite(src.score(X, y)) and 0.0 < src.alignment(X, y) <= 1.0


def test_contract_transfer_defaults_and_readout_only(small):
    src, X, y, Xt = small
    y2 = np.tanh(X[:, 1])
    tgt = src.transfer(X, y2, coupling=1.0, n_samples=1024)
    assert isinstance(tgt, AdaptiveTransfer)
    assert (tgt.gamma, tgt.weight_decay, tgt.temperature) == (src.gamma, src.weight_decay, src.temperature)
    assert tgt.history_["test_loss"].size == 0
    a = src.transfer(X, y2, readout_only=True)
    b = src.transfer(X, y2, coupling=math.inf)
    np.testing.assert_array_equal(a.predict(Xt), b.predict(Xt))
    again = clone(tgt)
    assert again.source is src   # the fitted source is shared, not cloned (it would be unfitted)
    with pytest.raises(ValueError, match="readout_only"):
        src.transfer(X, y2, coupling=1.0, readout_only=True)
    with pytest.raises(ValueError, match="unknown options"):
        src.transfer(X, y2, coupling=1.0, n_sample=10)


def test_silu_at_gamma8_names_the_finite_distance_modes():
    """silu is not piecewise linear: ``phi - phi_inf`` adds a term linear in ``t`` to the log-density
    along near-critical rays, so the measure near the edge has modes at a finite distance (width-250 to
    4000 silu networks keep their largest ``|w|^2/D`` at 63-151, relu's grow to ~1000;
    docs/adaptive.md section 7) that the sampler does not resolve. Until it does, the failure says so,
    as the documented error with its residual history."""
    from symtransfer.errors import EdgeOfNormalisabilityError

    X, y = _sign_task()
    with pytest.raises(EdgeOfNormalisabilityError, match="finite distance") as info:
        AdaptiveKernel("silu", gamma=8.0, seed=0).fit(X, y)
    assert len(info.value.residuals) > 0
