""""Should I pretrain?": predicted target errors of every use of a source task (docs/advisor.md).

:func:`advise` takes a user's source data ``(X1, y1)`` and (small) target data ``(X2, y2)`` and
predicts, with the infinite-width theories of docs/theory.md, the target test error of

- **scratch**: the network trained on the target alone;
- **readout** fine-tuning: a fresh readout on the frozen source features (kernel ``Phi_1``,
  ``coupling = inf``);
- **lazy** fine-tuning: the linearised network around the source weights with a fresh readout,
  tangent kernel ``Phi_1 + G_1 * K`` (eq. (4.5); for linear ``phi`` this is ``Sigma_1 + I`` in weight
  space, docs/theory.md §7.5);
- **joint** (jointly rich): all weights trained from the source hidden weights with a fresh readout,
  at coupling ``delta`` (gradient flow: ``delta = 0``, the continued flow of §7; equilibrium:
  ``0 < delta < inf`` of §3 -- there ``delta = 0`` is scratch),

over a small grid of feature-learning strengths ``gamma_1, gamma_2``, couplings and (gradient flow)
pretraining times and target training times (early stopping), each with an error bar; it then
reports the best protocol, the predicted gain over scratch and a plain-language verdict.

Which theory computes a row ("fast by construction"):

============  ========================================  ==============================================
activation    ``dynamics="gradient_flow"`` (T = 0)      ``dynamics="equilibrium"`` (T > 0)
============  ========================================  ==============================================
linear        exact finite-D closed forms (eqs. (7.2)-  :class:`~symtransfer.theory.linear.LinearTheory`
              (7.5): the source kernel ``I + chi u u^T``  (eqs. (2.9)-(3.7)), exact
              and min-norm fits) and the exact second-
              moment flow of (7.1) for joint / finite
              times (a ``(D+1) x (D+1)`` ODE)
nonlinear     :class:`~symtransfer.theory.dmft.          :class:`~symtransfer.theory.adaptive.
              GradientFlowDMFT` (population)            AdaptiveKernel` (sampler); no lazy rows
============  ========================================  ==============================================

Error bars. Every row's error is the mean squared error ``mean (f(x) - y)^2`` against the given
labels on evaluation points: the test set when one is given (the predictor is trained on all target
points), otherwise the held-out folds of a ``n_splits``-fold cross-validation over the target points
(each point predicted by the model trained without it; note that this estimates the error at
``(1 - 1/n_splits) P2`` target points). The error bar is the standard error of that mean over the
evaluation points, combined in quadrature with the Monte Carlo error of the population/sampler
(spread over ``n_seeds`` seeds); gains are paired differences on the same points, so their bars are
much smaller than those of the errors.

The module neither prints nor parses arguments; the command is :mod:`symtransfer.advise_cli`, the
HTML report :mod:`symtransfer.report`.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._validation import check_int, check_inputs, check_real, check_targets
from .errors import ConvergenceError, ConvergenceWarning

__all__ = ["Advice", "advise", "PROTOCOLS", "DYNAMICS", "evaluate_task", "default_grid"]

PROTOCOLS = ("scratch", "readout", "lazy", "joint")
DYNAMICS = ("gradient_flow", "equilibrium")

#: Default feature strengths in units of ``g = gamma sqrt(D)`` (the §7 scale): weak, order one, strong.
DEFAULT_G = (0.5, 2.0, 8.0)
#: Default equilibrium couplings of the jointly rich rows.
DEFAULT_COUPLINGS = (0.3, 3.0)

_MIN_TARGET = 4
_FLOW_T_CAP = 1e6


# =============================================================================================
# Results
# =============================================================================================
@dataclass
class Advice:
    """Result of :func:`advise`.

    Attributes
    ----------
    rows : list of dict
        One per protocol and setting: ``protocol``, ``gamma1``, ``gamma2``, ``coupling``,
        ``pretrain_time``, ``target_time``, ``error``, ``stderr`` (its error bar), ``mc_error``,
        ``gain`` and ``gain_stderr`` (against the best scratch row, paired), ``seconds`` (cost),
        ``method`` (which theory), ``note``.
    best : dict
        The recommended row (scratch unless a transfer row beats scratch by more than twice its
        paired error bar).
    best_overall : dict
        The row of lowest predicted error, significant or not.
    scratch : dict
        The best scratch row (the baseline of every gain).
    verdict : str
        Plain-language summary.
    alignment : float
        Measured task alignment :func:`symtransfer.datasets.task_alignment` (``nan`` if undefined).
    params : dict
        Every setting used (dynamics, activation, grid, evaluation scheme, sizes).
    verification : dict or None
        With ``verify=True``: simulated wide networks for the recommendation and scratch, theory and
        simulation side by side (``rows``, ``agree``, ``verdict_agrees``, ``width``, ``seconds``).
    failures : list of (task, message)
        Settings whose theory did not solve (e.g. an equilibrium saddle point at too strong feature
        learning): left out of the rows and of the recommendation, and named in the verdict.
    seconds : float
        Wall time of the whole advice.
    """

    rows: list
    best: dict
    best_overall: dict
    scratch: dict
    verdict: str
    alignment: float
    params: dict
    verification: dict | None = None
    seconds: float = 0.0
    curves: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)

    @property
    def recommendation(self) -> str:
        """The best protocol and its settings in words, e.g. ``readout fine-tuning (gamma1 = 0.447)``."""
        return describe(self.best)

    @property
    def cost(self) -> list:
        """Seconds spent on each row (same order as :attr:`rows`)."""
        return [r["seconds"] for r in self.rows]

    def to_frame(self):
        """The rows as a tidy pandas DataFrame (one row per protocol and setting)."""
        import pandas as pd

        cols = ["protocol", "gamma1", "gamma2", "coupling", "pretrain_time", "target_time", "error", "stderr",
                "mc_error", "gain", "gain_stderr", "seconds", "method", "note"]
        return pd.DataFrame([{c: r.get(c) for c in cols} for r in self.rows], columns=cols)

    def to_html(self, path, *, figures=True):
        """Write the self-contained HTML report (and PNG/PDF figures beside it); returns the path."""
        from .report import write_report

        return write_report(self, path, figures=figures)

    def table(self) -> str:
        """The rows as fixed-width text (what the command prints)."""
        head = (f"{'protocol':<8} {'gamma1':>7} {'gamma2':>7} {'coupling':>8} {'t1':>6} {'t2':>6} "
                f"{'error':>9} {'+-':>7} {'gain':>9} {'+-':>7} {'cost[s]':>8}  method")
        lines = [head]
        for r in self.rows:
            lines.append(f"{r['protocol']:<8} {_fmt(r['gamma1']):>7} {_fmt(r['gamma2']):>7} {_fmt(r['coupling']):>8} "
                         f"{_fmt(r['pretrain_time']):>6} {_fmt(r['target_time']):>6} {r['error']:>9.4f} "
                         f"{r['stderr']:>7.4f} {r['gain']:>9.4f} {r['gain_stderr']:>7.4f} {r['seconds']:>8.2f}  "
                         f"{r['method']}")
        return "\n".join(lines)

    def verification_table(self) -> str:
        """Theory and simulation side by side (empty without ``verify=True``)."""
        if not self.verification:
            return ""
        lines = [f"{'protocol':<8} {'theory':>9} {'+-':>7} {'simulated':>10} {'+-':>7} {'agree':>6}"]
        for v in self.verification["rows"]:
            lines.append(f"{v['protocol']:<8} {v['theory']:>9.4f} {v['theory_stderr']:>7.4f} {v['simulated']:>10.4f} "
                         f"{v['simulated_stderr']:>7.4f} {'yes' if v['agree'] else 'NO':>6}")
        return "\n".join(lines)


def _fmt(v):
    if v is None:
        return "-"
    v = float(v)
    if math.isinf(v):
        return "inf"
    return f"{v:.3g}"


def describe(row) -> str:
    """A row's protocol and settings in words, e.g. ``readout fine-tuning (gamma1 = 0.447)``."""
    name = {"scratch": "training from scratch", "readout": "readout fine-tuning", "lazy": "lazy fine-tuning",
            "joint": "jointly rich transfer"}[row["protocol"]]
    parts = []
    for key, label in (("gamma1", "gamma1"), ("gamma2", "gamma2"), ("coupling", "delta"),
                       ("pretrain_time", "t1"), ("target_time", "t2")):
        v = row.get(key)
        if v is None or (key in ("pretrain_time", "target_time") and math.isinf(v)):
            continue
        if key == "coupling" and row["protocol"] in ("readout", "scratch", "lazy"):
            continue
        parts.append(f"{label} = {_fmt(v)}")
    return name + (f" ({', '.join(parts)})" if parts else "")


