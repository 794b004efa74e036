"""Rendering the derived systems: complete LaTeX documents, Markdown (Jupyter) and plain text.

Every output form is built from the same ``(title, lines)`` blocks; a line carries its LaTeX and its
plain-text form (:class:`_Ln`), so ``str(system)`` never shows a backslash. This module reads the
systems of :mod:`symtransfer.symbolic.build` and builds nothing.
"""

from __future__ import annotations

import re

import sympy as sp

__all__ = ["saddle_point_blocks", "dmft_blocks", "latex_document", "markdown_document", "text_document"]


def _latex(e) -> str:
    if isinstance(e, sp.Eq):
        return sp.latex(e.lhs) + " = " + sp.latex(e.rhs)
    return sp.latex(e)


def _tex_sfx(sfx: str) -> str:
    return "_{%s}" % sfx[1:] if sfx else ""


_LABEL_WORDS = {"gamma_2": r"\gamma_2", "gamma": r"\gamma", "delta": r"\delta", "->": r"\to", "inf": r"\infty"}


def _limit_label(key: str) -> str:
    """'delta -> inf (linear)' -> math-mode label; words in parentheses become text."""
    head, _, note = key.partition(" (")
    words = [_LABEL_WORDS.get(w, w) for w in head.split()]
    lab = " ".join(words)
    if note:
        note = _tex_escape(note.rstrip(")")).replace("Phihat", r"$\hat\Phi$").replace("Phi,", r"$\Phi$,")
        lab += r"\ \text{(%s)}" % note
    return lab + r":\quad "


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "_": r"\_", "&": r"\&", "%": r"\%", "#": r"\#", "{": r"\{",
                "}": r"\}", "^": r"\^{}", "~": r"\~{}", "$": r"\$"}
_TEX_UNICODE = {"α": r"\alpha", "β": r"\beta", "γ": r"\gamma", "δ": r"\delta", "η": r"\eta", "κ": r"\kappa",
                "λ": r"\lambda", "μ": r"\mu", "ν": r"\nu", "ξ": r"\xi", "π": r"\pi", "ρ": r"\rho", "σ": r"\sigma",
                "τ": r"\tau", "φ": r"\phi", "χ": r"\chi", "Φ": r"\Phi", "Σ": r"\Sigma", "→": r"\to", "≤": r"\leq",
                "≥": r"\geq", "∞": r"\infty", "·": r"\cdot", "×": r"\times", "⊙": r"\odot", "′": "'"}


def _tex_escape(s: str) -> str:
    """Plain text for a LaTeX text-mode argument: specials escaped, Greek and symbols as inline math."""
    out = []
    for ch in s:
        if ch in _TEX_SPECIAL:
            out.append(_TEX_SPECIAL[ch])
        elif ch in _TEX_UNICODE:
            out.append("$%s$" % _TEX_UNICODE[ch])
        else:
            out.append(ch)
    return "".join(out)


def _breakable(line: str) -> str:
    # very long formulas are scaled to the line width rather than overflowing the page
    if len(line) < 220:
        return line
    return r"\resizebox{\linewidth}{!}{$\displaystyle " + line + "$}"


_MACROS = [
    (r"\_", "_"), (r"\&", "&"), (r"\mathbb{E}", "E"), (r"\mathcal{N}", "N"), (r"\dot\kappa", "κ̇"), (r"\hat{\Phi}", "Φ̂"),
    (r"\langle", "⟨"), (r"\rangle", "⟩"), (r"\left", ""), (r"\right", ""), (r"\quad", "   "),
    (r"\sim", "~"), (r"\mid", "|"), (r"\to", "→"), (r"\infty", "∞"), (r"\cdot", "·"), (r"\odot", "⊙"),
    (r"\partial", "∂"), (r"\times", "×"), (r"\leq", "≤"), (r"\geq", "≥"), (r"\sum", "Σ"), (r"\approx", "≈"),
    (r"\gamma", "γ"), (r"\lambda", "λ"), (r"\delta", "δ"), (r"\Phi", "Φ"), (r"\phi", "φ"), (r"\kappa", "κ"),
    (r"\mu", "μ"), (r"\nu", "ν"), (r"\eta", "η"), (r"\chi", "χ"), (r"\rho", "ρ"), (r"\Sigma", "Σ"),
    (r"\Pi", "Π"), (r"\sigma", "σ"), (r"\tau", "τ"), (r"\alpha", "α"), (r"\beta", "β"), (r"\pi", "π"),
    (r"\xi", "ξ"), (r"\theta", "θ"), (r"\operatorname", ""), (r"\mathrm", ""), (r"\text", ""),
    (r"\displaystyle", ""), (r"\limits", ""), (r"\,", " "), (r"\ ", " "), (r"\;", " "), (r"\!", ""),
]

