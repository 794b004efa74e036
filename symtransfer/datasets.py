"""Real and user-supplied data for transfer experiments (docs/sweeps.md, "Data").

* :func:`digits_pair` / :func:`digits_transfer`: scikit-learn's bundled ``load_digits`` images (no
  download) turned into balanced ``+-1`` regression tasks on digit pairs, standardised with statistics
  of the whole digits set so that every pair lives in the same input space.
* :func:`task_alignment`: a measured source-to-target alignment, the real-data counterpart of the
  teacher cosine ``alpha`` of the synthetic tasks (definition in its docstring and docs/sweeps.md).
* :func:`load_transfer_data`, :func:`load_task`, :func:`transfer_data`: user data from arrays,
  ``.npz`` or CSV files with the layout documented in docs/sweeps.md; malformed files raise
  ``ValueError`` naming the file, the key or line, and what is wrong.
"""

from __future__ import annotations

import collections
import csv
import math
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from ._validation import check_int, check_real, check_Xy

__all__ = [
    "TransferData",
    "DIGITS_PAIRS",
    "digits_pair",
    "digits_transfer",
    "digits_alignment",
    "task_alignment",
    "transfer_data",
    "load_transfer_data",
    "load_task",
    "save_transfer_npz",
    "parse_pair",
]

# Source 3-vs-8 and targets from related (shared class 8, similar shapes) to unrelated; the measured
# alignments are in docs/sweeps.md.
DIGITS_PAIRS = {"source": (3, 8), "targets": ((5, 8), (3, 5), (0, 1), (5, 9))}

_SPLITS = ("source", "target", "test")
_NPZ_TRANSFER_KEYS = ("X1", "y1", "X2", "y2", "X_test", "y_test")


@dataclass
class TransferData:
    """Source training set, target training set and target test set on one input space.

    Attributes
    ----------
    X1, y1 : source training inputs (P1, D) and targets (P1,)
    X2, y2 : target training inputs (P2, D) and targets (P2,)
    X_test, y_test : target test inputs and targets
    alignment : float or None
        Source-to-target alignment (:func:`task_alignment`); for digits it is measured on all images
        of both pairs, for user data on the training sets.
    info : dict
        Provenance (file name, digit pairs, sizes, seed; for digits also ``indices``: the rows of
        ``sklearn.datasets.load_digits()`` in each split).
    """

    X1: np.ndarray
    y1: np.ndarray
    X2: np.ndarray
    y2: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    alignment: float | None = None
    info: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return self.X1.shape[1]

    def as_tuples(self):
        """``((X1, y1), (X2, y2), (X_test, y_test))``, the arguments of ``compare_transfer``."""
        return (self.X1, self.y1), (self.X2, self.y2), (self.X_test, self.y_test)


# --------------------------------------------------------------------------- alignment
def _ridge_direction(X, y, ridge):
    n, D = X.shape
    return np.linalg.solve(X.T @ X / n + ridge * np.eye(D), X.T @ y / n)


def _cosine(a, b, what):
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0.0 or nb == 0.0:
        raise ValueError(f"task alignment is undefined: {what} is identically zero")
    return float(a @ b / (na * nb))