# =============================================================================================
# Validation
# =============================================================================================
def _check_target_labels(y, name):
    vals = np.unique(y)
    if vals.size == 1:
        raise ValueError(f"{name} is constant (every label is {vals[0]:g}): a one-class target has nothing to learn; "
                         f"give at least two distinct labels")
    return y


def _check_data(X1, y1, X2, y2, X_test, y_test, n_splits):
    X1 = check_inputs(X1, "X1")
    y1 = check_targets(y1, X1.shape[0], "y1")
    X2 = check_inputs(X2, "X2")
    if X2.shape[1] != X1.shape[1]:
        raise ValueError(f"X2 has {X2.shape[1]} features but X1 has {X1.shape[1]}: source and target must share "
                         f"the input space")
    y2 = check_targets(y2, X2.shape[0], "y2")
    if np.unique(y1).size == 1:
        raise ValueError(f"y1 is constant (every label is {y1[0]:g}): a one-class source teaches no feature")
    _check_target_labels(y2, "y2")
    if (X_test is None) != (y_test is None):
        raise ValueError("X_test and y_test must be given together")
    if X_test is not None:
        X_test = check_inputs(X_test, "X_test")
        if X_test.shape[1] != X1.shape[1]:
            raise ValueError(f"X_test has {X_test.shape[1]} features but X1 has {X1.shape[1]}")
        y_test = check_targets(y_test, X_test.shape[0], "y_test")
        if X2.shape[0] < 2:
            raise ValueError(f"X2 has {X2.shape[0]} target point(s): at least 2 are needed")
    else:
        need = max(_MIN_TARGET, n_splits)
        if X2.shape[0] < need:
            raise ValueError(f"X2 has {X2.shape[0]} target points: cross-validation with n_splits={n_splits} needs "
                             f"at least {need} (or give X_test, y_test)")
    return X1, y1, X2, y2, X_test, y_test


def _check_grid(name, values, *, low_open=True, allow_inf=False, low=0.0):
    if np.isscalar(values):
        values = [values]
    out = []
    try:
        seq = list(values)
    except TypeError:
        raise ValueError(f"{name} must be a number or a list of numbers, got {values!r}") from None
    if not seq:
        raise ValueError(f"{name} must not be empty")
    for v in seq:
        out.append(check_real(f"{name} entry", v, low=low, low_open=low_open, allow_inf=allow_inf))
    return tuple(dict.fromkeys(out))


def default_grid(dim: int) -> tuple:
    """The default ``gamma`` grid for inputs of dimension ``dim``: ``g/sqrt(dim)`` for ``g`` in
    :data:`DEFAULT_G` (``g = gamma sqrt(D)`` is the scale on which the source kernel's spike
    ``chi = sqrt(1 + g^2 q) - 1`` of eq. (7.3) is of order one)."""
    return tuple(float(g / math.sqrt(dim)) for g in DEFAULT_G)


# =============================================================================================
# Exact linear gradient flow (docs/theory.md §7)
# =============================================================================================
def _min_norm_source(X, y, gamma):
    """Source kernel of an infinitely wide linear network after gradient flow to convergence at
    ``lambda = 0``: ``Sigma_1 = I + chi u u^T`` along the min-norm fit (eqs. (7.3), (7.5))."""
    D = X.shape[1]
    w, *_ = np.linalg.lstsq(X / math.sqrt(D), y, rcond=None)
    q = float(w @ w) / D
    chi = math.sqrt(1.0 + gamma**2 * D * q) - 1.0
    nrm = float(np.linalg.norm(w))
    u = w / nrm if nrm > 0 else np.zeros(D)
    return np.eye(D) + chi * np.outer(u, u), chi


