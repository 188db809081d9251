"""The server's packages import one another only as the layering table allows, with no cycle.

The table is the one in ``descriptor_server``'s package docstring (read here, so the
rule and the check cannot drift apart). The imports are read from the source (ast),
lazy ones inside functions and ``TYPE_CHECKING`` ones included, since a lazy import
is still a dependency.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "server" / "descriptor_server"
TOP = "descriptor_server"

#: Third-party modules the core must not import (it is the statter, not a transport).
CORE_FORBIDDEN = ("grpc", "grpc_health", "grpc_reflection", "grpc_status", "prometheus_client", "opentelemetry")
#: Nor may the config.
CONFIG_FORBIDDEN = ("grpc", "prometheus_client", "opentelemetry")

#: Today's logger names: in every log line, so a move must not rename one.
PINNED_LOGGERS = {
    "descriptor_server",
    "descriptor_server.calls",
    "descriptor_server.audit",
    "descriptor_server.auth",
    "descriptor_server.service",
    "descriptor_server.statter",
    "descriptor_server.cache",
    "descriptor_server.caches.redis",
    "descriptor_server.caches.nearcache",
    "descriptor_server.backends.bounded",
    "descriptor_server.backends.filesystem",
    "descriptor_server.backends.layout",
    "descriptor_server.backends.registry",
    "descriptor_server.backends.s3",
    "descriptor_server.backends.descriptorservice",
}


def module_name(path: Path) -> str:
    parts = [TOP, *path.relative_to(ROOT).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py")) if "_proto" not in p.parts}


MODULES = modules()


def imports(name: str, path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for every import of a module of the server in ``path``, resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == TOP or alias.name.startswith(TOP + "."):
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if not (target == TOP or target.startswith(TOP + ".")):
                continue
            # ``from pkg import sub`` imports the submodule; ``from mod import name`` the module.
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
            if subs:
                for sub in subs:
                    yield node.lineno, sub
                if len(subs) == len(node.names):
                    continue
            yield node.lineno, target


def third_party(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            yield node.lineno, node.module


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layering_table() -> dict[str, set[str]]:
    """The ``may import`` column of the table in the package docstring: layer -> layers."""
    doc = ast.get_docstring(ast.parse((ROOT / "__init__.py").read_text(encoding="utf-8"))) or ""
    lines = doc.splitlines()
    borders = [i for i, line in enumerate(lines) if re.fullmatch(r"=+( +=+)+", line)]
    assert len(borders) == 3, "the package docstring holds the layering table"
    spans = [m.span() for m in re.finditer(r"=+", lines[borders[0]])]
    rows: list[list[str]] = []
    for line in lines[borders[1] + 1 : borders[2]]:
        cells = [line[a:b].strip() if i < len(spans) - 1 else line[a:].strip() for i, (a, b) in enumerate(spans)]
        if cells[0]:
            rows.append(cells)
        else:
            rows[-1] = [f"{x} {y}".strip() for x, y in zip(rows[-1], cells, strict=True)]
    table: dict[str, set[str]] = {}
    for package, _, column in rows:
        layer = package.strip("`")
        may = re.sub(r"\([^)]*\)", "", column)
        words = {w for w in re.split(r"[,\s]+", may) if w}
        table[layer] = words
    everything = set(table)
    return {layer: (everything if "everything" in words else words) for layer, words in table.items()}


TABLE = layering_table()


def test_the_table_names_every_package_and_only_packages() -> None:
    packages = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert set(TABLE) == packages
    for layer, allowed in TABLE.items():
        assert allowed <= packages, (layer, allowed - packages)


def test_no_module_outside_the_packages() -> None:
    """New modules go in a package by concern: the top level holds only the entry points."""
    top = sorted(p.name for p in ROOT.glob("*.py"))
    assert top == ["__init__.py", "__main__.py"]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_layering(module: str) -> None:
    layer = layer_of(module)
    allowed = TABLE.get(layer, {"app"}) | {layer}  # the top level (__main__) runs the app
    wrong = [
        f"{MODULES[module].relative_to(ROOT)}:{line} imports {target}"
        for line, target in imports(module, MODULES[module])
        if layer_of(target) not in allowed
    ]
    assert not wrong, f"{layer} may import {sorted(allowed)} only:\n" + "\n".join(wrong)


@pytest.mark.parametrize(("layer", "forbidden"), [("core", CORE_FORBIDDEN), ("config", CONFIG_FORBIDDEN)])
def test_lower_layers_stay_free_of_transport_and_metrics(layer: str, forbidden: tuple[str, ...]) -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for module, path in MODULES.items()
        if layer_of(module) == layer
        for line, name in third_party(path)
        if name.split(".")[0] in forbidden
    ]
    assert not wrong, "\n".join(wrong)


def find_cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Every cycle a depth-first walk meets (each as a path that ends where it starts)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node)
    return cycles


def test_no_import_cycle() -> None:
    graph = {m: sorted({t for _, t in imports(m, p) if t in MODULES and t != m}) for m, p in MODULES.items()}
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_a_violation_and_a_cycle(tmp_path: Path) -> None:
    """The walk resolves relative imports, so a wrong one cannot slip through (nor a cycle)."""
    pkg = tmp_path / "core"
    pkg.mkdir()
    source = pkg / "x.py"
    source.write_text("from ..rpc import servicer\nfrom ..app.server import serve\n", encoding="utf-8")
    found = [t for _, t in imports("descriptor_server.core.x", source)]
    assert "descriptor_server.rpc.servicer" in found
    assert "descriptor_server.app.server" in found
    assert not {layer_of(t) for t in found} <= TABLE["core"] | {"core"}
    assert find_cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c", "a"]]


def test_logger_names_come_from_the_one_table() -> None:
    from descriptor_server.core.loggers import LOGGERS

    assert set(LOGGERS) == PINNED_LOGGERS
    wrong = []
    for module, path in MODULES.items():
        if module == f"{TOP}.core.loggers":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "getLogger"
                and node.args
            ):
                arg = node.args[0]
                named = isinstance(arg, ast.Attribute) and isinstance(arg.value, ast.Name) and arg.value.id == "loggers"
                if not named and not (isinstance(arg, ast.Name) and arg.id != "__name__"):
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not wrong, "loggers must be named from descriptor_server.core.loggers:\n" + "\n".join(wrong)


def test_one_registry_of_caches_and_backends_matches_the_config() -> None:
    from descriptor_server.app.components import BACKENDS, CACHES
    from descriptor_server.config import BACKENDS as CONFIG_BACKENDS
    from descriptor_server.config import CACHES as CONFIG_CACHES

    assert set(CACHES) == set(CONFIG_CACHES)
    assert set(BACKENDS) == set(CONFIG_BACKENDS)
