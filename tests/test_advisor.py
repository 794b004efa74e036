"""The transfer advisor (symtransfer.advisor, report, advise_cli): known answers on synthetic pairs,
theory against simulated networks, digits, the HTML report in a real browser, bad input."""

import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from symtransfer.advisor import _linear_flow, _min_norm_source, advise
from symtransfer.tasks import make_transfer_pair

D = 10


def _pair(alpha, *, n_source=20, n_target=6, n_test=120, noise_source=0.0, seed=0):
    p = make_transfer_pair(dim=D, n_source=n_source, n_target=n_target, n_test=n_test, alpha=alpha,
                           noise_source=noise_source, seed=seed)
    s, t = p.source, p.target
    return s.X_train, s.y_train, t.X_train, t.y_train, t.X_test, t.y_test


def _advise(data, **kw):
    X1, y1, X2, y2, Xt, yt = data
    kw.setdefault("activation", "linear")
    kw.setdefault("progress", False)
    return advise(X1, y1, X2, y2, X_test=Xt, y_test=yt, **kw)


@pytest.fixture(scope="module")
def aligned():
    return _advise(_pair(1.0))


# ------------------------------------------------------------------------------ exactness
@settings(max_examples=6)
@given(P=st.integers(3, 14), g=st.floats(0.1, 3.0), seed=st.integers(0, 100))
def test_exact_flow_converges_to_the_closed_form_source_kernel(P, g, seed):
    """The (D+1)^2 second-moment flow (7.1) run to its stationary point is I + chi u u^T along the
    min-norm fit (eqs. (7.3), (7.5)), for under- and over-determined data."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((P, 6))
    y = rng.standard_normal(P)
    (w,), M = _linear_flow(X, y, np.eye(7), g, [math.inf])
    S, chi = _min_norm_source(X, y, g)
    assert np.allclose(M[1:, 1:], S, atol=1e-6 * (1 + chi))
    w_mn = np.linalg.lstsq(X / math.sqrt(6), y, rcond=None)[0]
    assert np.allclose(w, w_mn, atol=1e-6 * (1 + np.linalg.norm(w_mn)))
    # a^2 - |w|^2 is conserved: E[a^2] - tr Sigma_w = 1 - 6
    assert M[0, 0] - np.trace(M[1:, 1:]) == pytest.approx(-5.0, abs=1e-6)


def test_row_space_flow_equals_the_full_moment_flow():
    """The (rank X + 1)^2 propagator of _linear_flow against the plain (D+1)^2 moment equation
    dM/dt = gamma (A M + M A) from a non-isotropic start (a jointly rich target), also at finite t."""
    from scipy.integrate import solve_ivp

    X1, y1, X2, y2, Xt, yt = _pair(0.8)
    S1, _ = _min_norm_source(X1, y1, 1.5)
    M0 = np.zeros((D + 1, D + 1))
    M0[0, 0] = 1.0
    M0[1:, 1:] = S1
    g = 0.7

    def rhs(_t, m):
        M = m.reshape(D + 1, D + 1)
        v = X2.T @ (y2 - X2 @ (M[0, 1:] / g) / math.sqrt(D)) / math.sqrt(D)
        AM = np.empty_like(M)
        AM[0] = v @ M[1:]
        AM[1:] = np.outer(v, M[0])
        return (g * (AM + AM.T)).ravel()

    (w_t, w_inf), M_end = _linear_flow(X2, y2, M0, g, [0.7, math.inf])
    ref_t = solve_ivp(rhs, (0, 0.7), M0.ravel(), method="LSODA", rtol=1e-11, atol=1e-13).y[:, -1]
    ref = solve_ivp(rhs, (0, 3000), M0.ravel(), method="LSODA", rtol=1e-11, atol=1e-13).y[:, -1]
    assert np.allclose(w_t, ref_t.reshape(D + 1, D + 1)[0, 1:] / g, atol=1e-7)
    assert np.allclose(w_inf, ref.reshape(D + 1, D + 1)[0, 1:] / g, atol=1e-6)
    assert np.allclose(M_end, ref.reshape(D + 1, D + 1), atol=1e-5 * np.abs(ref).max())


def test_joint_flow_from_weak_source_is_scratch():
    """gamma1 -> 0 leaves the source weights at their isotropic initialisation: every transfer
    protocol then predicts like scratch (the min-norm fit)."""
    adv = _advise(_pair(1.0), gammas=[1e-6], gammas2=[1.0])
    for r in adv.rows:
        assert r["error"] == pytest.approx(adv.scratch["error"], rel=1e-5)


# ------------------------------------------------------------------------------ known answers
def test_aligned_pair_recommends_transfer(aligned):
    assert aligned.best["protocol"] in ("readout", "joint", "lazy")
    assert aligned.best["gain"] > 2 * aligned.best["gain_stderr"]
    assert aligned.best["gain"] > 0.5 * aligned.scratch["error"]
    assert "predicted to help" in aligned.verdict
    assert abs(aligned.alignment) > 0.8
    # every row has an error bar and a cost
    df = aligned.to_frame()
    assert len(df) == len(aligned.rows) == len(aligned.cost)
    assert np.all(np.isfinite(df["error"])) and np.all(df["stderr"] > 0) and np.all(df["seconds"] >= 0)
    # stronger source features help an aligned target monotonically (readout, eq. (7.8))
    ro = sorted((r for r in aligned.rows if r["protocol"] == "readout"), key=lambda r: r["gamma1"])
    assert all(a["error"] > b["error"] for a, b in zip(ro, ro[1:]))


def test_orthogonal_pair_does_not_recommend_fine_tuning():
    adv = _advise(_pair(0.0))
    assert adv.best["protocol"] in ("scratch", "joint")
    assert "help" not in adv.verdict.split(".")[0]
    ro = min((r for r in adv.rows if r["protocol"] == "readout"), key=lambda r: r["error"])
    assert ro["gain"] < 2 * ro["gain_stderr"]


def test_noisy_source_does_not_recommend_fine_tuning():
    """Source labels dominated by noise: the source spike points along the noise direction."""
    adv = _advise(_pair(1.0, noise_source=5.0))
    assert adv.best["protocol"] in ("scratch", "joint")
    clean = _advise(_pair(1.0))
    best_noisy = min(r["error"] for r in adv.rows if r["protocol"] == "readout")
    best_clean = min(r["error"] for r in clean.rows if r["protocol"] == "readout")
    assert best_noisy > 3 * best_clean


def test_equilibrium_linear_is_linear_theory():
    from symtransfer.theory.linear import LinearTheory

    X1, y1, X2, y2, Xt, yt = data = _pair(0.9)
    g = 0.5
    adv = _advise(data, dynamics="equilibrium", gammas=[g], couplings=[1.0], weight_decay=0.5, temperature=0.5)
    src = LinearTheory(gamma=g, weight_decay=0.5, temperature=0.5).fit(X1, y1)
    for r in adv.rows:
        if r["protocol"] in ("readout", "joint", "scratch"):
            d = {"readout": math.inf, "joint": 1.0, "scratch": 0.0}[r["protocol"]]
            ref = src.transfer(X2, y2, gamma=g, weight_decay=0.5, temperature=0.5, coupling=d).test_error(Xt, yt)
            assert r["error"] == pytest.approx(ref, rel=1e-10)
    assert adv.best["protocol"] != "scratch"


def test_cross_validation_without_test_set():
    X1, y1, X2, y2, _, _ = _pair(1.0, n_target=8)
    adv = advise(X1, y1, X2, y2, activation="linear", n_splits=4, progress=False, gammas=[0.8], gammas2=[0.8])
    assert adv.params["evaluation"] == "4-fold cross-validation" and adv.params["n_eval"] == 8
    assert len(adv.scratch["sq_errors"]) == 8
    assert adv.best["protocol"] != "scratch"


def test_finite_pretraining_and_target_times():
    """Finite t1, t2 through the exact flow: t2 -> large reaches the converged row; t1 -> 0 is
    the random initialisation (transfer = scratch)."""
    data = _pair(1.0)
    adv = _advise(data, gammas=[0.8], gammas2=[0.8], pretrain_times=[1e-9, 2000.0, math.inf],
                  target_times=[0.05, 3000.0, math.inf])
    rows = {(r["protocol"], r["pretrain_time"], r["target_time"]): r["error"] for r in adv.rows}
    sc = adv.scratch["error"]
    assert rows[("readout", 1e-9, math.inf)] == pytest.approx(rows[("scratch", None, math.inf)], rel=1e-6)
    assert rows[("readout", 2000.0, math.inf)] == pytest.approx(rows[("readout", math.inf, math.inf)], rel=1e-4)
    assert rows[("joint", math.inf, 3000.0)] == pytest.approx(rows[("joint", math.inf, math.inf)], rel=1e-4)
    assert rows[("joint", math.inf, 0.05)] != pytest.approx(rows[("joint", math.inf, math.inf)], rel=1e-3)
    assert sc <= rows[("scratch", None, 0.05)] + 1.0


# ------------------------------------------------------------------------------ theory vs simulation
def _check_verification(adv, rel):
    v = adv.verification
    assert v["agree"], adv.verification_table()
    assert v["verdict_agrees"]
    for row in v["rows"]:
        if math.isfinite(row["simulated"]):
            # within the stated bars, and (tighter) within the finite-width tolerance
            assert abs(row["simulated"] - row["theory"]) <= 2 * math.hypot(row["theory_stderr"],
                                                                        row["simulated_stderr"])
            assert abs(row["simulated"] - row["theory"]) <= rel * row["theory"] + 3 * row["simulated_stderr"]


def test_verification_aligned_linear():
    """Width-400 linear networks (gradient flow) against the exact theory: the readout error
    (~0.01) to 25% + 3 s.e. (width fluctuations sqrt(D/N) ~ 0.13 of the spike), scratch likewise."""
    adv = _advise(_pair(1.0), gammas=[2.5], gammas2=[2.5], protocols=("scratch", "readout"), verify=True,
                  verify_width=400, verify_steps=800, verify_seeds=2)
    assert adv.best["protocol"] == "readout"
    _check_verification(adv, 0.25)


@pytest.mark.slow
@pytest.mark.parametrize("alpha,noise", [(1.0, 0.0), (0.0, 0.0), (1.0, 5.0)])
def test_verification_synthetic_pairs_slow(alpha, noise):
    adv = _advise(_pair(alpha, noise_source=noise), verify=True, verify_width=2000, verify_steps=3000,
                  verify_seeds=3)
    _check_verification(adv, 0.2)


@pytest.mark.slow
def test_verification_equilibrium_linear_slow():
    """Langevin networks (T = lambda = 1, time-averaged predictor) against LinearTheory."""
    adv = _advise(_pair(1.0), dynamics="equilibrium", gammas=[0.5], couplings=[1.0],
                  protocols=("scratch", "readout", "joint"), verify=True, verify_width=1000, verify_steps=6000,
                  verify_seeds=2)
    _check_verification(adv, 0.3)


@pytest.mark.slow
def test_verification_relu_gradient_flow_slow():
    """A small nonlinear case: ReLU, the DMFT population against width-2000 networks."""
    adv = _advise(_pair(1.0, n_target=8), activation="relu", gammas=[0.6], gammas2=[0.6], population=400,
                  n_seeds=2, protocols=("scratch", "readout", "joint"), verify=True, verify_width=2000,
                  verify_steps=3000, verify_seeds=2)
    assert adv.best["protocol"] != "scratch"
    _check_verification(adv, 0.3)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["5-8", "0-1"])
def test_digits_verdict_agrees_with_simulation_slow(target):
    from symtransfer.datasets import digits_transfer

    d = digits_transfer("3-8", target, n_source=120, n_target=20, n_test=100, seed=0)
    adv = advise(d.X1, d.y1, d.X2, d.y2, X_test=d.X_test, y_test=d.y_test, activation="linear", progress=False,
                 gammas2=[8 / math.sqrt(d.dim)], verify=True, verify_width=1000, verify_steps=3000, verify_seeds=2)
    assert adv.verification["simulated_gain"] is not None  # scratch and a transfer row were simulated
    assert adv.verification["verdict_agrees"], (adv.verdict, adv.verification_table())
    assert adv.verification["agree"], adv.verification_table()


# ------------------------------------------------------------------------------ store, report, CLI
def test_store_resumes(tmp_path):
    data = _pair(1.0)
    kw = dict(gammas=[0.8], gammas2=[0.8], store=tmp_path / "advice.sqlite")
    first = _advise(data, **kw)
    again = _advise(data, **kw)
    assert first.params["tasks_reused"] == 0 and again.params["tasks_reused"] == 2
    assert [r["error"] for r in again.rows] == pytest.approx([r["error"] for r in first.rows], rel=1e-12)
    direct = _advise(data, gammas=[0.8], gammas2=[0.8])
    assert [r["error"] for r in direct.rows] == pytest.approx([r["error"] for r in first.rows], rel=1e-10)


def test_report_files(aligned, tmp_path):
    path = aligned.to_html(tmp_path / "advice.html")
    text = path.read_text()
    assert aligned.verdict.split(":")[0] in text and "data:image/png;base64," in text
    assert "http" not in text.replace("http-equiv", "")  # self-contained
    assert (tmp_path / "advice-curves.png").stat().st_size > 10_000
    assert (tmp_path / "advice-curves.pdf").read_bytes()[:4] == b"%PDF"
    with pytest.raises(ValueError, match="report path"):
        aligned.to_html(tmp_path / "missing" / "a.html")


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_report_in_headless_browser(aligned, tmp_path):
    import html as _html

    import matplotlib.image as mpimg

    path = aligned.to_html(tmp_path / "advice.html", figures=False)
    shot = tmp_path / "shot.png"
    base = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    subprocess.run(base + [f"--screenshot={shot}", "--window-size=1400,1000", path.as_uri()], check=True,
                   capture_output=True, timeout=120)
    dom = subprocess.run(base + ["--dump-dom", path.as_uri()], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    assert 'id="verdict"' in dom and _html.escape(aligned.verdict) in dom
    assert 'id="fig-curves"' in dom
    img = mpimg.imread(shot)[..., :3]
    assert img.shape[:2] == (1000, 1400)
    # the figure: pixels of the readout curve (tab:blue) and the jointly rich one (tab:red) on screen
    blue = np.all(np.abs(img - np.array([31, 119, 180]) / 255) < 0.08, axis=-1)
    red = np.all(np.abs(img - np.array([214, 39, 40]) / 255) < 0.08, axis=-1)
    assert blue.sum() > 300 and red.sum() > 300
    rows = np.flatnonzero(blue.any(axis=1))
    region = img[rows.min():rows.max() + 1]
    assert (region.std(axis=(0, 1)) > 0.05).all()  # not blank
    # the verdict box (its background #fdf3f3) sits above the figure
    box = np.all(np.abs(img - np.array([0xFD, 0xF3, 0xF3]) / 255) < 0.01, axis=-1)
    assert box[: rows.min()].sum() > 5000


def _files(tmp_path, data):
    X1, y1, X2, y2, Xt, yt = data
    for name, X, y in (("src", X1, y1), ("tgt", X2, y2), ("test", Xt, yt)):
        np.savez(tmp_path / f"{name}.npz", X=X, y=y)
    return [str(tmp_path / f"{n}.npz") for n in ("src", "tgt", "test")]


def test_cli_run(tmp_path, capsys):
    from symtransfer.advise_cli import main

    src, tgt, test = _files(tmp_path, _pair(1.0))
    out = tmp_path / "r.html"
    code = main(["--source", src, "--target", tgt, "--test", test, "--activation", "linear", "--fast", "--quiet",
                 "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "verdict: Pretraining is predicted to help" in captured.out and "cost[s]" in captured.out
    assert out.exists() and (tmp_path / "r-curves.png").exists() and (tmp_path / "r-curves.pdf").exists()


def test_cli_subparser_and_errors(tmp_path, capsys):
    import argparse

    from symtransfer import advise_cli

    parser = argparse.ArgumentParser(prog="symtransfer")
    advise_cli.add_parser(parser.add_subparsers(dest="command"))
    src, tgt, _ = _files(tmp_path, _pair(1.0))
    args = parser.parse_args(["advise", "--source", src, "--target", str(tmp_path / "nope.npz")])
    assert advise_cli.run(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("symtransfer advise: error:") and "nope.npz" in err[0]
    args = parser.parse_args(["advise", "--source", src, "--target", tgt, "--out", str(tmp_path / "x" / "r.html")])
    assert advise_cli.run(args) == 2
    assert "--out" in capsys.readouterr().err
    np.savez(tmp_path / "bad.npz", X=np.ones((5, 3)), y=np.arange(5.0))
    args = parser.parse_args(["advise", "--source", src, "--target", str(tmp_path / "bad.npz"), "--quiet"])
    assert advise_cli.run(args) == 2
    assert "X2 has 3 features" in capsys.readouterr().err


def test_cli_module_entry_point(tmp_path):
    src, tgt, test = _files(tmp_path, _pair(0.0))
    proc = subprocess.run([sys.executable, "-m", "symtransfer.advise_cli", "--source", src, "--target", tgt,
                           "--test", test, "--activation", "linear", "--fast", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "recommendation: training from scratch" in proc.stdout


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("change,match", [
    (lambda d: {**d, "X2": d["X2"][:, :-1]}, "X2 has 9 features"),
    (lambda d: {**d, "y1": np.where(np.arange(len(d["y1"])) == 0, np.nan, d["y1"])}, "y1 contains non-finite"),
    (lambda d: {**d, "X2": np.where(d["X2"] > 1e9, 0, d["X2"]) * np.inf}, "X2 contains non-finite"),
    (lambda d: {**d, "y2": np.ones(len(d["y2"]))}, "y2 is constant"),
    (lambda d: {**d, "y2": d["y2"][:-1]}, "y2 has length"),
    (lambda d: {**d, "X2": d["X2"][:3], "y2": d["y2"][:3], "X_test": None, "y_test": None}, "X2 has 3 target points"),
    (lambda d: {**d, "y_test": None}, "X_test and y_test"),
    (lambda d: {**d, "dynamics": "sgd"}, "dynamics must be one of"),
    (lambda d: {**d, "protocols": ("scratch", "distill")}, "protocols must be a subset"),
    (lambda d: {**d, "gammas": [0.5, -1.0]}, "gammas entry must be > 0"),
    (lambda d: {**d, "n_splits": 1}, "n_splits must be >= 2"),
])
def test_bad_input_is_a_named_error(change, match):
    X1, y1, X2, y2, Xt, yt = _pair(1.0)
    d = change(dict(X1=X1, y1=y1, X2=X2, y2=y2, X_test=Xt, y_test=yt))
    with pytest.raises(ValueError, match=match):
        advise(progress=False, gammas=d.pop("gammas", [0.5]), **d)


def test_superlinear_equilibrium_is_refused_before_computing():
    from symtransfer.errors import NoSaddlePointError

    X1, y1, X2, y2, Xt, yt = _pair(1.0)
    with pytest.raises(NoSaddlePointError, match="gradient_flow"):
        advise(X1, y1, X2, y2, X_test=Xt, y_test=yt, activation="x**2", dynamics="equilibrium", progress=False)


@pytest.mark.slow
def test_store_through_dask_backend_slow(tmp_path):
    pytest.importorskip("distributed")
    data = _pair(1.0)
    via = _advise(data, gammas=[0.8], gammas2=[0.8], store=tmp_path / "a.sqlite", backend="dask", workers=1)
    direct = _advise(data, gammas=[0.8], gammas2=[0.8])
    assert [r["error"] for r in via.rows] == pytest.approx([r["error"] for r in direct.rows], rel=1e-10)


def test_a_setting_that_does_not_solve_costs_that_setting_only(monkeypatch):
    """A theory failure (a ConvergenceError, e.g. an equilibrium saddle point at too strong feature
    learning) leaves the other rows, is listed in ``failures`` and named in the verdict; without any
    scratch row the advice itself fails with a named error."""
    import symtransfer.advisor as A
    from symtransfer.errors import ConvergenceError

    real = A._run_task

    def flaky(task, data, cfg):
        if task["kind"] == "source":
            raise ConvergenceError("injected failure")
        return real(task, data, cfg)

    data = _pair(1.0)
    ok = _advise(data, gammas=[0.8], gammas2=[0.8])
    monkeypatch.setattr(A, "_run_task", flaky)
    adv = _advise(data, gammas=[0.8], gammas2=[0.8])
    assert adv.failures and all("injected failure" in m for _, m in adv.failures)
    assert "did not solve" in adv.verdict
    assert {r["protocol"] for r in adv.rows} < {r["protocol"] for r in ok.rows}
    monkeypatch.setattr(A, "_run_task", lambda *a: (_ for _ in ()).throw(ConvergenceError("always")))
    with pytest.raises(ConvergenceError, match="scratch baseline"):
        _advise(data, gammas=[0.8], gammas2=[0.8])
