"""Task families: Gaussian inputs with single-index teachers, and source/target pairs.

A teacher is ``y = g(beta.x/sqrt(D)) + sigma * eps`` with ``g`` a combination of probabilists'
Hermite polynomials ``He_k`` (``g(z) = z`` is the linear teacher). A transfer pair draws
``beta2 = alpha beta1 + sqrt(1 - alpha^2) beta_perp`` with ``beta_perp`` orthogonal to ``beta1`` and
of the same norm ``|beta|^2 = D``, so ``alpha`` is the exact cosine between the two index vectors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.polynomial import hermite_e

from ._validation import check_int, check_real

__all__ = ["HermiteTeacher", "Task", "TransferPair", "make_task", "make_transfer_pair", "random_direction"]


@dataclass(frozen=True)
class HermiteTeacher:
    """Single-index link ``g(z) = sum_k c_k He_k(z)``.

    Parameters
    ----------
    coefficients : dict {degree: coefficient}
        E.g. ``{1: 1.0}`` (linear) or ``{1: 1.0, 2: 0.5}`` (``He1 + 0.5 He2``).
    """

    coefficients: dict = field(default_factory=lambda: {1: 1.0})

    def __post_init__(self):
        if not isinstance(self.coefficients, dict) or not self.coefficients:
            raise ValueError(f"coefficients must be a non-empty dict {{degree: coefficient}}, got {self.coefficients!r}")
        for k, c in self.coefficients.items():
            check_int("Hermite degree", k, low=0, high=50)
            check_real(f"coefficient of He_{k}", c)

    @classmethod
    def from_spec(cls, spec) -> "HermiteTeacher":
        """``"linear"``, a dict ``{degree: coefficient}``, ``{"degrees": {...}}`` or a HermiteTeacher."""
        if isinstance(spec, HermiteTeacher):
            return spec
        if isinstance(spec, str):
            if spec == "linear":
                return cls({1: 1.0})
            raise ValueError(f"teacher must be 'linear' or a dict {{degree: coefficient}}, got {spec!r}")
        if isinstance(spec, dict):
            spec = spec.get("degrees", spec)
            if not isinstance(spec, dict):
                raise ValueError(f"teacher degrees must be a dict {{degree: coefficient}}, got {spec!r}")
            try:
                return cls({int(k): float(v) for k, v in spec.items()})
            except (TypeError, ValueError):
                raise ValueError(f"teacher must map integer degrees to real coefficients, got {spec!r}") from None
        raise ValueError(f"teacher must be 'linear' or a dict {{degree: coefficient}}, got {spec!r}")

    def __call__(self, z) -> np.ndarray:
        deg = max(self.coefficients)
        c = np.zeros(deg + 1)
        for k, v in self.coefficients.items():
            c[k] = v
        return hermite_e.hermeval(np.asarray(z, dtype=np.float64), c)

    @property
    def variance(self) -> float:
        """``E[g(z)^2]`` for ``z ~ N(0, 1)``: ``sum_k k! c_k^2``."""
        return float(sum(math.factorial(k) * c**2 for k, c in self.coefficients.items()))


@dataclass
class Task:
    """A regression task: training and test split, clean test targets and the teacher.

    ``y_test_clean`` is the noiseless teacher, against which test errors are measured by default.
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    y_test_clean: np.ndarray
    beta: np.ndarray
    teacher: HermiteTeacher
    noise: float

    @property
    def dim(self) -> int:
        return self.X_train.shape[1]


@dataclass
class TransferPair:
    """Source and target tasks whose index vectors have cosine exactly ``alpha``."""

    source: Task
    target: Task
    alpha: float


def random_direction(dim: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random vector with ``|beta|^2 = dim``."""
    b = rng.standard_normal(dim)
    return b * math.sqrt(dim) / np.linalg.norm(b)


def _labels(X, beta, teacher, noise, rng):
    z = X @ beta / math.sqrt(X.shape[1])
    clean = teacher(z)
    return clean + noise * rng.standard_normal(X.shape[0]), clean


def make_task(n_train, n_test, dim, *, teacher="linear", noise=0.0, beta=None, seed=0) -> Task:
    """Gaussian inputs ``x ~ N(0, I_D)`` labelled by a single-index teacher.

    Parameters
    ----------
    n_train, n_test, dim : int
    teacher : "linear" or dict {degree: coefficient}
    noise : float, >= 0
        Standard deviation ``sigma`` of the label noise (training and noisy test labels).
    beta : array (dim,), optional
        Index vector; drawn with ``|beta|^2 = dim`` when omitted.
    seed : int
    """
    n_train = check_int("n_train", n_train, low=1)
    n_test = check_int("n_test", n_test, low=0)
    dim = check_int("dim", dim, low=1)
    noise = check_real("noise", noise, low=0.0)
    teacher = HermiteTeacher.from_spec(teacher)
    rng = np.random.default_rng(np.random.SeedSequence([check_int("seed", seed, low=0), 11]))
    if beta is None:
        beta = random_direction(dim, rng)
    else:
        beta = np.asarray(beta, dtype=np.float64)
        if beta.shape != (dim,) or not np.all(np.isfinite(beta)):
            raise ValueError(f"beta must be a finite vector of length dim={dim}, got shape {beta.shape}")
    X = rng.standard_normal((n_train, dim))
    Xt = rng.standard_normal((n_test, dim))
    y, _ = _labels(X, beta, teacher, noise, rng)
    yt, yt_clean = _labels(Xt, beta, teacher, noise, rng)
    return Task(X, y, Xt, yt, yt_clean, beta, teacher, noise)


def make_transfer_pair(dim, n_source, n_target, n_test, alpha, *, teacher="linear", target_teacher=None,
                       noise_source=0.0, noise_target=0.0, seed=0) -> TransferPair:
    """Source and target tasks with alignment ``alpha = cos(beta1, beta2)`` exactly.

    ``beta2 = alpha beta1 + sqrt(1 - alpha^2) beta_perp``, ``beta_perp`` orthogonal to ``beta1``,
    ``|beta_perp| = |beta1|``. ``target_teacher`` defaults to ``teacher``.
    """
    dim = check_int("dim", dim, low=2)
    alpha = check_real("alpha", alpha, low=-1.0, high=1.0)
    seed = check_int("seed", seed, low=0)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 12]))
    beta1 = random_direction(dim, rng)
    perp = rng.standard_normal(dim)
    perp -= (perp @ beta1) / (beta1 @ beta1) * beta1
    perp *= np.linalg.norm(beta1) / np.linalg.norm(perp)
    beta2 = alpha * beta1 + math.sqrt(max(0.0, 1.0 - alpha**2)) * perp
    source = make_task(n_source, n_test, dim, teacher=teacher, noise=noise_source, beta=beta1, seed=seed * 2 + 1)
    target = make_task(n_target, n_test, dim, teacher=target_teacher if target_teacher is not None else teacher,
                       noise=noise_target, beta=beta2, seed=seed * 2 + 2)
    return TransferPair(source, target, alpha)
