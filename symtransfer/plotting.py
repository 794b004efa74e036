"""Figures of the proportional-limit theory: transfer phase diagrams and learning curves.

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas directly, never through
``pyplot``, so importing this module changes no global backend state and works headless. Saving
picks the format from the file suffix (PNG, PDF, SVG).
"""

from __future__ import annotations

import pathlib

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from .theory import proportional as _prop

__all__ = ["plot_phase_diagram", "plot_learning_curves", "PARAMETER_LABELS"]

#: Axis labels (mathtext) of the proportional-limit parameters.
PARAMETER_LABELS = {
    "nu1": r"$\nu_1 = P_1/D$",
    "nu2": r"$\nu_2 = P_2/D$",
    "alpha": r"task alignment $\alpha$",
    "g1": r"$g_1 = \gamma_1\sqrt{P_1}$",
    "g2": r"$g_2 = \gamma_2\sqrt{P_2}$",
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


def plot_learning_curves(nu2_values, *, alphas=(0.0, 0.5, 1.0), gammas=(0.5, 2.0), coupling=1.0,
                         settings=("scratch", "finetune", "joint"), gamma_applies_to="both", path=None,
                         logy=True, **params):
    """Target test error (noiseless teacher) against ``nu2`` for the three settings.

    One panel per value of ``g`` in ``gammas``; in each, scratch (black, independent of ``alpha``),
    readout fine-tuning (blue) and jointly rich training (red), with one line style per ``alpha``.

    Parameters
    ----------
    nu2_values : array_like
        Target samples per dimension (x axis, log scale).
    alphas : sequence of float
        Task alignments.
    gammas : sequence of float
        Values of ``g`` (``gamma = g/sqrt(P)``), one panel each.
    coupling : float
        ``delta`` of the jointly rich setting.
    settings : sequence of str
        Subset of ``("scratch", "finetune", "joint")``.
    gamma_applies_to : {"both", "g1", "g2"}
        Which feature-learning strength the panel value sets; the other comes from ``params``.
    path : str or path, optional
        Save the figure there.
    logy : bool
        Log scale for the error axis.
    **params
        The remaining parameters of :func:`symtransfer.theory.proportional.target_error`
        (``nu1, lam1, lam2, T1, T2, sigma1, sigma2`` and, if not set by ``gamma_applies_to``, ``g1``/``g2``);
        missing ones take :data:`~symtransfer.theory.proportional.DEFAULT_PARAMETERS`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    nu2 = np.asarray(nu2_values, dtype=np.float64)
    if nu2.ndim != 1 or nu2.size < 2:
        raise ValueError("nu2_values must be a 1-D array with at least 2 values")
    if gamma_applies_to not in ("both", "g1", "g2"):
        raise ValueError(f"gamma_applies_to must be 'both', 'g1' or 'g2', got {gamma_applies_to!r}")
    bad = [s for s in settings if s not in _prop.SETTINGS]
    if bad:
        raise ValueError(f"settings must be among {_prop.SETTINGS}, got {bad}")
    unknown = set(params) - (set(_prop.PARAMETERS) - {"nu2", "alpha", "coupling"})
    if unknown:
        raise ValueError(f"unknown or axis parameters {sorted(unknown)} in params")
    gammas = list(gammas)
    alphas = list(alphas)
    if not gammas or not alphas:
        raise ValueError("alphas and gammas must be non-empty")
    base = {k: v for k, v in _prop.DEFAULT_PARAMETERS.items() if k not in ("nu2", "alpha", "coupling")}
    base.update(params)
    styles = ["-", "--", ":", "-.", (0, (5, 1, 1, 1))]
    fig = _new_figure((4.2 * len(gammas), 3.8))
    axes = fig.subplots(1, len(gammas), squeeze=False)[0]
    for ax, g in zip(axes, gammas):
        p = dict(base)
        if gamma_applies_to in ("both", "g1"):
            p["g1"] = g
        if gamma_applies_to in ("both", "g2"):
            p["g2"] = g
        if "scratch" in settings:
            e = _prop.target_error("scratch", nu2=nu2, alpha=0.0, **p)
            ax.plot(nu2, e, label=_SETTING_LABEL["scratch"], lw=2, **_SETTING_STYLE["scratch"])
        for k, a in enumerate(alphas):
            for s in settings:
                if s == "scratch":
                    continue
                e = _prop.target_error(s, nu2=nu2, alpha=a, coupling=coupling if s == "joint" else None, **p)
                ax.plot(nu2, e, ls=styles[k % len(styles)], label=f"{_SETTING_LABEL[s]}, $\\alpha$={a:g}",
                        **_SETTING_STYLE[s])
        ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel(PARAMETER_LABELS["nu2"])
        ax.set_title(f"g = {g:g} ({gamma_applies_to})" + (f", $\\delta$ = {coupling:g}" if "joint" in settings
                                                          else ""), fontsize="small")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("target test error (noiseless teacher)")
    axes[-1].legend(fontsize="x-small", loc="best")
    _save(fig, path)
    return fig
