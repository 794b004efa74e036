"""Accuracy on request (issue #15): ``mc_tol`` chooses the sample size, ``predict(return_std=True)``
reports the achieved Monte Carlo error, and that error covers the seed-to-seed scatter."""

import numpy as np
import pytest

from symtransfer.errors import ConvergenceWarning
from symtransfer.theory.adaptive import AdaptiveKernel



def _rms_z(fs, sds):
    """RMS over seeds and inputs of the z-scores of ``fs`` (seeds x inputs) about their seed mean,
    scaled by the reported errors ``sds`` (the mean's own share removed: factor sqrt(n / (n - 1)))."""
    n = len(fs)
    z = (fs - fs.mean(axis=0)) / sds * np.sqrt(n / (n - 1))
    return float(np.sqrt(np.mean(z**2)))

def _assert_mc_std_is_the_larger_rms(model, sd_train):
    """``mc_std_`` is the larger rms error of the training inputs and of the probe inputs."""
    _, sd_probe = model.predict(model._probe_inputs(), return_std=True)
    want = max(np.sqrt(np.mean(sd_train**2)), np.sqrt(np.mean(sd_probe**2)))
    np.testing.assert_allclose(model.mc_std_, want, rtol=1e-12)


def _task():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((16, 5))
    y = np.tanh(X[:, 0] + 0.5 * X[:, 1])
    return X, y, rng.standard_normal((6, 5))


def test_mc_tol_chooses_the_sample_size_and_reports_it():
    X, y, _ = _task()
    loose = AdaptiveKernel("tanh", gamma=1.0, n_samples=1024, n_chains=16, mc_tol=1.0).fit(X, y)
    assert loose.n_samples_ == 1024 and loose.mc_std_ <= 1.0
    tight = AdaptiveKernel("tanh", gamma=1.0, n_samples=1024, n_chains=16, mc_tol=loose.mc_std_ / 3).fit(X, y)
    # the error falls like n^-1/2: a third of it needs about nine times the samples
    assert tight.n_samples_ >= 8 * 1024 and tight.n_samples_total_ > tight.n_samples_
    assert tight.mc_std_ <= loose.mc_std_ / 3
    f, sd = tight.predict(X, return_std=True)
    _assert_mc_std_is_the_larger_rms(tight, sd)
    with pytest.warns(ConvergenceWarning, match="above mc_tol"):   # a missed mc_tol is not silent
        capped = AdaptiveKernel("tanh", gamma=1.0, n_samples=1024, n_chains=16, mc_tol=1e-9,
                                max_samples=4096).fit(X, y)
    assert capped.n_samples_ == 4096 and capped.mc_std_ > 1e-9


def test_mc_tol_is_checked():
    X, y, _ = _task()
    with pytest.raises(ValueError, match="mc_tol"):
        AdaptiveKernel("tanh", mc_tol=0.0).fit(X, y)
    with pytest.raises(ValueError, match="max_samples"):
        AdaptiveKernel("tanh", n_samples=4096, max_samples=1024).fit(X, y)


def test_reported_std_covers_the_seed_to_seed_scatter():
    """z-scores of 8 independent solves (solver seeds) about their mean, on 6 held-out inputs, scaled by
    the reported standard errors: their rms is 1 when the errors are right. With 8 seeds each input
    gives a chi-square with 7 degrees of freedom; for one input the rms of z lies in [0.52, 1.45]
    with 95 % probability, and 6 inputs narrow this, so [0.6, 1.6] fails only for error bars off by
    about a factor 1.6 (tolerance widened upward for the scatter of the error estimates themselves)."""
    X, y, Xt = _task()
    fs, sds = [], []
    for seed in range(8):
        m = AdaptiveKernel("tanh", gamma=1.0, n_samples=2048, n_chains=16, mc_tol=0.01, seed=seed).fit(X, y)
        f, sd = m.predict(Xt, return_std=True)
        fs.append(f)
        sds.append(sd)
    fs, sds = np.array(fs), np.array(sds)
    rms = _rms_z(fs, sds)
    assert 0.6 <= rms <= 1.6, rms
    assert np.all(np.sqrt(np.mean(sds**2, axis=1)) < 0.02)


