"""Parameter sweeps with a resumable SQLite results database (docs/sweeps.md).

A sweep is a grid ``parameters x seeds x methods``. Each grid point becomes a plain dict of
parameters, *normalised* (defaults filled in, types canonical, irrelevant keys such as the seed of a
deterministic method dropped) and keyed by the SHA-256 of its canonical JSON. A point is evaluated by
the pure, picklable :func:`evaluate_point` (dict in, dict out), which dispatches to a small registry of
evaluators, one per method. Only the driving process writes the database, one committed row per
finished point, so a sweep killed at any moment (even ``SIGKILL``) loses at most the points in flight
and a rerun computes exactly the missing ones.

:func:`run_points` is the one runner behind it (store, resume, claims, failure policy, progress),
also used, in process, by the figures (:func:`symtransfer.figures.run_experiment`).

Backends share one code path, a :class:`concurrent.futures.Executor`: local processes
(:class:`~concurrent.futures.ProcessPoolExecutor`, the default) or a Dask distributed cluster through
its ``concurrent.futures`` adapter (``scheduler=ADDRESS``, or a ``LocalCluster`` started for you).
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
import json
import math
import os
import socket
import sqlite3
import threading
import time
import traceback
import uuid
import warnings
from contextlib import contextmanager
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ._validation import check_int, check_output_file, check_real
from .errors import MalformedRowWarning, ResultsDatabaseError

__all__ = [
    "EVALUATORS",
    "Evaluator",
    "SweepReport",
    "register_evaluator",
    "expand_config",
    "normalise_point",
    "point_key",
    "evaluate_point",
    "run_sweep",
    "run_points",
    "plain",
    "load_points",
    "load_results",
    "load_failures",
    "to_long",
    "SCHEDULER_TIMEOUT",
]

SCHEMA_VERSION = 1

# --------------------------------------------------------------------------- parameter schema
_COMMON = {
    "task": "gaussian",
    "activation": "relu",
    "gamma1": 1.0,
    "gamma2": 1.0,
    "weight_decay1": 1.0,
    "weight_decay2": 1.0,
    "temperature1": None,  # method-dependent default, see _default_temperature
    "temperature2": None,
    "coupling": 1.0,
    "seed": 0,
    "data_seed": None,  # None: the point's seed (data redrawn per seed)
}
_TASKS = {
    "gaussian": {"dim": 20, "n_source": 80, "n_target": 20, "n_test": 500, "alpha": 1.0, "teacher": "linear",
                 "noise_source": 0.0, "noise_target": 0.0},
    "digits": {"source": "3-8", "target": "5-8", "n_source": 200, "n_target": 40, "n_test": None},
    "file": {"path": None, "standardise": False},
}
# Options forwarded to the estimator of each method (compare_transfer's per-method settings).
_METHOD_OPTIONS = {
    "equilibrium": {"n_samples": None, "n_chains": None, "tol": None, "max_iter": None},
    "gradient_flow": {"population": 2000, "dt": None, "t_max": 20.0, "average_from": None, "tol": None,
                      "n_records": None, "early_stop": None},
    "simulation": {"width": 1000, "lr": None, "steps": 2000, "average_from": None, "batch_size": None,
                   "init_scale": None},
    "proportional": {},
}
_INT_KEYS = {"seed", "data_seed", "dim", "n_source", "n_target", "n_test", "n_samples", "n_chains", "max_iter",
             "population", "n_records", "width", "steps", "batch_size"}
_FLOAT_KEYS = {"gamma1", "gamma2", "weight_decay1", "weight_decay2", "temperature1", "temperature2", "coupling",
               "alpha", "noise_source", "noise_target", "tol", "dt", "t_max", "average_from", "lr", "init_scale"}
_BOOL_KEYS = {"standardise", "early_stop"}
# Accepted ranges (low, low_open, high); checked when a point is normalised, so a sweep with a bad
# value stops before computing anything, naming the parameter as the config spells it.
_RANGES = {
    "dim": (2, False, None), "n_source": (1, False, None), "n_target": (1, False, None),
    "n_test": (1, False, None), "n_samples": (1, False, None), "n_chains": (1, False, None),
    "max_iter": (1, False, None), "population": (1, False, None), "n_records": (2, False, None),
    "width": (1, False, None), "steps": (1, False, None), "batch_size": (1, False, None),
    "gamma1": (0.0, True, None), "gamma2": (0.0, True, None),
    "weight_decay1": (0.0, False, None), "weight_decay2": (0.0, False, None),
    "temperature1": (0.0, False, None), "temperature2": (0.0, False, None),
    "coupling": (0.0, True, None), "alpha": (-1.0, False, 1.0),
    "noise_source": (0.0, False, None), "noise_target": (0.0, False, None),
    "tol": (0.0, True, None), "dt": (0.0, True, None), "t_max": (0.0, True, None),
    "average_from": (0.0, False, None), "lr": (0.0, True, None), "init_scale": (0.0, True, None),
}
# The equilibrium theories are Gibbs measures with a ridge: T > 0 and lambda > 0.
_POSITIVE_FOR = {"equilibrium": ("weight_decay1", "weight_decay2", "temperature1", "temperature2"),
                 "proportional": ("weight_decay1", "weight_decay2", "temperature1", "temperature2")}
_SETTINGS = ("scratch", "finetune", "joint")


def _default_temperature(method):
    # the equilibrium theory is a Gibbs measure (T > 0); dynamics default to gradient flow
    return 1.0 if method in ("equilibrium", "proportional") else 0.0


def _plain(value, where):
    """JSON-able plain Python value (numpy scalars/arrays converted), or ValueError."""
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, where) for k, v in value.items()}
    raise ValueError(f"{where} must be a plain number, string, bool, list or table, got {value!r}")


def plain(value, where="value"):
    """``value`` as plain JSON-able Python (NumPy scalars and arrays converted), or ``ValueError``
    naming ``where``: the form in which points and results are keyed and stored."""
    return _plain(value, where)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _normalise_builtin(method: str, params: dict) -> dict:
    task = params.get("task", _COMMON["task"])
    if task not in _TASKS:
        raise ValueError(f"parameter 'task' must be one of {', '.join(_TASKS)}, got {task!r}")
    allowed = {**_COMMON, **_TASKS[task], **_METHOD_OPTIONS[method]}
    unknown = sorted(set(params) - set(allowed) - {"method"})
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for method {method!r} with task {task!r}; accepted: "
                         f"{', '.join(sorted(allowed))}")
    p = {**allowed, **{k: v for k, v in params.items() if k != "method"}}
    for k in ("temperature1", "temperature2"):
        if p[k] is None:
            p[k] = _default_temperature(method)
    if p["data_seed"] is None:
        p["data_seed"] = p["seed"]
    for k, v in list(p.items()):
        if v is None:
            continue
        low, low_open, high = _RANGES.get(k, (0, False, None))
        if k in _POSITIVE_FOR.get(method, ()):
            low_open = True
        if method == "proportional" and k in ("gamma1", "gamma2", "coupling"):
            low_open = False  # the closed form covers the lazy limit g = 0 and delta = 0 (scratch)
        if k in _INT_KEYS:
            p[k] = check_int(f"parameter {k!r}", v, low=low + (1 if low_open else 0), high=high)
        elif k in _FLOAT_KEYS:
            p[k] = check_real(f"parameter {k!r}", v, low=low, low_open=low_open, high=high,
                              allow_inf=(k == "coupling"))
        elif k in _BOOL_KEYS and not isinstance(v, bool):
            raise ValueError(f"parameter {k!r} must be true or false, got {v!r}")
    if p.get("average_from") is not None and not p["average_from"] < 1.0:
        raise ValueError(f"parameter 'average_from' must be in [0, 1), got {p['average_from']!r}")
    if not isinstance(p["activation"], str):
        raise ValueError(f"parameter 'activation' must be a name or formula string, got {p['activation']!r}")
    if task == "digits":
        from .datasets import parse_pair

        p["source"] = "-".join(map(str, parse_pair(p["source"], "parameter 'source'")))
        p["target"] = "-".join(map(str, parse_pair(p["target"], "parameter 'target'")))
    elif task == "file":
        if not p["path"]:
            raise ValueError("task 'file' needs the parameter 'path' (an .npz or .csv file)")
        path = Path(str(p["path"])).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"parameter 'path': data file {str(path)!r} does not exist")
        p["path"] = str(path)
        # the content, not only the name, identifies the point: an edited file is recomputed
        p["file_sha256"] = _file_digest(path)
    elif task == "gaussian":
        p["teacher"] = _plain(p["teacher"], "parameter 'teacher'")
        if isinstance(p["teacher"], dict):
            p["teacher"] = {str(int(k)): float(v) for k, v in p["teacher"].get("degrees", p["teacher"]).items()}
    if method == "proportional":
        if task != "gaussian" or p["activation"] != "linear" or p["teacher"] not in ("linear", {"1": 1.0}):
            raise ValueError("method 'proportional' is the D -> infinity closed form for task 'gaussian' with "
                             "activation 'linear' and teacher 'linear'")
        # deterministic and data-free: one row whatever the seed
        p.pop("seed")
        p.pop("data_seed")
    elif method == "equilibrium" and p["activation"] == "linear":
        p.pop("seed")  # exact theory: the network seed plays no role (data_seed still does)
    for k in _METHOD_OPTIONS[method]:
        if p.get(k) is None:
            p.pop(k, None)  # unset option = the estimator's default; keeps keys and tables lean
    p["method"] = method
    return p


# --------------------------------------------------------------------------- data of a point
def _point_data(p):
    """``((X1, y1), (X2, y2), (X_test, y_test))`` and extra result fields for a normalised point."""
    task = p["task"]
    if task == "gaussian":
        from .tasks import make_transfer_pair

        pair = make_transfer_pair(p["dim"], p["n_source"], p["n_target"], p["n_test"], p["alpha"],
                                  teacher=p["teacher"], noise_source=p["noise_source"],
                                  noise_target=p["noise_target"], seed=p["data_seed"])
        return ((pair.source.X_train, pair.source.y_train), (pair.target.X_train, pair.target.y_train),
                (pair.target.X_test, pair.target.y_test_clean)), {}
    if task == "digits":
        from .datasets import digits_transfer

        d = digits_transfer(p["source"], p["target"], n_source=p["n_source"], n_target=p["n_target"],
                            n_test=p["n_test"], seed=p["data_seed"])
        return d.as_tuples(), {"task_alignment": d.alignment, "n_test_used": len(d.y_test)}
    from .datasets import load_transfer_data

    d = load_transfer_data(p["path"], standardise=p["standardise"])
    return d.as_tuples(), {"task_alignment": d.alignment}


def _compare_evaluator(method):
    def evaluate(p):
        from .experiments import compare_transfer

        data, extra = _point_data(p)
        hyper = {k: {"gamma": p[f"gamma{i}"], "weight_decay": p[f"weight_decay{i}"],
                     "temperature": p[f"temperature{i}"]} for k, i in (("source", 1), ("target", 2))}
        options = {k: p[k] for k in _METHOD_OPTIONS[method] if p.get(k) is not None}
        if method == "simulation":
            options.setdefault("width", 1000)
        settings = {"activation": p["activation"], "couplings": [p["coupling"]], **hyper, method: options}
        seed = p.get("seed", 0)
        table = compare_transfer(*data, settings=settings, method=method, seeds=[seed])
        out = dict(extra)
        for setting in _SETTINGS:
            row = table.row(setting)
            out[f"test_error_{setting}"] = row["test_error"]
            out[f"alignment_{setting}"] = row["alignment"]
            if setting != "scratch":
                out[f"gain_{setting}"] = row["transfer_gain"]
        return out

    evaluate.__name__ = f"evaluate_{method}"
    return evaluate


def _evaluate_proportional(p):
    from .theory.proportional import target_error

    kw = dict(nu1=p["n_source"] / p["dim"], nu2=p["n_target"] / p["dim"], alpha=p["alpha"],
              g1=p["gamma1"] * math.sqrt(p["n_source"]), g2=p["gamma2"] * math.sqrt(p["n_target"]),
              weight_decay1=p["weight_decay1"], weight_decay2=p["weight_decay2"], temperature1=p["temperature1"],
              temperature2=p["temperature2"],
              sigma1=p["noise_source"], sigma2=p["noise_target"])
    out = {"test_error_scratch": float(target_error("scratch", **kw)),
           "test_error_finetune": float(target_error("finetune", **kw)),
           "test_error_joint": float(target_error("joint", coupling=p["coupling"], **kw))}
    out["gain_finetune"] = out["test_error_scratch"] - out["test_error_finetune"]
    out["gain_joint"] = out["test_error_scratch"] - out["test_error_joint"]
    return out


@dataclass(frozen=True)
class Evaluator:
    """A sweep method: ``evaluate(params) -> results`` (pure, picklable by reference), the modules it
    needs (checked before a sweep starts) and ``normalise(method, params) -> params``."""

    evaluate: object
    requires: tuple = ()
    normalise: object = None


EVALUATORS: dict[str, Evaluator] = {
    "equilibrium": Evaluator(_compare_evaluator("equilibrium"), ("symtransfer.experiments",
                                                                  "symtransfer.theory.linear"),
                             _normalise_builtin),
    "gradient_flow": Evaluator(_compare_evaluator("gradient_flow"), ("symtransfer.experiments",
                                                                      "symtransfer.theory.dmft"),
                               _normalise_builtin),
    "simulation": Evaluator(_compare_evaluator("simulation"), ("symtransfer.experiments", "symtransfer.sim"),
                            _normalise_builtin),
    "proportional": Evaluator(_evaluate_proportional, ("symtransfer.theory.proportional",), _normalise_builtin),
}


def register_evaluator(name: str, evaluate, *, requires=(), normalise=None) -> None:
    """Add a method to the registry.

    ``evaluate(params: dict) -> dict`` must be pure (same params, same results) and defined at module
    level so worker processes can import it; ``normalise(method, params) -> params`` defaults to
    converting values to plain JSON types. Workers only see registrations made at import time of
    a module they import; for ad-hoc methods name them ``"package.module:function"`` in the config.
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"evaluator name must be a non-empty string without ':', got {name!r}")
    if not callable(evaluate):
        raise ValueError(f"evaluate for {name!r} must be callable")
    EVALUATORS[name] = Evaluator(evaluate, tuple(requires), normalise)


