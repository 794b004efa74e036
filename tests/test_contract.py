"""The estimator contract (docs/estimators.md, symtransfer.base.TransferEstimator) for every model.

Each case runs one small problem (P = 12, D = 4) per model in about a second.
"""

import math
from numbers import Integral

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from symtransfer.base import HISTORY_KEYS, TransferEstimator, kernel_alignment
from symtransfer.sim import WideNetwork
from symtransfer.theory.adaptive import AdaptiveKernel
from symtransfer.theory.dmft import GradientFlowDMFT
from symtransfer.theory.linear import LinearTheory

# Source hyper-parameters differ from every default, so "omitted means the source's" is visible.
_HYPER = dict(gamma=1.3, weight_decay=0.7)

_FACTORIES = {
    "LinearTheory": lambda: LinearTheory(**_HYPER, temperature=0.9),
    "AdaptiveKernel": lambda: AdaptiveKernel("tanh", **_HYPER, temperature=0.9, n_samples=256, n_chains=8,
                                             tol=1e-3, seed=0),
    "WideNetwork": lambda: WideNetwork(8, "tanh", **_HYPER, lr=0.05, steps=40, seed=0, progress=False),
    "GradientFlowDMFT": lambda: GradientFlowDMFT("tanh", **_HYPER, population=40, t_max=0.5, early_stop=False,
                                                 n_records=5, seed=0),
}
_STOCHASTIC = {"AdaptiveKernel", "WideNetwork", "GradientFlowDMFT"}

MODELS = list(_FACTORIES)


