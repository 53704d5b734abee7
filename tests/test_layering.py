"""The package's import structure: no cycle, and the benchmark harness outside the runtime.

Read from the source (``ast``), so that an import inside a function counts
too: a lazy import that closes a cycle is still a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "circus_events"
BENCH = "circus_events.bench"


def module_files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> list[tuple[str, int, str | None]]:
    """``(module imported, line, enclosing function)`` for every import of a package
    module in ``path``, at any depth, except under ``if TYPE_CHECKING:``."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: list[tuple[str, int, str | None]] = []

    def visit(node: ast.AST, function: str | None) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            function = node.name
        if isinstance(node, ast.Import):
            found.extend((a.name, node.lineno, function) for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target in known:
                found.append((target, node.lineno, function))
            for alias in node.names:
                if f"{target}.{alias.name}" in known:
                    found.append((f"{target}.{alias.name}", node.lineno, function))
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(ast.parse(path.read_text()), None)
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {
        name: {target for target, _, _ in imports_of(name, path, known)} - {name}
        for name, path in files.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def strong(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                strong(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            strong(node)
    return found


def test_no_import_cycle_in_the_package() -> None:
    graph = import_graph()
    assert len(graph) > 30, "the package's modules were not found"
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_only_the_bench_command_imports_the_harness() -> None:
    files = module_files()
    known = set(files)
    outside = []
    for name, path in files.items():
        if name == BENCH or name.startswith(BENCH + "."):
            continue
        for target, line, function in imports_of(name, path, known):
            if target == BENCH or target.startswith(BENCH + "."):
                outside.append((name, line, function))
    assert outside, "the bench command should import the harness"
    assert {(name, function) for name, _, function in outside} == {
        ("circus_events._cli_bench", "bench_command")
    }


def test_importing_the_runtime_loads_no_harness() -> None:
    runtime = sorted(
        name
        for name in module_files()
        if name != BENCH and not name.startswith(BENCH + ".") and not name.endswith("__main__")
    )
    code = (
        "import importlib, sys\n"
        f"for name in {runtime!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(sorted(m for m in sys.modules if m.startswith({BENCH!r})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]"
