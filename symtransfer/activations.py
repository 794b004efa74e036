"""Activations: one object per nonlinearity, carrying its symbolic form and its compiled kernels.

An :class:`Activation` is the leaf every numerical module uses. It holds

* ``expr`` -- the SymPy expression of ``phi`` in the symbol :data:`x` (expressions are data);
* ``compile()`` -- Numba ``@njit`` scalar functions ``phi`` and ``dphi`` that the simulator, the
  samplers and the DMFT integrator call inside their kernels, so a new activation works everywhere
  without new numerical code;
* ``growth`` -- ``"bounded"``, ``"linear"`` or ``"superlinear"``, which decides whether the
  equilibrium saddle point exists (docs/theory.md, eq. (2.6));
* ``dual_kernel(q11, q12, q22)`` = ``E[phi(u)phi(v)]`` and ``derivative_dual_kernel`` for centred
  Gaussian pairs -- closed forms where they exist (polynomials by Wick's theorem, arc-cosine,
  arcsine, Gaussian, trigonometric and exponential families), polar quadrature otherwise -- and
  ``hermite_coefficients(n)``; see docs/symbolic.md, section 1.

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
    "apply_elementwise",
    "q11",
    "q12",
    "q22",
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

    ``phi(h)`` and ``dphi(h)`` take and return float64. ``kappa(q11, q12, q22)`` and
    ``dkappa(q11, q12, q22)`` are the dual kernels ``E[phi(u)phi(v)]`` and ``E[phi'(u)phi'(v)]``
    (see :meth:`Activation.dual_kernel`); they are ``None`` only for objects built by hand.
    """

    phi: Callable
    dphi: Callable
    kappa: Callable | None = None
    dkappa: Callable | None = None


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


_NJIT_CACHE: dict[str, Callable] = {}


def _lambdify_njit(expr: sp.Expr):
    """Jitted scalar function of ``expr``; ``math`` keeps every call Numba-compatible.

    Cached by expression so that equal activations share one dispatcher, and with it every kernel
    Numba has already specialised for it (each specialisation costs seconds of compilation).
    """
    expr = _almost_everywhere(expr)
    key = sp.srepr(expr)
    if key not in _NJIT_CACHE:
        fn = sp.lambdify(x, expr, modules=[{"Heaviside": _heaviside_nb, "Max": max, "Min": min}, "math"])
        _NJIT_CACHE[key] = nb.njit(fn)
    return _NJIT_CACHE[key]


def _almost_everywhere(expr: sp.Expr) -> sp.Expr:
    """``expr`` with Dirac deltas (derivatives of steps) dropped: the a.e. derivative Gaussian
    expectations see."""
    if expr.has(sp.DiracDelta):
        expr = expr.replace(sp.DiracDelta, lambda *args: sp.S.Zero)
    return expr


