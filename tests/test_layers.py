"""The core's folders are its layers: a module imports only from its own
layer or below, and no import loop exists in ``core/`` or ``plugins/``.

Imports are read from the source with :mod:`ast`, so imports inside
functions and under ``TYPE_CHECKING`` count like any other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parents[1]

#: Each part of the core and its layer: a module may import its own layer or lower.
LAYERS: dict[str, int] = {
    # leaves
    "exceptions": 0, "settings": 0, "logs": 0, "metrics": 0, "batching": 0, "templating": 0,
    "retry_after": 0, "tracing": 0,
    "model": 1,
    "security": 2, "amqp": 2, "store": 2,
    # the OMS-side library: the model and the leaves, never the broker, the store or the app
    "client": 2,
    "plugin": 3,
    "delivery": 4, "messaging": 4,
    "app": 5,
}
#: The package's face re-exports from every layer; ``__main__`` runs the command line.
FACADES = {"shipcast", "shipcast.__main__"}
#: Within one layer, which parts may import which (the rest may not import each other).
SIBLINGS = {("store", "security"), ("amqp", "model")}


def module_name(path: Path) -> str:
    """The import name of a file under core/ (``shipcast.…``) or plugins/ (``shipcast.plugins.…``)."""
    top, *rest = path.relative_to(ROOT).with_suffix("").parts
    parts = ["shipcast"] + (["plugins"] if top == "plugins" else []) + rest
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> Iterator[tuple[str, Path]]:
    for folder in ("core", "plugins"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield module_name(path), path


def imports(name: str, path: Path) -> set[str]:
    """Every shipcast module ``path`` imports, relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("shipcast")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.startswith("shipcast"):
                # ``from shipcast.x import y``: y may be a module of its own, else a name in x
                found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                          for alias in node.names}
    return found


MODULES = dict(sources())


def existing(target: str) -> str | None:
    """The module ``target`` names, or the package holding the name it imports."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def part(module: str) -> str | None:
    """The layer part of a core module (``model`` for ``shipcast.model.envelope``)."""
    pieces = module.split(".")
    if module in FACADES or len(pieces) < 2 or pieces[1] == "plugins":
        return None
    return pieces[1]


GRAPH = {name: {t for target in imports(name, path) if (t := existing(target)) and t != name}
         for name, path in MODULES.items()}


def test_every_core_part_has_a_layer() -> None:
    parts = {part(name) for name in MODULES} - {None}
    assert parts == set(LAYERS), f"give each part of core/ a layer: {sorted(parts ^ set(LAYERS))}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if part(n)))
def test_a_core_module_imports_only_its_layer_or_below(name: str) -> None:
    here = part(name)
    assert here is not None
    wrong = []
    for target in sorted(GRAPH[name]):
        if target.startswith("shipcast.plugins"):
            wrong.append(f"{target} (the core knows no plugin)")
            continue
        there = part(target)
        if there is None:  # the package's face: only the version
            if target == "shipcast" and name != "shipcast" and imports_only_version(name):
                continue
            wrong.append(f"{target} (the facade)")
        elif there != here and (LAYERS[there] > LAYERS[here] or (
                LAYERS[there] == LAYERS[here] and (here, there) not in SIBLINGS)):
            wrong.append(f"{target} (layer {LAYERS[there]} {there}, above or beside layer {LAYERS[here]} {here})")
    assert not wrong, f"{name} imports upward: {wrong}"


def imports_only_version(name: str) -> bool:
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "shipcast" and not node.level:
            if {alias.name for alias in node.names} - {"__version__", "metrics", "tracing"}:
                return False
    return True


def test_no_import_cycle() -> None:
    """Tarjan's strongly connected components over every import in core/ and plugins/."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH[node]:
            if target in FACADES or node in FACADES:
                continue
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
                cycles.append(sorted(component))

    for name in sorted(GRAPH):
        if name not in index:
            visit(name)
    assert not cycles, f"import loops: {cycles}"


def test_the_checks_see_an_upward_import(tmp_path: Path) -> None:
    """The reader finds imports inside functions and under TYPE_CHECKING, relative or not."""
    source = tmp_path / "core" / "model" / "probe.py"
    source.parent.mkdir(parents=True)
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                      "    from shipcast.app.services import Services\n"
                      "def f():\n    from ..delivery import retry\n", encoding="utf-8")
    found = imports("shipcast.model.probe", source)
    assert {"shipcast.app.services", "shipcast.delivery.retry"} <= found


def test_every_package_is_installed() -> None:
    """setup.py finds every package under core/ and plugins/: a new layer or
    a new built-in channel's folder needs no line of packaging."""
    import runpy

    found = set(runpy.run_path(str(ROOT / "setup.py"), run_name="not_main")["packages"]())
    packages = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    assert packages <= found, f"setup.py misses: {sorted(packages - found)}"
