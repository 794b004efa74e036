"""The figures of ``symtransfer experiment NAME``: theory as lines, simulations as points.

Each experiment is a list of *points* -- one theory solve or one simulation, for one parameter
setting and one seed -- run by the sweeps' runner, :func:`symtransfer.sweep.run_points`, in this
process, into the same kind of SQLite results store as a sweep (so :func:`symtransfer.sweep.load_results`
reads it). A run that is interrupted, even killed, resumes without recomputing a finished point.
Every setting is trained by :mod:`symtransfer.protocol` (scratch, fine-tuning, joint; one seed
convention).
The points are then aggregated over seeds into a tidy table (one row per method, setting, quantity
and x value: ``mean``, ``sem``, ``n_seeds`` and the parameters), written as CSV, and drawn from that
table, so the figure shows exactly the numbers of the CSV.

Experiments (:data:`EXPERIMENTS`):

``polynomial-data``
    Target test error against the target sample size ``P2`` for scratch training (coupling 0),
    readout fine-tuning (coupling inf) and jointly rich training (finite coupling), one panel per
    teacher alignment ``alpha``; single-index teacher ``He1 + 0.5 He2``, ``tanh`` network. Theory:
    the equilibrium adaptive kernel (:class:`~symtransfer.theory.adaptive.AdaptiveKernel`,
    docs/theory.md sections 2-3) on the same data sets as the simulations
    (:class:`~symtransfer.sim.WideNetwork`, Langevin at ``T = lambda = 1``, time-averaged predictor).
``feature-strength``
    The same task at fixed ``P2``, target error against the source feature-learning strength
    ``gamma1`` (at ``gamma2 = 1``) and against the target one ``gamma2`` (at ``gamma1 = 1``).
``digits-matrix``
    scikit-learn digits: source pair x target pair, transfer gain (eq. (5.2)) of fine-tuning and of
    jointly rich training, linear network; theory: the exact linear equilibrium theory through
    :func:`~symtransfer.experiments.compare_transfer` (method ``"equilibrium"``), simulation through
    the same function (method ``"simulation"``); with the measured task alignment
    (:func:`~symtransfer.datasets.digits_alignment`).
``phase-diagram``
    Proportional-limit phase diagrams of the transfer gain (docs/theory.md section 6.5) for
    fine-tuning and jointly rich training, and a cut along ``alpha`` at fixed ``nu2`` where
    the closed form :func:`~symtransfer.theory.proportional.target_error` is compared with linear
    width-``N`` simulations at finite ``D`` (and with the exact finite-``D`` theory on the same
    data, :class:`~symtransfer.theory.linear.LinearTheory`).
``gf-finetune``
    Gradient flow (``T = lambda = 0``), linear networks: readout fine-tuning error against ``nu2``
    from the closed forms of docs/theory.md section 7 (:mod:`~symtransfer.theory.gradient_flow`),
    for infinite source data, limited noisy source data, and limited source data with source weight
    decay (where the kernel collapses to rank one and transfer turns negative at large ``nu2``);
    points: width-N networks trained by gradient descent, the readout solved on their features.
``gf-source-strength``
    The same against the source strength ``g1 = gamma1 sqrt(D)``, with the optimum ``g1*(nu2)``.
``gf-polynomial``
    Gradient flow, ReLU: target test loss against time for transfer (source hidden weights, fresh
    readout, coupling 0) and scratch, single-index Hermite teachers easy->hard (He1 -> He2) and
    hard->easy (He2 -> He1); lines: :class:`~symtransfer.theory.dmft.GradientFlowDMFT`, points:
    width-N networks.
``gf-digits``
    Gradient flow, ReLU, digits: early-stopped (minimum over time of the held-out loss) and final
    target loss of scratch, readout fine-tuning and jointly rich transfer against ``gamma2``.

Sizes: ``fast=True`` gives a tiny version (seconds, used by the tests); the full sizes are those
behind docs/figures/ (commands and wall times in docs/figures/README.md).
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from .sweep import plain

__all__ = [
    "EXPERIMENTS",
    "CORE_COLUMNS",
    "Experiment",
    "ExperimentRun",
    "experiment_config",
    "experiment_points",
    "run_experiment",
    "read_table",
    "disagreement",
    "default_out",
    "DISAGREEMENT_LEGEND",
]

#: Columns every experiment's CSV starts with; parameters follow, then ``paired_diff`` and
#: ``paired_diff_sem`` (simulation minus theory, paired over seeds; empty on theory rows).
CORE_COLUMNS = ("experiment", "panel", "method", "setting", "quantity", "x_name", "x", "mean", "sem", "n_seeds")
_TAIL_COLUMNS = ("paired_diff", "paired_diff_sem")

DEFAULT_OUT = "symtransfer-figures"
DEFAULT_FAST_OUT = "symtransfer-figures-fast"
#: Where the committed figures live, the default output only inside the project's own checkout.
PROJECT_FIGURES = "docs/figures"

_SETTINGS = ("scratch", "finetune", "joint")
_LABEL = {"scratch": "scratch", "finetune": "fine-tune readout", "joint": "jointly rich"}
_COLOR = {"scratch": "black", "finetune": "tab:blue", "joint": "tab:red"}


# =========================================================================== configurations
_HE12 = {"1": 1.0, "2": 0.5}

_CONFIGS = {
    "polynomial-data": {
        "full": dict(dim=16, n_source=40, n_target=[5, 10, 20, 40], n_test=500, alphas=[0.0, 0.5, 1.0],
                     teacher=_HE12, noise=0.1, activation="tanh", gamma=1.0, weight_decay=1.0, temperature=1.0,
                     coupling=1.0, n_samples=8192, width=256, steps=4000, lr=None, average_from=0.25,
                     max_snapshots=100, seeds=[0, 1, 2, 3]),
        "fast": dict(dim=8, n_source=12, n_target=[4, 8], n_test=100, alphas=[0.0, 1.0], teacher=_HE12,
                     noise=0.1, activation="tanh", gamma=1.0, weight_decay=1.0, temperature=1.0, coupling=1.0,
                     n_samples=512, width=64, steps=400, lr=None, average_from=0.25, max_snapshots=50,
                     seeds=[0, 1]),
    },
    "feature-strength": {
        "full": dict(dim=16, n_source=40, n_target=20, n_test=500, alphas=[0.5, 1.0], gammas=[0.25, 0.5, 1.0, 1.5, 2.0],
                     gamma_fixed=1.0, teacher=_HE12, noise=0.1, activation="tanh", weight_decay=1.0,
                     temperature=1.0, coupling=1.0, n_samples=8192, width=256, steps=4000, lr=None,
                     average_from=0.25, max_snapshots=100, seeds=[0, 1, 2]),
        "fast": dict(dim=8, n_source=12, n_target=8, n_test=100, alphas=[1.0], gammas=[0.5, 2.0], gamma_fixed=1.0,
                     teacher=_HE12, noise=0.1, activation="tanh", weight_decay=1.0, temperature=1.0, coupling=1.0,
                     n_samples=512, width=64, steps=400, lr=None, average_from=0.25, max_snapshots=50,
                     seeds=[0, 1]),
    },
    "digits-matrix": {
        "full": dict(sources=["3-8", "4-9", "1-7"], targets=["5-8", "3-5", "0-1", "9-8"], n_source=100,
                     n_target=20, activation="linear", gamma=2.0, weight_decay=1.0, temperature=1.0, coupling=1.0,
                     width=256, steps=3000, lr=0.01, average_from=0.25, max_snapshots=100, seeds=[0, 1, 2]),
        "fast": dict(sources=["3-8", "1-7"], targets=["5-8", "0-1"], n_source=40, n_target=10, activation="linear",
                     gamma=2.0, weight_decay=1.0, temperature=1.0, coupling=1.0, width=128, steps=600, lr=0.01,
                     average_from=0.25, max_snapshots=50, seeds=[0, 1]),
    },
    "phase-diagram": {
        "full": dict(params=dict(nu1=2.0, g1=3.0, g2=3.0, lam1=1.0, lam2=1.0, T1=0.5, T2=0.5, sigma1=0.2, sigma2=0.2,
                                 coupling=1.0),
                     n_grid=41, nu2_range=[0.1, 10.0], cut_nu2=1.0, cut_alphas=[0.0, 0.25, 0.5, 0.75, 1.0],
                     n_line=51, dim=80, width=256, steps=3000, lr=0.02, average_from=0.25, max_snapshots=100,
                     seeds=[0, 1, 2, 3]),
        "fast": dict(params=dict(nu1=2.0, g1=3.0, g2=3.0, lam1=1.0, lam2=1.0, T1=0.5, T2=0.5, sigma1=0.2, sigma2=0.2,
                                 coupling=1.0),
                     n_grid=9, nu2_range=[0.1, 10.0], cut_nu2=1.0, cut_alphas=[0.0, 0.5, 1.0], n_line=4, dim=16,
                     width=64, steps=600, lr=0.02, average_from=0.25, max_snapshots=50, seeds=[0, 1]),
    },
}

# Gradient flow (docs/theory.md section 7 and section 4), T = lambda = 0 unless a panel sets weight decay.
_CONFIGS.update({
    "gf-finetune": {
        "full": dict(dim=128, width=1000, n_line=61, n_draws=8, seeds=[0, 1, 2, 3], panels={
            "infinite source data": dict(nu1=math.inf, g1=2.0, source_noise=0.0, weight_decay=0.0, ridge=0.0,
                                         noise=0.0, curves=[[0.0, 0.0], [0.5, 0.0], [0.8, 0.0], [1.0, 0.0]],
                                         nu2_range=[0.02, 0.98], nu2_sim=[0.25, 0.5, 0.75], t1=3.0, lr=0.002),
            "limited source data": dict(nu1=0.5, g1=2.0, source_noise=0.5, weight_decay=0.0, ridge=0.0, noise=0.0,
                                        curves=[[0.5, 0.0], [0.5, 0.6], [0.5, -0.6]], nu2_range=[0.02, 0.98],
                                        nu2_sim=[0.25, 0.5, 0.75], t1=60.0, lr=0.01),
            "limited source data, weight decay": dict(nu1=2.0, g1=1.5, source_noise=0.7, weight_decay=0.3,
                                                      ridge=0.05, noise=0.0, curves=[[0.6, 0.0], [0.6, 0.5]],
                                                      nu2_range=[0.05, 2.0], nu2_sim=[0.25, 0.75, 1.5], t1=15.0,
                                                      lr=0.002)}),
        "fast": dict(dim=16, width=200, n_line=9, n_draws=4, seeds=[0, 1], panels={
            "infinite source data": dict(nu1=math.inf, g1=2.0, source_noise=0.0, weight_decay=0.0, ridge=0.0,
                                         noise=0.0, curves=[[0.0, 0.0], [1.0, 0.0]], nu2_range=[0.1, 0.9],
                                         nu2_sim=[0.5], t1=2.0, lr=0.005),
            "limited source data, weight decay": dict(nu1=2.0, g1=1.5, source_noise=0.7, weight_decay=0.3,
                                                      ridge=0.05, noise=0.0, curves=[[0.6, 0.0]],
                                                      nu2_range=[0.1, 2.0], nu2_sim=[1.5], t1=6.0, lr=0.005)}),
    },
    "gf-source-strength": {
        "full": dict(dim=40, width=500, n_line=61, n_draws=8, seeds=[0, 1, 2], nu2s=[0.2, 0.5, 1.0, 2.0], g1_range=[0.05, 20.0],
                     g1_sim=[0.25, 0.5, 1.0, 2.0, 4.0], nu2_range=[0.1, 5.0],
                     panel=dict(nu1=2.0, source_noise=1.0, weight_decay=0.2, ridge=0.1, noise=0.0, alpha=0.8,
                                alpha_noise=0.0, t1=25.0, lr=0.0025)),
        "fast": dict(dim=16, width=200, n_line=9, n_draws=4, seeds=[0, 1], nu2s=[0.5, 2.0], g1_range=[0.1, 10.0],
                     g1_sim=[0.5, 2.0], nu2_range=[0.2, 4.0],
                     panel=dict(nu1=2.0, source_noise=1.0, weight_decay=0.2, ridge=0.1, noise=0.0, alpha=0.8,
                                alpha_noise=0.0, t1=8.0, lr=0.005)),
    },
    "gf-polynomial": {
        "full": dict(dim=16, n_source=128, n_target=64, n_test=500, activation="relu", gamma=1.0, t1=6.0, t_max=6.0,
                     n_times=31, population=4000, width=4000, lr=0.002, seeds=[0, 1, 2],
                     pairs={"easy to hard": [{"1": 1.0}, {"2": 1.0}], "hard to easy": [{"2": 1.0}, {"1": 1.0}]}),
        "fast": dict(dim=8, n_source=24, n_target=16, n_test=50, activation="relu", gamma=1.0, t1=1.0, t_max=1.0,
                     n_times=5, population=200, width=200, lr=0.01, seeds=[0, 1],
                     pairs={"easy to hard": [{"1": 1.0}, {"2": 1.0}]}),
    },
    "gf-digits": {
        "full": dict(source="3-8", targets=["5-8", "0-1"], n_source=100, n_target=20, activation="relu",
                     gamma1=1.0, gammas=[0.25, 0.5, 1.0, 2.0], t1=8.0, t_max=8.0, population=2000, width=2000,
                     lr=0.005, seeds=[0, 1, 2]),
        "fast": dict(source="3-8", targets=["5-8"], n_source=20, n_target=10, activation="relu", gamma1=1.0,
                     gammas=[0.5, 2.0], t1=1.0, t_max=1.0, population=200, width=200, lr=0.01, seeds=[0, 1]),
    },
})


def experiment_config(name: str, fast: bool = False) -> dict:
    """The sizes and parameters of experiment ``name`` (a fresh copy; ``fast`` for the tiny version)."""
    _experiment(name)
    return json.loads(json.dumps(_CONFIGS[name]["fast" if fast else "full"]))


# =========================================================================== evaluation helpers
def _teacher(spec) -> dict:
    return {int(k): float(v) for k, v in spec.items()}


def _sim_options(p) -> dict:
    return dict(steps=p["steps"], lr=p["lr"], average_from=p["average_from"], max_snapshots=p["max_snapshots"],
                progress=False)


# --- Gaussian single-index tasks (polynomial-data, feature-strength) -------------------------------
# make_transfer_pair draws the two index vectors from the seed alone and each task from its own
# stream, so the source task does not depend on alpha or the target size, and the target task not on
# the source size: sources are fitted once per seed and shared by every target (tested).
_SOURCE_KEYS = ("dim", "n_source", "n_test", "teacher", "noise", "seed", "activation", "gamma1", "weight_decay",
                "temperature")


def _hashable(p, keys):
    return tuple((k, tuple(sorted(p[k].items())) if isinstance(p[k], dict) else p[k]) for k in keys if k in p)


@lru_cache(maxsize=16)
def _gaussian_source_task(dim, n_source, n_test, teacher, noise, seed):
    from .tasks import make_transfer_pair

    return make_transfer_pair(dim, n_source, 1, n_test, 0.0, teacher=_teacher(dict(teacher)), noise_source=noise,
                              noise_target=noise, seed=seed).source


@lru_cache(maxsize=16)
def _gaussian_target_task(dim, n_pool, n_test, alpha, teacher, noise, seed):
    from .tasks import make_transfer_pair

    return make_transfer_pair(dim, 1, n_pool, n_test, alpha, teacher=_teacher(dict(teacher)), noise_source=noise,
                              noise_target=noise, seed=seed).target


def _gaussian_data(p):
    """Source set, the first ``n_target`` rows of the target pool, and the target test set.

    The target sets of one seed are nested (smaller ``P2`` = a prefix of the pool) and share one
    test set, so curves against ``P2`` are not roughened by redrawing.
    """
    teacher = tuple(sorted(p["teacher"].items()))
    s = _gaussian_source_task(p["dim"], p["n_source"], p["n_test"], teacher, p["noise"], p["seed"])
    t = _gaussian_target_task(p["dim"], p["n_pool"], p["n_test"], p["alpha"], teacher, p["noise"], p["seed"])
    n = p["n_target"]
    return (s.X_train, s.y_train), (t.X_train[:n], t.y_train[:n]), (t.X_test, t.y_test_clean)


def _gaussian_model(p, gamma):
    """The unfitted template of a Gaussian-task point: the adaptive kernel for theory points, a
    width-N Langevin network for simulation points (seed: the point's, see symtransfer.protocol)."""
    if p["method"] == "theory":
        from .theory.adaptive import AdaptiveKernel

        return AdaptiveKernel(p["activation"], gamma=gamma, weight_decay=p["weight_decay"],
                              temperature=p["temperature"], n_samples=p["n_samples"], seed=p["seed"])
    from .sim import WideNetwork

    return WideNetwork(p["width"], p["activation"], gamma=gamma, weight_decay=p["weight_decay"],
                       temperature=p["temperature"], seed=p["seed"], **_sim_options(p))


@lru_cache(maxsize=16)
def _gaussian_source(key):
    """The fitted source of a seed, shared by every target of it (cached)."""
    from .protocol import fit_source

    p = dict(key)  # the teacher stays a tuple of items, as _gaussian_source_task caches it
    s = _gaussian_source_task(p["dim"], p["n_source"], p["n_test"], p["teacher"], p["noise"], p["seed"])
    return fit_source(_gaussian_model(p, p["gamma1"]), s.X_train, s.y_train, seed=p["seed"])


_SIM_KEYS = ("width", "steps", "lr", "average_from", "max_snapshots")


def _evaluate_gaussian(p) -> dict:
    """Target test error (eq. (5.1), against the noiseless teacher) of one setting, method and seed.

    Theory: the adaptive-kernel predictor, eq. (2.5) for scratch and eq. (3.3) after transfer
    (docs/theory.md); simulation: the time-averaged predictor of a width-N Langevin network.
    """
    from .protocol import fit_scratch, transfer_setting

    _, (X2, y2), (Xt, yt) = _gaussian_data(p)
    hyper = dict(gamma=p["gamma2"], weight_decay=p["weight_decay"], temperature=p["temperature"])
    setting = p["setting"]
    if setting == "scratch":
        model = fit_scratch(_gaussian_model(p, p["gamma2"]), X2, y2, seed=p["seed"], target_params=hyper)
    else:
        extra = ("n_samples",) if p["method"] == "theory" else _SIM_KEYS
        src = _gaussian_source(_hashable(p, ("method",) + _SOURCE_KEYS + extra))
        model = transfer_setting(src, setting, X2, y2, coupling=p.get("coupling"), target_params=hyper)
    return {"test_error": float(np.mean((model.predict(Xt) - yt) ** 2))}


def _gaussian_point(cfg, name, method, setting, alpha, n_target, n_pool, gamma1, gamma2, seed) -> dict:
    p = {"experiment": name, "method": method, "setting": setting, "dim": cfg["dim"], "n_source": cfg["n_source"],
         "n_target": n_target, "n_pool": n_pool, "n_test": cfg["n_test"], "alpha": float(alpha),
         "teacher": dict(cfg["teacher"]), "noise": cfg["noise"], "activation": cfg["activation"],
         "gamma1": float(gamma1), "gamma2": float(gamma2), "weight_decay": cfg["weight_decay"],
         "temperature": cfg["temperature"], "coupling": cfg["coupling"], "seed": seed}
    if setting != "joint":
        del p["coupling"]
    if setting == "scratch":
        del p["gamma1"]  # scratch never sees the source: identical points across gamma1 collapse into one
    if method == "theory":
        p["n_samples"] = cfg["n_samples"]
    else:
        p.update(width=cfg["width"], steps=cfg["steps"], lr=cfg["lr"], average_from=cfg["average_from"],
                 max_snapshots=cfg["max_snapshots"])
    return p


def _gaussian_params(cfg, p) -> dict:
    """Parameter columns of a Gaussian-task row."""
    coupling = {"scratch": 0.0, "finetune": math.inf}.get(p["setting"], p.get("coupling"))
    return {"alpha": p["alpha"], "n_source": p["n_source"], "n_target": p["n_target"], "dim": p["dim"],
            "gamma1": p.get("gamma1", ""), "gamma2": p["gamma2"], "coupling": coupling,
            "weight_decay": p["weight_decay"], "temperature": p["temperature"], "activation": p["activation"],
            "teacher": " + ".join(f"{v:g} He{k}" for k, v in sorted(p["teacher"].items())), "noise": p["noise"],
            "n_test": p["n_test"], "n_samples": p.get("n_samples", ""), "width": p.get("width", ""),
            "steps": p.get("steps", "")}


_GAUSSIAN_COLUMNS = ("alpha", "n_source", "n_target", "dim", "gamma1", "gamma2", "coupling", "weight_decay",
                     "temperature", "activation", "teacher", "noise", "n_test", "n_samples", "width", "steps")


# --- polynomial-data ---------------------------------------------------------------------------------
def _poly_specs(cfg):
    name = "polynomial-data"
    pool = max(cfg["n_target"])
    g = cfg["gamma"]
    specs = []
    for alpha in cfg["alphas"]:
        for method in ("theory", "simulation"):
            for setting in _SETTINGS:
                for n in cfg["n_target"]:
                    pts = [_gaussian_point(cfg, name, method, setting, alpha, n, pool, g, g, s) for s in cfg["seeds"]]
                    meta = {"panel": f"alpha={alpha:g}", "method": method, "setting": setting,
                            "quantity": "test_error", "x_name": "n_target", "x": n}
                    specs.append(_Spec(meta, _gaussian_params(cfg, pts[0]), cfg["seeds"], _field(pts, "test_error")))
    return specs


# --- feature-strength --------------------------------------------------------------------------------
def _fs_specs(cfg):
    name = "feature-strength"
    g0 = cfg["gamma_fixed"]
    specs = []
    for alpha in cfg["alphas"]:
        for vary in ("gamma1", "gamma2"):
            for method in ("theory", "simulation"):
                for setting in _SETTINGS:
                    for g in cfg["gammas"]:
                        g1, g2 = (g, g0) if vary == "gamma1" else (g0, g)
                        pts = [_gaussian_point(cfg, name, method, setting, alpha, cfg["n_target"], cfg["n_target"],
                                               g1, g2, s) for s in cfg["seeds"]]
                        meta = {"panel": f"alpha={alpha:g}, {vary}", "method": method, "setting": setting,
                                "quantity": "test_error", "x_name": vary, "x": g}
                        params = _gaussian_params(cfg, pts[0])
                        params["gamma1"] = g1  # the axis value, also for scratch (which does not depend on it)
                        specs.append(_Spec(meta, params, cfg["seeds"], _field(pts, "test_error")))
    return specs


# --- digits-matrix -----------------------------------------------------------------------------------
def _digits_point(cfg, method, source, target, seed):
    p = {"experiment": "digits-matrix", "method": method, "source": source, "target": target,
         "n_source": cfg["n_source"], "n_target": cfg["n_target"], "activation": cfg["activation"],
         "gamma1": cfg["gamma"], "gamma2": cfg["gamma"], "weight_decay": cfg["weight_decay"],
         "temperature": cfg["temperature"], "coupling": cfg["coupling"], "seed": seed}
    if method == "simulation":
        p.update(width=cfg["width"], steps=cfg["steps"], lr=cfg["lr"], average_from=cfg["average_from"],
                 max_snapshots=cfg["max_snapshots"])
    return p


def _evaluate_digits(p) -> dict:
    """Test errors of the three settings on one digits transfer problem (one seed), by
    :func:`~symtransfer.experiments.compare_transfer`; the test set is every remaining target image."""
    from .datasets import digits_transfer
    from .experiments import compare_transfer

    d = digits_transfer(p["source"], p["target"], n_source=p["n_source"], n_target=p["n_target"], seed=p["seed"])
    hyper = {i: {"gamma": p[f"gamma{i}"], "weight_decay": p["weight_decay"], "temperature": p["temperature"]}
             for i in (1, 2)}
    settings = {"activation": p["activation"], "couplings": [p["coupling"]], "source": hyper[1], "target": hyper[2]}
    if p["method"] == "theory":
        table = compare_transfer(*d.as_tuples(), settings=settings, method="equilibrium", seeds=[p["seed"]])
    else:
        settings["simulation"] = {k: p[k] for k in ("width", "steps", "lr", "average_from", "max_snapshots")}
        table = compare_transfer(*d.as_tuples(), settings=settings, method="simulation", seeds=[p["seed"]])
    out = {f"test_error_{s}": table.row(s)["test_error"] for s in _SETTINGS}
    out["task_alignment"] = d.alignment
    out["n_test"] = len(d.y_test)
    return out


def _digits_specs(cfg):
    from .datasets import digits_alignment

    specs = []
    for source in cfg["sources"]:
        for target in cfg["targets"]:
            align = digits_alignment(source, target)
            for method in ("theory", "simulation"):
                pts = [_digits_point(cfg, method, source, target, s) for s in cfg["seeds"]]
                params = {"source": source, "target": target, "task_alignment": align, "n_source": cfg["n_source"],
                          "n_target": cfg["n_target"], "gamma1": cfg["gamma"], "gamma2": cfg["gamma"],
                          "weight_decay": cfg["weight_decay"], "temperature": cfg["temperature"],
                          "activation": cfg["activation"], "width": cfg["width"] if method == "simulation" else "",
                          "steps": cfg["steps"] if method == "simulation" else ""}
                for setting in _SETTINGS:
                    meta = {"panel": f"source {source}", "method": method, "setting": setting,
                            "quantity": "test_error", "x_name": "target", "x": target}
                    specs.append(_Spec(meta, dict(params, coupling=_COUPLING_OF[setting](cfg)), cfg["seeds"],
                                       _field(pts, f"test_error_{setting}")))
                for setting in ("finetune", "joint"):
                    meta = {"panel": f"source {source}", "method": method, "setting": setting,
                            "quantity": "gain", "x_name": "target", "x": target}
                    specs.append(_Spec(meta, dict(params, coupling=_COUPLING_OF[setting](cfg)), cfg["seeds"],
                                       _difference(pts, "test_error_scratch", f"test_error_{setting}")))
    return specs


_DIGITS_COLUMNS = ("source", "target", "task_alignment", "n_source", "n_target", "gamma1", "gamma2", "coupling",
                   "weight_decay", "temperature", "activation", "width", "steps")
_COUPLING_OF = {"scratch": lambda cfg: 0.0, "finetune": lambda cfg: math.inf, "joint": lambda cfg: cfg["coupling"]}


# --- phase-diagram -----------------------------------------------------------------------------------
def _phase_point(cfg, setting, alpha, seed):
    pr = cfg["params"]
    p = {"experiment": "phase-diagram", "method": "simulation", "setting": setting, "dim": cfg["dim"],
         "nu1": pr["nu1"], "nu2": cfg["cut_nu2"], "alpha": float(alpha), "g1": pr["g1"], "g2": pr["g2"],
         "lam1": pr["lam1"], "lam2": pr["lam2"], "T1": pr["T1"], "T2": pr["T2"], "sigma1": pr["sigma1"],
         "sigma2": pr["sigma2"], "coupling": pr["coupling"], "seed": seed, "width": cfg["width"],
         "steps": cfg["steps"], "lr": cfg["lr"], "average_from": cfg["average_from"],
         "max_snapshots": cfg["max_snapshots"]}
    if setting != "joint":
        del p["coupling"]
    if setting == "scratch":
        for k in ("nu1", "g1", "lam1", "T1", "sigma1"):
            del p[k]
    return p


def _phase_sizes(p):
    D = p["dim"]
    P1 = max(1, round(p["nu1"] * D)) if "nu1" in p else None
    return D, P1, max(1, round(p["nu2"] * D))


# As for the Gaussian tasks: the source task depends on (D, P1, sigma1, seed) only and the target task
# on (D, P2, alpha, sigma2, seed) only, so one source network serves every alpha of the cut.
@lru_cache(maxsize=4)
def _phase_source_task(D, P1, sigma1, seed):
    from .tasks import make_transfer_pair

    return make_transfer_pair(D, P1, 1, 0, 0.0, noise_source=sigma1, seed=seed).source


@lru_cache(maxsize=4)
def _phase_target_task(D, P2, alpha, sigma2, seed):
    from .tasks import make_transfer_pair

    return make_transfer_pair(D, 1, P2, 0, alpha, noise_target=sigma2, seed=seed).target


_PHASE_SOURCE_KEYS = ("dim", "nu1", "sigma1", "seed", "g1", "lam1", "T1") + ("width", "steps", "lr", "average_from",
                                                                           "max_snapshots")


@lru_cache(maxsize=4)
def _phase_source(key):
    """Source network and exact finite-D source theory (shared by every alpha and setting of a seed)."""
    from .sim import WideNetwork
    from .theory.linear import LinearTheory

    from .protocol import fit_source

    p = dict(key)
    D, P1, _ = _phase_sizes(dict(p, nu2=1.0))
    s = _phase_source_task(D, P1, p["sigma1"], p["seed"])
    hyper = dict(gamma=p["g1"] / math.sqrt(P1), weight_decay=p["lam1"], temperature=p["T1"])
    net = fit_source(WideNetwork(p["width"], "linear", **hyper, **_sim_options(p)), s.X_train, s.y_train,
                     seed=p["seed"])
    return net, fit_source(LinearTheory(**hyper), s.X_train, s.y_train)


def _evaluate_phase(p) -> dict:
    """Population target error ``|w - beta2|^2/D`` of a linear width-N network, and of the exact
    finite-D theory on the same data (docs/theory.md eqs. (2.10), (3.6)), for one setting and seed.

    ``gamma_k = g_k/sqrt(P_k)`` with ``P_k = round(nu_k D)``, as in the proportional limit.
    """
    from .protocol import fit_scratch, transfer_setting
    from .sim import WideNetwork
    from .theory.linear import LinearTheory

    D, _, P2 = _phase_sizes(p)
    t = _phase_target_task(D, P2, p["alpha"], p["sigma2"], p["seed"])
    hyper = dict(gamma=p["g2"] / math.sqrt(P2), weight_decay=p["lam2"], temperature=p["T2"])
    if p["setting"] == "scratch":
        net = fit_scratch(WideNetwork(p["width"], "linear", **hyper, **_sim_options(p)), t.X_train, t.y_train,
                          seed=p["seed"])
        exact = fit_scratch(LinearTheory(**hyper), t.X_train, t.y_train)
    else:
        src, src_exact = _phase_source(_hashable(p, _PHASE_SOURCE_KEYS))
        net, exact = (transfer_setting(m, p["setting"], t.X_train, t.y_train, coupling=p.get("coupling"),
                                       target_params=hyper) for m in (src, src_exact))
    # the network is linear in x: predictions at sqrt(D) e_i read off its weight vector, so the error
    # against the noiseless teacher is the population value (no test-set noise)
    eye = math.sqrt(D) * np.eye(D)
    return {"test_error": float(np.sum((net.predict(eye) - t.beta) ** 2) / D),
            "test_error_finite_d": float(np.sum((exact.predict(eye) - t.beta) ** 2) / D)}


def _closed_form_names(params) -> dict:
    """The phase-diagram parameters under the closed forms' names (``weight_decay1``, ...); the
    config keeps ``lam1, T1, ...``, which are the CSV's columns and the stored points' keys."""
    from .theory.proportional import DEPRECATED_NAMES

    return {DEPRECATED_NAMES.get(k, k): v for k, v in params.items()}


def _phase_diagrams(cfg):
    from .theory.proportional import phase_diagram

    pr = cfg["params"]
    alphas = np.linspace(0.0, 1.0, cfg["n_grid"])
    nu2s = np.geomspace(*cfg["nu2_range"], cfg["n_grid"])
    base = _closed_form_names({k: v for k, v in pr.items() if k != "coupling"})
    return {"finetune": phase_diagram("alpha", "nu2", x_values=alphas, y_values=nu2s, setting="finetune", **base),
            "joint": phase_diagram("alpha", "nu2", x_values=alphas, y_values=nu2s, setting="joint", **base,
                                   coupling=pr["coupling"])}


def _closed_form(cfg, setting, alpha):
    from .theory.proportional import target_error

    pr = _closed_form_names(cfg["params"])
    c = pr.pop("coupling")
    return float(target_error(setting, nu2=cfg["cut_nu2"], alpha=alpha, coupling=c if setting == "joint" else None,
                              **pr))


def _phase_specs(cfg):
    pr = cfg["params"]
    common = {**{k: pr[k] for k in ("nu1", "g1", "g2", "lam1", "lam2", "T1", "T2", "sigma1", "sigma2")}}
    specs = []
    diagrams = _phase_diagrams(cfg)
    for setting, d in diagrams.items():
        for j, nu2 in enumerate(d.y):
            for i, alpha in enumerate(d.x):
                meta = {"panel": f"diagram {setting}", "method": "theory", "setting": setting, "quantity": "gain",
                        "x_name": "alpha", "x": float(alpha)}
                params = dict(common, nu2=float(nu2), coupling=_COUPLING_OF[setting](pr), dim="", width="", steps="")
                specs.append(_Spec(meta, params, [None], _const(float(d.gain[j, i]))))
    # the simulated alphas are on the line too, so every simulation row has its theory row
    line = np.union1d(np.linspace(0.0, 1.0, cfg["n_line"]), cfg["cut_alphas"])
    cut = dict(common, nu2=cfg["cut_nu2"])
    for setting in _SETTINGS:
        for a in line:
            meta = {"panel": f"cut nu2={cfg['cut_nu2']:g}", "method": "theory", "setting": setting,
                    "quantity": "test_error", "x_name": "alpha", "x": float(a)}
            params = dict(cut, coupling=_COUPLING_OF[setting](pr), dim="", width="", steps="")
            specs.append(_Spec(meta, params, [None], _const(_closed_form(cfg, setting, a))))
            if setting != "scratch":
                g = _closed_form(cfg, "scratch", a) - _closed_form(cfg, setting, a)
                specs.append(_Spec(dict(meta, quantity="gain"), params, [None], _const(g)))
    for method, fld in (("simulation", "test_error"), ("theory_finite_d", "test_error_finite_d")):
        for setting in _SETTINGS:
            for a in cfg["cut_alphas"]:
                pts = [_phase_point(cfg, setting, a, s) for s in cfg["seeds"]]
                meta = {"panel": f"cut nu2={cfg['cut_nu2']:g}", "method": method, "setting": setting,
                        "quantity": "test_error", "x_name": "alpha", "x": float(a)}
                params = dict(cut, coupling=_COUPLING_OF[setting](pr), dim=cfg["dim"], width=cfg["width"],
                              steps=cfg["steps"])
                specs.append(_Spec(meta, params, cfg["seeds"], _field(pts, fld)))
                if setting != "scratch":
                    base = [_phase_point(cfg, "scratch", a, s) for s in cfg["seeds"]]
                    specs.append(_Spec(dict(meta, quantity="gain"), params, cfg["seeds"],
                                       _difference2(base, pts, fld)))
    return specs


_PHASE_COLUMNS = ("nu1", "nu2", "g1", "g2", "lam1", "lam2", "T1", "T2", "sigma1", "sigma2", "coupling", "dim",
                  "width", "steps")


# =========================================================================== gradient flow (THEORY §7)
# The four gf-* experiments: gradient flow (T = 0) from a random initialisation, lambda = 0.
# Closed forms (docs/theory.md section 7) and the population (GradientFlowDMFT, section 4) as lines,
# width-N networks trained by full-batch gradient descent as points.

def _unit_teacher(dim, rng):
    beta = rng.standard_normal(dim)
    return beta * (math.sqrt(dim) / np.linalg.norm(beta))


def _whitened(P, D, rng):
    """``P >= D`` inputs with ``X^T X = P I`` exactly: gradient flow on them is gradient flow on
    infinite data (the empirical covariance is the population one), docs/theory.md eq. (7.2b)."""
    U, _, Vt = np.linalg.svd(rng.standard_normal((P, D)), full_matrices=False)
    return math.sqrt(P) * U @ Vt


_GF_SOURCE_KEYS = ("dim", "nu1", "g1", "source_noise", "weight_decay", "width", "t1", "lr", "seed")


@lru_cache(maxsize=8)
def _gf_linear_source(key):
    """A linear width-N network after gradient descent on the source (T = 0), docs/theory.md §7.

    ``nu1 = inf`` stands for infinite source data: ``2D`` whitened inputs (exact, eq. (7.2b));
    otherwise ``round(nu1 D)`` Gaussian inputs with label noise ``source_noise``. The flow runs
    with the sum-loss weight decay ``lambda = weight_decay * nu1`` (the per-unit-``nu1`` convention
    of section 7). Returns ``(Sigma, beta, xi)``: the learned weight covariance ``W^T W / N``, the
    source teacher and the unit finite-sample noise direction of eq. (7.5) (zero for infinite data).
    """
    from .sim import WideNetwork

    p = dict(key)
    D, nu1 = p["dim"], p["nu1"]
    rng = np.random.default_rng(np.random.SeedSequence([p["seed"], 71]))
    beta = _unit_teacher(D, rng)
    if math.isinf(nu1):
        X1 = _whitened(2 * D, D, rng)
        y1 = X1 @ beta / math.sqrt(D)
    else:
        P1 = max(1, round(nu1 * D))
        X1 = rng.standard_normal((P1, D))
        y1 = X1 @ beta / math.sqrt(D) + p["source_noise"] * rng.standard_normal(P1)
    lam = p["weight_decay"] * (X1.shape[0] / D)
    net = WideNetwork(p["width"], "linear", gamma=p["g1"] / math.sqrt(D), weight_decay=lam, temperature=0.0,
                      lr=p["lr"], steps=max(1, math.ceil(p["t1"] / p["lr"])), seed=p["seed"],
                      progress=False).fit(X1, y1)
    W = net.W_
    Sigma = W.T @ W / W.shape[0]
    # the source's own estimate of beta (the network's predictor), minus its beta component
    w_eff = W.T @ net.a_ / (net.gamma * W.shape[0])
    xi = w_eff - (w_eff @ beta) / D * beta
    nx = np.linalg.norm(xi)
    xi = xi / nx if (not math.isinf(nu1)) and nx > 0 else np.zeros(D)
    return Sigma, beta, xi


def _gf_target_teacher(beta, xi, alpha, alpha_noise, rng):
    """``beta2 = alpha beta + alpha_noise sqrt(D) xi + sqrt(1 - alpha^2 - alpha_noise^2) beta_perp``
    (docs/theory.md section 7.4)."""
    D = beta.size
    perp = rng.standard_normal(D)
    for b in ([beta / math.sqrt(D)] + ([xi] if np.any(xi) else [])):
        perp -= (perp @ b) * b
    perp *= math.sqrt(D) / np.linalg.norm(perp)
    rest = max(0.0, 1.0 - alpha**2 - alpha_noise**2)
    return alpha * beta + alpha_noise * math.sqrt(D) * xi + math.sqrt(rest) * perp


def _krr_weight_error(Sigma, X2, y2, beta2, ridge):
    """``|w_hat - beta2|^2 / D`` of kernel ridge regression with kernel ``x.Sigma x'/D`` and ridge
    ``ridge`` on ``(X2, y2)``: the readout trained to convergence on features with that covariance
    (eq. (4.3)); ``ridge = 0`` is the minimum-norm interpolant."""
    D = X2.shape[1]
    Kt = X2 @ Sigma @ X2.T / D
    if ridge > 0:
        c = np.linalg.solve(Kt + ridge * np.eye(len(y2)), y2)
    else:
        c = np.linalg.lstsq(Kt, y2, rcond=None)[0]
    w = Sigma @ X2.T @ c / math.sqrt(D)
    return float(np.sum((w - beta2) ** 2) / D)


def _evaluate_gf_finetune(p) -> dict:
    """Target error of readout fine-tuning on a gradient-descent source network's features and of
    the readout on random features (scratch, eq. (7.10)), one seed, on the same target data."""
    D = p["dim"]
    Sigma, beta, xi = _gf_linear_source(_hashable(p, _GF_SOURCE_KEYS))
    rng = np.random.default_rng(np.random.SeedSequence(
        [p["seed"], 72, round(1e6 * p["alpha"]) % 2**31, round(1e6 * p["alpha_noise"]) % 2**31,
         round(1e6 * p["nu2"])]))
    W0 = np.random.default_rng(np.random.SeedSequence([p["seed"], 73])).standard_normal((p["width"], D))
    Sigma0 = W0.T @ W0 / p["width"]
    P2 = max(1, round(p["nu2"] * D))
    ft, sc = [], []
    # several target data sets per seed: at finite D one draw fluctuates by O(1/sqrt(D))
    for _ in range(p["n_draws"]):
        beta2 = _gf_target_teacher(beta, xi, p["alpha"], p["alpha_noise"], rng)
        X2 = rng.standard_normal((P2, D))
        y2 = X2 @ beta2 / math.sqrt(D) + p["noise"] * rng.standard_normal(P2)
        ft.append(_krr_weight_error(Sigma, X2, y2, beta2, p["ridge"]))
        sc.append(_krr_weight_error(Sigma0, X2, y2, beta2, p["ridge"]))
    return {"test_error_finetune": float(np.mean(ft)), "test_error_scratch": float(np.mean(sc))}


# --- gf-polynomial: loss against time, DMFT lines and width-N networks --------------------------------
def _gf_times(t_max, n_times):
    return np.linspace(0.0, t_max, n_times)


@lru_cache(maxsize=8)
def _gf_poly_task(dim, n_source, n_target, n_test, source_teacher, target_teacher, seed):
    from .tasks import make_transfer_pair

    return make_transfer_pair(dim, n_source, n_target, n_test, 1.0, teacher=_teacher(dict(source_teacher)),
                              target_teacher=_teacher(dict(target_teacher)), seed=seed)


def _on_grid(history, times, key="test_loss"):
    """A recorded curve at the experiment's time grid (linear interpolation between records)."""
    return np.interp(times, history["time"], history[key])


def _gf_model(p, gamma, t_max, log_every=None):
    """Gradient flow (``T = lambda = 0``) from a random initialisation, unfitted: the population
    :class:`~symtransfer.theory.dmft.GradientFlowDMFT` at its defaults for theory points, a width-N
    network trained by gradient descent with step ``lr`` for simulation points (seed: the point's)."""
    if p["method"] == "theory":
        from .theory.dmft import GradientFlowDMFT

        return GradientFlowDMFT(p["activation"], gamma=gamma, weight_decay=0.0, population=p["population"],
                                t_max=t_max, early_stop=False, seed=p["seed"])
    from .sim import WideNetwork

    return WideNetwork(p["width"], p["activation"], gamma=gamma, weight_decay=0.0, temperature=0.0, lr=p["lr"],
                       steps=_gf_steps(p, t_max), log_every=log_every, seed=p["seed"], progress=False)


def _gf_steps(p, t_max):
    return max(1, round(t_max / p["lr"]))


def _gf_source_fit(p, gamma, t1, X1, y1, X_track):
    """The source run of a seed; the population tracks the target inputs ``X_track`` (it predicts
    and transfers on tracked inputs)."""
    from .protocol import fit_source

    fit_params = {"X_eval": X_track} if p["method"] == "theory" else None
    return fit_source(_gf_model(p, gamma, t1), X1, y1, seed=p["seed"], fit_params=fit_params)


def _gf_target(p, src, setting, gamma2, X2, y2, eval_set, log_every=None):
    """The target run of one setting by symtransfer.protocol: scratch (a fresh run, seed + 7919),
    fine-tuning or joint (coupling 0: source hidden weights, fresh readout) from ``src``."""
    from .protocol import fit_scratch, transfer_setting

    if setting == "scratch":
        return fit_scratch(_gf_model(p, gamma2, p["t_max"], log_every), X2, y2, seed=p["seed"], eval_set=eval_set)
    duration = {"t_max": p["t_max"]} if p["method"] == "theory" else {"steps": _gf_steps(p, p["t_max"])}
    return transfer_setting(src, setting, X2, y2, coupling=0.0, target_params={"gamma": gamma2, **duration},
                            eval_set=eval_set)


@lru_cache(maxsize=4)
def _gf_poly_source(key):
    p = dict(key)
    pair = _gf_poly_task(p["dim"], p["n_source"], p["n_target"], p["n_test"], p["source_teacher"],
                         p["target_teacher"], p["seed"])
    s, t = pair.source, pair.target
    return _gf_source_fit(p, p["gamma"], p["t1"], s.X_train, s.y_train, np.vstack([t.X_train, t.X_test]))


_GF_POLY_SOURCE_KEYS = ("method", "dim", "n_source", "n_target", "n_test", "source_teacher", "target_teacher",
                        "seed", "activation", "gamma", "t1", "population", "width", "lr")


def _evaluate_gf_poly(p) -> dict:
    """Target test loss (against the noiseless teacher) on the time grid, for one setting, method, seed."""
    # the target task depends on the seed and its own teacher only (make_transfer_pair's streams), so
    # scratch points, which carry no source parameters, see the same target data as transfer points
    tt = tuple(sorted(p["target_teacher"].items()))
    st = tuple(sorted(p["source_teacher"].items())) if "source_teacher" in p else tt
    t = _gf_poly_task(p["dim"], p.get("n_source", 1), p["n_target"], p["n_test"], st, tt, p["seed"]).target
    times = _gf_times(p["t_max"], p["n_times"])
    theory = p["method"] == "theory"
    scratch = p["setting"] == "scratch"
    src = None if scratch else _gf_poly_source(_hashable(p, _GF_POLY_SOURCE_KEYS))
    every = max(1, _gf_steps(p, p["t_max"]) // (4 * (p["n_times"] - 1))) if scratch and not theory else None
    model = _gf_target(p, src, p["setting"], p["gamma"], t.X_train, t.y_train, (t.X_test, t.y_test_clean),
                       log_every=every)
    return {f"test_loss_{i}": float(v) for i, v in enumerate(_on_grid(model.history_, times))}


def _gf_poly_point(cfg, pair, method, setting, seed) -> dict:
    src, tgt = cfg["pairs"][pair]
    p = {"experiment": "gf-polynomial", "method": method, "setting": setting, "pair": pair, "dim": cfg["dim"],
         "n_source": cfg["n_source"], "n_target": cfg["n_target"], "n_test": cfg["n_test"],
         "source_teacher": dict(src), "target_teacher": dict(tgt), "activation": cfg["activation"],
         "gamma": cfg["gamma"], "t1": cfg["t1"], "t_max": cfg["t_max"], "n_times": cfg["n_times"], "seed": seed}
    if setting == "scratch":  # never sees the source
        for k in ("n_source", "source_teacher", "t1"):
            del p[k]
    if method == "theory":
        p["population"] = cfg["population"]
    else:
        p.update(width=cfg["width"], lr=cfg["lr"])
    return p


def _hermite_label(spec) -> str:
    return " + ".join(f"{v:g} He{k}" if v != 1 else f"He{k}" for k, v in sorted((int(k), v) for k, v in spec.items()))


def _gf_poly_specs(cfg):
    times = _gf_times(cfg["t_max"], cfg["n_times"])
    specs = []
    for pair, (src, tgt) in cfg["pairs"].items():
        for method in ("theory", "simulation"):
            for setting in ("scratch", "joint"):
                pts = [_gf_poly_point(cfg, pair, method, setting, s) for s in cfg["seeds"]]
                params = {"pair": pair, "source_teacher": _hermite_label(src), "target_teacher": _hermite_label(tgt),
                          "dim": cfg["dim"], "n_source": cfg["n_source"], "n_target": cfg["n_target"],
                          "gamma": cfg["gamma"], "t1": cfg["t1"], "activation": cfg["activation"],
                          "population": cfg["population"] if method == "theory" else "",
                          "width": cfg["width"] if method == "simulation" else "",
                          "lr": cfg["lr"] if method == "simulation" else ""}
                for i, t in enumerate(times):
                    meta = {"panel": pair, "method": method, "setting": setting, "quantity": "test_loss",
                            "x_name": "time", "x": float(t)}
                    specs.append(_Spec(meta, params, cfg["seeds"], _field(pts, f"test_loss_{i}")))
    return specs


_GF_POLY_COLUMNS = ("pair", "source_teacher", "target_teacher", "dim", "n_source", "n_target", "gamma", "t1",
                    "activation", "population", "width", "lr")


def _plot_gf_poly(cfg, rows):
    from .plotting import _new_figure

    pairs = list(cfg["pairs"])
    fig = _new_figure((4.6 * len(pairs), 4.0))
    axes = fig.subplots(1, len(pairs), squeeze=False)[0]
    every = max(1, (cfg["n_times"] - 1) // 10)
    for ax, pair in zip(axes, pairs):
        src, tgt = cfg["pairs"][pair]
        for s in ("scratch", "joint"):
            _theory_line(ax, _select(rows, panel=pair, method="theory", setting=s), s)
            sim = _select(rows, panel=pair, method="simulation", setting=s)
            _sim_points(ax, sim[::every], s)
        ax.set_xlabel("target training time $t$")
        ax.set_yscale("log")  # the two settings differ by a factor at late times
        ax.set_title(f"{pair}: source {_hermite_label(src)} $\\to$ target {_hermite_label(tgt)}", fontsize="medium")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("target test loss (noiseless teacher)")
    _method_legend(axes[0], settings=("scratch", "joint"), loc="upper right")
    fig.suptitle(f"gradient flow ($T = \\lambda = 0$), {cfg['activation']} network, D = {cfg['dim']}, "
                 f"$P_1$ = {cfg['n_source']}, $P_2$ = {cfg['n_target']}, $\\gamma$ = {cfg['gamma']:g}\npretraining "
                 f"time $t_1$ = {cfg['t1']:g}; jointly rich = source hidden weights, fresh readout, coupling 0\nlines: population DMFT "
                 f"(M = {cfg['population']}, band ± sem over {len(cfg['seeds'])} data sets); points: width-"
                 f"{cfg['width']} networks, gradient descent (mean ± sem)", fontsize="medium")
    return fig


# --- gf-digits: jointly rich transfer between digit pairs against gamma2, early stopping ---------------
@lru_cache(maxsize=4)
def _gf_digits_data(source, target, n_source, n_target, seed):
    from .datasets import digits_transfer

    return digits_transfer(source, target, n_source=n_source, n_target=n_target, seed=seed)


@lru_cache(maxsize=4)
def _gf_digits_source(key):
    p = dict(key)
    d = _gf_digits_data(p["source"], p["target"], p["n_source"], p["n_target"], p["seed"])
    return _gf_source_fit(p, p["gamma1"], p["t1"], d.X1, d.y1, np.vstack([d.X2, d.X_test]))


_GF_DIGITS_SOURCE_KEYS = ("method", "source", "target", "n_source", "n_target", "seed", "activation", "gamma1",
                          "t1", "population", "width", "lr")


def _evaluate_gf_digits(p) -> dict:
    """Held-out loss curve of one setting: its minimum over time (the early-stopping optimum), when
    it is reached, and the loss at ``t_max``."""
    d = _gf_digits_data(p["source"], p["target"], p["n_source"], p["n_target"], p["seed"])
    setting = p["setting"]
    src = None if setting == "scratch" else _gf_digits_source(_hashable(p, _GF_DIGITS_SOURCE_KEYS))
    model = _gf_target(p, src, setting, p["gamma2"], d.X2, d.y2, (d.X_test, d.y_test))
    h = model.history_
    i = int(np.argmin(h["test_loss"]))
    return {"best_test_loss": float(h["test_loss"][i]), "best_time": float(h["time"][i]),
            "final_test_loss": float(h["test_loss"][-1])}


def _gf_digits_point(cfg, target, method, setting, gamma2, seed) -> dict:
    p = {"experiment": "gf-digits", "method": method, "setting": setting, "source": cfg["source"], "target": target,
         "n_source": cfg["n_source"], "n_target": cfg["n_target"], "activation": cfg["activation"],
         "gamma1": cfg["gamma1"], "gamma2": float(gamma2), "t1": cfg["t1"], "t_max": cfg["t_max"], "seed": seed}
    if setting == "scratch":
        del p["gamma1"], p["t1"]
    if method == "theory":
        p["population"] = cfg["population"]
    else:
        p.update(width=cfg["width"], lr=cfg["lr"])
    return p


def _gf_digits_specs(cfg):
    specs = []
    for target in cfg["targets"]:
        for method in ("theory", "simulation"):
            for setting in _SETTINGS:
                for g2 in cfg["gammas"]:
                    pts = [_gf_digits_point(cfg, target, method, setting, g2, s) for s in cfg["seeds"]]
                    params = {"source": cfg["source"], "target": target, "n_source": cfg["n_source"],
                              "n_target": cfg["n_target"], "gamma1": cfg["gamma1"], "gamma2": float(g2),
                              "t1": cfg["t1"], "t_max": cfg["t_max"], "coupling": _COUPLING_OF[setting]({"coupling": 0.0}),
                              "activation": cfg["activation"],
                              "population": cfg["population"] if method == "theory" else "",
                              "width": cfg["width"] if method == "simulation" else "",
                              "lr": cfg["lr"] if method == "simulation" else ""}
                    for q in ("best_test_loss", "final_test_loss", "best_time"):
                        meta = {"panel": f"{cfg['source']} -> {target}", "method": method, "setting": setting,
                                "quantity": q, "x_name": "gamma2", "x": float(g2)}
                        specs.append(_Spec(meta, params, cfg["seeds"], _field(pts, q)))
    return specs


_GF_DIGITS_COLUMNS = ("source", "target", "n_source", "n_target", "gamma1", "gamma2", "t1", "t_max", "coupling",
                      "activation", "population", "width", "lr")


def _plot_gf_digits(cfg, rows):
    from .plotting import _new_figure

    targets = cfg["targets"]
    fig = _new_figure((4.4 * len(targets), 7.4))
    axes = fig.subplots(2, len(targets), squeeze=False, sharex=True)
    shifts = {"scratch": 0.96, "finetune": 1.0, "joint": 1.04}
    for j, target in enumerate(targets):
        panel = f"{cfg['source']} -> {target}"
        for i, (q, what) in enumerate((("best_test_loss", "early-stopped test loss (min over t)"),
                                       ("final_test_loss", f"test loss at $t$ = {cfg['t_max']:g}"))):
            ax = axes[i, j]
            for s in _SETTINGS:
                # no band: the split-to-split spread is common to theory and networks (see paired_diff)
                _theory_line(ax, _select(rows, panel=panel, method="theory", setting=s, quantity=q), s, band=False)
                _sim_points(ax, _select(rows, panel=panel, method="simulation", setting=s, quantity=q), s,
                            xshift=shifts[s])
            ax.set_xscale("log")
            ax.set_xticks(cfg["gammas"], [f"{g:g}" for g in cfg["gammas"]])
            ax.minorticks_off()
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel(what)
            if i == 0:
                ax.set_title(f"source {cfg['source']} $\\to$ target {target}", fontsize="medium")
            else:
                ax.set_xlabel("target feature-learning strength $\\gamma_2$")
    _method_legend(axes[0, 0], figure=True)
    fig.suptitle(f"digits, gradient flow ($T = \\lambda = 0$), {cfg['activation']} network: $P_1$ = {cfg['n_source']}, "
                 f"$P_2$ = {cfg['n_target']}, $\\gamma_1$ = {cfg['gamma1']:g}, pretraining time $t_1$ = "
                 f"{cfg['t1']:g}\njointly rich: source hidden weights, fresh readout, coupling 0; lines: population "
                 f"DMFT (M = {cfg['population']}, mean over splits)\npoints: width-{cfg['width']} networks on the "
                 f"same splits (mean ± sem over {len(cfg['seeds'])} splits)", fontsize="medium")
    return fig


# --- gf-finetune and gf-source-strength: closed forms as lines, networks as points --------------------
_GF_CF_KEYS = ("nu1", "ridge", "noise", "alpha_noise", "weight_decay", "source_noise")


def _gf_closed(setting, nu2, alpha, g1, pan, alpha_noise):
    """Closed-form target error (docs/theory.md eqs. (7.7)-(7.10)) of one panel's setting."""
    from .theory import gradient_flow as gf

    if setting == "scratch":
        return gf.scratch_error(nu2, ridge=pan["ridge"], noise=pan["noise"])
    return gf.finetune_error(nu2, alpha, g1, nu1=pan["nu1"], ridge=pan["ridge"], noise=pan["noise"],
                             alpha_noise=alpha_noise, weight_decay=pan["weight_decay"],
                             source_noise=pan["source_noise"])


def _gf_ft_point(cfg, pan, name, g1, nu2, alpha, alpha_noise, seed) -> dict:
    return {"experiment": name, "method": "simulation", "dim": cfg["dim"], "width": cfg["width"],
            "nu1": pan["nu1"], "g1": float(g1), "source_noise": pan["source_noise"],
            "weight_decay": pan["weight_decay"], "t1": pan["t1"], "lr": pan["lr"], "nu2": float(nu2),
            "alpha": float(alpha), "alpha_noise": float(alpha_noise), "ridge": pan["ridge"], "noise": pan["noise"],
            "n_draws": cfg["n_draws"], "seed": seed}


def _gf_params(cfg, pan, method, g1, alpha, alpha_noise, nu2=""):
    sim = method == "simulation"
    return {"nu1": pan["nu1"], "nu2": nu2, "g1": g1, "alpha": alpha, "alpha_noise": alpha_noise,
            "source_noise": pan["source_noise"], "weight_decay": pan["weight_decay"], "ridge": pan["ridge"],
            "noise": pan["noise"], "dim": cfg["dim"] if sim else "", "width": cfg["width"] if sim else "",
            "t1": pan["t1"] if sim else ""}


_GF_FT_COLUMNS = ("nu1", "nu2", "g1", "alpha", "alpha_noise", "source_noise", "weight_decay", "ridge", "noise", "dim",
                  "width", "t1")


def _curve_label(alpha, alpha_noise):
    return f"alpha={alpha:g}" + (f", alpha_noise={alpha_noise:g}" if alpha_noise else "")


def _gf_ft_specs(cfg):
    name = "gf-finetune"
    specs = []
    for pname, pan in cfg["panels"].items():
        line = np.union1d(np.linspace(*pan["nu2_range"], cfg["n_line"]), pan["nu2_sim"])
        for alpha, an in pan["curves"]:
            for setting in ("finetune", "scratch"):
                if setting == "scratch" and (alpha, an) != tuple(pan["curves"][0]):
                    continue  # scratch does not depend on the teachers' overlap
                curve = "scratch" if setting == "scratch" else _curve_label(alpha, an)
                E = _gf_closed(setting, line, alpha, pan["g1"], pan, an)
                for x, e in zip(line, np.atleast_1d(E)):
                    meta = {"panel": f"{pname}: {curve}", "method": "theory", "setting": setting,
                            "quantity": "test_error", "x_name": "nu2", "x": float(x)}
                    specs.append(_Spec(meta, _gf_params(cfg, pan, "theory", pan["g1"], alpha, an, float(x)), [None],
                                       _const(float(e))))
                for x in pan["nu2_sim"]:
                    pts = [_gf_ft_point(cfg, pan, name, pan["g1"], x, alpha, an, s) for s in cfg["seeds"]]
                    meta = {"panel": f"{pname}: {curve}", "method": "simulation", "setting": setting,
                            "quantity": "test_error", "x_name": "nu2", "x": float(x)}
                    specs.append(_Spec(meta, _gf_params(cfg, pan, "simulation", pan["g1"], alpha, an, float(x)),
                                       cfg["seeds"], _field(pts, f"test_error_{setting}")))
    return specs


def _gf_ss_specs(cfg):
    from .theory import gradient_flow as gf

    name = "gf-source-strength"
    pan = cfg["panel"]
    alpha, an = pan["alpha"], pan["alpha_noise"]
    line = np.union1d(np.geomspace(*cfg["g1_range"], cfg["n_line"]), cfg["g1_sim"])
    specs = []
    for nu2 in cfg["nu2s"]:
        curve = f"nu2={nu2:g}"
        E = _gf_closed("finetune", nu2, alpha, line, pan, an)
        for x, e in zip(line, E):
            meta = {"panel": f"error: {curve}", "method": "theory", "setting": "finetune",
                    "quantity": "test_error", "x_name": "g1", "x": float(x)}
            specs.append(_Spec(meta, _gf_params(cfg, pan, "theory", float(x), alpha, an, nu2), [None], _const(float(e))))
        kw = {k: pan[k] for k in _GF_CF_KEYS if k != "nu1"}
        g_opt, e_opt = gf.optimal_source_strength(nu2, alpha, pan["nu1"], return_error=True, **kw)
        meta = {"panel": f"error: {curve}", "method": "theory", "setting": "finetune", "quantity": "optimum",
                "x_name": "g1", "x": float(g_opt)}
        specs.append(_Spec(meta, _gf_params(cfg, pan, "theory", float(g_opt), alpha, an, nu2), [None],
                           _const(float(e_opt))))
        es = float(gf.scratch_error(nu2, ridge=pan["ridge"], noise=pan["noise"]))
        meta = {"panel": f"error: {curve}", "method": "theory", "setting": "scratch", "quantity": "test_error",
                "x_name": "g1", "x": 0.0}
        specs.append(_Spec(meta, _gf_params(cfg, pan, "theory", 0.0, alpha, an, nu2), [None], _const(es)))
        for x in cfg["g1_sim"]:
            pts = [_gf_ft_point(cfg, pan, name, x, nu2, alpha, an, s) for s in cfg["seeds"]]
            meta = {"panel": f"error: {curve}", "method": "simulation", "setting": "finetune",
                    "quantity": "test_error", "x_name": "g1", "x": float(x)}
            specs.append(_Spec(meta, _gf_params(cfg, pan, "simulation", float(x), alpha, an, nu2), cfg["seeds"],
                               _field(pts, "test_error_finetune")))
    nus = np.geomspace(*cfg["nu2_range"], cfg["n_line"])
    kw = {k: pan[k] for k in _GF_CF_KEYS}
    nu1 = kw.pop("nu1")
    gstar, estar = gf.optimal_source_strength(nus, alpha, nu1, return_error=True, **kw)
    for x, g, e in zip(nus, np.atleast_1d(gstar), np.atleast_1d(estar)):
        for q, v in (("g1_star", g), ("test_error_star", e)):
            meta = {"panel": "optimum", "method": "theory", "setting": "finetune", "quantity": q, "x_name": "nu2",
                    "x": float(x)}
            specs.append(_Spec(meta, _gf_params(cfg, pan, "theory", "", alpha, an, float(x)), [None], _const(float(v))))
    return specs


_CURVE_COLORS = ("tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown")


def _plot_curves(ax, rows, panel, curves, quantity="test_error"):
    for k, curve in enumerate(curves):
        c = "black" if curve == "scratch" else _CURVE_COLORS[k % len(_CURVE_COLORS)]
        th = [r for r in _select(rows, panel=f"{panel}: {curve}", method="theory", quantity=quantity)
              if r["setting"] != "scratch" or curve == "scratch"]
        ls = "--" if curve == "scratch" else "-"
        lbl = (curve.replace("alpha_noise=", "@xi=").replace("alpha=", "$\\alpha$=").replace("@xi=", "$\\alpha_\\xi$=")
               .replace("nu2=", "$\\nu_2$="))
        ax.plot([r["x"] for r in th], [r["mean"] for r in th], ls=ls, color=c, lw=1.6, label=lbl)
        sim = _select(rows, panel=f"{panel}: {curve}", method="simulation", quantity=quantity)
        ax.errorbar([r["x"] for r in sim], [r["mean"] for r in sim], yerr=[r["sem"] for r in sim], fmt="o",
                    ms=5, color=c, capsize=2.5, lw=0, elinewidth=1.1)


def _plot_gf_ft(cfg, rows):
    from .plotting import _new_figure

    panels = cfg["panels"]
    fig = _new_figure((4.6 * len(panels), 4.3))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (pname, pan) in zip(axes, panels.items()):
        curves = ["scratch"] + [_curve_label(a, an) for a, an in pan["curves"]]
        _plot_curves(ax, rows, pname, curves)
        ax.set_xlabel("target samples per dimension $\\nu_2 = P_2/D$")
        src = ("$\\nu_1 = \\infty$" if math.isinf(pan["nu1"]) else
               f"$\\nu_1$ = {pan['nu1']:g}, $\\sigma_1$ = {pan['source_noise']:g}")
        wd = f", $\\tilde\\lambda_1$ = {pan['weight_decay']:g}" if pan["weight_decay"] else ", $\\lambda_1$ = 0"
        rg = f", ridge {pan['ridge']:g}" if pan["ridge"] else ""
        ax.set_title(f"{pname}\n{src}, $g_1$ = {pan['g1']:g}{wd}{rg}", fontsize="medium")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    axes[0].set_ylabel("target test error $|\\hat w_2 - \\beta_2|^2/D$")
    fig.suptitle(f"gradient-flow readout fine-tuning, linear network and teachers; lines: closed forms "
                 f"(docs/theory.md §7, $D\\to\\infty$), dashed: scratch\npoints: width-{cfg['width']} networks "
                 f"trained by gradient descent at D = {cfg['dim']}, readout solved on their features "
                 f"(mean ± sem over {len(cfg['seeds'])} seeds)", fontsize="medium")
    return fig


def _plot_gf_ss(cfg, rows):
    from .plotting import _new_figure

    pan = cfg["panel"]
    fig = _new_figure((10.0, 4.3))
    ax, ax2 = fig.subplots(1, 2)
    curves = [f"nu2={n:g}" for n in cfg["nu2s"]]
    _plot_curves(ax, rows, "error", curves)
    star = {r["x"]: r["mean"] for r in _select(rows, panel="optimum", quantity="g1_star")}
    for k, nu2 in enumerate(cfg["nu2s"]):
        for r in _select(rows, panel=f"error: nu2={nu2:g}", quantity="optimum"):
            if math.isfinite(r["x"]):
                ax.plot([r["x"]], [r["mean"]], marker="*", ms=13, color=_CURVE_COLORS[k], mec="black", lw=0)
        sc = _select(rows, panel=f"error: nu2={nu2:g}", method="theory", setting="scratch")
        if sc:
            ax.axhline(sc[0]["mean"], color=_CURVE_COLORS[k], ls=":", lw=1.0)
    ax.set_xscale("log")
    ax.set_xlabel("source strength $g_1 = \\gamma_1\\sqrt{D}$")
    ax.set_ylabel("fine-tuning test error")
    ax.set_title("error against $g_1$ (stars: optimum $g_1^*$, dotted: scratch)", fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    xs = sorted(star)
    ax2.plot(xs, [star[x] for x in xs], color="black", lw=1.6)
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    for axis in (ax2.xaxis, ax2.yaxis):
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_formatter(NullFormatter())
    ax2.set_xlabel("target samples per dimension $\\nu_2$")
    ax2.set_ylabel("optimal source strength $g_1^*$")
    ax2.set_title("$g_1^*(\\nu_2)$ decreases with $\\nu_2$", fontsize="medium")
    ax2.grid(alpha=0.3, which="both")
    fig.suptitle(f"limited, noisy source data with weight decay: $\\nu_1$ = {pan['nu1']:g}, $\\sigma_1$ = "
                 f"{pan['source_noise']:g}, $\\tilde\\lambda_1$ = {pan['weight_decay']:g}, target ridge "
                 f"{pan['ridge']:g}, $\\alpha$ = {pan['alpha']:g}\nlines: closed forms (docs/theory.md §7); points: width-"
                 f"{cfg['width']} networks at D = {cfg['dim']} ({len(cfg['seeds'])} seeds)", fontsize="medium")
    return fig


# =========================================================================== table machinery
@dataclass
class _Spec:
    """One row of the tidy table: its labels, parameters, seeds and how to get the value of a seed.

    ``fetch(seed, lookup)`` returns the value for that seed or ``None`` when a needed point is
    missing (failed); ``lookup(point)`` returns the stored results of a point or ``None``.
    ``points`` lists every point the row needs (for the run's work list).
    """

    meta: dict
    params: dict
    seeds: list
    fetch: object
    points: list = field(default_factory=list)

    def __post_init__(self):
        self.points = list(getattr(self.fetch, "points", []))


def _field(points, name):
    by_seed = {p["seed"]: p for p in points}

    def fetch(seed, lookup):
        r = lookup(by_seed[seed])
        return None if r is None else r[name]

    fetch.points = points
    return fetch


def _difference(points, first, second):
    """Per-seed ``result[first] - result[second]`` of the same point (a paired difference)."""
    by_seed = {p["seed"]: p for p in points}

    def fetch(seed, lookup):
        r = lookup(by_seed[seed])
        return None if r is None else r[first] - r[second]

    fetch.points = points
    return fetch


def _difference2(base, other, name):
    """Per-seed ``base[name] - other[name]`` of two points of the same seed (a paired difference)."""
    b = {p["seed"]: p for p in base}
    o = {p["seed"]: p for p in other}

    def fetch(seed, lookup):
        rb, ro = lookup(b[seed]), lookup(o[seed])
        return None if rb is None or ro is None else rb[name] - ro[name]

    fetch.points = list(base) + list(other)
    return fetch


def _const(value):
    def fetch(seed, lookup):
        return value

    fetch.points = []
    return fetch


def _mean_sem(values, deterministic=False):
    """Mean and standard error over seeds (:func:`symtransfer.experiments._sem`: NaN for a single
    seed unless the value is deterministic, a closed form, where it is 0)."""
    from .experiments import _sem

    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), _sem(v, stochastic=not deterministic)


def _rows(name, specs, lookup, param_columns):
    rows, per_seed = [], {}
    for spec in specs:
        vals = {}
        for s in spec.seeds:
            v = spec.fetch(s, lookup)
            if v is not None:
                vals[s] = float(v)
        mean, sem = _mean_sem(list(vals.values()), deterministic=spec.seeds == [None])
        row = {"experiment": name, **spec.meta, "mean": mean, "sem": sem, "n_seeds": len(vals)}
        row.update({k: spec.params.get(k, "") for k in param_columns})
        row["paired_diff"] = row["paired_diff_sem"] = ""
        rows.append(row)
        per_seed[id(row)] = vals
    # simulation minus theory, paired over seeds (the data variability common to both cancels)
    theory = {_row_id(r): per_seed[id(r)] for r in rows if r["method"] == "theory"}
    for r in rows:
        if r["method"] != "simulation" or _row_id(r) not in theory:
            continue
        th, sim = theory[_row_id(r)], per_seed[id(r)]
        if list(th) == [None]:  # deterministic closed form: the same value for every seed
            diffs = [v - th[None] for v in sim.values()]
        else:
            diffs = [sim[s] - th[s] for s in sim if s in th]
        if diffs:
            r["paired_diff"], r["paired_diff_sem"] = _mean_sem(diffs)
    return rows


def _row_id(r):
    return (r["panel"], r["setting"], r["quantity"], r["x_name"], r["x"])


# =========================================================================== plotting
def _select(rows, **kw):
    out = [r for r in rows if all(r[k] == v for k, v in kw.items())]
    return sorted(out, key=lambda r: r["x"])


def _theory_line(ax, rows, setting, ls="-", band=True, label=None, xshift=1.0):
    if not rows:
        return
    x = np.array([r["x"] for r in rows], dtype=float) * xshift
    m = np.array([r["mean"] for r in rows], dtype=float)
    s = np.array([r["sem"] for r in rows], dtype=float)
    ax.plot(x, m, ls=ls, color=_COLOR[setting], lw=1.6, label=label)
    if band and np.any(s > 0):
        ax.fill_between(x, m - s, m + s, color=_COLOR[setting], alpha=0.15, lw=0)


def _sim_points(ax, rows, setting, xshift=1.0, marker="o", hollow=False, label=None):
    if not rows:
        return
    x = np.array([r["x"] for r in rows], dtype=float) * xshift
    m = np.array([r["mean"] for r in rows], dtype=float)
    s = np.array([r["sem"] for r in rows], dtype=float)
    c = _COLOR[setting]
    ax.errorbar(x, m, yerr=s, fmt=marker, ms=5, color=c, mfc="white" if hollow else c, mew=1.2, capsize=2.5,
                 elinewidth=1.1, lw=0, label=label)


def _method_legend(ax, extra=(), loc="best", settings=_SETTINGS, figure=False):
    """Colours for the settings, line/marker for theory/simulation; on ``ax`` or below the figure."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=_COLOR[s], lw=2, label=_LABEL[s]) for s in settings]
    handles += [Line2D([], [], color="gray", lw=1.6, label="theory ($N\\to\\infty$)"),
                Line2D([], [], color="gray", marker="o", lw=0, label="simulation (mean ± sem)")]
    handles += list(extra)
    if figure:
        ax.figure.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize="medium",
                         frameon=False)
    else:
        ax.legend(handles=handles, fontsize="small", loc=loc, framealpha=0.9)


def _plot_poly(cfg, rows):
    from .plotting import _new_figure

    alphas = cfg["alphas"]
    fig = _new_figure((4.0 * len(alphas), 4.0))
    axes = fig.subplots(1, len(alphas), sharey=True, squeeze=False)[0]
    shifts = {"scratch": 0.96, "finetune": 1.0, "joint": 1.04}
    for ax, alpha in zip(axes, alphas):
        panel = f"alpha={alpha:g}"
        for s in _SETTINGS:
            _theory_line(ax, _select(rows, panel=panel, method="theory", setting=s), s, band=False)
            _sim_points(ax, _select(rows, panel=panel, method="simulation", setting=s), s, xshift=shifts[s])
        ax.set_xscale("log")
        ax.set_xticks(cfg["n_target"], [str(n) for n in cfg["n_target"]])
        ax.minorticks_off()
        ax.set_xlabel("target samples $P_2$")
        ax.set_title(f"$\\alpha$ = {alpha:g}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("target test error (noiseless teacher)")
    _method_legend(axes[0], loc="lower left")
    fig.suptitle(f"{cfg['activation']} network, teacher He$_1$ + 0.5 He$_2$, D = {cfg['dim']}, "
                 f"$P_1$ = {cfg['n_source']}, $\\gamma_1=\\gamma_2$ = {cfg['gamma']:g}, "
                 f"$T=\\lambda$ = {cfg['temperature']:g}, joint coupling $\\delta$ = {cfg['coupling']:g}\n"
                 f"lines: theory, mean over the {len(cfg['seeds'])} data sets; points: width-{cfg['width']} "
                 f"Langevin networks on the same data (mean ± sem over seeds)", fontsize="medium")
    return fig


def _plot_fs(cfg, rows):
    from .plotting import _new_figure

    alphas = cfg["alphas"]
    fig = _new_figure((10.5, 3.7 * len(alphas) + 0.5))
    axes = fig.subplots(len(alphas), 2, sharey="row", squeeze=False)
    shifts = {"scratch": 0.96, "finetune": 1.0, "joint": 1.04}
    for i, alpha in enumerate(alphas):
        for j, vary in enumerate(("gamma1", "gamma2")):
            ax = axes[i, j]
            panel = f"alpha={alpha:g}, {vary}"
            for s in _SETTINGS:
                _theory_line(ax, _select(rows, panel=panel, method="theory", setting=s), s, band=False)
                _sim_points(ax, _select(rows, panel=panel, method="simulation", setting=s), s, xshift=shifts[s])
            ax.set_xscale("log")
            ax.set_xticks(cfg["gammas"], [f"{g:g}" for g in cfg["gammas"]])
            ax.minorticks_off()
            other = "2" if vary == "gamma1" else "1"
            what = "pretraining" if vary == "gamma1" else "target"
            ax.set_xlabel(f"$\\gamma_{vary[-1]}$ ({what} feature-learning strength)")
            ax.set_title(f"$\\alpha$ = {alpha:g}, $\\gamma_{other}$ = {cfg['gamma_fixed']:g}", fontsize="medium")
            ax.grid(alpha=0.3)
        axes[i, 0].set_ylabel("target test error")
    _method_legend(axes[0, 0], figure=True)  # inside, it would hide error bars
    fig.suptitle(f"{cfg['activation']} network, teacher He$_1$ + 0.5 He$_2$, D = {cfg['dim']}, "
                 f"$P_1$ = {cfg['n_source']}, $P_2$ = {cfg['n_target']}, $T=\\lambda$ = {cfg['temperature']:g}, "
                 f"joint coupling $\\delta$ = {cfg['coupling']:g}\nlines: theory, mean over the "
                 f"{len(cfg['seeds'])} data sets; points: width-{cfg['width']} Langevin networks on the same data "
                 f"(mean ± sem over seeds)", fontsize="medium")
    return fig


def _plot_digits(cfg, rows):
    from matplotlib.colors import TwoSlopeNorm

    from .plotting import _new_figure

    S, Tg = cfg["sources"], cfg["targets"]

    def grid(method, setting, quantity, key="mean"):
        a = np.full((len(S), len(Tg)), np.nan)
        for r in rows:
            if r["method"] == method and r["setting"] == setting and r["quantity"] == quantity:
                a[S.index(r["source"]), Tg.index(r["target"])] = r[key]
        return a

    align = np.full((len(S), len(Tg)), np.nan)
    for r in rows:
        align[S.index(r["source"]), Tg.index(r["target"])] = r["task_alignment"]
    fig = _new_figure((11.5, 7.6))
    axes = fig.subplots(2, 2)
    ax = axes[0, 0]
    im = ax.imshow(align, cmap="PuOr", vmin=-1, vmax=1)
    for (i, j), v in np.ndenumerate(align):
        ax.text(j, i, f"{v:+.2f}", ha="center", va="center", fontsize="medium")
    fig.colorbar(im, ax=ax, shrink=0.85).set_label("measured task alignment $A_{12}$")
    ax.set_title("task alignment (cross-fitted ridge, all images)", fontsize="medium")
    gains = {s: (grid("theory", s, "gain"), grid("simulation", s, "gain"), grid("simulation", s, "gain", "sem"))
             for s in ("finetune", "joint")}
    lim = float(np.nanmax([np.nanmax(np.abs(g[0])) for g in gains.values()] +
                          [np.nanmax(np.abs(g[1])) for g in gains.values()])) or 1.0
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-lim, vmax=lim)
    for ax, s in ((axes[1, 0], "finetune"), (axes[1, 1], "joint")):
        th, sim, sem = gains[s]
        im = ax.imshow(th, cmap="RdBu", norm=norm)
        for (i, j), v in np.ndenumerate(th):
            dark = abs(v) > 0.6 * lim
            ax.text(j, i, f"th {v:+.3f}\nsim {sim[i, j]:+.3f}\n± {sem[i, j]:.3f}", ha="center", va="center",
                    fontsize="small", color="white" if dark else "black")
        fig.colorbar(im, ax=ax, shrink=0.85).set_label("transfer gain (theory colour)")
        ax.set_title(f"gain of {_LABEL[s]}" + (f" ($\\delta$ = {cfg['coupling']:g})" if s == "joint" else
                                                " ($\\delta=\\infty$)"), fontsize="medium")
    for ax in (axes[0, 0], axes[1, 0], axes[1, 1]):
        ax.set_xticks(range(len(Tg)), Tg)
        ax.set_yticks(range(len(S)), S)
        ax.set_xlabel("target pair")
        ax.set_ylabel("source pair")
    ax = axes[0, 1]
    for s in ("finetune", "joint"):
        th, sim, sem = gains[s]
        ax.errorbar(th.ravel(), sim.ravel(), yerr=sem.ravel(), fmt="o", color=_COLOR[s], ms=5, capsize=2.5,
                    label=_LABEL[s])
    ax.axline((0, 0), slope=1, color="gray", lw=1, ls="--", label="simulation = theory")
    ax.axhline(0, color="gray", lw=0.6)
    ax.axvline(0, color="gray", lw=0.6)
    ax.set_xlabel("gain, theory (exact linear, $N\\to\\infty$)")
    ax.set_ylabel("gain, simulation (mean ± sem)")
    ax.set_title("every cell: simulation against theory", fontsize="medium")
    ax.legend(fontsize="small", loc="upper left")
    ax.grid(alpha=0.3)
    fig.suptitle(f"digits, linear network: $P_1$ = {cfg['n_source']}, $P_2$ = {cfg['n_target']}, D = 61, "
                 f"$\\gamma_1=\\gamma_2$ = {cfg['gamma']:g}, $T=\\lambda$ = {cfg['temperature']:g}; "
                 f"gain = scratch error $-$ transfer error; {len(cfg['seeds'])} seeds, N = {cfg['width']}",
                 fontsize="medium")
    return fig


def _plot_phase(cfg, rows):
    from matplotlib.lines import Line2D

    from .plotting import _new_figure, plot_phase_diagram
    from .theory.proportional import zero_level_lines

    pr = cfg["params"]
    fig = _new_figure((16.5, 4.9))
    fig.get_layout_engine().set(wspace=0.06)  # room between the middle colour bar and the cut's y label
    axes = fig.subplots(1, 3)
    alphas = np.linspace(0.0, 1.0, cfg["n_grid"])
    nu2s = np.geomspace(*cfg["nu2_range"], cfg["n_grid"])
    sym = {"nu1": r"\nu_1", "g1": "g_1", "g2": "g_2", "lam1": r"\lambda_1", "lam2": r"\lambda_2", "T1": "T_1",
           "T2": "T_2", "sigma1": r"\sigma_1", "sigma2": r"\sigma_2"}
    fixed = ", ".join(f"${sym[k]}$ = {pr[k]:g}" for k in sym)
    for ax, setting in zip(axes[:2], ("finetune", "joint")):
        gain = np.full((len(nu2s), len(alphas)), np.nan)
        for r in rows:
            if r["panel"] == f"diagram {setting}":
                gain[int(np.argmin(np.abs(nu2s - r["nu2"]))), int(np.argmin(np.abs(alphas - r["x"])))] = r["mean"]
        diag = _Diagram("alpha", "nu2", alphas, nu2s, gain, zero_level_lines(alphas, nu2s, gain), setting, {})
        title = (f"{_LABEL[setting]}" + (f" ($\\delta$ = {pr['coupling']:g})" if setting == "joint" else "")
                 + " vs scratch")
        plot_phase_diagram(diag, ax=ax, title=title)
        ax.set_title(title, fontsize="medium")
        ax.axhline(cfg["cut_nu2"], color="dimgray", ls="--", lw=1.2)
        ax.annotate("cut", (0.02, cfg["cut_nu2"]), xytext=(2, 3), textcoords="offset points", fontsize="small",
                    color="dimgray")
    ax = axes[2]
    panel = f"cut nu2={cfg['cut_nu2']:g}"
    for s in ("finetune", "joint"):
        _theory_line(ax, _select(rows, panel=panel, method="theory", setting=s, quantity="gain"), s, band=False)
        _sim_points(ax, _select(rows, panel=panel, method="simulation", setting=s, quantity="gain"), s)
        fd = _select(rows, panel=panel, method="theory_finite_d", setting=s, quantity="gain")
        ax.plot([r["x"] for r in fd], [r["mean"] for r in fd], ls="none", marker="x", ms=6, color=_COLOR[s])
    ax.axhline(0.0, color="gray", lw=0.8)
    ax.set_xlabel(r"task alignment $\alpha$")
    ax.set_ylabel(r"transfer gain $E_{\rm scratch} - E_{\rm transfer}$")
    ax.set_title(f"cut at $\\nu_2$ = {cfg['cut_nu2']:g}: D = {cfg['dim']}, N = {cfg['width']}, "
                 f"{len(cfg['seeds'])} seeds", fontsize="medium")
    ax.grid(alpha=0.3)
    extra = [Line2D([], [], color="gray", marker="x", lw=0, label="exact finite-D theory, same data")]
    _method_legend(ax, extra=extra, loc="best", settings=("finetune", "joint"))
    fig.suptitle(f"proportional limit ($P_k = \\nu_k D$, $\\gamma_k = g_k/\\sqrt{{P_k}}$, $D\\to\\infty$), linear "
                 f"network and teacher: {fixed}", fontsize="medium")
    return fig


@dataclass
class _Diagram:
    """The attributes :func:`symtransfer.plotting.plot_phase_diagram` reads, rebuilt from the CSV rows."""

    x_name: str
    y_name: str
    x: np.ndarray
    y: np.ndarray
    gain: np.ndarray
    boundary: list
    setting: str
    params: dict


# =========================================================================== registry
@dataclass(frozen=True)
class Experiment:
    """One figure: its name, what it shows, how to list its rows and how to evaluate and draw them.

    Attributes
    ----------
    name : str
    description : str
    specs : callable
        ``specs(config) -> list`` of row specifications (labels, parameters, the points behind them).
    evaluate : callable
        ``evaluate(point: dict) -> dict`` of numbers; pure (same point, same numbers).
    plot : callable
        ``plot(config, rows) -> matplotlib.figure.Figure`` from the tidy rows.
    columns : tuple of str
        Parameter columns of the CSV.
    """

    name: str
    description: str
    specs: object
    evaluate: object
    plot: object
    columns: tuple


EXPERIMENTS: dict[str, Experiment] = {
    "polynomial-data": Experiment(
        "polynomial-data", "target error vs target data size P2, three settings, several alignments (tanh, He1 + 0.5 He2)",
        _poly_specs, _evaluate_gaussian, _plot_poly, _GAUSSIAN_COLUMNS),
    "feature-strength": Experiment(
        "feature-strength", "target error vs pretraining (gamma1) and target (gamma2) feature-learning strength",
        _fs_specs, _evaluate_gaussian, _plot_fs, _GAUSSIAN_COLUMNS),
    "digits-matrix": Experiment(
        "digits-matrix", "digits source pair x target pair: gains of fine-tuning and jointly rich, with alignment",
        _digits_specs, _evaluate_digits, _plot_digits, _DIGITS_COLUMNS),
    "phase-diagram": Experiment(
        "phase-diagram", "proportional-limit phase diagrams and a line cut against linear simulations",
        _phase_specs, _evaluate_phase, _plot_phase, _PHASE_COLUMNS),
    "gf-finetune": Experiment(
        "gf-finetune", "gradient flow: readout fine-tuning error vs nu2 (closed forms, linear networks), infinite and "
        "limited source data, negative transfer with source weight decay",
        _gf_ft_specs, _evaluate_gf_finetune, _plot_gf_ft, _GF_FT_COLUMNS),
    "gf-source-strength": Experiment(
        "gf-source-strength", "gradient flow: fine-tuning error vs source strength g1 with the optimum g1*(nu2)",
        _gf_ss_specs, _evaluate_gf_finetune, _plot_gf_ss, _GF_FT_COLUMNS),
    "gf-polynomial": Experiment(
        "gf-polynomial", "gradient flow, ReLU: target loss vs time, easy->hard and hard->easy Hermite teachers, "
        "DMFT against width-N networks",
        _gf_poly_specs, _evaluate_gf_poly, _plot_gf_poly, _GF_POLY_COLUMNS),
    "gf-digits": Experiment(
        "gf-digits", "gradient flow, ReLU, digits: early-stopped and final target loss vs gamma2, DMFT against "
        "networks",
        _gf_digits_specs, _evaluate_gf_digits, _plot_gf_digits, _GF_DIGITS_COLUMNS),
}


def _experiment(name) -> Experiment:
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def experiment_points(name: str, fast: bool = False) -> list[dict]:
    """The distinct points (plain dicts with ``"method"`` and ``"seed"``) of an experiment, in run order.

    Seeds run outermost, so an interrupted run has whole seeds finished first.
    """
    cfg = experiment_config(name, fast)
    return _points(_experiment(name).specs(cfg), cfg)


def _points(specs, cfg):
    from .sweep import point_key

    seen, points = set(), []
    for spec in specs:
        for p in spec.points:
            q = plain(p, "point")
            k = point_key(q)
            if k not in seen:
                seen.add(k)
                points.append(q)
    order = {s: i for i, s in enumerate(cfg["seeds"])}
    points.sort(key=lambda p: order[p["seed"]])  # stable: within a seed, the specs' order
    return points


# =========================================================================== running
@dataclass
class ExperimentRun:
    """What :func:`run_experiment` did and wrote.

    Attributes
    ----------
    name : str
    png, pdf, csv, db : pathlib.Path
    n_points : int
        Distinct points (theory solves and simulations) behind the figure.
    n_already_done : int
        Found in the database at start (not recomputed).
    n_computed : int
        Evaluated and stored by this call.
    failures : list of (point, error message)
        Points whose evaluation raised; they are left out of the averages (``n_seeds`` shows it)
        and retried by the next run (the failure policy of :func:`symtransfer.sweep.run_points`,
        the same as a sweep's).
    seconds : float
        Wall time of the call.
    rows : list of dict
        The tidy table written to ``csv``.
    """

    name: str
    png: Path
    pdf: Path
    csv: Path
    db: Path
    n_points: int
    n_already_done: int
    n_computed: int
    failures: list
    seconds: float
    rows: list

    def __str__(self):
        s = (f"experiment {self.name}: {self.n_points} points ({self.n_already_done} already in {self.db}, "
             f"{self.n_computed} computed) in {self.seconds:.1f} s; wrote {self.png}, {self.pdf}, {self.csv}")
        if self.failures:
            s += f"\n{len(self.failures)} point(s) FAILED (left out, retried next run); first: {self.failures[0][1]}"
        return s


class _Evaluate:
    """The evaluator of experiment ``name``, looked up per call (so a test can replace it)."""

    def __init__(self, name):
        self.name = name

    def __call__(self, p):
        return EXPERIMENTS[self.name].evaluate(p)


def default_out(fast: bool = False, cwd=None) -> Path:
    """The output folder used when none is given.

    ``docs/figures`` when the current folder is a checkout of this project (it has
    ``docs/figures/README.md`` and a ``pyproject.toml`` naming symtransfer), so the committed figures
    are regenerated in place; ``symtransfer-figures`` anywhere else, so a run never writes into an
    unrelated project's ``docs``; ``symtransfer-figures-fast`` with ``fast=True`` everywhere.
    """
    base = Path.cwd() if cwd is None else Path(cwd)
    if fast:
        return base / DEFAULT_FAST_OUT
    readme, project = base / PROJECT_FIGURES / "README.md", base / "pyproject.toml"
    try:
        ours = readme.is_file() and 'name = "symtransfer"' in project.read_text()
    except OSError:
        ours = False
    return base / (PROJECT_FIGURES if ours else DEFAULT_OUT)


def _prepare_outputs(name, out, db, fast):
    """Output folder (created) and database path, checked before anything is computed."""
    from ._validation import check_output_dir, check_output_file

    out = check_output_dir(out if out is not None else default_out(fast), "output folder")
    db = check_output_file(db if db is not None else out / f"{name}.sqlite", "database")
    for f in (out / f"{name}.csv", out / f"{name}.png", out / f"{name}.pdf"):
        check_output_file(f, "output file")
    return out, db


def run_experiment(name: str, out=None, *, fast: bool = False, db=None, progress: bool = True,
                   threads: int = 1) -> ExperimentRun:
    """Compute (or resume) experiment ``name`` and write ``NAME.png``, ``NAME.pdf`` and ``NAME.csv``.

    Parameters
    ----------
    name : str
        One of :data:`EXPERIMENTS`: ``"polynomial-data"``, ``"feature-strength"``,
        ``"digits-matrix"``, ``"phase-diagram"``.
    out : path, optional
        Output directory (created); default :func:`default_out`: ``docs/figures`` inside this
        project's checkout, ``symtransfer-figures`` elsewhere, ``symtransfer-figures-fast`` with
        ``fast=True`` (a quick run never overwrites the committed figures).
    fast : bool
        Tiny sizes (seconds); the numbers are for tests, not for reading.
    db : path, optional
        The results store; default ``<out>/NAME.sqlite``. The points run through
        :func:`symtransfer.sweep.run_points`, the runner of the sweeps (in this process), so the
        store, resume, claims and failure policy are a sweep's: every finished point is committed at
        once, a rerun after an interruption (Ctrl-C, a kill) computes only the missing points, and a
        point whose evaluation raises is recorded in the ``failures`` table and retried next time.
    progress : bool
        tqdm progress bar over points.
    threads : int, >= 1
        Numba/BLAS threads while computing (default 1: fastest on a busy machine).

    Returns
    -------
    ExperimentRun
    """
    from ._validation import check_int
    from .sweep import load_points, point_key, run_points

    exp = _experiment(name)
    threads = check_int("threads", threads, low=1)
    t0 = time.perf_counter()
    out, db = _prepare_outputs(name, out, db, fast)
    cfg = experiment_config(name, fast)
    specs = exp.specs(cfg)
    points = _points(specs, cfg)
    # in this process: the evaluators share cached source fits between the points of a seed
    report = run_points(points, db, evaluate=_Evaluate(name), in_process=True, threads_per_point=threads,
                        progress=progress, desc=name)
    stored = load_points(db, [point_key(p) for p in points])
    rows = _rows(name, specs, lambda p: stored.get(point_key(plain(p, "point"))), exp.columns)
    columns = list(CORE_COLUMNS) + list(exp.columns) + list(_TAIL_COLUMNS)
    csv_path, png, pdf = out / f"{name}.csv", out / f"{name}.png", out / f"{name}.pdf"
    _write_csv(csv_path, rows, columns)
    fig = exp.plot(cfg, rows)
    fig.savefig(png, dpi=150)
    fig.savefig(pdf, metadata={"CreationDate": None})  # no timestamp: a rerun gives the same file
    return ExperimentRun(name, png, pdf, csv_path, db, len(points), report.n_already_done, report.n_computed,
                         report.failures, time.perf_counter() - t0, rows)


def _cell(v):
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        return repr(v)  # round-trips exactly ("inf" for fine-tuning's coupling)
    return v


def _write_csv(path, rows, columns):
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="raise")
    w.writeheader()
    for r in rows:
        w.writerow({c: _cell(r.get(c, "")) for c in columns})
    Path(path).write_text(buf.getvalue())


def read_table(path) -> list[dict]:
    """An experiment CSV as a list of dicts, numbers as floats (empty cells as NaN), text as text."""
    out = []
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            row = {}
            for k, v in r.items():
                if v == "":
                    row[k] = math.nan
                    continue
                try:
                    row[k] = float(v)
                except ValueError:
                    row[k] = v
            out.append(row)
    return out


def disagreement(rows) -> dict:
    """Where simulation and theory differ most, per quantity.

    For every simulation row with a theory row at the same panel, setting, quantity and x:
    ``z = |sim - theory| / sem_sim`` (the simulation's standard error over seeds, which contains
    the data-set variability), ``z_paired = |paired_diff| / paired_diff_sem`` (differences taken seed
    by seed on the same data, where that variability cancels) and, for test errors,
    ``rel = |sim - theory| / theory``.

    Returns
    -------
    dict
        ``{quantity: {"z": row, "z_paired": row, "rel": row}}``, each the worst row (a dict with
        ``panel, setting, x, theory, sim, sem, diff, z, paired_diff, paired_diff_sem, z_paired, rel``).
    """
    def num(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return math.nan

    theory = {_row_id(r): r for r in rows if r["method"] == "theory"}
    worst = {}
    for r in rows:
        if r["method"] != "simulation" or _row_id(r) not in theory:
            continue
        th = theory[_row_id(r)]
        diff = num(r["mean"]) - num(th["mean"])
        sem, pd, pds = num(r["sem"]), num(r["paired_diff"]), num(r["paired_diff_sem"])
        item = {"panel": r["panel"], "setting": r["setting"], "x": r["x"], "theory": num(th["mean"]),
                "sim": num(r["mean"]), "sem": sem, "diff": diff,
                "z": abs(diff) / sem if sem > 0 else math.nan,  # undefined without a spread (one seed)
                "paired_diff": pd, "paired_diff_sem": pds,
                "z_paired": abs(pd) / pds if pds > 0 else math.nan,
                "rel": abs(diff) / abs(num(th["mean"])) if r["quantity"] == "test_error" else math.nan}
        w = worst.setdefault(r["quantity"], {})
        for key in ("z", "z_paired", "rel"):
            if not math.isnan(item[key]) and (key not in w or item[key] > w[key][key]):
                w[key] = item
    return worst


#: Printed above the summary of :func:`disagreement`, so the numbers can be read without the docs.
DISAGREEMENT_LEGEND = (
    "theory vs simulation (worst row per quantity; see symtransfer.figures.disagreement):\n"
    "  |sim - theory| / sem_sim      distance in units of the simulations' standard error over seeds "
    "(data and network noise); below ~2-3 the two agree within the seed-to-seed spread\n"
    "  paired |sim - theory| / sem   per-seed differences on the same data sets, over their standard error: the "
    "data noise cancels, so a large value measures a systematic gap (finite width N, finite training time, "
    "theory Monte Carlo error), not a failure; read its size from 'paired diff'\n"
    "  |sim - theory| / theory       relative gap of the test error")
