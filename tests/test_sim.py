"""WideNetwork: exact update (against NumPy), determinism, and agreement with the exact linear theory.

Tolerances. At temperature T > 0 the time-averaged output of a width-N network estimates the finite-N
Gibbs mean, which differs from the N -> infinity theory by O(1/N) (mean-field corrections). After
transfer the target also inherits the O(1/sqrt(N)) fluctuation of the empirical distribution of the N
source neurons it is coupled to. The tolerances below are those rates with constants measured once
(single task: relative rms gap ~ 0.5/N; transfer: ~ 0.25/sqrt(N) at delta = 1, ~ 0.8/sqrt(N) for
fine-tuning), given a factor 2-3 of headroom.
"""

import math

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.exceptions import NotFittedError

from symtransfer import Activation, DivergenceError, StepSizeWarning
from symtransfer._reference import langevin_step_numpy
from symtransfer.sim import WideNetwork
from symtransfer.tasks import make_task, make_transfer_pair
from symtransfer.theory.linear import LinearTheory

EQ = dict(gamma=1.0, weight_decay=1.0, temperature=1.0)


def _rel_gap(f, f_ref):
    return float(np.sqrt(np.mean((f - f_ref) ** 2) / np.mean(f_ref**2)))


@pytest.fixture(scope="module")
def pair():
    return make_transfer_pair(8, 16, 12, 40, 0.8, noise_source=0.1, noise_target=0.1, seed=0)


@pytest.mark.parametrize("act", ["relu", "tanh", "linear", "x*exp(-x**2/4)"])
@pytest.mark.parametrize("batch_size,coupling,temperature", [(None, 0.0, 0.0), (5, 0.7, 0.0)])
def test_kernel_step_equals_numpy_reference(act, batch_size, coupling, temperature):
    """The Numba kernels implement exactly eq. (1.4) (checked against a NumPy transcription)."""
    task = make_task(15, 1, 6, seed=1)
    X, y = task.X_train, task.y_train
    net = WideNetwork(33, activation=act, gamma=0.7, weight_decay=0.3, lr=0.01, steps=3, batch_size=batch_size,
                      seed=4, progress=False).fit(X, y)
    tr = net.transfer(X, y, coupling=coupling, steps=2, seed=9) if coupling else None
    # replay the same steps in NumPy from the same initial state and batches
    from symtransfer.sim import _BatchStream

    phi = Activation(act)
    rng = np.random.default_rng(np.random.SeedSequence([4, 0]))
    W = rng.standard_normal((33, 6))
    a = rng.standard_normal(33)
    B = 15 if batch_size is None else batch_size
    batches = _BatchStream(15, B, np.random.default_rng(np.random.SeedSequence([4, 3]))).take(3)
    for idx in batches:
        W, a = langevin_step_numpy(X, y, W, a, idx, lr=0.01, gamma=0.7, weight_decay=0.3, phi=phi, dphi=phi.prime)
    assert np.allclose(net.W_, W, rtol=1e-12, atol=1e-12)
    assert np.allclose(net.a_, a, rtol=1e-12, atol=1e-12)
    if tr is not None:
        Wref = W.copy()
        a2 = np.random.default_rng(np.random.SeedSequence([9, 1])).standard_normal(33)
        batches = _BatchStream(15, B, np.random.default_rng(np.random.SeedSequence([9, 3]))).take(2)
        for idx in batches:
            W, a2 = langevin_step_numpy(X, y, W, a2, idx, lr=0.01, gamma=0.7, weight_decay=0.3, coupling=coupling,
                                        Wref=Wref, phi=phi, dphi=phi.prime)
        assert np.allclose(tr.W_, W, rtol=1e-12, atol=1e-12)
        assert np.allclose(tr.a_, a2, rtol=1e-12, atol=1e-12)


def test_reproducible_and_thread_count_independent():
    task = make_task(20, 5, 7, seed=2)
    kw = dict(activation="tanh", temperature=0.5, lr=0.01, steps=50, batch_size=10, seed=3, progress=False)
    n1 = WideNetwork(300, **kw).fit(task.X_train, task.y_train)
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        n2 = WideNetwork(300, **kw).fit(task.X_train, task.y_train)
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(n1.W_, n2.W_) and np.array_equal(n1.a_, n2.a_)
    n3 = WideNetwork(300, **{**kw, "seed": 4}).fit(task.X_train, task.y_train)
    assert not np.allclose(n1.a_, n3.a_)


