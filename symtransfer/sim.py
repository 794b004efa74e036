"""Simulator of finite-width two-layer networks trained by Langevin dynamics (docs/theory.md, section 1).

:class:`WideNetwork` integrates the SDE (1.3)-(1.4) with Euler-Maruyama, full batch or mini-batch,
with weight decay, temperature and an elastic coupling to reference weights (transfer). The hot
loops are Numba kernels parallel over neurons; the Python layer validates, draws mini-batches,
logs, snapshots weights for time averages and shows progress.

This module never imports the theory: the two meet only in tests and experiments.

Reproducibility: the Gaussian increments come from a counter-based generator keyed by
``(seed, step, neuron, component)``, so a run gives the same numbers whatever the number of threads.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
import warnings

import numba as nb
import numpy as np
from tqdm.auto import tqdm

from ._rng import GOLDEN, mix64
from ._validation import check_inputs, check_int, check_real, check_Xy
from .activations import get_activation
from .base import TransferEstimator, target_seed
from .errors import DivergenceError, StepSizeWarning, StepTooLargeError

__all__ = ["WideNetwork"]

# No 'nnan'/'ninf': the kernels must see non-finite values to report divergence.
_FASTMATH = {"reassoc", "contract", "arcp", "nsz"}

_S32 = np.uint64(32)
_NEURON_MUL = np.uint64(0x94D049BB133111EB)
_LOW32 = np.uint64(0xFFFFFFFF)
_TWO_M31 = 1.0 / 2147483648.0

# Fixed (not thread-dependent) so the order of floating-point sums, hence every result, does not
# depend on the number of threads.
_N_CHUNKS = 16

# Below this many multiply-adds per step a second thread costs more in synchronisation (two
# barriers per step) than it saves, badly so when the machine is busy.
_PARALLEL_MIN_WORK = 200_000

# Snapshots for time averages are capped at this many bytes of stored weights.
_SNAPSHOT_BYTES = 256 * 2**20

# The default logging cadence keeps the estimated cost of the loss evaluations below this fraction
# of the training work (an upper estimate).
_LOG_BUDGET = 0.03
# Cost of logging one input row (forward pass over the full sets) in training steps per batch row:
# a loss on P = 256 rows costs 1.7-2.1 steps of B = 64 (N 4096, D 64, ReLU; benchmarks/bench_simulator.py).
_LOG_ROW_COST = 0.6
# Frozen features of the evaluation set (readout-only runs) are kept up to this many bytes.
_EVAL_FEATURE_BYTES = 128 * 2**20
# Inputs are meant to be of order one (the kernel x.x'/D, eq. 1.1); far beyond, the tangent kernel
# and the automatic step over- or underflow.
_INPUT_RMS_LIMIT = 1e8
# Langevin runs with the automatic step keep lr (lambda + delta + Theta_max) at most this (the value the
# initial step has with tr Theta for Theta_max), Theta_max the largest eigenvalue of the current tangent
# kernel: runaway neurons at strong gamma make it grow ~90-fold during a run, and once lr (lambda +
# Theta_max) passes 2 the chain is unstable along the top eigenvector, held only by the nonlinearity,
# and samples a wrong law. Measured (relu, gamma 8, P 20, N 1000, docs/adaptive.md section 7): the
# initial step ends at 2.3 with the time-averaged predictor 0.19 from the theory; at 1.5, 0.57, 0.28
# the gaps are 0.0228, 0.0230, 0.0229, and with this control 0.0228.
_LANGEVIN_STEP = 0.5
# When the bound is exceeded the step drops to this fraction of it, so it is not lowered at every log.
_LANGEVIN_STEP_DROP = 0.8
# A given step warns beyond the stability limit of the top eigenvector.
_LANGEVIN_STEP_WARN = 2.0
# Fewest steps between two such checks.
_STEP_CHECK_MIN = 256
# Neurons per block of the tangent-kernel products (bounds the temporaries to ~8 MB per array).
_NTK_BLOCK_BYTES = 8 * 2**20


def _caller_level():
    """``stacklevel`` of the first frame outside this package (fit, transfer and resume reach the step
    control at different depths)."""
    frame, level = sys._getframe(1), 1
    pkg = os.path.dirname(os.path.abspath(__file__))
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(pkg):
        frame, level = frame.f_back, level + 1
    return level


def _tangent_top(X, W, a, act, u, n_iter=4):
    """Rayleigh-quotient estimate of the largest eigenvalue of the tangent kernel on ``X``,
    ``Theta = Phi + (G^T G / N) o K`` with ``G_i = a_i phi'(h_i)`` (the Gauss-Newton part of the
    Hessian of ``gamma^2 N L``, eq. 1.4), by power iteration from ``u`` (warm start; ``None``: the
    all-ones vector). Returns ``(theta, u)``. Cost ``~(1 + 2 n_iter) N P D``, no ``P x P`` matrix.
    """
    N, D = W.shape
    P = X.shape[0]
    Xs = X / math.sqrt(D)
    blk = max(1, _NTK_BLOCK_BYTES // (8 * max(P, D)))
    blocks = []
    for lo in range(0, N, blk):
        H = W[lo:lo + blk] @ Xs.T
        blocks.append((act(H), a[lo:lo + blk, None] * act.prime(H)))
    u = np.ones(P) / math.sqrt(P) if u is None else u
    theta = 0.0
    for _ in range(n_iter):
        out = np.zeros(P)
        for F, G in blocks:
            out += F.T @ (F @ u)
            out += np.einsum("ip,ip->p", G, ((G * u) @ Xs) @ Xs.T)
        out /= N
        theta = float(u @ out)
        nrm = float(np.linalg.norm(out))
        if not (nrm > 0.0 and math.isfinite(nrm)):
            break
        u = out / nrm
    return theta, u


@nb.njit(inline="always")
def _stream_key(seed, step, neuron):
    return mix64(mix64(seed + np.uint64(step) * GOLDEN) ^ (np.uint64(neuron) * _NEURON_MUL + GOLDEN))


@nb.njit(inline="always")
def _normal_pair(key, ctr):
    """Two independent standard normals from stream ``key`` starting at counter ``ctr``.

    Marsaglia's polar method on the two 32-bit halves of one hash (no trigonometric calls);
    returns the normals and the next counter, so a stream is reproducible draw by draw.
    """
    while True:
        z = mix64(key + np.uint64(ctr) * GOLDEN)
        ctr += 1
        u = np.float64(z >> _S32) * _TWO_M31 - 1.0
        v = np.float64(z & _LOW32) * _TWO_M31 - 1.0
        s = u * u + v * v
        if 0.0 < s < 1.0:
            m = math.sqrt(-2.0 * math.log(s) / s)
            return u * m, v * m, ctr


@nb.njit(inline="always", fastmath=_FASTMATH)
def _preactivations(Xb, W, i, inv_sqrt_d, H):
    """``H[i, b] = Xb[b] . W[i] / sqrt(D)`` four rows at a time: each load of ``W[i, d]`` feeds four
    multiply-adds, which keeps the loop compute-bound rather than load-bound."""
    B, D = Xb.shape
    b = 0
    while b + 4 <= B:
        s0 = s1 = s2 = s3 = 0.0
        for d in range(D):
            w = W[i, d]
            s0 += Xb[b, d] * w
            s1 += Xb[b + 1, d] * w
            s2 += Xb[b + 2, d] * w
            s3 += Xb[b + 3, d] * w
        H[i, b] = s0 * inv_sqrt_d
        H[i, b + 1] = s1 * inv_sqrt_d
        H[i, b + 2] = s2 * inv_sqrt_d
        H[i, b + 3] = s3 * inv_sqrt_d
        b += 4
    while b < B:
        s0 = 0.0
        for d in range(D):
            s0 += Xb[b, d] * W[i, d]
        H[i, b] = s0 * inv_sqrt_d
        b += 1


@nb.njit(inline="always", fastmath=_FASTMATH)
def _accumulate_rows(Xb, H, rows, n_act, i, coef, W):
    """``W[i] += coef * sum_k H[i, k] Xb[rows[i, k]]`` over the ``n_act`` compacted rows, four per
    pass over ``W[i]`` (one load/store of the weight row per four multiply-adds)."""
    D = Xb.shape[1]
    k = 0
    while k + 4 <= n_act:
        c0 = coef * H[i, k]
        c1 = coef * H[i, k + 1]
        c2 = coef * H[i, k + 2]
        c3 = coef * H[i, k + 3]
        r0, r1, r2, r3 = rows[i, k], rows[i, k + 1], rows[i, k + 2], rows[i, k + 3]
        for d in range(D):
            W[i, d] += c0 * Xb[r0, d] + c1 * Xb[r1, d] + c2 * Xb[r2, d] + c3 * Xb[r3, d]
        k += 4
    while k < n_act:
        c0 = coef * H[i, k]
        r0 = rows[i, k]
        for d in range(D):
            W[i, d] += c0 * Xb[r0, d]
        k += 1


@nb.njit(inline="always")
def _residuals(partial, y, rows, inv_gn, r):
    """``r_b = y_b - f(x_b)`` from per-chunk partial readout sums; ``False`` if any is non-finite."""
    finite = True
    for b in range(r.shape[0]):
        f = 0.0
        for c in range(partial.shape[0]):
            f += partial[c, b]
        r[b] = y[rows[b]] - f * inv_gn
        if not math.isfinite(r[b]):
            finite = False
    return finite


@nb.njit(parallel=True, fastmath=_FASTMATH)
def _run_full(X, y, W, a, Wref, batches, step0, lr, gamma, lam, delta, temp, scale, seed, phi, dphi,
              H, F, rows, partial, r, Xb):
    """Run ``batches.shape[0]`` Euler-Maruyama steps of (1.4) in place on ``W`` and ``a``.

    Returns ``-1`` on success or the index of the step whose residual was non-finite.
    """
    n_steps, B = batches.shape
    N, D = W.shape
    n_chunks = partial.shape[0]
    inv_sqrt_d = 1.0 / math.sqrt(D)
    noise = math.sqrt(2.0 * temp * lr)
    keep_w = 1.0 - lr * (lam + delta)
    pull = lr * delta
    keep_a = 1.0 - lr * lam
    inv_gn = 1.0 / (gamma * N)
    g_scale = gamma * scale
    for s in range(n_steps):
        for b in range(B):
            row = batches[s, b]
            for d in range(D):
                Xb[b, d] = X[row, d]
        # forward, with per-chunk partial sums of the readout so the reduction reads contiguously
        for c in nb.prange(n_chunks):
            lo = c * N // n_chunks
            hi = (c + 1) * N // n_chunks
            for b in range(B):
                partial[c, b] = 0.0
            for i in range(lo, hi):
                _preactivations(Xb, W, i, inv_sqrt_d, H)
                ai = a[i]
                for b in range(B):
                    fb = phi(H[i, b])
                    F[i, b] = fb
                    partial[c, b] += ai * fb
        if not _residuals(partial, y, batches[s], inv_gn, r):
            return s
        step = step0 + s
        for i in nb.prange(N):
            ai = a[i]
            ga = 0.0
            for b in range(B):
                ga += r[b] * F[i, b]
                H[i, b] = r[b] * dphi(H[i, b])  # H now holds the backward signal of neuron i
            coef = lr * g_scale * ai * inv_sqrt_d
            for d in range(D):
                W[i, d] = keep_w * W[i, d] + pull * Wref[i, d]
            # Compact the non-zero backward signals without a branch (ReLU's inactive half drops out).
            n_act = 0
            for b in range(B):
                hb = H[i, b]
                H[i, n_act] = hb
                rows[i, n_act] = b
                n_act += hb != 0.0
            _accumulate_rows(Xb, H, rows, n_act, i, coef, W)
            a_new = keep_a * ai + lr * g_scale * ga
            if noise > 0.0:
                key = _stream_key(seed, step, i)
                ctr = 0
                for k in range(D // 2):
                    z0, z1, ctr = _normal_pair(key, ctr)
                    W[i, 2 * k] += noise * z0
                    W[i, 2 * k + 1] += noise * z1
                z0, z1, ctr = _normal_pair(key, ctr)
                if D % 2 == 1:
                    W[i, D - 1] += noise * z1
                a_new += noise * z0
            a[i] = a_new
    return -1


@nb.njit(parallel=True, fastmath=_FASTMATH)
def _run_readout(F_all, y, a, batches, step0, lr, gamma, lam, temp, scale, seed, partial, r):
    """Steps of (1.4) for the readout only, hidden features ``F_all`` (N x P) frozen."""
    n_steps, B = batches.shape
    N = a.shape[0]
    n_chunks = partial.shape[0]
    noise = math.sqrt(2.0 * temp * lr)
    keep_a = 1.0 - lr * lam
    inv_gn = 1.0 / (gamma * N)
    g_scale = gamma * scale
    for s in range(n_steps):
        for c in nb.prange(n_chunks):
            lo = c * N // n_chunks
            hi = (c + 1) * N // n_chunks
            for b in range(B):
                acc = 0.0
                col = batches[s, b]
                for i in range(lo, hi):
                    acc += a[i] * F_all[i, col]
                partial[c, b] = acc
        if not _residuals(partial, y, batches[s], inv_gn, r):
            return s
        step = step0 + s
        for i in nb.prange(N):
            ga = 0.0
            for b in range(B):
                ga += r[b] * F_all[i, batches[s, b]]
            a_new = keep_a * a[i] + lr * g_scale * ga
            if noise > 0.0:
                z0, _, _ = _normal_pair(_stream_key(seed, step, i), 0)
                a_new += noise * z0
            a[i] = a_new
    return -1


@nb.njit(parallel=True, fastmath=_FASTMATH)
def _features(X, W, phi):
    """``phi(W x / sqrt(D))`` for every neuron and input: (N, P)."""
    N, D = W.shape
    P = X.shape[0]
    out = np.empty((N, P))
    inv_sqrt_d = 1.0 / math.sqrt(D)
    for i in nb.prange(N):
        for p in range(P):
            acc = 0.0
            for d in range(D):
                acc += X[p, d] * W[i, d]
            out[i, p] = phi(acc * inv_sqrt_d)
    return out


@nb.njit(parallel=True, fastmath=_FASTMATH)
def _forward(X, W, a, gamma, phi, n_chunks):
    """Network output (1.2) on every row of ``X`` without an N x P temporary."""
    N, D = W.shape
    P = X.shape[0]
    partial = np.zeros((n_chunks, P))
    inv_sqrt_d = 1.0 / math.sqrt(D)
    for c in nb.prange(n_chunks):
        lo = c * N // n_chunks
        hi = (c + 1) * N // n_chunks
        for i in range(lo, hi):
            ai = a[i]
            # four inputs per pass over W[i] (as in _preactivations): each weight load feeds four
            # multiply-adds; every dot product still sums over d in order
            p = 0
            while p + 4 <= P:
                s0 = s1 = s2 = s3 = 0.0
                for d in range(D):
                    w = W[i, d]
                    s0 += X[p, d] * w
                    s1 += X[p + 1, d] * w
                    s2 += X[p + 2, d] * w
                    s3 += X[p + 3, d] * w
                partial[c, p] += ai * phi(s0 * inv_sqrt_d)
                partial[c, p + 1] += ai * phi(s1 * inv_sqrt_d)
                partial[c, p + 2] += ai * phi(s2 * inv_sqrt_d)
                partial[c, p + 3] += ai * phi(s3 * inv_sqrt_d)
                p += 4
            while p < P:
                acc = 0.0
                for d in range(D):
                    acc += X[p, d] * W[i, d]
                partial[c, p] += ai * phi(acc * inv_sqrt_d)
                p += 1
    out = np.zeros(P)
    for c in range(n_chunks):
        for p in range(P):
            out[p] += partial[c, p]
    return out / (gamma * N)


def _seed_word(seed: int, salt: int) -> np.uint64:
    return np.random.SeedSequence([seed, salt]).generate_state(1, dtype=np.uint64)[0]


class _BatchStream:
    """Mini-batch row indices: consecutive slices of fresh random permutations (epochs)."""

    def __init__(self, n: int, batch_size: int, rng: np.random.Generator):
        self.n, self.B, self.rng = n, batch_size, rng
        self.full = batch_size == n
        self.buffer = np.empty(0, dtype=np.int64)

    def take(self, n_steps: int) -> np.ndarray:
        if self.full:
            return np.broadcast_to(np.arange(self.n, dtype=np.int64), (n_steps, self.n)).copy()
        need = n_steps * self.B
        parts = [self.buffer]
        have = self.buffer.size
        while have < need:
            perm = self.rng.permutation(self.n).astype(np.int64)
            usable = (self.n // self.B) * self.B  # drop the ragged tail so every batch has B rows
            parts.append(perm[:usable])
            have += usable
        flat = np.concatenate(parts)
        self.buffer = flat[need:]
        return np.ascontiguousarray(flat[:need].reshape(n_steps, self.B))


class WideNetwork(TransferEstimator):
    """Two-layer mean-field network of finite width trained by Langevin dynamics (eqs. 1.2-1.4).

    Regime ``"dynamics"`` (docs/estimators.md): ``weight_decay >= 0``, ``temperature >= 0`` with the
    default ``temperature=0`` (gradient descent; the equilibrium theories default to ``T = 1``, so
    set ``temperature`` explicitly when comparing with them). :meth:`transfer` with
    ``coupling=inf`` (or ``readout_only=True``) fine-tunes the readout on the frozen hidden weights.

    Parameters
    ----------
    width : int, >= 1
        Number of hidden neurons ``N``.
    activation : str, sympy.Expr or Activation
        ``phi``; anything :class:`~symtransfer.activations.Activation` accepts.
    gamma : float, > 0
        Feature-learning strength ``gamma``.
    weight_decay : float, >= 0
        ``lambda`` on every weight.
    temperature : float, >= 0
        ``T``; ``0`` (default) is (stochastic) gradient descent.
    lr : float, > 0, optional
        Euler-Maruyama step ``dt``. ``None`` picks ``0.5/(lambda + delta + tr NTK_init)``, stable
        for the initial network (``tr NTK`` bounds its largest eigenvalue); in Langevin runs
        (``temperature > 0``) it then follows the network: whenever
        ``lr (lambda + delta + Theta_max) > 1/2`` (``Theta_max`` the largest eigenvalue of the current
        tangent kernel, checked at log events) it drops to 0.8 of that bound: runaway neurons at strong
        ``gamma`` make ``Theta_max`` grow many-fold, and beyond 2 Euler-Maruyama is unstable along the
        top eigenvector and samples a wrong law (docs/adaptive.md, section 7). A given ``lr`` is kept,
        with a :class:`~symtransfer.errors.StepSizeWarning` once ``lr (lambda + delta + Theta_max) > 2``.
    steps : int, >= 1
        Number of steps; training time is ``lr * steps`` at a constant step (``history_["time"]``).
    batch_size : int, optional
        Mini-batch size ``B`` (the loss sum is rescaled by ``P/B``); ``None`` is full batch.
    init_scale : float, > 0
        ``sigma0``: ``w ~ N(0, sigma0^2 I)``, ``a ~ N(0, sigma0^2)``.
    average_from : float in [0, 1), optional
        If set, :meth:`predict` returns the output averaged over training steps
        ``>= average_from * steps`` -- the equilibrium mean predictor when ``temperature > 0``.
    max_snapshots : int
        Number of weight snapshots kept for that time average (also capped at 256 MB).
    log_every : int, optional
        Steps between entries of ``history_``. Default: about 100 entries, fewer when evaluating the
        losses that often would cost more than 3% of the training compute (a loss on the full
        training and evaluation sets costs about ``0.6 (P + P_eval) / B`` training steps).
    seed : int
        Seeds initialisation, mini-batches and noise.
    progress : bool, optional
        Show a progress bar; ``None`` shows one for runs expected to last over 5 seconds.

    Attributes
    ----------
    W_ : ndarray (N, D)
        Hidden weights after training.
    a_ : ndarray (N,)
        Readout weights after training.
    Phi_ : ndarray (P, P)
        Feature kernel ``phi(h)^T phi(h) / N`` of the final hidden weights on the training inputs,
        computed on first access (``O(N P (D + P))`` time, ``P^2`` memory: large-``P`` runs that never
        read it do not pay for it).
    history_ : dict of ndarray
        ``"time"`` (the sum of the steps taken), ``"lr"`` (the step size of the steps since the previous
        entry), ``"train_loss"``, ``"test_loss"`` (empty without ``eval_set``) and ``"step"``; losses are
        mean squared errors over the full sets.
    lr_ : float
        Step size at the end of the run (constant unless the automatic step followed the network).
    n_features_in_ : int
    n_iter_ : int
        Steps completed.
    converged_ : bool
        ``True`` once all ``steps`` ran (there is no convergence criterion: the run has a fixed length).
    coupling_ : float
        ``delta`` of the run: ``0`` after :meth:`fit`, ``inf`` for readout fine-tuning.

    Notes
    -----
    A run interrupted with Ctrl-C stops after the chunk of steps in flight, keeps everything
    finished (weights, history, snapshots) and raises ``KeyboardInterrupt``; :meth:`resume`
    then completes it exactly as an uninterrupted run would.
    """

    def __init__(self, width, activation="relu", gamma=1.0, weight_decay=1.0, temperature=0.0, lr=None,
                 steps=2000, batch_size=None, init_scale=1.0, average_from=None, max_snapshots=200,
                 log_every=None, seed=0, progress=None):
        self.width = width
        self.activation = activation
        self.gamma = gamma
        self.weight_decay = weight_decay
        self.temperature = temperature
        self.lr = lr
        self.steps = steps
        self.batch_size = batch_size
        self.init_scale = init_scale
        self.average_from = average_from
        self.max_snapshots = max_snapshots
        self.log_every = log_every
        self.seed = seed
        self.progress = progress

    _regime = "dynamics"
    # set when a run has finished or paused (not while one is in flight, nor after a divergence)
    _fitted_attr = "_X_fit"

    # ------------------------------------------------------------------ validation
    def _validated(self):
        p = {
            "width": check_int("width", self.width, low=1),
            **self._check_hyper(),
            "steps": check_int("steps", self.steps, low=1),
            "init_scale": check_real("init_scale", self.init_scale, low=0.0, low_open=True),
            "max_snapshots": check_int("max_snapshots", self.max_snapshots, low=1),
            "seed": check_int("seed", self.seed, low=0),
        }
        p["lr"] = None if self.lr is None else check_real("lr", self.lr, low=0.0, low_open=True)
        p["batch_size"] = None if self.batch_size is None else check_int("batch_size", self.batch_size, low=1)
        p["log_every"] = None if self.log_every is None else check_int("log_every", self.log_every, low=1)
        if self.average_from is None:
            p["average_from"] = None
        else:
            p["average_from"] = check_real("average_from", self.average_from, low=0.0)
            if not p["average_from"] < 1.0:
                raise ValueError(f"average_from must be in [0, 1), got {self.average_from!r}")
        if self.progress not in (None, True, False):
            raise ValueError(f"progress must be None, True or False, got {self.progress!r}")
        p["progress"] = self.progress
        p["activation"] = get_activation(self.activation)
        return p

    # ------------------------------------------------------------------ training
    def fit(self, X, y, eval_set=None):
        """Train from a random initialisation on ``(X, y)``; returns ``self``.

        Parameters
        ----------
        X : array (P, D)
        y : array (P,)
        eval_set : tuple (X_test, y_test), optional
            Held-out data whose loss is logged in ``history_["test_loss"]``.
        """
        p = self._validated()
        X, y = check_Xy(X, y)
        N, D = p["width"], X.shape[1]
        rng = np.random.default_rng(np.random.SeedSequence([p["seed"], 0]))
        W = p["init_scale"] * rng.standard_normal((N, D))
        a = p["init_scale"] * rng.standard_normal(N)
        self.coupling_ = 0.0
        self.readout_only_ = False
        return self._train(p, X, y, W, a, None, eval_set, readout_only=False, delta=0.0)

    def transfer(self, X2, y2, *, coupling=0.0, gamma=None, weight_decay=None, temperature=None,
                 readout_only=None, eval_set=None, lr=None, steps=None, batch_size=None, average_from=None,
                 seed=None) -> "WideNetwork":
        """A new network trained on the target, starting from (and pulled towards) these hidden weights.

        The hidden weights start at this network's ``W_``, which is also the reference ``W_ref`` of
        the elastic coupling (eq. 1.3); the readout is freshly initialised. Settings left ``None``
        are taken from this (source) network; the new seed defaults to ``seed + 1``. This network is
        left untouched.

        Parameters
        ----------
        coupling : float, >= 0 or inf
            ``delta`` (default ``0``: the source weights only initialise the target). ``inf`` freezes
            the hidden weights: fine-tuning the readout on source features.
        readout_only : bool, optional
            Synonym of ``coupling=inf`` (a finite non-zero ``coupling`` with it is a ``ValueError``).
        gamma, weight_decay, temperature, lr, steps, batch_size, average_from, seed : optional
            Target settings (default: the source's; ``seed + 1`` for the seed).
        eval_set : tuple (X_test, y_test), optional
            Held-out target data logged in ``history_["test_loss"]``.
        """
        return super().transfer(X2, y2, coupling=coupling, gamma=gamma, weight_decay=weight_decay,
                                temperature=temperature, readout_only=readout_only, eval_set=eval_set, lr=lr,
                                steps=steps, batch_size=batch_size, average_from=average_from, seed=seed)

    def _transfer(self, X2, y2, *, coupling, gamma, weight_decay, temperature, eval_set=None, lr=None,
                  steps=None, batch_size=None, average_from=None, seed=None) -> "WideNetwork":
        readout_only = math.isinf(coupling)
        delta = 0.0 if readout_only else coupling  # the frozen run has no pull term
        X2, y2 = check_Xy(X2, y2, "X2", "y2", n_features=self.W_.shape[1])
        params = self.get_params(deep=False)
        overrides = {"gamma": gamma, "weight_decay": weight_decay, "temperature": temperature, "lr": lr,
                     "steps": steps, "batch_size": batch_size, "average_from": average_from}
        for k, v in overrides.items():
            if v is not None:
                params[k] = v
        if lr is None and self.lr is None:
            params["lr"] = None
        params["seed"] = target_seed(self.seed) if seed is None else seed
        target = WideNetwork(**params)
        tp = target._validated()
        rng = np.random.default_rng(np.random.SeedSequence([tp["seed"], 1]))
        a = tp["init_scale"] * rng.standard_normal(tp["width"])
        target.coupling_ = coupling
        target.readout_only_ = readout_only
        return target._train(tp, X2, y2, self.W_.copy(), a, self.W_.copy(), eval_set,
                             readout_only=bool(readout_only), delta=delta)

    def _auto_lr(self, p, X, W, a, delta, readout_only):
        act = p["activation"].compile()
        Fx = _features(X, W, act.phi)
        ntk = np.sum(Fx**2) / W.shape[0]
        if not readout_only:
            # a^2 phi'(h)^2 K(x, x) summed over training points, averaged over neurons
            H = W @ X.T / math.sqrt(X.shape[1])
            dF = p["activation"].prime(H)
            ntk += np.sum((a[:, None] * dF) ** 2 * (np.sum(X**2, axis=1) / X.shape[1])[None, :]) / W.shape[0]
        return 0.5 / (p["weight_decay"] + delta + ntk)

    @staticmethod
    def _check_scale(X, name):
        m = float(np.max(np.abs(X)))
        rms = m * float(np.sqrt(np.mean(np.square(X / m)))) if m > 0.0 else 0.0  # no overflow in the square
        if not rms <= _INPUT_RMS_LIMIT:
            raise ValueError(f"{name} has root-mean-square {rms:.3g}: WideNetwork expects inputs of order one (the "
                             f"kernel x.x'/D, eq. 1.1), beyond {_INPUT_RMS_LIMIT:g} the tangent kernel and the step "
                             f"size over/underflow; standardise the inputs (e.g. divide by their standard deviation)")

    @staticmethod
    def _readout_theta(Fx, n_iter=30):
        """Lower estimate of the largest eigenvalue of the readout tangent kernel ``F^T F / N`` (power
        iteration from the all-ones vector, which the mean of the features makes a good start)."""
        N, P = Fx.shape
        v = np.ones(P) / math.sqrt(P)
        theta = 0.0
        for _ in range(n_iter):
            w = Fx.T @ (Fx @ v) / N
            theta = float(v @ w)
            nrm = float(np.linalg.norm(w))
            if not nrm > 0.0 or not math.isfinite(nrm):
                break
            v = w / nrm
        return theta

    def _train(self, p, X, y, W, a, Wref, eval_set, *, readout_only, delta):
        for k in ("_X_fit", "_Phi"):  # fitted again only once this run has finished or paused
            self.__dict__.pop(k, None)
        if eval_set is not None:
            Xe, ye = self._check_eval_set(eval_set, X.shape[1])
        P, D = X.shape
        N = p["width"]
        B = P if p["batch_size"] is None else p["batch_size"]
        if B > P:
            raise ValueError(f"batch_size must be <= the number of training points ({P}), got {B}")
        self._check_scale(X, "X")
        if p["lr"] is None:
            lr = self._auto_lr(p, X, W, a, delta, readout_only)
            if not (math.isfinite(lr) and lr > 0.0):
                raise ValueError(f"the automatic lr is {lr:g} for these inputs/initialisation (tangent kernel not "
                                 f"finite): standardise X, lower init_scale, or give lr")
        else:
            lr = p["lr"]
            theta = self._readout_theta(_features(X, W, p["activation"].compile().phi))
            bound = 2.0 / (p["weight_decay"] + theta)
            if lr > bound:
                raise StepTooLargeError(lr, bound, self._auto_lr(p, X, W, a, delta, readout_only))
        steps = p["steps"]
        act = p["activation"].compile()
        self.activation_ = p["activation"]
        self.lr_ = lr
        self.n_features_in_ = D
        W = np.ascontiguousarray(W, dtype=np.float64)
        a = np.ascontiguousarray(a, dtype=np.float64)
        if delta > 0.0 and Wref is None:
            raise ValueError("coupling > 0 needs reference weights")
        gamma, lam, T = p["gamma"], p["weight_decay"], p["temperature"]
        noise_seed = _seed_word(p["seed"], 2)
        batches = _BatchStream(P, B, np.random.default_rng(np.random.SeedSequence([p["seed"], 3])))
        scale = P / B
        n_chunks = min(N, _N_CHUNKS)
        partial = np.zeros((n_chunks, B))
        r = np.zeros(B)
        if readout_only:
            F_all = _features(X, W, act.phi)
        else:
            H = np.empty((N, B))
            F = np.empty((N, B))
            rows = np.empty((N, B), dtype=np.int64)
            Xb = np.empty((B, D))
            # with delta = 0 the pull term vanishes; any array of W's shape will do
            Wref_arr = W if delta == 0.0 else np.ascontiguousarray(Wref, dtype=np.float64)

        if p["log_every"] is not None:
            log_every = p["log_every"]
        else:
            # a log is a forward pass over the full sets (P + P_eval rows), a step one over B rows
            # plus the backward pass and the update
            n_eval = 0 if eval_set is None else Xe.shape[0]
            per_log = _LOG_ROW_COST * (P + n_eval) / B
            log_every = min(steps, max(1, steps // 100, math.ceil(per_log / _LOG_BUDGET)))
        events = set(range(log_every, steps + 1, log_every)) | {steps}
        if p["average_from"] is not None:
            avg_start = int(math.floor(p["average_from"] * steps))
            cap = max(1, _SNAPSHOT_BYTES // (8 * N * (D + 1)))
            n_snap = min(p["max_snapshots"], cap, steps - avg_start)
            snap_steps = np.unique(np.linspace(avg_start, steps, n_snap + 1)[1:].round().astype(int))
            snap_steps = snap_steps[snap_steps >= 1]
            events |= set(snap_steps.tolist())
            snap_set = set(snap_steps.tolist())
        else:
            snap_set = set()
        events = sorted(events)

        if readout_only:
            # frozen features: a loss is a product with the readout, no forward pass
            F_eval = None
            if eval_set is not None and 8 * N * Xe.shape[0] <= _EVAL_FEATURE_BYTES:
                F_eval = _features(Xe, W, act.phi)

            def train_mse():
                return self._mse_frozen(F_all, y, a, gamma)

            def eval_mse():
                if F_eval is None:
                    return self._mse(Xe, ye, W, a, gamma, act)
                return self._mse_frozen(F_eval, ye, a, gamma)
        else:
            def train_mse():
                return self._mse(X, y, W, a, gamma, act)

            def eval_mse():
                return self._mse(Xe, ye, W, a, gamma, act)

        hist = {"step": [0], "time": [0.0], "lr": [lr], "train_loss": [train_mse()],
                "test_loss": [] if eval_set is None else [eval_mse()]}
        if readout_only:
            def advance(idx, done, lr):
                return _run_readout(F_all, y, a, idx, done, lr, gamma, lam, T, scale, noise_seed, partial, r)
        else:
            def advance(idx, done, lr):
                return _run_full(X, y, W, a, Wref_arr, idx, done, lr, gamma, lam, delta, T, scale,
                                 noise_seed, act.phi, act.dphi, H, F, rows, partial, r, Xb)

        def log_now(step, t, lr):
            loss = train_mse()
            if not math.isfinite(loss):
                raise DivergenceError(step, lr)
            hist["step"].append(step)
            hist["time"].append(t)
            hist["lr"].append(lr)
            hist["train_loss"].append(loss)
            if eval_set is not None:
                hist["test_loss"].append(eval_mse())

        # Langevin runs check the step against the current tangent kernel (_LANGEVIN_STEP) at log events
        # at least _STEP_CHECK_MIN steps apart (a check costs about six training steps)
        step_control = None
        if T > 0.0 and not readout_only:
            step_control = {"adapt": p["lr"] is None, "u": None, "last": 0, "warned": False,
                            "shift": lam + delta, "every": max(log_every, _STEP_CHECK_MIN)}

        self.W_, self.a_ = W, a
        self.snapshots_ = []
        self.n_iter_ = 0
        self._pending = dict(X=X, events=events, snap_set=snap_set, log_every=log_every, steps=steps, hist=hist,
                             advance=advance, log_now=log_now, batches=batches, work=N * B * (1 if readout_only else D),
                             progress=p["progress"], clock=(0.0, 0), step_control=step_control)
        return self._continue()

    def _continue(self):
        """Run the remaining chunks of the current training; safe to interrupt between chunks."""
        run = self._pending
        W, a, lr, steps = self.W_, self.a_, self.lr_, run["steps"]
        interrupted = []
        previous_handler = None
        if threading.current_thread() is threading.main_thread():
            # Ctrl-C only sets a flag: the chunk in flight finishes, bookkeeping stays consistent.
            previous_handler = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
        threads_before = nb.get_num_threads()
        if run["work"] < _PARALLEL_MIN_WORK:
            nb.set_num_threads(1)
        bar = None
        t_start = time.perf_counter()
        done0 = self.n_iter_
        try:
            for ev in run["events"]:
                done = self.n_iter_
                if ev <= done:
                    continue
                bad = run["advance"](run["batches"].take(ev - done), done, lr)
                if bad >= 0:
                    raise DivergenceError(done + bad, lr)
                self.n_iter_ = ev
                if ev in run["snap_set"]:
                    self.snapshots_.append((W.copy(), a.copy()))
                if ev % run["log_every"] == 0 or ev == steps:
                    t0, s0 = run["clock"]
                    run["log_now"](ev, t0 + (ev - s0) * lr, lr)
                    if run["step_control"] is not None and ev < steps:
                        lr = self._control_step(run, ev, lr)
                if bar is None and run["progress"] is not False:
                    elapsed = time.perf_counter() - t_start
                    if run["progress"] or elapsed * (steps - done0) / max(ev - done0, 1) > 5.0:
                        bar = tqdm(total=steps, initial=ev, desc="WideNetwork", unit="step", leave=False)
                elif bar is not None:
                    bar.update(ev - bar.n)
                if interrupted:
                    break
        finally:
            nb.set_num_threads(threads_before)
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
            if bar is not None:
                bar.close()
            self.history_ = {k: np.asarray(v, dtype=np.int64 if k == "step" else np.float64)
                             for k, v in run["hist"].items()}
        # reached only when no step diverged: the state, finished or paused, is a network
        self.converged_ = self.n_iter_ == steps
        self.__dict__.pop("_Phi", None)
        self._X_fit = run["X"]
        if interrupted and self.n_iter_ < steps:
            raise KeyboardInterrupt(
                f"WideNetwork interrupted at step {self.n_iter_} of {steps}; the state so far is kept: "
                f"call resume() to finish the run"
            )
        self._pending = None
        return self

    def _control_step(self, run, step, lr):
        """The step for the run's next chunks: lowered when ``lr (lambda + delta + Theta_max)`` exceeds
        ``_LANGEVIN_STEP`` (automatic step), or a :class:`StepSizeWarning` once beyond
        ``_LANGEVIN_STEP_WARN`` (given step)."""
        ctl = run["step_control"]
        if step - ctl["last"] < ctl["every"] or ctl["warned"]:   # a given step warns once: no more checks
            return lr
        ctl["last"] = step
        theta, ctl["u"] = _tangent_top(run["X"], self.W_, self.a_, self.activation_, ctl["u"])
        if not (ctl["shift"] + theta > 0.0 and math.isfinite(theta)):
            # a vanishing kernel without weight decay bounds nothing; a non-finite one is a divergence,
            # which the next chunk's check reports with its step
            return lr
        if not ctl["adapt"]:
            bound = _LANGEVIN_STEP_WARN / (ctl["shift"] + theta)
            if lr > bound and not ctl["warned"]:
                ctl["warned"] = True
                warnings.warn(StepSizeWarning(step, lr, bound), stacklevel=_caller_level())
            return lr
        bound = _LANGEVIN_STEP / (ctl["shift"] + theta)
        if lr <= bound:
            return lr
        t0, s0 = run["clock"]
        run["clock"] = (t0 + (step - s0) * lr, step)
        self.lr_ = lr = _LANGEVIN_STEP_DROP * bound
        return lr

    def resume(self):
        """Finish a run interrupted by Ctrl-C (``KeyboardInterrupt``); returns ``self``.

        The noise is keyed by step and the mini-batch stream is kept, so the resumed run is
        identical to an uninterrupted one.
        """
        if getattr(self, "_pending", None) is None:
            raise RuntimeError("nothing to resume: the last fit/transfer finished (or none was started)")
        return self._continue()

    @staticmethod
    def _mse_frozen(F, y, a, gamma):
        with np.errstate(over="ignore", invalid="ignore"):  # a diverging run is reported by the caller
            f = (a @ F) / (gamma * F.shape[0])
            return float(np.mean((f - y) ** 2))

    def _mse(self, X, y, W, a, gamma, act):
        f = _forward(X, W, a, gamma, act.phi, min(W.shape[0], _N_CHUNKS))
        with np.errstate(over="ignore", invalid="ignore"):  # a diverging run is reported by the caller
            return float(np.mean((f - y) ** 2))

    # ------------------------------------------------------------------ inference
    @property
    def Phi_(self) -> np.ndarray:
        """Feature kernel of the current hidden weights on the training inputs (computed once)."""
        Phi = self.__dict__.get("_Phi")
        if Phi is None:
            self._check_fitted()
            Phi = self._Phi = self._feature_kernel(self._X_fit, None)
        return Phi

    def predict(self, X, average=None) -> np.ndarray:
        """Network output on ``X``.

        Parameters
        ----------
        average : bool, optional
            Average over the stored snapshots (default: ``True`` when ``average_from`` was set).
        """
        self._check_fitted()
        X = check_inputs(X, "X", self.n_features_in_)
        gamma = float(self.gamma)
        phi = self.activation_.compile().phi
        n_chunks = min(self.W_.shape[0], _N_CHUNKS)
        use_avg = bool(self.snapshots_) if average is None else average
        if use_avg:
            if not self.snapshots_:
                raise ValueError("average=True needs average_from to be set before fit")
            out = np.zeros(X.shape[0])
            for W, a in self.snapshots_:
                out += _forward(X, W, a, gamma, phi, n_chunks)
            return out / len(self.snapshots_)
        return _forward(X, self.W_, self.a_, gamma, phi, n_chunks)

    def kernel(self, XA, XB=None) -> np.ndarray:
        """Feature kernel ``phi(h(XA))^T phi(h(XB)) / N`` of the current hidden weights."""
        self._check_fitted()
        XA = check_inputs(XA, "XA", self.n_features_in_)
        XB = None if XB is None else check_inputs(XB, "XB", self.n_features_in_)
        return self._feature_kernel(XA, XB)

    def _feature_kernel(self, XA, XB):
        phi = self.activation_.compile().phi
        FA = _features(XA, self.W_, phi)
        if XB is None:
            return FA.T @ FA / self.W_.shape[0]
        return FA.T @ _features(XB, self.W_, phi) / self.W_.shape[0]

    def features(self, X) -> np.ndarray:
        """Hidden preactivations ``h = W x / sqrt(D)`` of the current weights on ``X``, shape ``(N, n)``
        (the same layout as :meth:`symtransfer.theory.dmft.GradientFlowDMFT.features`)."""
        self._check_fitted()
        X = check_inputs(X, "X", self.n_features_in_)
        return self.W_ @ X.T / math.sqrt(X.shape[1])