def _linear_flow(X, y, M0, gamma, times):
    """Exact second-moment flow of the infinite-width linear network, eq. (7.1) at ``lambda = 0``.

    Every neuron's ``(a, w)`` obeys ``d/dt (a, w) = gamma A(v) (a, w)`` with the shared field
    ``v = X^T r/sqrt(D)``, so all neurons share one propagator ``L(t)`` and the law's second moment
    is ``M(t) = L M0 L^T``; ``f(x) = M[0, 1:].x/(gamma sqrt D)``. ``v`` lies in the row space of ``X``,
    so ``L`` is the identity outside ``span(e_a) + rowspace(X)``: the ODE is integrated for the
    ``(r+1) x (r+1)`` block of ``L`` in that subspace (``r = rank X <= min(P, D)``) -- no population,
    no width, exact up to the ODE tolerance. ``times`` may contain ``inf``: the flow then runs until
    the field vanishes (its stationary point). Returns ``(w_effs, M_end)``.
    """
    from scipy.integrate import solve_ivp

    P, D = X.shape
    sD = math.sqrt(D)
    U, sv, Vt = np.linalg.svd(X, full_matrices=False)
    r = int(np.sum(sv > sv[0] * 1e-12)) if sv.size and sv[0] > 0 else 0
    Qx = Vt[:r].T  # (D, r) orthonormal basis of the row space
    Q = np.zeros((D + 1, r + 1))
    Q[0, 0] = 1.0
    Q[1:, 1:] = Qx
    Mt0 = Q.T @ M0 @ Q
    XQ = X @ Qx
    n = r + 1

    def rhs(_t, ell):
        L = ell.reshape(n, n)
        row0 = L[0] @ Mt0 @ L.T  # first row of L M0 L^T in the subspace basis
        res = y - XQ @ (row0[1:] / gamma) / sD
        v = XQ.T @ res / sD
        dL = np.empty_like(L)
        dL[0] = v @ L[1:]
        dL[1:] = np.outer(v, L[0])
        return (gamma * dL).ravel()

    def field(ell):
        return float(np.linalg.norm(rhs(0.0, ell)))

    def w_eff(ell):
        L = ell.reshape(n, n)
        m = L[0] @ Q.T @ M0  # row 0 of L M0 (L = Q Lt Q^T + I - Q Q^T), length D + 1
        mq = m @ Q
        row = mq @ L.T @ Q.T + m - mq @ Q.T
        return row[1:] / gamma

    def step(ell, t0, t1):
        # explicit: near the stationary point LSODA switches to its stiff method, whose finite-difference
        # Jacobians cost more than the (mildly stiff) explicit steps they save (measured 7x on digits)
        sol = solve_ivp(rhs, (t0, t1), ell, method="RK45", rtol=1e-9, atol=1e-11)
        if not sol.success:
            raise ConvergenceError(f"the linear flow (7.1) failed at t = {t0:g}: {sol.message}")
        return sol.y[:, -1].copy()

    ell = np.eye(n).ravel()
    t_now = 0.0
    out = {}
    for t in sorted(t for t in times if math.isfinite(t)):
        if t > t_now:
            ell, t_now = step(ell, t_now, t), t
        out[t] = w_eff(ell)
    if any(math.isinf(t) for t in times):
        g0 = max(field(ell), 1.0)
        span = max(1.0, t_now)
        while field(ell) > 1e-9 * g0 and t_now < _FLOW_T_CAP:
            ell, t_now, span = step(ell, t_now, t_now + span), t_now + span, 2 * span
        if field(ell) > 1e-6 * g0:
            warnings.warn(f"the linear flow (7.1) had not reached its stationary point at t = {t_now:g} "
                          f"(field {field(ell):.2e}); the t = inf row uses that state", ConvergenceWarning,
                          stacklevel=3)
        out[math.inf] = w_eff(ell)
    L = ell.reshape(n, n)
    Lfull = Q @ L @ Q.T + np.eye(D + 1) - Q @ Q.T
    return [out[t] for t in times], Lfull @ M0 @ Lfull.T


def _krr(C, Xtr, ytr, Xev, ridge=0.0):
    """Kernel (ridge) regression with kernel ``x.C x'/D``; ridgeless is the min-norm interpolant
    (the limit of gradient flow of a readout from zero)."""
    D = Xtr.shape[1]
    K = Xtr @ C @ Xtr.T / D
    Ke = Xev @ C @ Xtr.T / D
    if ridge > 0.0:
        return Ke @ np.linalg.solve(K + ridge * np.eye(len(K)), ytr)
    coef, *_ = np.linalg.lstsq(K, ytr, rcond=None)
    return Ke @ coef


# =============================================================================================
# Tasks: one source setting and the target rows that share it
# =============================================================================================
def _splits(n, n_splits, seed):
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1717]))
    perm = rng.permutation(n)
    folds = np.array_split(perm, n_splits)
    return [(np.setdiff1d(perm, f), np.sort(f)) for f in folds]


def _evaluation(data, cfg):
    """``[(X2_train, y2_train, X_eval, y_eval)]``: the test set, or the cross-validation folds."""
    X2, y2 = data["X2"], data["y2"]
    if data.get("X_test") is not None:
        return [(X2, y2, data["X_test"], data["y_test"])]
    return [(X2[tr], y2[tr], X2[ev], y2[ev]) for tr, ev in _splits(len(X2), cfg["n_splits"], cfg["seed"])]


def _build_tasks(cfg):
    """The grid as a list of tasks (JSON-ready dicts): one per scratch strength, one per source."""
    tasks = []
    # the linear network trained to convergence from scratch predicts the min-norm fit whatever
    # gamma2 is (§7.2): one scratch row
    one = cfg["linear"] and cfg["dynamics"] == "gradient_flow" and all(math.isinf(t) for t in cfg["target_times"])
    # (gamma2 is then only the simulation's: the largest, whose O(1/(gamma sqrt N)) initial function is smallest)
    for g2 in (cfg["gammas2"][-1:] if one else cfg["gammas2"]):
        tasks.append({"kind": "scratch", "gamma2": g2})
    for g1 in cfg["gammas"]:
        for t1 in cfg["pretrain_times"]:
            tasks.append({"kind": "source", "gamma1": g1, "pretrain_time": t1})
    return tasks


def _row(protocol, errs_by_seed, seconds, method, *, gamma1=None, gamma2=None, coupling=None, pretrain_time=None,
         target_time=None, note=""):
    E = np.mean(np.asarray(errs_by_seed, dtype=np.float64), axis=0)  # per-point squared errors
    per_seed = [float(np.mean(e)) for e in errs_by_seed]
    mc = float(np.std(per_seed, ddof=1) / math.sqrt(len(per_seed))) if len(per_seed) > 1 else 0.0
    return {"protocol": protocol, "gamma1": gamma1, "gamma2": gamma2, "coupling": coupling,
            "pretrain_time": pretrain_time, "target_time": target_time, "sq_errors": E.tolist(),
            "error": float(E.mean()), "mc_error": mc, "seconds": float(seconds), "method": method, "note": note}


