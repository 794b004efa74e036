"""Sweeps: point identity, evaluators, the resumable SQLite store (SIGKILL), local vs Dask backends."""

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from symtransfer.cli.sweep import load_sweep_config, sweep_cli
from symtransfer.sweep import (
    evaluate_point,
    expand_config,
    load_failures,
    load_results,
    normalise_point,
    point_key,
    run_sweep,
)
from symtransfer.tasks import make_transfer_pair
from symtransfer.theory.linear import LinearTheory

import pandas as pd  # noqa: E402

LINEAR = {"activation": "linear", "dim": 8, "n_source": 24, "n_target": 12, "n_test": 60}


# --------------------------------------------------------------------------- point identity
def test_point_key_is_stable_under_defaults_types_and_order():
    a = normalise_point({"method": "equilibrium", "activation": "linear", "seed": 2})
    b = normalise_point({"seed": np.int64(2), "coupling": 1, "gamma2": np.float64(1.0), "task": "gaussian",
                         "temperature1": 1, "activation": "linear", "method": "equilibrium", "data_seed": 2})
    assert point_key(a) == point_key(b)
    assert len(point_key(a)) == 64
    # any parameter that matters changes the key
    for change in ({"alpha": 0.5}, {"data_seed": 3}, {"coupling": 2.0}, {"n_target": 21}):
        c = normalise_point({"method": "equilibrium", "activation": "linear", "seed": 2, **change})
        assert point_key(c) != point_key(a), change
    # the exact linear theory ignores the network seed, the data seed follows the seed by default
    assert "seed" not in a and a["data_seed"] == 2
    assert a["temperature1"] == 1.0  # equilibrium default T > 0
    sim = normalise_point({"method": "simulation", "seed": 2})
    assert sim["temperature1"] == 0.0 and sim["seed"] == 2 and sim["width"] == 1000


def test_expand_config_grid_seeds_methods_and_dedup():
    fixed = {k: v for k, v in LINEAR.items() if k != "n_target"}
    cfg = {"methods": ["equilibrium", "proportional", "simulation"], "seeds": 3,
           "params": fixed, "grid": {"alpha": [0.0, 0.5], "n_target": [12, 24]},
           "simulation": {"width": 64, "steps": 10}}
    pts = expand_config(cfg)
    by = {m: [p for p in pts if p["method"] == m] for m in cfg["methods"]}
    assert len(by["simulation"]) == 2 * 2 * 3
    assert len(by["equilibrium"]) == 2 * 2 * 3  # data redrawn per seed
    assert len(by["proportional"]) == 2 * 2  # deterministic and data-free: seeds collapse
    assert all(p["width"] == 64 for p in by["simulation"]) and "width" not in by["equilibrium"][0]
    cfg["params"]["data_seed"] = 0
    assert len([p for p in expand_config(cfg) if p["method"] == "equilibrium"]) == 2 * 2


@pytest.mark.parametrize("cfg, pattern", [
    ({"methods": ["equilibrium"], "params": {"alhpa": 0.5}}, r"unknown parameter\(s\) \['alhpa'\]"),
    ({"methods": ["nope"]}, r"unknown method 'nope'"),
    ({"methods": ["no_such_module_xyz:f"]}, r"only with allow_code=True"),
    ({"methods": ["equilibrium"], "params": {"alpha": 0.1}, "grid": {"alpha": [0.2]}}, r"both \[params\] and \[grid\]"),
    ({"methods": ["equilibrium"], "grid": {"alpha": 0.2}}, r"grid entry 'alpha' must be a non-empty list"),
    ({"methods": ["proportional"], "params": {"activation": "relu"}}, r"'proportional' is the D -> infinity"),
    ({"methods": ["equilibrium"], "params": {"gamma1": "big"}}, r"parameter 'gamma1' must be a real number"),
    ({"methods": ["equilibrium"], "extra": 1}, r"unknown keys \['extra'\]"),
    ({"methods": ["equilibrium"], "params": {"task": "file", "path": "/nonexistent/x.npz"}}, r"does not exist"),
])
def test_config_errors(cfg, pattern):
    with pytest.raises(ValueError, match=pattern):
        expand_config(cfg)


