"""The transfer protocols -- scratch, readout fine-tuning, jointly rich -- written once (docs/theory.md §3).

Every model of the package is trained on a target in three ways (docs/theory.md section 3):

``"scratch"``
    A fresh model (the template's settings, the target hyper-parameters) fitted on the target
    alone: the baseline, coupling ``delta = 0`` at equilibrium, eq. (2.5).
``"finetune"``
    ``source.transfer(X2, y2, coupling=inf)``: the readout trained on the frozen source features,
    the ``delta -> inf`` limit of eq. (3.1).
``"joint"``
    ``source.transfer(X2, y2, coupling=delta)`` at each finite ``delta``: jointly rich training,
    eqs. (3.1)-(3.3); for the dynamics ``delta = 0`` is "source hidden weights as initialisation".

The models follow the estimator contract of :class:`symtransfer.base.TransferEstimator`
(``fit``, ``transfer(X2, y2, *, coupling, gamma=None, ...)`` with omitted hyper-parameters the
source's, ``coupling=inf`` = readout fine-tuning). :func:`run_protocols` is the one implementation used
by :func:`symtransfer.experiments.compare_transfer`, the figures (:mod:`symtransfer.figures`), the
demo and the built-in sweep methods (through ``compare_transfer``); the pieces
:func:`fit_source`, :func:`fit_scratch` and :func:`transfer_setting` are public so that a caller
caching a fitted source across many targets (the figures) runs the same code.

**Seed convention.** One integer ``seed`` names a replicate. Its models draw from disjoint streams:

* the **source** is fitted with ``seed``;
* a **transfer** from it (fine-tuning and joint) uses :func:`target_seed` ``(seed) = seed + 1``,
  which is also the default of every model's ``transfer`` (so passing nothing gives it);
* the **scratch** model is fitted with :func:`scratch_seed` ``(seed) = seed + 7919``
  (:data:`SCRATCH_SEED_OFFSET`, a prime far from the small consecutive seeds used in practice, so the
  scratch stream of replicate ``s`` is neither the source nor the target stream of any other
  replicate ``s' < 7918``).

This is the convention behind the committed figure data (docs/figures/): the simulated and
gradient-flow scratch points of every figure were computed with ``seed + 7919``.
Models without randomness (:class:`~symtransfer.theory.linear.LinearTheory`) ignore it.
"""

from __future__ import annotations

import math

from sklearn.base import clone

from ._validation import check_int, check_real
from .base import target_seed

__all__ = [
    "PROTOCOLS",
    "SCRATCH_SEED_OFFSET",
    "target_seed",
    "scratch_seed",
    "protocol_coupling",
    "fit_source",
    "fit_scratch",
    "transfer_setting",
    "run_protocols",
]

#: The three settings of docs/theory.md section 3, in table order.
PROTOCOLS = ("scratch", "finetune", "joint")

#: ``scratch_seed(seed) - seed``.
SCRATCH_SEED_OFFSET = 7919

def scratch_seed(seed: int) -> int:
    """Seed of the scratch model of replicate ``seed``: ``seed + 7919`` (:data:`SCRATCH_SEED_OFFSET`)."""
    return check_int("seed", seed, low=0) + SCRATCH_SEED_OFFSET


def protocol_coupling(setting: str, coupling=None) -> float:
    """The coupling ``delta`` of a setting: ``0`` for scratch, ``inf`` for fine-tuning, ``coupling``
    (finite, ``>= 0``) for joint training."""
    _check_setting(setting)
    if setting == "scratch":
        return 0.0
    if setting == "finetune":
        return math.inf
    if coupling is None:
        raise ValueError("setting 'joint' needs a coupling (a finite delta >= 0)")
    return check_real("coupling", coupling, low=0.0)


def _check_setting(setting):
    if not isinstance(setting, str) or setting not in PROTOCOLS:
        raise ValueError(f"setting must be one of {', '.join(PROTOCOLS)}, got {setting!r}")


def _fresh(model, **overrides):
    """An unfitted copy of ``model`` (:func:`sklearn.base.clone`) with ``overrides``; a ``seed``
    override is dropped for models without one (the deterministic linear theory)."""
    params = model.get_params(deep=False)
    if "seed" in overrides and "seed" not in params:
        overrides.pop("seed")
    unknown = set(overrides) - set(params)
    if unknown:
        raise ValueError(f"{type(model).__name__} has no parameter(s) {sorted(unknown)}; its parameters are "
                         f"{', '.join(sorted(params))}")
    return clone(model).set_params(**overrides)


def _fit(model, X, y, eval_set, fit_params):
    """``model.fit`` with the contract's ``eval_set`` (held-out loss in ``history_``) and ``fit_params``."""
    kw = dict(fit_params or {})
    if eval_set is not None:
        kw["eval_set"] = eval_set
    return model.fit(X, y, **kw)