_WORDS = [("Phihat", "Φ̂"), ("Phi", "Φ"), ("phi", "φ"), ("gamma", "γ"), ("lambda", "λ"), ("delta", "δ"),
          ("kappa", "κ"), ("chi", "χ"), ("eta", "η"), ("rho", "ρ"), ("sigma", "σ"), ("mu", "μ"), ("nu", "ν")]


def _group(s: str, i: int):
    """The balanced ``{...}`` group starting at ``s[i]`` and the index after it."""
    depth = 0
    for j in range(i, len(s)):
        depth += {"{": 1, "}": -1}.get(s[j], 0)
        if depth == 0:
            return s[i + 1:j], j + 1
    return s[i + 1:], len(s)


def _unfrac(s: str) -> str:
    out, i = [], 0
    while i < len(s):
        if s.startswith(r"\frac{", i):
            num, j = _group(s, i + 5)
            den, k = _group(s, j) if j < len(s) and s[j] == "{" else ("", j)
            out.append(f"({_unfrac(num)})/({_unfrac(den)})")
            i = k
        elif s.startswith(r"\sqrt{", i):
            arg, j = _group(s, i + 5)
            out.append(f"√({_unfrac(arg)})")
            i = j
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


class _Ln(str):
    """A LaTeX line that also carries its plain-text rendering (``.text``)."""

    text: str

    def __new__(cls, tex, text):
        obj = str.__new__(cls, tex)
        obj.text = text
        return obj


def _both(obj, tex_prefix="", text_prefix="") -> "_Ln":
    """LaTeX and plain text of a SymPy object (``sstr`` for the text, not a LaTeX conversion)."""
    if isinstance(obj, sp.Eq):
        text = f"{sp.sstr(obj.lhs)} = {sp.sstr(obj.rhs)}"
    else:
        text = sp.sstr(obj)
    return _Ln(tex_prefix + _latex(obj), _plain(text_prefix) + " " * bool(text_prefix) + _plain(text))


def _plain(tex: str) -> str:
    """A LaTeX fragment (or a SymPy string form with LaTeX names) as readable plain text: Greek letters
    as Unicode, fractions as a/b, no backslashes."""
    if isinstance(tex, _Ln):
        return tex.text
    s = _unfrac(tex)
    for mac, rep in _MACROS:
        s = s.replace(mac, rep)
    s = re.sub(r"\\([A-Za-z]+)", r"\1", s)
    s = re.sub(r"_\{([^{}]*)\}", r"_\1", s)
    s = re.sub(r"\^\{([^{}]*)\}", r"^\1", s)
    s = s.replace("{", "").replace("}", "")
    for w, rep in _WORDS:
        s = re.sub(r"(?<![A-Za-z])%s(?![a-z])" % w, rep, s)
    return re.sub(r"[ \t]+", " ", s).strip()


def _txt(s: str) -> "_Ln":
    """A sentence: ``\\text{...}`` in LaTeX, itself in plain text."""
    return _Ln(r"\text{%s}" % _tex_escape(s), s)


def _activation_lines(act) -> list:
    return [_both(act.expr, r"\phi(x) = ", "φ(x) ="), _both(act.derivative(), r"\phi'(x) = ", "φ′(x) ="),
            _txt(f"growth at infinity: {act.growth}")]


