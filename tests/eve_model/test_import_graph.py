"""The model library's module dependency graph has no cycle.

Every import counts, including those inside functions and under ``TYPE_CHECKING``: a lazy import hides
a cycle from the interpreter, not from the design (teachers <-> teacher_cache and
training.base_llm <-> training.stage_model were such cycles).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def module_graph(package: str, root: Path = REPO_ROOT) -> dict[str, set[str]]:
    """module -> modules of ``package`` it imports (parent packages of the importer itself excluded)."""
    paths = {}
    for path in (root / package).rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        paths[".".join(parts)] = path

    def resolve(name: str) -> str | None:
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {module: set() for module in paths}
    for module, path in paths.items():
        package_parts = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package_parts[: len(package_parts) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                names = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                target = resolve(name)
                if target and target != module and not module.startswith(target + "."):
                    graph[module].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for successor in sorted(graph[node]):
            if state.get(successor) == 1:
                return path[path.index(successor):] + [successor]
            if successor not in state and (cycle := visit(successor)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_eve_model_has_no_import_cycle():
    graph = module_graph("eve_model")
    assert "eve_model.modeling_eve" in graph and graph["eve_model.teacher_cache"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "high.py").write_text("from pkg.sub import low\n")
    (package / "sub" / "low.py").write_text("def f():\n    from ..high import g\n")
    (package / "other.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.high\n")
    graph = module_graph("pkg", tmp_path)
    assert graph["pkg.sub.low"] == {"pkg.high"} and graph["pkg.other"] == {"pkg.high"}
    assert find_cycle(graph) == ["pkg.high", "pkg.sub.low", "pkg.high"]


def test_modeling_does_not_import_deepspeed():
    source = (REPO_ROOT / "eve_model" / "modeling_eve.py").read_text()
    imported = {alias.name.split(".")[0] for node in ast.walk(ast.parse(source))
                if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
    assert "deepspeed" not in imported and "eve_model" in imported
