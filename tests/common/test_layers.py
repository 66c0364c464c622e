"""Imports point one way: entry points (codiray/) on top; training/ and infra/; models/ and
pipelines/; the shared ground (common/) at the bottom — and no module imports back up or in a cycle.

Read from the source with `ast` (every import, also the ones inside functions), not from what a
test run happens to have imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "pipelines", "models", "training", "infra", "codiray")
# What each package may import from the others (itself always allowed).
ALLOWED = {
    "common": set(),
    "pipelines": {"common"},
    "models": {"common"},
    "training": {"common", "pipelines", "models"},
    "infra": {"common"},
    "codiray": {"common", "pipelines", "models", "training", "infra"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports (resolved to the longest known module name)."""
    found = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            parts = target.split(".")
            for cut in range(len(parts), 0, -1):
                candidate = ".".join(parts[:cut])
                if candidate in known:
                    if candidate != name:
                        found.add(candidate)
                    break
    return found


GRAPH = {name: _imports(name, path, set(_modules())) for name, path in _modules().items()}


@pytest.mark.parametrize("package", PACKAGES)
def test_no_package_imports_upward(package):
    bad = sorted(f"{mod} -> {dep}" for mod, deps in GRAPH.items() if mod.split(".")[0] == package
                 for dep in deps if dep.split(".")[0] not in ALLOWED[package] | {package})
    assert not bad, f"{package} may import only {sorted(ALLOWED[package])}: {bad}"


def test_no_import_cycles():
    # Package __init__ edges to their own submodules are re-exports, not cycles of meaning.
    graph = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in GRAPH.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_a_planted_upward_import(tmp_path):
    planted = tmp_path / "bad.py"
    planted.write_text("def f():\n    from codiray.cli import COMMANDS\n")
    assert "codiray.cli" in _imports("common.bad", planted, set(_modules()))
