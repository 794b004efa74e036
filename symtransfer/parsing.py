"""Safe parsing of user-supplied activation formulas.

A formula such as ``"x*exp(-x**2/4)"`` is first parsed by Python's :mod:`ast` and every node is
checked against a whitelist (numbers, the symbol ``x``, arithmetic, calls of whitelisted functions
by bare name with their number of arguments). The SymPy expression is then built node by node from
the checked tree -- nothing is ever passed to ``eval`` or ``sympify`` -- so no attribute access,
dunder name, lambda, import, subscript or comprehension reaches an evaluator. Numbers outside the
float64 range, division by zero, complex powers and non-finite results are refused with a
``ValueError`` that names the formula and the reason.
"""

from __future__ import annotations

import ast
import math

import sympy as sp

__all__ = ["parse_expression", "ALLOWED_FUNCTIONS", "MAX_LENGTH"]

MAX_LENGTH = 500

_x = sp.Symbol("x", real=True)

#: Functions a formula may call, by name.
ALLOWED_FUNCTIONS = {
    "exp": sp.exp, "log": sp.log, "sqrt": sp.sqrt, "sin": sp.sin, "cos": sp.cos, "tan": sp.tan,
    "sinh": sp.sinh, "cosh": sp.cosh, "tanh": sp.tanh, "atan": sp.atan, "asinh": sp.asinh,
    "erf": sp.erf, "erfc": sp.erfc, "Abs": sp.Abs, "abs": sp.Abs, "Max": sp.Max, "max": sp.Max,
    "Min": sp.Min, "min": sp.Min, "sign": sp.sign, "Heaviside": sp.Heaviside,
}
_ALLOWED_NAMES = {"x": _x, "pi": sp.pi, "E": sp.E}

# (min, max) number of positional arguments of each function
_ARITY = {name: (1, 1) for name in ALLOWED_FUNCTIONS}
_ARITY.update({"Max": (1, 16), "max": (1, 16), "Min": (1, 16), "min": (1, 16), "Heaviside": (1, 2)})
_FLOAT_MAX = 1.7976931348623157e308

_ALLOWED_NODES = (
    ast.Expression, ast.BinOp, ast.UnaryOp, ast.Call, ast.Name, ast.Load, ast.Constant,
    ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.USub, ast.UAdd,
)


def _reject(text: str, why: str):
    shown = text if len(text) <= 80 else text[:60] + "..." + text[-10:]
    raise ValueError(f"activation formula {shown!r} rejected: {why}")