def test_transfer_mc_tol_chooses_the_target_sample_size():
    X, y, Xt = _task()
    src = AdaptiveKernel("tanh", gamma=1.0, n_samples=1024, n_chains=16).fit(X, y)
    y2 = np.tanh(X[:, 1])
    loose = src.transfer(X, y2, coupling=1.0, n_samples=1024)
    assert loose.n_samples_ == 1024 and loose.mc_std_ > 0.0
    tight = src.transfer(X, y2, coupling=1.0, n_samples=1024, mc_tol=loose.mc_std_ / 2)
    assert tight.n_samples_ >= 4 * 1024 and tight.n_samples_total_ > tight.n_samples_
    assert tight.mc_std_ <= loose.mc_std_ / 2
    _, sd = tight.predict(X, return_std=True)
    _assert_mc_std_is_the_larger_rms(tight, sd)


def _edge_task(gamma):
    """gamma 2: a condensate of 2-7 directions (eq. (A.6)); gamma 8: issue 15's sign task, 10-14."""
    if gamma == 2.0:
        rng = np.random.default_rng(0)
        beta = rng.standard_normal(10)
        X = rng.standard_normal((20, 10))
        return X, np.sign(X @ beta), rng.standard_normal((25, 10))
    X = np.random.default_rng(0).standard_normal((20, 10))
    return X, np.sign(X[:, 0]), np.random.default_rng(5).standard_normal((25, 10))


@pytest.mark.slow
@pytest.mark.parametrize("gamma", [2.0, 8.0])
def test_reported_std_covers_the_seed_to_seed_scatter_at_the_edge(gamma):
    """As above, at the edge (relu, +-1 labels): 8 solver seeds at defaults, 25 held-out inputs
    (~50 s each after compilation). The delta method at a fixed active set alone gives an rms z of
    1.45 at gamma 2 and 3.25 at gamma 8 (scatter 0.046 against a reported 0.022; 2.1 on the digits
    benchmark at gamma 1), because which condensate directions a solve finds depends on its whole
    sampling path. The error bar is now calibrated against three independent re-solves (factors
    1.1-1.6 at gamma 2, 1.7-3.6 at gamma 8; measured rms z 1.06 and 1.23; re-solves on halves of the
    final samples, the previous calibration, gave 1.24 and 3.2). For 7 degrees of freedom the 95 %
    range of one input's rms z is [0.52, 1.45] and 25 inputs narrow it: the upper bound 1.4 (which the
    uncalibrated error bar fails) leaves room for the scatter of a right one, and 0.6 rejects one
    inflated by ~1.6."""
    X, y, Xt = _edge_task(gamma)
    fs, sds = [], []
    for seed in range(8):
        m = AdaptiveKernel("relu", gamma=gamma, seed=seed).fit(X, y)
        assert m.condensate_weights_.size >= 1
        f, sd = m.predict(Xt, return_std=True)
        fs.append(f)
        sds.append(sd)
    fs, sds = np.array(fs), np.array(sds)
    rms = _rms_z(fs, sds)
    assert 0.6 <= rms <= 1.4, rms
    assert np.all(np.sqrt(np.mean(sds**2, axis=1)) < 0.1)


def test_transfer_std_covers_the_scatter_over_source_and_target_seeds():
    """Transfer from a condensed source (relu gamma 2, 2-5 directions; target P2 = 16, coupling 1):
    8 seeds, each a fresh source and target solve, 25 held-out inputs. The target's error bar
    carries the source samples' noise through its outer groups (with one fixed source the seed scatter
    is 0.025 against a reported 0.044, rms z 0.65); over source and target seeds it is 0.036 against
    0.045 (rms z 0.89; tanh gamma 1 without condensate: 0.92). Same range as the one-task tests."""
    X, y, Xt = _edge_task(8.0)
    X2 = np.random.default_rng(1).standard_normal((16, 10))
    y2 = np.sign(X2[:, 0] + X2[:, 1])
    fs, sds = [], []
    for seed in range(8):
        src = AdaptiveKernel("relu", gamma=2.0, seed=seed).fit(X, y)
        assert src.condensate_weights_.size >= 1
        f, sd = src.transfer(X2, y2, coupling=1.0, gamma=1.0, seed=100 + seed).predict(Xt, return_std=True)
        fs.append(f)
        sds.append(sd)
    rms = _rms_z(np.array(fs), np.array(sds))
    assert 0.6 <= rms <= 1.4, rms