def test_noise_has_langevin_variance():
    """Without data pull (gamma tiny relative to noise) weights relax to N(0, T/lambda) (eq. 2.1)."""
    task = make_task(4, 1, 50, seed=0)
    y0 = np.zeros(4)
    net = WideNetwork(400, activation="tanh", gamma=1.0, weight_decay=2.0, temperature=0.5, lr=0.01, steps=800,
                      init_scale=3.0, seed=1, progress=False).fit(task.X_train, y0)
    var_w, var_a = net.W_.var(), net.a_.var()
    # 20000 weights (std error of the variance ~ 1%) and 400 readouts (~7%)
    assert var_w == pytest.approx(0.25, rel=0.05)
    assert var_a == pytest.approx(0.25, rel=0.25)


def _sim_gaps(widths, seeds, make_pred, f_theory):
    return {N: float(np.mean([_rel_gap(make_pred(N, s), f_theory) for s in seeds])) for N in widths}


def test_linear_single_task_matches_theory_and_gap_shrinks_with_width(pair):
    src = pair.source
    f_th = LinearTheory(**EQ).fit(src.X_train, src.y_train).predict(src.X_test)

    def pred(N, seed):
        net = WideNetwork(N, activation="linear", lr=0.01, steps=6000, average_from=0.1, seed=seed, progress=False,
                          **EQ).fit(src.X_train, src.y_train)
        return net.predict(src.X_test)

    gaps = _sim_gaps([16, 64], range(3), pred, f_th)
    assert gaps[64] < 3.0 / 64  # O(1/N) mean-field correction
    assert gaps[64] < 0.6 * gaps[16]  # 1/N would give 0.25


def test_linear_transfer_matches_theory_and_gap_shrinks_with_width(pair):
    src, tgt = pair.source, pair.target
    f_th = LinearTheory(**EQ).fit(src.X_train, src.y_train).transfer(
        tgt.X_train, tgt.y_train, coupling=1.0, **EQ).predict(tgt.X_test)

    def pred(N, seed):
        net = WideNetwork(N, activation="linear", lr=0.01, steps=6000, average_from=0.1, seed=seed, progress=False,
                          **EQ).fit(src.X_train, src.y_train)
        return net.transfer(tgt.X_train, tgt.y_train, coupling=1.0, **EQ).predict(tgt.X_test)

    gaps = _sim_gaps([32, 128], range(3), pred, f_th)
    assert gaps[128] < 0.6 / math.sqrt(128)
    assert gaps[128] < 0.75 * gaps[32]  # 1/sqrt(N) would give 0.5


def test_readout_only_equals_infinite_coupling(pair):
    src, tgt = pair.source, pair.target
    theory = LinearTheory(**EQ).fit(src.X_train, src.y_train)
    f_th = theory.transfer(tgt.X_train, tgt.y_train, coupling=math.inf, **EQ).predict(tgt.X_test)

    def pred(N, seed):
        net = WideNetwork(N, activation="linear", lr=0.01, steps=4000, average_from=0.1, seed=seed, progress=False,
                          **EQ).fit(src.X_train, src.y_train)
        tr = net.transfer(tgt.X_train, tgt.y_train, readout_only=True, **EQ)
        assert np.array_equal(tr.W_, net.W_)  # hidden weights frozen
        return tr.predict(tgt.X_test)

    gaps = _sim_gaps([128, 512], range(3), pred, f_th)
    assert gaps[512] < 2.0 / math.sqrt(512)
    assert gaps[512] < 0.75 * gaps[128]


@settings(max_examples=10, deadline=None)
@given(st.sampled_from(["relu", "tanh", "erf", "quadratic"]), st.integers(1, 80), st.integers(0, 100))
def test_kernel_symmetric_psd(act, width, seed):
    task = make_task(12, 6, 5, seed=seed)
    net = WideNetwork(width, activation=act, lr=0.01, steps=5, seed=seed, progress=False).fit(task.X_train,
                                                                                              task.y_train)
    Xall = np.vstack([task.X_train, task.X_test])
    K = net.kernel(Xall)
    assert np.allclose(K, K.T, atol=1e-13 * (1 + np.abs(K).max()))
    assert np.linalg.eigvalsh(K).min() > -1e-10 * (1 + np.abs(K).max())
    assert np.allclose(net.kernel(task.X_train, task.X_test), K[:12, 12:], atol=1e-12)
    F = Activation(act)(net.W_ @ Xall.T / math.sqrt(5))
    assert np.allclose(K, F.T @ F / width, atol=1e-12 * (1 + np.abs(K).max()))


def test_gradient_descent_decreases_loss_and_logs_history():
    task = make_task(30, 50, 10, seed=5)
    net = WideNetwork(200, activation="relu", gamma=0.5, weight_decay=0.0, lr=0.01, steps=400, log_every=40,
                      seed=0, progress=False).fit(task.X_train, task.y_train, eval_set=(task.X_test, task.y_test))
    h = net.history_
    assert list(h["step"]) == list(range(0, 401, 40))
    assert np.allclose(h["time"], h["step"] * 0.01)
    assert np.all(np.diff(h["train_loss"]) <= 1e-12)  # gradient flow on the loss, no decay: monotone
    assert h["train_loss"][-1] < 0.2 * h["train_loss"][0]
    assert h["test_loss"].shape == h["train_loss"].shape
    assert h["train_loss"][-1] == pytest.approx(np.mean((net.predict(task.X_train) - task.y_train) ** 2))