def parse_expression(text: str) -> sp.Expr:
    """Parse ``text`` into a SymPy expression in ``x``, or raise ``ValueError``.

    Accepted: numbers, ``x``, ``pi``, ``E``, ``+ - * / **`` and calls of
    :data:`ALLOWED_FUNCTIONS` by name. Anything else is rejected before evaluation.
    """
    if not isinstance(text, str):
        raise ValueError(f"activation formula must be a string, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        _reject(text[:40] + "...", f"longer than {MAX_LENGTH} characters")
    if "__" in text:
        _reject(text, "dunder names are not allowed")
    src = text.replace("^", "**")
    try:
        tree = ast.parse(src, mode="eval")
    except SyntaxError as exc:
        _reject(text, f"not a valid formula ({exc.msg})")
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            _reject(text, f"{type(node).__name__} is not allowed (only arithmetic, x and whitelisted functions)")
        if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float)) or (
            isinstance(node, ast.Constant) and isinstance(node.value, bool)
        ):
            _reject(text, f"constant {node.value!r} is not a number")
        if isinstance(node, ast.Name) and node.id not in _ALLOWED_NAMES and node.id not in ALLOWED_FUNCTIONS:
            _reject(text, f"unknown name {node.id!r}; allowed: x, pi, E and {sorted(ALLOWED_FUNCTIONS)}")
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in ALLOWED_FUNCTIONS:
                _reject(text, "only whitelisted functions may be called, by bare name")
            if node.keywords:
                _reject(text, "keyword arguments are not allowed")
            lo, hi = _ARITY[node.func.id]
            if not lo <= len(node.args) <= hi:
                want = f"{lo}" if lo == hi else f"{lo} to {hi}"
                _reject(text, f"{node.func.id}() takes {want} argument{'s' if hi > 1 else ''}, got {len(node.args)}")
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            if isinstance(node.value, float) and not math.isfinite(node.value):
                _reject(text, "a number in it is outside the float64 range (it would be infinite)")
            if isinstance(node.value, int) and abs(node.value) > _FLOAT_MAX:
                _reject(text, "an integer in it is outside the float64 range")
    try:
        expr = _build(tree.body, text)
    except ValueError:
        raise
    except (TypeError, KeyError, ArithmeticError, RecursionError, AttributeError) as exc:
        _reject(text, f"SymPy cannot build it ({type(exc).__name__}: {exc})")
    if not isinstance(expr, sp.Expr):
        _reject(text, "it is not a numeric expression")
    if expr.has(sp.nan, sp.zoo, sp.oo, -sp.oo):
        _reject(text, f"it evaluates to a non-finite value ({expr})")
    if expr.has(sp.I):
        _reject(text, f"it is complex-valued ({expr})")
    for atom in expr.atoms(sp.Number):
        if abs(atom) > _FLOAT_MAX:
            _reject(text, "a number in it is outside the float64 range")
    if expr.free_symbols - {_x}:
        _reject(text, f"it depends on symbols other than x: {expr.free_symbols - {_x}}")
    return expr


def _build(node, text):
    """Construct the SymPy expression from the validated tree (no eval anywhere)."""
    if isinstance(node, ast.Constant):
        v = node.value
        return sp.Integer(v) if isinstance(v, int) else sp.Float(v) if not float(v).is_integer() else sp.Integer(int(v))
    if isinstance(node, ast.Name):
        return _ALLOWED_NAMES[node.id] if node.id in _ALLOWED_NAMES else _reject(text, f"{node.id} is a function")
    if isinstance(node, ast.UnaryOp):
        operand = _build(node.operand, text)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
        a, b = _build(node.left, text), _build(node.right, text)
        op = node.op
        if isinstance(op, ast.Add):
            return a + b
        if isinstance(op, ast.Sub):
            return a - b
        if isinstance(op, ast.Mult):
            return a * b
        if isinstance(op, ast.Div):
            if b.is_number and b.is_zero:
                _reject(text, "division by zero")
            return a / b
        if isinstance(op, ast.Pow):
            if b.is_number and abs(complex(b)) > 64:
                _reject(text, "exponents above 64 in absolute value are not allowed")
            if a.is_number and b.is_number:
                # nested powers of numbers, e.g. ((9**64)**64)**64, would make SymPy build integers with
                # billions of digits: bound the size of the result before evaluating it
                try:
                    size = abs(complex(b)) * math.log(abs(complex(a)) + 1.0)
                except (OverflowError, ValueError, TypeError):
                    size = math.inf
                if size > 710.0:
                    _reject(text, "a number in it exceeds the float64 range")
            if a.is_number and a.is_negative and not (b.is_number and b.is_integer):
                _reject(text, f"({a})**({b}) is complex for non-integer exponents")
            if a.is_number and a.is_zero and b.is_number and b.is_negative:
                _reject(text, "division by zero (0 to a negative power)")
            return a**b
    if isinstance(node, ast.Call):
        args = [_build(arg, text) for arg in node.args]
        name = node.func.id
        if name == "Heaviside" and len(args) == 2 and not (args[1].is_number and 0 <= args[1] <= 1):
            _reject(text, "the second argument of Heaviside (its value at 0) must be a number in [0, 1]")
        return ALLOWED_FUNCTIONS[name](*args)
    _reject(text, f"{type(node).__name__} is not allowed")