def fit_source(model, X1, y1, *, seed=0, eval_set=None, fit_params=None):
    """The source model of replicate ``seed``: a fresh copy of ``model`` with ``seed`` fitted on ``(X1, y1)``.

    ``fit_params`` are passed to ``fit`` (e.g. ``X_eval`` for a
    :class:`~symtransfer.theory.dmft.GradientFlowDMFT` source that must track the target inputs).
    """
    seed = check_int("seed", seed, low=0)
    return _fit(_fresh(model, seed=seed), X1, y1, eval_set, fit_params)


def fit_scratch(model, X2, y2, *, seed=0, target_params=None, eval_set=None, fit_params=None):
    """The scratch model of replicate ``seed``: a fresh copy of ``model`` with the target settings
    ``target_params`` (constructor parameters: ``gamma``, ``weight_decay``, ``temperature``, or any
    other, e.g. ``steps``) and seed :func:`scratch_seed` ``(seed)``, fitted on ``(X2, y2)`` alone."""
    overrides = dict(target_params or {})
    overrides["seed"] = scratch_seed(seed)
    return _fit(_fresh(model, **overrides), X2, y2, eval_set, fit_params)


def transfer_setting(source, setting, X2, y2, *, coupling=None, target_params=None, eval_set=None,
                     transfer_params=None):
    """``source.transfer`` for ``setting`` ``"finetune"`` (``coupling = inf``) or ``"joint"``
    (``coupling``), with the target hyper-parameters ``target_params`` (omitted: the source's) and
    model options ``transfer_params``; the seed is the model's default, :func:`target_seed`."""
    _check_setting(setting)
    if setting == "scratch":
        raise ValueError("setting 'scratch' is not a transfer: use fit_scratch (or run_protocols)")
    kw = dict(transfer_params or {})
    kw.update(target_params or {})
    if eval_set is not None:
        kw["eval_set"] = eval_set
    return source.transfer(X2, y2, coupling=protocol_coupling(setting, coupling), **kw)


def run_protocols(model, source, target, *, protocols=PROTOCOLS, couplings=(1.0,), target_params=None, seed=0,
                  source_model=None, eval_set=None, source_fit_params=None, scratch_fit_params=None,
                  transfer_params=None) -> dict:
    """Scratch, fine-tuning and jointly rich training of one replicate.

    Parameters
    ----------
    model : estimator
        Unfitted template (its constructor parameters are copied, never mutated); the source is
        ``model`` with ``seed``, the scratch model ``model`` with the target settings and
        :func:`scratch_seed` ``(seed)``.
    source, target : tuple (X, y)
        Source and target training sets (``source`` may be ``None`` with ``source_model``).
    protocols : iterable of {"scratch", "finetune", "joint"}
    couplings : float or iterable of float
        Finite ``delta >= 0`` of the joint rows.
    target_params : dict, optional
        Target settings (``gamma``, ``weight_decay``, ``temperature``, ...): constructor parameters of
        the scratch model and ``transfer`` arguments of the transfers; omitted ones are the source's.
    seed : int >= 0
        The replicate (seed convention in the module docstring).
    source_model : fitted estimator, optional
        A source already fitted on ``source`` with ``seed`` (e.g. cached); otherwise it is fitted here
        (only when a transfer is asked for).
    eval_set : tuple (X_test, y_test), optional
        Held-out target data for every target model's ``history_["test_loss"]``.
    source_fit_params, scratch_fit_params, transfer_params : dict, optional
        Extra arguments of the source ``fit``, the scratch ``fit`` and the ``transfer`` calls.

    Returns
    -------
    dict
        ``{"scratch": model, "finetune": model, ("joint", delta): model, ...}`` for the protocols
        asked for, each a fitted target model; ``"source"`` holds the fitted source when one was used.
    """
    protocols = list(protocols)
    for s in protocols:
        _check_setting(s)
    if isinstance(couplings, (int, float)):
        couplings = [couplings]
    couplings = [protocol_coupling("joint", c) for c in couplings]
    seed = check_int("seed", seed, low=0)
    X2, y2 = target
    out = {}
    if "scratch" in protocols:
        out["scratch"] = fit_scratch(model, X2, y2, seed=seed, target_params=target_params, eval_set=eval_set,
                                     fit_params=scratch_fit_params)
    if {"finetune", "joint"} & set(protocols):
        if source_model is not None:
            src = source_model
        elif source is None:
            raise ValueError("run_protocols needs the source data (X1, y1) or a fitted source_model for "
                             "the finetune and joint settings")
        else:
            src = fit_source(model, source[0], source[1], seed=seed, fit_params=source_fit_params)
        out["source"] = src
        common = dict(target_params=target_params, eval_set=eval_set, transfer_params=transfer_params)
        if "finetune" in protocols:
            out["finetune"] = transfer_setting(src, "finetune", X2, y2, **common)
        if "joint" in protocols:
            for c in couplings:
                out[("joint", c)] = transfer_setting(src, "joint", X2, y2, coupling=c, **common)
    return out