def _derivative_convention(expr: sp.Expr) -> sp.Expr:
    """a.e. derivative with every step set to 0 at its jump, the convention of the hand-written
    kernels (``relu'(0) = 0``); it matters only where a variance is exactly 0."""
    expr = _almost_everywhere(expr)
    if expr.has(sp.Heaviside):
        expr = expr.replace(sp.Heaviside, lambda a, *h0: sp.Heaviside(a, 0))
    return expr


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
    def kinks(self) -> tuple:
        """Sorted real points where ``phi`` switches branch (``()`` for smooth activations)."""
        if not _has_kink(self.expr):
            return ()
        return tuple(sorted(_kink_points(self.expr)))

    @property
    def growth(self) -> str:
        """``"bounded"``, ``"linear"`` or ``"superlinear"`` growth of ``|phi|`` at infinity."""
        if self._growth is None:
            self._growth = _classify_growth(self.expr)
        return self._growth

    # ------------------------------------------------------------------ numerical side
    def _base_compiled(self) -> CompiledActivation:
        if self._compiled is None:
            self._compiled = CompiledActivation(_lambdify_njit(self.expr),
                                                _lambdify_njit(_derivative_convention(self.derivative())))
        return self._compiled

    def compile(self) -> CompiledActivation:
        """Numba scalar kernels ``phi``, ``dphi``, ``kappa`` and ``dkappa`` (built once per object).

        ``kappa``/``dkappa`` are closed forms compiled from their SymPy expressions when one is
        known, otherwise the quadrature of :meth:`dual_kernel` as an ``@njit`` scalar function.
        """
        base = self._base_compiled()
        if base.kappa is None or base.dkappa is None:
            base = CompiledActivation(base.phi, base.dphi, self._kernel().scalar_njit(),
                                      self._dkernel().scalar_njit())
            self._compiled = base
        return base

    # ------------------------------------------------------------------ dual kernels
    def _kernel(self) -> "_Kernel":
        return _get_kernel(self.expr, self._base_compiled().phi)

    def _dkernel(self) -> "_Kernel":
        return _get_kernel(_derivative_convention(self.derivative()), self._base_compiled().dphi)

    def dual_kernel(self, q11, q12, q22):
        """``E[phi(u) phi(v)]`` for a centred Gaussian pair (docs/symbolic.md, section 1).

        Parameters
        ----------
        q11, q22 : array_like
            Variances of ``u`` and ``v`` (>= 0).
        q12 : array_like
            Covariance, ``|q12| <= sqrt(q11 q22)``; the degenerate edge ``q12 = +-sqrt(q11 q22)`` and
            zero variances are allowed. The three arguments broadcast against each other.

        Returns
        -------
        numpy.ndarray or numpy.float64
            float64 of the broadcast shape.

        Notes
        -----
        A closed form is used when ``phi`` is a polynomial (Wick's theorem) or ``c f(b x)`` with ``f``
        one of ReLU (arc-cosine kernel), Heaviside (degree-0 arc-cosine), erf (arcsine kernel),
        ``exp(-x**2)``, ``sin``, ``cos``, ``exp``; see :meth:`dual_kernel_expr` and
        :attr:`dual_kernel_method`. Otherwise quadrature in polar coordinates of the standardised
        pair: Gauss-Legendre with 32 nodes on each angular sector between the rays where ``u`` or
        ``v`` changes sign, 72 nodes in the radius on ``[0, 10]``. Measured absolute error for
        tanh, erf, softplus, GELU: below 1e-13 for variances <= 3, below 2e-11 at variance 10,
        ~1e-9 at variance 30; for ReLU-like activations (piecewise polynomial, kinks at 0) below
        1e-13. Kinks away from 0, or non-smooth power laws such as ``|x|**1.5``, converge only
        algebraically (``|x|**1.5``: ~2e-8 at unit variance).
        """
        return self._kernel()(q11, q12, q22)

    def derivative_dual_kernel(self, q11, q12, q22):
        """``E[phi'(u) phi'(v)]`` for a centred Gaussian pair; same conventions as :meth:`dual_kernel`."""
        return self._dkernel()(q11, q12, q22)

    def dual_kernel_expr(self, derivative: bool = False):
        """The closed form of the dual kernel as a SymPy expression in :data:`q11`, :data:`q12`,
        :data:`q22`, or ``None`` when only quadrature is available."""
        return (self._dkernel() if derivative else self._kernel()).symbolic

    @property
    def dual_kernel_method(self) -> str:
        """``"closed form"``, ``"gauss-hermite"`` or ``"polar quadrature"``."""
        return self._kernel().method

    def hermite_coefficients(self, n: int, *, exact: bool | None = None, return_error: bool = False):
        """Coefficients ``c_k = E[phi(z) He_k(z)] / sqrt(k!)``, ``z ~ N(0, 1)``, ``k < n``.

        With these normalised probabilists' Hermite polynomials ``phi = sum_k c_k He_k/sqrt(k!)`` in
        ``L2(N(0,1))`` and ``E[phi(u)phi(v)] = sum_k c_k^2 rho^k`` for unit variances (Mehler).

        Parameters
        ----------
        n : int
            Number of coefficients (1 <= n <= 200).
        exact : bool, optional
            Return SymPy numbers computed exactly; default: True for polynomials, False otherwise
            (requesting it for a non-polynomial raises ``ValueError``).
        return_error : bool
            Also return the truncation error ``sqrt(E[phi(z)^2] - sum_{k<n} c_k^2)``, the L2 norm of
            the discarded part of the expansion (0 for a polynomial of degree < n).

        Notes
        -----
        Numerically the projections are computed by Gauss-Legendre quadrature on ``[-12, 12]`` split
        at the kinks of ``phi``, 2 x 240 nodes per piece: each coefficient is accurate to ~1e-13 for
        piecewise-analytic ``phi``.
        """
        from ._validation import check_int

        n = check_int("n", n, low=1, high=200)
        is_poly = self.expr.is_polynomial(x)
        if exact is None:
            exact = bool(is_poly)
        if exact and not is_poly:
            raise ValueError("exact=True needs a polynomial activation; use exact=False")
        if exact:
            z = sp.Symbol("z", real=True)
            poly = sp.Poly(self.expr.subs(x, z), z)
            coeffs = []
            for k in range(n):
                prod = sp.Poly(sp.expand(poly.as_expr() * sp.hermite_prob(k, z)), z)
                mom = sum(cm * (sp.factorial2(m - 1) if m % 2 == 0 else 0)
                          for (m,), cm in prod.terms())
                coeffs.append(sp.nsimplify(mom / sp.sqrt(sp.factorial(k))))
            if not return_error:
                return coeffs
            norm2 = sum(cm * (sp.factorial2(m - 1) if m % 2 == 0 else 0)
                        for (m,), cm in sp.Poly(sp.expand(poly.as_expr() ** 2), z).terms())
            return coeffs, sp.sqrt(sp.nsimplify(norm2 - sum(c**2 for c in coeffs)))
        zs, ws = _hermite_rule(self.expr)
        with np.errstate(over="ignore"):
            vals = np.asarray(_numpy_function(self.expr)(zs), dtype=np.float64) * np.ones_like(zs)
        h_prev = np.zeros_like(zs)
        h = np.ones_like(zs)
        coeffs = np.empty(n)
        for k in range(n):
            coeffs[k] = np.dot(ws, vals * h)
            h_prev, h = h, (zs * h - math.sqrt(k) * h_prev) / math.sqrt(k + 1)
        if not return_error:
            return coeffs
        norm2 = float(np.dot(ws, vals * vals))
        return coeffs, math.sqrt(max(0.0, norm2 - float(np.dot(coeffs, coeffs))))

    def __call__(self, h) -> np.ndarray:
        """``phi`` applied elementwise (float64)."""
        return apply_elementwise(self.compile().phi, h)

    def prime(self, h) -> np.ndarray:
        """``phi'`` applied elementwise (float64)."""
        return apply_elementwise(self.compile().dphi, h)

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
def _map_kernel(f, flat, out):
    for i in nb.prange(flat.shape[0]):
        out[i] = f(flat[i])


