"""The submission package and the job's own modules sit in no import cycle.

The graph is read from the sources (``ast``), so an import inside a function counts as an edge
just like one at the top of a module: a lazy import hides a cycle from Python, not from the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
FIRST_PARTY = ("eve_model", "tasks", "flows", "cli", "infra")
JOB_PATH = (
    "tasks.submit",
    "eve_model.train",
    "eve_model.preflight",
    "eve_model.exit_codes",
    "eve_model.training.engine",
    "eve_model.training.signals",
    "eve_model.training.runtime",
    "eve_model.training.checkpointing",
    "eve_model.training.metrics_logging",
    "cli.train",
)
"""Modules whose imports this work package owns: the submission backends and everything a job
runs through from ``eve train`` / ``run_job_to_end`` to the trainer."""


def _module_files() -> dict[str, Path]:
    modules = {}
    for package in FIRST_PARTY:
        for path in (REPO_ROOT / package).rglob("*.py"):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """module -> first-party modules it imports anywhere in its source (function bodies included)."""
    modules = _module_files()

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:
                    base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                    module = ".".join([*base, module] if module else base)
                targets = [module, *(f"{module}.{alias.name}" for alias in node.names)]
            else:
                continue
            for target in targets:
                found = owner(target)
                # A submodule importing its own package's __init__ is not an edge of interest.
                if found and found != name and not name.startswith(found + "."):
                    graph[name].add(found)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def _in_job_path(module: str) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in JOB_PATH)


def test_the_cycle_finder_sees_lazy_imports():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    # A function-level import is an edge: the old base.get_backend -> local -> base counts.
    assert "tasks.submit.local" not in import_graph()["tasks.submit.base"]


def test_submission_and_job_modules_are_in_no_import_cycle():
    graph = import_graph()
    assert "tasks.submit.backends" in graph and graph["tasks.submit.backends"] >= {
        "tasks.submit.local", "tasks.submit.slurm", "tasks.submit.k8s"}
    offending = [component for component in cycles(graph) if any(_in_job_path(m) for m in component)]
    assert offending == []


def test_the_backend_interface_imports_no_backend():
    graph = import_graph()
    backends = {"tasks.submit.local", "tasks.submit.slurm", "tasks.submit.k8s", "tasks.submit.backends"}
    for module in ("tasks.submit.base", "tasks.submit.spec", "tasks.submit.render"):
        assert not graph[module] & backends, module
