"""Building the equations: mean-field actions, saddle-point and gradient-flow systems, limits.

``derive(setting, activation)`` writes the action of docs/theory.md (eqs. (2.2) and (3.2)) as a
SymPy expression with matrix symbols, obtains the saddle-point equations by differentiating it
(matrix calculus; the log-partition term is differentiated under the expectation), takes the
limits ``gamma -> 0``, ``delta -> inf`` and ``delta = 0`` with :func:`sympy.limit`, and, for the
linear activation, integrates the Gaussian single-site measure symbolically to reduce the system to
the scalar equations (2.9) and (3.5); activations growing faster than linearly have no saddle point
(:class:`~symtransfer.errors.NoSaddlePointError`). ``derive(..., dynamics="gradient_flow")`` writes
the single-site DMFT system of section 4 with ``phi`` and ``phi'`` substituted, its weight-decay fixed
point and the transfer protocols, with the closed forms of section 7 for linear ``phi``. Turning a
system into LaTeX, Markdown or text is :mod:`symtransfer.symbolic.render`; solving it numerically is
the job of the estimators (:meth:`SaddlePointSystem.estimator`). The derivations are written out in
docs/symbolic.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp
from sympy.matrices.expressions import MatrixExpr

from ..activations import Activation, get_activation, q11, q12, q22
from ..errors import NoSaddlePointError
from .render import _Document, _tex_sfx

__all__ = ["SETTINGS", "SETTING_ALIASES", "DYNAMICS", "DMFTSystem", "SaddlePointSystem", "derive",
           "canonical_setting", "Expectation", "Average"]

SETTINGS = ("scratch", "finetune", "lazy_finetune", "joint")
#: Accepted alternative spellings of the settings.
SETTING_ALIASES = {"single": "scratch", "lazy-finetune": "lazy_finetune"}
DYNAMICS = ("equilibrium", "gradient_flow")
_EQUILIBRIUM_SETTINGS = ("scratch", "finetune", "joint")


# =================================================================================================
# Expectations that SymPy can carry and that the engine knows how to differentiate
# =================================================================================================
class Expectation(sp.Expr):
    """Unevaluated scalar expectation ``E_label[arg]`` (``label`` names the measure, for printing)."""

    is_commutative = True

    def __new__(cls, arg, label):
        return sp.Expr.__new__(cls, sp.sympify(arg), sp.Symbol(str(label)))

    @property
    def integrand(self):
        return self.args[0]

    @property
    def label(self) -> str:
        return self.args[1].name

    def _latex(self, printer):
        return r"\mathbb{E}_{%s}\left[%s\right]" % (self.label, printer._print(self.integrand))

    def _sympystr(self, printer):
        return "E_{%s}[%s]" % (self.label, printer._print(self.integrand))


class Average(MatrixExpr):
    """Unevaluated matrix-valued average ``<arg>_label`` (tilted single-site average or expectation)."""

    def __new__(cls, arg, label):
        return MatrixExpr.__new__(cls, arg, sp.Symbol(str(label)))

    @property
    def arg(self):
        return self.args[0]

    @property
    def label(self) -> str:
        return self.args[1].name

    @property
    def shape(self):
        return self.arg.shape

    def _latex(self, printer):
        if self.label.startswith("E:"):
            return r"\mathbb{E}_{%s}\left[%s\right]" % (self.label[2:], printer._print(self.arg))
        return r"\left\langle %s \right\rangle_{\mathrm{%s}}" % (printer._print(self.arg), self.label)

    def _sympystr(self, printer):
        return "<%s>_{%s}" % (printer._print(self.arg), self.label)


def _split_scalar(d):
    """``(c, R)`` with ``d = c R``: averages are linear, so scalar factors are pulled out."""
    if isinstance(d, sp.MatMul):
        scal = [f for f in d.args if not getattr(f, "is_Matrix", False)]
        mats = [f for f in d.args if getattr(f, "is_Matrix", False)]
        return sp.Mul(*scal), (sp.MatMul(*mats) if len(mats) > 1 else mats[0])
    return sp.S.One, d


def _check(cond: bool, what: str):
    if not cond:
        raise RuntimeError(f"symbolic derivation check failed: {what}")


def _mdiff(expr, X):
    """Derivative of the scalar ``expr`` with respect to the matrix symbol ``X``.

    SymPy's matrix calculus handles traces of matrix products; this adds the rules it lacks for sums,
    scalar coefficients, expectations (differentiation under the integral) and the log-partition
    function ``d/dX log E[exp(f)] = <df/dX>`` (the tilted average).
    """
    zero = sp.ZeroMatrix(*X.shape)
    if X not in expr.free_symbols:
        return zero
    if isinstance(expr, sp.Add):
        out = zero
        for term in expr.args:
            out = out + _mdiff(term, X)
        return out
    if isinstance(expr, sp.Mul):
        const = [f for f in expr.args if X not in f.free_symbols]
        var = [f for f in expr.args if X in f.free_symbols]
        if len(var) != 1:
            raise NotImplementedError(f"product of several X-dependent factors: {expr}")
        return sp.Mul(*const) * _mdiff(var[0], X)
    if isinstance(expr, sp.log) and isinstance(expr.args[0], Expectation):
        inner = expr.args[0].integrand
        if isinstance(inner, sp.exp):
            coeff, mat = _split_scalar(_mdiff(inner.args[0], X))
            return coeff * Average(mat, "tilt")
    if isinstance(expr, Expectation):
        coeff, mat = _split_scalar(_mdiff(expr.integrand, X))
        return coeff * Average(mat, "E:" + expr.label)
    if isinstance(expr, sp.Trace):
        return sp.diff(expr, X)
    raise NotImplementedError(f"no differentiation rule for {type(expr).__name__}: {expr}")


# =================================================================================================
# Rank-one algebra: span{I, U} with U = u u^T, U^2 = nu U (Gaussian integrals of linear phi)
# =================================================================================================
@dataclass(frozen=True)
class _R1:
    """``alpha I + beta u u^T`` with ``u^T u = nu``; closed under products and inverses."""

    alpha: sp.Expr
    beta: sp.Expr
    nu: sp.Expr

    def __mul__(self, other: "_R1") -> "_R1":
        return _R1(sp.simplify(self.alpha * other.alpha),
                   sp.simplify(self.alpha * other.beta + self.beta * other.alpha + self.nu * self.beta * other.beta),
                   self.nu)

    def inverse(self) -> "_R1":
        # solve (alpha I + beta U)(a I + b U) = I in the algebra: two linear equations in (a, b)
        a, b = sp.symbols("a_inv b_inv")
        prod = self * _R1(a, b, self.nu)
        sol = sp.solve([sp.Eq(prod.alpha, 1), sp.Eq(prod.beta, 0)], [a, b], dict=True)[0]
        return _R1(sp.simplify(sol[a]), sp.simplify(sol[b]), self.nu)


# =================================================================================================
# Symbols
# =================================================================================================
def _pos(name):
    return sp.Symbol(name, positive=True)


class _Sym:
    """All symbols of the engine (one namespace, so every expression shares them)."""

    P, P2 = sp.Symbol("P", integer=True, positive=True), sp.Symbol("P_2", integer=True, positive=True)
    gamma, lam, T, s2 = _pos("gamma"), _pos("lambda"), _pos("T"), _pos("s^2")
    gamma1, lam1, T1, s12 = _pos("gamma_1"), _pos("lambda_1"), _pos("T_1"), _pos("s_1^2")
    gamma2, lam2, T2, s22 = _pos("gamma_2"), _pos("lambda_2"), _pos("T_2"), _pos("s_2^2")
    delta = sp.Symbol("delta", nonnegative=True)
    # scalar unknowns of the reduced (linear) systems
    a, kappa = _pos("a"), _pos("kappa")
    chi, eta = sp.Symbol("chi", nonnegative=True), sp.Symbol("eta", nonnegative=True)
    t, A, M, rho, b, c, m, sc2 = (_pos("t"), sp.Symbol("A", nonnegative=True), sp.Symbol("M", nonnegative=True),
                                  _pos("rho"), sp.Symbol("b"), sp.Symbol("c", nonnegative=True),
                                  sp.Symbol("m", nonnegative=True), sp.Symbol("s_c^2", nonnegative=True))


def _matrices(P, sfx=""):
    """Matrix symbols of one task: kernel, conjugate, targets, input kernel, features, dual vector."""
    return dict(
        Phi=sp.MatrixSymbol("Phi" + sfx, P, P),
        Phihat=sp.MatrixSymbol("Phihat" + sfx, P, P),
        y=sp.MatrixSymbol("y" + sfx, P, 1),
        K=sp.MatrixSymbol("K" + sfx, P, P),
        phi=sp.MatrixSymbol("phi" + sfx, P, 1),   # phi(h) on the training inputs
        v=sp.MatrixSymbol("v" + sfx, P, 1),
        Phix=sp.MatrixSymbol(r"\Phi%s(x, X%s)" % (_tex_sfx(sfx), _tex_sfx(sfx)), 1, P),
        I=sp.Identity(P),
    )



@dataclass
class SaddlePointSystem(_Document):
    """Action, order parameters, saddle-point equations, predictor and limits of one setting.

    Attributes
    ----------
    setting : {"scratch", "finetune", "joint"}
        Canonical spelling (``derive`` accepts ``"single"`` for ``"scratch"``).
    activation : Activation
    action : sympy.Expr
        The mean-field action per neuron (docs/theory.md, eq. (2.2); eq. (3.2) for the target).
    order_parameters : list of sympy.MatrixSymbol
    derivatives : dict
        ``dS/dX`` for every order parameter ``X`` as returned by the differentiation.
    equations : dict of name -> sympy.Eq
        The saddle-point equations solved for the order parameters.
    predictor : sympy.Eq
        The mean predictor (eq. (2.5) / (3.3)).
    limits : dict of name -> sympy.Eq or str
        ``gamma -> 0``, ``delta -> inf`` and ``delta = 0`` where they apply.
    reduced : dict of name -> sympy.Eq or None
        Scalar equations when the single-site measure is Gaussian (linear activation).
    dual_kernel : sympy.Expr or None
        Closed form of ``E[phi(u)phi(v)]`` in ``q11, q12, q22`` (None: quadrature only).
    """

    setting: str
    activation: Activation
    action: sp.Expr
    order_parameters: list
    derivatives: dict
    equations: dict
    predictor: sp.Eq
    limits: dict
    reduced: dict | None
    dual_kernel: sp.Expr | None
    definitions: dict = field(default_factory=dict)
    task: object = None
    source: "SaddlePointSystem | None" = None

    @property
    def is_linear(self) -> bool:
        return sp.simplify(self.activation.expr - sp.Symbol("x", real=True)) == 0

    # the text of the documents (latex(), markdown(), str()) is built in symtransfer.symbolic.render
    kind = "Saddle-point equations"
    dynamics = "equilibrium"

    def estimator(self, **params):
        """An unfitted solver of this system: :class:`~symtransfer.theory.linear.LinearTheory` for the
        linear activation (the reduced equations, exact), otherwise
        :class:`~symtransfer.theory.adaptive.AdaptiveKernel` with this activation.

        ``params`` are the estimator's (``gamma``, ``weight_decay``, ``temperature``, ...); fit it on the
        source, then ``transfer(X2, y2, coupling=...)`` for ``"finetune"`` (``coupling=inf``) and
        ``"joint"``.
        """
        if self.is_linear:
            from ..theory.linear import LinearTheory

            return LinearTheory(**params)
        from ..theory.adaptive import AdaptiveKernel

        return AdaptiveKernel(activation=self.activation, **params)


def canonical_setting(setting) -> str:
    """The canonical spelling of a setting: ``"scratch"``, ``"finetune"``, ``"lazy_finetune"`` or
    ``"joint"`` (``"single"`` is accepted for ``"scratch"``, ``"lazy-finetune"`` for ``"lazy_finetune"``)."""
    if not isinstance(setting, str):
        raise ValueError(f"setting must be one of {', '.join(SETTINGS)} (or 'single'), got {setting!r}")
    key = SETTING_ALIASES.get(setting.strip().lower(), setting.strip().lower())
    if key not in SETTINGS:
        raise ValueError(f"setting must be one of {', '.join(SETTINGS)} (or 'single' for 'scratch'), got {setting!r}")
    return key


def _no_saddle_message(act) -> str:
    return (f"activation {act.name!r} grows faster than linearly: the tilt exp(c phi(h)^2) of the single-site "
            "measure (2.4) is not normalisable, so the equilibrium saddle point does not exist "
            "(docs/theory.md, (2.6)); use gradient flow: derive(..., dynamics='gradient_flow') for its "
            "equations and symtransfer.GradientFlowDMFT to solve them")


# =================================================================================================
# Derivations
# =================================================================================================
def _single_task(act: Activation, gamma, lam, T, s2, P, sfx="", prior_label=None):
    """Action (2.2), derivatives, equations (2.3)-(2.5) of one task, from the action."""
    mats = _matrices(P, sfx)
    Phi, Phihat, y, K, phi, v, Phix, I = (mats[k] for k in ("Phi", "Phihat", "y", "K", "phi", "v", "Phix", "I"))
    prior = prior_label or r"h\sim\mathcal{N}(0, %s K%s)" % (sp.latex(s2), sfx)
    ridge = sp.Trace(y.T * (Phi + lam * I).inv() * y)
    lnZ = sp.log(Expectation(sp.exp(-sp.Trace(Phihat * phi * phi.T)), prior))
    action = -gamma**2 / (2 * s2) * ridge + sp.Trace(Phihat * Phi) + lnZ

    sym = {Phi.T: Phi, Phihat.T: Phihat, K.T: K}
    dPhi = _mdiff(action, Phi).xreplace(sym)
    dPhihat = _mdiff(action, Phihat).xreplace(sym)
    # dS/dPhihat = Phi - <phi phi^T> = 0
    avg = Average(phi * phi.T, "tilt")
    _check(sp.simplify(dPhihat - (Phi - avg)) == sp.ZeroMatrix(P, P), f"dS/dPhihat = {dPhihat}")
    # dS/dPhi = Phihat + (gamma^2/2s^2) (Phi + lam)^-1 y y^T (Phi + lam)^-1 = 0  ->  Phihat = -c v v^T
    inv = (Phi + lam * I).inv()
    coef = gamma**2 / (2 * s2)
    rest = (dPhi - Phihat).doit()
    _check(sp.simplify(rest - coef * inv * y * y.T * inv) == sp.ZeroMatrix(P, P), f"dS/dPhi = {dPhi}")
    eq_hat = sp.Eq(Phihat, -coef * v * v.T)
    eq_v = sp.Eq(v, inv * y)
    # substituting Phihat into the tilt: -Tr(Phihat phi phi^T) = coef Tr(v v^T phi phi^T) = coef (v^T phi)^2
    tilt = coef * sp.Symbol(r"(v%s^{T}\phi%s(h))^{2}" % (sfx, sfx))
    measure = r"p(h) \propto \mathcal{N}(h; 0, %s K%s)\, \exp\left(%s\right)" % (sp.latex(s2), sfx, sp.latex(tilt))
    eq_phi = sp.Eq(Phi, avg)
    predictor = sp.Eq(sp.MatrixSymbol("f%s(x)" % _tex_sfx(sfx), 1, 1), Phix * inv * y)
    return dict(action=action, Phi=Phi, Phihat=Phihat, derivatives={Phi: dPhi, Phihat: dPhihat},
                equations={"v": eq_v, "Phihat": eq_hat, "Phi": eq_phi}, predictor=predictor,
                measure=measure, mats=mats, coef=coef)


def _lazy_limit(act: Activation, sys: dict, gamma, s2, sfx=""):
    """gamma -> 0: the tilt vanishes and Phi is the NNGP kernel of phi under the prior."""
    coef_lim = sp.limit(sys["coef"], gamma, 0)
    up = "^{(%s)}" % sfx[1:] if sfx else ""
    Kmm, Kmn, Knn = sp.symbols(r"K%s_{\mu\mu} K%s_{\mu\nu} K%s_{\nu\nu}" % (up, up, up), real=True)
    dk = act.dual_kernel_expr()
    Phimn = sp.Symbol(r"\Phi%s_{\mu\nu}" % up)
    if dk is not None:
        rhs = sp.simplify(dk.subs({q11: s2 * Kmm, q12: s2 * Kmn, q22: s2 * Knn}))
        lazy = sp.Eq(Phimn, rhs)
    else:
        lazy = sp.Eq(Phimn, sp.Function(r"\kappa_{\phi}")(s2 * Kmm, s2 * Kmn, s2 * Knn))
    v = sys["mats"]["v"]
    rhs = sp.ZeroMatrix(*sys["Phihat"].shape) if coef_lim == 0 else -coef_lim * v * v.T
    return {"gamma -> 0 (Phihat)": sp.Eq(sys["Phihat"], rhs),
            "gamma -> 0 (Phi, NNGP kernel)": lazy}


def _reduce_linear_single(gamma, lam, s2, sfx=""):
    """Integrate the Gaussian single-site measure of phi(h) = h and reduce to eq. (2.9).

    With h = X w/sqrt(D) the tilt is (gamma^2/2s^2)(u^T w)^2, u = X^T v/sqrt(D), so w has precision
    (I - gamma^2 u u^T)/s^2; its inverse is computed in the algebra span{I, u u^T}. Then
    Phi v = X Sigma X^T v/D = (alpha + beta kappa) K v with kappa = u^T u = v^T K v, so the stationarity
    condition (Phi + lam I) v = y becomes (a K + lam I) v = y with the scalar a = alpha + beta kappa.
    """
    S = _Sym
    prec = _R1(1 / s2, -gamma**2 / s2, S.kappa)
    cov = prec.inverse()
    a_expr = sp.simplify(cov.alpha + cov.beta * S.kappa)
    chi_def = gamma**2 * S.kappa
    a_of_chi = sp.simplify(a_expr.subs(S.kappa, S.chi / gamma**2))
    eta_sol = sp.solve(sp.Eq(s2 + S.eta, a_of_chi), S.eta)[0]
    K, y, v = (sp.MatrixSymbol(n + sfx, _Sym.P, k) for n, k in (("K", _Sym.P), ("y", 1), ("v", 1)))
    I = sp.Identity(_Sym.P)
    return {
        "Sigma": sp.Eq(sp.Symbol(r"\Sigma%s" % sfx), cov.alpha * sp.Symbol("I") + cov.beta * sp.Symbol("u u^{T}")),
        "v": sp.Eq(v, (S.a * K + lam * I).inv() * y),
        "kappa": sp.Eq(S.kappa, sp.Trace(v.T * K * v)),
        "chi": sp.Eq(S.chi, chi_def),
        "a": sp.Eq(S.a, a_of_chi),
        "eta": sp.Eq(S.eta, sp.factor(eta_sol)),
        "predictor": sp.Eq(sp.MatrixSymbol("f%s(x)" % _tex_sfx(sfx), 1, 1),
                           S.a * sp.MatrixSymbol("K(x, X%s)" % _tex_sfx(sfx), 1, _Sym.P) * v),
    }


def _reduce_linear_joint():
    """Gaussian conditional w2 | w1 of eq. (3.1) tilted, integrated in span{I, u2 u2^T}: eq. (3.5).

    Precision Lambda = (I - c U)/s_c^2 with c = gamma2^2 s_c^2/s2^2, U = u2 u2^T, u2^T u2 = kappa.
    E[w2 w2^T] = s_c^2 Pi + m^2 Pi Sigma1 Pi with Pi = s_c^2 Lambda^-1 = I + b U. Then
    Pi X2^T v2/sqrt(D) = t u2 with t = 1 + b kappa, and
    Phi2 v2 = s_c^2 t K v2 + m^2 t (Q v2 + b rho K v2),  rho = v2^T Q v2, Q = Phi1(X2, X2).
    """
    S = _Sym
    Pi = _R1(1, -S.c, S.kappa).inverse()             # Pi = (I - c U)^-1
    b_expr = sp.simplify(Pi.beta)
    t_expr = sp.simplify(Pi.alpha + Pi.beta * S.kappa)  # Pi u2 = t u2
    # coefficient of K v2 and of Q v2 in Phi2 v2
    A_expr = sp.simplify(S.sc2 * t_expr + S.m**2 * t_expr * b_expr * S.rho)
    M_expr = sp.simplify(S.m**2 * t_expr)
    c_def = sp.simplify(S.gamma2**2 * S.sc2 / S.s22)
    m_def = S.delta / (S.lam2 + S.delta)
    sc2_def = S.T2 / (S.lam2 + S.delta)
    # A in terms of t only (t = 1/(1 - c kappa) eliminates kappa)
    A_of_t = sp.simplify(A_expr.subs(S.kappa, sp.solve(sp.Eq(S.t, t_expr), S.kappa)[0]))
    K2, Q, y2, v2 = (sp.MatrixSymbol(n, S.P2, k) for n, k in (("K_2", S.P2), ("Q", S.P2), ("y_2", 1), ("v_2", 1)))
    I2 = sp.Identity(S.P2)
    red = {
        "m": sp.Eq(S.m, m_def), "s_c^2": sp.Eq(S.sc2, sc2_def),
        "c": sp.Eq(S.c, sp.simplify(c_def.subs({S.sc2: sc2_def, S.s22: S.T2 / S.lam2}))),
        "Pi": sp.Eq(sp.Symbol(r"\Pi"), sp.Symbol("I") + b_expr * sp.Symbol("u_2 u_2^{T}")),
        "t": sp.Eq(S.t, t_expr),
        "b": sp.Eq(S.b, sp.simplify(b_expr.subs(S.kappa, sp.solve(sp.Eq(S.t, t_expr), S.kappa)[0]))),
        "A": sp.Eq(S.A, A_of_t),
        "M": sp.Eq(S.M, M_expr),
        "v_2": sp.Eq(v2, (S.A * K2 + S.M * Q + S.lam2 * I2).inv() * y2),
        "kappa": sp.Eq(S.kappa, sp.Trace(v2.T * K2 * v2)),
        "rho": sp.Eq(S.rho, sp.Trace(v2.T * Q * v2)),
        "predictor": sp.Eq(sp.MatrixSymbol("f_{2}(x)", 1, 1), (S.A * sp.MatrixSymbol("K(x, X_{2})", 1, S.P2)
                                                    + S.M * sp.MatrixSymbol(r"\Phi_{1}(x, X_{2})", 1, S.P2)) * v2),
    }
    return red, dict(t=t_expr, A=A_of_t, M=M_expr, b=b_expr, m=m_def, sc2=sc2_def)


def derive(setting: str = "scratch", activation="linear", task=None, *, dynamics: str = "equilibrium"):
    """Derive the equations of a setting.

    Parameters
    ----------
    setting : {"scratch", "finetune", "lazy_finetune", "joint"}
        One task trained from scratch (``"single"`` is an alias; docs/theory.md, sections 2 and 4);
        readout fine-tuning on source features (``delta -> inf``); lazy fine-tuning (gradient flow only:
        kernel ``Phi_1 + G_1 * K``); jointly rich transfer with coupling ``delta`` (sections 3 and 4).
    activation : str, sympy.Expr or Activation
        Registered name or formula (parsed safely, see :mod:`symtransfer.parsing`).
    task : object, optional
        Data carried with the system (anything with ``X_train``/``y_train``), e.g. for fitting
        :meth:`SaddlePointSystem.estimator` on it.
    dynamics : {"equilibrium", "gradient_flow"}
        The equilibrium saddle point of the mean-field action (sections 2-3) or the single-site
        gradient-flow (DMFT) system (section 4).

    Returns
    -------
    SaddlePointSystem or DMFTSystem

    Raises
    ------
    NoSaddlePointError
        ``dynamics="equilibrium"`` with an activation growing faster than linearly (``x**3``, ``exp``):
        no saddle point exists (eq. (2.6)), as in :class:`~symtransfer.theory.adaptive.AdaptiveKernel`;
        the gradient-flow system still does.
    """
    setting = canonical_setting(setting)
    if dynamics not in DYNAMICS:
        raise ValueError(f"dynamics must be one of {', '.join(DYNAMICS)}, got {dynamics!r}")
    act = get_activation(activation)
    if dynamics == "gradient_flow":
        return _derive_gradient_flow(setting, act, task)
    if setting not in _EQUILIBRIUM_SETTINGS:
        raise ValueError(f"setting {setting!r} is a gradient-flow protocol (the linearised target of "
                         "docs/theory.md section 7); use dynamics='gradient_flow', or one of "
                         f"{', '.join(_EQUILIBRIUM_SETTINGS)}")
    if act.growth == "superlinear":
        raise NoSaddlePointError(_no_saddle_message(act))
    return _derive_equilibrium(setting, act, task)


def _derive_equilibrium(setting: str, act: Activation, task) -> SaddlePointSystem:
    """Action, saddle-point equations, limits and reductions of docs/theory.md sections 2-3."""
    S = _Sym
    is_linear = sp.simplify(act.expr - sp.Symbol("x", real=True)) == 0
    dual = act.dual_kernel_expr()
    if setting == "scratch":
        sys = _single_task(act, S.gamma, S.lam, S.T, S.s2, S.P)
        limits = _lazy_limit(act, sys, S.gamma, S.s2)
        reduced = _reduce_linear_single(S.gamma, S.lam, S.s2) if is_linear else None
        defs = {S.s2: S.T / S.lam, "single-site measure (2.4)": sys["measure"]}
        return SaddlePointSystem("scratch", act, sys["action"], [sys["Phi"], sys["Phihat"]], sys["derivatives"],
                                 sys["equations"], sys["predictor"], limits, reduced, dual, defs, task)

    # transfer: the source is a single task with index 1
    src = _single_task(act, S.gamma1, S.lam1, S.T1, S.s12, S.P, sfx="_1")
    src_red = _reduce_linear_single(S.gamma1, S.lam1, S.s12, sfx="_1") if is_linear else None
    source = SaddlePointSystem("scratch", act, src["action"], [src["Phi"], src["Phihat"]], src["derivatives"],
                               src["equations"], src["predictor"], _lazy_limit(act, src, S.gamma1, S.s12, "_1"),
                               src_red, dual, {S.s12: S.T1 / S.lam1}, task)
    m_def, sc2_def = S.delta / (S.lam2 + S.delta), S.T2 / (S.lam2 + S.delta)
    m, sc2 = S.m, S.sc2
    cond = r"w_2 \mid w_1 \sim \mathcal{N}(m w_1, s_c^2 I)"
    tgt = _single_task(act, S.gamma2, S.lam2, S.T2, S.s22, S.P2, sfx="_2", prior_label=cond)
    # quenched average over the frozen source weights (3.2)
    mats = tgt["mats"]
    lnZ_q = [t for t in tgt["action"].args if isinstance(t, sp.log)][0]
    quenched = Expectation(lnZ_q, r"w_1\sim p_1")
    action2 = tgt["action"] - lnZ_q + quenched
    sym2 = {mats["Phi"].T: mats["Phi"], mats["Phihat"].T: mats["Phihat"]}
    d_hat = _mdiff(action2, mats["Phihat"]).xreplace(sym2)
    d_phi = _mdiff(action2, mats["Phi"]).xreplace(sym2)
    avg2 = Average(Average(mats["phi"] * mats["phi"].T, "tilt"), r"E:w_1\sim p_1")
    _check(sp.simplify(d_hat - (mats["Phi"] - avg2)) == sp.ZeroMatrix(S.P2, S.P2), f"dS2/dPhihat2 = {d_hat}")
    equations = dict(tgt["equations"])
    equations["Phi"] = sp.Eq(mats["Phi"], avg2)
    defs = {m: m_def, sc2: sc2_def, S.s22: S.T2 / S.lam2,
            "target conditional (3.1)": cond + r",\quad \text{tilted by } \exp\left(\frac{\gamma_2^2}{2 s_2^2}"
                                               r"(v_2^T\phi(h_2))^2\right)"}
    m_inf, sc2_inf = sp.limit(m_def, S.delta, sp.oo), sp.limit(sc2_def, S.delta, sp.oo)
    m_0, sc2_0 = m_def.subs(S.delta, 0), sp.simplify(sc2_def.subs(S.delta, 0))
    Phi1_X2 = sp.MatrixSymbol(r"\Phi_{1}(X_{2}, X_{2})", S.P2, S.P2)
    limits = {
        "delta -> inf": r"m \to %s,\ s_c^2 \to %s:\ w_2 = w_1,\ \Phi_2 = \Phi_1(X_2, X_2)" % (
            sp.latex(m_inf), sp.latex(sc2_inf)),
        "delta = 0": r"m = %s,\ s_c^2 = %s = s_2^2:\ \text{the target forgets the source (scratch)}" % (
            sp.latex(m_0), sp.latex(sc2_0)),
        "gamma_2 -> 0": sp.Eq(mats["Phihat"], sp.limit(tgt["coef"], S.gamma2, 0) * mats["Phihat"]),
    }
    reduced = None
    if is_linear:
        reduced, _ = _reduce_linear_joint()
        red_inf = {k: sp.limit(reduced[k].rhs.subs({S.m: m_def, S.sc2: sc2_def}).subs(
            S.c, reduced["c"].rhs), S.delta, sp.oo) for k in ("A", "M")}
        limits["delta -> inf (linear)"] = r"A \to %s,\ M \to %s" % (sp.latex(red_inf["A"]), sp.latex(red_inf["M"]))
        red_0 = {k: sp.simplify(reduced[k].rhs.subs({S.m: 0, S.sc2: S.T2 / S.lam2})) for k in ("A", "M")}
        limits["delta = 0 (linear)"] = r"A = %s,\ M = %s" % (sp.latex(red_0["A"]), sp.latex(red_0["M"]))
    if setting == "finetune":
        # delta -> inf: the conditional collapses to w2 = w1, the tilted average no longer depends on
        # Phihat_2, so the only target equation left is the readout ridge regression
        ridge = sp.Trace(mats["y"].T * (Phi1_X2 + S.lam2 * mats["I"]).inv() * mats["y"])
        action_ft = -S.gamma2**2 / (2 * S.s22) * ridge
        eqs = {"Phi_2": sp.Eq(mats["Phi"], Phi1_X2),
               "v_2": sp.Eq(mats["v"], (Phi1_X2 + S.lam2 * mats["I"]).inv() * mats["y"])}
        pred = sp.Eq(sp.MatrixSymbol("f_{2}(x)", 1, 1), sp.MatrixSymbol(r"\Phi_{1}(x, X_{2})", 1, S.P2) * mats["v"])
        red_ft = None
        if is_linear:
            red_ft = {"A": sp.Eq(S.A, 0), "M": sp.Eq(S.M, 1), "t": sp.Eq(S.t, 1),
                      "v_2": sp.Eq(mats["v"],
                                   (sp.MatrixSymbol("Q", S.P2, S.P2) + S.lam2 * mats["I"]).inv() * mats["y"])}
        defs_ft = {m: m_inf, sc2: sc2_inf,
                   "source kernel on target inputs": r"\Phi_1(X_2, X_2)\ \text{from the source system}"}
        return SaddlePointSystem("finetune", act, action_ft, [], {}, eqs, pred,
                                 {"delta -> inf": limits["delta -> inf"]}, red_ft, dual, defs_ft, task, source)
    return SaddlePointSystem("joint", act, action2, [mats["Phi"], mats["Phihat"]],
                             {mats["Phi"]: d_phi, mats["Phihat"]: d_hat}, equations, tgt["predictor"], limits,
                             reduced, dual, defs, task, source)


# =================================================================================================
# Gradient flow: the single-site DMFT system (docs/theory.md section 4, THEORY.md section 4)
# =================================================================================================
@dataclass
class DMFTSystem(_Document):
    """Single-site gradient-flow equations of one setting, with ``phi`` and ``phi'`` substituted.

    Attributes
    ----------
    setting : {"scratch", "finetune", "lazy_finetune", "joint"}
    activation : Activation
    equations : dict of name -> sympy.Eq
        ``dh(x)/dt``, ``da/dt`` and the residual ``r_mu`` (docs/theory.md section 4).
    initial : dict of name -> str
        Initial conditions.
    observables : dict of name -> sympy.Eq
        ``Phi(t)``, ``G(t)``, the NTK ``Phi + G * K`` and the predictor ``f(x, t)``.
    fixed_point : dict of name -> sympy.Eq
        The stationarity conditions with weight decay, solved by SymPy from ``d/dt = 0``.
    protocol : dict of name -> sympy.Eq or str
        What the transfer setting changes (source features, frozen weights, kernel of the target).
    closed_forms : dict of name -> (sympy.Eq, str)
        Linear ``phi``: the closed forms of the gradient-flow theory
        (:func:`symtransfer.theory.gradient_flow.expressions`).
    notes : list of str
    """

    setting: str
    activation: Activation
    equations: dict
    initial: dict
    observables: dict
    fixed_point: dict
    protocol: dict
    closed_forms: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    task: object = None

    kind = "Gradient-flow (DMFT) equations"
    dynamics = "gradient flow"


def _gf_closed_forms() -> dict:
    """The closed forms of the linear gradient-flow theory, from the SymPy expressions that
    :mod:`symtransfer.theory.gradient_flow` compiles (empty if that module offers none)."""
    try:
        from ..theory import gradient_flow
        exprs = gradient_flow.expressions()
    except (ImportError, AttributeError):
        return {}
    out = {}
    for name, e in exprs.items():
        lhs = sp.Symbol(name.replace("_", r"\_"))
        out[name] = (sp.Eq(lhs, e.expr), f"eq. {e.equation}, {e.description}")
    return out


def _derive_gradient_flow(setting: str, act: Activation, task) -> DMFTSystem:
    """Single-site DMFT of docs/theory.md section 4 with phi, phi' substituted; fixed point by solving
    d/dt = 0 with SymPy; the transfer protocol of the setting."""
    S = _Sym
    t = sp.Symbol("t", nonnegative=True)
    mu, nu = sp.symbols(r"\mu \nu", integer=True, positive=True)
    P = S.P
    gamma, lam, delta = S.gamma, S.lam, S.delta
    xin = sp.Symbol("x")
    xs = sp.IndexedBase("x")
    h, a, r, y = sp.Function("h"), sp.Function("a"), sp.IndexedBase("r"), sp.IndexedBase("y")
    href = sp.Function(r"h_{\mathrm{ref}}")
    Kf = sp.Function("K")
    phi_e, dphi_e = act.expr, act.derivative()
    xv = sp.Symbol("x", real=True)

    def phi(u):
        return phi_e.subs(xv, u)

    def dphi(u):
        return dphi_e.subs(xv, u)

    hmu = h(xs[mu], t)
    E = lambda e: Expectation(e, r"\mathrm{neurons}")  # noqa: E731
    coupling = delta if setting == "joint" else sp.S.Zero
    # dh/dt of (4.1): the field gamma a sum_mu r_mu phi'(h_mu) K(x, x_mu), decay and elastic coupling
    drive_h = gamma * a(t) * sp.Sum(r[mu] * dphi(hmu) * Kf(xin, xs[mu]), (mu, 1, P))
    rhs_h = drive_h - lam * h(xin, t) - coupling * (h(xin, t) - href(xin))
    drive_a = gamma * sp.Sum(r[mu] * phi(hmu), (mu, 1, P))
    rhs_a = drive_a - lam * a(t)
    eqs = {"dh/dt": sp.Eq(sp.Derivative(h(xin, t), t), rhs_h),
           "da/dt": sp.Eq(sp.Derivative(a(t), t), rhs_a),
           "r": sp.Eq(r[mu], y[mu] - E(a(t) * phi(hmu)) / gamma)}
    if setting == "finetune":
        eqs["dh/dt"] = sp.Eq(sp.Derivative(h(xin, t), t), 0)
    initial = {"h": r"h(x, 0) \sim \mathcal{N}(0, \sigma_0^2 K),\quad a(0) \sim \mathcal{N}(0, \sigma_0^2),"
                    r"\quad \sigma_0 = 1"}
    Phi_t = sp.Function(r"\Phi")(xs[mu], xs[nu], t)
    G_t = sp.Function("G")(xs[mu], xs[nu], t)
    hnu = h(xs[nu], t)
    obs = {"Phi": sp.Eq(Phi_t, E(phi(hmu) * phi(hnu))),
           "G": sp.Eq(G_t, E(a(t) ** 2 * dphi(hmu) * dphi(hnu))),
           "NTK": sp.Eq(sp.Function(r"\Theta")(xs[mu], xs[nu], t), Phi_t + G_t * Kf(xs[mu], xs[nu])),
           "f": sp.Eq(sp.Function("f")(xin, t), E(a(t) * phi(h(xin, t))) / gamma)}
    # fixed point: solve d/dt = 0 for a and h (the sums are the fields the neuron sees)
    Sa, Sh = sp.symbols(r"\Sigma_a \Sigma_h")
    a_star = sp.solve(sp.Eq(gamma * Sa - lam * a(t), 0), a(t))[0]
    h_star = sp.solve(sp.Eq(gamma * a(t) * Sh - lam * h(xin, t) - coupling * (h(xin, t) - href(xin)), 0),
                      h(xin, t))[0]
    fixed = {"Sigma_a": sp.Eq(Sa, sp.Sum(r[mu] * phi(hmu), (mu, 1, P))),
             "Sigma_h": sp.Eq(Sh, sp.Sum(r[mu] * dphi(hmu) * Kf(xin, xs[mu]), (mu, 1, P))),
             "a*": sp.Eq(sp.Symbol("a^{*}"), a_star),
             "h*": sp.Eq(sp.Symbol("h^{*}(x)"), h_star.subs(a(t), sp.Symbol("a^{*}"))),
             "predictor": sp.Eq(sp.Symbol("f(x)"), sp.Symbol(r"\Phi(x, X)") * (sp.Symbol(r"\Phi")
                                + lam * sp.Symbol("I")) ** -1 * sp.Symbol("y"))}
    Phi1 = sp.Symbol(r"\Phi_1(X_2, X_2)")
    G1 = sp.Symbol(r"G_1(X_2, X_2)")
    K2 = sp.Symbol("K_{22}")
    lam2 = S.lam2
    protocol = {}
    if setting == "scratch":
        protocol["source"] = r"\text{one task from the random initialisation (the transfer baseline)}"
    else:
        protocol["source"] = (r"\text{source: the process above on } (X_1, y_1) \text{ with preactivations on } "
                              r"X_1 \cup X_2 \cup X_{\mathrm{test}},\ h_1(x) = h(x, t_1)")
    if setting == "finetune":
        protocol["target"] = (r"\text{readout fine-tuning: } h(x, t) = h_1(x) \text{ frozen, fresh readouts } "
                              r"a(0) \sim \mathcal{N}(0, \sigma_0^2)")
        protocol["kernel"] = sp.Eq(sp.Symbol("k_2"), Phi1)
        protocol["predictor"] = sp.Eq(sp.Symbol("f_2(x)"), sp.Symbol(r"\Phi_1(x, X_2)")
                                      * (Phi1 + lam2 * sp.Symbol("I")) ** -1 * sp.Symbol("y_2"))
    elif setting == "lazy_finetune":
        protocol["target"] = (r"\gamma_2 \to 0:\ \text{the target trains linearised around the source weights "
                              r"with a fresh readout}")
        protocol["kernel"] = sp.Eq(sp.Symbol("k_2"), Phi1 + G1 * K2)
        protocol["G1"] = sp.Eq(G1, E(a(t) ** 2 * dphi(hmu) * dphi(hnu)))
        protocol["predictor"] = sp.Eq(sp.Symbol("f_2(x)"), sp.Symbol("k_2(x, X_2)")
                                      * (sp.Symbol("k_2") + lam2 * sp.Symbol("I")) ** -1 * sp.Symbol("y_2"))
    elif setting == "joint":
        protocol["target"] = (r"\text{jointly rich: the target continues from } h(x, 0) = h_1(x),\ "
                              r"h_{\mathrm{ref}} = h_1,\ \text{fresh readouts, coupling } \delta")
        protocol["limits"] = (r"\delta = 0:\ \text{free continuation (the paper's setting)};\quad "
                              r"\delta \to \infty:\ h = h_1 \text{ (readout fine-tuning)}")
    notes = []
    if act.growth == "superlinear":
        notes.append("phi grows faster than linearly: no equilibrium saddle point exists (docs/theory.md (2.6)); "
                     "these gradient-flow equations still apply, and their weight-decay fixed point need not be "
                     "reached from the random initialisation.")
    closed = {}
    is_linear = sp.simplify(act.expr - xv) == 0
    if is_linear:
        closed = _gf_closed_forms()
        if not closed:
            notes.append("the closed forms of the linear gradient-flow theory are provided by "
                         "symtransfer.theory.gradient_flow.expressions(), not available in this installation")
    return DMFTSystem(setting, act, eqs, initial, obs, fixed, protocol, closed, notes, task)
