"""Every command: a bad config or an unwritable output is one ``symtransfer <cmd>: error:`` line and
exit 2, before any computation starts (timed: under a second); failures inside a run too."""

from __future__ import annotations

import json
import re
import time

import pytest

import symtransfer.experiments  # noqa: F401 - imported up front: the timing is of the checks, not of imports
import symtransfer.figures  # noqa: F401
import symtransfer.sim  # noqa: F401
import symtransfer.symbolic  # noqa: F401
import symtransfer.theory.proportional  # noqa: F401
from symtransfer import sweep
from symtransfer.cli import build_parser, main

_SIM = "seed = 0\n[task]\ndim = 4\nn_source = 6\nn_target = 4\nn_test = 5\nalpha = 0.5\n[network]\nwidth = 8\nsteps = 5\n"
_CMP = ('method = "equilibrium"\n[task]\ndim = 4\nn_source = 6\nn_target = 4\nn_test = 5\nalpha = 0.5\n'
        '[settings]\nactivation = "linear"\n')
_SWEEP = 'methods = ["proportional"]\n[params]\nactivation = "linear"\n'


def _fails_fast(capsys, argv, pattern, limit=1.0):
    capsys.readouterr()
    t0 = time.perf_counter()
    code = main(argv)
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(err) == 1, err
    assert err[0].startswith(f"symtransfer {argv[0]}: error: "), err
    assert re.search(pattern, err[0]), err[0]
    assert elapsed < limit, f"{elapsed:.2f} s before the error"
    return err[0]


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


# --------------------------------------------------------------------------- simulate
@pytest.mark.parametrize("text, pattern", [
    (_SIM.replace("dim = 4", "dimm = 4"), r"unknown keys in config section 'task': \['dimm'\]"),
    ("transfer = 5\n" + _SIM, r"'transfer' must be a table or a list of tables"),
    (_SIM.replace("width = 8", "width = 0"), r"width must be >= 1"),
    (_SIM.replace("alpha = 0.5", "alpha = 2.0"), r"alpha must be <= 1"),
    (_SIM + "[[transfer]]\nname = 'j'\n", r"transfer\[0\] needs coupling"),
    (_SIM + "[[transfer]]\ncoupling = 1.0\nsteps = -3\n", r"transfer\[0\]: steps must be >= 1"),
    (_SIM.replace("[task]", "seed = 'x'\n[task]").replace("seed = 0\n", ""), r"seed must be an integer"),
])
def test_simulate_bad_config(tmp_path, capsys, text, pattern):
    _fails_fast(capsys, ["simulate", "--config", _write(tmp_path, "c.toml", text)], pattern)


def test_simulate_output_in_missing_folder_fails_before_training(tmp_path, capsys):
    out = tmp_path / "missing" / "r.json"
    _fails_fast(capsys, ["simulate", "--config", _write(tmp_path, "c.toml", _SIM), "--out", str(out)],
                r"--out .*folder .*missing' does not exist")


def test_simulate_diverging_run_is_one_line(tmp_path, capsys):
    text = _SIM.replace("steps = 5", "steps = 5\nlr = 50.0")
    _fails_fast(capsys, ["simulate", "--config", _write(tmp_path, "c.toml", text)],
                r"StepTooLargeError: lr=50 exceeds the stability bound", limit=60.0)


# --------------------------------------------------------------------------- compare
@pytest.mark.parametrize("text, pattern", [
    (_CMP.replace("dim = 4", "dimm = 4"), r"\[task\] has unknown keys \['dimm'\]"),
    (_CMP + "[settings.equilibrium]\nn_sampels = 5\n", r"settings\['equilibrium'\] has unknown keys \['n_sampels'\]"),
    (_CMP.replace('"equilibrium"', '"simulation"') + "[settings.simulation]\nwidht = 5\n",
     r"settings\['simulation'\] has unknown keys \['widht'\]"),
    (_CMP + "[settings.source]\ngama = 1\n", r"settings\['source'\] has unknown keys \['gama'\]"),
    (_CMP.replace('method = "equilibrium"', 'method = "equilibrium"\nseeds = 3.5'), r"seeds entry must be an integer"),
    (_CMP.replace('method = "equilibrium"', 'method = 5'), r"method must be one of"),
    (_CMP.split("[task]")[0] + '[data]\npath = "nope.npz"\n' + "[settings]\nactivation = 'linear'\n",
     r"data file .*nope.npz' does not exist"),
])
def test_compare_bad_config(tmp_path, capsys, text, pattern):
    _fails_fast(capsys, ["compare", "--config", _write(tmp_path, "c.toml", text)], pattern)


