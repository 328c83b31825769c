"""The import graph, read from the source with ``ast``: kernels at the bottom, a thin CLI, no cycles.

Every import counts, including the ones inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Package name -> source folder (kernels/ is installed as fastmtl.kernels).
ROOTS = {"fastmtl": REPO / "fastmtl", "fastmtl.kernels": REPO / "kernels"}
ABOVE_KERNELS = (
    "fastmtl.layers",
    "fastmtl.models",
    "fastmtl.engine",
    "fastmtl.data",
    "fastmtl.inference",
    "fastmtl.checkpoint",
)


def _modules() -> dict[str, Path]:
    found = {}
    for package, root in ROOTS.items():
        for path in root.rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


MODULES = _modules()


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """Absolute name of a ``from ... import`` target (relative imports resolved against ``module``)."""
    if not node.level:
        return node.module or ""
    package = module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]
    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
    return f"{base}.{node.module}" if node.module else base


def imports_of(module: str) -> set[str]:
    """The fastmtl modules ``module`` imports (for ``from pkg import name``, ``pkg.name`` when it is a module)."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            out.add(target)
            out.update(f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES)
    return {m for m in out if m in MODULES and m != module}


GRAPH = {m: imports_of(m) for m in MODULES}


def test_kernels_import_nothing_above_them() -> None:
    bad = {
        m: sorted(i for i in deps if i.startswith(ABOVE_KERNELS))
        for m, deps in GRAPH.items()
        if m.startswith("fastmtl.kernels")
    }
    assert not {m: d for m, d in bad.items() if d}, "kernels/ must not import layers, models, engine or data"


def test_cli_imports_no_dataset_internals() -> None:
    data = sorted(i for i in GRAPH["fastmtl.cli"] if i.startswith("fastmtl.data."))
    assert not data, f"fastmtl/cli.py imports dataset modules {data}: ask the dataset through fastmtl.data"


def _cycle_from(start: str) -> list[str] | None:
    """A shortest import cycle through ``start`` (breadth-first), or None. Package ``__init__`` re-exports of
    their own submodules are not edges back up (importing a submodule runs its package's ``__init__`` anyway)."""
    frontier, parents = [start], {start: None}
    while frontier:
        nxt = []
        for m in frontier:
            for dep in sorted(GRAPH[m]):
                if dep == start:
                    path = [m]
                    while parents[path[-1]] is not None:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, m, start]
                if dep not in parents:
                    parents[dep] = m
                    nxt.append(dep)
        frontier = nxt
    return None


def _is_reexport(a: str, b: str) -> bool:
    return MODULES[a].name == "__init__.py" and b.startswith(a + ".")


def test_no_module_cycles() -> None:
    # Edges from a package's __init__ to its own submodules are how packages expose them, not dependencies.
    for m in GRAPH:
        GRAPH[m] = {d for d in GRAPH[m] if not _is_reexport(m, d)}
    cycles = set()
    for m in sorted(GRAPH):
        if cycle := _cycle_from(m):
            ring = cycle[:-1]
            first = ring.index(min(ring))  # one rotation per cycle
            cycles.add(tuple(ring[first:] + ring[:first] + [ring[first]]))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in sorted(cycles))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_source_files_stay_small(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= 420, f"{MODULES[module].relative_to(REPO)} has {lines} lines: split it by concern"