def test_custom_method_import_error_named_with_allow_code():
    with pytest.raises(ValueError, match=r"cannot import function 'f' from module 'no_such_module_xyz'"):
        expand_config({"methods": ["no_such_module_xyz:f"]}, allow_code=True)


# --------------------------------------------------------------------------- evaluators
def test_equilibrium_point_matches_linear_theory_by_hand():
    p = normalise_point({"method": "equilibrium", **LINEAR, "alpha": 0.7, "gamma1": 0.8, "gamma2": 1.3,
                         "weight_decay1": 0.5, "weight_decay2": 2.0, "temperature1": 0.7, "temperature2": 1.5,
                         "coupling": 0.4, "noise_target": 0.1, "seed": 5})
    r = evaluate_point(p)
    pair = make_transfer_pair(8, 24, 12, 60, 0.7, noise_target=0.1, seed=5)
    X1, y1, X2, y2 = pair.source.X_train, pair.source.y_train, pair.target.X_train, pair.target.y_train
    Xt, yt = pair.target.X_test, pair.target.y_test_clean
    src = LinearTheory(gamma=0.8, weight_decay=0.5, temperature=0.7).fit(X1, y1)
    hp2 = dict(gamma=1.3, weight_decay=2.0, temperature=1.5)
    scratch = LinearTheory(**hp2).fit(X2, y2).test_error(Xt, yt)
    ft = src.transfer(X2, y2, coupling=math.inf, **hp2).test_error(Xt, yt)
    joint = src.transfer(X2, y2, coupling=0.4, **hp2).test_error(Xt, yt)
    assert r["test_error_scratch"] == pytest.approx(scratch, rel=1e-12)
    assert r["test_error_finetune"] == pytest.approx(ft, rel=1e-12)
    assert r["test_error_joint"] == pytest.approx(joint, rel=1e-12)
    assert r["gain_joint"] == pytest.approx(scratch - joint, rel=1e-10, abs=1e-14)
    assert -1.0 <= r["alignment_joint"] <= 1.0


def test_proportional_point_maps_finite_sizes_to_the_limit():
    from symtransfer.theory.proportional import target_error

    p = normalise_point({"method": "proportional", **LINEAR, "alpha": 0.6, "gamma1": 0.3, "gamma2": 0.2,
                         "coupling": 2.0, "noise_source": 0.2})
    r = evaluate_point(p)
    kw = dict(nu1=3.0, nu2=1.5, alpha=0.6, g1=0.3 * math.sqrt(24), g2=0.2 * math.sqrt(12), weight_decay1=1.0,
              weight_decay2=1.0, temperature1=1.0, temperature2=1.0, sigma1=0.2, sigma2=0.0)
    assert r["test_error_joint"] == target_error("joint", coupling=2.0, **kw)
    assert r["gain_finetune"] == target_error("scratch", **kw) - target_error("finetune", **kw)


def test_digits_and_file_points(tmp_path):
    from symtransfer.datasets import digits_alignment, digits_transfer, save_transfer_npz

    p = normalise_point({"method": "equilibrium", "activation": "linear", "task": "digits", "source": "3v8",
                         "target": [5, 8], "n_source": 60, "n_target": 20, "n_test": 40, "seed": 1})
    assert (p["source"], p["target"]) == ("3-8", "5-8")
    r = evaluate_point(p)
    assert r["task_alignment"] == digits_alignment("3-8", "5-8") and r["n_test_used"] == 40
    d = digits_transfer("3-8", "5-8", n_source=60, n_target=20, n_test=40, seed=1)
    scratch = LinearTheory().fit(d.X2, d.y2).test_error(d.X_test, d.y_test)
    assert r["test_error_scratch"] == pytest.approx(scratch, rel=1e-12)
    # the same data from a user file give the same numbers; editing the file changes the point
    save_transfer_npz(tmp_path / "d.npz", d)
    q = normalise_point({"method": "equilibrium", "activation": "linear", "task": "file", "path": str(tmp_path / "d.npz")})
    assert evaluate_point(q)["test_error_scratch"] == pytest.approx(scratch, rel=1e-12)
    d.y2[0] *= -1
    save_transfer_npz(tmp_path / "d.npz", d)
    q2 = normalise_point({"method": "equilibrium", "activation": "linear", "task": "file", "path": str(tmp_path / "d.npz")})
    assert point_key(q2) != point_key(q)


