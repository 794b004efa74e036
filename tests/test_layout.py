"""The package layout (docs/architecture.md): no import cycles, leaves that import no domain module,
and argument parsing, printing and config reading only in ``symtransfer/cli/``.

Every module is parsed with :mod:`ast` (nothing is imported), so the test reads the source as
written: module-level imports (run when the module is imported) and imports inside functions
(run when the function is called) are collected separately.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "symtransfer"

#: Modules that import nothing from the rest of the package except the basic helpers below.
LEAVES = ("plotting", "activations", "errors", "_validation", "base")
#: What a leaf may import: error types, validation, the RNG kernels and the safe formula parser.
BASIC = {"errors", "_validation", "_rng", "parsing"}
#: Old import paths kept as re-exports of the CLI package (nothing inside the package imports them).
CLI_SHIMS = {"advise_cli", "__main__"}


# --------------------------------------------------------------------------- reading the package
def module_name(path: Path, root: Path) -> str:
    """Dotted name relative to the package root: ``theory/linear.py`` -> ``theory.linear``,
    ``cli/__init__.py`` -> ``cli``, the root ``__init__.py`` -> ``""``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(node: ast.ImportFrom | ast.Import, current: str, is_package: bool, modules: set, top: str):
    """The package modules an import statement names (relative or ``top.``-absolute)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
        out = []
        for n in names:
            if n == top or n.startswith(top + "."):
                out.append(n[len(top) + 1:] if n != top else "")
        return [m for m in out if m in modules]
    if node.level == 0:
        if node.module != top and not (node.module or "").startswith(top + "."):
            return []
        base = node.module[len(top) + 1:] if node.module != top else ""
    else:
        pkg = current.split(".") if current else []
        if not is_package:
            pkg = pkg[:-1]
        up = node.level - 1
        if up > len(pkg):
            raise ValueError(f"{current}: relative import beyond the package")
        pkg = pkg[:len(pkg) - up]
        base = ".".join(pkg + ([node.module] if node.module else []))
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}" if base else alias.name
        # ``from .theory import linear`` imports the submodule; ``from .x import name`` the module x
        out.append(sub if sub in modules else base)
    return [m for m in out if m in modules]


class _Imports(ast.NodeVisitor):
    def __init__(self):
        self.module_level, self.function_level = [], []
        self.depth = 0
        self.prints, self.argparse, self.config = [], [], []

    def _function(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_If(self, node):
        # ``if TYPE_CHECKING:`` blocks never run
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def _import(self, node):
        (self.function_level if self.depth else self.module_level).append(node)
        names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module
                                                 else [])
        if any(n == "argparse" or n.startswith("argparse.") for n in names):
            self.argparse.append(node.lineno)
        parts = {p for n in names for p in n.split(".")}
        if parts & {"tomllib", "tomli", "_config"}:
            self.config.append(node.lineno)

    visit_Import = visit_ImportFrom = _import

    def visit_Call(self, node):
        if isinstance(node.func, ast.Name) and node.func.id == "print":
            self.prints.append(node.lineno)
        self.generic_visit(node)


def read_package(root: Path, top: str = "symtransfer") -> dict:
    """``{module: info}`` with the module-level and function-level import edges inside the package
    and the lines that import argparse, read configs or call print."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py")) if "__pycache__" not in p.parts}
    modules = set(files)
    info = {}
    for name, path in files.items():
        visitor = _Imports()
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        is_package = path.name == "__init__.py"

        def edges(nodes):
            out = set()
            for n in nodes:
                out.update(_resolve(n, name, is_package, modules, top))
            out.discard(name)
            return out

        info[name] = dict(path=path, module_level=edges(visitor.module_level),
                          function_level=edges(visitor.function_level), prints=visitor.prints,
                          argparse=visitor.argparse, config=visitor.config)
    return info


