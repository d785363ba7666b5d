"""The layout of the code (docs/architecture.md), read from the source with ast: no import cycle
inside harness/, algorithms/ or analysis/ (function-level imports included), nothing in harness/ imports harness.cli,
the run room never imports the sweep room, algorithms/ never imports harness, suites or
analysis, analysis/ never imports torch or harness, and every harness module is under 400
lines and starts with a docstring saying what it owns."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MAX_LINES = 400


def module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: str, root: Path = REPO) -> dict[str, Path]:
    return {module_name(path, root): path for path in sorted((root / package).rglob("*.py"))}


def imported_names(path: Path, root: Path = REPO) -> set[str]:
    """Every module name an `import` or `from ... import` anywhere in the file names (relative
    imports resolved); for `from P import x`, both P and P.x (x may be a submodule)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names)
    return found


def import_graph(package: str, root: Path = REPO) -> dict[str, set[str]]:
    """module -> the modules of `package` it imports (a submodule when it is one, else its package)."""
    known = modules(package, root)
    graph = {}
    for name, path in known.items():
        edges = {target for target in imported_names(path, root) if target in known}
        graph[name] = {target for target in edges if target != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            cycle = visit(target) if target not in state else None
            if cycle:
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        cycle = visit(node) if node not in state else None
        if cycle:
            return cycle
    return None


def importers(package: str, *forbidden: str) -> list[str]:
    """'module imports target' for every module of `package` naming a forbidden module or one below it."""
    return [
        f"{name} imports {target}"
        for name, path in modules(package).items()
        for target in sorted(imported_names(path))
        if any(target == f or target.startswith(f + ".") for f in forbidden)
    ]


def test_the_import_walk_sees_function_level_and_relative_imports(tmp_path):
    graph = import_graph("harness")
    assert len(graph) >= 20 and "harness.run.train" in graph["harness.cli"]  # imported inside cmd_run
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("from ..a import f\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    graph = import_graph("pkg", tmp_path)
    assert graph["pkg.c"] == {"pkg.a"} and graph["pkg.a"] == {"pkg.sub", "pkg.sub.b"}
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]


@pytest.mark.parametrize("package", ["harness", "algorithms", "analysis"])
def test_no_import_cycle_inside_a_room(package):
    cycle = find_cycle(import_graph(package))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_nothing_in_harness_imports_the_cli():
    offenders = [line for line in importers("harness", "harness.cli") if not line.startswith("harness.cli ")]
    assert not offenders, offenders


def test_the_run_room_never_imports_the_sweep_room_or_the_commands():
    offenders = [
        line
        for line in importers("harness", "harness.sweep", "harness.cli", "harness.args", "harness.bench")
        if line.startswith("harness.run ") or line.startswith("harness.run.")
    ]
    assert not offenders, offenders


def test_algorithms_never_import_the_harness_suites_or_analysis():
    offenders = importers("algorithms", "harness", "suites", "analysis")
    assert not offenders, offenders


def test_analysis_never_imports_torch_or_the_harness():
    offenders = importers("analysis", "torch", "harness")
    assert not offenders, offenders


@pytest.mark.parametrize("name", sorted(modules("harness")))
def test_every_harness_module_is_short_and_says_what_it_owns(name):
    path = modules("harness")[name]
    text = path.read_text()
    lines = len(text.splitlines())
    assert lines < MAX_LINES, f"{path.relative_to(REPO)} has {lines} lines; split it along its sections"
    docstring = ast.get_docstring(ast.parse(text))
    assert docstring and len(docstring.split()) >= 5, f"{path.relative_to(REPO)} starts without a docstring"
