"""Transfer protocols: scratch, readout fine-tuning and jointly rich training, side by side.

:func:`compare_transfer` trains a source model and, on the target task, the three settings of
docs/theory.md section 3 -- training from scratch (the baseline), fine-tuning the readout on the
source features (``coupling = inf``) and jointly rich training at each finite coupling -- with one of
three methods that compute the same quantities of the same model (the width-N network of section 1
at ``(gamma, lambda, T)``, default ``1, 1, 1`` for every method):

* ``"equilibrium"``: the adaptive-kernel theory (sections 2-3; exact for linear ``phi``), the
  ``N -> inf`` stationary state of Langevin training (``T > 0``);
* ``"gradient_flow"``: the DMFT population (section 4), the ``N -> inf`` dynamics at any ``T``
  (gradient flow at ``T = 0``);
* ``"simulation"``: finite-width networks (section 1), Langevin at ``T > 0``, gradient descent at ``T = 0``.

The settings are run by :mod:`symtransfer.protocol` (one implementation, one seed convention).

It returns a :class:`TransferTable` with one row per setting: target test error (mean over seeds and
its standard error where the method is stochastic), transfer gain (scratch error minus the row's
error, paired over seeds) and the kernel-task alignment of the learned target kernel (section 5).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._validation import check_int, check_real, check_Xy
from .activations import get_activation
from .base import kernel_alignment
from .protocol import run_protocols

__all__ = ["TransferTable", "compare_transfer", "kernel_alignment", "METHODS"]

METHODS = ("equilibrium", "gradient_flow", "simulation")

COLUMNS = ("setting", "coupling", "method", "test_error", "test_error_sem", "transfer_gain",
           "transfer_gain_sem", "alignment", "alignment_sem", "n_seeds")

_DEFAULTS = {
    "activation": "relu",
    "couplings": [1.0],
    "gradient_flow": {"population": 2000, "dt": None, "t_max": 20.0},
    "simulation": {"width": 1000, "lr": None, "steps": 2000, "average_from": None},
    "equilibrium": {},
}
_HYPER = ("gamma", "weight_decay", "temperature")


@dataclass
class TransferTable:
    """A tidy table: one dict per row with the keys :data:`COLUMNS`.

    ``to_csv()`` writes CSV (to a path, or returns the text); ``column(name)`` is a NumPy array.
    """

    rows: list = field(default_factory=list)
    columns: tuple = COLUMNS

    def __len__(self):
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, i):
        return self.rows[i]

    def column(self, name: str) -> np.ndarray:
        if name not in self.columns:
            raise ValueError(f"unknown column {name!r}; columns are {', '.join(self.columns)}")
        vals = [r[name] for r in self.rows]
        return np.asarray(vals, dtype=object if isinstance(vals[0], str) else np.float64) if vals else np.array([])

    def row(self, setting: str, coupling=None) -> dict:
        """The row of ``setting`` (and ``coupling`` for ``"joint"`` rows)."""
        for r in self.rows:
            if r["setting"] == setting and (coupling is None or r["coupling"] == coupling):
                return r
        raise KeyError(f"no row with setting={setting!r}, coupling={coupling!r}")

    def to_csv(self, path=None) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(self.columns), lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
        text = buf.getvalue()
        if path is not None:
            Path(path).write_text(text)
        return text

    def __str__(self):
        head = f"{'setting':<9} {'coupling':>9} {'test_error':>22} {'transfer_gain':>22} {'alignment':>9}"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            err = f"{r['test_error']:.4g} ± {r['test_error_sem']:.2g}"
            gain = f"{r['transfer_gain']:.4g} ± {r['transfer_gain_sem']:.2g}"
            lines.append(f"{r['setting']:<9} {r['coupling']:>9.4g} {err:>22} {gain:>22} {r['alignment']:>9.4f}")
        return "\n".join(lines)


# Arguments compare_transfer sets itself; the rest of each estimator's constructor is an option.
_FIXED_ARGS = {"self", "activation", "gamma", "weight_decay", "temperature", "seed", "progress"}


def _method_options(method) -> set:
    import inspect

    if method == "simulation":
        from .sim import WideNetwork as cls
    elif method == "gradient_flow":
        from .theory.dmft import GradientFlowDMFT as cls
    else:
        from .theory.adaptive import AdaptiveKernel as cls
    return set(inspect.signature(cls.__init__).parameters) - _FIXED_ARGS


def _merge_settings(settings, method):
    s = json.loads(json.dumps(_DEFAULTS))  # deep copy of plain data
    if settings is not None and not isinstance(settings, dict):
        raise ValueError(f"settings must be a dict (a [settings] table), got {settings!r}")
    settings = {} if settings is None else dict(settings)
    unknown = set(settings) - {"activation", "couplings", "source", "target", *METHODS}
    if unknown:
        raise ValueError(f"settings has unknown keys {sorted(unknown)}; accepted: activation, couplings, "
                         f"source, target, {', '.join(METHODS)}")
    for k in ("activation", "couplings"):
        if k in settings:
            s[k] = settings[k]
    for m in METHODS:
        given = settings.get(m, {}) or {}
        if not isinstance(given, dict):
            raise ValueError(f"settings[{m!r}] must be a dict of options, got {given!r}")
        if m == method and given:
            bad = set(given) - _method_options(m)
            if bad:
                raise ValueError(f"settings[{m!r}] has unknown keys {sorted(bad)}; accepted: "
                                 f"{', '.join(sorted(_method_options(m)))}")
        s[m].update(given)
    for task in ("source", "target"):
        # one default model for every method (docs/experiments.md): the three methods compute the
        # same network, so their defaults must agree; T = 1 because the equilibrium theory needs T > 0
        hp = {"gamma": 1.0, "weight_decay": 1.0, "temperature": 1.0}
        given = settings.get(task, {}) or {}
        if not isinstance(given, dict):
            raise ValueError(f"settings[{task!r}] must be a dict of {', '.join(_HYPER)}, got {given!r}")
        bad = set(given) - set(_HYPER)
        if bad:
            raise ValueError(f"settings[{task!r}] has unknown keys {sorted(bad)}; accepted: {', '.join(_HYPER)}")
        hp.update(given)
        hp["gamma"] = check_real(f"settings[{task!r}]['gamma']", hp["gamma"], low=0.0, low_open=True)
        hp["weight_decay"] = check_real(f"settings[{task!r}]['weight_decay']", hp["weight_decay"], low=0.0)
        hp["temperature"] = check_real(f"settings[{task!r}]['temperature']", hp["temperature"], low=0.0)
        if method == "equilibrium" and hp["temperature"] <= 0.0:
            raise ValueError(f"settings[{task!r}]['temperature'] must be > 0 for method='equilibrium' (the "
                             f"equilibrium theory is a Gibbs measure); use method='gradient_flow' at T = 0")
        s[task] = hp
    cps = s["couplings"]
    if isinstance(cps, (int, float)):
        cps = [cps]
    if not isinstance(cps, (list, tuple)) or not cps:
        raise ValueError(f"settings['couplings'] must be a number or a non-empty list of numbers > 0, got {cps!r}")
    s["couplings"] = [check_real("settings['couplings'] entry", c, low=0.0, low_open=True) for c in cps]
    s["activation"] = get_activation(s["activation"])
    return s


# --------------------------------------------------------------------------- one seed, each method
# Each runner builds the method's template estimator and runs the one protocol implementation,
# symtransfer.protocol.run_protocols (its seed convention: source seed, transfers seed + 1, scratch
# seed + 7919).
def _keys(s):
    return ["scratch", "finetune"] + [("joint", c) for c in s["couplings"]]


def _run_equilibrium(s, data, seed):
    X1, y1, X2, y2, Xt, yt = data
    act = s["activation"]
    if act.name == "linear":
        from .theory.linear import LinearTheory

        model = LinearTheory(**s["source"])
    else:
        from .theory.adaptive import AdaptiveKernel

        model = AdaptiveKernel(act, seed=seed, **s["source"], **s["equilibrium"])
    out = run_protocols(model, (X1, y1), (X2, y2), couplings=s["couplings"], target_params=s["target"], seed=seed)
    return {k: (float(np.mean((out[k].predict(Xt) - yt) ** 2)), kernel_alignment(out[k].Phi_, y2))
            for k in _keys(s)}


def _run_gradient_flow(s, data, seed):
    from .theory.dmft import GradientFlowDMFT

    X1, y1, X2, y2, Xt, yt = data
    model = GradientFlowDMFT(s["activation"], seed=seed, **s["source"], **s["gradient_flow"])
    # the population predicts on the inputs it tracks: the source tracks the target's, each target
    # model the test inputs
    out = run_protocols(model, (X1, y1), (X2, y2), couplings=s["couplings"], target_params=s["target"], seed=seed,
                        source_fit_params={"X_eval": np.vstack([X2, Xt])}, scratch_fit_params={"X_eval": Xt},
                        transfer_params={"X2_eval": Xt})
    return {k: (out[k].test_error(Xt, yt), kernel_alignment(out[k].Phi_, y2)) for k in _keys(s)}


def _run_simulation(s, data, seed):
    from .sim import WideNetwork

    X1, y1, X2, y2, Xt, yt = data
    sim = dict(s["simulation"])
    width = sim.pop("width")
    model = WideNetwork(width, s["activation"], seed=seed, **s["source"], progress=False, **sim)
    out = run_protocols(model, (X1, y1), (X2, y2), couplings=s["couplings"], target_params=s["target"], seed=seed)
    return {k: (out[k].test_error(Xt, yt), kernel_alignment(out[k].kernel(X2), y2)) for k in _keys(s)}


_RUNNERS = {"equilibrium": _run_equilibrium, "gradient_flow": _run_gradient_flow, "simulation": _run_simulation}


def _sem(x, stochastic=True):
    """Standard error over seeds; NaN (unknown) for one run of a stochastic method."""
    x = np.asarray(x, dtype=np.float64)
    if x.size > 1:
        return float(np.std(x, ddof=1) / math.sqrt(x.size))
    return math.nan if stochastic else 0.0


def compare_transfer(source, target, test, settings=None, method="gradient_flow", seeds=(0,)) -> TransferTable:
    """Target test error of scratch, readout fine-tuning and jointly rich training.

    Parameters
    ----------
    source, target, test : tuple (X, y)
        Source training set, target training set, and held-out target test set.
    settings : dict, optional
        ``activation`` (default ``"relu"``); ``couplings`` (list of ``delta`` > 0 for the jointly rich
        rows, default ``[1.0]``); ``source`` and ``target``: dicts of ``gamma``, ``weight_decay``,
        ``temperature`` (defaults ``gamma = lambda = T = 1`` for every method, so that the three
        methods compute the same model: the equilibrium theory is paired with Langevin networks and
        the Langevin population at the settings' temperature; gradient flow is ``temperature = 0``,
        set explicitly for ``"gradient_flow"`` and ``"simulation"``);
        per-method options: ``gradient_flow`` (``population``, ``dt``, ``t_max``, any other
        :class:`~symtransfer.theory.dmft.GradientFlowDMFT` argument), ``simulation`` (``width``,
        ``lr``, ``steps``, ``average_from``, ... of :class:`~symtransfer.sim.WideNetwork`),
        ``equilibrium`` (extra arguments of ``AdaptiveKernel``, e.g. ``n_samples``).
    method : {"equilibrium", "gradient_flow", "simulation"}
    seeds : iterable of int
        One run per seed; error bars are standard errors over seeds (zero for a deterministic
        method -- the linear equilibrium theory runs once -- and NaN for a single seed of a
        stochastic one).

    Returns
    -------
    TransferTable
        Rows ``scratch`` (coupling 0), ``finetune`` (coupling inf), ``joint`` (each coupling);
        columns :data:`COLUMNS`. ``transfer_gain`` = scratch error - row error (docs/theory.md
        section 3), paired over seeds; ``alignment`` of the learned target kernel on the target
        training inputs with ``y2`` (section 5).

    Notes
    -----
    The three settings are run by :func:`symtransfer.protocol.run_protocols` (its seed
    convention: the source with the seed, transfers ``seed + 1``, scratch ``seed + 7919``).
    """
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    data = []
    for name, pair in (("source", source), ("target", target), ("test", test)):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ValueError(f"{name} must be a tuple (X, y)")
        data.append(check_Xy(pair[0], pair[1], f"{name} X", f"{name} y",
                             n_features=None if not data else data[0][0].shape[1]))
    (X1, y1), (X2, y2), (Xt, yt) = data
    if isinstance(seeds, (str, bytes, dict)):
        raise ValueError(f"seeds must be a list of integers >= 0, got {seeds!r}")
    seeds = [check_int("seeds entry", sd, low=0) for sd in (list(seeds) if np.ndim(seeds) else [seeds])]
    if not seeds:
        raise ValueError("seeds must contain at least one seed")
    s = _merge_settings(settings, method)
    stochastic = not (method == "equilibrium" and s["activation"].name == "linear")
    if not stochastic:
        seeds = seeds[:1]  # exact: nothing to average
    runs = [_RUNNERS[method](s, (X1, y1, X2, y2, Xt, yt), sd) for sd in seeds]

    keys = ["scratch", "finetune"] + [("joint", c) for c in s["couplings"]]
    rows = []
    for key in keys:
        err = np.array([run[key][0] for run in runs])
        gain = np.array([run["scratch"][0] - run[key][0] for run in runs])
        align = np.array([run[key][1] for run in runs])
        setting, coupling = (key, 0.0 if key == "scratch" else math.inf) if isinstance(key, str) else key
        rows.append({"setting": setting, "coupling": float(coupling), "method": method,
                     "test_error": float(err.mean()), "test_error_sem": _sem(err, stochastic),
                     "transfer_gain": float(gain.mean()),
                     "transfer_gain_sem": _sem(gain, stochastic and key != "scratch"),
                     "alignment": float(align.mean()), "alignment_sem": _sem(align, stochastic),
                     "n_seeds": len(runs)})
    return TransferTable(rows)
