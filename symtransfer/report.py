"""The advisor's report: one self-contained HTML page (figures embedded as base64 PNG), with the
same figures written beside it as PNG and PDF (docs/advisor.md).

Figures are drawn on :class:`matplotlib.figure.Figure` through the house helper
``symtransfer.plotting._new_figure`` (Agg canvas, never ``pyplot``), so writing a report changes no
global state and works headless.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import numpy as np

from ._validation import check_output_file

__all__ = ["write_report", "plot_advice", "render_html"]

_STYLE = {"scratch": dict(color="black"), "readout": dict(color="tab:blue", marker="o"),
          "lazy": dict(color="tab:green", marker="s"), "joint": dict(color="tab:red", marker="^")}
_LABEL = {"scratch": "scratch", "readout": "readout fine-tuning", "lazy": "lazy fine-tuning",
          "joint": "jointly rich"}


def _best_by(rows, key):
    """For each value of ``key``, the row of lowest error."""
    out = {}
    for r in rows:
        k = r.get(key)
        if k is None:
            continue
        if k not in out or r["error"] < out[k]["error"]:
            out[k] = r
    return [out[k] for k in sorted(out)]


def plot_advice(advice):
    """The error-vs-setting figure: (a) predicted target error against the source strength
    ``gamma_1`` for each protocol (best over the other settings), scratch as a band; (b) the jointly
    rich rows against their second setting (``gamma_2`` for gradient flow, ``delta`` at
    equilibrium) at the best ``gamma_1``; (c) the predicted gain over scratch of each protocol's best
    setting. Error bars are the rows' ``stderr`` (gains: the paired ``gain_stderr``)."""
    from .plotting import _new_figure

    fig = _new_figure((13.0, 4.2))
    ax1, ax2, ax3 = fig.subplots(1, 3)
    base = advice.scratch
    for ax in (ax1, ax2):
        ax.axhspan(base["error"] - base["stderr"], base["error"] + base["stderr"], color="0.85", zorder=0)
        ax.axhline(base["error"], color="black", lw=1.2, label="scratch (best)")
    for proto in ("readout", "lazy", "joint"):
        rows = _best_by([r for r in advice.rows if r["protocol"] == proto], "gamma1")
        if not rows:
            continue
        x = [r["gamma1"] for r in rows]
        ax1.errorbar(x, [r["error"] for r in rows], yerr=[r["stderr"] for r in rows], capsize=3,
                     label=_LABEL[proto], **_STYLE[proto])
    _log_ticks(ax1, [r["gamma1"] for r in advice.rows])
    ax1.set_xlabel(r"source strength $\gamma_1$")
    ax1.set_ylabel("predicted target test error")
    ax1.set_title("(a) error vs source strength")
    ax1.legend(fontsize=8)

    joint = [r for r in advice.rows if r["protocol"] == "joint"]
    gf = advice.params.get("dynamics") == "gradient_flow"
    second = "gamma2" if gf else "coupling"
    if joint:
        g1 = min(joint, key=lambda r: r["error"])["gamma1"]
        rows = _best_by([r for r in joint if r["gamma1"] == g1], second)
        ax2.errorbar([r[second] for r in rows], [r["error"] for r in rows], yerr=[r["stderr"] for r in rows],
                     capsize=3, label=rf"jointly rich, $\gamma_1$ = {g1:.3g}", **_STYLE["joint"])
        _log_ticks(ax2, [r[second] for r in rows])
        ax2.legend(fontsize=8)
    ax2.set_xlabel(r"target strength $\gamma_2$" if gf else r"coupling $\delta$")
    ax2.set_title("(b) jointly rich: error vs " + ("target strength" if gf else "coupling"))

    protos = [p for p in ("readout", "lazy", "joint") if any(r["protocol"] == p for r in advice.rows)]
    best = [min((r for r in advice.rows if r["protocol"] == p), key=lambda r: r["error"]) for p in protos]
    colors = [_STYLE[p]["color"] for p in protos]
    ax3.bar(range(len(best)), [r["gain"] for r in best], yerr=[2 * r["gain_stderr"] for r in best],
            color=colors, capsize=4)
    ax3.axhline(0.0, color="black", lw=1)
    ax3.set_xticks(range(len(best)), [_LABEL[p] for p in protos], fontsize=8)
    ax3.set_ylabel("predicted gain over scratch (± 2 s.e.)")
    ax3.set_title("(c) gain of each protocol's best setting")
    return fig


def _log_ticks(ax, values):
    """Ticks at the grid values themselves: a log axis over less than a decade otherwise labels
    every minor tick."""
    from matplotlib.ticker import NullFormatter, NullLocator

    vals = sorted(v for v in set(values) if v is not None and math.isfinite(v) and v > 0)
    if not vals:
        return
    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(vals, [f"{v:.3g}" for v in vals])