def test_simulation_point_forwards_settings_to_compare_transfer():
    from symtransfer.experiments import compare_transfer

    p = normalise_point({"method": "simulation", **LINEAR, "alpha": 0.9, "gamma2": 0.5, "weight_decay1": 0.1,
                         "coupling": 3.0, "width": 32, "steps": 50, "seed": 4, "data_seed": 1})
    r = evaluate_point(p)
    pair = make_transfer_pair(8, 24, 12, 60, 0.9, seed=1)
    tab = compare_transfer((pair.source.X_train, pair.source.y_train), (pair.target.X_train, pair.target.y_train),
                           (pair.target.X_test, pair.target.y_test_clean), method="simulation", seeds=[4],
                           settings={"activation": "linear", "couplings": [3.0],
                                     "source": {"gamma": 1.0, "weight_decay": 0.1, "temperature": 0.0},
                                     "target": {"gamma": 0.5, "weight_decay": 1.0, "temperature": 0.0},
                                     "simulation": {"width": 32, "steps": 50}})
    for s in ("scratch", "finetune", "joint"):
        assert r[f"test_error_{s}"] == tab.row(s)["test_error"]
    assert evaluate_point(p) == r  # a pure function of its parameters


# --------------------------------------------------------------------------- interrupted sweeps
_SLOW_MODULE = '''
import os, time

def evaluate(params):
    with open(os.environ["SWEEP_TEST_LOG"], "a") as fh:
        fh.write(f"{os.environ['SWEEP_TEST_RUN']} {params['x']} {params['seed']}\\n")
    time.sleep(params["sleep"])
    if params["x"] == 99:
        raise RuntimeError("point 99 always fails")
    return {"value": params["x"] ** 2 + 10 * params["seed"]}
'''


def _rows(db):
    con = sqlite3.connect(db)
    try:
        return {k: (res, fin) for k, res, fin in con.execute("SELECT key, results, finished_at FROM points")}
    finally:
        con.close()


