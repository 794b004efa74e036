"""Exceptions raised by symtransfer.

Every failure that is not a plain bad argument (``ValueError``) has its own class so that callers
can catch exactly the condition they can recover from.
"""

from __future__ import annotations


class SymtransferError(Exception):
    """Base class of all symtransfer-specific errors."""


class DivergenceError(SymtransferError, FloatingPointError):
    """A simulation produced a non-finite loss.

    Attributes
    ----------
    step : int
        The training step at which the non-finite value appeared.
    lr : float
        The step size in use.
    """

    def __init__(self, step: int, lr: float, what: str = "loss"):
        self.step = int(step)
        self.lr = float(lr)
        super().__init__(
            f"the {what} became non-finite at step {self.step} with lr={self.lr:g}; the Euler-Maruyama "
            f"step is too large for this data/width/gamma: try a smaller lr (e.g. lr={self.lr / 4:g})"
        )


class ConvergenceError(SymtransferError):
    """A solver did not reach its tolerance.

    Attributes
    ----------
    residuals : list of float
        The residual after each iteration (the diagnostic history).
    """

    def __init__(self, message: str, residuals=None):
        self.residuals = list(residuals) if residuals is not None else []
        tail = ""
        if self.residuals:
            shown = ", ".join(f"{r:.3g}" for r in self.residuals[-5:])
            tail = f" (last residuals: {shown})"
        super().__init__(message + tail)


class NoSaddlePointError(SymtransferError):
    """The equilibrium saddle point does not exist for this activation/setting."""


class EdgeOfNormalisabilityError(ConvergenceError):
    """The saddle-point solver pressed against the edge of the normalisable region without converging.

    Raised by :class:`~symtransfer.theory.adaptive.AdaptiveKernel` for linearly growing activations
    (e.g. ReLU) at strong feature learning: the tilted single-site measure approaches the edge
    ``2 c s^2 kappa(v) = 1`` of docs/adaptive.md eq. (A.3) while the saddle-point gradient stays
    finite (docs/adaptive.md, section 2). With ``edge="raise"`` at that point; with the default
    ``edge="condensate"`` only when the constrained solve on the edge (eq. (A.6)) fails.

    Attributes
    ----------
    residuals : list of float
        Residual after each iteration.
    taus : list of float
        The normalisability index ``2 c s^2 kappa(v)`` after each iteration (``< 1`` is normalisable).
    """

    def __init__(self, message: str, residuals=None, taus=None):
        self.taus = list(taus) if taus is not None else []
        super().__init__(message, residuals)


class ResultsDatabaseError(SymtransferError):
    """A sweep or experiment results database cannot be used: not an SQLite file, damaged pages, or
    tables of another schema.

    Attributes
    ----------
    path : str
        The database file.
    """

    def __init__(self, path, problem: str):
        self.path = str(path)
        super().__init__(f"results database {self.path!r} is unusable: {problem}; move it aside (its finished "
                         f"points are lost only if it cannot be read at all) or pass another --db")


class MalformedRowWarning(UserWarning):
    """A row of a results database could not be decoded and was skipped (the others are returned)."""


class ConvergenceWarning(UserWarning):
    """An iterative solver or a dynamics stopped at its iteration or time limit before its
    convergence criterion was met; the result is returned as it stands (e.g.
    :class:`~symtransfer.theory.dmft.GradientFlowDMFT` with ``converged_ = False`` at ``t_max``)."""


class StepTooLargeError(DivergenceError):
    """A given step size ``lr`` is beyond the Euler-Maruyama stability bound of the initial network.

    Found before training: along the top eigenvector of the readout tangent kernel the discrete
    update multiplies the error by ``|1 - lr (lambda + theta_max)| > 1`` per step, so the run either
    diverges or collapses (readouts decaying to zero, ReLUs dying) instead of training.

    Attributes
    ----------
    step : int
        Always 0 (nothing was run).
    lr : float
        The step size asked for.
    bound : float
        ``2 / (lambda + theta_max)``, with ``theta_max`` a lower estimate of the largest eigenvalue of
        the readout tangent kernel (so the true bound is at most this).
    """

    def __init__(self, lr: float, bound: float, auto_lr: float | None = None):
        self.step, self.lr, self.bound = 0, float(lr), float(bound)
        hint = f"; lr=None picks {auto_lr:.3g}" if auto_lr is not None else ""
        SymtransferError.__init__(
            self, f"lr={self.lr:g} exceeds the stability bound 2/(lambda + theta_max) = {self.bound:.3g} of the "
                  f"initial network (theta_max: largest eigenvalue of the readout tangent kernel): the run would "
                  f"oscillate and diverge or collapse; try a smaller lr (e.g. lr={self.bound / 4:.3g}){hint}")


class StepSizeWarning(UserWarning):
    """A given step size ``lr`` of a Langevin run (``temperature > 0``) has
    ``lr (lambda + delta + Theta_max) > 2`` on the current network: Euler-Maruyama is then unstable
    along the top eigenvector of the tangent kernel ``Theta``, held only by the nonlinearity, and the
    run samples a wrong stationary law, silently.

    ``Theta_max`` grows during a run that feature-learns strongly (a condensate of runaway neurons),
    so a step that passed the initial check (:class:`StepTooLargeError`) can cross this limit later.
    With ``lr=None`` :class:`~symtransfer.sim.WideNetwork` keeps ``lr (lambda + delta + Theta_max)
    <= 1/2`` itself; with a given ``lr`` it warns once (docs/adaptive.md, section 7).

    Attributes
    ----------
    step : int
        The step at which the limit was found exceeded.
    lr : float
        The step size given.
    bound : float
        ``2 / (lambda + delta + theta_max)``, ``theta_max`` a lower estimate of the largest eigenvalue
        of the tangent kernel on the training inputs.
    """

    def __init__(self, step: int, lr: float, bound: float):
        self.step, self.lr, self.bound = int(step), float(lr), float(bound)
        super().__init__(
            f"lr={self.lr:g} exceeds the Euler-Maruyama stability limit 2/(lambda + delta + theta_max) = "
            f"{self.bound:.3g} of the network at step {self.step} (theta_max: largest eigenvalue of the tangent "
            f"kernel, grown during the run): the run samples a wrong stationary law; use lr=None (the step then "
            f"follows the network) or lr <= {self.bound / 4:.3g}")
