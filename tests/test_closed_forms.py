"""Derived closed-form dual kernels (docs/symbolic.md, section 1) against independent quadrature, at
generic and degenerate covariances; Price's theorem; equivalent spellings; Gaussian equivalence and
exact Hermite coefficients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp

from symtransfer.activations import Activation, q11, q12, q22, x

# generic and degenerate covariances: rho -> +-1 (exactly and 1e-9 away), q12 = 0, unequal variances
_PTS = [(1.0, 0.3, 0.8), (2.0, -1.0, 1.5), (0.4, 0.0, 2.2), (1.3, math.sqrt(1.3 * 0.6), 0.6),
        (1.3, -math.sqrt(1.3 * 0.6), 0.6), (0.9, 0.9 * (1 - 1e-9), 0.9), (2.5, 0.1, 0.05), (1.0, 1.0, 1.0)]
A_, C_, B_ = (np.array(v) for v in zip(*_PTS))

# neural-tangents' analytic elementwise kernels (ReLU/ABReLU/leaky, abs, erf, GELU, sin/cos, Gaussian/RBF,
# exp, sign, monomials, rectified monomials) and families a lookup table does not have
CASES = [
    ("relu", "arc-cosine"), ("leaky_relu(0.2)", "arc-cosine"), ("Max(0, x) - 0.3*Max(0, -x)", "arc-cosine"),
    ("0.3*Min(0, x) + 2*Max(0, x)", "arc-cosine"),  # ABReLU
    ("abs", "arc-cosine"), ("x*Heaviside(x)", "arc-cosine"), ("Max(0, x)**2", "arc-cosine"),
    ("Max(0, x)**3", "arc-cosine"), ("sign", "arc-cosine"), ("step", "arc-cosine"),
    ("x + Max(0, x)**2 - 2*Heaviside(-x)", "arc-cosine"),
    ("erf", "price"), ("erf(2*x)", "price"), ("x*erf(x)", "price"), ("gelu", "price"), ("x + erf(x)", "price"),
    ("sin", "gaussian"), ("cos(2*x)", "gaussian"), ("sin(x + 1)", "gaussian"),
    ("sqrt(2)*sin(sqrt(2)*x + pi/4)", "gaussian"),  # neural-tangents' Rbf: kernel exp(-|x - x'|^2) ("x*cos(x)", "gaussian"), ("exp(x)", "gaussian"),
    ("exp(-x**2/2)", "gaussian"), ("x*exp(-x**2/4)", "gaussian"), ("x**2*exp(-x**2)", "gaussian"),
    ("x**3", "gaussian"), ("quadratic", "gaussian"),
]


def _scale(act, A, B):
    """|kappa(q11, q12, q22)| <= sqrt(kappa(q11, q11, q11) kappa(q22, q22, q22)) (Cauchy-Schwarz): the
    natural size against which an error is relative, also where kappa itself crosses 0."""
    return np.sqrt(act.dual_kernel(A, A, A) * act.dual_kernel(B, B, B))


@pytest.mark.parametrize("spec, family", CASES)
def test_closed_form_matches_quadrature(spec, family):
    act = Activation(spec)
    assert act.dual_kernel_method == "closed form" and act.dual_kernel_family == family
    kern = act._kernel()
    closed = act.dual_kernel(A_, C_, B_)
    quad = kern.quadrature(A_, C_, B_)
    rel = np.abs(closed - quad) / np.maximum(np.maximum(np.abs(quad), _scale(act, A_, B_)), 1e-300)
    assert np.max(rel) <= 1e-10, (spec, rel)
    dk = act._dkernel()
    if dk.derived is not None:
        dclosed = act.derivative_dual_kernel(A_, C_, B_)
        dquad = dk.quadrature(A_, C_, B_)
        dscale = np.sqrt(act.derivative_dual_kernel(A_, A_, A_) * act.derivative_dual_kernel(B_, B_, B_))
        drel = np.abs(dclosed - dquad) / np.maximum(np.maximum(np.abs(dquad), dscale), 1e-300)
        assert np.max(drel) <= 1e-10, (spec, drel)


@pytest.mark.parametrize("spec", ["relu", "Max(0, x)**2", "gelu", "x*exp(-x**2/4)", "sin", "erf"])
def test_price_theorem(spec):
    """d kappa/d q12 = E[phi'(u) phi'(v)] (THEORY.md, section 8): the derivative of the derived kernel
    against the separately derived tangent kernel, at interior points."""
    act = Activation(spec)
    dk = sp.lambdify((q11, q12, q22), sp.diff(act.dual_kernel_expr(), q12), "numpy")
    for a, c, b in [(1.0, 0.3, 0.8), (2.0, -1.0, 1.5), (0.4, 0.0, 2.2)]:
        assert float(dk(a, c, b)) == pytest.approx(act.derivative_dual_kernel(a, c, b), rel=1e-11, abs=1e-14)


def test_equivalent_spellings_give_the_same_kernel():
    ref = Activation("relu")
    for spec in ["x*Heaviside(x)", "(x + Abs(x))/2", "Max(x, 0)", "Max(0, x)**1"]:
        act = Activation(spec)
        assert act.dual_kernel_family == "arc-cosine"
        np.testing.assert_allclose(act.dual_kernel(A_, C_, B_), ref.dual_kernel(A_, C_, B_), rtol=1e-14, atol=1e-15)
    sq = Activation("Max(0, x)**2")
    np.testing.assert_allclose(Activation("x**2*Heaviside(x)").dual_kernel(A_, C_, B_), sq.dual_kernel(A_, C_, B_),
                               rtol=1e-14)
    # Cho & Saul's arc-cosine kernel of degree 2 at unit variances: (3 sin t cos t + (pi - t)(1 + 2 cos^2 t))/(2 pi)
    for rho in (-0.7, 0.0, 0.4):
        t = math.acos(rho)
        j2 = (3 * math.sin(t) * math.cos(t) + (math.pi - t) * (1 + 2 * math.cos(t) ** 2)) / (2 * math.pi)
        assert sq.dual_kernel(1.0, rho, 1.0) == pytest.approx(j2, rel=1e-14)


def test_known_closed_forms():
    # Williams' arcsine kernel, the ReLU kernel, the exact GELU variance at q = 1 (numerical constant
    # from a 400-node Gauss-Legendre rule on [-12, 12])
    assert sp.simplify(Activation("erf").dual_kernel_expr()
                       - 2 / sp.pi * sp.asin(2 * q12 / sp.sqrt((1 + 2 * q11) * (1 + 2 * q22)))) == 0
    assert Activation("sin").dual_kernel(0.5, 0.2, 0.7) == pytest.approx(math.exp(-0.6) * math.sinh(0.2), rel=1e-14)
    t, w = np.polynomial.legendre.leggauss(400)
    z, wz = 12 * t, 12 * w * np.exp(-72 * t * t) / math.sqrt(2 * math.pi)
    from scipy.special import erf
    gelu = 0.5 * z * (1 + erf(z / math.sqrt(2)))
    assert Activation("gelu").dual_kernel(1.0, 1.0, 1.0) == pytest.approx(float(wz @ gelu**2), rel=1e-13)


def test_zero_variance_and_compiled_kernels():
    step, relu, erf = Activation("step"), Activation("relu"), Activation("erf")
    # a zero variance pins u at 0, where the step takes H(0) = 1/2 (the derivative convention is 0)
    assert step.dual_kernel(0.0, 0.0, 1.0) == pytest.approx(0.25, abs=1e-15)
    assert step.dual_kernel(0.0, 0.0, 0.0) == pytest.approx(0.25, abs=1e-15)
    assert relu.derivative_dual_kernel(0.0, 0.0, 1.0) == 0.0
    for act in (relu, erf):  # arc-cosine (zero-variance branch) and Price kernels compiled by Numba
        comp = act.compile()
        for a, c, b in [(1.0, 0.3, 0.8), (0.0, 0.0, 1.3), (2.0, -math.sqrt(2.0 * 0.7), 0.7)]:
            assert comp.kappa(a, c, b) == pytest.approx(act.dual_kernel(a, c, b), rel=1e-13, abs=1e-15)
            assert comp.dkappa(a, c, b) == pytest.approx(act.derivative_dual_kernel(a, c, b), rel=1e-13, abs=1e-15)


def test_quadrature_only_where_no_closed_form():
    for spec in ["tanh", "softplus", "sigmoid", "silu", "gelu_tanh", "hardtanh", "Max(0, x - 1)"]:
        act = Activation(spec)
        assert act.dual_kernel_method == "polar quadrature" and act.dual_kernel_family is None
        assert "quadrature" in act.dual_kernel_description
    assert Activation("relu", closed_form=False).dual_kernel_method == "polar quadrature"


def test_gaussian_equivalence_and_exact_hermite():
    mu0, mu1, mus = Activation("relu").gaussian_equivalence(exact=True)
    assert sp.simplify(mu0 - 1 / sp.sqrt(2 * sp.pi)) == 0 and mu1 == sp.Rational(1, 2)
    assert sp.simplify(mus**2 - (sp.Rational(1, 4) - 1 / (2 * sp.pi))) == 0
    # numerical path (tanh has no closed form) against the Hermite coefficients, which are independent
    for spec in ("tanh", "gelu"):
        act = Activation(spec)
        ge = act.gaussian_equivalence(1.0)
        c, err = act.hermite_coefficients(60, return_error=True)
        assert ge.mu0 == pytest.approx(c[0], abs=1e-12) and ge.mu1 == pytest.approx(c[1], abs=1e-12)
        assert ge.mustar**2 == pytest.approx(np.sum(c[2:] ** 2) + err**2, abs=1e-11)
    # the variance rescales the preactivation: mu1 = sqrt(q) E[phi'(u)] for erf is 2 sqrt(q/pi)/sqrt(1 + 2q)
    q = 0.7
    assert Activation("erf").gaussian_equivalence(q).mu1 == pytest.approx(
        2 * math.sqrt(q / math.pi) / math.sqrt(1 + 2 * q), rel=1e-13)
    gelu = Activation("gelu")
    exact = gelu.hermite_coefficients(6, exact=True)
    np.testing.assert_allclose([float(e) for e in exact], gelu.hermite_coefficients(6), atol=1e-13)


@pytest.mark.parametrize("spec", ["gelu", "x*exp(-x**2/4)"])
def test_adaptive_lazy_limit_closed_form_agrees_with_quadrature_and_is_faster(spec):
    """AdaptiveKernel at gamma = 0 (NNGP kernel ridge regression, eq. (2.7)) with the derived kernel and
    with the quadrature path, back to back: same kernel and predictions, the closed form faster (the
    ratio in benchmarks/bench_symbolic.py is ~10^2-10^3)."""
    import time

    from symtransfer.theory.adaptive import AdaptiveKernel

    rng = np.random.default_rng(5)
    X, Xt = rng.standard_normal((40, 6)), rng.standard_normal((30, 6))
    y = np.tanh(X[:, 0])
    closed, quad = Activation(spec), Activation(spec, closed_form=False)
    closed.dual_kernel(1.0, 0.5, 1.0)  # the one-off derivation is not part of the comparison
    times, preds, kernels = {}, {}, {}
    for name, act in (("closed", closed), ("quad", quad)):
        t0 = time.perf_counter()
        m = AdaptiveKernel(act, gamma=0.0).fit(X, y)
        preds[name] = m.predict(Xt)
        times[name] = time.perf_counter() - t0
        kernels[name] = m.Phi_
    np.testing.assert_allclose(kernels["closed"], kernels["quad"], rtol=0, atol=1e-11)
    np.testing.assert_allclose(preds["closed"], preds["quad"], rtol=0, atol=1e-10)
    ratio = times["quad"] / times["closed"]
    print(f"{spec}: lazy AdaptiveKernel quadrature/closed-form time ratio {ratio:.0f}")
    assert ratio > 3.0


@pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")  # quad at its round-off floor
def test_conditional_means_closed_form_against_quadrature():
    """E[phi(m + s xi)] derived on the activation (erf via Stein's lemma with a mean) against adaptive
    quadrature (scipy.integrate.quad), including s -> 0 where m^2/(2q) terms must cancel symbolically."""
    from scipy import integrate

    for spec in ["gelu", "x*exp(-x**2/4)", "x**2*exp(-x**2)", "erf(2*x)", "x*erf(x)", "exp(x)"]:
        act = Activation(spec)
        f = act.conditional_mean_njit()
        phi = sp.lambdify(x, act.expr, ["math", "scipy"])
        for m, s in [(0.3, 0.7), (-1.2, 0.05), (2.0, 1.5), (0.5, 0.0), (3.0, 1e-9)]:
            if s < 1e-6:
                ref = float(phi(m))
            else:
                ref = integrate.quad(lambda z: phi(m + s * z) * math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi),
                                     -40, 40, points=[-m / s, 0.0], epsabs=1e-15, epsrel=1e-14, limit=400)[0]
            assert f(m, s) == pytest.approx(ref, rel=1e-11, abs=1e-14), (spec, m, s)
    assert Activation("tanh").conditional_mean_expr() is None and Activation("relu").conditional_mean_expr() is None


def test_adaptive_predictions_use_the_closed_conditional_means():
    """gamma > 0 with D > P: test inputs leave the sampled span and enter through E[phi(m + s xi)];
    the derived closed form and the Gauss-Hermite path give the same predictions, the closed form faster."""
    import time

    from symtransfer.theory.adaptive import AdaptiveKernel

    rng = np.random.default_rng(2)
    X, Xt = rng.standard_normal((8, 20)), rng.standard_normal((400, 20))
    y = np.tanh(X[:, 0])
    preds, times = {}, {}
    for name, act in (("closed", Activation("gelu")), ("quad", Activation("gelu", closed_form=False))):
        m = AdaptiveKernel(act, gamma=1.0, n_samples=2048, n_chains=16, seed=0).fit(X, y)
        m.predict(Xt[:2])  # compile
        t0 = time.perf_counter()
        preds[name] = m.predict(Xt)
        times[name] = time.perf_counter() - t0
    np.testing.assert_allclose(preds["closed"], preds["quad"], rtol=0, atol=1e-12)
    print(f"gelu predictions at gamma = 1: quadrature/closed-form time ratio {times['quad'] / times['closed']:.1f}")
    assert times["quad"] > times["closed"]
