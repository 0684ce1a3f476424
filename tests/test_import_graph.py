"""The layers import only downwards, and no module imports itself through others.

    cli -> flows -> tasks -> eve_model        (infra is data; eve_model never imports prefect)

Function-level (lazy) imports count: they are edges all the same, only paid later. Read from the
source with ``ast``; nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("eve_model", "tasks", "flows", "cli")
LAYER = {"cli": 3, "flows": 2, "tasks": 1, "eve_model": 0}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in (REPO_ROOT / package).rglob("*.py")
    }


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    """First-party modules that ``module`` imports (anywhere in the file)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in known and target != module:
                found.add(target)
            elif target.split(".")[0] == "prefect":
                found.add("prefect")
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {module: _imports(path, module, known) for module, path in modules.items()}


GRAPH = _graph()


def test_the_scan_sees_the_platform():
    assert len(GRAPH) > 60 and "tasks.stages" in GRAPH["flows.retrain_flow"]
    assert "eve_model.identity" in GRAPH["tasks.stages"]


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down_the_layers(module):
    layer = LAYER[module.split(".")[0]]
    upward = sorted(
        target for target in GRAPH[module]
        if target != "prefect" and LAYER[target.split(".")[0]] > layer
    )
    assert not upward, f"{module} imports a higher layer: {upward}"
    if module.startswith("eve_model"):
        assert "prefect" not in GRAPH[module], f"{module} imports prefect: eve_model runs on cluster nodes"


def test_cli_uses_public_names_of_flows_and_tasks():
    private = []
    for path in (REPO_ROOT / "cli").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("flows", "tasks"):
                private += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert not private, f"the CLI reaches into internals: {private}"


def test_no_import_cycle():
    """Tarjan's strongly connected components over the module graph: every one must be a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH.get(node, ()):
            if target not in GRAPH:
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

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    assert not cycles, f"import cycles: {cycles}"