def task_alignment(X1, y1, X2, y2, *, ridge=1.0, folds=None, seed=0) -> float:
    """Measured alignment of a target task with a source task.

    ``A_12 = cos(y2, f1(X2)) = y2.f1(X2) / (|y2| |f1(X2)|)``, where ``f1(x) = x.b1`` is the ridge
    regression of the source, ``b1 = (X1^T X1/P1 + ridge I)^-1 X1^T y1/P1``. Its square is the
    kernel-task alignment of docs/theory.md section 5 of the target labels with the rank-one kernel
    ``f1(x) f1(x')``, which is the feature the linear equilibrium theory adds to the source kernel
    (the ``g g^T`` term of eq. 2.11, ``g = K(x, X1) v1`` being a ridge predictor of the source).
    ``A_12`` is in ``[-1, 1]``; its sign follows the label convention (a target with swapped labels has
    ``-A_12``) and is irrelevant for transfer through features, so compare ``|A_12|``. For synthetic
    linear teachers on isotropic inputs with ``P1 >> D`` it tends to ``alpha`` times the fraction of
    target variance explained by its teacher.

    Parameters
    ----------
    X1, y1, X2, y2 : arrays
        Source and target sets on the same features.
    ridge : float, > 0
        Ridge of the source regression, on the scale of the per-sample covariance ``X^T X/P``
        (for standardised features its eigenvalues average 1).
    folds : int >= 2, optional
        Cross-fitting: when the two sets share inputs (e.g. digit pairs with a common class), fit
        ``f1`` on all but one fold of the source and evaluate it on the held-out fold of the target
        (folds drawn with ``seed`` over the union of distinct inputs), so that no image is scored by
        a predictor trained on it; ``None`` fits on all of ``X1`` and scores all of ``X2``.
    seed : int

    Returns
    -------
    float
    """
    X1, y1 = check_Xy(X1, y1, "X1", "y1")
    X2, y2 = check_Xy(X2, y2, "X2", "y2", n_features=X1.shape[1])
    ridge = check_real("ridge", ridge, low=0.0, low_open=True)
    if folds is None:
        return _cosine(X2 @ _ridge_direction(X1, y1, ridge), y2, "the source predictor on X2 or y2")
    folds = check_int("folds", folds, low=2)
    rng = np.random.default_rng(np.random.SeedSequence([check_int("seed", seed, low=0), 31]))
    # identical inputs get the same fold, wherever they appear
    allX = np.vstack([X1, X2])
    _, inverse = np.unique(allX, axis=0, return_inverse=True)
    fold_of = rng.integers(0, folds, size=inverse.max() + 1)[inverse.reshape(-1)]
    f1, f2 = fold_of[: len(X1)], fold_of[len(X1):]
    pred = np.empty(len(X2))
    for k in range(folds):
        train = f1 != k
        if train.sum() < 2:
            raise ValueError(f"folds={folds} leaves fewer than 2 source points to fit a fold")
        sel = f2 == k
        pred[sel] = X2[sel] @ _ridge_direction(X1[train], y1[train], ridge)
    return _cosine(pred, y2, "the cross-fitted source predictor on X2 or y2")


