"""The package's shape, read with ``ast`` from its own files: no import cycle, the CLI is
a thin shell (no SQL, no transactions), rendering stays in ui/, and the core never
reaches into cli/, ui/ or lab/ (the lab is never a code path the real pipeline needs)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[2] / "provisioner"
SHELLS = ("cli", "ui", "lab")  # the outer layers


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts}


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(module: str) -> set[str]:
    """Modules of this package that ``module`` imports at run time (anywhere in the file,
    function-level imports included; imports only for type checkers excluded)."""
    tree = ast.parse(MODULES[module].read_text())
    skip = _type_checking_lines(tree)
    out: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", 0) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module and name.startswith("provisioner"):
                out.add(name)
    return out


GRAPH = {m: imports_of(m) for m in MODULES}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Groups of modules that import each other (Tarjan's strongly connected components
    of more than one module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


def folder_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The same graph between folders (``fleet``, ``slurm``) and top-level modules
    (``handle``, ``runs``): A -> B when any module of A imports one of B."""
    out: dict[str, set[str]] = {}
    for module, imports in graph.items():
        if _layer(module):  # the package's __init__ (its version) is no folder
            out.setdefault(_layer(module), set()).update(
                _layer(i) for i in imports if _layer(i) not in ("", _layer(module)))
    return out


FOLDERS = folder_graph(GRAPH)


def test_no_import_cycle() -> None:
    assert find_cycles(GRAPH) == []


def test_no_folder_import_cycle() -> None:
    """Imports point down between folders too: no folder imports one that imports it
    back, even through different modules."""
    assert find_cycles(FOLDERS) == []


# The three folder cycles the scheduler-adapter redesign removed: status asked Slurm for
# its view (while Slurm's modules import fleet's), the registry recovered dead runs
# (while runs import the lifecycle), the database's backup took the handle (while the
# handle opens the database).
OLD_EDGES = [("provisioner.fleet.status", "provisioner.slurm.sync"),
             ("provisioner.inventory.registry", "provisioner.runs"),
             ("provisioner.db.backup", "provisioner.handle")]


@pytest.mark.parametrize(("importer", "imported"), OLD_EDGES)
def test_the_folder_check_finds_each_old_cycle(importer: str, imported: str) -> None:
    assert imported not in GRAPH[importer]
    old = {**GRAPH, importer: GRAPH[importer] | {imported}}
    cycles = find_cycles(folder_graph(old))
    assert any({_layer(importer), _layer(imported)} <= set(c) for c in cycles), cycles


def test_architecture_doc_draws_the_folder_graph() -> None:
    """docs/architecture.md's table names, for each folder, the folders it depends on:
    exactly the test's graph."""
    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    drawn: dict[str, set[str]] = {}
    for line in doc.split("## Layers", 1)[1].split("\n## ", 1)[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`provisioner/"):
            continue
        name = cells[0].strip("`").removeprefix("provisioner/").removesuffix("/")
        name = name.removesuffix(".py")
        deps = cells[-1]
        drawn[name] = set() if deps in ("-", "") else {
            d.strip().strip("`").removesuffix("/") for d in deps.split(",")}
    assert drawn == FOLDERS


def test_the_check_finds_a_cycle() -> None:
    """The check above can fail: the old registry -> importers import (registry's
    import_nodes) closes a cycle with importers -> registry (NodeSpec)."""
    registry, importers = "provisioner.inventory.registry", "provisioner.inventory.importers"
    assert registry in GRAPH[importers]
    old = {**GRAPH, registry: GRAPH[registry] | {importers}}
    assert [registry, importers] in [sorted(c) for c in find_cycles(old)] or \
        any({registry, importers} <= set(c) for c in find_cycles(old))


def test_core_never_imports_cli_ui_or_lab() -> None:
    bad = {m: sorted(i for i in GRAPH[m] if _layer(i) in SHELLS)
           for m in GRAPH if _layer(m) not in SHELLS and m not in (
               "provisioner", "provisioner.__main__")}
    assert {m: i for m, i in bad.items() if i} == {}


def test_report_does_not_import_ui() -> None:
    assert {m: sorted(GRAPH[m]) for m in GRAPH if _layer(m) == "report"
            and any(_layer(i) == "ui" for i in GRAPH[m])} == {}


def test_cli_holds_no_sql_or_transactions() -> None:
    found = []
    for module, path in MODULES.items():
        if _layer(module) != "cli":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom | ast.Import):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                    [a.name for a in node.names]
                found += [f"{module} imports {n}" for n in names
                          if n.split(".")[0] in ("sqlmodel", "sqlalchemy")
                          or n in ("provisioner.db.engine", "provisioner.db.models")]
            elif isinstance(node, ast.Attribute) and node.attr in (
                    "session", "exec", "commit", "session_scope"):
                found.append(f"{module} line {node.lineno}: .{node.attr}")
            elif isinstance(node, ast.Name) and node.id == "session_scope":
                found.append(f"{module} line {node.lineno}: session_scope")
    assert found == []