def _existence_line(act) -> str:
    g = act.growth
    if g == "superlinear":
        return (r"\text{No equilibrium saddle point: } \phi \text{ grows faster than linearly, so the tilt } "
                r"e^{c\,\phi(h)^2} \text{ is not normalisable (2.6); use the gradient-flow system.}")
    if g == "linear":
        return (r"\text{The tilt normalises only in a region } 2 c\, s^2 \kappa_\infty(v) < 1 "
                r"\text{ (docs/adaptive.md (A.3)); beyond it the solution sits on its edge.}")
    return r"\text{Bounded } \phi\text{: the tilt always normalises and the saddle point exists.}"


def _dual_kernel_lines(act) -> list:
    head = r"\kappa(q_{11}, q_{12}, q_{22}) = \mathbb{E}[\phi(u)\phi(v)]"
    dk = act.dual_kernel_expr()
    if dk is None:
        return [head + r"\ \text{(no closed form: polar quadrature)}"]
    lines = [_txt(f"closed form ({act.dual_kernel_family}): {act.dual_kernel_description}"),
             _both(dk, head + " = ", "κ(q11, q12, q22) = E[φ(u)φ(v)] =")]
    dd = act.dual_kernel_expr(derivative=True)
    dhead = r"\dot\kappa(q_{11}, q_{12}, q_{22}) = \mathbb{E}[\phi'(u)\phi'(v)] = \frac{\partial\kappa}{\partial q_{12}}"
    lines.append(_both(dd, dhead + " = ", "κ̇ = E[φ′(u)φ′(v)] = ∂κ/∂q12 =") if dd is not None
                 else dhead + r"\ \text{(quadrature)}")
    return lines


def _latex_document(title, act, intro, blocks, path) -> str:
    phi_tex = sp.latex(act.expr)
    head = r"%s, activation $\phi(x) = %s$" % (_tex_escape(title), phi_tex)
    out = [r"\documentclass{article}", r"\usepackage{amsmath,amssymb,graphicx}",
           r"\usepackage[margin=2cm]{geometry}", r"\allowdisplaybreaks", r"\begin{document}",
           r"\section*{%s}" % head] + list(intro)
    for btitle, lines in blocks:
        if not lines:
            continue
        out.append(r"\subsection*{%s}" % _tex_escape(btitle))
        for line in lines:
            out += [r"\begin{equation*}", _breakable(line), r"\end{equation*}"]
    out.append(r"\end{document}")
    text = "\n".join(out) + "\n"
    if path is not None:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    return text


def _markdown_document(title, act, blocks) -> str:
    out = [f"# {title}, φ(x) = ${sp.latex(act.expr)}$", ""]
    for btitle, lines in blocks:
        if not lines:
            continue
        out += [f"## {btitle}", ""]
        for line in lines:
            out += ["$$", line, "$$", ""]
    return "\n".join(out)


def _text_document(title, blocks) -> str:
    out = [title]
    for btitle, lines in blocks:
        if not lines:
            continue
        out += ["", btitle + ":"]
        out += ["  " + _plain(line) for line in lines]
    return "\n".join(out)