def _quiet(func, notes):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        out = func()
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            notes.add("not converged at its time limit")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return out


def _linear_gf_task(task, data, cfg, splits):
    X1, y1 = data["X1"], data["y1"]
    D = X1.shape[1]
    times2 = cfg["target_times"]
    rows = []
    notes = set()
    if task["kind"] == "scratch":
        g2 = task["gamma2"]
        t0 = time.perf_counter()
        errs = {t: [] for t in times2}
        for Xtr, ytr, Xev, yev in splits:
            if all(math.isinf(t) for t in times2):
                # min-norm fit, whatever gamma (§7.2): no flow needed
                ws = [np.linalg.lstsq(Xtr / math.sqrt(D), ytr, rcond=None)[0]]
            else:
                ws, _ = _quiet(lambda: _linear_flow(Xtr, ytr, np.eye(D + 1), g2, times2), notes)
            for t, w in zip(times2, ws):
                errs[t].append((Xev @ w / math.sqrt(D) - yev) ** 2)
        dt = (time.perf_counter() - t0) / len(times2)
        method = "closed form (7.5)" if all(math.isinf(t) for t in times2) else "exact flow (7.1)"
        for t in times2:
            rows.append(_row("scratch", [np.concatenate(errs[t])], dt, method, gamma2=g2, target_time=t,
                             note="; ".join(sorted(notes))))
        return rows
    g1, t1 = task["gamma1"], task["pretrain_time"]
    t0 = time.perf_counter()
    if math.isinf(t1):
        S1, _ = _min_norm_source(X1, y1, g1)
        src_method = "closed form (7.3)"
    else:
        _, M = _quiet(lambda: _linear_flow(X1, y1, np.eye(D + 1), g1, [t1]), notes)
        S1 = M[1:, 1:]
        src_method = "exact flow (7.1)"
    t_src = time.perf_counter() - t0
    n_rows = 2 + len(cfg["gammas2"]) * len(times2) if "joint" in cfg["protocols"] else 2
    share = t_src / n_rows
    common = dict(gamma1=g1, pretrain_time=t1)
    for proto, C in (("readout", S1), ("lazy", S1 + np.eye(D))):
        if proto not in cfg["protocols"]:
            continue
        t0 = time.perf_counter()
        e = [(_krr(C, Xtr, ytr, Xev) - yev) ** 2 for Xtr, ytr, Xev, yev in splits]
        rows.append(_row(proto, [np.concatenate(e)], time.perf_counter() - t0 + share,
                         f"{src_method}, min-norm kernel regression", coupling=math.inf if proto == "readout" else 0.0,
                         target_time=math.inf, **common))
    if "joint" in cfg["protocols"]:
        M0 = np.zeros((D + 1, D + 1))
        M0[0, 0] = 1.0  # fresh unit-variance readout, independent of the source weights
        M0[1:, 1:] = S1
        for g2 in cfg["gammas2"]:
            t0 = time.perf_counter()
            errs = {t: [] for t in times2}
            jnotes = set()
            for Xtr, ytr, Xev, yev in splits:
                ws, _ = _quiet(lambda: _linear_flow(Xtr, ytr, M0, g2, times2), jnotes)
                for t, w in zip(times2, ws):
                    errs[t].append((Xev @ w / math.sqrt(D) - yev) ** 2)
            dt = (time.perf_counter() - t0) / len(times2)
            for t in times2:
                rows.append(_row("joint", [np.concatenate(errs[t])], dt + share, f"{src_method}, exact flow (7.1)",
                                 gamma2=g2, coupling=0.0, target_time=t, note="; ".join(sorted(jnotes)), **common))
    return rows


def _dmft_task(task, data, cfg, splits):
    from .theory.dmft import GradientFlowDMFT

    X1, y1 = data["X1"], data["y1"]
    act = cfg["activation"]
    base = dict(activation=act, weight_decay=0.0, temperature=0.0, population=cfg["population"],
                t_max=cfg["t_max"])
    seeds = [cfg["seed"] + k for k in range(cfg["n_seeds"])]
    times2 = cfg["target_times"]

    def at_times(model, Xev, yev):
        # errors at the requested target times: the final predictor for inf, the recorded test-loss
        # curve (a mean, no per-point errors) for finite times
        final = (model.predict(Xev) - yev) ** 2
        out = []
        for t in times2:
            if math.isinf(t):
                out.append(final)
            else:
                h = model.history_
                i = int(np.argmin(np.abs(np.asarray(h["time"]) - t)))
                out.append(np.full(len(yev), float(h["test_loss"][i])))
        return out

    rows, notes = [], set()
    if task["kind"] == "scratch":
        g2 = task["gamma2"]
        t0 = time.perf_counter()
        errs = {t: [] for t in times2}
        for s in seeds:
            per = {t: [] for t in times2}
            for Xtr, ytr, Xev, yev in splits:
                m = _quiet(lambda: GradientFlowDMFT(gamma=g2, seed=s, **base).fit(Xtr, ytr, Xev, y_eval=yev), notes)
                for t, e in zip(times2, at_times(m, Xev, yev)):
                    per[t].append(e)
            for t in times2:
                errs[t].append(np.concatenate(per[t]))
        dt = (time.perf_counter() - t0) / len(times2)
        for t in times2:
            rows.append(_row("scratch", errs[t], dt, f"GradientFlowDMFT (M = {cfg['population']})", gamma2=g2,
                             target_time=t, note="; ".join(sorted(notes))))
        return rows
    g1, t1 = task["gamma1"], task["pretrain_time"]
    src_kw = dict(base, t_max=t1 if math.isfinite(t1) else cfg["t_max"], early_stop=not math.isfinite(t1))
    results = {}  # (protocol, gamma2, t) -> list over seeds of per-point errors
    cost = {}
    t_src = 0.0
    for s in seeds:
        t0 = time.perf_counter()
        src = _quiet(lambda: GradientFlowDMFT(gamma=g1, seed=s, **src_kw).fit(X1, y1), notes)
        t_src += time.perf_counter() - t0
        jobs = [("readout", None), ("lazy", None)] + [("joint", g2) for g2 in cfg["gammas2"]]
        for proto, g2 in jobs:
            if proto not in cfg["protocols"]:
                continue
            t0 = time.perf_counter()
            per = {t: [] for t in times2}
            for Xtr, ytr, Xev, yev in splits:
                kw = {"readout": dict(mode="readout", coupling=math.inf), "lazy": dict(mode="lazy", coupling=0.0),
                      "joint": dict(mode="joint", coupling=0.0, gamma=g2)}[proto]
                tg = _quiet(lambda: src.transfer(Xtr, ytr, Xev, y2_eval=yev, t_max=cfg["t_max"], early_stop=True,
                                                 **kw), notes)
                outs = at_times(tg, Xev, yev) if proto == "joint" else [(tg.predict(Xev) - yev) ** 2]
                for t, e in zip(times2 if proto == "joint" else [math.inf], outs):
                    per[t].append(e)
            for t, lst in per.items():
                if lst:
                    results.setdefault((proto, g2, t), []).append(np.concatenate(lst))
            cost[(proto, g2)] = cost.get((proto, g2), 0.0) + time.perf_counter() - t0
    share = t_src / max(1, len(cost))
    method = f"GradientFlowDMFT (M = {cfg['population']}, {len(seeds)} seed{'s' if len(seeds) > 1 else ''})"
    for (proto, g2, t), errs in results.items():
        n_t = len(times2) if proto == "joint" else 1
        rows.append(_row(proto, errs, cost[(proto, g2)] / n_t + share, method, gamma1=g1, gamma2=g2,
                         coupling={"readout": math.inf}.get(proto, 0.0), pretrain_time=t1, target_time=t,
                         note="; ".join(sorted(notes))))
    return rows