def _resolve(method: str, allow_code: bool = True) -> Evaluator:
    if not isinstance(method, str):
        raise ValueError(f"method must be a string, got {method!r}")
    if method in EVALUATORS:
        return EVALUATORS[method]
    if ":" in method:
        if not allow_code:
            # importing a module named in a config runs its code: a config file must not be able to
            # run arbitrary code (e.g. "subprocess:run") unless the user says so
            raise ValueError(f"method {method!r} names a Python function to import and run; custom code from a "
                             f"config runs only with allow_code=True (command line: --allow-code)")
        mod, _, fn = method.partition(":")
        try:
            func = getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"method {method!r}: cannot import function {fn!r} from module {mod!r} ({exc})") from None
        return Evaluator(func, (), None)
    raise ValueError(f"unknown method {method!r}; built-in: {', '.join(EVALUATORS)}, or 'package.module:function' "
                     f"for a custom evaluator")


def _check_available(method: str) -> None:
    for mod in _resolve(method, allow_code=True).requires:
        try:
            importlib.import_module(mod)
        except ImportError as exc:
            raise ImportError(f"method {method!r} needs module {mod!r}, which cannot be imported ({exc}); "
                              f"leave {method!r} out of 'methods'") from exc


def normalise_point(params: dict, *, allow_code: bool = False) -> dict:
    """Canonical form of a point: defaults filled in, types checked, ``"method"`` included.

    A method ``"package.module:function"`` is imported (which runs that module's code) only with
    ``allow_code=True``.
    """
    if not isinstance(params, dict):
        raise ValueError(f"a point must be a dict of parameters, got {type(params).__name__}")
    params = {str(k): _plain(v, f"parameter {k!r}") for k, v in params.items()}
    method = params.get("method")
    ev = _resolve(method, allow_code)
    if ev.normalise is None:
        return dict(params)
    return ev.normalise(method, params)