def apply_elementwise(f, h, out=None) -> np.ndarray:
    """Apply a compiled scalar kernel ``f`` (e.g. ``Activation.compile().phi``) to every entry of ``h``.

    ``out`` (optional, C-contiguous float64 of ``h``'s shape, may be ``h`` itself) receives the result.
    """
    arr = np.asarray(h, dtype=np.float64)
    flat = np.ascontiguousarray(arr).reshape(-1)
    if out is None:
        out = np.empty(arr.shape)
    elif out.shape != arr.shape or out.dtype != np.float64 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float64 array of shape {arr.shape}")
    _map_kernel(f, flat, out.reshape(-1))
    return out


# =================================================================================================
# Dual kernels and Hermite coefficients
# =================================================================================================
#
# kappa(q11, q12, q22) = E[phi(u) phi(v)] for a centred Gaussian pair with Var u = q11, Var v = q22,
# Cov(u, v) = q12. Every pair is written as
#     u = sqrt(q11) z1,   v = sqrt(q22) (rho z1 + sqrt(1 - rho^2) z2),   z1, z2 ~ N(0, 1) i.i.d.,
# with rho = q12 / sqrt(q11 q22) clipped to [-1, 1] (rho = 0 when q11 q22 = 0). This parametrisation is
# finite for every admissible (q11, q12, q22), including the degenerate edge q12 = +-sqrt(q11 q22)
# and q11 = 0 or q22 = 0 (then u or v is identically 0), so no branch needs a Cholesky factor.

#: The symbols of the dual kernel.
q11, q12, q22 = sp.symbols("q11 q12 q22", real=True)

_GH_NODES = 64        # cross-check rule: exact for polynomial integrands of degree <= 127
_POLAR_ANGLE = 32     # Gauss-Legendre nodes per angular sector
_POLAR_RADIUS = 72    # Gauss-Legendre nodes on [0, _POLAR_RMAX]
_POLAR_RMAX = 10.0    # exp(-50) ~ 2e-22: the Gaussian tail beyond it is below float64 resolution


def _gh_rule(n):
    z, w = np.polynomial.hermite_e.hermegauss(n)
    return np.ascontiguousarray(z), np.ascontiguousarray(w / math.sqrt(2.0 * math.pi))