def _equilibrium_task(task, data, cfg, splits):
    linear = cfg["linear"]
    lam, T = cfg["weight_decay"], cfg["temperature"]
    X1, y1 = data["X1"], data["y1"]
    seeds = [0] if linear else [cfg["seed"] + k for k in range(cfg["n_seeds"])]

    def model(gamma, seed):
        if linear:
            from .theory.linear import LinearTheory

            return LinearTheory(gamma=gamma, weight_decay=lam, temperature=T)
        from .theory.adaptive import AdaptiveKernel

        return AdaptiveKernel(cfg["activation"], gamma=gamma, weight_decay=lam, temperature=T,
                              n_samples=cfg["n_samples"], seed=seed)

    method = "LinearTheory (exact)" if linear else f"AdaptiveKernel ({cfg['n_samples']} samples, {len(seeds)} seeds)"
    rows, notes = [], set()
    if task["kind"] == "scratch":
        g2 = task["gamma2"]
        t0 = time.perf_counter()
        errs = []
        for s in seeds:
            errs.append(np.concatenate([(_quiet(lambda: model(g2, s).fit(Xtr, ytr), notes).predict(Xev) - yev) ** 2
                                        for Xtr, ytr, Xev, yev in splits]))
        rows.append(_row("scratch", errs, time.perf_counter() - t0, method, gamma2=g2, coupling=0.0,
                         note="; ".join(sorted(notes))))
        return rows
    g1 = task["gamma1"]
    results, cost, t_src = {}, {}, 0.0
    for s in seeds:
        t0 = time.perf_counter()
        src = _quiet(lambda: model(g1, s).fit(X1, y1), notes)
        t_src += time.perf_counter() - t0
        jobs = [("readout", g1, math.inf)]
        if linear:
            jobs.append(("lazy", None, None))
        jobs += [("joint", g2, d) for g2 in cfg["gammas2"] for d in cfg["couplings"]]
        for proto, g2, d in jobs:
            if proto not in cfg["protocols"]:
                continue
            t0 = time.perf_counter()
            e = []
            for Xtr, ytr, Xev, yev in splits:
                if proto == "lazy":
                    from .theory.linear import linear_kernel

                    s2 = T / lam
                    K = src.kernel(Xtr) + s2 * linear_kernel(Xtr, Xtr)
                    Ke = src.kernel(Xev, Xtr) + s2 * linear_kernel(Xev, Xtr)
                    f = Ke @ np.linalg.solve(K + lam * np.eye(len(K)), ytr)
                else:
                    # not the default target_seed(s) = s + 1: that is replicate s + 1's source seed, and
                    # the replicates' spread is the error bar, so their random streams must not be shared
                    kw = {} if linear else {"seed": s + 1000}
                    f = _quiet(lambda: src.transfer(Xtr, ytr, gamma=g2, weight_decay=lam, temperature=T, coupling=d,
                                                    **kw), notes).predict(Xev)
                e.append((f - yev) ** 2)
            results.setdefault((proto, g2, d), []).append(np.concatenate(e))
            cost[(proto, g2, d)] = cost.get((proto, g2, d), 0.0) + time.perf_counter() - t0
    share = t_src / max(1, len(cost))
    for (proto, g2, d), errs in results.items():
        rows.append(_row(proto, errs, cost[(proto, g2, d)] + share, method, gamma1=g1,
                         gamma2=g2 if proto == "joint" else None, coupling=d if proto != "lazy" else None,
                         note="; ".join(sorted(notes))))
    return rows


def _run_task(task, data, cfg):
    splits = _evaluation(data, cfg)
    if cfg["dynamics"] == "equilibrium":
        return _equilibrium_task(task, data, cfg, splits)
    if cfg["linear"]:
        return _linear_gf_task(task, data, cfg, splits)
    return _dmft_task(task, data, cfg, splits)


def evaluate_task(params: dict) -> dict:
    """Sweep-store evaluator (``"symtransfer.advisor:evaluate_task"``): one task of the advice grid.

    ``params`` holds ``data`` (an ``.npz`` written by :func:`advise`), ``sha`` (its digest, part of
    the point's identity so that finished rows are reused only for the same data), ``config`` and
    ``task`` (JSON strings). Returns ``{"rows": JSON string}``.
    """
    with np.load(params["data"]) as z:
        if hashlib.sha256(b"".join(z[k].tobytes() for k in sorted(z.files))).hexdigest() != params["sha"]:
            raise ValueError(f"data file {params['data']!r} changed since the advice started")
        data = {k: z[k] for k in z.files}
    data.setdefault("X_test", None)
    data.setdefault("y_test", None)
    cfg = _decode(json.loads(params["config"]))
    task = _decode(json.loads(params["task"]))
    return {"rows": json.dumps(_encode(_run_task(task, data, cfg)))}


def _encode(obj):
    if isinstance(obj, float) and math.isinf(obj):
        return "inf" if obj > 0 else "-inf"
    if isinstance(obj, dict):
        return {k: _encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode(v) for v in obj]
    return obj


