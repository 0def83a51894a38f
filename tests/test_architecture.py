"""The code's structure, read from the source with ast (docs/architecture.md).

* the import graph of lvq/ has no cycle, and lvq never imports the dashboard (pages, gradio);
* a project module is imported inside a function only where the line says why (a comment);
* no file under lvq/ grows past ~450 lines.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 450


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function?) for every import in the file, with relative
    imports resolved against the file's package."""
    tree = ast.parse(path.read_text())
    pkg = _module_name(path).split(".")
    if path.name != "__init__.py":
        pkg = pkg[:-1]
    out = []

    def visit(node: ast.AST, in_func: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno, in_func) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = pkg[: len(pkg) - child.level + 1]
                    mod = ".".join(base + ([child.module] if child.module else []))
                else:
                    mod = child.module or ""
                if child.module or not child.level:
                    out.append((mod, child.lineno, in_func))
                if child.level:  # "from . import x" imports the submodules x
                    out.extend((f"{mod}.{a.name}", child.lineno, in_func) for a in child.names)
            visit(child, inner)

    visit(tree, False)
    return out


def _project_modules(folder: str) -> dict[str, Path]:
    return {_module_name(p): p for p in (ROOT / folder).rglob("*.py")}


def _graph() -> dict[str, set[str]]:
    mods = _project_modules("lvq")
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        for target, _line, _in_func in _imports(path):
            if target in mods and target != m:
                graph[m].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if v == "lvq":  # the package's own __init__ re-exports; importing it is not a layer edge
                continue
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state and (found := dfs(v)):
                return found
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if u not in state and (found := dfs(u)):
            return found
    return None


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_lvq_import_graph_has_no_cycle():
    assert _cycle(_graph()) is None


def test_lvq_never_imports_the_dashboard():
    for m, path in _project_modules("lvq").items():
        for target, line, _ in _imports(path):
            assert not target.split(".")[0] in ("pages", "gradio", "app"), f"{path.name}:{line} imports {target}"


def test_no_module_imports_the_package_root_from_inside():
    """lvq's own modules import each other, never ``lvq`` itself (that is the public face)."""
    for m, path in _project_modules("lvq").items():
        if m == "lvq":
            continue
        for target, line, _ in _imports(path):
            assert target != "lvq", f"{path.name}:{line} imports the package root"


@pytest.mark.parametrize("folder", ["lvq", "pages"])
def test_project_imports_inside_functions_say_why(folder):
    for path in (ROOT / folder).rglob("*.py"):
        lines = path.read_text().splitlines()
        for target, line, in_func in _imports(path):
            if in_func and target.split(".")[0] in ("lvq", "pages"):
                assert "#" in lines[line - 1], f"{path.relative_to(ROOT)}:{line} imports {target} in a function without saying why"


def test_lvq_files_stay_small():
    big = {str(p.relative_to(ROOT)): n for p in (ROOT / "lvq").rglob("*.py")
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"split these modules: {big}"