# --------------------------------------------------------------------------- digits
@lru_cache(maxsize=1)
def _digits_standardised():
    """All 1797 digits images, features standardised over the whole set; constant pixels dropped.

    Standardising with whole-set statistics (not per pair) keeps every pair in the same input
    space, which transfer needs. Dropping the 3 always-blank pixels leaves ``D = 61`` features, each of
    mean 0 and variance 1 over the set, so ``K(x, x) = |x|^2/D`` averages 1 as in the synthetic tasks.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the digits data need scikit-learn (pip install scikit-learn)") from exc
    d = load_digits()
    X = np.asarray(d.data, dtype=np.float64)
    labels = np.asarray(d.target, dtype=np.int64)
    mu, sd = X.mean(axis=0), X.std(axis=0)
    keep = sd > 0
    Z = (X[:, keep] - mu[keep]) / sd[keep]
    Z.setflags(write=False)
    labels.setflags(write=False)
    return Z, labels


def parse_pair(spec, name="pair") -> tuple[int, int]:
    """A digit pair from ``"3-8"``, ``"3v8"``, ``"3vs8"``, ``(3, 8)`` or ``[3, 8]``."""
    if isinstance(spec, str):
        s = spec.lower().replace("vs", "-").replace("v", "-").replace(",", "-").replace(" ", "")
        parts = [p for p in s.split("-") if p]
    elif isinstance(spec, (tuple, list)):
        parts = list(spec)
    else:
        parts = []
    try:
        a, b = (int(p) for p in parts)
        if isinstance(spec, (tuple, list)) and any(isinstance(p, bool) or float(p) != int(p) for p in spec):
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be two digits like '3-8' or (3, 8), got {spec!r}") from None
    if not (0 <= a <= 9 and 0 <= b <= 9) or a == b:
        raise ValueError(f"{name} must be two different digits in 0..9, got {spec!r}")
    return a, b


def digits_pair(pair, *, pool=None):
    """All images of a digit pair as a ``+-1`` regression task (first digit ``+1``).

    Parameters
    ----------
    pair : str or (int, int)
        E.g. ``"3-8"``: digit 3 is labelled ``+1``, digit 8 ``-1``.

    Returns
    -------
    X : ndarray (n, 61)
        Standardised images (whole-set statistics, constant pixels dropped).
    y : ndarray (n,)
        ``+1`` / ``-1`` labels. All images are returned, so the classes are only nearly balanced
        (174-183 images per digit); :func:`digits_transfer` draws exactly balanced subsets.
    """
    a, b = parse_pair(pair)
    Z, labels = _digits_standardised()
    idx = np.flatnonzero((labels == a) | (labels == b)) if pool is None else pool
    return Z[idx].copy(), np.where(labels[idx] == a, 1.0, -1.0)


def _balanced_count(n, name):
    n = check_int(name, n, low=2)
    if n % 2:
        raise ValueError(f"{name} must be even (balanced +-1 labels: n/2 images of each digit), got {n}")
    return n // 2


def digits_transfer(source="3-8", target="5-8", *, n_source=200, n_target=40, n_test=None, seed=0,
                    ridge=1.0, folds=5) -> TransferData:
    """A digits transfer problem: source pair, target pair, disjoint balanced splits.

    The source training set, target training set and target test set use disjoint images (a digit
    shared by the two pairs, like 8 in 3-8 / 5-8, is split between them), each with exactly half
    of its points labelled ``+1`` (first digit of the pair) and half ``-1``.

    Parameters
    ----------
    source, target : str or (int, int)
        Digit pairs, e.g. ``"3-8"``.
    n_source, n_target : int, even
        Training-set sizes.
    n_test : int, even, optional
        Target test-set size; default: every remaining target image, balanced.
    seed : int
        Seeds which images go to which split.
    ridge, folds : see :func:`task_alignment`
        The reported ``alignment`` is measured on *all* images of both pairs (cross-fitted), so it
        is a property of the pair of tasks, not of the split.

    Returns
    -------
    TransferData
    """
    sa, sb = parse_pair(source, "source")
    ta, tb = parse_pair(target, "target")
    if {sa, sb} == {ta, tb}:
        raise ValueError(f"source {source!r} and target {target!r} are the same digit pair")
    h1 = _balanced_count(n_source, "n_source")
    h2 = _balanced_count(n_target, "n_target")
    seed = check_int("seed", seed, low=0)
    Z, labels = _digits_standardised()
    rng = np.random.default_rng(np.random.SeedSequence([seed, 41]))
    avail = {d: list(rng.permutation(np.flatnonzero(labels == d))) for d in {sa, sb, ta, tb}}

    def take(d, k, what):
        if len(avail[d]) < k:
            raise ValueError(f"not enough images of digit {d} for the {what} (asked {k} per digit, "
                             f"{len(avail[d])} left): lower n_source/n_target/n_test")
        out, avail[d] = avail[d][:k], avail[d][k:]
        return out

    i1 = take(sa, h1, "source set") + take(sb, h1, "source set")
    i2 = take(ta, h2, "target training set") + take(tb, h2, "target training set")
    if n_test is None:
        h3 = min(len(avail[ta]), len(avail[tb]))
        if h3 < 1:
            raise ValueError("no target images left for the test set: lower n_source/n_target")
    else:
        h3 = _balanced_count(n_test, "n_test")
    it = take(ta, h3, "test set") + take(tb, h3, "test set")

    def task(idx, a):
        idx = np.asarray(rng.permutation(idx))
        return Z[idx].copy(), np.where(labels[idx] == a, 1.0, -1.0), idx

    X1, y1, idx1 = task(i1, sa)
    X2, y2, idx2 = task(i2, ta)
    Xt, yt, idxt = task(it, ta)
    align = digits_alignment(source, target, ridge=ridge, folds=folds)
    info = {"data": "digits", "source": f"{sa}-{sb}", "target": f"{ta}-{tb}", "n_source": len(y1),
            "n_target": len(y2), "n_test": len(yt), "seed": seed, "dim": Z.shape[1],
            "indices": {"source": idx1, "target": idx2, "test": idxt}}
    return TransferData(X1, y1, X2, y2, Xt, yt, align, info)


@lru_cache(maxsize=256)
def _digits_alignment_cached(source, target, ridge, folds):
    X1, y1 = digits_pair(source)
    X2, y2 = digits_pair(target)
    return task_alignment(X1, y1, X2, y2, ridge=ridge, folds=folds, seed=0)


def digits_alignment(source, target, *, ridge=1.0, folds=5) -> float:
    """:func:`task_alignment` of target pair with source pair over all their images (cross-fitted)."""
    return _digits_alignment_cached(parse_pair(source, "source"), parse_pair(target, "target"),
                                    float(check_real("ridge", ridge, low=0.0, low_open=True)),
                                    None if folds is None else check_int("folds", folds, low=2))


# --------------------------------------------------------------------------- user data
def _standardise(data: TransferData) -> TransferData:
    train = np.vstack([data.X1, data.X2])
    mu, sd = train.mean(axis=0), train.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)  # a constant feature stays (centred) at zero

    def z(X):
        return (X - mu) / sd

    return TransferData(z(data.X1), data.y1, z(data.X2), data.y2, z(data.X_test), data.y_test, None,
                        dict(data.info, standardised=True))


def transfer_data(source, target, test, *, standardise=False, alignment=True, where="arrays") -> TransferData:
    """Validate ``(X, y)`` pairs into :class:`TransferData`.

    Parameters
    ----------
    source, target, test : tuple (X, y)
        2-D float inputs with the same number of columns and 1-D finite targets.
    standardise : bool
        Centre and scale every feature with the mean and standard deviation of the training inputs
        (source and target together); applied identically to the test inputs.
    alignment : bool
        Compute :func:`task_alignment` of the target with the source on the training sets.
    """
    sets = []
    for name, pair in zip(_SPLITS, (source, target, test)):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ValueError(f"{where}: {name} must be a tuple (X, y)")
        try:
            sets.append(check_Xy(pair[0], pair[1], f"{name} X", f"{name} y",
                                 n_features=None if not sets else sets[0][0].shape[1]))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    data = TransferData(*sets[0], *sets[1], *sets[2], None, {"data": where})
    if standardise:
        data = _standardise(data)
    if alignment:
        try:
            data.alignment = task_alignment(data.X1, data.y1, data.X2, data.y2)
        except ValueError:
            data.alignment = math.nan
    return data


def save_transfer_npz(path, data: TransferData) -> None:
    """Write :class:`TransferData` in the ``.npz`` layout read by :func:`load_transfer_data`."""
    np.savez(path, X1=data.X1, y1=data.y1, X2=data.X2, y2=data.y2, X_test=data.X_test, y_test=data.y_test)


def _load_npz(path: Path, keys):
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"data file {str(path)!r} is a folder, not an .npz archive")
    try:
        z = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"data file {str(path)!r} does not exist") from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        # numpy takes bytes that are neither zip nor .npy for a pickle, refused with a ValueError
        raise ValueError(f"data file {str(path)!r} is not a readable .npz archive ({exc})") from None
    if not hasattr(z, "files"):
        raise ValueError(f"data file {str(path)!r} holds a single array, not an .npz archive with keys "
                         f"{', '.join(keys)}")
    with z:
        missing = [k for k in keys if k not in z.files]
        if missing:
            raise ValueError(f"data file {str(path)!r} lacks key(s) {missing}; it has {sorted(z.files)}, "
                             f"the layout needs {', '.join(keys)}")
        out = {}
        for k in keys:
            try:
                arr = z[k]
            except ValueError as exc:  # object arrays need pickle, which is refused
                raise ValueError(f"data file {str(path)!r}, key {k!r}: cannot be read without pickle "
                                 f"(object array?): store float arrays") from exc
            if arr.dtype.kind not in "biuf":
                raise ValueError(f"data file {str(path)!r}, key {k!r}: must hold numbers, got dtype {arr.dtype}")
            want = 2 if k.startswith("X") else 1
            if arr.ndim != want and not (want == 1 and arr.ndim == 2 and arr.shape[1] == 1):
                shape = "(n_samples, n_features)" if want == 2 else "(n_samples,)"
                raise ValueError(f"data file {str(path)!r}, key {k!r}: must be {want}-D of shape {shape}, got "
                                 f"shape {arr.shape}")
            if not np.all(np.isfinite(arr)):
                bad = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
                raise ValueError(f"data file {str(path)!r}, key {k!r}: non-finite value at index {bad}")
            out[k] = np.asarray(arr, dtype=np.float64)
    return out


def _read_csv(path: Path):
    """Header + numeric rows of a CSV file, with a per-line error on anything malformed."""
    if path.is_dir():
        raise ValueError(f"data file {str(path)!r} is a folder, not a CSV file")
    try:
        # utf-8-sig: a byte-order mark (spreadsheet exports) is not part of the first column's name
        fh = open(path, newline="", encoding="utf-8-sig")
    except FileNotFoundError:
        raise ValueError(f"data file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise ValueError(f"data file {str(path)!r} cannot be read ({exc.strerror or exc})") from None
    with fh:
        # comment lines become blank lines so that reader.line_num stays the file's line number
        reader = csv.reader("\n" if ln.lstrip().startswith("#") else ln for ln in fh)
        header = None
        rows, splits = [], []
        try:
            for fields in reader:
                if not fields or all(not f.strip() for f in fields):
                    continue
                if header is None:
                    header = [f.strip() for f in fields]
                    if "y" not in header:
                        raise ValueError(f"data file {str(path)!r}, header: needs a column named 'y' (the "
                                         f"targets); got columns {header}")
                    counts = collections.Counter(header)  # linear: 40k columns were 14 s with list.count
                    dup = sorted(h for h, n in counts.items() if n > 1)
                    if dup:
                        raise ValueError(f"data file {str(path)!r}, header: duplicate column names {dup}")
                    if "" in header:
                        raise ValueError(f"data file {str(path)!r}, header: empty column name at position "
                                         f"{header.index('') + 1}")
                    has_split = "split" in header
                    if len(header) - 1 - has_split < 1:
                        raise ValueError(f"data file {str(path)!r}, header: no feature columns (every column "
                                         f"other than 'y' and 'split' is a feature)")
                    continue
                if len(fields) != len(header):
                    raise ValueError(f"data file {str(path)!r}, line {reader.line_num}: {len(fields)} fields "
                                     f"but the header has {len(header)}")
                vals = []
                for name, f in zip(header, fields):
                    f = f.strip()
                    if name == "split":
                        if f not in _SPLITS:
                            raise ValueError(f"data file {str(path)!r}, line {reader.line_num}: split must be one of "
                                             f"{', '.join(_SPLITS)}, got {f!r}")
                        splits.append(f)
                        continue
                    try:
                        v = float(f)
                    except ValueError:
                        raise ValueError(f"data file {str(path)!r}, line {reader.line_num}, column {name!r}: "
                                         f"not a number: {f!r}") from None
                    if not math.isfinite(v):
                        raise ValueError(f"data file {str(path)!r}, line {reader.line_num}, column {name!r}: "
                                         f"non-finite value {f!r}")
                    vals.append(v)
                rows.append(vals)
        except csv.Error as exc:
            raise ValueError(f"data file {str(path)!r}, line {reader.line_num}: malformed CSV ({exc})") from None
        except UnicodeDecodeError as exc:
            raise ValueError(f"data file {str(path)!r}: not a text CSV file ({exc})") from None
    if header is None:
        raise ValueError(f"data file {str(path)!r} is empty: expected a header line with a 'y' column")
    if not rows:
        raise ValueError(f"data file {str(path)!r} has a header but no data lines")
    names = [h for h in header if h != "split"]
    A = np.asarray(rows, dtype=np.float64)
    yi = names.index("y")
    X = np.delete(A, yi, axis=1)
    y = A[:, yi]
    return X, y, (np.asarray(splits) if "split" in header else None)


def load_transfer_data(path, *, standardise=False, alignment=True) -> TransferData:
    """Read a transfer problem from an ``.npz`` or CSV file (layout in docs/sweeps.md).

    ``.npz``: float arrays ``X1, y1`` (source), ``X2, y2`` (target training), ``X_test, y_test``
    (target test); ``X*`` of shape ``(n, D)`` with one ``D``, ``y*`` of shape ``(n,)``.

    ``.csv``: a header line, then one line per point. Columns: ``split`` (``source``, ``target`` or
    ``test``), ``y`` (the target value) and any number of feature columns (every other column, in
    file order). Blank lines and lines starting with ``#`` are skipped. Every split must be present.

    Raises
    ------
    ValueError
        Naming the file, the key (npz) or line and column (CSV), and what is wrong.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        arrs = _load_npz(path, _NPZ_TRANSFER_KEYS)
        sets = ((arrs["X1"], arrs["y1"]), (arrs["X2"], arrs["y2"]), (arrs["X_test"], arrs["y_test"]))
    elif suffix in (".csv", ".txt"):
        X, y, split = _read_csv(path)
        if split is None:
            raise ValueError(f"data file {str(path)!r}, header: a transfer file needs a 'split' column with "
                             f"values {', '.join(_SPLITS)}")
        missing = [s for s in _SPLITS if not np.any(split == s)]
        if missing:
            raise ValueError(f"data file {str(path)!r}: no lines with split {missing}; every split of "
                             f"{', '.join(_SPLITS)} needs at least one point")
        sets = tuple((X[split == s], y[split == s]) for s in _SPLITS)
    else:
        raise ValueError(f"data file {str(path)!r}: unknown extension {path.suffix!r}; use .npz or .csv")
    data = transfer_data(*sets, standardise=standardise, alignment=alignment, where=f"data file {str(path)!r}")
    data.info.update({"data": "file", "path": str(path)})
    return data


def load_task(path):
    """Read one regression task ``(X, y)`` from ``.npz`` (keys ``X``, ``y``) or CSV (a ``y`` column and
    feature columns; no ``split`` column). Errors as in :func:`load_transfer_data`."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        arrs = _load_npz(path, ("X", "y"))
        X, y = arrs["X"], arrs["y"]
    elif suffix in (".csv", ".txt"):
        X, y, split = _read_csv(path)
        if split is not None:
            raise ValueError(f"data file {str(path)!r}, header: a single-task file must not have a 'split' "
                             f"column (use load_transfer_data)")
    else:
        raise ValueError(f"data file {str(path)!r}: unknown extension {path.suffix!r}; use .npz or .csv")
    try:
        return check_Xy(X, y)
    except ValueError as exc:
        raise ValueError(f"data file {str(path)!r}: {exc}") from None