def test_sigkilled_sweep_resumes_with_every_point_exactly_once(tmp_path, monkeypatch):
    import psutil
    (tmp_path / "slowpoint_sweeptest.py").write_text(_SLOW_MODULE)
    cfg = tmp_path / "sweep.toml"
    cfg.write_text(textwrap.dedent("""
        methods = ["slowpoint_sweeptest:evaluate"]
        seeds = 3
        workers = 2
        [params]
        sleep = 0.2
        [grid]
        x = [0, 1, 2, 3, 4, 5, 6, 7, 99]
    """))
    db = tmp_path / "sweep.db"  # the default: config path with suffix .db
    log = tmp_path / "calls.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
               SWEEP_TEST_LOG=str(log), SWEEP_TEST_RUN="1")
    code = f"from symtransfer.cli.sweep import sweep_cli; sweep_cli({str(cfg)!r}, progress=False, allow_code=True)"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    n_total = 9 * 3
    deadline = time.time() + 60
    n = 0
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                n = len(_rows(db))
            except sqlite3.OperationalError:  # tables not created yet
                n = 0
            if n >= 6:
                break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 2  # the worker processes
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    # orphaned workers notice and exit (they must not keep computing or linger)
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, alive

    first = _rows(db)
    assert 6 <= len(first) < n_total - 3  # killed mid-run (the 3 failing points are never stored)

    # resume (in this process, through the same CLI entry point)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("SWEEP_TEST_LOG", str(log))
    monkeypatch.setenv("SWEEP_TEST_RUN", "2")
    report = sweep_cli(cfg, progress=False, allow_code=True)
    assert report.n_points == n_total and report.n_already_done == len(first)
    assert report.n_computed == n_total - 3 - len(first) and len(report.failures) == 3
    assert all("point 99 always fails" in err for _, err in report.failures)

    con = sqlite3.connect(db)
    n_rows, n_keys = con.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM points").fetchone()
    con.close()
    assert n_rows == n_keys == n_total - 3  # every point exactly once
    final = _rows(db)
    for k, v in first.items():
        assert final[k] == v  # rows from before the kill untouched
    df = load_results(db)
    assert sorted(zip(df.x, df.seed)) == sorted((x, s) for x in range(8) for s in range(3))
    np.testing.assert_array_equal(df.value, df.x**2 + 10 * df.seed)
    assert len(load_failures(db)) == 3
    # the second run evaluated no point that the first one had stored
    done_before = {(x, s) for x, s, k in zip(df.x, df.seed, df.key) if k in first}
    second = {tuple(map(int, ln.split()[1:])) for ln in log.read_text().splitlines() if ln.startswith("2 ")}
    assert not second & done_before
    assert second | done_before == {(x, s) for x in (*range(8), 99) for s in range(3)}

    # a third run has nothing left but the failures, which it retries
    monkeypatch.setenv("SWEEP_TEST_RUN", "3")
    report = run_sweep(load_sweep_config(cfg), db, progress=False, workers=1, allow_code=True)
    assert report.n_already_done == n_total - 3 and report.n_computed == 0 and len(report.failures) == 3


# --------------------------------------------------------------------------- backends
def _results(db):
    df = load_results(db).sort_values("key").reset_index(drop=True)
    return df.drop(columns=["seconds", "finished_at"])


def test_dask_local_cluster_and_local_processes_give_identical_results(tmp_path):
    cfg = {"methods": ["equilibrium", "proportional"], "seeds": 2, "params": dict(LINEAR, gamma1=1.5),
           "grid": {"alpha": [0.0, 0.8]}}
    rl = run_sweep(cfg, tmp_path / "local.db", workers=2, progress=False)
    rd = run_sweep(cfg, tmp_path / "dask.db", workers=2, local_cluster=True, progress=False)
    assert rl.backend.startswith("local") and rd.backend.startswith("dask LocalCluster")
    assert rl.n_computed == rd.n_computed == 2 * 2 + 2 and not rl.failures and not rd.failures
    a, b = _results(tmp_path / "local.db"), _results(tmp_path / "dask.db")
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    # and both equal the point function evaluated here
    for _, row in a.iterrows():
        p = next(q for q in expand_config(cfg) if point_key(q) == row["key"])
        assert evaluate_point(p)["test_error_joint"] == row["test_error_joint"]
    # tidy long form: one row per point and setting; the scratch row has zero gain
    long = load_results(tmp_path / "local.db", long=True)
    assert len(long) == 3 * len(a) and set(long.setting) == {"scratch", "finetune", "joint"}
    assert (long[long.setting == "scratch"].transfer_gain == 0.0).all()
    wide = a.set_index("key")
    for _, row in long[long.setting == "joint"].iterrows():
        assert row.test_error == wide.loc[row.key, "test_error_joint"]


@pytest.mark.slow
def test_dask_and_local_identical_for_stochastic_methods(tmp_path):
    cfg = {"methods": ["simulation", "gradient_flow"], "seeds": 2, "params": dict(LINEAR, activation="relu"),
           "simulation": {"width": 64, "steps": 200}, "gradient_flow": {"population": 200, "t_max": 2.0}}
    from distributed import LocalCluster

    rl = run_sweep(cfg, tmp_path / "local.db", workers=2, progress=False)
    # the scheduler=ADDRESS path, against a cluster started outside the sweep
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster:
        rd = run_sweep(cfg, tmp_path / "dask.db", scheduler=cluster.scheduler_address, progress=False)
    assert rd.backend.startswith("dask scheduler tcp://")
    assert rl.n_computed == rd.n_computed == 2 * 2 and not rl.failures and not rd.failures
    pd.testing.assert_frame_equal(_results(tmp_path / "local.db"), _results(tmp_path / "dask.db"), check_exact=True)