def point_key(params: dict) -> str:
    """Stable identity of a normalised point: SHA-256 of its canonical JSON (sorted keys)."""
    return hashlib.sha256(_canonical(params).encode()).hexdigest()


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True)


def evaluate_point(params: dict) -> dict:
    """Evaluate one normalised point: a plain dict of parameters in, a plain dict of results out."""
    out = _resolve(params["method"]).evaluate(params)
    if not isinstance(out, dict):
        raise TypeError(f"evaluator of {params['method']!r} returned {type(out).__name__}, not a dict")
    return _plain(out, "result")


@contextmanager
def _threads(n):
    """Numba and BLAS limited to ``n`` threads inside the block (points running side by side, or a
    shared machine, where two-thread barriers cost more than they save)."""
    import numba
    from threadpoolctl import threadpool_limits

    before = numba.get_num_threads()
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
    try:
        with threadpool_limits(limits=int(n)):
            yield
    finally:
        numba.set_num_threads(before)


def _run_point(params: dict, n_threads: int = 1, evaluate=None):
    """One evaluation under the failure policy of :func:`run_points`: results, or the exception as
    data (it always pickles). ``evaluate`` defaults to :func:`evaluate_point`."""
    t0 = time.perf_counter()
    try:
        with _threads(n_threads):
            res = (evaluate_point if evaluate is None else evaluate)(params)
        if evaluate is not None:
            if not isinstance(res, dict):
                raise TypeError(f"evaluator of {params.get('method')!r} returned {type(res).__name__}, not a dict")
            res = _plain(res, "result")
        return {"ok": True, "results": res, "seconds": time.perf_counter() - t0}
    except Exception as exc:  # noqa: BLE001 - reported per point, the run goes on
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(),
                "seconds": time.perf_counter() - t0}