# =================================================================================================
# The blocks of each system
# =================================================================================================
def saddle_point_blocks(system):
    """(title, [lines]) sections of a :class:`~symtransfer.symbolic.SaddlePointSystem`."""
    L = _both
    blocks = []
    if system.source is not None:
        for title, lines in saddle_point_blocks(system.source):
            if title.startswith(("Activation", "Dual kernel", "Existence")):
                continue
            blocks.append(("Source task: " + title, lines))
    act = system.activation
    blocks.append(("Activation", _activation_lines(act)))
    blocks.append(("Existence of the saddle point", [_existence_line(act)]))
    defs = [L(sp.Eq(k, v)) if not isinstance(v, str) else v for k, v in system.definitions.items()]
    if defs:
        blocks.append(("Definitions", defs))
    tag = "" if system.source is None else "Target task: "
    blocks.append((tag + "Action", [L(system.action, "S = ", "S =")]))
    if system.derivatives:
        blocks.append((tag + "Derivatives of the action", [
            L(d, r"\frac{\partial S}{\partial %s} = " % sp.latex(X), f"dS/d{sp.sstr(X)} =")
            for X, d in system.derivatives.items()]))
    blocks.append((tag + "Saddle-point equations", [L(e) for e in system.equations.values()]))
    blocks.append((tag + "Predictor", [L(system.predictor)]))
    if system.limits:
        blocks.append((tag + "Limits", [L(v, _limit_label(k), k + ":") if not isinstance(v, str)
                                        else _Ln(_limit_label(k) + v, k + ": " + _plain(v))
                                        for k, v in system.limits.items()]))
    if system.reduced:
        blocks.append((tag + "Reduced scalar equations (Gaussian single-site measure)",
                       [L(e) for e in system.reduced.values()]))
    blocks.append(("Dual kernel", _dual_kernel_lines(act)))
    return blocks


def dmft_blocks(system):
    """(title, [lines]) sections of a :class:`~symtransfer.symbolic.DMFTSystem`."""
    L = _both
    act = system.activation
    blocks = [("Activation", _activation_lines(act))]
    if system.notes:
        blocks.append(("Notes", [_txt(n) for n in system.notes]))
    blocks.append(("Single-site process", [L(e) for e in system.equations.values()]))
    blocks.append(("Initial conditions", list(system.initial.values())))
    blocks.append(("Order parameters and predictor", [L(e) for e in system.observables.values()]))
    blocks.append(("Fixed point with weight decay", [L(e) for e in system.fixed_point.values()]))
    if system.protocol:
        blocks.append(("Transfer protocol: " + system.setting,
                       [L(v) if not isinstance(v, str) else v for v in system.protocol.values()]))
    if system.closed_forms:
        lines = []
        for name, (eq, desc) in system.closed_forms.items():
            lines.append(_txt(f"{name}: {desc}"))
            lines.append(L(eq))
        blocks.append(("Closed forms of the linear gradient-flow theory (docs/theory.md section 7)", lines))
    blocks.append(("Dual kernel", _dual_kernel_lines(act)))
    return blocks


_INTRO = {
    "equilibrium": (
        r"Generated by \texttt{symtransfer.symbolic.derive}; equation numbers refer to docs/theory.md.",
        r"Matrices are $P\times P$ over the training inputs; $\langle\cdot\rangle_{\mathrm{tilt}}$ is the "
        r"single-site measure (2.4)."),
    "gradient flow": (
        r"Generated by \texttt{symtransfer.symbolic.derive(..., dynamics='gradient\_flow')}; equation "
        r"numbers refer to docs/theory.md. Preactivations are tracked on training and test inputs; "
        r"$\mathbb{E}$ is over the single-site process (a population of neurons).",),
}


def _parts(system):
    """``(title, intro, blocks)`` of a derived system."""
    if system.dynamics == "equilibrium":
        return (f"{system.kind} ({system.dynamics}), setting {system.setting}", _INTRO["equilibrium"],
                saddle_point_blocks(system))
    return f"{system.kind}, setting {system.setting}", _INTRO["gradient flow"], dmft_blocks(system)


latex_document = _latex_document
markdown_document = _markdown_document
text_document = _text_document


class _Document:
    """The output forms shared by the derived systems (the base class of both)."""

    def latex(self, path=None) -> str:
        """A complete, compilable LaTeX document; written to ``path`` when given."""
        title, intro, blocks = _parts(self)
        return _latex_document(title, self.activation, list(intro), blocks, path)

    def markdown(self) -> str:
        """Markdown with ``$$ ... $$`` display math (renders in Jupyter)."""
        title, _, blocks = _parts(self)
        return _markdown_document(title, self.activation, blocks)

    def _repr_markdown_(self):
        return self.markdown()

    def __str__(self) -> str:
        """Readable plain text: every equation with phi and phi' written out (no LaTeX)."""
        title, _, blocks = _parts(self)
        return _text_document(title, blocks)