def test_minibatch_follows_full_batch_flow_as_lr_shrinks():
    """(P/B)-rescaled mini-batch SGD approaches the same flow: its deviation shrinks like sqrt(lr)."""
    task = make_task(16, 30, 8, seed=6)
    t_end = 2.0

    def out(lr, B):
        net = WideNetwork(64, activation="tanh", weight_decay=0.1, lr=lr, steps=int(round(t_end / lr)),
                          batch_size=B, seed=1, progress=False).fit(task.X_train, task.y_train)
        return net.predict(task.X_test)

    dev = {lr: np.sqrt(np.mean((out(lr, 4) - out(lr, None)) ** 2)) for lr in (0.008, 0.0005)}
    assert dev[0.0005] < 0.5 * dev[0.008]  # sqrt(16) = 4 expected


def test_bad_input_names_the_parameter():
    task = make_task(10, 2, 4, seed=0)
    X, y = task.X_train, task.y_train
    cases = [
        (dict(width=0), "width"), (dict(gamma=0.0), "gamma"), (dict(gamma=-1.0), "gamma"),
        (dict(weight_decay=-0.1), "weight_decay"), (dict(temperature=-1.0), "temperature"),
        (dict(lr=0.0), "lr"), (dict(lr=-1.0), "lr"), (dict(steps=0), "steps"), (dict(average_from=1.0), "average_from"),
        (dict(batch_size=0), "batch_size"), (dict(activation="__import__('os')"), "rejected"),
    ]
    for kw, name in cases:
        params = dict(width=10, lr=0.01, steps=2, progress=False)
        params.update(kw)
        with pytest.raises(ValueError, match=name):
            WideNetwork(**params).fit(X, y)
    net = WideNetwork(10, lr=0.01, steps=2, progress=False)
    with pytest.raises(ValueError, match="shapes disagree"):
        net.fit(X, y[:-1])
    with pytest.raises(ValueError, match="non-finite"):
        net.fit(np.where(X > 1, np.nan, X), y)
    with pytest.raises(ValueError, match="batch_size"):
        WideNetwork(10, lr=0.01, steps=2, batch_size=11, progress=False).fit(X, y)
    net.fit(X, y)
    with pytest.raises(ValueError, match="coupling"):
        net.transfer(X, y, coupling=-1.0)
    with pytest.raises(ValueError, match="readout_only=True.*contradicts coupling=1.0"):
        net.transfer(X, y, coupling=1.0, readout_only=True)  # coupling now defaults to 0
    with pytest.raises(ValueError, match="features"):
        net.predict(X[:, :2])
    with pytest.raises(NotFittedError, match="not fitted"):
        WideNetwork(10).predict(X)


def test_divergence_raises_with_step_and_advice():
    task = make_task(30, 2, 10, seed=0)
    with pytest.raises(DivergenceError, match="smaller lr") as info:
        WideNetwork(50, activation="relu", gamma=1.0, lr=5.0, steps=500, progress=False).fit(task.X_train,
                                                                                                 task.y_train)
    assert 0 <= info.value.step < 500 and info.value.lr == 5.0


def test_auto_lr_is_stable():
    task = make_task(64, 2, 16, seed=3)
    net = WideNetwork(256, activation="relu", gamma=2.0, steps=300, progress=False).fit(task.X_train, task.y_train)
    assert net.lr_ > 0 and np.isfinite(net.history_["train_loss"]).all()
    assert net.history_["train_loss"][-1] < net.history_["train_loss"][0]


def test_interrupt_and_resume_reproduce_uninterrupted_run(monkeypatch):
    """Ctrl-C between chunks keeps finished work; resume() ends exactly where a plain run ends."""
    import signal

    task = make_task(20, 5, 6, seed=8)
    kw = dict(activation="tanh", temperature=0.3, lr=0.01, steps=300, batch_size=5, log_every=30,
              average_from=0.5, seed=2, progress=False)
    full = WideNetwork(64, **kw).fit(task.X_train, task.y_train)

    net = WideNetwork(64, **kw)
    import symtransfer.sim as sim_mod

    calls = {"n": 0}
    original = sim_mod._run_full

    def interrupting(*args):
        calls["n"] += 1
        if calls["n"] == 4:  # a Ctrl-C arriving while the 4th chunk runs
            signal.raise_signal(signal.SIGINT)
        return original(*args)

    monkeypatch.setattr(sim_mod, "_run_full", interrupting)
    with pytest.raises(KeyboardInterrupt, match="resume"):
        net.fit(task.X_train, task.y_train)
    assert 0 < net.n_iter_ < 300 and net.history_["step"][-1] <= net.n_iter_
    monkeypatch.setattr(sim_mod, "_run_full", original)
    net.resume()
    assert net.n_iter_ == 300
    assert np.array_equal(net.W_, full.W_) and np.array_equal(net.a_, full.a_)
    assert np.array_equal(net.history_["train_loss"], full.history_["train_loss"])
    assert np.allclose(net.predict(task.X_test), full.predict(task.X_test), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="nothing to resume"):
        net.resume()


