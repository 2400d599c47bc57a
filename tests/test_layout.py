"""The package is laid out as its pipeline: each stage imports only the stages below it, no module
imports itself round a circle, and every stage imports on its own."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lrtransfer"
# lowest first; errors.py is the floor every stage may stand on
STAGES = ("errors", "modular", "models", "optim", "data", "run", "results", "analysis", "sweep", "report",
          "plots", "cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every lrtransfer module ``path`` imports, at the top or inside a function."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lrtransfer")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("lrtransfer"):
                continue
            found.add(target)
            # `from pkg import submodule` imports that submodule
            found |= {f"{target}.{a.name}" for a in node.names if is_module(f"{target}.{a.name}")}
    return found


def is_module(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.with_suffix(".py").exists() or path.is_dir()


def stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): imported_modules(p) for p in PACKAGE.rglob("*.py")}


def test_every_module_belongs_to_a_stage():
    loose = sorted(m for m in import_graph() if stage(m) not in (*STAGES, None, "__main__"))
    assert not loose, f"modules outside the pipeline's stages {STAGES}: {loose}"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``module -> target`` for every import of a stage above the importer's own."""
    upward = []
    for module, targets in graph.items():
        here = stage(module)
        if here not in STAGES:
            continue
        for target in targets:
            there = stage(target)
            if there in STAGES and STAGES.index(there) > STAGES.index(here):
                upward.append(f"{module} -> {target}")
    return sorted(upward)


def test_no_stage_imports_a_stage_above_it():
    upward = upward_imports(import_graph())
    assert not upward, "upward imports:\n" + "\n".join(upward)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle among the graph's modules, as a path that ends where it starts, or None."""
    done, on_path = set(), []

    def visit(node):
        if node in on_path:
            return on_path[on_path.index(node):] + [node]
        if node in done:
            return None
        on_path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in graph and (cycle := visit(nxt)):
                return cycle
        on_path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        if cycle := visit(start):
            return cycle
    return None


def test_no_import_circles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_checks_catch_what_they_look_for():
    graph = {"lrtransfer.run.train": {"lrtransfer.cli.common", "lrtransfer.errors"},
             "lrtransfer.cli.run": {"lrtransfer.run.train"}}
    assert upward_imports(graph) == ["lrtransfer.run.train -> lrtransfer.cli.common"]
    found = imported_modules(PACKAGE / "cli" / "tune.py")   # relative, lazy and `from pkg import module`
    assert {"lrtransfer.errors", "lrtransfer.sweep.search", "lrtransfer.analysis.transfer"} <= found
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("name", STAGES)
def test_each_stage_imports_alone(name):
    r = subprocess.run([sys.executable, "-c", f"import lrtransfer.{name}"], capture_output=True, text=True,
                       cwd=PACKAGE.parent)
    assert r.returncode == 0, r.stderr
