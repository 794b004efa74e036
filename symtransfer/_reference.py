"""Plain NumPy reference implementations, used by tests (exactness) and benchmarks (speed ratios)."""

from __future__ import annotations

import math



def langevin_step_numpy(X, y, W, a, batch, *, lr, gamma, weight_decay, temperature=0.0, coupling=0.0, Wref=None,
                        phi, dphi, rng=None):
    """One Euler-Maruyama step of docs/theory.md eq. (1.4) on the rows ``batch``, returning new ``(W, a)``.

    ``phi``/``dphi`` are NumPy-vectorised. Noise (``temperature > 0``) is drawn from ``rng``.
    """
    P, D = X.shape
    N = W.shape[0]
    Xb = X[batch]
    scale = P / len(batch)
    H = Xb @ W.T / math.sqrt(D)  # (B, N)
    F = phi(H)
    r = y[batch] - F @ a / (gamma * N)
    grad_a = gamma * scale * (F.T @ r)
    back = (dphi(H) * r[:, None]) * a[None, :]  # (B, N)
    grad_W = gamma * scale * (back.T @ Xb) / math.sqrt(D)
    W_new = W + lr * (grad_W - weight_decay * W)
    if coupling:
        W_new -= lr * coupling * (W - Wref)
    a_new = a + lr * (grad_a - weight_decay * a)
    if temperature > 0:
        amp = math.sqrt(2 * temperature * lr)
        W_new += amp * rng.standard_normal(W.shape)
        a_new += amp * rng.standard_normal(a.shape)
    return W_new, a_new