def _gl_rule(n):
    t, w = np.polynomial.legendre.leggauss(n)
    return np.ascontiguousarray(t), np.ascontiguousarray(w)


_GLA_T, _GLA_W = _gl_rule(_POLAR_ANGLE)
_GLR_T, _GLR_W = _gl_rule(_POLAR_RADIUS)
# radial rule: r in [0, RMAX], weight r exp(-r^2/2) folded into the weights
_POL_R = np.ascontiguousarray(0.5 * _POLAR_RMAX * (_GLR_T + 1.0))
_POL_RW = np.ascontiguousarray(0.5 * _POLAR_RMAX * _GLR_W * _POL_R * np.exp(-0.5 * _POL_R**2))


@nb.njit(cache=True)
def _rho_scales(a, c, b):
    su = math.sqrt(a) if a > 0.0 else 0.0
    sv = math.sqrt(b) if b > 0.0 else 0.0
    rho = 0.0
    if su > 0.0 and sv > 0.0:
        rho = c / (su * sv)
        # q12 = +-sqrt(q11 q22) rounds to |rho| = 1 - O(eps); snap it (see _np_rho)
        if rho > 1.0 - 1e-15:
            rho = 1.0
        elif rho < -1.0 + 1e-15:
            rho = -1.0
    return su, sv, rho


@nb.njit
def _kappa_polar_scalar(f, g, a, c, b, ta, wa, r, rw):
    """E[f(u) g(v)] in polar coordinates of (z1, z2), Gauss-Legendre on angular sectors.

    u = su r cos(t), v = sv r cos(t - alpha), alpha = arccos(rho): u and v change sign on rays, so
    splitting the angle at those rays makes the integrand smooth on every sector whenever f and g are
    smooth away from 0 (relu, abs, step, leaky relu, ...).
    """
    su, sv, rho = _rho_scales(a, c, b)
    alpha = math.acos(rho)
    two_pi = 2.0 * math.pi
    br = np.empty(6)
    br[0] = 0.0
    br[1] = 0.5 * math.pi
    br[2] = 1.5 * math.pi
    br[3] = (alpha + 0.5 * math.pi) % two_pi
    br[4] = (alpha + 1.5 * math.pi) % two_pi
    br[5] = two_pi
    br.sort()
    total = 0.0
    for s in range(5):
        lo = br[s]
        hi = br[s + 1]
        if hi - lo < 1e-15:
            continue
        half = 0.5 * (hi - lo)
        mid = 0.5 * (hi + lo)
        for i in range(ta.shape[0]):
            t = mid + half * ta[i]
            cu = su * math.cos(t)
            cv = sv * math.cos(t - alpha)
            inner = 0.0
            for k in range(r.shape[0]):
                inner += rw[k] * f(cu * r[k]) * g(cv * r[k])
            total += half * wa[i] * inner
    return total / two_pi


# --- closed-form families --------------------------------------------------------------------------
# Each family f(x) has a kernel kf(q11, q12, q22) = E[f(u) f(v)]; phi = c f(b x) then has kernel
# c^2 kf(b^2 q11, b^2 q12, b^2 q22). Symbolic forms are for display and checks; the NumPy forms
# (dual_kernel) and Numba forms (compile().kappa) are written to stay finite on the degenerate edge.

def _sym_relu(a, c, b, h0=0):
    # arc-cosine kernel of degree 1 (Cho & Saul 2009)
    return (sp.sqrt(a * b - c**2) + (sp.pi - sp.acos(c / sp.sqrt(a * b))) * c) / (2 * sp.pi)


def _sym_step(a, c, b, h0=0):
    # arc-cosine kernel of degree 0
    return (sp.pi - sp.acos(c / sp.sqrt(a * b))) / (2 * sp.pi)


def _sym_erf(a, c, b, h0=0):
    # arcsine kernel (Williams 1997)
    return 2 / sp.pi * sp.asin(2 * c / sp.sqrt((1 + 2 * a) * (1 + 2 * b)))


def _sym_gauss(a, c, b, h0=0):
    # E[exp(-u^2) exp(-v^2)] = det(I + 2 Q)^(-1/2)
    return 1 / sp.sqrt((1 + 2 * a) * (1 + 2 * b) - 4 * c**2)


def _sym_sin(a, c, b, h0=0):
    return sp.exp(-(a + b) / 2) * sp.sinh(c)


def _sym_cos(a, c, b, h0=0):
    return sp.exp(-(a + b) / 2) * sp.cosh(c)