def _orphan_watchdog(parent_pid: int):
    """Worker initialiser: exit when the driving process dies (e.g. SIGKILL), instead of lingering."""

    def watch():
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True, name="symtransfer-orphan-watchdog").start()


# --------------------------------------------------------------------------- configuration
_CONFIG_KEYS = {"methods", "seeds", "params", "grid", "db", "workers", "threads_per_point"}


def _table(config, name):
    value = config.get(name, {})
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"[{name}] must be a table of name = value pairs, got {value!r}")
    return dict(value)


def expand_config(config: dict, base_dir=None, *, allow_code: bool = False) -> list[dict]:
    """The normalised points of a sweep config, deduplicated, in grid order.

    Layout (TOML)::

        methods = ["equilibrium", "simulation"]   # or one string
        seeds = [0, 1, 2]                         # or an integer n: seeds 0 .. n-1
        [params]       # values shared by every point
        [grid]         # name = [values, ...]; the sweep is the Cartesian product
        [simulation]   # options for the points of one method (any method name)

    A name may appear in only one of ``params``, ``grid`` and the method's table. Relative ``path``
    values are resolved against ``base_dir``. Methods ``"package.module:function"`` need
    ``allow_code=True``.
    """
    if not isinstance(config, dict):
        raise ValueError("a sweep config must be a table/object")
    methods = config.get("methods")
    if methods is None:
        raise ValueError("the sweep config needs 'methods' (e.g. methods = [\"equilibrium\", \"simulation\"])")
    if isinstance(methods, str):
        methods = [methods]
    if not isinstance(methods, (list, tuple)) or not all(isinstance(m, str) for m in methods):
        raise ValueError(f"'methods' must be a method name or a list of names (built-in: {', '.join(EVALUATORS)}), "
                         f"got {methods!r}")
    methods = list(methods)
    if not methods:
        raise ValueError("'methods' is empty")
    unknown = set(config) - _CONFIG_KEYS - set(methods)
    if unknown:
        raise ValueError(f"sweep config has unknown keys {sorted(unknown)}; accepted: {', '.join(sorted(_CONFIG_KEYS))} "
                         f"and one table per method in 'methods'")
    seeds = config.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = list(range(check_int("seeds", seeds, low=1)))
    if not isinstance(seeds, (list, tuple)):
        raise ValueError(f"'seeds' must be a count n >= 1 (seeds 0 .. n-1) or a list of integers >= 0, got {seeds!r}")
    seeds = [check_int("seeds entry", s, low=0) for s in seeds]
    if not seeds:
        raise ValueError("'seeds' is empty")
    fixed = _table(config, "params")
    grid = _table(config, "grid")
    for name, values in grid.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"grid entry {name!r} must be a non-empty list of values, got {values!r}")
    clash = set(fixed) & set(grid)
    if clash:
        raise ValueError(f"parameter(s) {sorted(clash)} appear in both [params] and [grid]")
    if {"seed", "method"} & (set(fixed) | set(grid)):
        raise ValueError("'seed' and 'method' are set by 'seeds' and 'methods', not in [params]/[grid]")
    for m in methods:
        _resolve(m, allow_code)
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    names = list(grid)
    points, seen = [], set()
    for m in methods:
        opts = _table(config, m)
        clash = set(opts) & (set(fixed) | set(grid))
        if clash:
            raise ValueError(f"option(s) {sorted(clash)} of [{m}] also appear in [params] or [grid]")
        for combo in itertools.product(*(grid[n] for n in names)):
            for s in seeds:
                p = {**fixed, **dict(zip(names, combo)), **opts, "method": m, "seed": s}
                if isinstance(p.get("path"), str) and not Path(p["path"]).expanduser().is_absolute():
                    p["path"] = str(base / p["path"])
                q = normalise_point(p, allow_code=allow_code)
                k = point_key(q)
                if k not in seen:
                    seen.add(k)
                    points.append(q)
    return points


