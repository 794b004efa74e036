"""Argument checks shared by every public entry point.

Each check raises ``ValueError`` naming the parameter and the accepted range, so a user sees at once
which argument is wrong.
"""

from __future__ import annotations

import math
import os
from numbers import Integral, Real
from pathlib import Path

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


def _real_array(value, name: str) -> np.ndarray:
    # np.asarray(..., float64) silently drops an imaginary part (with only a ComplexWarning)
    raw = value if isinstance(value, np.ndarray) else np.asarray(value)
    if raw.dtype.kind == "c":
        raise ValueError(f"{name} must be real, got a complex array (dtype {raw.dtype}); pass the real part "
                         f"explicitly if that is meant")
    if raw.dtype.kind not in "biuf":
        try:
            return np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be an array of real numbers, got dtype {raw.dtype}") from None
    return np.asarray(raw, dtype=np.float64)


def check_inputs(X, name: str = "X", n_features: int | None = None) -> np.ndarray:
    """A finite float64 C-contiguous 2-D array (rows are inputs); complex input is refused."""
    arr = _real_array(X, name)
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
    arr = _real_array(y, name)
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


def check_output_file(path, name: str) -> Path:
    """``path`` as a Path after checking it can be written: its folder exists and is writable, and it is
    not a folder itself. Called before a computation starts, so a bad path never costs the result."""
    if path is None or (isinstance(path, str) and not path.strip()):
        raise ValueError(f"{name} must be a file path, got {path!r}")
    p = Path(path).expanduser()
    if p.is_dir():
        raise ValueError(f"{name} {str(p)!r} is a folder, not a file")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"{name} {str(p)!r}: folder {str(parent)!r} does not exist (create it first)")
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise ValueError(f"{name} {str(p)!r}: not writable (permission denied)")
    return p


def check_output_dir(path, name: str, create: bool = True) -> Path:
    """A writable folder (created with its parents when ``create``), checked before computing."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ValueError(f"{name} {str(p)!r} exists and is not a folder")
    if not p.exists():
        if not create:
            raise ValueError(f"{name} {str(p)!r} does not exist")
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"{name} {str(p)!r} cannot be created ({exc.strerror or exc})") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise ValueError(f"{name} {str(p)!r}: not writable (permission denied)")
    return p


def broadcast_flat(arrays: dict):
    """Broadcast named, already checked parameter arrays; returns ``(shape, {name: flat contiguous
    array})`` or a ``ValueError`` listing every name with its shape."""
    try:
        shape = np.broadcast_shapes(*(a.shape for a in arrays.values()))
    except ValueError:
        shapes = ", ".join(f"{k}{a.shape}" for k, a in arrays.items())
        raise ValueError(f"parameter arrays do not broadcast together: {shapes}") from None
    flat = {k: np.ascontiguousarray(np.broadcast_to(a, shape).reshape(-1)) for k, a in arrays.items()}
    return shape, flat


def check_real_array(name: str, value, *, low, low_open=False, high=None, allow_inf=False, scale_limit=None,
                     two_sided=False) -> np.ndarray:
    """``value`` as a float64 array after checking every entry lies in the stated range.

    ``scale_limit`` bounds finite magnitudes (``|v| <= scale_limit``, and ``v >= 1/scale_limit`` with
    ``two_sided`` for positive scales) where the equations using them would over- or underflow
    float64: such a value is refused, naming the parameter, rather than returned as NaN or inf.
    """
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a real number or array, got {value!r}")
    if np.iscomplexobj(value):
        raise ValueError(f"{name} must be real, got a complex value")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number or array of reals, got {value!r}") from None
    rng = (f"({low}, " if low_open else f"[{low}, ") + (f"{high}]" if high is not None else "inf" + (
        "]" if allow_inf else ")"))
    if np.any(np.isnan(arr)):
        raise ValueError(f"{name} must lie in {rng}, got nan")
    if not allow_inf and np.any(np.isinf(arr)):
        raise ValueError(f"{name} must be finite (in {rng}), got {value!r}")
    bad = (arr <= low) if low_open else (arr < low)
    if high is not None:
        bad = bad | (arr > high)
    if np.any(bad):
        raise ValueError(f"{name} must lie in {rng}, got {arr[bad].flat[0]!r}")
    if scale_limit is not None:
        finite = arr[np.isfinite(arr)]
        out = np.abs(finite) > scale_limit
        if two_sided:
            out |= finite < 1.0 / scale_limit
        if np.any(out):
            bounds = f"[{1.0 / scale_limit:g}, {scale_limit:g}]" if two_sided else f"<= {scale_limit:g} in magnitude"
            raise ValueError(f"{name} must lie in {bounds} (beyond, the equations over/underflow float64), "
                             f"got {float(finite[out].flat[0])!r}")
    return arr
