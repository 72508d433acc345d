"""The shape of the code: the core's packages follow the stages of a shootout, each importing
only its own stage and the ones below it, with no import circle; the top level stays small."""
import ast
from pathlib import Path

from conftest import ROOT


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The core modules ``path`` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # ``from . import data`` needs the module ``data``; ``from .report import x`` the package
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in known}
    return found - {name}


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in (ROOT / "suite").rglob("*.py")}
    return {name: _imports(path, name, set(files)) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_core_has_no_import_circle():
    graph = import_graph()
    # the package imports its public API; a module importing the package back would be a circle
    graph["suite"] = set()
    assert "suite.cell.run" in graph and "suite.data.prepared" in graph["suite.cell.run"]
    assert cycles(graph) == []


def test_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_running_a_cell_module_does_not_warn_that_it_was_imported_first(tmp_path):
    """``python -m suite.cell`` (every cell's process): importing the package must not import
    ``suite.cell.run`` itself, or runpy warns "'suite.cell.run' found in sys.modules ..." in every cell."""
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "suite.cell", str(tmp_path / "no-cell.json")], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path)
    assert "FileNotFoundError" in done.stderr  # it ran, and stopped at the missing spec
    assert "found in sys.modules" not in done.stderr, done.stderr


#: the stages, lowest first: a module may import modules of its own stage and of the stages before
#: it, never after (docs/design.md). A subpackage is a stage; the top-level modules are placed here.
STAGES = ("foundations", "data", "models", "measures", "methods", "plugins", "memory", "config", "cell", "report",
          "shootout", "testing", "cli", "suite")
TOP_LEVEL = {"suite.errors": "foundations", "suite.atomic": "foundations", "suite.quiet": "foundations",
             "suite.stopping": "foundations", "suite.progress": "foundations", "suite.hookspecs": "foundations",
             "suite.api": "foundations", "suite.code_files": "foundations",
             # the registry resolves method names, ``peft:PATH`` among them (suite.methods.peft_file)
             "suite.plugins": "plugins",
             # the package: its public API (the facade) and the aliases of the old import paths
             "suite": "suite"}


def stage_of(module: str) -> str:
    if module in TOP_LEVEL:
        return TOP_LEVEL[module]
    package = module.split(".")[1]
    assert package in STAGES, f"{module}: suite/{package}/ is not a stage (add it to STAGES in its place)"
    return package


def test_each_stage_imports_only_the_stages_below_it():
    order = {stage: i for i, stage in enumerate(STAGES)}
    upward = sorted(f"{m} ({stage_of(m)}) imports {t} ({stage_of(t)})" for m, targets in import_graph().items()
                    for t in targets if order[stage_of(t)] > order[stage_of(m)])
    assert upward == []


def test_the_top_level_is_small_and_every_package_names_its_stage():
    modules = [p for p in (ROOT / "suite").glob("*.py")]
    assert len(modules) <= 12, sorted(p.name for p in modules)
    assert set(TOP_LEVEL) - {"suite"} == {f"suite.{p.stem}" for p in modules if p.stem != "__init__"}
    for init in (ROOT / "suite").glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and len(doc) > 80, f"{init.relative_to(ROOT)} needs a docstring that names its stage"
    kinds = {p.name for p in (ROOT / "plugins").iterdir() if p.is_dir() and not p.name.startswith("__")}
    assert kinds == {"methods", "tasks", "models", "executors"}
    assert [p.name for p in (ROOT / "plugins").glob("*.py")] == ["__init__.py"]  # every plugin in its kind's folder
