"""The layers of src/anycore, enforced: every import (TYPE_CHECKING and function-level
ones included) goes down or sideways within its layer, never up, and no two modules
import each other, directly or around a cycle. See ARCHITECTURE.md ("Layers").

    L0  pure (no asyncio, no sockets): errors, wire, config, lifecycle, log, ports, the cores
    L1  adapters: gateway, supervisor, release, cluster, worker, and the bases framing, tasks
    L2  node/
    L3  cli/ and the public package facade (anycore/__init__.py)
"""

from __future__ import annotations

import ast
import pathlib
from collections import defaultdict

SRC = pathlib.Path(__file__).resolve().parents[2] / "src"

L0 = {
    "anycore.errors", "anycore.wire", "anycore.config", "anycore.lifecycle", "anycore.log", "anycore.ports",
    "anycore.commands", "anycore.router.core", "anycore.router.crash", "anycore.scaler.core",
    "anycore.supervisor.policy", "anycore.release.deploy", "anycore.release.envspec",
    "anycore.cluster.membership", "anycore.gateway.chunked", "anycore.gateway.states",
    "anycore.stats", "anycore.dataplane", "anycore.admin.routes", "anycore.cluster.jobpolicy",
}
L1_PACKAGES = ("anycore.admin", "anycore.gateway", "anycore.supervisor", "anycore.release", "anycore.cluster", "anycore.worker",
               "anycore.router", "anycore.scaler")
L1_BASES = {"anycore.framing", "anycore.tasks"}
IMPURE = {"asyncio", "socket", "selectors", "subprocess", "threading", "uvloop", "nats"}
# Sideways imports forbidden inside L1: the gateway and the supervisor meet only through
# ports (node/ joins them), so the data plane can move to another process.
APART = [("anycore.gateway", "anycore.supervisor"), ("anycore.supervisor", "anycore.gateway")]


def modules() -> dict[str, pathlib.Path]:
    found = {}
    for path in (SRC / "anycore").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(mods: dict[str, pathlib.Path]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(imports among our modules, top-level third-party/stdlib packages) per module."""
    ours: dict[str, set[str]] = defaultdict(set)
    other: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in mods else module
                           for alias in node.names]
            for target in targets:
                if target.split(".")[0] == "anycore":
                    while target not in mods and "." in target:
                        target = target.rpartition(".")[0]
                    if target != name:
                        ours[name].add(target)
                else:
                    other[name].add(target.split(".")[0])
    return ours, other


def layer(name: str) -> int:
    if name in L0:
        return 0
    if name in L1_BASES or name in L1_PACKAGES or name.startswith(tuple(p + "." for p in L1_PACKAGES)):
        return 1
    if name == "anycore.node" or name.startswith("anycore.node."):
        return 2
    if name == "anycore.cli" or name.startswith("anycore.cli.") or name == "anycore":
        return 3
    raise AssertionError(f"{name} is in no layer: add it to tests/unit/test_layers.py and ARCHITECTURE.md")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer() -> None:
    for name in modules():
        layer(name)


def test_no_import_goes_up_a_layer_or_across_the_gateway_supervisor_seam() -> None:
    ours, _ = imports(modules())
    wrong = []
    for name, targets in sorted(ours.items()):
        for target in sorted(targets):
            if layer(target) > layer(name):
                wrong.append(f"{name} (L{layer(name)}) imports {target} (L{layer(target)})")
            for a, b in APART:
                if name.startswith(a + ".") and target.startswith(b + "."):
                    wrong.append(f"{name} imports {target}: {a} and {b} meet only through anycore.ports")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    ours, _ = imports(modules())
    found = cycles(ours)
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_layer_zero_is_pure() -> None:
    mods = modules()
    _, other = imports(mods)
    wrong = [f"{name} imports {sorted(other[name] & IMPURE)}" for name in sorted(L0 & set(mods)) if other[name] & IMPURE]
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_a_cycle_and_an_upward_import() -> None:
    """The checks above would pass on a walker that found nothing: prove it finds things."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    ours, _ = imports(modules())
    assert "anycore.wire" in ours["anycore.framing"]  # a from-import of a name
    assert "anycore.node.node" in ours["anycore.cli.main"]
    assert layer("anycore.node.service") > layer("anycore.gateway.http") > layer("anycore.wire")
