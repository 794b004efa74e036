"""Activations: one object per nonlinearity, carrying its symbolic form and its compiled kernels.

An :class:`Activation` is the leaf every numerical module uses. It holds

* ``expr`` -- the SymPy expression of ``phi`` in the symbol :data:`x` (expressions are data);
* ``compile()`` -- Numba ``@njit`` scalar functions ``phi`` and ``dphi`` that the simulator, the
  samplers and the DMFT integrator call inside their kernels, so a new activation works everywhere
  without new numerical code;
* ``growth`` -- ``"bounded"``, ``"linear"`` or ``"superlinear"``, which decides whether the
  equilibrium saddle point exists (docs/theory.md, eq. (2.6)).

Registered names have hand-written Numba kernels (exact conventions such as ``relu'(0) = 0``); any
other SymPy expression is lambdified and jitted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numba as nb
import numpy as np
import sympy as sp

__all__ = [
    "x",
    "Activation",
    "CompiledActivation",
    "register_activation",
    "available_activations",
    "get_activation",
]

#: The symbol activations are written in.
x = sp.Symbol("x", real=True)

_SQRT2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


# --- hand-written scalar kernels of the registered activations -----------------------------------
@nb.njit(cache=True)
def _linear(h):
    return h


@nb.njit(cache=True)
def _one(h):
    return 1.0


@nb.njit(cache=True)
def _relu(h):
    return h if h > 0.0 else 0.0


@nb.njit(cache=True)
def _step(h):
    return 1.0 if h > 0.0 else 0.0


@nb.njit(cache=True)
def _tanh(h):
    return math.tanh(h)


@nb.njit(cache=True)
def _dtanh(h):
    t = math.tanh(h)
    return 1.0 - t * t


@nb.njit(cache=True)
def _erf(h):
    return math.erf(h)


@nb.njit(cache=True)
def _derf(h):
    return 2.0 / math.sqrt(math.pi) * math.exp(-h * h)


@nb.njit(cache=True)
def _quadratic(h):
    return h + 0.5 * h * h


@nb.njit(cache=True)
def _dquadratic(h):
    return 1.0 + h


@nb.njit(cache=True)
def _softplus(h):
    # log(1 + e^h) without overflow for large |h|
    if h > 0.0:
        return h + math.log1p(math.exp(-h))
    return math.log1p(math.exp(h))


@nb.njit(cache=True)
def _sigmoid(h):
    if h >= 0.0:
        return 1.0 / (1.0 + math.exp(-h))
    e = math.exp(h)
    return e / (1.0 + e)


@nb.njit(cache=True)
def _gelu(h):
    return 0.5 * h * (1.0 + math.erf(h / 1.4142135623730951))


@nb.njit(cache=True)
def _dgelu(h):
    return 0.5 * (1.0 + math.erf(h / 1.4142135623730951)) + h * math.exp(-0.5 * h * h) / 2.5066282746310002


@nb.njit(cache=True)
def _sin(h):
    return math.sin(h)


@nb.njit(cache=True)
def _cos(h):
    return math.cos(h)


@nb.njit(cache=True)
def _cubic(h):
    return h * h * h


@nb.njit(cache=True)
def _dcubic(h):
    return 3.0 * h * h


@dataclass(frozen=True)
class CompiledActivation:
    """Numba scalar functions of an activation, callable from other ``@njit`` code.

    ``phi(h)`` and ``dphi(h)`` take and return float64.
    """

    phi: Callable
    dphi: Callable


@dataclass(frozen=True)
class _Entry:
    expr: sp.Expr
    compiled: CompiledActivation | None
    growth: str | None


_REGISTRY: dict[str, _Entry] = {}


def register_activation(name: str, expr, *, phi=None, dphi=None, growth: str | None = None,
                        overwrite: bool = False) -> None:
    """Register an activation under ``name``.

    Parameters
    ----------
    name : str
        Lower-case identifier.
    expr : sympy.Expr
        ``phi`` as an expression in :data:`x`.
    phi, dphi : numba dispatcher, optional
        Hand-written ``@njit`` kernels; if omitted they are lambdified from ``expr``.
    growth : {"bounded", "linear", "superlinear"}, optional
        Growth class; derived from ``expr`` when omitted.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"name must be an identifier string, got {name!r}")
    key = name.lower()
    if key in _REGISTRY and not overwrite:
        raise ValueError(f"activation {key!r} is already registered (pass overwrite=True to replace it)")
    expr = sp.sympify(expr)
    if expr.free_symbols - {x}:
        raise ValueError(f"expr must depend on the symbol x only, got free symbols {expr.free_symbols}")
    if growth is not None and growth not in ("bounded", "linear", "superlinear"):
        raise ValueError(f"growth must be 'bounded', 'linear' or 'superlinear', got {growth!r}")
    compiled = CompiledActivation(phi, dphi) if (phi is not None and dphi is not None) else None
    _REGISTRY[key] = _Entry(expr, compiled, growth)


def available_activations() -> list[str]:
    """Names of the registered activations."""
    return sorted(_REGISTRY)