def _sym_exp(a, c, b, h0=0):
    return sp.exp((a + b + 2 * c) / 2)


def _np_rho(a, c, b):
    su, sv = np.sqrt(a), np.sqrt(b)
    prod = su * sv
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(prod > 0.0, c / np.where(prod > 0.0, prod, 1.0), 0.0)
    # The degenerate edge q12 = +-sqrt(q11 q22) reaches us as |rho| = 1 - O(eps), and arccos turns
    # that into an angle ~sqrt(eps) ~ 1e-8; snapping restores the exact edge (kernels of
    # discontinuous phi such as steps are not Lipschitz there).
    rho = np.where(np.abs(rho) > 1.0 - 1e-15, np.sign(rho), rho)
    return su, sv, np.clip(rho, -1.0, 1.0)


def _np_relu(a, c, b, h0=0.0):
    su, sv, rho = _np_rho(a, c, b)
    return su * sv * (np.sqrt(np.maximum(0.0, 1.0 - rho * rho)) + (np.pi - np.arccos(rho)) * rho) / (2 * np.pi)


def _np_step(a, c, b, h0=0.0):
    # a zero variance pins that variable at 0, where the step takes its value h0
    su, sv, rho = _np_rho(a, c, b)
    both = (np.pi - np.arccos(rho)) / (2 * np.pi)
    return np.where((su > 0) & (sv > 0), both,
                    np.where((su > 0) | (sv > 0), 0.5 * h0, h0 * h0))


def _np_erf(a, c, b, h0=0.0):
    return 2 / np.pi * np.arcsin(np.clip(2 * c / np.sqrt((1 + 2 * a) * (1 + 2 * b)), -1.0, 1.0))


def _np_gauss(a, c, b, h0=0.0):
    # the determinant is >= 1 + 2(q11 + q22) on the admissible set, so rounding cannot reach 0
    return 1.0 / np.sqrt((1 + 2 * a) * (1 + 2 * b) - 4 * c * c)


def _np_sin(a, c, b, h0=0.0):
    return np.exp(-0.5 * (a + b)) * np.sinh(c)


def _np_cos(a, c, b, h0=0.0):
    return np.exp(-0.5 * (a + b)) * np.cosh(c)


def _np_exp(a, c, b, h0=0.0):
    return np.exp(0.5 * (a + b + 2 * c))


@nb.njit(cache=True)
def _nb_relu(a, c, b, h0):
    su, sv, rho = _rho_scales(a, c, b)
    if su == 0.0 or sv == 0.0:
        return 0.0
    return su * sv * (math.sqrt(max(0.0, 1.0 - rho * rho)) + (math.pi - math.acos(rho)) * rho) / (2.0 * math.pi)


@nb.njit(cache=True)
def _nb_step(a, c, b, h0):
    su, sv, rho = _rho_scales(a, c, b)
    if su > 0.0 and sv > 0.0:
        return (math.pi - math.acos(rho)) / (2.0 * math.pi)
    if su > 0.0 or sv > 0.0:
        return 0.5 * h0
    return h0 * h0


@nb.njit(cache=True)
def _nb_erf(a, c, b, h0):
    s = 2.0 * c / math.sqrt((1.0 + 2.0 * a) * (1.0 + 2.0 * b))
    return 2.0 / math.pi * math.asin(min(1.0, max(-1.0, s)))


@nb.njit(cache=True)
def _nb_gauss(a, c, b, h0):
    return 1.0 / math.sqrt((1.0 + 2.0 * a) * (1.0 + 2.0 * b) - 4.0 * c * c)


@nb.njit(cache=True)
def _nb_sin(a, c, b, h0):
    return math.exp(-0.5 * (a + b)) * math.sinh(c)


@nb.njit(cache=True)
def _nb_cos(a, c, b, h0):
    return math.exp(-0.5 * (a + b)) * math.cosh(c)


@nb.njit(cache=True)
def _nb_exp(a, c, b, h0):
    return math.exp(0.5 * (a + b + 2.0 * c))