def _decode(obj):
    if obj == "inf":
        return math.inf
    if isinstance(obj, dict):
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


def _run_store(tasks, data, cfg, store, backend, workers, progress):
    from .sweep import load_results, normalise_point, point_key, run_sweep

    store = Path(store)
    arrays = {k: v for k, v in data.items() if v is not None}
    sha = hashlib.sha256(b"".join(arrays[k].tobytes() for k in sorted(arrays))).hexdigest()
    data_path = store.with_name(f"{store.name}.data-{sha[:16]}.npz")
    if not data_path.exists():
        np.savez(data_path, **arrays)
    cfg_json = json.dumps(_encode(cfg), sort_keys=True)
    points = [{"method": "symtransfer.advisor:evaluate_task", "data": str(data_path.resolve()), "sha": sha,
               "config": cfg_json, "task": json.dumps(_encode(t), sort_keys=True)} for t in tasks]
    report = run_sweep(points, store, local_cluster=(backend == "dask"), workers=workers, progress=progress,
                       allow_code=True)
    failed = {point_key(normalise_point(p, allow_code=True)): err for p, err in report.failures}
    keys = [point_key(normalise_point(p, allow_code=True)) for p in points]
    df = load_results(store)
    by_key = {k: r for k, r in zip(df["key"], df["rows"])} if len(df) else {}
    rows, failures = [], []
    for k, t in zip(keys, tasks):
        if k in by_key:
            rows.extend(_decode(json.loads(by_key[k])))
        else:
            failures.append((t, failed.get(k, "not computed")))
    return rows, report.n_already_done, failures


