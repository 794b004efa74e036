"""Task generators (exact alignment, Hermite teachers) and the command line."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from symtransfer.cli import main
from symtransfer.tasks import HermiteTeacher, make_task, make_transfer_pair


@settings(max_examples=30, deadline=None)
@given(st.floats(-1.0, 1.0), st.integers(2, 60), st.integers(0, 10_000))
def test_transfer_pair_has_exact_alignment(alpha, dim, seed):
    pair = make_transfer_pair(dim, 5, 5, 3, alpha, seed=seed)
    b1, b2 = pair.source.beta, pair.target.beta
    assert b1 @ b1 == pytest.approx(dim) and b2 @ b2 == pytest.approx(dim)
    assert b1 @ b2 / dim == pytest.approx(alpha, abs=1e-12)


def test_hermite_teacher_and_noise():
    teacher = HermiteTeacher({1: 1.0, 2: 0.5, 3: -0.2})
    z = np.linspace(-2, 2, 7)
    assert np.allclose(teacher(z), z + 0.5 * (z**2 - 1) - 0.2 * (z**3 - 3 * z))
    assert teacher.variance == pytest.approx(1 + 2 * 0.25 + 6 * 0.04)
    task = make_task(4000, 4000, 30, teacher={1: 1.0, 2: 0.5}, noise=0.3, seed=1)
    # labels = g(z) + noise: empirical variance of the clean test labels ~ sum_k k! c_k^2
    assert np.var(task.y_test_clean) == pytest.approx(1.5, rel=0.1)
    assert np.var(task.y_test - task.y_test_clean) == pytest.approx(0.09, rel=0.1)
    again = make_task(4000, 4000, 30, teacher={1: 1.0, 2: 0.5}, noise=0.3, seed=1)
    assert np.array_equal(task.X_train, again.X_train) and np.array_equal(task.y_train, again.y_train)


def test_task_bad_input():
    with pytest.raises(ValueError, match="alpha"):
        make_transfer_pair(5, 3, 3, 3, 1.5)
    with pytest.raises(ValueError, match="noise"):
        make_task(3, 3, 3, noise=-1)
    with pytest.raises(ValueError, match="teacher"):
        make_task(3, 3, 3, teacher="cubic")
    with pytest.raises(ValueError, match="beta"):
        make_task(3, 3, 3, beta=np.ones(4))


def test_cli_simulate_writes_json(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        "seed = 1\n[task]\ndim = 6\nn_source = 12\nn_target = 8\nn_test = 20\nalpha = 0.5\n"
        "[network]\nwidth = 32\nactivation = 'tanh'\nlr = 0.02\nsteps = 200\n"
        "[[transfer]]\nname = 'ft'\nreadout_only = true\n[[transfer]]\nname = 'joint'\ncoupling = 2.0\n"
    )
    out = tmp_path / "r.json"
    assert main(["simulate", "--config", str(cfg), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [t["name"] for t in res["transfer"]] == ["ft", "joint"]
    src_hist = res["source"]["history"]
    assert src_hist["train_loss"][-1] < src_hist["train_loss"][0]  # T = 0 gradient descent learns
    for t in res["transfer"]:
        assert math.isfinite(t["test_error"]) and t["test_error"] == pytest.approx(t["history"]["test_loss"][-1])


def test_cli_simulate_runs_the_protocol(tmp_path, capsys):
    """The command trains what symtransfer.protocol trains: scratch is a fresh network (seed + 7919),
    fine-tuning and joint are the source's transfer (the numbers of a direct WideNetwork.transfer)."""
    from symtransfer.protocol import scratch_seed
    from symtransfer.sim import WideNetwork

    cfg = tmp_path / "run.toml"
    cfg.write_text(
        "seed = 2\n[task]\ndim = 5\nn_source = 10\nn_target = 6\nn_test = 15\nalpha = 0.7\n"
        "[network]\nwidth = 16\nactivation = 'linear'\nlr = 0.02\nsteps = 60\n"
        "[[transfer]]\nname = 's'\nsetting = 'scratch'\ngamma = 0.5\n"
        "[[transfer]]\nname = 'f'\nsetting = 'finetune'\n"
        "[[transfer]]\nname = 'j'\ncoupling = 0.5\nsteps = 30\n"
    )
    out = tmp_path / "r.json"
    assert main(["simulate", "--config", str(cfg), "--out", str(out)]) == 0
    rows = {t["name"]: t for t in json.loads(out.read_text())["transfer"]}
    assert [(r["setting"], r["coupling"], r["readout_only"]) for r in rows.values()] == [
        ("scratch", None, False), ("finetune", None, True), ("joint", 0.5, False)]
    pair = make_transfer_pair(5, 10, 6, 15, 0.7, seed=2)
    net = dict(width=16, activation="linear", lr=0.02, steps=60, progress=False)
    src = WideNetwork(seed=2, **net).fit(pair.source.X_train, pair.source.y_train)
    X2, y2, Xt, yt = pair.target.X_train, pair.target.y_train, pair.target.X_test, pair.target.y_test_clean

    def err(m):
        return float(np.mean((m.predict(Xt) - yt) ** 2))

    scratch = WideNetwork(seed=scratch_seed(2), **{**net, "gamma": 0.5}).fit(X2, y2)
    assert rows["s"]["test_error"] == pytest.approx(err(scratch), rel=1e-12)
    assert rows["f"]["test_error"] == pytest.approx(err(src.transfer(X2, y2, readout_only=True)), rel=1e-12)
    assert rows["j"]["test_error"] == pytest.approx(err(src.transfer(X2, y2, coupling=0.5, steps=30)), rel=1e-12)
    for text, pattern in (("setting = 'scratch'\ncoupling = 1.0\n", "takes no coupling"),
                          ("setting = 'finetune'\ncoupling = 1.0\n", "coupling = inf"),
                          ("setting = 'joint'\n", "needs coupling"), ("setting = 'lazy'\n", "setting must be")):
        cfg.write_text("[network]\nwidth = 8\n[[transfer]]\n" + text)
        assert main(["simulate", "--config", str(cfg)]) == 2
        assert pattern in capsys.readouterr().err