_FAMILIES = {
    "relu": (_sym_relu, _np_relu, _nb_relu, "arc-cosine kernel of degree 1 (Cho & Saul)"),
    "step": (_sym_step, _np_step, _nb_step, "arc-cosine kernel of degree 0"),
    "erf": (_sym_erf, _np_erf, _nb_erf, "arcsine kernel (Williams)"),
    "gauss": (_sym_gauss, _np_gauss, _nb_gauss, "Gaussian integral det(I + 2Q)^(-1/2)"),
    "sin": (_sym_sin, _np_sin, _nb_sin, "E[sin u sin v] = exp(-(q11+q22)/2) sinh q12"),
    "cos": (_sym_cos, _np_cos, _nb_cos, "E[cos u cos v] = exp(-(q11+q22)/2) cosh q12"),
    "exp": (_sym_exp, _np_exp, _nb_exp, "log-normal moment"),
}


def _match_family(expr: sp.Expr):
    """``(family, c, b, h0)`` with ``expr == c * f(b x)`` for a closed-form family ``f``, or ``None``."""
    coeff, rest = expr.as_coeff_Mul()
    if rest == 1 or coeff == 0:
        return None
    fams = {sp.erf: "erf", sp.sin: "sin", sp.cos: "cos", sp.exp: "exp", sp.Heaviside: "step"}
    if rest.func in fams and len(rest.args) >= 1:
        arg = rest.args[0]
        h0 = rest.args[1] if rest.func is sp.Heaviside and len(rest.args) > 1 else sp.S.Half
        b = sp.simplify(arg / x)
        if not b.free_symbols and b != 0 and b.is_real:
            if rest.func is sp.Heaviside and b.is_negative:
                return None  # H(-x) jumps the other way; its value at 0 is 1 - h0: leave to quadrature
            return fams[rest.func], sp.nsimplify(coeff), b, h0
        if rest.func is sp.exp:
            beta = sp.simplify(-arg / x**2)
            if not beta.free_symbols and beta.is_positive:
                return "gauss", sp.nsimplify(coeff), sp.sqrt(beta), sp.S.Zero
        return None
    if rest.func is sp.Max and len(rest.args) == 2 and 0 in rest.args:
        arg = rest.args[1] if rest.args[0] == 0 else rest.args[0]
        b = sp.simplify(arg / x)
        if not b.free_symbols and b != 0 and b.is_real:
            # relu(-|b| x) has the same kernel as relu(|b| x): the law of (u, v) is symmetric
            return "relu", sp.nsimplify(coeff), sp.Abs(b), sp.S.Zero
    return None


