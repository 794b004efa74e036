"""Bad formulas and activations (issue 18): every one a ValueError naming the formula and the reason,
or the recovered result; AdaptiveKernel's degenerate inputs."""

from __future__ import annotations

import numpy as np
import pytest

from symtransfer.activations import Activation, available_activations
from symtransfer.errors import ConvergenceError, NoSaddlePointError
from symtransfer.parsing import parse_expression


@pytest.mark.parametrize("text, why", [
    ("0*1e999", "float64 range"),          # was nan
    ("1e999*x", "float64 range"),          # was oo*x
    ("Max()", "Max\\(\\) takes 1 to 16 arguments, got 0"),   # was -oo
    ("log(x, 0)", "log\\(\\) takes 1 argument, got 2"),      # was 0
    ("sqrt(x, 1)", "sqrt\\(\\) takes 1 argument, got 2"),    # was sqrt(x)
    ("exp()", "exp\\(\\) takes 1 argument, got 0"),          # was TypeError
    ("exp(x, x)", "exp\\(\\) takes 1 argument, got 2"),      # was TypeError
    ("x/0", "division by zero"),                             # was zoo*x
    ("x/(x - x)", "division by zero"),
    ("0**(-1) + x", "division by zero"),
    ("1" + "0" * 400 + "*x", "float64 range"),               # huge integer literal
    ("1e308*10*x", "float64 range"),
    ("(-1)**x", "complex"),                                  # was a Numba TypingError
    ("Heaviside(x, 2)", "Heaviside"),
])
def test_bad_formulas_raise_value_error_naming_the_formula(text, why):
    with pytest.raises(ValueError, match=why) as info:
        parse_expression(text)
    assert "activation formula" in str(info.value) and text[:20] in str(info.value)
    with pytest.raises(ValueError):
        Activation(text)


@pytest.mark.parametrize("text, why", [
    ("tan(x)", "pole"), ("1/x", "pole"), ("1/(x - 3)", "pole"), ("log(x)", "pole"),
    ("x**2.5", "not a finite real number"), ("sqrt(x)", "not a finite real number"),
    ("log(x**2 - 1)", "pole|not a finite real"),
])
def test_poles_and_complex_values_are_refused_at_parse_time(text, why):
    """Poles used to be classed linear/bounded (tan "converged") and reached compiled kernels as
    SystemError/ZeroDivisionError at run time."""
    with pytest.raises(ValueError, match=why) as info:
        Activation(text)
    assert repr(text) in str(info.value)


def test_growth_classes_from_the_pieces():
    # Min(x, 1) was refused as superlinear: it is linear at -inf and bounded at +inf
    act = Activation("Min(x, 1)")
    assert act.growth == "linear" and act.asymptotic_slopes == (0.0, 1.0) and act.kinks == (1.0,)
    assert Activation("hardtanh").growth == "bounded"
    assert Activation("Max(0, x) + 0.1*Min(0, x)").asymptotic_slopes == (1.0, pytest.approx(0.1))
    assert Activation("x*exp(-x**2/4)").growth == "bounded"
    assert Activation("sqrt(1 + x**2)").growth == "linear"
    assert Activation("x**3").growth == "superlinear" and Activation("exp(x)").growth == "superlinear"
    assert Activation("elu").linear_pieces is None and Activation("abs").linear_pieces is not None
    loc, pa, pb = Activation("hardtanh").linear_pieces
    np.testing.assert_array_equal(loc, [-1.0, 1.0])
    np.testing.assert_array_equal(pa, [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(pb, [-1.0, 0.0, 1.0])


def test_hermite_of_a_non_square_integrable_activation_is_refused():
    act = Activation("exp(x**2)")
    assert not act.square_integrable
    with pytest.raises(ValueError, match="square integrable"):
        act.hermite_coefficients(4)
    with pytest.raises(ValueError, match="square integrable"):
        act.gaussian_equivalence()
    assert Activation("exp(x**2/8)").square_integrable


def test_registry_and_unknown_names():
    names = available_activations()
    for n in ("sigmoid", "silu", "swish", "elu", "selu", "mish", "gelu", "gelu_tanh", "softsign", "hardtanh",
              "leaky_relu"):
        assert n in names
    with pytest.raises(ValueError, match="registered activations are") as info:
        Activation("swishh")
    assert "sigmoid" in str(info.value) and "Heaviside" not in str(info.value)
    lr = Activation("leaky_relu(0.2)")
    np.testing.assert_allclose(lr(np.array([-2.0, 3.0])), [-0.4, 3.0])
    assert lr.dual_kernel_family == "arc-cosine"
    with pytest.raises(ValueError, match="slope"):
        Activation("leaky_relu(abc)")
    selu = Activation("selu")
    # the self-normalising fixed point: unit variance in, unit variance out (Klambauer et al. 2017)
    assert selu.dual_kernel(1.0, 1.0, 1.0) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(Activation("silu")(np.array([1.0])), [1.0 / (1.0 + np.exp(-1.0))], rtol=1e-15)


# ------------------------------------------------------------------ AdaptiveKernel
@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((8, 3))
    return X, np.sign(X[:, 0])


def test_adaptive_zero_activation_reports_zero_error(data):
    from symtransfer.theory.adaptive import AdaptiveKernel

    X, y = data
    m = AdaptiveKernel("0", n_samples=512, n_chains=8).fit(X, y)
    assert m.mc_error_ == 0.0 and np.all(m.predict(X) == 0.0)


def test_adaptive_all_zero_inputs_are_solved_exactly(data):
    """Was "cannot reshape array of size 0": with every training preactivation 0 the tilt is constant
    and the lazy kernel phi(0)^2 J is exact."""
    from symtransfer.theory.adaptive import AdaptiveKernel

    X, y = data
    m = AdaptiveKernel("softplus", gamma=1.0, n_samples=512, n_chains=8).fit(np.zeros_like(X), y)
    np.testing.assert_allclose(m.Phi_, np.log(2.0) ** 2 * np.ones((8, 8)), rtol=1e-13)
    assert m.mc_error_ == 0.0 and np.all(np.isfinite(m.predict(X)))


def test_adaptive_scaled_data_names_the_data_scale(data, monkeypatch):
    from symtransfer.theory import adaptive

    X, y = data
    with pytest.raises(ValueError, match="X is too large"):
        adaptive.AdaptiveKernel("relu", n_samples=512, n_chains=8).fit(X * 1e150, y)

    # a solver failure on badly scaled data says the scale is the problem, not n_samples
    def failing(*args, **kwargs):
        raise ConvergenceError("no descent (increase n_samples)", [1.0, 0.5])

    monkeypatch.setattr(adaptive, "_solve", failing)
    with pytest.raises(ConvergenceError, match="data scale, not n_samples") as info:
        adaptive.AdaptiveKernel("tanh", n_samples=512, n_chains=8).fit(X * 1e3, y)
    assert info.value.residuals == [1.0, 0.5]
    with pytest.raises(ConvergenceError) as info:
        adaptive.AdaptiveKernel("tanh", n_samples=512, n_chains=8).fit(X, y)
    assert "data scale" not in str(info.value)


def test_adaptive_refuses_superlinear_and_symbolic_agrees(data):
    from symtransfer.symbolic import derive
    from symtransfer.theory.adaptive import AdaptiveKernel

    X, y = data
    with pytest.raises(NoSaddlePointError):
        AdaptiveKernel("x**3").fit(X, y)
    with pytest.raises(NoSaddlePointError, match="gradient"):
        derive("scratch", "x**3", dynamics="equilibrium")