def _strong_gamma_task():
    X = np.random.default_rng(0).standard_normal((20, 10))
    return X, np.sign(X[:, 0])


def _tangent_kernel_top(net, X):
    """Largest eigenvalue of the exact tangent kernel Phi + (G^T G / N) o K on X (eq. 1.4), dense."""
    N, D = net.W_.shape
    H = net.W_ @ X.T / math.sqrt(D)
    F, G = np.maximum(H, 0.0), net.a_[:, None] * (H > 0.0)
    theta = F.T @ F / N + (G.T @ G / N) * (X @ X.T / D)
    return float(np.linalg.eigvalsh(theta)[-1])


def test_langevin_step_follows_the_tangent_kernel():
    """At strong gamma runaway neurons make the tangent kernel grow many-fold during a Langevin run;
    with lr=None the step is lowered to keep lr (lambda + Theta_max) <= 1/2 (docs/adaptive.md,
    section 7), history_["lr"] records it and history_["time"] integrates it."""
    X, y = _strong_gamma_task()
    net = WideNetwork(200, gamma=8.0, weight_decay=1.0, temperature=1.0, steps=3000, seed=1,
                      progress=False).fit(X, y)
    h = net.history_
    assert np.all(np.diff(h["lr"]) <= 0.0) and h["lr"][-1] == net.lr_
    assert net.lr_ < h["lr"][0] / 3                      # the kernel grew: the step had to follow
    # the bound holds on the network where the step was last checked, to the power iteration's accuracy
    assert net.lr_ * (1.0 + _tangent_kernel_top(net, X)) <= 0.5 * 1.2
    np.testing.assert_allclose(np.diff(h["time"]), np.diff(h["step"]) * h["lr"][1:], rtol=1e-12)
    # a given step is left alone, with a warning naming the bound
    with pytest.warns(StepSizeWarning, match="lr=None") as rec:
        fixed = WideNetwork(200, gamma=8.0, weight_decay=1.0, temperature=1.0, steps=3000, seed=1,
                            lr=float(h["lr"][0]), progress=False).fit(X, y)
    assert len(rec) == 1 and rec[0].message.bound < fixed.lr_ == h["lr"][0]
    assert np.all(fixed.history_["lr"] == fixed.lr_)


def test_step_control_keeps_gradient_descent_and_readout_runs_unchanged():
    """The control is for sampling: at T = 0 (the gradient-flow comparisons) and for frozen features
    (a constant tangent kernel) the automatic step stays the initial one."""
    X, y = _strong_gamma_task()
    gd = WideNetwork(200, gamma=8.0, steps=1500, seed=1, progress=False).fit(X, y)
    assert np.all(gd.history_["lr"] == gd.lr_)
    np.testing.assert_allclose(gd.history_["time"], gd.history_["step"] * gd.lr_, rtol=1e-12)
    ro = gd.transfer(X, y, readout_only=True, temperature=1.0, steps=500)
    assert np.all(ro.history_["lr"] == ro.lr_)


def test_resume_reproduces_a_run_whose_step_followed_the_network(monkeypatch):
    """The step control's state (current step, clock, warm start) survives Ctrl-C: resume() ends
    bit for bit where an uninterrupted run ends."""
    import signal

    import symtransfer.sim as sim_mod

    X, y = _strong_gamma_task()
    kw = dict(gamma=8.0, temperature=1.0, steps=1500, log_every=100, average_from=0.5, seed=4, progress=False)
    full = WideNetwork(100, **kw).fit(X, y)
    assert len(np.unique(full.history_["lr"])) > 1
    calls = {"n": 0}
    original = sim_mod._run_full

    def interrupting(*args):
        calls["n"] += 1
        if calls["n"] == 7:
            signal.raise_signal(signal.SIGINT)
        return original(*args)

    net = WideNetwork(100, **kw)
    monkeypatch.setattr(sim_mod, "_run_full", interrupting)
    with pytest.raises(KeyboardInterrupt):
        net.fit(X, y)
    monkeypatch.setattr(sim_mod, "_run_full", original)
    net.resume()
    assert np.array_equal(net.W_, full.W_) and np.array_equal(net.a_, full.a_)
    for k in ("time", "lr", "train_loss"):
        assert np.array_equal(net.history_[k], full.history_[k])
