"""The package's shape: the core never imports the study tools, and core modules form no cycle."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "transcribe"


def _imports(path: Path) -> set[str]:
    """transcribe.* modules imported anywhere in the file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("transcribe")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("transcribe"):
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}  # `from transcribe import dataset`
    return out


def _core() -> dict[str, set[str]]:
    names = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    graph = {}
    for p in PACKAGE.glob("*.py"):
        deps = _imports(p)
        graph[p.stem] = {n for d in deps for n in names if d in (f"transcribe.{n}",)} - {p.stem}
    return graph


def test_core_never_imports_the_study_tools():
    for p in PACKAGE.glob("*.py"):
        assert not any(m.startswith("transcribe.studies") for m in _imports(p)), p.name


def test_core_modules_import_each_other_without_cycles():
    graph, done, path = _core(), set(), []

    def visit(n):
        assert n not in path, "import cycle: " + " -> ".join(path[path.index(n):] + [n])
        if n in done:
            return
        path.append(n)
        for m in sorted(graph.get(n, ())):
            visit(m)
        path.pop()
        done.add(n)
    for n in sorted(graph):
        visit(n)
