"""The package's import graph has no circle: no module imports one that imports it back,
directly or through others. Read from the source, so imports under ``TYPE_CHECKING`` and
imports deferred into functions count too (a circle hidden that way is still a circle)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[2]
# The distribution maps three folders onto one import root (pyproject's package-dir).
PACKAGE_DIRS = {"tether": "sdk", "tether.engine": "engine", "tether.projections": "projections"}


def module_files() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports (``from tether.x import y`` counts as
    importing ``tether.x.y`` when that is a module, else ``tether.x``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in known else node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{name} uses a relative import; import from tether.*")
    return {target for target in found if target in known and target != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_of_the_package_imports_one_that_imports_it_back() -> None:
    files = module_files()
    graph = {name: imports_of(name, path, set(files)) for name, path in files.items()}
    assert "tether.app" in graph and "tether.engine.state" in graph  # the walk found them
    circles = cycles(graph)
    report = "\n".join(
        f"- {', '.join(c)}: "
        + "; ".join(f"{m} -> {', '.join(sorted(graph[m] & set(c)))}" for m in c)
        for c in circles
    )
    assert not circles, f"import circles:\n{report}"


def test_the_layers_point_one_way() -> None:
    """engine imports neither projections nor the SDK; projections do not import the SDK;
    no module imports the application object back but the outer hosts."""
    files = module_files()
    hosts = ("tether.operator", "tether.http", "tether.cli")
    for name, path in files.items():
        targets = imports_of(name, path, set(files))
        if name.startswith("tether.engine"):
            assert not {t for t in targets if not t.startswith("tether.engine")}, name
        elif name.startswith("tether.projections"):
            assert all(t.startswith(("tether.engine", "tether.projections")) for t in targets)
        elif name != "tether" and not name.startswith(hosts):
            assert "tether.app" not in targets, f"{name} imports the app back"
