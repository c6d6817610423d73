"""The direction of imports is the architecture: no import circles inside ``workbench/``, and no lower layer
imports a higher one.

Every ``import`` statement of every ``workbench/**/*.py`` is read with ``ast`` (those inside functions too, and
``from workbench import X``, resolved through the lazy table of ``workbench/__init__.py`` to the module that
defines ``X``). Layers, low to high::

    basics (paths, classes, viz, system/, the package root) < models < io < inference < data
        < evaluation < training < lab < tools < app < cli

Evaluation sits below training, as timm keeps its metrics in ``timm.utils``: the trainer validates with
evaluation's one validation routine, and nothing in evaluation knows of training.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import workbench

PACKAGE_DIR = Path(workbench.__file__).resolve().parent

LAYERS = ["basics", "models", "io", "inference", "data", "evaluation", "training", "lab", "tools", "app", "cli"]
FOLDER_LAYERS = {"system": "basics"}  # folders whose layer is not their own name
# modules outside a layer's folder, by name
TOP_LEVEL = {
    "workbench": "basics",  # the lazy public API: it imports nothing at import time
    "workbench.paths": "basics",
    "workbench.classes": "basics",
    "workbench.viz": "basics",
    # aliases kept for plugins written against the old docs/plugins.md: they re-export models/
    "workbench.encoders": "models",
    "workbench.model": "models",
    "workbench.upsampling": "models",
    "workbench.decoders": "models",
    "workbench.cli": "cli",
    "workbench.__main__": "cli",
    "workbench.commands": "cli",  # the CLI's command implementations
}

# Imports that break the layer order, as (importer, imported) pairs; the test fails on entries that no
# longer occur, so the list cannot go stale. Empty: keep it so.
KNOWN_LAYER_OFFENDERS: set[tuple[str, str]] = set()
# Import circles known today, as sorted tuples of their modules; same rule.
KNOWN_CIRCLES: set[tuple[str, ...]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py")) if "_bundled" not in p.parts}


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not _is_package(importer):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _lazy_target(name: str) -> str | None:
    module = workbench._LAZY.get(name)
    return f"workbench.{module}" if module else None


def imports_of(name: str) -> set[str]:
    """The workbench modules ``name`` imports, anywhere in its file."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "workbench")
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(name, node)
            if target.split(".")[0] != "workbench":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in MODULES:  # `from .models import registry`
                    out.add(sub)
                elif target == "workbench" and _lazy_target(alias.name):  # `from workbench import create_model`
                    out.add(_lazy_target(alias.name))
                else:
                    out.add(target)
    out.discard(name)
    unknown = out - set(MODULES)
    assert not unknown, f"{name} imports modules that do not exist: {sorted(unknown)}"
    return out


GRAPH = {name: imports_of(name) for name in MODULES}


def layer_of(name: str) -> str:
    if name in TOP_LEVEL:
        return TOP_LEVEL[name]
    parts = name.split(".")
    if len(parts) >= 2 and parts[1] in FOLDER_LAYERS:
        return FOLDER_LAYERS[parts[1]]
    if len(parts) >= 2 and parts[1] in LAYERS:
        return parts[1]
    raise AssertionError(f"{name} belongs to no layer: put it in a layer's folder or add it to TOP_LEVEL in {Path(__file__).name}")


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read():
    assert "workbench.models.registry" in GRAPH["workbench.io.checkpoint"]
    assert "workbench.io.checkpoint" in GRAPH["workbench.inference.predictor"]
    assert GRAPH["workbench"] == set()  # the root imports lazily, by name, through importlib


def test_every_module_has_a_layer():
    for name in MODULES:
        assert layer_of(name) in LAYERS


def test_no_import_circles():
    circles = {tuple(c) for c in _circles(GRAPH)}
    new = circles - KNOWN_CIRCLES
    assert not new, "import circles: " + "; ".join(" <-> ".join(c) for c in sorted(new))
    fixed = KNOWN_CIRCLES - circles
    assert not fixed, f"no longer circles, remove them from KNOWN_CIRCLES: {sorted(fixed)}"


def test_lower_layers_never_import_higher_ones():
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    upward = {(a, b) for a, targets in GRAPH.items() for b in targets if rank[layer_of(b)] > rank[layer_of(a)]}
    new = upward - KNOWN_LAYER_OFFENDERS
    assert not new, "imports against the layer order:\n" + "\n".join(f"  {a} ({layer_of(a)}) imports {b} ({layer_of(b)})" for a, b in sorted(new))
    fixed = KNOWN_LAYER_OFFENDERS - upward
    assert not fixed, f"fixed, remove them from KNOWN_LAYER_OFFENDERS: {sorted(fixed)}"


@pytest.mark.parametrize("layer", ["models", "io", "inference"])
def test_low_layers_keep_their_imports_at_the_top(layer):
    """models/, io/ and inference/ import at module level, except the optional ONNX packages (commented)."""
    allowed = {("workbench.io.onnx", "onnx"), ("workbench.io.onnx", "onnxruntime")}
    late = []
    for name, path in MODULES.items():
        if layer_of(name) != layer:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = set(map(id, tree.body))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
                what = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                if (name, (what or "").split(".")[0]) not in allowed:
                    late.append(f"{name}:{node.lineno} ({what})")
    assert not late, f"imports inside functions: {late}"