def test_sweep_cli_json_config_and_point_list(tmp_path, capsys):
    cfg = {"methods": "equilibrium", "seeds": [0], "params": dict(LINEAR), "db": "out/results.db", "workers": 1}
    (tmp_path / "out").mkdir()
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    # a list of points runs in the same store; run_sweep with nothing to do starts no workers
    report = run_sweep([dict(LINEAR, method="equilibrium", seed=0)], tmp_path / "out" / "results.db", workers=1,
                       progress=False)
    assert report.n_computed == 1
    report = sweep_cli(tmp_path / "c.json", progress=False)
    assert report.n_already_done == 1 and report.n_computed == 0 and report.backend.startswith("none")
    assert "1 points, 1 already in" in capsys.readouterr().out


# --------------------------------------------------------------------------- a damaged or shared store
from symtransfer.errors import MalformedRowWarning, ResultsDatabaseError  # noqa: E402

_PROP = {"methods": ["proportional"], "params": dict(LINEAR), "grid": {"alpha": [0.0, 0.5, 1.0]}}


def _table_pages(db, table):
    """File offsets of the pages of ``table`` (its root page and the pages it links to)."""
    con = sqlite3.connect(db)
    try:
        page_size = con.execute("PRAGMA page_size").fetchone()[0]
        root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
    finally:
        con.close()
    return page_size, root


def test_garbage_database_is_named_at_resume_and_at_load(tmp_path):
    db = tmp_path / "r.db"
    db.write_bytes(os.urandom(8192))
    with pytest.raises(ResultsDatabaseError, match=r"results database '.*r\.db' is unusable") as info:
        run_sweep(_PROP, db, workers=1, progress=False)
    assert info.value.path == str(db)
    with pytest.raises(ResultsDatabaseError, match=r"r\.db"):
        load_results(db)
    with pytest.raises(ResultsDatabaseError, match=r"r\.db"):
        load_failures(db)


def _stored(db):
    """A finished store of the three points of _PROP (written directly: no worker processes)."""
    from symtransfer.sweep import _connect, _store

    con = _connect(db)
    for i, p in enumerate(expand_config(_PROP)):
        _store(con, point_key(p), p, {"ok": True, "results": {"test_error_joint": 0.1 * (i + 1)}, "seconds": 0.0})
    con.close()


def test_damaged_failures_page_is_detected_not_nothing_to_do(tmp_path):
    db = tmp_path / "r.db"
    _stored(db)
    assert run_sweep(_PROP, db, workers=1, progress=False).backend.startswith("none")
    con = sqlite3.connect(db)
    with con:  # a stored failure, as a failed point leaves it
        con.execute("INSERT INTO failures VALUES ('k', 'proportional', '{}', 'boom', 'tb', 'now')")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    page_size, root = _table_pages(db, "failures")
    raw = bytearray(db.read_bytes())
    off = (root - 1) * page_size
    raw[off:off + page_size] = b"\xff" * page_size  # the failures table's page, overwritten
    db.write_bytes(bytes(raw))
    with pytest.raises(ResultsDatabaseError, match=r"r\.db. is unusable: .*(integrity check failed|malformed)"):
        run_sweep(_PROP, db, workers=1, progress=False)  # every point is done: it used to say "nothing to do"