def _png_base64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _num(v, digits=4):
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isinf(v):
            return "∞"
        if math.isnan(v):
            return "n/a"
        return f"{v:.{digits}g}"
    return html.escape(str(v))


def render_html(advice, figure_png_b64: str) -> str:
    """The report as one HTML string (no external resources)."""
    esc = html.escape
    best = advice.best
    rec = advice.recommendation
    gain = (f"{best['gain']:+.4g} ± {best['gain_stderr']:.2g}" if best["protocol"] != "scratch" else "–")
    cols = ["protocol", "gamma1", "gamma2", "coupling", "pretrain_time", "target_time", "error", "stderr", "gain",
            "gain_stderr", "seconds", "method", "note"]
    head = "".join(f"<th>{c}</th>" for c in cols)
    body = []
    for r in advice.rows:
        cls = ' class="best"' if r is best else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_num(r.get(c))}</td>" for c in cols) + "</tr>")
    params = "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in advice.params.items())
    ver = ""
    if advice.verification:
        v = advice.verification
        vrows = "".join(
            f"<tr><td>{esc(x['protocol'])}</td><td>{esc(x['setting'])}</td><td>{_num(x['theory'])} ± "
            f"{_num(x['theory_stderr'], 2)}</td><td>{_num(x['simulated'])} ± {_num(x['simulated_stderr'], 2)}</td>"
            f"<td>{'yes' if x['agree'] else 'no'}</td><td>{esc(x.get('note', ''))}</td></tr>" for x in v["rows"])
        ver = (f"<h2>Verification by simulation</h2><p>Width-{v['width']} networks, {v['steps']} steps, "
               f"{v['seeds']} seed(s), {v['seconds']:.1f} s. Verdict agrees with the simulation: "
               f"<b>{'yes' if v['verdict_agrees'] else 'no'}</b>.</p>"
               f"<table><tr><th>protocol</th><th>setting</th><th>theory</th><th>simulated</th><th>agree</th>"
               f"<th>note</th></tr>{vrows}</table>")
    align = advice.alignment
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>symtransfer advice: should I pretrain?</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; max-width: 1400px; color: #222; }}
#verdict {{ border-left: 6px solid #c33; background: #fdf3f3; padding: 0.8em 1em; font-size: 1.1em; }}
table {{ border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 2px 6px; text-align: right; }}
tr.best td {{ background: #fff2b3; font-weight: bold; }}
img {{ max-width: 100%; }}
</style></head>
<body>
<h1>Should I pretrain?</h1>
<div id="verdict">{esc(advice.verdict)}</div>
<h2>Recommendation</h2>
<p id="recommendation"><b>{esc(rec)}</b>: predicted target error {_num(best['error'])} ± {_num(best['stderr'], 2)}
(scratch: {_num(advice.scratch['error'])} ± {_num(advice.scratch['stderr'], 2)}); predicted gain {esc(gain)}.
Measured task alignment A = {_num(align, 3)}. Dynamics: {esc(str(advice.params.get('dynamics')))},
activation: {esc(str(advice.params.get('activation')))}, evaluation: {esc(str(advice.params.get('evaluation')))}.
Total time {advice.seconds:.1f} s.</p>
<h2>Predicted error against the settings</h2>
<img id="fig-curves" alt="predicted target error against the settings"
 src="data:image/png;base64,{figure_png_b64}">
<h2>All rows</h2>
<table><tr>{head}</tr>{''.join(body)}</table>
{ver}
<h2>Parameters</h2>
<table>{params}</table>
<p>Conventions: coupling ∞ is readout fine-tuning; under gradient flow, jointly rich transfer is the continued
flow from the source hidden weights with a fresh readout (δ = 0); at equilibrium δ = 0 is training from scratch.
Lazy fine-tuning is kernel regression with the tangent kernel Φ<sub>1</sub> + G<sub>1</sub>⊙K.</p>
</body></html>
"""


def write_report(advice, path, *, figures=True) -> Path:
    """Write the HTML report to ``path``; with ``figures`` also ``<stem>-curves.png`` and ``.pdf``
    beside it. Returns the HTML path. The output path is checked before anything is drawn."""
    p = check_output_file(path, "report path")
    if p.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"report path must end in .html, got {str(p)!r}")
    fig = plot_advice(advice)
    b64 = _png_base64(fig)
    if figures:
        stem = p.with_suffix("")
        fig.savefig(f"{stem}-curves.png", dpi=150)
        fig.savefig(f"{stem}-curves.pdf")
    p.write_text(render_html(advice, b64), encoding="utf-8")
    return p
