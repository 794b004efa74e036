"""Weighted sums over sample sets and the BLAS thread policy of the adaptive solver (docs/adaptive.md)."""

from __future__ import annotations

import contextlib
import functools

import numpy as np
from threadpoolctl import ThreadpoolController

# BLAS threads outside the solver; large Gram matrices get them back (see _one_blas_thread)
_blas_threads = 1
_BIG_GRAM = 2**27   # n P^2 above which a Gram matrix is worth the BLAS thread pool
_BLOCK = 2048       # rows per block of weighted sums over samples (_wsum)
_depth = 0          # nesting of _one_blas_thread calls (only the outermost sets the policy)
_controller = None  # scanning the loaded libraries costs ~4 ms: once per process


def _blas():
    global _controller
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller


def _one_blas_thread(method):
    """Run ``method`` with single-threaded BLAS, except for large Gram matrices (:func:`_gram`).

    The solver alternates parallel Numba kernels with many small BLAS calls (P x P solves, the
    normalisability ascent). When other work holds a core, every multi-threaded small call waits for
    all its threads to be scheduled (a 200 x 200 solve took 76 ms instead of < 1 ms); the large Gram
    matrices still gain from threads. Measured, relu, digits P = 200, fit + predict, 8192 / 32768
    samples: idle machine 2.3 / 7.1 s (all threaded 2.0 / 6.7, all single 2.7 / 9.8); one core busy
    with another process 3.6 / 10.7 s (all threaded 4.3 / 13.6).
    """
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        global _blas_threads, _depth
        if _depth:
            # nested (a transfer solving its scratch model, an error pass inside predict): the outer call
            # already limited the pool, and reading it again here would see one thread only
            return method(*args, **kwargs)
        info = [i["num_threads"] for i in _blas().info() if i["user_api"] == "blas"]
        with _blas().limit(limits=1, user_api="blas"):
            outer, _blas_threads = _blas_threads, max(info, default=1)
            _depth += 1
            try:
                return method(*args, **kwargs)
            finally:
                _blas_threads = outer
                _depth -= 1
    return wrapper


def _threaded(n_flops):
    """The BLAS thread pool for a product of ``n_flops`` multiply-adds, if large enough, else a no-op."""
    if _blas_threads > 1 and n_flops >= _BIG_GRAM:
        return _blas().limit(limits=_blas_threads, user_api="blas")
    return contextlib.nullcontext()


def _gram(psi, w):
    """``sum_i w_i psi_i psi_i^T`` (weights may be negative: control-variate batch estimates)."""
    return _wsum(psi, w, psi)


def _group_sums(w, M, G):
    """``sum_i w_i M_i`` within each of ``G`` equal consecutive groups of rows, shape ``(G, M.shape[1])``
    (one batched product: no weighted copy of ``M``)."""
    n, k = M.shape
    return (w.reshape(G, 1, n // G) @ M.reshape(G, n // G, k))[:, 0, :]


def _wsum(A, w, B):
    """``A^T diag(w) B`` over blocks of rows.

    A weighted copy of a whole sample set is as large as the set, and on first touch its pages cost
    more than the product (measured: 0.25 s for 32768 x 200, the product 0.03 s); blocks of
    ``_BLOCK`` rows stay in cache and are recycled. With ``A is B`` and ``w >= 0`` each block is a
    symmetric rank-k update ``C^T C`` with ``C = sqrt(w) A`` (half the flops of a general product).
    Large products get the BLAS thread pool (:func:`_threaded`).
    """
    n = A.shape[0]
    sym = A is B and bool(np.all(w >= 0.0))
    out = np.zeros((A.shape[1], B.shape[1]))
    sw = np.sqrt(w) if sym else w
    with _threaded(n * A.shape[1] * B.shape[1]):
        for i in range(0, n, _BLOCK):
            Ci = A[i:i + _BLOCK] * sw[i:i + _BLOCK, None]
            out += Ci.T @ (Ci if sym else B[i:i + _BLOCK])
    return out


def _matmul(a, b):
    """``a @ b``, with the BLAS thread pool when it is large (see :func:`_one_blas_thread`)."""
    with _threaded(a.shape[0] * a.shape[1] * b.shape[-1]):
        return a @ b
