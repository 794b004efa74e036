"""Symbolic engine: mean-field actions, saddle-point and gradient-flow equations, limits, LaTeX.

Two modules: :mod:`symtransfer.symbolic.build` derives the systems (:func:`derive`,
:class:`SaddlePointSystem`, :class:`DMFTSystem`), :mod:`symtransfer.symbolic.render` turns them into
LaTeX, Markdown and plain text. Solving is left to the estimators of :mod:`symtransfer.theory`
(:meth:`SaddlePointSystem.estimator`). The derivations are written out in docs/symbolic.md.
"""

from .build import (DYNAMICS, SETTING_ALIASES, SETTINGS, Average, DMFTSystem, Expectation, SaddlePointSystem,
                    _mdiff, _Sym, canonical_setting, derive)

__all__ = ["SETTINGS", "SETTING_ALIASES", "DYNAMICS", "DMFTSystem", "SaddlePointSystem", "derive",
           "canonical_setting", "Expectation", "Average"]