# --------------------------------------------------------------------------- results database
_DDL = """
CREATE TABLE IF NOT EXISTS points (
    key TEXT PRIMARY KEY,
    method TEXT NOT NULL,
    params TEXT NOT NULL,
    results TEXT NOT NULL,
    seconds REAL,
    finished_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS failures (
    key TEXT PRIMARY KEY,
    method TEXT NOT NULL,
    params TEXT NOT NULL,
    error TEXT NOT NULL,
    traceback TEXT,
    failed_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS claims (
    key TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    claimed_at TEXT NOT NULL
);
"""
_COLUMNS = {"points": ["key", "method", "params", "results", "seconds", "finished_at"],
            "failures": ["key", "method", "params", "error", "traceback", "failed_at"]}


def _check_schema(con, db_path):
    for table, cols in _COLUMNS.items():
        have = [r[1] for r in con.execute(f"PRAGMA table_info({table})")]
        if have and have != cols:
            raise ResultsDatabaseError(db_path, f"table {table!r} has columns {have}, expected {cols} (not a "
                                                f"symtransfer results database?)")


def _connect(db_path, check: bool = True) -> sqlite3.Connection:
    """Open (creating if needed) a results database; a damaged or foreign file raises
    :class:`~symtransfer.errors.ResultsDatabaseError` naming it, before any point is computed."""
    existed = Path(db_path).is_file() and Path(db_path).stat().st_size > 0
    try:
        con = sqlite3.connect(str(db_path), timeout=60.0)
    except sqlite3.Error as exc:
        raise ResultsDatabaseError(db_path, f"cannot be opened ({exc})") from None
    try:
        # WAL: readers (load_results during a sweep) never block the writer; a commit is durable
        # against the death of this process, which is what resuming needs.
        con.execute("PRAGMA journal_mode=WAL")
        if existed and check:
            # a damaged page (say of the failures table) otherwise reads as "nothing to do"
            problems = [r[0] for r in con.execute("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                raise ResultsDatabaseError(db_path, "integrity check failed: " + "; ".join(problems))
            _check_schema(con, db_path)
        con.executescript(_DDL)
        con.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        con.commit()
    except sqlite3.DatabaseError as exc:
        con.close()
        raise ResultsDatabaseError(db_path, f"{type(exc).__name__}: {exc}") from None
    except BaseException:
        con.close()
        raise
    return con


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Claims:
    """Points claimed by a driver before it submits them, so drivers sharing one database compute each
    point once: ``BEGIN IMMEDIATE`` takes the write lock, so check-and-claim is atomic across processes.
    A claim whose driver died on this host (its pid is gone) is taken over; claims of drivers on other
    hosts are respected until they finish or release them."""

    def __init__(self, con):
        self.con = con
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.owner = f"{self.host}:{self.pid}:{uuid.uuid4().hex}"

    def claim(self, key) -> str:
        """``"claimed"``, ``"done"`` (finished meanwhile) or ``"busy"`` (another driver has it)."""
        con = self.con
        con.execute("BEGIN IMMEDIATE")
        try:
            if con.execute("SELECT 1 FROM points WHERE key = ?", (key,)).fetchone():
                con.execute("COMMIT")
                return "done"
            row = con.execute("SELECT owner, host, pid FROM claims WHERE key = ?", (key,)).fetchone()
            if row is not None and row[0] != self.owner and not (row[1] == self.host and not _pid_alive(row[2])):
                con.execute("COMMIT")
                return "busy"
            con.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?)",
                        (key, self.owner, self.host, self.pid, _now()))
            con.execute("COMMIT")
            return "claimed"
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def release_all(self):
        with self.con:
            self.con.execute("DELETE FROM claims WHERE owner = ?", (self.owner,))


def _now():
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _done_keys(con) -> set:
    return {r[0] for r in con.execute("SELECT key FROM points")}


def _store(con, key, params, out):
    with con:  # one transaction per point: all of it or nothing survives a kill
        con.execute("DELETE FROM claims WHERE key = ?", (key,))
        if out["ok"]:
            con.execute("INSERT OR IGNORE INTO points VALUES (?, ?, ?, ?, ?, ?)",
                        (key, params["method"], _canonical(params), _canonical(out["results"]), out["seconds"],
                         _now()))
            con.execute("DELETE FROM failures WHERE key = ?", (key,))
        else:
            con.execute("INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?, ?, ?)",
                        (key, params["method"], _canonical(params), out["error"], out["traceback"], _now()))


# --------------------------------------------------------------------------- running
@dataclass
class SweepReport:
    """What a call of :func:`run_sweep` did.

    Attributes
    ----------
    db_path : str
    n_points : int
        Distinct points of the sweep.
    n_already_done : int
        Found in the database at start (not recomputed).
    n_computed : int
        Finished and stored by this call.
    failures : list of (params, error)
        Points whose evaluation raised (stored in the ``failures`` table, retried by the next run).
    seconds : float
    backend : str
    n_elsewhere : int
        Points left to another driver working on the same database at the same time (claimed by it,
        or finished by it while this call ran); neither computed nor counted as done here.
    """

    db_path: str
    n_points: int
    n_already_done: int
    n_computed: int
    failures: list = field(default_factory=list)
    seconds: float = 0.0
    backend: str = "local"
    n_elsewhere: int = 0

    @property
    def complete(self) -> bool:
        return self.n_already_done + self.n_computed == self.n_points

    def results(self, long=False):
        """The database as a DataFrame (:func:`load_results`)."""
        return load_results(self.db_path, long=long)

    def __str__(self):
        s = (f"sweep: {self.n_points} points, {self.n_already_done} already in {self.db_path}, "
             f"{self.n_computed} computed in {self.seconds:.1f} s ({self.backend})")
        if self.n_elsewhere:
            s += f"; {self.n_elsewhere} left to another driver on the same database"
        if self.failures:
            s += f"; {len(self.failures)} FAILED (first: {self.failures[0][1]})"
        return s