def find_cycle(graph: dict):
    """One cycle of the directed graph ``{node: successors}`` as ``[a, b, ..., a]``, or ``None``."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = {n: WHITE for n in graph}
    stack = []

    def visit(n):
        colour[n] = GREY
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if colour.get(m, WHITE) == GREY:
                return stack[stack.index(m):] + [m]
            if colour.get(m, WHITE) == WHITE:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        colour[n] = BLACK
        return None

    for n in sorted(graph):
        if colour[n] == WHITE:
            found = visit(n)
            if found:
                return found
    return None


def _label(m):
    return "symtransfer" + (f".{m}" if m else "")


def _in_cli(m):
    return m == "cli" or m.startswith("cli.")


INFO = read_package(PACKAGE)


# --------------------------------------------------------------------------- the checks
def test_no_import_cycle_at_module_level():
    cycle = find_cycle({m: i["module_level"] for m, i in INFO.items()})
    assert cycle is None, "module-level import cycle: " + " -> ".join(map(_label, cycle))


def test_no_import_cycle_even_through_imports_inside_functions():
    # A lazy import inside a function runs later, so it cannot deadlock an import, but a cycle through
    # it still means two modules that need each other. The package root re-exports everything and
    # is left out (nothing imports it back).
    both = {m: (i["module_level"] | i["function_level"]) - {""} for m, i in INFO.items() if m != ""}
    cycle = find_cycle(both)
    assert cycle is None, "import cycle (counting imports inside functions): " + " -> ".join(map(_label, cycle))


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaves_import_no_domain_module(leaf):
    info = INFO[leaf]
    bad = sorted((info["module_level"] | info["function_level"]) - BASIC)
    assert not bad, f"{_label(leaf)} imports {', '.join(map(_label, bad))} (allowed: {sorted(BASIC)})"


def test_plotting_draws_what_it_is_given():
    # the one edge between them points from the theory to the figures, and only lazily
    prop = INFO["theory.proportional"]
    assert "plotting" not in prop["module_level"] and "plotting" in prop["function_level"]
    assert not (INFO["plotting"]["module_level"] | INFO["plotting"]["function_level"])


def test_only_the_cli_imports_the_cli():
    bad = {m: sorted(filter(_in_cli, i["module_level"] | i["function_level"]))
           for m, i in INFO.items() if not _in_cli(m) and m not in CLI_SHIMS and m != ""}
    bad = {m: v for m, v in bad.items() if v}
    assert not bad, f"domain modules importing the CLI: {bad}"
    for shim in CLI_SHIMS - {"__main__"}:
        users = [m for m, i in INFO.items() if shim in i["module_level"] | i["function_level"]]
        assert not users, f"{_label(shim)} is an old import path; {users} must import symtransfer.cli instead"


@pytest.mark.parametrize("module", sorted(m for m in INFO if not _in_cli(m) and m not in CLI_SHIMS))
def test_no_argparse_print_or_config_reading_outside_the_cli(module):
    info = INFO[module]
    where = f"{info['path'].relative_to(PACKAGE.parent)}"
    assert not info["argparse"], f"{where} imports argparse at lines {info['argparse']}"
    assert not info["config"], f"{where} reads config files (tomllib/_config) at lines {info['config']}"
    assert not info["prints"], f"{where} calls print() at lines {info['prints']}: return text or use warnings"


def test_cli_is_a_package_with_one_module_per_command():
    from symtransfer.cli import _COMMANDS, build_parser

    assert (PACKAGE / "cli" / "__init__.py").is_file() and not (PACKAGE / "cli.py").exists()
    assert (PACKAGE / "symbolic" / "build.py").is_file() and (PACKAGE / "symbolic" / "render.py").is_file()
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert list(sub.choices) == list(_COMMANDS)
    for module in set(_COMMANDS.values()):
        assert callable(module.add_parser) and callable(module.run)


# --------------------------------------------------------------------------- the checks can fail
def test_cycle_finder_on_synthetic_graphs():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]
    assert find_cycle({"x": {"y"}, "y": set(), "p": {"q"}, "q": {"p"}}) == ["p", "q", "p"]


def test_a_broken_layout_is_detected(tmp_path):
    pkg = tmp_path / "symtransfer"
    (pkg / "theory").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .plotting import draw\n")
    (pkg / "plotting.py").write_text("from .theory import proportional\n\ndef draw():\n    print('x')\n")
    (pkg / "theory" / "__init__.py").write_text("")
    (pkg / "theory" / "proportional.py").write_text(
        "import argparse\n\nfrom .. import plotting\n\ndef f():\n    from .._config import load_config\n")
    (pkg / "_config.py").write_text("import tomllib\n")
    info = read_package(pkg)
    assert info["plotting"]["module_level"] == {"theory.proportional"}
    assert info["theory.proportional"]["module_level"] == {"plotting"}
    assert info["theory.proportional"]["function_level"] == {"_config"}
    assert find_cycle({m: i["module_level"] for m, i in info.items()}) == ["plotting", "theory.proportional",
                                                                           "plotting"]
    assert info["plotting"]["prints"] == [4]
    assert info["theory.proportional"]["argparse"] == [1] and info["theory.proportional"]["config"] == [6]
    assert info["_config"]["config"] == [1]
