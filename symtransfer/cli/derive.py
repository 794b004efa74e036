"""``symtransfer derive --activation SPEC --setting S [--latex FILE | --markdown]``: the equations of
:func:`symtransfer.symbolic.derive` as text, Markdown or a LaTeX document."""

from __future__ import annotations

import argparse

from .._validation import check_output_file

__all__ = ["derive_cli", "add_parser", "run"]


def derive_cli(activation: str, setting: str, latex: str | None = None, markdown: bool = False,
               dynamics: str = "equilibrium") -> str:
    """Back end of ``symtransfer derive --activation SPEC --setting S [--latex FILE | --markdown]``.

    Returns the text to print: the Markdown document with ``markdown=True``, a confirmation line after
    writing the LaTeX document to ``latex``, and otherwise the plain-text document.
    """
    from ..symbolic import SETTINGS, canonical_setting, derive

    if latex is not None and markdown:
        raise ValueError("--latex and --markdown are mutually exclusive")
    try:
        canonical_setting(setting)
    except ValueError:
        raise ValueError(f"--setting must be one of {', '.join(SETTINGS)} (or 'single'), got {setting!r}") from None
    system = derive(setting, activation, dynamics=dynamics)
    if latex is not None:
        system.latex(latex)
        return f"wrote LaTeX document ({setting}, {dynamics}, phi = {system.activation.expr}) to {latex}"
    if markdown:
        return system.markdown()
    return str(system)


def add_parser(sub):
    p = sub.add_parser("derive", help="equilibrium saddle point or gradient-flow DMFT equations; --latex FILE or "
                       "--markdown", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--activation", required=True, help="registered name or formula in x, e.g. 'x*exp(-x**2/4)'")
    p.add_argument("--setting", required=True, choices=["scratch", "single", "finetune", "lazy_finetune", "joint"],
                   help="'single' is the old name of 'scratch'")
    p.add_argument("--dynamics", default="equilibrium", choices=["equilibrium", "gradient_flow"],
                   help="equilibrium (Langevin, T > 0) saddle point, or the gradient-flow DMFT (default equilibrium)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--latex", metavar="FILE", help="write a complete LaTeX document to FILE")
    out.add_argument("--markdown", action="store_true", help="print Markdown instead of plain text")
    return p


def run(args) -> int:
    if args.latex is not None:
        check_output_file(args.latex, "--latex")
    print(derive_cli(args.activation, args.setting, latex=args.latex, markdown=args.markdown,
                     dynamics=args.dynamics))
    return 0