def _default_workers():
    return max(1, os.cpu_count() or 1)


#: Seconds to wait for a Dask scheduler given by address before giving up.
SCHEDULER_TIMEOUT = 5.0


def _connect_scheduler(Client, scheduler, timeout):
    try:
        return Client(scheduler, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise RuntimeError(f"cannot reach the Dask scheduler at {scheduler!r} within {timeout:g} s ({exc}); "
                           f"is it running (dask scheduler), and is the address tcp://HOST:PORT?") from None
    except ValueError as exc:
        raise ValueError(f"scheduler address {scheduler!r} is not valid ({exc}); expected tcp://HOST:PORT") from None


def _make_executor(workers, scheduler, local_cluster, timeout=None):
    """``(executor, cleanup, description)``; every backend is a concurrent.futures Executor."""
    if scheduler is not None or local_cluster:
        try:
            from distributed import Client, LocalCluster
        except ImportError as exc:
            raise ImportError("the Dask backend needs 'distributed' (pip install dask distributed)") from exc
        if scheduler is not None:
            client = _connect_scheduler(Client, scheduler, SCHEDULER_TIMEOUT if timeout is None else timeout)
            cluster = None
            desc = f"dask scheduler {scheduler}"
        else:
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None)
            client = Client(cluster)
            desc = f"dask LocalCluster ({workers} workers)"
        # pure=False: a point is never silently deduplicated by Dask's own hashing
        executor = client.get_executor(pure=False)

        def cleanup():
            client.close()
            if cluster is not None:
                cluster.close()

        return executor, cleanup, desc
    import multiprocessing as mp

    # spawn: forking a process whose Numba/OpenMP thread pools already run is not safe
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                   initializer=_orphan_watchdog, initargs=(os.getpid(),))
    return executor, lambda: executor.shutdown(wait=True, cancel_futures=True), f"local ({workers} processes)"


def _prepare(config, base_dir, allow_code):
    if isinstance(config, dict):
        return config, expand_config(config, base_dir, allow_code=allow_code)
    if isinstance(config, (list, tuple)):
        points, seen = [], set()
        for p in config:
            q = normalise_point(p, allow_code=allow_code)
            if point_key(q) not in seen:
                seen.add(point_key(q))
                points.append(q)
        return {}, points
    raise ValueError("config must be a sweep config dict or a list of point dicts")


