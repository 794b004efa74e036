"""Griffe extension for the docs build: reST idioms in docstrings become Markdown.

The package docstrings use reST roles (``:class:`~symtransfer.sim.WideNetwork```, ``:func:`derive```),
which Markdown would print literally. A role whose target is rendered somewhere in the API reference
becomes an autorefs link; any other becomes inline code, so ``mkdocs build --strict`` never meets an
unresolvable cross-reference. The reST literal-block marker ``::`` at the end of a line is reduced
to ``:`` (the indented block after it is already a Markdown code block). Only the docs build loads
this file; the package is untouched.
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:py:)?(class|meth|func|attr|mod|data|exc|obj):`(~?)([^`]+)`")

#: Modules with an API page (docs/api/<name>.md); only objects in them can be link targets.
DOCUMENTED = {
    "symtransfer.activations", "symtransfer.sim", "symtransfer.tasks", "symtransfer.theory.linear",
    "symtransfer.theory.adaptive", "symtransfer.theory.dmft", "symtransfer.theory.proportional",
    "symtransfer.symbolic", "symtransfer.experiments", "symtransfer.datasets", "symtransfer.sweep",
    "symtransfer.plotting",
}


def _resolve(root: griffe.Module, obj: griffe.Object, name: str):
    name = name.strip().removesuffix("()")
    scopes = []
    scope = obj
    while scope is not None:
        scopes.append(scope.path)
        scope = scope.parent
    candidates = [name] + [f"{s}.{name}" for s in scopes]
    for path in candidates:
        if not path.startswith(root.path + ".") and path != root.path:
            continue
        try:
            target = root[path[len(root.path) + 1:]] if path != root.path else root
            if isinstance(target, griffe.Alias):
                target = target.final_target
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
        return target
    return None


def _rendered(target) -> bool:
    """Whether the mkdocstrings options in mkdocs.yml render ``target`` (public, documented, on a page)."""
    if target.is_module:
        return target.path in DOCUMENTED
    parts = target.path.split(".")
    if any(p.startswith("_") for p in parts[1:]):
        return False
    module = target.module.path
    if module not in DOCUMENTED or not target.docstring:
        return False
    parent = target.parent
    while parent is not None and not parent.is_module:
        if not parent.docstring:
            return False
        parent = parent.parent
    return True


def _literal_markers(text: str) -> str:
    """reST ``text::`` before an indented block becomes ``text:``; a line that is only ``::`` goes."""
    text = re.sub(r"(?m)^[ \t]*::[ \t]*$\n?", "", text)
    return re.sub(r"(?m)(\S)::[ \t]*$", r"\1:", text)


class SphinxRoles(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        self._walk(pkg, pkg, set())

    def _walk(self, root, obj, seen) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if obj.docstring is not None:
            text = _ROLE.sub(lambda m: self._replace(root, obj, m), obj.docstring.value)
            obj.docstring.value = _literal_markers(text)
        for member in obj.members.values():
            if not member.is_alias:
                self._walk(root, member, seen)

    def _replace(self, root, obj, m: re.Match) -> str:
        tilde, name = m.group(2), m.group(3)
        shown = name.rsplit(".", 1)[-1] if tilde else name
        target = _resolve(root, obj, name)
        if target is not None and _rendered(target):
            return f"[`{shown}`][{target.path}]"
        return f"`{shown}`"
