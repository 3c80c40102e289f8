"""The package's shape: every module imports on its own, module-level imports form no cycle, and
modules stay small enough to read.

- Each module is imported in a fresh interpreter: a module that only works when another was
  imported first (a hidden cycle, a missing import) fails here, whatever the import order of the
  rest of the suite.
- The import graph is read statically (ast) from every module's top-level imports, so a cycle is
  found and printed even when it happens to resolve at run time.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = "eager_local"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE
MAX_LINES = 500
# Modules allowed past MAX_LINES, each with the reason.
LONG_MODULES: dict[str, str] = {}


def module_files() -> dict[str, Path]:
    """{dotted module name: file} for every module of the package."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = module_files()


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_imports_on_its_own(module):
    if module.endswith(".__main__"):  # runs the command when imported: run it as `python -m`
        command = ["-m", module.rpartition(".")[0], "--help"]
    else:
        command = ["-c", f"import {module}"]
    r = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"`{' '.join(command)}` in a fresh interpreter fails:\n{r.stderr}"


# --- the static import graph -------------------------------------------------------------------------
def _top_level_imports(tree: ast.Module):
    """Import statements that run when the module loads: module level, also inside if/try blocks,
    but not in functions, classes or `if TYPE_CHECKING:`."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            test = node.test
            if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
                stack.extend(node.orelse)
                continue
            stack.extend(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            stack.extend(node.body + node.orelse + node.finalbody)
            for handler in node.handlers:
                stack.extend(handler.body)


def _targets(module: str, node) -> list[str]:
    """The package modules an import statement loads (the named module or, for `from X import y`,
    X and X.y when y is a submodule)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE]
    if node.level:
        base = module if is_package(module) else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        source = f"{base}.{node.module}" if node.module else base
    else:
        source = node.module or ""
    if source.split(".")[0] != PACKAGE:
        return []
    found = [source]
    found += [f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in MODULES]
    return found


def import_graph() -> dict[str, set[str]]:
    """{module: package modules its loading imports}. Importing a.b.c also runs a/__init__ and
    a/b/__init__: those packages count too, except the ones the importer sits in (they are
    already loading when it runs)."""
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        own = {module.rsplit(".", i)[0] for i in range(module.count(".") + 1)}  # itself and its packages
        for node in _top_level_imports(tree):
            for target in _targets(module, node):
                parts = target.split(".")
                for i in range(1, len(parts) + 1):
                    name = ".".join(parts[:i])
                    if name in MODULES and name not in own:
                        graph[module].add(name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    path: list[str] = []

    def visit(node):
        colour[node] = GREY
        path.append(node)
        for nxt in sorted(graph[node]):
            if colour[nxt] == GREY:
                return path[path.index(nxt):] + [nxt]
            if colour[nxt] == WHITE:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        colour[node] = BLACK
        return None

    for node in sorted(graph):
        if colour[node] == WHITE:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_graph_reader_sees_imports_and_cycles():
    """The checker itself: a known edge is in the graph, and a planted cycle is found."""
    graph = import_graph()
    assert "eager_local.config" in graph["eager_local.cli.options"]
    assert "eager_local.errors" in graph["eager_local.config"]
    planted = {k: set(v) for k, v in graph.items()}
    planted["eager_local.errors"].add("eager_local.cli.options")
    cycle = find_cycle(planted)
    assert cycle and cycle[0] == cycle[-1] and "eager_local.errors" in cycle


def test_module_level_imports_have_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_modules_stay_under_500_lines():
    long = {}
    for module, path in MODULES.items():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES and module not in LONG_MODULES:
            long[module] = lines
    assert not long, f"modules over {MAX_LINES} lines (split them, or list them with a reason): {long}"


def test_every_package_ships():
    """pyproject.toml lists packages one by one: a subpackage missing there is missing from a wheel."""
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT.parent / "pyproject.toml").read_text(encoding="utf-8"))
    listed = set(config["tool"]["setuptools"]["packages"])
    packages = {name for name in MODULES if is_package(name)}
    assert packages <= listed, f"add to pyproject.toml's packages: {sorted(packages - listed)}"