def _data(P, D=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((P, D))
    return X, np.tanh(X[:, 0] + 0.5 * X[:, 1])


X1, Y1 = _data(12)
X2, Y2 = _data(10, seed=1)
XT, YT = _data(8, seed=2)

_FITTED = {}


def _fitted(name):
    """One fitted source per model (the tests below must not mutate it; one of them checks that)."""
    if name not in _FITTED:
        _FITTED[name] = _FACTORIES[name]().fit(X1, Y1)
    return _FITTED[name]


def _check_common_attributes(model, P, D, eval_rows=False):
    Phi = model.Phi_
    assert isinstance(Phi, np.ndarray) and Phi.shape == (P, P) and Phi.dtype == np.float64
    np.testing.assert_allclose(Phi, Phi.T, rtol=1e-12, atol=1e-12 * np.max(np.abs(Phi)))
    assert np.linalg.eigvalsh(0.5 * (Phi + Phi.T)).min() >= -1e-9 * np.max(np.abs(Phi))
    assert model.n_features_in_ == D and isinstance(model.n_features_in_, Integral)
    assert isinstance(model.converged_, (bool, np.bool_))
    assert isinstance(model.n_iter_, Integral) and model.n_iter_ >= 0
    h = model.history_
    assert set(HISTORY_KEYS) <= set(h)
    for k in HISTORY_KEYS:
        assert isinstance(h[k], np.ndarray) and h[k].ndim == 1 and h[k].dtype == np.float64, k
    assert h["time"].size >= 1 and h["train_loss"].size == h["time"].size
    assert np.all(np.isfinite(h["train_loss"]))
    if eval_rows:
        assert h["test_loss"].size == h["time"].size and np.all(np.isfinite(h["test_loss"]))
    else:
        assert h["test_loss"].size == 0


# ------------------------------------------------------------------------------ construction
@pytest.mark.parametrize("name", MODELS)
def test_clone_round_trip_gives_an_unfitted_copy_with_equal_params(name):
    model = _fitted(name)
    copy = clone(model)
    assert type(copy) is type(model) and copy is not model
    assert copy.get_params(deep=False) == model.get_params(deep=False)
    with pytest.raises(NotFittedError):
        copy.predict(XT)
    with pytest.raises(NotFittedError):
        check_is_fitted(copy)
    check_is_fitted(model)
    fresh = clone(_FACTORIES[name]())
    assert fresh.get_params() == _FACTORIES[name]().get_params()


@pytest.mark.parametrize("name", MODELS)
def test_clone_of_a_target_refits_to_the_same_numbers(name):
    """A target's fitted ``source`` is passed on by clone as the same object (a clone would be unfitted)."""
    tgt = _fitted(name).transfer(X2, Y2, coupling=1.0)
    copy = clone(tgt)
    assert copy.get_params(deep=False).keys() == tgt.get_params(deep=False).keys()
    if "source" in tgt.get_params(deep=False):
        assert copy.source is tgt.source
    with pytest.raises(NotFittedError):
        copy.predict(XT)
    if "source" in tgt.get_params(deep=False):  # equilibrium targets refit from their source alone
        np.testing.assert_allclose(copy.fit(X2, Y2).predict(XT), tgt.predict(XT), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", MODELS)
def test_methods_needing_a_fit_raise_not_fitted(name):
    model = _FACTORIES[name]()
    assert issubclass(NotFittedError, (ValueError, AttributeError))
    for call in (lambda: model.predict(XT), lambda: model.kernel(XT), lambda: model.transfer(X2, Y2),
                 lambda: model.test_error(XT, YT), lambda: model.score(XT, YT), lambda: model.alignment(XT, YT)):
        with pytest.raises(NotFittedError, match="not fitted"):
            call()


# ------------------------------------------------------------------------------ fit
@pytest.mark.parametrize("name", MODELS)
def test_fit_returns_self_with_the_common_fitted_attributes(name):
    model = _FACTORIES[name]()
    assert model.fit(X1, Y1) is model
    _check_common_attributes(model, 12, 4)


@pytest.mark.parametrize("name", MODELS)
def test_eval_set_fills_the_test_loss_curve(name):
    model = _FACTORIES[name]().fit(X1, Y1, eval_set=(XT, YT))
    _check_common_attributes(model, 12, 4, eval_rows=True)
    # the last record is the fitted model's test error (a time-averaged predictor is not a record)
    assert model.history_["test_loss"][-1] == pytest.approx(model.test_error(XT, YT), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", MODELS)
def test_predict_on_new_inputs(name):
    f = _fitted(name).predict(XT)
    assert f.shape == (8,) and f.dtype == np.float64 and np.all(np.isfinite(f))


@pytest.mark.parametrize("name", MODELS)
def test_score_test_error_and_alignment_by_hand(name):
    model = _fitted(name)
    f = model.predict(XT)
    sse, sst = float(np.sum((YT - f) ** 2)), float(np.sum((YT - YT.mean()) ** 2))
    assert model.test_error(XT, YT) == pytest.approx(sse / YT.size, rel=1e-12)
    assert model.score(XT, YT) == pytest.approx(1.0 - sse / sst, rel=1e-12, abs=1e-14)
    assert model.alignment(XT, YT) == pytest.approx(kernel_alignment(model.kernel(XT), YT), rel=1e-12)
    K = model.kernel(XT, X1)
    assert K.shape == (8, 12) and np.all(np.isfinite(K))


# ------------------------------------------------------------------------------ transfer
@pytest.mark.parametrize("name", MODELS)
def test_coupling_inf_and_readout_only_are_the_same_fine_tuning(name):
    src = _fitted(name)
    a = src.transfer(X2, Y2, coupling=math.inf)
    b = src.transfer(X2, Y2, readout_only=True)
    c = src.transfer(X2, Y2, coupling=math.inf, readout_only=True)
    for other in (b, c):
        np.testing.assert_array_equal(other.predict(XT), a.predict(XT))
        np.testing.assert_array_equal(other.Phi_, a.Phi_)


@pytest.mark.parametrize("name", MODELS)
def test_readout_only_with_a_finite_coupling_is_refused(name):
    src = _fitted(name)
    with pytest.raises(ValueError, match=r"readout_only=True .*coupling=0\.5"):
        src.transfer(X2, Y2, coupling=0.5, readout_only=True)
    with pytest.raises(ValueError, match="coupling"):
        src.transfer(X2, Y2, coupling=-1.0)
    with pytest.raises(ValueError, match="readout_only"):
        src.transfer(X2, Y2, readout_only="yes")


@pytest.mark.parametrize("name", MODELS)
def test_omitted_hyper_parameters_are_the_sources(name):
    src = _fitted(name)
    omitted = src.transfer(X2, Y2, coupling=1.0)
    explicit = src.transfer(X2, Y2, coupling=1.0, gamma=src.gamma, weight_decay=src.weight_decay,
                            temperature=src.temperature)
    assert (omitted.gamma, omitted.weight_decay, omitted.temperature) == (1.3, 0.7, src.temperature)
    np.testing.assert_array_equal(omitted.predict(XT), explicit.predict(XT))
    partial = src.transfer(X2, Y2, coupling=1.0, gamma=0.4)
    assert (partial.gamma, partial.weight_decay, partial.temperature) == (0.4, 0.7, src.temperature)


@pytest.mark.parametrize("name", MODELS)
def test_targets_honour_the_contract(name):
    src = _fitted(name)
    for coupling in (0.0, 1.0, math.inf):
        tgt = src.transfer(X2, Y2, coupling=coupling, eval_set=(XT, YT))
        assert tgt is not src
        _check_common_attributes(tgt, 10, 4, eval_rows=True)
        f = tgt.predict(XT)
        assert f.shape == (8,) and np.all(np.isfinite(f))
        assert tgt.test_error(XT, YT) == pytest.approx(float(np.mean((f - YT) ** 2)), rel=1e-12)


@pytest.mark.parametrize("name", MODELS)
def test_transfer_leaves_the_source_untouched(name):
    src = _FACTORIES[name]().fit(X1, Y1)
    params = src.get_params(deep=False)
    Phi, f, hist = src.Phi_.copy(), src.predict(X1), {k: v.copy() for k, v in src.history_.items()}
    for coupling in (0.0, 1.0, math.inf):
        src.transfer(X2, Y2, coupling=coupling, gamma=0.4, weight_decay=0.2)
    assert src.get_params(deep=False) == params
    np.testing.assert_array_equal(src.Phi_, Phi)
    np.testing.assert_array_equal(src.predict(X1), f)
    assert set(src.history_) == set(hist)
    for k, v in hist.items():
        np.testing.assert_array_equal(src.history_[k], v)


@pytest.mark.parametrize("name", [n for n in _FACTORIES if n in _STOCHASTIC and n != "AdaptiveKernel"])
def test_stochastic_targets_are_reproducible_from_the_seed(name):
    src = _fitted(name)
    a = src.transfer(X2, Y2, coupling=1.0, seed=7)
    b = src.transfer(X2, Y2, coupling=1.0, seed=7)
    np.testing.assert_array_equal(a.predict(XT), b.predict(XT))


# ------------------------------------------------------------------------------ model-specific spellings
def test_population_eval_set_is_the_X_eval_spelling():
    common = dict(**_HYPER, population=40, t_max=0.5, early_stop=False, n_records=5, seed=0)
    a = GradientFlowDMFT("tanh", **common).fit(X1, Y1, eval_set=(XT, YT))
    b = GradientFlowDMFT("tanh", **common).fit(X1, Y1, XT, y_eval=YT)
    for k in ("time", "train_loss", "test_loss"):
        np.testing.assert_array_equal(a.history_[k], b.history_[k])
    np.testing.assert_array_equal(a.history_["eval_loss"], a.history_["test_loss"])  # deprecated alias
    with pytest.raises(ValueError, match="either as eval_set"):
        GradientFlowDMFT("tanh", **common).fit(X1, Y1, XT, eval_set=(XT, YT))
    ta = a.transfer(X2, Y2, coupling=1.0, eval_set=(XT, YT))
    tb = a.transfer(X2, Y2, XT, coupling=1.0, y2_eval=YT)
    np.testing.assert_array_equal(ta.history_["test_loss"], tb.history_["test_loss"])
    np.testing.assert_array_equal(ta.predict(XT), tb.predict(XT))
    with pytest.raises(ValueError, match=r"readout_only=True .*coupling=0\.5"):
        a.transfer(X2, Y2, mode="readout", coupling=0.5)
    with pytest.raises(ValueError, match="contradicts"):
        a.transfer(X2, Y2, mode="joint", readout_only=True)


def test_linear_feature_is_a_deprecated_alias():
    model = _fitted("LinearTheory")
    with pytest.warns(DeprecationWarning, match="use features"):
        g = model.feature(XT)
    np.testing.assert_array_equal(g, model.features(XT))