# =============================================================================================
# advise
# =============================================================================================
def advise(X1, y1, X2, y2, *, activation="relu", dynamics="gradient_flow", X_test=None, y_test=None, gammas=None,
           gammas2=None, couplings=DEFAULT_COUPLINGS, pretrain_times=(math.inf,), target_times=(math.inf,),
           protocols=PROTOCOLS, n_splits=5, n_seeds=2, population=400, t_max=50.0, n_samples=2048,
           weight_decay=1.0, temperature=1.0, verify=False, verify_width=1000, verify_steps=3000, verify_seeds=2,
           progress=True, store=None, backend="local", workers=1, seed=0) -> Advice:
    """Predict the target test error of scratch, readout / lazy fine-tuning and jointly rich transfer.

    Parameters
    ----------
    X1, y1 : arrays (P1, D), (P1,)
        Source training data.
    X2, y2 : arrays (P2, D), (P2,)
        Target training data (at least 4 points, and ``n_splits`` without a test set).
    activation : str
        ``phi`` (any name :func:`symtransfer.activations.get_activation` accepts). ``"linear"`` uses the
        exact theories; anything else the population (gradient flow) or the sampler (equilibrium).
    dynamics : {"gradient_flow", "equilibrium"}
        ``"gradient_flow"``: ``T = 0``, ``lambda = 0``, from the random initialisation of eq. (1.2)
        (docs/theory.md §4, §7); ``"equilibrium"``: Langevin at ``weight_decay``, ``temperature``
        (§2-§3), source and target alike.
    X_test, y_test : arrays, optional
        Target test set. Without it the errors are cross-validated over ``n_splits`` target folds.
    gammas, gammas2 : sequence of float > 0, optional
        Source and target feature strengths ``gamma_1``, ``gamma_2`` (network convention, eq. (1.2));
        default :func:`default_grid` (``g = gamma sqrt(D)`` in 0.5, 2, 8) for both.
    couplings : sequence of float > 0
        Equilibrium couplings ``delta`` of the jointly rich rows (``inf`` is readout fine-tuning and
        ``0`` scratch, both rows of their own). Unused by gradient flow, whose jointly rich rows have
        ``delta = 0`` (continued flow from the source weights with a fresh readout).
    pretrain_times : sequence of float > 0 or inf
        Gradient flow: source training times ``t1`` (``inf``: to convergence).
    target_times : sequence of float > 0 or inf
        Gradient flow: target training times ``t2`` of the scratch and jointly rich rows (early
        stopping; ``inf``: to convergence). For the population, finite times are read from the recorded
        test-loss curve (a mean: their error bar is the Monte Carlo part only).
    protocols : subset of ("scratch", "readout", "lazy", "joint")
        Scratch is always included (it is the baseline).
    n_splits : int >= 2
        Cross-validation folds (without a test set).
    n_seeds : int >= 1
        Seeds of the population / sampler (their spread is the Monte Carlo error); the exact linear
        theories use one.
    population, t_max : int, float
        ``GradientFlowDMFT`` population size and time limit (nonlinear gradient flow).
    n_samples : int
        ``AdaptiveKernel`` Monte Carlo samples (nonlinear equilibrium).
    weight_decay, temperature : float > 0
        Equilibrium ``lambda`` (also the target ridge) and ``T``.
    verify : bool
        Also simulate width-``verify_width`` :class:`~symtransfer.sim.WideNetwork` s (``verify_steps``
        steps, ``verify_seeds`` seeds) on the same data and splits for the recommendation and scratch.
    progress : bool
        tqdm progress bars.
    store : path, optional
        SQLite results store (:mod:`symtransfer.sweep`): finished tasks are reused when the same data
        and settings come again (resumable); the data are saved beside it as ``<store>.data-<sha>.npz``.
    backend : {"local", "dask"}
        With ``store``: local worker processes or a Dask ``LocalCluster`` of ``workers`` workers.
    workers : int >= 1
    seed : int >= 0
        Seeds the folds, the populations, the samplers and the simulations.

    Returns
    -------
    Advice

    Raises
    ------
    ValueError
        Bad input, naming the argument: mismatched dimensions, NaN/inf, one-class (constant) targets,
        too few target points, unknown options.
    """
    t_start = time.perf_counter()
    if dynamics not in DYNAMICS:
        raise ValueError(f"dynamics must be one of {', '.join(map(repr, DYNAMICS))}, got {dynamics!r}")
    from .activations import get_activation

    if not isinstance(activation, str):
        raise ValueError(f"activation must be the name or formula of an activation (str), got {activation!r}")
    act = get_activation(activation)
    linear = activation.strip().lower() in ("linear", "identity", "x", "id")
    n_splits = check_int("n_splits", n_splits, low=2)
    X1, y1, X2, y2, X_test, y_test = _check_data(X1, y1, X2, y2, X_test, y_test, n_splits)
    D = X1.shape[1]
    gammas = default_grid(D) if gammas is None else _check_grid("gammas", gammas)
    gammas2 = gammas if gammas2 is None else _check_grid("gammas2", gammas2)
    couplings = _check_grid("couplings", couplings)
    pretrain_times = _check_grid("pretrain_times", pretrain_times, allow_inf=True)
    target_times = _check_grid("target_times", target_times, allow_inf=True)
    if isinstance(protocols, str):
        protocols = (protocols,)
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad:
        raise ValueError(f"protocols must be a subset of {', '.join(PROTOCOLS)}, got {bad}")
    protocols = tuple(p for p in PROTOCOLS if p in protocols or p == "scratch")
    n_seeds = check_int("n_seeds", n_seeds, low=1)
    population = check_int("population", population, low=2)
    t_max = check_real("t_max", t_max, low=0.0, low_open=True)
    n_samples = check_int("n_samples", n_samples, low=256)
    weight_decay = check_real("weight_decay", weight_decay, low=0.0, low_open=True)
    temperature = check_real("temperature", temperature, low=0.0, low_open=True)
    seed = check_int("seed", seed, low=0)
    verify_width = check_int("verify_width", verify_width, low=2)
    verify_steps = check_int("verify_steps", verify_steps, low=1)
    verify_seeds = check_int("verify_seeds", verify_seeds, low=1)
    workers = check_int("workers", workers, low=1)
    if backend not in ("local", "dask"):
        raise ValueError(f"backend must be 'local' or 'dask', got {backend!r}")
    if not isinstance(verify, (bool, np.bool_)) or not isinstance(progress, (bool, np.bool_)):
        raise ValueError("verify and progress must be True or False")
    if dynamics == "equilibrium" and not linear and "lazy" in protocols:
        protocols = tuple(p for p in protocols if p != "lazy")  # documented: no public G_1 of the sampler
    if dynamics == "equilibrium" and act.growth == "superlinear":
        from .errors import NoSaddlePointError

        # refused before any computation, with the same reason AdaptiveKernel gives (eq. (2.6))
        raise NoSaddlePointError(f"activation {activation!r} grows faster than linearly: the equilibrium theory "
                                 f"does not exist for it (docs/theory.md eq. (2.6)); use dynamics='gradient_flow'")

    cfg = dict(dynamics=dynamics, activation=activation, linear=linear, gammas=list(gammas), gammas2=list(gammas2),
               couplings=list(couplings), pretrain_times=list(pretrain_times) if dynamics == "gradient_flow"
               else [math.inf], target_times=list(target_times) if dynamics == "gradient_flow" else [math.inf],
               protocols=list(protocols), n_splits=n_splits, n_seeds=n_seeds, population=population, t_max=t_max,
               n_samples=n_samples, weight_decay=weight_decay, temperature=temperature, seed=seed)
    data = dict(X1=X1, y1=y1, X2=X2, y2=y2, X_test=X_test, y_test=y_test)
    tasks = _build_tasks(cfg)
    reused = 0
    if store is not None:
        rows, reused, failures = _run_store(tasks, data, cfg, store, backend, workers, progress)
    else:
        from tqdm.auto import tqdm

        from .errors import SymtransferError

        rows, failures = [], []
        for task in tqdm(tasks, desc="advise", unit="task", disable=not progress, dynamic_ncols=True):
            try:
                rows.extend(_run_task(task, data, cfg))
            except SymtransferError as exc:  # one setting that does not solve costs that setting only
                failures.append((task, f"{type(exc).__name__}: {exc}"))
    if not any(r["protocol"] == "scratch" for r in rows):
        first = failures[0][1] if failures else "no scratch row"
        raise ConvergenceError(f"advise: the scratch baseline could not be computed at any setting, so no "
                               f"gain can be predicted; first failure: {first}")

    from .datasets import task_alignment

    try:
        alignment = task_alignment(X1, y1, X2, y2)
    except ValueError:
        alignment = math.nan

    advice = _summarise(rows, cfg, alignment)
    advice.failures = failures
    if failures:
        task, msg = failures[0]
        where = ", ".join(f"{k} = {v:g}" for k, v in task.items() if isinstance(v, float))
        advice.verdict += (f" ({len(failures)} of {len(tasks)} settings did not solve and are left out, see "
                           f"Advice.failures; first: the {task['kind']} at {where}, {msg.split(':', 1)[0]})")
    advice.params = {**{k: v for k, v in cfg.items() if k != "linear"}, "P1": int(X1.shape[0]), "P2": int(X2.shape[0]),
                     "D": int(D), "evaluation": "test set" if X_test is not None else f"{n_splits}-fold cross-validation",
                     "n_eval": int(len(y_test) if y_test is not None else len(y2)),
                     "store": None if store is None else str(store), "tasks_reused": int(reused),
                     "exact": bool(linear)}
    if verify:
        advice.verification = _verify(advice, data, cfg, verify_width, verify_steps, verify_seeds, progress)
    advice.seconds = time.perf_counter() - t_start
    return advice


def _summarise(rows, cfg, alignment) -> Advice:
    scratch_rows = [r for r in rows if r["protocol"] == "scratch"]
    base = min(scratch_rows, key=lambda r: r["error"])
    e0 = np.asarray(base["sq_errors"])
    n = len(e0)
    for r in rows:
        e = np.asarray(r["sq_errors"])
        sem = float(np.std(e, ddof=1) / math.sqrt(n)) if n > 1 else 0.0
        r["stderr"] = math.hypot(sem, r["mc_error"])
        diff = e0 - e
        dsem = float(np.std(diff, ddof=1) / math.sqrt(n)) if n > 1 else 0.0
        r["gain"] = float(diff.mean())
        r["gain_stderr"] = math.hypot(dsem, math.hypot(r["mc_error"], base["mc_error"]) if r is not base else 0.0)
    transfer_rows = [r for r in rows if r["protocol"] != "scratch"]
    best_overall = min(rows, key=lambda r: r["error"])
    best_transfer = min(transfer_rows, key=lambda r: r["error"]) if transfer_rows else None
    significant = best_transfer is not None and best_transfer["gain"] > 2.0 * best_transfer["gain_stderr"]
    best = best_transfer if significant else base
    verdict = _verdict(rows, base, best_transfer, significant, alignment, cfg)
    curves = {}
    for r in rows:
        key = r["protocol"]
        curves.setdefault(key, []).append(r)
    return Advice(rows=rows, best=best, best_overall=best_overall, scratch=base, verdict=verdict,
                  alignment=alignment, params={}, curves=curves)


