"""The import graph, read from the source with ``ast``: the layers in one order, a thin CLI, no cycles, small files.

Every import counts, including the ones inside functions (a lazy import is still a dependency). The graph covers
the library (``fastmtl``, with ``kernels/`` installed as ``fastmtl.kernels``) and the two trees above it that are
not installed, ``experiments/`` and ``bench/``: they may import the library, the library never imports them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Package name -> source folder (kernels/ is installed as fastmtl.kernels).
ROOTS = {
    "fastmtl": REPO / "fastmtl",
    "fastmtl.kernels": REPO / "kernels",
    "experiments": REPO / "experiments",
    "bench": REPO / "bench",
}
# The layers, lowest first: a module imports modules of its own layer or below, never above. A module belongs to
# the layer of the longest name that is it or one of its packages (the root ``fastmtl`` names only itself, so that
# a new top-level module must be placed here). The package root is base: its public names are imported on first
# use (PEP 562), and a package's imports of its own submodules are re-exports, not dependencies (_is_reexport).
LAYERS = (
    ("kernels", ("fastmtl.kernels",)),
    ("base", ("fastmtl", "fastmtl.options", "fastmtl.files", "fastmtl.runtime", "fastmtl.output", "fastmtl.config",
              "fastmtl.backend", "fastmtl.metrics", "fastmtl.losses")),
    ("layers", ("fastmtl.layers",)),
    ("models", ("fastmtl.models", "fastmtl.registry", "fastmtl.weights", "fastmtl.authors")),
    ("data", ("fastmtl.data",)),
    ("checkpoint", ("fastmtl.checkpoint", "fastmtl.loading")),
    ("inference", ("fastmtl.inference",)),
    ("engine", ("fastmtl.engine",)),
    ("cli", ("fastmtl.cli", "fastmtl.cli_checks", "fastmtl.kernel_report")),
    ("experiments", ("experiments",)),
    ("bench", ("bench",)),
)  # fmt: skip
MAX_LINES = 400  # per source file (STYLE.md: split by concern past about 400)


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


def layer_of(module: str) -> int:
    """The index in LAYERS of ``module``'s layer (its longest matching name), or -1 when no layer names it."""
    best, index = "", -1
    for i, (_, names) in enumerate(LAYERS):
        for name in names:
            below = module.startswith(name + ".") and name != "fastmtl"
            if (module == name or below) and len(name) > len(best):
                best, index = name, i
    return index


def test_every_module_has_a_layer() -> None:
    lost = sorted(m for m in MODULES if layer_of(m) < 0)
    assert not lost, f"modules in no layer: {lost}; add them to LAYERS in tests/test_layering.py"


def test_no_import_goes_up_a_layer() -> None:
    """kernels < base < layers < models < data < checkpoint < inference < engine < cli < experiments < bench: also
    the library never imports experiments/ or bench/, which a wheel does not install."""
    upward = [
        f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
        for m, deps in sorted(GRAPH.items())
        for d in sorted(deps)
        if layer_of(d) > layer_of(m) and not _is_reexport(m, d)
    ]
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


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
    assert lines <= MAX_LINES, f"{MODULES[module].relative_to(REPO)} has {lines} lines: split it by concern"
