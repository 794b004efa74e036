"""The estimator contract shared by every model of the package (docs/estimators.md).

:class:`TransferEstimator` is the one place where the scikit-learn contract is written: constructor
parameters stored untouched (so ``get_params``/``set_params``/``sklearn.base.clone`` come from
:class:`~sklearn.base.BaseEstimator`), validation of ``gamma``, ``weight_decay`` and ``temperature``
per regime, the fitted check (:class:`sklearn.exceptions.NotFittedError`), ``test_error``,
``score`` (``R^2``), ``alignment`` (docs/theory.md section 5) and one :meth:`~TransferEstimator.transfer`
whose ``coupling=inf`` (or ``readout_only=True``) is readout fine-tuning in every model and whose
omitted hyper-parameters are the source's (docs/theory.md section 3).

This module is a leaf: it imports nothing from the package but ``_validation`` and ``errors``.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.utils.validation import check_is_fitted

from ._validation import check_int, check_real, check_Xy

__all__ = ["TransferEstimator", "kernel_alignment", "target_seed", "HISTORY_KEYS"]

# Keys every fitted model's ``history_`` has (1-d float arrays; ``test_loss`` empty without eval_set).
HISTORY_KEYS = ("time", "train_loss", "test_loss")


def kernel_alignment(Phi, y) -> float:
    """Kernel-task alignment ``A = y^T Phi y / (||Phi||_F ||y||^2)`` (docs/theory.md section 5)."""
    from ._validation import _real_array

    Phi = _real_array(Phi, "Phi")
    y = _real_array(y, "y").reshape(-1)
    if Phi.ndim != 2 or Phi.shape != (y.size, y.size):
        raise ValueError(f"Phi must be a square matrix of size len(y) = {y.size}, got shape {Phi.shape}")
    if not np.all(np.isfinite(Phi)):
        raise ValueError("Phi contains non-finite values (nan or inf): the alignment is undefined")
    if not np.all(np.isfinite(y)):
        raise ValueError("y contains non-finite values (nan or inf)")
    # A is scale-free in Phi and y: normalising first keeps ||Phi||_F and y^T y from overflowing
    # (a kernel of entries 1e300 would otherwise give A = 0)
    ps, ys = float(np.max(np.abs(Phi))), float(np.max(np.abs(y)))
    if ps == 0.0 or ys == 0.0:
        raise ValueError("alignment is undefined for a zero kernel or zero targets")
    Phi, y = Phi / ps, y / ys
    return float(y @ Phi @ y / (np.linalg.norm(Phi) * float(y @ y)))


def resolve_coupling(coupling, readout_only) -> float:
    """The coupling ``delta`` meant by ``(coupling, readout_only)``; ``inf`` is readout fine-tuning.

    ``readout_only=True`` is a synonym of ``coupling=inf``; with it, ``coupling`` may be left at its
    default (``0`` or ``None``) or be ``inf``; any other finite value contradicts it.
    """
    if readout_only is not None and not isinstance(readout_only, (bool, np.bool_)):
        raise ValueError(f"readout_only must be True, False or None, got {readout_only!r}")
    if coupling is None:
        coupling = 0.0
    delta = check_real("coupling", coupling, low=0.0, allow_inf=True)
    if readout_only:
        if delta != 0.0 and not math.isinf(delta):
            raise ValueError(f"readout_only=True (readout fine-tuning, i.e. coupling=inf) contradicts "
                             f"coupling={coupling!r}: pass one of them")
        return math.inf
    return delta


def target_seed(seed: int) -> int:
    """Default seed of a model transferred from a source fitted with ``seed``: ``seed + 1``
    (every model's ``transfer`` and :mod:`symtransfer.protocol` use this one convention)."""
    return check_int("seed", seed, low=0) + 1


def empty_history() -> dict:
    """A ``history_`` with the common keys and no entries."""
    return {k: np.zeros(0) for k in HISTORY_KEYS}


class TransferEstimator(RegressorMixin, BaseEstimator):
    """Base of every model: one task fitted by :meth:`fit`, a target by :meth:`transfer`.

    Subclasses store their constructor arguments untouched, implement ``fit(X, y, eval_set=None)``
    (returning ``self``), ``predict``, ``kernel`` and ``_transfer``, and may extend
    :meth:`_check_hyper`.

    Three class attributes configure a subclass. ``_regime``: ``"equilibrium"`` (a Gibbs measure;
    needs ``weight_decay > 0`` and ``temperature > 0``, allows ``gamma >= 0``) or ``"dynamics"`` (a
    training run; ``weight_decay >= 0``, ``temperature >= 0`` with ``0`` gradient flow, ``gamma > 0``
    since the output is scaled by ``1/gamma``). ``_fitted_attr``: the fitted attribute whose presence
    means "fitted" (``"Phi_"``). ``_shared_params``: constructor parameters that
    :func:`sklearn.base.clone` passes on as the same object instead of cloning them, e.g. a target
    model's fitted ``source`` (a clone of it would be unfitted).

    Common fitted attributes (docs/estimators.md): ``Phi_`` (feature kernel on the training inputs),
    ``n_features_in_``, ``converged_``, ``n_iter_`` and ``history_`` with the keys ``time``,
    ``train_loss``, ``test_loss``.
    """

    _regime = "equilibrium"
    _fitted_attr = "Phi_"
    _shared_params: tuple = ()

    # ------------------------------------------------------------------------------ contract
    def __sklearn_clone__(self):
        if not self._shared_params:
            return super().__sklearn_clone__()
        params = self.get_params(deep=False)
        for k, v in params.items():
            if k not in self._shared_params:
                params[k] = clone(v, safe=False)
        return type(self)(**params)

    def _check_hyper(self) -> dict:
        """``gamma``, ``weight_decay``, ``temperature`` as floats after the checks of the regime."""
        if self._regime == "equilibrium":
            return {"gamma": check_real("gamma", self.gamma, low=0.0),
                    "weight_decay": check_real("weight_decay", self.weight_decay, low=0.0, low_open=True),
                    "temperature": check_real("temperature", self.temperature, low=0.0, low_open=True)}
        if self._regime == "dynamics":
            return {"gamma": check_real("gamma", self.gamma, low=0.0, low_open=True),
                    "weight_decay": check_real("weight_decay", self.weight_decay, low=0.0),
                    "temperature": check_real("temperature", self.temperature, low=0.0)}
        raise TypeError(f"{type(self).__name__}._regime must be 'equilibrium' or 'dynamics'")

    def __sklearn_is_fitted__(self) -> bool:
        # what sklearn.utils.validation.check_is_fitted(model) asks when given no attributes
        return hasattr(self, self._fitted_attr)

    def _check_fitted(self):
        check_is_fitted(self, self._fitted_attr,
                        msg=f"this {type(self).__name__} is not fitted yet: call fit(X, y) first")

    @staticmethod
    def _check_eval_set(eval_set, n_features):
        """``(X_test, y_test)`` checked, or ``None``."""
        if eval_set is None:
            return None
        if not (isinstance(eval_set, (tuple, list)) and len(eval_set) == 2):
            raise ValueError("eval_set must be a tuple (X_test, y_test)")
        return check_Xy(eval_set[0], eval_set[1], "eval_set X", "eval_set y", n_features=n_features)

    def fit(self, X, y, eval_set=None):  # pragma: no cover - every model implements it
        raise NotImplementedError

    def transfer(self, X2, y2, *, coupling=0.0, gamma=None, weight_decay=None, temperature=None,
                 readout_only=None, eval_set=None, **options):
        """A new fitted model trained on the target ``(X2, y2)`` from this fitted source (docs/theory.md §3).

        Parameters
        ----------
        X2, y2 : arrays
            Target training set.
        coupling : float, >= 0 or inf
            ``delta``, the elastic pull of the target hidden weights towards the source's. ``0``: the
            source only initialises (or, at equilibrium, does not enter); ``inf``: readout fine-tuning on
            the frozen source features.
        gamma, weight_decay, temperature : float, optional
            Target ``(gamma2, lambda2, T2)``; omitted ones are the source's.
        readout_only : bool, optional
            ``True`` is a synonym of ``coupling=inf`` (with ``coupling`` left at its default); with a
            finite non-zero ``coupling`` it is a ``ValueError``.
        eval_set : tuple (X_test, y_test), optional
            Held-out target data, logged in ``history_["test_loss"]``.
        **options
            Model-specific settings of the target run (e.g. ``steps``, ``seed``).

        Returns
        -------
        TransferEstimator
            The fitted target; this source is left untouched.
        """
        self._check_fitted()
        delta = resolve_coupling(coupling, readout_only)
        g = self.gamma if gamma is None else gamma
        lam = self.weight_decay if weight_decay is None else weight_decay
        T = self.temperature if temperature is None else temperature
        return self._transfer(X2, y2, coupling=delta, gamma=g, weight_decay=lam, temperature=T,
                              eval_set=eval_set, **options)

    def _transfer(self, X2, y2, *, coupling, gamma, weight_decay, temperature, eval_set=None, **options):
        raise NotImplementedError(f"{type(self).__name__} does not support transfer")

    # ------------------------------------------------------------------------------ observables
    def test_error(self, X, y) -> float:
        """Mean squared error ``mean (f(x) - y)^2`` of :meth:`predict` on ``(X, y)`` (docs/theory.md §5)."""
        self._check_fitted()
        X, y = check_Xy(X, y, n_features=self.n_features_in_)
        return float(np.mean((self.predict(X) - y) ** 2))

    def score(self, X, y, sample_weight=None) -> float:
        """Coefficient of determination ``R^2 = 1 - SSE/SST`` of :meth:`predict` (scikit-learn)."""
        self._check_fitted()
        X, y = check_Xy(X, y, n_features=self.n_features_in_)
        return super().score(X, y, sample_weight=sample_weight)

    def alignment(self, X, y) -> float:
        """Kernel-target alignment ``y^T Phi y / (||Phi||_F ||y||^2)`` of :meth:`kernel` on ``(X, y)`` (§5)."""
        self._check_fitted()
        X, y = check_Xy(X, y, n_features=self.n_features_in_)
        return kernel_alignment(self.kernel(X), y)

    def features(self, X):
        """The learned representation on ``X`` (model-specific; see each class)."""
        raise NotImplementedError(f"{type(self).__name__} has no feature map")

    def kernel(self, XA, XB=None):  # pragma: no cover - every model implements it
        raise NotImplementedError

    def predict(self, X):  # pragma: no cover - every model implements it
        raise NotImplementedError