def run_sweep(config, db_path, *, scheduler=None, local_cluster=False, workers=None, threads_per_point=None,
              progress=True, base_dir=None, allow_code=False, scheduler_timeout=None) -> SweepReport:
    """Run (or resume) a sweep, storing each finished point in the SQLite database ``db_path``.

    Parameters
    ----------
    config : dict or list of dict
        A sweep config (:func:`expand_config`) or a list of point dicts (each with ``"method"``).
    db_path : path
        Results database; created if missing. Points already in it are skipped.
    scheduler : str, optional
        Address of a running Dask scheduler (``tcp://host:8786``).
    local_cluster : bool
        Start a Dask ``LocalCluster`` with ``workers`` single-threaded worker processes.
    workers : int, optional
        Local worker processes (default: ``config["workers"]`` or the CPU count).
    threads_per_point : int, optional
        Numba/BLAS threads inside each point (default ``max(1, cpus // workers)``).
    progress : bool
        tqdm progress bar with ETA.
    allow_code : bool
        Allow methods ``"package.module:function"``, which import and run that module's code
        (default ``False``: a config file alone cannot run arbitrary code).
    scheduler_timeout : float, optional
        Seconds to wait for the Dask scheduler at ``scheduler`` (default :data:`SCHEDULER_TIMEOUT`).

    Returns
    -------
    SweepReport

    Notes
    -----
    Several drivers may share one database at the same time (say a second terminal, or a second
    job on a cluster): each point is claimed before it is computed (table ``claims``), so each is
    computed once, and each report counts what its own call computed.
    """
    if scheduler is not None and local_cluster:
        raise ValueError("give either scheduler=ADDRESS or local_cluster=True, not both")
    cfg, points = _prepare(config, base_dir, allow_code)
    for m in dict.fromkeys(p["method"] for p in points):
        _check_available(m)
    workers = check_int("workers", workers if workers is not None else cfg.get("workers", _default_workers()), low=1)
    tpp = threads_per_point if threads_per_point is not None else cfg.get("threads_per_point")
    tpp = check_int("threads_per_point", tpp, low=1) if tpp is not None else max(1, _default_workers() // workers)
    if scheduler_timeout is not None:
        scheduler_timeout = check_real("scheduler_timeout", scheduler_timeout, low=0.0, low_open=True)
    check_output_file(db_path, "results database")
    return run_points(points, db_path, workers=workers, threads_per_point=tpp, scheduler=scheduler,
                      local_cluster=local_cluster, scheduler_timeout=scheduler_timeout, progress=progress)


def run_points(points, db_path, *, evaluate=None, in_process=False, workers=1, threads_per_point=1,
               scheduler=None, local_cluster=False, scheduler_timeout=None, progress=True,
               desc="sweep") -> SweepReport:
    """Compute the points missing from the results store ``db_path``: the one runner of the package.

    :func:`run_sweep` (sweeps, the advisor) and :func:`symtransfer.figures.run_experiment` (the
    figures) both run their points through this function, so they share one results store, one
    resume mechanism, one claim protocol, one failure policy and one progress bar.

    Parameters
    ----------
    points : list of dict
        Normalised points (plain JSON-able dicts with ``"method"``), each identified by
        :func:`point_key`; duplicates are computed once.
    db_path : path
        The results store, an SQLite file (created if missing; a damaged or foreign file raises
        :class:`~symtransfer.errors.ResultsDatabaseError` before anything is computed).
    evaluate : callable, optional
        ``evaluate(point) -> dict``; default :func:`evaluate_point` (the method registry). With a
        process or Dask backend it must be picklable (a module-level function).
    in_process : bool
        Evaluate here, one point after the other (the figures: their evaluators share cached
        source fits between points), instead of in ``workers`` spawned processes or on a Dask
        cluster (``scheduler`` address, or ``local_cluster=True``).
    workers, threads_per_point : int
        Worker processes, and Numba/BLAS threads inside each evaluation.
    progress : bool
        tqdm progress bar (label ``desc``) with the count of failed points.

    Returns
    -------
    SweepReport

    Notes
    -----
    **Store.** Table ``points``: one row per finished point (``key``, ``method``, ``params``,
    ``results`` as canonical JSON, ``seconds``, ``finished_at``); ``failures``: the last error of each
    point that failed (with its traceback); ``claims``: points being computed; ``meta``: the schema
    version. Each point is committed in its own transaction the moment it finishes (WAL journal), so
    a run killed at any moment, even by ``SIGKILL``, loses only the points in flight.

    **Resume.** Points already in ``points`` are skipped; a rerun computes exactly the missing ones
    and retries the failed ones.

    **Claims.** Each point is claimed (``BEGIN IMMEDIATE``, atomic across processes) before it is
    computed, so several runs on one store compute each point once; a claim of a dead process on
    this host is taken over, and a run releases its claims when it ends, however it ends.

    **Failure policy.** An evaluation that raises an ``Exception`` (a solver's
    :class:`~symtransfer.errors.ConvergenceError`, a singular system, a bug in a custom evaluator)
    costs that point only: it is recorded in ``failures`` and in :attr:`SweepReport.failures`, left
    out of the results, and retried by the next run; the run goes on. ``KeyboardInterrupt`` and
    ``SystemExit`` stop the run (finished points stay stored). A worker process that dies (out of
    memory, a crash in compiled code) stops the run with a ``RuntimeError`` naming the point.
    """
    tpp = check_int("threads_per_point", threads_per_point, low=1)
    workers = check_int("workers", workers, low=1)
    if scheduler is not None and local_cluster:
        raise ValueError("give either scheduler=ADDRESS or local_cluster=True, not both")
    if in_process and (scheduler is not None or local_cluster):
        raise ValueError("in_process=True evaluates in this process: it takes no scheduler or local cluster")
    keyed, seen = [], set()
    for p in points:
        k = point_key(p)
        if k not in seen:
            seen.add(k)
            keyed.append((k, p))

    t0 = time.perf_counter()
    con = _connect(db_path)
    claims = _Claims(con)
    try:
        done = _done_keys(con)
        todo = [(k, p) for k, p in keyed if k not in done]
        report = SweepReport(str(db_path), len(keyed), len(keyed) - len(todo), 0)
        if not todo:
            report.backend = "none (nothing to do)"
            return report
        executor, cleanup = None, (lambda: None)
        if not in_process:
            # connected before the progress bar opens: an unreachable scheduler is one error line
            executor, cleanup, report.backend = _make_executor(workers, scheduler, local_cluster, scheduler_timeout)
        from tqdm.auto import tqdm

        bar = tqdm(total=len(keyed), initial=report.n_already_done, desc=desc, unit="point",
                   disable=not progress, dynamic_ncols=True)
        queue = iter(todo)

        def next_claimed():
            """The next point of the queue this driver claims; others' points are counted and skipped."""
            for k, p in queue:
                state = claims.claim(k)
                if state == "claimed":
                    return k, p
                report.n_elsewhere += 1
                bar.update(1)
            return None

        def finish(k, p, out):
            _store(con, k, p, out)  # committed at once: an interruption loses no finished point
            if out["ok"]:
                report.n_computed += 1
            else:
                report.failures.append((p, out["error"]))
                bar.set_postfix(failed=len(report.failures))
            bar.update(1)

        try:
            if in_process:
                report.backend = "in process"
                while (nxt := next_claimed()) is not None:
                    finish(*nxt, _run_point(nxt[1], tpp, evaluate))
                return report
            try:
                pending = {}
                window = 2 * workers if scheduler is None else 64  # bounded in-flight work
                for _ in range(window):
                    nxt = next_claimed()
                    if nxt is None:
                        break
                    pending[executor.submit(_run_point, nxt[1], tpp, evaluate)] = nxt
                while pending:
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        k, p = pending.pop(fut)
                        try:
                            out = fut.result()
                        except BrokenProcessPool as exc:
                            raise RuntimeError(
                                f"a worker process died abruptly (out of memory, or a crash in compiled code?) "
                                f"while computing point {_canonical(p)}; the {report.n_computed} points finished "
                                f"in this run are saved in {str(db_path)!r}: rerun to resume") from exc
                        finish(k, p, out)
                        nxt = next_claimed()
                        if nxt is not None:
                            pending[executor.submit(_run_point, nxt[1], tpp, evaluate)] = nxt
            finally:
                cleanup()
            return report
        finally:
            bar.close()
    finally:
        try:
            claims.release_all()  # points in flight at an error or Ctrl-C go back to the pool
        finally:
            con.close()
        if "report" in locals():
            report.seconds = time.perf_counter() - t0


def load_points(db_path, keys=None) -> dict:
    """``{key: results}`` of the finished points of a results store (only ``keys``, if given)."""
    con = _connect(db_path)
    try:
        rows = con.execute("SELECT key, results FROM points").fetchall()
    finally:
        con.close()
    wanted = None if keys is None else set(keys)
    return {k: json.loads(r) for k, r in rows if wanted is None or k in wanted}


# --------------------------------------------------------------------------- loading
def _frame(rows, what):
    import pandas as pd

    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=what)


