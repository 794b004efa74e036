"""Figures of the proportional-limit theory: transfer phase diagrams and learning curves.

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas directly, never through
``pyplot``, so importing this module changes no global backend state and works headless. Saving
picks the format from the file suffix (PNG, PDF, SVG).

This module is a leaf: it draws results it is given (a
:class:`~symtransfer.theory.proportional.PhaseDiagram`, a
:class:`~symtransfer.theory.proportional.LearningCurves`, or anything with the same attributes) and
imports nothing from the rest of the package; the theory modules compute and import it lazily.
"""

from __future__ import annotations

import pathlib

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

__all__ = ["plot_phase_diagram", "plot_learning_curves", "PARAMETER_LABELS"]

#: Axis labels (mathtext) of the proportional-limit parameters.
PARAMETER_LABELS = {
    "nu1": r"$\nu_1 = P_1/D$",
    "nu2": r"$\nu_2 = P_2/D$",
    "alpha": r"task alignment $\alpha$",
    "g1": r"$g_1 = \gamma_1\sqrt{P_1}$",
    "g2": r"$g_2 = \gamma_2\sqrt{P_2}$",
    "weight_decay1": r"weight decay $\lambda_1$",
    "weight_decay2": r"weight decay $\lambda_2$",
    "temperature1": r"temperature $T_1$",
    "temperature2": r"temperature $T_2$",
    "lam1": r"$\lambda_1$",
    "lam2": r"$\lambda_2$",
    "T1": r"$T_1$",
    "T2": r"$T_2$",
    "coupling": r"coupling $\delta$",
    "sigma1": r"$\sigma_1$",
    "sigma2": r"$\sigma_2$",
}

_SETTING_STYLE = {"scratch": dict(color="black"), "finetune": dict(color="tab:blue"),
                  "joint": dict(color="tab:red")}
_SETTING_LABEL = {"scratch": "scratch", "finetune": "fine-tune readout", "joint": "jointly rich"}


def _new_figure(figsize):
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _auto_scale(values, scale):
    if scale != "auto":
        if scale not in ("linear", "log"):
            raise ValueError(f"scale must be 'auto', 'linear' or 'log', got {scale!r}")
        return scale
    v = np.asarray(values, dtype=float)
    if np.all(v > 0) and v.max() / v.min() >= 20:
        ratios = v[1:] / v[:-1]
        if np.allclose(ratios, ratios[0], rtol=1e-6):
            return "log"
    return "linear"


def _save(fig, path):
    if path is None:
        return
    p = pathlib.Path(path)
    if p.suffix.lower().lstrip(".") not in ("png", "pdf", "svg"):
        raise ValueError(f"path must end in .png, .pdf or .svg, got {str(p)!r}")
    fig.savefig(p, dpi=150)


def plot_phase_diagram(diagram, path=None, *, ax=None, xscale="auto", yscale="auto", title=None):
    """Transfer gain as a diverging colour map with the ``gain = 0`` line (docs/theory.md, 6.5).

    Parameters
    ----------
    diagram : symtransfer.theory.proportional.PhaseDiagram
    path : str or path, optional
        Save to this file (``.png``, ``.pdf`` or ``.svg``).
    ax : matplotlib Axes, optional
        Draw into it instead of a new figure.
    xscale, yscale : {"auto", "linear", "log"}
        ``"auto"`` is log for positive geometric grids spanning a factor >= 20.
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    if ax is None:
        fig = _new_figure((5.6, 4.4))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    g = np.asarray(diagram.gain)
    lim = float(np.nanmax(np.abs(g))) or 1.0
    # centre the colour map on zero so that positive and negative transfer read at a glance
    mesh = ax.pcolormesh(diagram.x, diagram.y, g, shading="nearest", cmap="RdBu",
                         norm=TwoSlopeNorm(vcenter=0.0, vmin=-lim, vmax=lim), rasterized=True)
    cb = fig.colorbar(mesh, ax=ax)
    cb.set_label(r"transfer gain $E_{\rm scratch} - E_{\rm transfer}$")
    for k, seg in enumerate(diagram.boundary):
        ax.plot(seg[:, 0], seg[:, 1], color="black", lw=1.6, label="gain = 0" if k == 0 else None)
    ax.set_xscale(_auto_scale(diagram.x, xscale))
    ax.set_yscale(_auto_scale(diagram.y, yscale))
    ax.set_xlabel(PARAMETER_LABELS.get(diagram.x_name, diagram.x_name))
    ax.set_ylabel(PARAMETER_LABELS.get(diagram.y_name, diagram.y_name))
    if diagram.boundary:
        ax.legend(loc="best", fontsize="small")
    if title is None:
        items = [f"{k}={v:g}" for k, v in diagram.params.items()]
        half = (len(items) + 1) // 2
        fixed = ", ".join(items[:half]) + ("\n" + ", ".join(items[half:]) if len(items) > 6 else "")
        if len(items) <= 6:
            fixed = ", ".join(items)
        title = f"{_SETTING_LABEL.get(diagram.setting, diagram.setting)} vs scratch\n{fixed}"
    ax.set_title(title, fontsize="small")
    _save(fig, path)
    return fig


def plot_learning_curves(curves, path=None, *, logy=True):
    """Target test error against ``nu2``: one panel per ``g``, scratch (black), readout fine-tuning
    (blue) and jointly rich training (red), one line style per alignment ``alpha``.

    Parameters
    ----------
    curves : symtransfer.theory.proportional.LearningCurves
        From :func:`symtransfer.theory.proportional.learning_curves` (eq. (6.9) of docs/theory.md).
    path : str or path, optional
        Save the figure there.
    logy : bool
        Log scale for the error axis.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not hasattr(curves, "curves") or not hasattr(curves, "nu2"):
        raise TypeError("plot_learning_curves takes the LearningCurves of "
                        "symtransfer.theory.proportional.learning_curves(nu2_values, ...), "
                        f"got {type(curves).__name__}")
    nu2 = np.asarray(curves.nu2)
    styles = ["-", "--", ":", "-.", (0, (5, 1, 1, 1))]
    alpha_style = {}
    settings = {c["setting"] for panel in curves.curves for c in panel}
    fig = _new_figure((4.2 * len(curves.gammas), 3.8))
    axes = fig.subplots(1, len(curves.gammas), squeeze=False)[0]
    for ax, g, panel in zip(axes, curves.gammas, curves.curves):
        for c in panel:
            s = c["setting"]
            if c["alpha"] is None:
                ax.plot(nu2, c["error"], label=_SETTING_LABEL[s], lw=2, **_SETTING_STYLE[s])
                continue
            ls = alpha_style.setdefault(c["alpha"], styles[len(alpha_style) % len(styles)])
            ax.plot(nu2, c["error"], ls=ls, label=f"{_SETTING_LABEL[s]}, $\\alpha$={c['alpha']:g}",
                    **_SETTING_STYLE[s])
        ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel(PARAMETER_LABELS["nu2"])
        ax.set_title(f"g = {g:g} ({curves.gamma_applies_to})"
                     + (f", $\\delta$ = {curves.coupling:g}" if "joint" in settings else ""), fontsize="small")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("target test error (noiseless teacher)")
    axes[-1].legend(fontsize="x-small", loc="best")
    _save(fig, path)
    return fig
