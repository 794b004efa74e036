"""Argument checks shared by every public entry point.

Each check raises ``ValueError`` naming the parameter and the accepted range, so a user sees at once
which argument is wrong.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np


def check_real(name: str, value, *, low=None, high=None, low_open=False, allow_inf=False) -> float:
    """Return ``value`` as float after checking it lies in the stated range."""
    if isinstance(value, bool) or not isinstance(value, (Real, np.floating, np.integer)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    if math.isnan(v) or (math.isinf(v) and not allow_inf):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if low is not None:
        if (low_open and not v > low) or (not low_open and not v >= low):
            bound = f"> {low}" if low_open else f">= {low}"
            raise ValueError(f"{name} must be {bound}, got {value!r}")
    if high is not None and not v <= high:
        raise ValueError(f"{name} must be <= {high}, got {value!r}")
    return v


def check_int(name: str, value, *, low=None, high=None) -> int:
    if isinstance(value, bool) or not isinstance(value, (Integral, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    v = int(value)
    if low is not None and v < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    if high is not None and v > high:
        raise ValueError(f"{name} must be <= {high}, got {value!r}")
    return v


def check_inputs(X, name: str = "X", n_features: int | None = None) -> np.ndarray:
    """A finite float64 C-contiguous 2-D array (rows are inputs)."""
    arr = np.asarray(X, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of shape (n_samples, n_features), got shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name} must have at least one row and one column, got shape {arr.shape}")
    if n_features is not None and arr.shape[1] != n_features:
        raise ValueError(f"{name} has {arr.shape[1]} features but {n_features} were expected")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values (nan or inf)")
    return np.ascontiguousarray(arr)


def check_targets(y, n: int, name: str = "y") -> np.ndarray:
    arr = np.asarray(y, dtype=np.float64)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of length {n}, got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{name} has length {arr.shape[0]} but X has {n} rows: shapes disagree")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values (nan or inf)")
    return np.ascontiguousarray(arr)


def check_Xy(X, y, xname: str = "X", yname: str = "y", n_features: int | None = None):
    Xa = check_inputs(X, xname, n_features)
    return Xa, check_targets(y, Xa.shape[0], yname)