def _verdict(rows, base, best_transfer, significant, alignment, cfg) -> str:
    def pm(r):
        return f"{r['gain']:+.3g} ± {r['gain_stderr']:.2g}"

    def two(a, b):
        # enough digits that two close errors print differently
        d = 3
        while d < 8 and f"{a:.{d}g}" == f"{b:.{d}g}":
            d += 1
        return f"{a:.{d}g}", f"{b:.{d}g}"

    parts = []
    if best_transfer is None:
        return f"Only training from scratch was evaluated: predicted target error {base['error']:.3g} ± {base['stderr']:.2g}."
    if significant:
        parts.append(f"Pretraining is predicted to help: {describe(best_transfer)} lowers the target error from "
                     f"{base['error']:.3g} (scratch) to {best_transfer['error']:.3g} ± {best_transfer['stderr']:.2g}, "
                     f"a gain of {pm(best_transfer)}.")
    elif best_transfer["gain"] < -2.0 * best_transfer["gain_stderr"]:
        a, b = two(base["error"], best_transfer["error"])
        parts.append(f"Pretraining is predicted to hurt: even the best use of the source, "
                     f"{describe(best_transfer)}, raises the target error from {a} to {b} "
                     f"(gain {pm(best_transfer)}); train from scratch.")
    else:
        parts.append(f"Pretraining is predicted to make no significant difference: the best use of the source, "
                     f"{describe(best_transfer)}, changes the target error by {pm(best_transfer)} against "
                     f"{base['error']:.3g} from scratch; train from scratch (it is cheaper).")
    ft = [r for r in rows if r["protocol"] == "readout"]
    if ft:
        f = min(ft, key=lambda r: r["error"])
        if f["gain"] < -2.0 * f["gain_stderr"]:
            parts.append(f"Fine-tuning the readout is predicted to hurt by {-f['gain']:.3g} ± {f['gain_stderr']:.2g}.")
        elif f["gain"] > 2.0 * f["gain_stderr"] and f is not best_transfer:
            parts.append(f"Readout fine-tuning alone is predicted to gain {pm(f)}.")
    if math.isfinite(alignment):
        word = "high" if abs(alignment) > 0.5 else ("moderate" if abs(alignment) > 0.2 else "low")
        parts.append(f"Measured task alignment |A| = {abs(alignment):.2f} ({word}).")
    return " ".join(parts)


# =============================================================================================
# Verification by simulation
# =============================================================================================
def _verify(advice, data, cfg, width, steps, n_seeds, progress):
    """Simulate wide networks on the same data and evaluation points for the recommendation (if
    it is not scratch) and the best scratch row."""
    from .sim import WideNetwork

    gf = cfg["dynamics"] == "gradient_flow"
    lam = 0.0 if gf else cfg["weight_decay"]
    T = 0.0 if gf else cfg["temperature"]
    avg = None if gf else 0.5
    splits = _evaluation(data, cfg)
    picks = [advice.scratch]
    best = advice.best
    if best["protocol"] == "scratch":
        # scratch recommended: simulate the best transfer row that a network can run, so that
        # "no gain" is checked against a simulated gain too
        runnable = [r for r in advice.rows if r["protocol"] in ("readout", "joint")]
        best = min(runnable, key=lambda r: r["error"]) if runnable else best
    if best is not advice.scratch:
        picks.append(best)
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    out = []
    for row in tqdm(picks, desc="verify", unit="protocol", disable=not progress, dynamic_ncols=True):
        proto = row["protocol"]
        if proto == "lazy":
            out.append({"protocol": proto, "setting": describe(row), "theory": row["error"],
                        "theory_stderr": row["stderr"], "simulated": math.nan, "simulated_stderr": math.nan,
                        "agree": False, "note": "lazy fine-tuning needs gamma2 -> 0, not simulated"})
            continue
        per_seed = []
        for k in range(n_seeds):
            s = cfg["seed"] + 100 * (k + 1)
            errs = []
            common = dict(activation=cfg["activation"], weight_decay=lam, temperature=T, steps=steps,
                          average_from=avg, seed=s, progress=False)
            if proto != "scratch":
                src = WideNetwork(width, gamma=row["gamma1"], **common).fit(data["X1"], data["y1"])
            for Xtr, ytr, Xev, yev in splits:
                if proto == "scratch":
                    net = WideNetwork(width, gamma=row["gamma2"], **common).fit(Xtr, ytr)
                elif proto == "readout":
                    net = src.transfer(Xtr, ytr, readout_only=True, seed=s + 1)
                else:
                    net = src.transfer(Xtr, ytr, coupling=row["coupling"], gamma=row["gamma2"], seed=s + 1)
                errs.append((net.predict(Xev) - yev) ** 2)
            per_seed.append(float(np.mean(np.concatenate(errs))))
        sim = float(np.mean(per_seed))
        sim_se = float(np.std(per_seed, ddof=1) / math.sqrt(len(per_seed))) if len(per_seed) > 1 else 0.0
        tol = 2.0 * math.hypot(row["stderr"], sim_se)
        out.append({"protocol": proto, "setting": describe(row), "theory": row["error"], "theory_stderr": row["stderr"],
                    "simulated": sim, "simulated_stderr": sim_se, "simulated_seeds": per_seed,
                    "agree": bool(abs(sim - row["error"]) <= tol), "note": ""})
    res = {"rows": out, "width": width, "steps": steps, "seeds": n_seeds, "seconds": time.perf_counter() - t0}
    res["agree"] = all(v["agree"] for v in out if math.isfinite(v["simulated"]))
    if len(out) == 2 and math.isfinite(out[1]["simulated"]):
        sim_gain = out[0]["simulated"] - out[1]["simulated"]
        res["simulated_gain"] = sim_gain
        # the simulated gain must have the sign the advice acted on: positive when a transfer
        # protocol is recommended, not significantly positive otherwise
        helped = advice.best["protocol"] != "scratch"
        spread = math.hypot(out[0]["simulated_stderr"], out[1]["simulated_stderr"])
        # not significantly positive when scratch was recommended (the transfer row's own paired bar)
        res["verdict_agrees"] = bool(sim_gain > 0) if helped else bool(
            sim_gain <= 2.0 * spread + 2.0 * best["gain_stderr"])
    else:
        res["simulated_gain"] = None
        res["verdict_agrees"] = True
    return res
