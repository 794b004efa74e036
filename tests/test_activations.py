"""Activations: compiled kernels against SymPy, dual kernels (closed forms vs quadrature), Hermite
coefficients, PSD Gram matrices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from symtransfer.activations import Activation, q11, q12, q22, x

# A grid of admissible (q11, q12, q22) that includes both degenerate edges rho = +-1 and zero variances.
_VARS = np.array([0.0, 0.3, 1.0, 2.5])
_RHOS = np.array([-1.0, -0.6, 0.0, 0.4, 1.0])
A_, B_, R_ = np.meshgrid(_VARS, _VARS, _RHOS, indexing="ij")
GRID = (A_.ravel(), (R_ * np.sqrt(A_ * B_)).ravel(), B_.ravel())

CLOSED = ["linear", "relu", "erf", "quadratic", "cubic", "sin", "exp(-x**2/2)", "2*Max(0, 3*x)",
          "cos(x/2)", "Heaviside(x)"]


@pytest.mark.parametrize("spec", CLOSED)
def test_closed_form_dual_kernels_match_quadrature(spec):
    act = Activation(spec)
    kern = act._kernel()
    assert kern.method == "closed form"
    closed = act.dual_kernel(*GRID)
    quad = kern.quadrature(*GRID)
    np.testing.assert_allclose(closed, quad, rtol=0, atol=1e-10 * max(1.0, np.max(np.abs(closed))))
    dkern = act._dkernel()
    dclosed = act.derivative_dual_kernel(*GRID)
    if dkern.method == "closed form":
        dquad = dkern.quadrature(*GRID)
        np.testing.assert_allclose(dclosed, dquad, rtol=0, atol=1e-10 * max(1.0, np.max(np.abs(dclosed))))


def test_known_values():
    relu, erf, lin, step = Activation("relu"), Activation("erf"), Activation("linear"), Activation("Heaviside(x)")
    assert relu.dual_kernel(1.0, 1.0, 1.0) == pytest.approx(0.5, abs=1e-15)
    assert relu.dual_kernel(1.0, 0.0, 1.0) == pytest.approx(1 / (2 * math.pi), abs=1e-15)
    assert relu.dual_kernel(1.0, -1.0, 1.0) == pytest.approx(0.0, abs=1e-15)
    # relu'(u) relu'(v): probability that both are positive = 1/4 at rho = 0, with relu'(0) = 0
    assert relu.derivative_dual_kernel(1.0, 0.0, 1.0) == pytest.approx(0.25, abs=1e-15)
    assert relu.derivative_dual_kernel(0.0, 0.0, 1.0) == 0.0
    assert step.dual_kernel(1.0, 0.5, 1.0) == pytest.approx(1 / 3, abs=1e-15)
    q = 0.7
    assert erf.dual_kernel(q, q, q) == pytest.approx(2 / math.pi * math.asin(2 * q / (1 + 2 * q)), abs=1e-15)
    assert erf.derivative_dual_kernel(q, 0.0, q) == pytest.approx(4 / math.pi / (1 + 2 * q), rel=1e-14)
    np.testing.assert_allclose(lin.dual_kernel(*GRID), GRID[1], atol=1e-15)
    assert sp.simplify(Activation("quadratic").dual_kernel_expr() - (q12 + q12**2 / 2 + q11 * q22 / 4)) == 0


def _gl_expectation(fun, n=400, L=12.0):
    """E[fun(z1, z2)] by tensor Gauss-Legendre on [-L, L]^2, split at 0: a Cartesian rule independent
    of the polar rule under test."""
    t, w = np.polynomial.legendre.leggauss(n // 2)
    z = np.concatenate([0.5 * L * (t - 1), 0.5 * L * (t + 1)])
    wz = np.concatenate([0.5 * L * w, 0.5 * L * w]) * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    if fun is None:
        return z, wz
    return wz @ fun(z[:, None], z[None, :]) @ wz


@pytest.mark.parametrize("spec", ["tanh", "softplus", "x*exp(-x**2/4)", "Abs(x)"])
def test_quadrature_dual_kernel_degenerate_edges(spec):
    """q12 = +-sqrt(q11 q22) and zero variances reduce to one-dimensional integrals."""
    act = Activation(spec)
    z, w = _gl_expectation(None)
    phi = sp.lambdify(x, act.expr, ["numpy", "scipy"])
    a, b = 0.8, 1.7
    fa, fb, fbm = phi(math.sqrt(a) * z), phi(math.sqrt(b) * z), phi(-math.sqrt(b) * z)
    assert act.dual_kernel(a, math.sqrt(a * b), b) == pytest.approx(np.dot(w, fa * fb), abs=1e-12)
    assert act.dual_kernel(a, -math.sqrt(a * b), b) == pytest.approx(np.dot(w, fa * fbm), abs=1e-12)
    phi0 = float(phi(0.0))
    assert act.dual_kernel(0.0, 0.0, b) == pytest.approx(phi0 * np.dot(w, fb), abs=1e-12)
    assert act.dual_kernel(0.0, 0.0, 0.0) == pytest.approx(phi0**2, abs=1e-14)


@pytest.mark.parametrize("spec", ["tanh", "gelu"])
def test_quadrature_against_independent_cartesian_rule(spec):
    """Polar quadrature against a 400 x 400 Cartesian Gauss-Legendre rule, variances up to 4."""
    act = Activation(spec)
    phi = sp.lambdify(x, act.expr, ["numpy", "scipy"])
    for a, rho, b in [(1.0, 0.5, 1.0), (4.0, -0.3, 0.5), (2.0, 0.95, 3.0)]:
        s = math.sqrt(1 - rho * rho)
        ref = _gl_expectation(lambda z1, z2: phi(math.sqrt(a) * z1) * phi(math.sqrt(b) * (rho * z1 + s * z2)))
        assert act.dual_kernel(a, rho * math.sqrt(a * b), b) == pytest.approx(ref, abs=1e-12)


def test_broadcasting_dtype_and_validation():
    act = Activation("relu")
    out = act.dual_kernel(np.ones((3, 1)), 0.5, np.ones((1, 4)))
    assert out.shape == (3, 4) and out.dtype == np.float64
    assert np.all(out == out[0, 0])
    assert isinstance(act.dual_kernel(1.0, 0.2, 1.0), float)
    with pytest.raises(ValueError, match="q11 and q22"):
        act.dual_kernel(-1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="q12"):
        act.dual_kernel(1.0, 1.5, 1.0)
    with pytest.raises(ValueError, match="q12"):
        act.dual_kernel(1.0, np.nan, 1.0)
    # rounding just past the degenerate edge is clipped, not rejected
    assert act.dual_kernel(2.0, 2.0 * (1 + 1e-12), 2.0) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("spec", ["relu", "tanh", "gelu", "softplus", "x*exp(-x**2/4)", "sin(2*x) + x/3"])
def test_compiled_phi_dphi_kappa_match_sympy(spec):
    act = Activation(spec)
    comp = act.compile()
    pts = [-2.3, -0.7, 0.4, 1.9]
    dexpr = act.derivative()
    for p in pts:
        assert comp.phi(p) == pytest.approx(float(act.expr.subs(x, p).evalf(30)), rel=1e-13, abs=1e-14)
        assert comp.dphi(p) == pytest.approx(float(dexpr.subs(x, p).evalf(30)), rel=1e-13, abs=1e-14)
    if spec not in ("relu", "x*exp(-x**2/4)"):
        return  # compiling the quadrature kappa costs seconds per activation: two representatives
    for a, c, b in [(1.0, 0.3, 0.8), (2.0, -1.0, 1.5)]:
        assert comp.kappa(a, c, b) == pytest.approx(act.dual_kernel(a, c, b), abs=1e-14)
        assert comp.dkappa(a, c, b) == pytest.approx(act.derivative_dual_kernel(a, c, b), abs=1e-14)
    sym = act.dual_kernel_expr()
    if sym is not None:
        val = float(sym.subs({q11: 1.0, q12: 0.3, q22: 0.8}).evalf(30))
        assert comp.kappa(1.0, 0.3, 0.8) == pytest.approx(val, rel=1e-13)


@settings(max_examples=25, deadline=None)
@given(
    spec=st.sampled_from(["relu", "erf", "tanh", "quadratic", "sin"]),
    n=st.integers(2, 7),
    dim=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(0.1, 2.0),
)
def test_dual_kernel_gram_matrices_are_psd(spec, n, dim, seed, scale):
    rng = np.random.default_rng(seed)
    X = scale * rng.standard_normal((n, dim))
    if n > 2:
        X[-1] = X[0]  # a repeated input exercises the degenerate edge rho = 1
    K = X @ X.T / dim
    d = np.diag(K)
    act = Activation(spec)
    for kern in (act.dual_kernel, act.derivative_dual_kernel):
        G = kern(d[:, None], K, d[None, :])
        np.testing.assert_allclose(G, G.T, atol=1e-13)
        lam = np.linalg.eigvalsh(G)
        assert lam[0] >= -1e-10 * max(1.0, lam[-1])


def test_hermite_coefficients():
    quad = Activation("quadratic")  # x + x^2/2 = He_1 + (He_2 + 1)/2
    assert quad.hermite_coefficients(4) == [sp.Rational(1, 2), 1, sp.sqrt(2) / 2, 0]
    assert quad.hermite_coefficients(2, return_error=True)[1] == sp.sqrt(2) / 2
    relu = Activation("relu")
    c, err = relu.hermite_coefficients(3, return_error=True)
    np.testing.assert_allclose(c, [1 / math.sqrt(2 * math.pi), 0.5, 1 / (2 * math.sqrt(math.pi))], atol=1e-13)
    assert err**2 == pytest.approx(0.5 - np.sum(c**2), abs=1e-13)
    # Mehler: sum_k c_k^2 rho^k = kappa(1, rho, 1), and the stated truncation error bounds the gap
    erf = Activation("erf")
    c, err = erf.hermite_coefficients(25, return_error=True)
    for rho in (-0.9, 0.3, 1.0):
        gap = abs(np.sum(c**2 * rho ** np.arange(25)) - erf.dual_kernel(1.0, rho, 1.0))
        assert gap <= err**2 + 1e-13
    with pytest.raises(ValueError, match="n"):
        erf.hermite_coefficients(0)
    with pytest.raises(ValueError, match="exact"):
        Activation("tanh").hermite_coefficients(3, exact=True)
