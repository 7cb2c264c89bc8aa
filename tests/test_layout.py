"""The Python layer's shape: no import circles, every module importable on its own, and the README's layout table true.

A circle (`a` imports `b` imports `a`) is found by reading every module's imports, including those deferred into a
function body, which is how a circle is usually hidden: a deferred import only moves the failure to the first call.
Importing each module alone, in a process where no other `meter` module was imported first, shows that no module
works only because another one happened to be loaded before it.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "python" / "meter"


def modules() -> dict[str, Path]:
    """Every module of the `meter` package by dotted name (a package by its `__init__.py`)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The `meter` modules `name` imports anywhere in its body (`from pkg import module` names the module)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package this module is in
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            found.add(origin)
            found |= {f"{origin}.{alias.name}" for alias in node.names}
    # Importing `a.b.c` runs the packages `a` and `a.b` first: they are imported too.
    found |= {".".join(m.split(".")[:i]) for m in found for i in range(1, m.count(".") + 1)}
    return {module for module in found if module in known and module != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each a circle of imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_deferred_circle(tmp_path: Path) -> None:
    """The check itself can fail: a circle hidden in a function body is found."""
    (tmp_path / "a.py").write_text("import meter.b\n")
    (tmp_path / "b.py").write_text("def later():\n    from meter import a\n")
    known = {"meter.a", "meter.b"}
    graph = {f"meter.{n}": imports(f"meter.{n}", tmp_path / f"{n}.py", known) for n in "ab"}
    assert cycles(graph) == [["meter.a", "meter.b"]]


def test_no_import_circles() -> None:
    known = modules()
    # A package's __init__ re-exports its modules; importing a module of the package first runs its __init__, so a
    # module importing its own package's __init__ is not an edge that matters for circles between modules.
    graph = {
        name: {m for m in imports(name, path, set(known)) if not name.startswith(m + ".")}
        for name, path in known.items()
    }
    assert cycles(graph) == []


def test_every_module_imports_on_its_own() -> None:
    """Each module is imported in a process where no other meter module was loaded (the extension stays loaded)."""
    names = [name for name in modules() if name != "meter"]
    script = f"""
import importlib, sys, traceback
import meter._core
failed = []
for name in {names!r}:
    for loaded in [m for m in sys.modules if m.startswith("meter") and m != "meter._core"]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc(limit=3))
print("\\n".join(failed))
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True)
    assert run.stdout.strip() == ""


def test_the_readme_layout_table_matches_the_tree() -> None:
    """Every package of python/meter has a row in the README's layout table, and every row names a real path."""
    section = (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([^`]+)` \|", section, re.MULTILINE))
    assert listed, "no layout table under ## Layout"
    assert sorted(path for path in listed if not (ROOT / path).exists()) == []
    packages = {f"{p.parent.relative_to(ROOT)}/" for p in PACKAGE.rglob("__init__.py")}
    assert sorted(packages - listed) == []