def test_compare_output_in_missing_folder(tmp_path, capsys):
    _fails_fast(capsys, ["compare", "--config", _write(tmp_path, "c.toml", _CMP), "--out",
                         str(tmp_path / "no" / "t.csv")], r"--out .*does not exist")


def test_convergence_error_inside_a_command_is_one_line(tmp_path, capsys, monkeypatch):
    from symtransfer.errors import ConvergenceError

    def fail(*args, **kwargs):
        raise ConvergenceError("solver stalled\nacross lines", residuals=[1.0, 0.5])

    monkeypatch.setattr(symtransfer.experiments, "compare_transfer", fail)
    line = _fails_fast(capsys, ["compare", "--config", _write(tmp_path, "c.toml", _CMP)],
                       r"ConvergenceError: solver stalled across lines \(last residuals: 1, 0.5\)")
    assert "Traceback" not in line


def test_unexpected_error_is_one_line_with_exit_3(tmp_path, capsys, monkeypatch):
    def bug(*args, **kwargs):
        raise KeyError("oops")

    monkeypatch.setattr(symtransfer.experiments, "compare_transfer", bug)
    assert main(["compare", "--config", _write(tmp_path, "c.toml", _CMP)]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unexpected KeyError" in err[0] and "SYMTRANSFER_DEBUG" in err[0]


# --------------------------------------------------------------------------- phase-diagram
@pytest.mark.parametrize("text, out, pattern", [
    ("n = 3\n", "missing/pd.png", r"--out .*does not exist"),
    ("n = 3\n", "pd.txt", r"--out must end in .png, .pdf or .svg"),
    ('n = 3\narrays = "no/a.npz"\n', "pd.png", r"arrays .*does not exist"),
    ("n = 3\nbogus = 1\n", "pd.png", r"unknown config keys \['bogus'\]"),
    ("n = 3\n[params]\nT1 = 1e300\n", "pd.png", r"T1 must lie in"),
    ("n = 3\n[params]\ntemperature1 = 1e300\n", "pd.png", r"error: temperature1 must lie in"),
    ('n = 3\n[params]\ncoupling = "lots"\n', "pd.png", r"params.coupling must be a number"),
])
def test_phase_diagram_bad_config_or_output(tmp_path, capsys, text, out, pattern):
    _fails_fast(capsys, ["phase-diagram", "--config", _write(tmp_path, "c.toml", text), "--out",
                         str(tmp_path / out)], pattern)
    assert not (tmp_path / out).exists()


# --------------------------------------------------------------------------- sweep
@pytest.mark.parametrize("top, params, pattern", [
    ("methods = 5\n", "", r"'methods' must be a method name or a list"),
    ('methods = ["proportional"]\nseeds = 3.5\n', "", r"'seeds' must be a count"),
    ('methods = ["proportional"]\nparams = [1, 2]\n', None, r"\[params\] must be a table"),
    ('methods = ["proportional"]\n', "dim = 0\n", r"parameter 'dim' must be >= 2"),
    ('methods = ["proportional"]\n', "gamma1 = -1\n", r"parameter 'gamma1' must be >= 0"),
    ('methods = ["equilibrium"]\n', "gamma1 = -1\n", r"parameter 'gamma1' must be > 0"),
    ('methods = ["proportional"]\n', "alpha = 1.5\n", r"parameter 'alpha' must be <= 1"),
    ('methods = ["subprocess:run"]\n', None, r"only with allow_code=True \(command line: --allow-code\)"),
    ('methods = ["proportional"]\ndb = "missing/r.db"\n', "", r"results database .*missing/r.db.* does not exist"),
])
def test_sweep_bad_config(tmp_path, capsys, top, params, pattern):
    text = top if params is None else top + '[params]\nactivation = "linear"\n' + params
    _fails_fast(capsys, ["sweep", "--config", _write(tmp_path, "s.toml", text)], pattern)
    assert not list(tmp_path.glob("*.db"))


def test_sweep_corrupted_database_named_at_resume(tmp_path, capsys):
    db = tmp_path / "s.db"
    db.write_bytes(b"this is not an sqlite file" * 100)
    line = _fails_fast(capsys, ["sweep", "--config", _write(tmp_path, "s.toml", _SWEEP), "--db", str(db)],
                       r"ResultsDatabaseError: results database '.*s\.db' is unusable")
    assert str(db) in line


def test_sweep_unreachable_scheduler_fails_fast(tmp_path, capsys, monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.setattr(sweep, "SCHEDULER_TIMEOUT", 1.0)
    _fails_fast(capsys, ["sweep", "--config", _write(tmp_path, "s.toml", _SWEEP), "--scheduler",
                         "tcp://127.0.0.1:9"], r"cannot reach the Dask scheduler at 'tcp://127.0.0.1:9' within 1 s",
                limit=10.0)


# --------------------------------------------------------------------------- experiment and derive
def test_experiment_bad_outputs(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("")
    _fails_fast(capsys, ["experiment", "phase-diagram", "--fast", "--out", str(f)], r"exists and is not a folder")
    _fails_fast(capsys, ["experiment", "phase-diagram", "--fast", "--out", str(tmp_path / "o"), "--db",
                         str(tmp_path / "no" / "x.sqlite")], r"database .*does not exist")
    _fails_fast(capsys, ["experiment", "nope", "--fast"], r"unknown experiment 'nope'")
    _fails_fast(capsys, ["experiment", "phase-diagram", "--fast", "--threads", "0"], r"--threads must be >= 1")


def test_experiment_default_folder_outside_the_checkout(tmp_path, monkeypatch):
    from symtransfer.figures import default_out

    assert default_out(cwd=tmp_path) == tmp_path / "symtransfer-figures"
    assert default_out(fast=True, cwd=tmp_path) == tmp_path / "symtransfer-figures-fast"
    (tmp_path / "docs" / "figures").mkdir(parents=True)
    (tmp_path / "docs" / "figures" / "README.md").write_text("x")
    assert default_out(cwd=tmp_path) == tmp_path / "symtransfer-figures"  # someone else's docs/figures
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "symtransfer"\n')
    assert default_out(cwd=tmp_path) == tmp_path / "docs" / "figures"


def test_derive_latex_in_missing_folder(tmp_path, capsys):
    _fails_fast(capsys, ["derive", "--activation", "tanh", "--setting", "single", "--latex",
                         str(tmp_path / "no" / "d.tex")], r"--latex .*does not exist")


# --------------------------------------------------------------------------- --help lists every key
def _help(cmd):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[cmd]
    return sub.format_help()


def test_every_config_key_is_in_the_help():
    from symtransfer import cli, experiments
    from symtransfer.cli import compare
    from symtransfer.theory import proportional

    text = _help("simulate")
    for k in cli._TASK_KEYS | cli._NET_KEYS | cli._TRANSFER_KEYS | {"seed"}:
        assert k in text, k
    text = _help("compare")
    for k in (*compare._TASK_KEYS, "method", "seeds", "settings", "data", "path", "activation", "couplings",
              "source", "target", *experiments.METHODS, "gamma", "weight_decay", "temperature"):
        assert k in text, k
    text = _help("phase-diagram")
    for k in ("setting", "x", "y", "n", "x_values", "y_values", "x_grid", "y_grid", "params", "arrays", "title",
              "xscale", "yscale", *proportional.PARAMETERS):
        assert k in text, k
    text = _help("sweep")
    allowed = set(sweep._COMMON) | {k for t in sweep._TASKS.values() for k in t} | {
        k for t in sweep._METHOD_OPTIONS.values() for k in t}
    for k in sweep._CONFIG_KEYS | allowed | set(sweep.EVALUATORS):
        assert k in text, k
    assert "--allow-code" in text


def test_config_errors_from_json_too(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"methods": ["proportional"], "seeds": "many"}))
    _fails_fast(capsys, ["sweep", "--config", str(cfg)], r"'seeds' must be a count")