def test_one_malformed_row_is_skipped_and_reported(tmp_path):
    db = tmp_path / "r.db"
    _stored(db)
    con = sqlite3.connect(db)
    with con:
        con.execute("UPDATE points SET results = '{not json' WHERE rowid = (SELECT MIN(rowid) FROM points)")
        bad_key = con.execute("SELECT key FROM points WHERE results = '{not json'").fetchone()[0]
    con.close()
    with pytest.warns(MalformedRowWarning, match=r"skipped 1 malformed row\(s\) of table 'points'"):
        df = load_results(db)
    assert len(df) == 2 and bad_key not in set(df.key)
    assert [k for k, _ in df.attrs["skipped_rows"]] == [bad_key]
    assert sorted(df.test_error_joint) == pytest.approx([0.2, 0.3])


def test_config_code_needs_an_explicit_opt_in(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "created-by-config"
    cfg = {"methods": ["subprocess:run"], "params": {"args": ["touch", str(marker)]}}
    with pytest.raises(ValueError, match=r"'subprocess:run' names a Python function.*allow_code=True"):
        run_sweep(cfg, tmp_path / "r.db", workers=1, progress=False)
    with pytest.raises(ValueError, match=r"allow_code=True"):
        normalise_point({"method": "os:system"})
    assert not marker.exists() and not (tmp_path / "r.db").exists()


_DRIVER = '''
import json, sys
from symtransfer.sweep import run_sweep
cfg = json.loads(sys.argv[1])
report = run_sweep(cfg, sys.argv[2], workers=1, progress=False, allow_code=True)
print(json.dumps({"computed": report.n_computed, "done": report.n_already_done, "elsewhere": report.n_elsewhere,
                  "failures": len(report.failures)}))
'''


def test_two_concurrent_drivers_compute_each_point_once(tmp_path):
    (tmp_path / "slowpoint_sweeptest.py").write_text(_SLOW_MODULE)
    db, log = tmp_path / "shared.db", tmp_path / "calls.log"
    cfg = {"methods": ["slowpoint_sweeptest:evaluate"], "seeds": 2, "params": {"sleep": 0.15},
           "grid": {"x": list(range(8))}}
    n_total = 16
    procs = []
    for run in ("1", "2"):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
                   SWEEP_TEST_LOG=str(log), SWEEP_TEST_RUN=run)
        procs.append(subprocess.Popen([sys.executable, "-c", _DRIVER, json.dumps(cfg), str(db)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-2000:]
        reports.append(json.loads(out.strip().splitlines()[-1]))
    calls = [ln.split() for ln in log.read_text().splitlines()]
    # every point evaluated exactly once over both drivers
    assert sorted((int(x), int(s)) for _, x, s in calls) == sorted((x, s) for x in range(8) for s in range(2))
    # each report counts what that driver computed, and the rest as done elsewhere
    for run, rep in zip(("1", "2"), reports):
        mine = sum(1 for r, _, _ in calls if r == run)
        assert rep["computed"] == mine and rep["failures"] == 0
        assert rep["done"] + rep["computed"] + rep["elsewhere"] == n_total
    assert reports[0]["computed"] + reports[1]["computed"] == n_total
    con = sqlite3.connect(db)
    assert con.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM points").fetchone() == (n_total, n_total)
    assert con.execute("SELECT COUNT(*) FROM claims").fetchone() == (0,)  # all released
    con.close()


def test_claim_of_a_dead_driver_is_taken_over(tmp_path):
    db = tmp_path / "r.db"
    points = expand_config(_PROP)
    con = sqlite3.connect(db)
    con.close()
    from symtransfer.sweep import _connect

    con = _connect(db)
    import socket

    with con:  # a claim left by a driver killed with SIGKILL (pid that no longer exists)
        con.execute("INSERT INTO claims VALUES (?, 'dead', ?, ?, 'then')",
                    (point_key(points[0]), socket.gethostname(), 2**22 + 12345))
        con.execute("INSERT INTO claims VALUES (?, 'remote', 'another-host', 1, 'then')",
                    (point_key(points[1]),))
    con.close()
    report = run_sweep(_PROP, db, workers=1, progress=False)
    assert report.n_computed == 2 and report.n_elsewhere == 1 and not report.complete
    assert "left to another driver" in str(report)