def _wick_moment(i: int, j: int, a, c, b):
    """E[u^i v^j] by Wick's theorem: k cross pairs, the rest paired within u and within v."""
    total = sp.Integer(0)
    for k in range(min(i, j) + 1):
        if (i - k) % 2 or (j - k) % 2:
            continue
        total += (sp.binomial(i, k) * sp.binomial(j, k) * sp.factorial(k) * c**k
                  * sp.factorial2(i - k - 1) * a ** ((i - k) // 2)
                  * sp.factorial2(j - k - 1) * b ** ((j - k) // 2))
    return total


def _closed_form(expr: sp.Expr):
    """``(sympy_expr, numpy_fn, njit_factory, description)`` of E[phi(u)phi(v)], or ``None``."""
    expr = sp.sympify(expr)
    if expr.free_symbols - {x}:
        return None
    if expr.is_polynomial(x):
        coeffs = sp.Poly(expr, x).all_coeffs()[::-1] if expr.free_symbols else [expr]
        total = sp.Integer(0)
        for i, ai in enumerate(coeffs):
            for j, aj in enumerate(coeffs):
                if ai != 0 and aj != 0:
                    total += ai * aj * _wick_moment(i, j, q11, q12, q22)
        total = sp.expand(total)
        np_fn = sp.lambdify((q11, q12, q22), total, modules="numpy")

        def vec(a, c, b, _f=np_fn):
            return np.broadcast_to(np.asarray(_f(a, c, b), dtype=np.float64), np.shape(a)).copy()

        def factory(_t=total):
            return nb.njit(sp.lambdify((q11, q12, q22), _t, modules="math"))

        return total, vec, factory, "polynomial (Wick's theorem)"
    m = _match_family(expr)
    if m is None:
        return None
    fam, c, b, h0 = m
    sym_f, np_f, nb_f, desc = _FAMILIES[fam]
    b2 = b**2
    sym = sp.simplify(c**2 * sym_f(b2 * q11, b2 * q12, b2 * q22))
    cc, bb, hh = float(c**2), float(b2), float(h0)

    def vec(a, c_, b_):
        return cc * np_f(bb * a, bb * c_, bb * b_, hh)

    def factory():
        @nb.njit
        def kappa(a, c_, b_):
            return cc * nb_f(bb * a, bb * c_, bb * b_, hh)

        return kappa

    return sym, vec, factory, desc


def _numpy_function(expr: sp.Expr):
    """Vectorised NumPy/SciPy evaluation of ``expr`` (no compilation, so no per-activation cost)."""
    return sp.lambdify(x, expr, modules=["numpy", "scipy"])


def _polar_quadrature(f, g, A, C, B, chunk=64):
    """E[f(u) g(v)] in polar coordinates of the standardised pair (vectorised NumPy).

    u = su r cos(t), v = sv r cos(t - alpha), alpha = arccos(rho): u and v change sign on rays, so
    splitting the angle at those rays gives a smooth integrand on every sector whenever f and g are
    smooth away from 0 (ReLU, |x|, steps, ...). Gauss-Legendre in the angle on each sector and in the
    radius on [0, 10].
    """
    out = np.empty(A.shape[0])
    rr, rw = _POL_R, _POL_RW
    for s0 in range(0, A.shape[0], chunk):
        a, c, b = A[s0:s0 + chunk], C[s0:s0 + chunk], B[s0:s0 + chunk]
        su, sv, rho = _np_rho(a, c, b)
        alpha = np.arccos(rho)
        br = np.stack([np.zeros_like(a), np.full_like(a, 0.5 * np.pi), np.full_like(a, 1.5 * np.pi),
                       (alpha + 0.5 * np.pi) % (2 * np.pi), (alpha + 1.5 * np.pi) % (2 * np.pi),
                       np.full_like(a, 2 * np.pi)], axis=1)
        br.sort(axis=1)
        lo, hi = br[:, :-1], br[:, 1:]
        half, mid = 0.5 * (hi - lo), 0.5 * (hi + lo)
        t = mid[:, :, None] + half[:, :, None] * _GLA_T  # (n, 5, na)
        cu = su[:, None, None] * np.cos(t)
        cv = sv[:, None, None] * np.cos(t - alpha[:, None, None])
        with np.errstate(over="ignore", under="ignore"):
            fu = np.asarray(f(cu[..., None] * rr), dtype=np.float64)
            gv = np.asarray(g(cv[..., None] * rr), dtype=np.float64)
            radial = np.broadcast_to(fu * gv, cu.shape + rr.shape) @ rw  # (n, 5, na)
        out[s0:s0 + chunk] = np.einsum("nsa,a,ns->n", radial, _GLA_W, half) / (2 * np.pi)
    if not np.all(np.isfinite(out)):
        raise FloatingPointError("dual-kernel quadrature produced non-finite values: the activation "
                                 "grows too fast for these variances")
    return out


def _gauss_hermite_quadrature(f, g, A, C, B, n=_GH_NODES):
    """E[f(u) g(v)] by tensor Gauss-Hermite quadrature (a cross-check for smooth f, g)."""
    z, w = _gh_rule(n)
    su, sv, rho = _np_rho(A, C, B)
    comp = np.sqrt(np.maximum(0.0, 1.0 - rho * rho))
    out = np.empty(A.shape[0])
    for k in range(A.shape[0]):
        fu = np.asarray(f(su[k] * z), dtype=np.float64)
        gv = np.asarray(g(sv[k] * (rho[k] * z[:, None] + comp[k] * z[None, :])), dtype=np.float64)
        gv = np.broadcast_to(gv, (n, n))
        out[k] = w @ (np.broadcast_to(fu, (n,)) * (gv @ w))
    return out


def _has_kink(expr: sp.Expr) -> bool:
    return any(expr.has(f) for f in (sp.Max, sp.Min, sp.Abs, sp.Heaviside, sp.sign, sp.Piecewise,
                                     sp.DiracDelta))


def _prepare_q(a, c, b):
    """Broadcast, convert to float64 and check admissibility of (q11, q12, q22)."""
    A, C, B = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (a, c, b)))
    shape = A.shape
    A, C, B = (np.ascontiguousarray(v).reshape(-1) for v in (A, C, B))
    for name, arr in (("q11", A), ("q12", C), ("q22", B)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must be finite (got nan or inf)")
    if np.any(A < 0.0) or np.any(B < 0.0):
        raise ValueError("q11 and q22 must be >= 0 (they are variances)")
    # |q12| <= sqrt(q11 q22) up to rounding (relative 1e-8): a Gaussian pair has a PSD covariance
    bound = np.sqrt(A * B)
    if np.any(np.abs(C) > bound * (1.0 + 1e-8) + 1e-300):
        raise ValueError("q12 must satisfy |q12| <= sqrt(q11 * q22) (the covariance matrix must be PSD)")
    return A, np.clip(C, -bound, bound), B, shape


def _finish(out, shape):
    out = out.reshape(shape)
    return float(out) if out.ndim == 0 else out


class _Kernel:
    """Evaluator of E[f(u) f(v)] for one expression: closed form or polar quadrature."""

    def __init__(self, expr: sp.Expr, f_njit):
        self.expr = expr
        try:
            cf = _closed_form(expr)
        except Exception:  # pattern matching on an exotic expression failed: quadrature is always valid
            cf = None
        self.symbolic = cf[0] if cf else None
        self._vec = cf[1] if cf else None
        self._factory = cf[2] if cf else None
        self.description = cf[3] if cf else "quadrature"
        self.f_njit = f_njit
        self.f = _numpy_function(expr)
        self.method = "closed form" if cf else "polar quadrature"
        self._scalar = None

    def __call__(self, a, c, b):
        A, C, B, shape = _prepare_q(a, c, b)
        if self._vec is not None:
            out = self._vec(A, C, B)
        else:
            out = _polar_quadrature(self.f, self.f, A, C, B)
        return _finish(np.asarray(out, dtype=np.float64), shape)

    def quadrature(self, a, c, b, method: str = "polar"):
        """The quadrature value even when a closed form exists (for checks)."""
        A, C, B, shape = _prepare_q(a, c, b)
        if method == "polar":
            out = _polar_quadrature(self.f, self.f, A, C, B)
        elif method == "gauss-hermite":
            out = _gauss_hermite_quadrature(self.f, self.f, A, C, B)
        else:
            raise ValueError(f"method must be 'polar' or 'gauss-hermite', got {method!r}")
        return _finish(out, shape)

    def scalar_njit(self):
        """An ``@njit`` scalar ``kappa(q11, q12, q22)`` for use inside other kernels (lazy compile)."""
        if self._scalar is None:
            if self._factory is not None:
                self._scalar = self._factory()
            else:
                f = self.f_njit
                ta, wa, r, rw = _GLA_T, _GLA_W, _POL_R, _POL_RW

                @nb.njit
                def kappa(a, c, b):
                    return _kappa_polar_scalar(f, f, a, c, b, ta, wa, r, rw)

                self._scalar = kappa
        return self._scalar

def _kink_points(expr: sp.Expr) -> list[float]:
    """Real points where a piecewise function in ``expr`` switches branch (best effort)."""
    pts = set()
    for node in sp.preorder_traversal(expr):
        if isinstance(node, (sp.Max, sp.Min)):
            args = node.args
            for i in range(len(args)):
                for j in range(i + 1, len(args)):
                    pts.update(_real_roots(args[i] - args[j]))
        elif isinstance(node, (sp.Abs, sp.Heaviside, sp.sign)):
            pts.update(_real_roots(node.args[0]))
    return sorted(p for p in pts if abs(p) < 12.0)


def _real_roots(e) -> list[float]:
    try:
        sols = sp.solve(sp.Eq(e, 0), x)
    except Exception:
        return []
    out = []
    for s_ in sols:
        try:
            v = complex(s_)
        except (TypeError, ValueError):
            continue
        if abs(v.imag) < 1e-12:
            out.append(v.real)
    return out


def _hermite_rule(expr: sp.Expr):
    """Nodes and weights of E_{z~N(0,1)}[.] on [-12, 12], Gauss-Legendre split at kinks of expr."""
    cuts = [-12.0] + _kink_points(expr) + [12.0]
    t, w = _gl_rule(240)
    zs, ws = [], []
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        if hi - lo <= 0:
            continue
        z = 0.5 * (hi - lo) * t + 0.5 * (hi + lo)
        zs.append(z)
        ws.append(0.5 * (hi - lo) * w * np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi))
    return np.concatenate(zs), np.concatenate(ws)


_KERNEL_CACHE: dict = {}


def _get_kernel(expr: sp.Expr, f) -> "_Kernel":
    """One :class:`_Kernel` per (expression, scalar function): compiled specialisations are reused."""
    key = (sp.srepr(expr), id(f))
    k = _KERNEL_CACHE.get(key)
    if k is None or k.f_njit is not f:
        k = _Kernel(expr, f)
        _KERNEL_CACHE[key] = k
    return k
