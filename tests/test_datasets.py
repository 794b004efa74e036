"""Digits transfer tasks, the measured task alignment, and user data files (symtransfer.datasets)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from symtransfer.datasets import (
    DIGITS_PAIRS,
    digits_alignment,
    digits_pair,
    digits_transfer,
    load_task,
    load_transfer_data,
    save_transfer_npz,
    task_alignment,
    transfer_data,
)
from symtransfer.tasks import make_transfer_pair



# --------------------------------------------------------------------------- digits
def test_digits_standardised_over_the_whole_set():
    # the five pairs 0-1, 2-3, ..., 8-9 partition the 1797 images
    X = np.vstack([digits_pair((2 * k, 2 * k + 1))[0] for k in range(5)])
    assert X.shape == (1797, 61)  # 3 always-blank pixels dropped
    np.testing.assert_allclose(X.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(X.std(axis=0), 1.0, rtol=1e-12)
    # hence K(x, x) = |x|^2/D averages exactly 1, the convention of the synthetic tasks
    assert np.mean(np.sum(X**2, axis=1) / X.shape[1]) == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("target", DIGITS_PAIRS["targets"])
def test_digits_transfer_balanced_disjoint_splits(target):
    d = digits_transfer("3-8", target, n_source=120, n_target=30 * 2, n_test=40, seed=3)
    for y, n in ((d.y1, 120), (d.y2, 60), (d.y_test, 40)):
        assert set(np.unique(y)) == {-1.0, 1.0}
        assert len(y) == n and np.sum(y == 1.0) == n // 2  # exactly balanced
    idx = d.info["indices"]
    allidx = np.concatenate([idx["source"], idx["target"], idx["test"]])
    assert len(np.unique(allidx)) == len(allidx)  # no image in two splits (8 is shared by 3-8 and 5-8)
    # labels follow the pair convention: first digit +1
    from sklearn.datasets import load_digits

    lab = load_digits().target
    np.testing.assert_array_equal(d.y2, np.where(lab[idx["target"]] == target[0], 1.0, -1.0))
    # reproducible, and a different seed draws different images
    d2 = digits_transfer("3-8", target, n_source=120, n_target=60, n_test=40, seed=3)
    np.testing.assert_array_equal(d.X2, d2.X2)
    d3 = digits_transfer("3-8", target, n_source=120, n_target=60, n_test=40, seed=4)
    assert not np.array_equal(np.sort(idx["target"]), np.sort(d3.info["indices"]["target"]))


def test_digits_default_test_set_uses_all_remaining_images():
    d = digits_transfer("3-8", "5-8", n_source=200, n_target=40)
    # 174 eights: 100 to the source, 20 to the target, 54 left -> 2 x 54 test points
    assert len(d.y_test) == 108


def test_digits_bad_arguments():
    with pytest.raises(ValueError, match="n_target must be even"):
        digits_transfer("3-8", "5-8", n_target=41)
    with pytest.raises(ValueError, match="not enough images of digit 8"):
        digits_transfer("3-8", "5-8", n_source=300, n_target=100)
    with pytest.raises(ValueError, match="two different digits"):
        digits_transfer("3-3", "5-8")
    with pytest.raises(ValueError, match="same digit pair"):
        digits_transfer("3-8", "8-3")
    with pytest.raises(ValueError, match="source must be two digits"):
        digits_transfer("three-8", "5-8")


def test_digits_measured_alignments_span_related_to_unrelated():
    # Measured values (cross-fitted source ridge predictor vs target labels, ridge 1, 5 folds), as
    # documented in docs/sweeps.md; deterministic given scikit-learn's bundled data.
    expected = {(5, 8): 0.727, (3, 5): 0.472, (0, 1): 0.504, (5, 9): -0.035}
    got = {t: digits_alignment("3-8", t) for t in DIGITS_PAIRS["targets"]}
    for t, v in expected.items():
        assert got[t] == pytest.approx(v, abs=1e-3)
    # what we find: sharing a digit (8) is the most aligned; 0-vs-1 is *not* unrelated to 3-vs-8
    # in pixel space (about as aligned as 3-vs-5); 5-vs-9 is the unrelated one (|A| < 0.05)
    assert abs(got[(5, 8)]) > max(abs(got[(3, 5)]), abs(got[(0, 1)])) + 0.2
    assert min(abs(got[(3, 5)]), abs(got[(0, 1)])) > abs(got[(5, 9)]) + 0.4
    assert digits_transfer("3-8", "5-9", n_source=100, n_target=20).alignment == got[(5, 9)]


# --------------------------------------------------------------------------- alignment
def test_alignment_recovers_teacher_cosine_for_large_samples():
    # noiseless linear teachers on isotropic inputs, P >> D: f1 -> beta1.x/sqrt(D), so A -> alpha
    for alpha in (0.0, 0.6, -0.9):
        pair = make_transfer_pair(20, 4000, 4000, 1, alpha, seed=1)
        A = task_alignment(pair.source.X_train, pair.source.y_train, pair.target.X_train, pair.target.y_train,
                           ridge=1e-3)
        # sampling error of a cosine over 4000 points ~ 1/sqrt(4000) = 0.016
        assert A == pytest.approx(alpha, abs=0.05)


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(0.1, 10.0), seed=st.integers(0, 10**6), folds=st.sampled_from([None, 2, 4]))
def test_alignment_invariances(scale, seed, folds):
    rng = np.random.default_rng(seed)
    X1, X2 = rng.standard_normal((30, 5)), rng.standard_normal((25, 5))
    y1, y2 = rng.standard_normal(30), rng.standard_normal(25)
    A = task_alignment(X1, y1, X2, y2, folds=folds)
    assert -1.0 <= A <= 1.0
    # swapping target labels flips the sign; rescaling either task changes nothing
    assert task_alignment(X1, y1, X2, -y2, folds=folds) == pytest.approx(-A, abs=1e-12)
    assert task_alignment(X1, scale * y1, X2, y2, folds=folds) == pytest.approx(A, abs=1e-10)
    assert task_alignment(X1, y1, X2, scale * y2, folds=folds) == pytest.approx(A, abs=1e-10)


def test_alignment_of_a_task_with_itself_is_high():
    X, y = digits_pair("3-8")
    assert task_alignment(X, y, X, y, folds=None) > 0.9  # in-sample ridge fit of a separable pair
    assert 0.8 < task_alignment(X, y, X, y, folds=5) < task_alignment(X, y, X, y, folds=None)


# --------------------------------------------------------------------------- user files
def _arrays(seed=0, D=4):
    rng = np.random.default_rng(seed)
    return {"X1": rng.standard_normal((12, D)), "y1": rng.standard_normal(12), "X2": rng.standard_normal((8, D)),
            "y2": rng.standard_normal(8), "X_test": rng.standard_normal((5, D)), "y_test": rng.standard_normal(5)}


def _write_csv(path, a, header=None, comment=True):
    D = a["X1"].shape[1]
    lines = ["# a comment line"] if comment else []
    lines.append(",".join(header or (["split", "y"] + [f"x{j}" for j in range(D)])))
    for split, X, y in (("source", a["X1"], a["y1"]), ("target", a["X2"], a["y2"]), ("test", a["X_test"], a["y_test"])):
        for xi, yi in zip(X, y):
            lines.append(",".join([split, repr(float(yi))] + [repr(float(v)) for v in xi]))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_npz_and_csv_round_trip(tmp_path):
    a = _arrays()
    np.savez(tmp_path / "d.npz", **a)
    _write_csv(tmp_path / "d.csv", a)
    for f in ("d.npz", "d.csv"):
        d = load_transfer_data(tmp_path / f)
        for k in a:
            np.testing.assert_array_equal(getattr(d, k), a[k])
        assert d.alignment == pytest.approx(task_alignment(a["X1"], a["y1"], a["X2"], a["y2"]), abs=1e-15)
    d = load_transfer_data(tmp_path / "d.npz")
    save_transfer_npz(tmp_path / "e.npz", d)
    np.testing.assert_array_equal(load_transfer_data(tmp_path / "e.npz").X_test, a["X_test"])
    # single task files
    np.savez(tmp_path / "t.npz", X=a["X1"], y=a["y1"])
    X, y = load_task(tmp_path / "t.npz")
    np.testing.assert_array_equal(X, a["X1"])
    (tmp_path / "t.csv").write_text("y,u,v\n1,2,3\n-1,5,6\n")
    X, y = load_task(tmp_path / "t.csv")
    np.testing.assert_array_equal(X, [[2, 3], [5, 6]])
    np.testing.assert_array_equal(y, [1, -1])


def test_standardise_uses_training_statistics(tmp_path):
    a = _arrays(1)
    a["X1"][:, 0] = 3.0  # a constant feature stays at zero instead of dividing by zero
    a["X2"][:, 0] = 3.0
    d = transfer_data((a["X1"], a["y1"]), (a["X2"], a["y2"]), (a["X_test"], a["y_test"]), standardise=True)
    train = np.vstack([d.X1, d.X2])
    np.testing.assert_allclose(train.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(train[:, 1:].std(axis=0), 1.0, rtol=1e-12)
    assert np.all(train[:, 0] == 0.0)
    raw = np.vstack([a["X1"], a["X2"]])
    np.testing.assert_allclose(d.X_test[:, 1:], (a["X_test"][:, 1:] - raw[:, 1:].mean(0)) / raw[:, 1:].std(0))


@pytest.mark.parametrize("mutate, pattern", [
    (lambda a: a.pop("y2"), r"d\.npz.*lacks key\(s\) \['y2'\]"),
    (lambda a: a.update(X1=a["X1"][:, 0]), r"d\.npz.*key 'X1': must be 2-D"),
    (lambda a: a.update(y1=np.ones((12, 2))), r"d\.npz.*key 'y1': must be 1-D"),
    (lambda a: a["X2"].__setitem__((3, 1), np.nan), r"d\.npz.*key 'X2': non-finite value at index \(3, 1\)"),
    (lambda a: a.update(y2=np.ones(7)), r"d\.npz.*target y has length 7 but X has 8 rows"),
    (lambda a: a.update(X_test=np.ones((5, 3))), r"d\.npz.*test X has 3 features but 4 were expected"),
    (lambda a: a.update(y_test=np.array(["a"] * 5)), r"d\.npz.*key 'y_test': must hold numbers"),
])
def test_malformed_npz_errors_name_file_and_key(tmp_path, mutate, pattern):
    a = _arrays()
    mutate(a)
    np.savez(tmp_path / "d.npz", **a)
    with pytest.raises(ValueError, match=pattern):
        load_transfer_data(tmp_path / "d.npz")


def test_unreadable_files(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match=r"bad\.npz.*not a readable \.npz"):
        load_transfer_data(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match=r"missing\.csv.*does not exist"):
        load_transfer_data(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match=r"unknown extension '\.json'"):
        load_transfer_data(tmp_path / "x.json")
    np.save(tmp_path / "single.npy", np.ones(3))
    (tmp_path / "single.npy").rename(tmp_path / "single.npz")
    with pytest.raises(ValueError, match=r"single\.npz.*single array"):
        load_transfer_data(tmp_path / "single.npz")


def test_malformed_csv_errors_name_file_line_and_column(tmp_path):
    a = _arrays()
    good = _write_csv(tmp_path / "d.csv", a).read_text().splitlines()
    # line 1 is a comment, 2 the header, 3.. the data: line numbers are those of the file

    def write(lines):
        (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
        return tmp_path / "d.csv"

    bad = list(good)
    bad[5] = bad[5].replace(bad[5].split(",")[3], "abc")
    with pytest.raises(ValueError, match=r"d\.csv.*line 6, column 'x1': not a number: 'abc'"):
        load_transfer_data(write(bad))
    bad = list(good)
    bad[7] = bad[7] + ",1.0"
    with pytest.raises(ValueError, match=r"d\.csv.*line 8: 7 fields but the header has 6"):
        load_transfer_data(write(bad))
    bad = list(good)
    bad[9] = "train" + bad[9][len("source"):]
    with pytest.raises(ValueError, match=r"d\.csv.*line 10: split must be one of source, target, test, got 'train'"):
        load_transfer_data(write(bad))
    bad = list(good)
    bad[3] = bad[3].replace(bad[3].split(",")[2], "inf")
    with pytest.raises(ValueError, match=r"line 4, column 'x0': non-finite value 'inf'"):
        load_transfer_data(write(bad))
    with pytest.raises(ValueError, match=r"header: needs a column named 'y'"):
        load_transfer_data(write([good[1].replace(",y,", ",target_value,")] + good[2:]))
    with pytest.raises(ValueError, match=r"no lines with split \['test'\]"):
        load_transfer_data(write([ln for ln in good if not ln.startswith("test")]))
    with pytest.raises(ValueError, match=r"needs a 'split' column"):
        load_transfer_data(write(["y,a", "1,2"]))
    with pytest.raises(ValueError, match=r"d\.csv.*is empty"):
        load_transfer_data(write(["# only a comment"]))
    with pytest.raises(ValueError, match=r"header but no data lines"):
        load_transfer_data(write([good[1]]))
    with pytest.raises(ValueError, match=r"duplicate column names \['x0'\]"):
        load_transfer_data(write(["split,y,x0,x0", "source,1,2,3"]))
    with pytest.raises(ValueError, match=r"no feature columns"):
        load_transfer_data(write(["split,y", "source,1"]))
    with pytest.raises(ValueError, match=r"single-task file must not have a 'split'"):
        load_task(write(good))
