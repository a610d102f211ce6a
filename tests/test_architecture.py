"""The package's shape: no import circle between modules, and no module using another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx
import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("parabench", "fixtures")  # the library and the pytest plugin that drives it


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(path): ast.parse(path.read_text(), str(path))
            for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))}


def imported(tree: ast.Module, here: str, known: set[str]) -> dict[str, set[str]]:
    """Each module of ``known`` this one imports (at any depth: a function-level import counts) → names it takes."""
    found: dict[str, set[str]] = {}
    package = here if any(k.startswith(here + ".") for k in known) else here.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    found.setdefault(alias.name, set())
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                if f"{base}.{alias.name}" in known:      # from package import module
                    found.setdefault(f"{base}.{alias.name}", set())
                elif base in known:                       # from module import name
                    found.setdefault(base, set()).add(alias.name)
    return found


def graph(trees: dict[str, ast.Module]) -> networkx.DiGraph:
    known = set(trees)
    edges = networkx.DiGraph()
    edges.add_nodes_from(known)
    for name, tree in trees.items():
        for target in imported(tree, name, known):
            # A package's __init__ that imports its own modules (a registry filling itself) is not a circle.
            if target != name and not target.startswith(name + "."):
                edges.add_edge(name, target)
    return edges


def test_no_module_imports_itself_back_through_others():
    cycles = sorted(networkx.simple_cycles(graph(modules())), key=len)
    assert not cycles, "import circles (function-level imports count):\n" + "\n".join(
        " -> ".join(cycle + [cycle[0]]) for cycle in cycles[:20])


def test_no_module_uses_another_modules_private_names():
    trees = modules()
    known = set(trees)
    found = []
    for name, tree in trees.items():
        imports = imported(tree, name, known)
        for target, names in imports.items():
            found += [f"{name} imports {target}.{taken}" for taken in names
                      if taken.startswith("_") and not taken.startswith("__")]
        # module._private, where ``module`` is a name bound to one of ours by ``import`` / ``from package import``
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in known and alias.asname:
                        aliases[alias.asname] = alias.name
            elif isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    if f"{node.module}.{alias.name}" in known:
                        aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                found.append(f"{name} uses {aliases[node.value.id]}.{node.attr}")
    assert not found, "private names used across modules:\n" + "\n".join(sorted(set(found)))


@pytest.mark.parametrize("planted, expected", [
    ({"p.a": "from p.b import x\n", "p.b": "def f():\n    from p import a\n"}, [["p.a", "p.b"]]),
    ({"p.a": "import p.b\n", "p.b": "x = 1\n"}, []),
])
def test_the_circle_check_sees_a_function_level_import(planted, expected):
    trees = {name: ast.parse(source) for name, source in planted.items()}
    cycles = [sorted(cycle) for cycle in networkx.simple_cycles(graph(trees))]
    assert cycles == expected