def load_results(db_path, long=False):
    """The results database as a pandas DataFrame: one row per point (``key``, ``method``, every
    parameter, every result, ``seconds``, ``finished_at``).

    With ``long=True`` the per-setting results (``test_error_<setting>``, ``gain_<setting>``,
    ``alignment_<setting>``) are melted into a tidy table with one row per point and setting and
    columns ``setting``, ``test_error``, ``transfer_gain``, ``alignment`` (:func:`to_long`).
    """
    rows, skipped = [], []
    for i, (key, method, params, results, seconds, finished) in enumerate(
            _read_table(db_path, "SELECT key, method, params, results, seconds, finished_at FROM points "
                                 "ORDER BY rowid")):
        try:
            p, r = json.loads(params), json.loads(results)
            if not isinstance(p, dict) or not isinstance(r, dict):
                raise ValueError("params/results are not JSON objects")
        except (TypeError, ValueError) as exc:  # one bad row must not hide every other result
            skipped.append((key, f"{type(exc).__name__}: {exc}"))
            continue
        clash = set(p) & set(r)
        r = {(f"result_{k}" if k in clash else k): v for k, v in r.items()}
        rows.append({"key": key, **p, **r, "method": method, "seconds": seconds, "finished_at": finished})
    df = _frame(rows, ["key", "method", "seconds", "finished_at"])
    _report_skipped(df, skipped, db_path, "points")
    return to_long(df) if long else df


def _read_table(db_path, query):
    """All rows of ``query``; a missing, damaged or foreign file raises a named error with its path."""
    if not Path(db_path).is_file():
        raise ValueError(f"results database {str(db_path)!r} does not exist")
    try:
        con = sqlite3.connect(f"file:{Path(db_path).resolve()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise ResultsDatabaseError(db_path, f"cannot be opened ({exc})") from None
    try:
        return con.execute(query).fetchall()
    except sqlite3.DatabaseError as exc:
        raise ResultsDatabaseError(db_path, f"{type(exc).__name__}: {exc}") from None
    finally:
        con.close()


def _report_skipped(df, skipped, db_path, table):
    df.attrs["skipped_rows"] = skipped
    if skipped:
        keys = ", ".join(k if isinstance(k, str) else repr(k) for k, _ in skipped[:3])
        warnings.warn(f"results database {str(db_path)!r}: skipped {len(skipped)} malformed row(s) of table "
                      f"{table!r} (keys {keys}{', ...' if len(skipped) > 3 else ''}; first problem: "
                      f"{skipped[0][1]}); they are listed in DataFrame.attrs['skipped_rows']",
                      MalformedRowWarning, stacklevel=3)


def to_long(df):
    """Melt ``test_error_<s>``, ``gain_<s>``, ``alignment_<s>`` columns into rows per setting ``s``."""
    import pandas as pd

    per = [c for c in df.columns if c.startswith(("test_error_", "gain_", "alignment_"))]
    settings = [s for s in _SETTINGS if f"test_error_{s}" in df.columns]
    if not settings:
        return df.copy()
    base = df.drop(columns=per)
    parts = []
    for s in settings:
        part = base.copy()
        part["setting"] = s
        part["test_error"] = df[f"test_error_{s}"]
        part["transfer_gain"] = 0.0 if s == "scratch" else df.get(f"gain_{s}")
        part["alignment"] = df[f"alignment_{s}"] if f"alignment_{s}" in df.columns else math.nan
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def load_failures(db_path):
    """Points whose evaluation raised: ``key``, ``method``, parameters, ``error``, ``traceback``."""
    rows, skipped = [], []
    for k, m, p, e, tb, t in _read_table(db_path, "SELECT key, method, params, error, traceback, failed_at "
                                                  "FROM failures ORDER BY rowid"):
        try:
            params = json.loads(p)
            if not isinstance(params, dict):
                raise ValueError("params is not a JSON object")
        except (TypeError, ValueError) as exc:
            skipped.append((k, f"{type(exc).__name__}: {exc}"))
            continue
        rows.append({"key": k, "method": m, **params, "error": e, "traceback": tb, "failed_at": t})
    df = _frame(rows, ["key", "method", "error", "traceback", "failed_at"])
    _report_skipped(df, skipped, db_path, "failures")
    return df