def test_cli_reports_bad_config(tmp_path, capsys):
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps({"network": {"width": 0}}))
    assert main(["simulate", "--config", str(cfg)]) == 2
    assert "width" in capsys.readouterr().err
    cfg.write_text(json.dumps({"network": {"widht": 3}}))
    assert main(["simulate", "--config", str(cfg)]) == 2
    assert "unknown keys" in capsys.readouterr().err
    cfg.write_text("{not json")
    assert main(["simulate", "--config", str(cfg)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_demo_rows_agree_with_theory():
    from symtransfer.demo import run_demo

    rows = run_demo(width=128, steps=2000, dim=10, n_source=30, n_target=10, n_test=100)
    names = [r.setting for r in rows]
    assert names == ["source", "scratch", "finetune", "joint"]
    for r in rows:
        # width-128 finite-size effects: relative gap of test errors well under 25%
        assert abs(r.simulation_error - r.theory_error) < 0.25 * r.theory_error + 0.01
    assert rows[1].theory_gain == 0.0


def test_demo_text_defines_its_columns_and_states_the_width(monkeypatch):
    import symtransfer.demo as demo

    rows = [demo.DemoRow("source", math.nan, 0.1, 0.11, 0.01),
            demo.DemoRow("scratch", 0.0, 0.3, 0.31, 0.02, 0.0, 0.0),
            demo.DemoRow("source", math.nan, 0.06, 0.061, 0.018, activation="tanh")]
    seen = {}

    def fake(**kw):
        seen.update(kw)
        return rows

    monkeypatch.setattr(demo, "run_demo", fake)
    from symtransfer.cli.demo import main_demo

    text = main_demo(fast=True)
    assert seen["nonlinear"] and seen["width"] == 128
    assert "width N = 128" in text and "E_g = test error" in text and "rms(f_sim-f_th) = root-mean-square" in text
    assert "|f_sim-f_th|" not in text
    table = text.split("\n\n")[1].splitlines()
    assert table[0].split()[:3] == ["phi", "setting", "delta"] and table[-1].split()[:2] == ["tanh", "source"]


@pytest.mark.slow
def test_demo_nonlinear_row_agrees_with_adaptive_kernel():
    from symtransfer.demo import run_demo

    rows = run_demo(width=256, steps=3000, nonlinear=True, n_samples=4096)
    r = rows[-1]
    assert r.activation == "tanh" and r.setting == "source"
    # width 256 and 4096 Monte Carlo samples: a few percent each (measured 0.1 % at N = 128)
    assert abs(r.simulation_error - r.theory_error) < 0.2 * r.theory_error + 0.005