register_activation("linear", x, phi=_linear, dphi=_one, growth="linear")
register_activation("relu", sp.Max(0, x), phi=_relu, dphi=_step, growth="linear")
register_activation("tanh", sp.tanh(x), phi=_tanh, dphi=_dtanh, growth="bounded")
register_activation("erf", sp.erf(x), phi=_erf, dphi=_derf, growth="bounded")
register_activation("quadratic", x + x**2 / 2, phi=_quadratic, dphi=_dquadratic, growth="superlinear")
register_activation("cubic", x**3, phi=_cubic, dphi=_dcubic, growth="superlinear")
register_activation("softplus", sp.log(1 + sp.exp(x)), phi=_softplus, dphi=_sigmoid, growth="linear")
register_activation("gelu", x * (1 + sp.erf(x / sp.sqrt(2))) / 2, phi=_gelu, dphi=_dgelu, growth="linear")
register_activation("sin", sp.sin(x), phi=_sin, dphi=_cos, growth="bounded")


def _heaviside(h, h0=0.0):
    return 1.0 if h > 0.0 else (h0 if h == 0.0 else 0.0)


_heaviside_nb = nb.njit(cache=True)(_heaviside)


def _lambdify_njit(expr: sp.Expr):
    """Jitted scalar function of ``expr``; ``math`` keeps every call Numba-compatible."""
    fn = sp.lambdify(x, expr, modules=[{"Heaviside": _heaviside_nb, "Max": max, "Min": min}, "math"])
    return nb.njit(fn)


def _classify_growth(expr: sp.Expr) -> str:
    """Growth of |phi(x)| at +-infinity relative to |x|."""
    worst = "bounded"
    for direction in (sp.oo, -sp.oo):
        try:
            lim_ratio = sp.limit(sp.Abs(expr) / sp.Abs(x), x, direction)
        except Exception:  # SymPy cannot decide: be conservative
            return "superlinear"
        if lim_ratio in (sp.oo, -sp.oo, sp.zoo) or lim_ratio.has(sp.AccumBounds) and lim_ratio.max == sp.oo:
            return "superlinear"
        try:
            lim_val = sp.limit(sp.Abs(expr), x, direction)
        except Exception:
            lim_val = sp.oo
        bounded = lim_val.is_finite or (isinstance(lim_val, sp.AccumBounds) and lim_val.max.is_finite)
        if not bounded:
            worst = "linear"
    return worst


class Activation:
    """A pointwise nonlinearity ``phi``.

    Parameters
    ----------
    spec : str, sympy.Expr or Activation
        A registered name (see :func:`available_activations`) or a SymPy expression in :data:`x`.

    Examples
    --------
    >>> act = Activation("relu")
    >>> act(np.array([-1.0, 2.0]))
    array([0., 2.])
    """

    def __init__(self, spec):
        if isinstance(spec, Activation):
            self.name, self.expr = spec.name, spec.expr
            self._compiled, self._growth = spec._compiled, spec._growth
            return
        if isinstance(spec, str):
            key = spec.strip().lower()
            if key in _REGISTRY:
                entry = _REGISTRY[key]
                self.name, self.expr = key, entry.expr
                self._compiled, self._growth = entry.compiled, entry.growth
                return
            from .parsing import parse_expression

            expr = parse_expression(spec)
            self.name = spec.strip()
        elif isinstance(spec, sp.Basic):
            expr = sp.sympify(spec)
            self.name = str(expr)
        else:
            raise ValueError(
                f"activation must be a registered name ({', '.join(available_activations())}), a SymPy "
                f"expression in x, or an Activation; got {spec!r}"
            )
        if expr.free_symbols - {x}:
            raise ValueError(f"activation expression must depend on x only, got symbols {expr.free_symbols}")
        self.expr = expr
        self._compiled = None
        self._growth = None

    # ------------------------------------------------------------------ symbolic side
    def derivative(self) -> sp.Expr:
        """``phi'`` as a SymPy expression."""
        return sp.diff(self.expr, x)

    @property
    def growth(self) -> str:
        """``"bounded"``, ``"linear"`` or ``"superlinear"`` growth of ``|phi|`` at infinity."""
        if self._growth is None:
            self._growth = _classify_growth(self.expr)
        return self._growth

    # ------------------------------------------------------------------ numerical side
    def compile(self) -> CompiledActivation:
        """Numba scalar kernels ``phi`` and ``dphi`` (compiled once per activation object)."""
        if self._compiled is None:
            self._compiled = CompiledActivation(
                _lambdify_njit(self.expr), _lambdify_njit(self.derivative())
            )
        return self._compiled

    def __call__(self, h) -> np.ndarray:
        """``phi`` applied elementwise (float64)."""
        return _apply(self.compile().phi, h)

    def prime(self, h) -> np.ndarray:
        """``phi'`` applied elementwise (float64)."""
        return _apply(self.compile().dphi, h)

    def __repr__(self) -> str:
        return f"Activation({self.name!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Activation) and sp.simplify(self.expr - other.expr) == 0

    def __hash__(self) -> int:
        return hash(sp.srepr(self.expr))


def get_activation(spec) -> Activation:
    """``Activation(spec)``, passing an existing Activation through unchanged."""
    return spec if isinstance(spec, Activation) else Activation(spec)


# The function argument makes Numba specialise per activation; such specialisations cannot be
# cached on disk (the type key holds an address), so no cache=True here.
@nb.njit(parallel=True)
def _map_kernel(f, flat):
    out = np.empty_like(flat)
    for i in nb.prange(flat.shape[0]):
        out[i] = f(flat[i])
    return out


def _apply(f, h) -> np.ndarray:
    arr = np.asarray(h, dtype=np.float64)
    flat = np.ascontiguousarray(arr).reshape(-1)
    return _map_kernel(f, flat).reshape(arr.shape)
