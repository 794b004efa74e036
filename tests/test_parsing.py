"""Safe parsing of activation formulas: accepted grammar, rejected attacks, no side effects."""

from __future__ import annotations

import os

import numpy as np
import pytest
import sympy as sp

from symtransfer.activations import Activation, x
from symtransfer.parsing import MAX_LENGTH, parse_expression


@pytest.mark.parametrize("text, expected", [
    ("x*exp(-x**2/4)", x * sp.exp(-x**2 / 4)),
    ("x^2 + 1", x**2 + 1),
    ("tanh(2*x) - x/3", sp.tanh(2 * x) - x / 3),
    ("Max(0, x) + 0.5*Min(0, x)", sp.Max(0, x) + sp.Rational(1, 2) * sp.Min(0, x)),
    ("sqrt(pi)*erf(x) + E", sp.sqrt(sp.pi) * sp.erf(x) + sp.E),
    ("abs(x)**1.5", sp.Abs(x)**sp.Float(1.5)),
])
def test_accepted_formulas(text, expected):
    expr = parse_expression(text)
    f, g = sp.lambdify(x, expr), sp.lambdify(x, expected)
    pts = np.array([-1.7, -0.2, 0.3, 2.2])
    np.testing.assert_allclose(f(pts), g(pts), rtol=1e-14)


MALICIOUS = [
    "__import__('os').system('touch {marker}')",
    "exp.__globals__['os'].system('touch {marker}')",
    "().__class__.__bases__[0].__subclasses__()",
    "x.__class__",
    "(lambda: open('{marker}', 'w'))()",
    "open('{marker}', 'w')",
    "eval('1')",
    "exec('import os')",
    "getattr(x, 'func')",
    "[c for c in ().__class__.__base__.__subclasses__()]",
    "x if x else 0",
    "sympify('x')",
    "Symbol('y')",
    "x; import os",
    "import os",
    "f'{{x}}'",
    "'abc'",
    "exp(x=1)",
    "x[0]",
    "y + x",
    "exp(x).func",
    "x ** 1000",
    "((9**64)**64)**64",
    "x + " * (MAX_LENGTH // 4) + "x",
    "True + x",
    "x @ x",
    "x < 1",
]


@pytest.mark.parametrize("template", MALICIOUS)
def test_malicious_strings_are_rejected_without_side_effects(template, tmp_path):
    marker = tmp_path / "pwned"
    text = template.format(marker=marker)
    with pytest.raises(ValueError, match="rejected|must be"):
        parse_expression(text)
    with pytest.raises(ValueError):
        Activation(text)
    assert not marker.exists()
    assert not os.path.exists(str(marker))


def test_non_string_and_registered_names():
    with pytest.raises(ValueError, match="string"):
        parse_expression(3.0)
    assert Activation("relu").expr == sp.Max(0, x)
    act = Activation("x*exp(-x**2/4)")
    assert act.growth == "bounded"
    assert act(np.array([2.0]))[0] == pytest.approx(2.0 * np.exp(-1.0), rel=1e-15)
