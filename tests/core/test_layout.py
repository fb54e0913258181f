"""The runtime core's import graph: pure torch (no comfy, no research package) and no import circle."""
from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "freqca_core"


def module_name(path: Path) -> str:
    parts = path.relative_to(CORE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(path: Path) -> set[str]:
    """Modules imported by ``path`` at run time (imports under ``if TYPE_CHECKING:`` excluded)."""
    tree = ast.parse(path.read_text())
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
               and getattr(node.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = f"{base}.{node.module}" if node.level and node.module else (base if node.level else node.module)
            found.add(target)
            found |= {f"{target}.{alias.name}" for alias in node.names}  # submodules imported by name
    return found


def test_core_imports_neither_comfy_nor_the_research_package():
    for path in CORE.rglob("*.py"):
        bad = {m for m in runtime_imports(path) if m.split(".")[0] in ("comfy", "comfy_api", "freqca_lab", "nodes")}
        assert not bad, (path, bad)


def test_core_has_no_import_circle():
    modules = {module_name(p): p for p in CORE.rglob("*.py")}
    graph = {name: {m for m in runtime_imports(path) if m in modules and m != name} for name, path in modules.items()}
    # a package's __init__ importing its own submodules is how packages work, not a circle
    graph = {name: {m for m in deps if not m.startswith(name + ".")} for name, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for dep in graph[name]:
            assert state.get(dep) != 1, " -> ".join(trail + [name, dep])
            if dep not in state:
                visit(dep, trail + [name])
        state[name] = 2

    for name in graph:
        if name not in state:
            visit(name, [])


def test_controller_has_no_method_specific_branch():
    """No comparison with a method's name and no method class but the interface: the controller only calls
    ``CacheMethod``'s hooks."""
    from freqca_core.methods import METHODS

    tree = ast.parse((CORE / "controller.py").read_text())
    compared = {c.value for node in ast.walk(tree) if isinstance(node, ast.Compare)
                for c in ast.walk(node) if isinstance(c, ast.Constant) and isinstance(c.value, str)}
    assert not compared & set(METHODS)
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert {n for n in names if n.endswith("Method")} <= {"CacheMethod"}
    assert {m for m in runtime_imports(CORE / "controller.py") if m.startswith("freqca_core.methods")} <= {
        "freqca_core.methods.base", "freqca_core.methods.base.CacheMethod", "freqca_core.methods.base.Schedule"}
