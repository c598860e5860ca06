"""The package's import structure: every module imports on its own, and no two modules import
each other, directly or through others (module-level and function-level imports alike)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import lmrlgym

ROOT = Path(lmrlgym.__file__).parent
PACKAGE = "lmrlgym"


def module_names() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported(tree: ast.AST, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """The package's modules that ``name`` imports anywhere (type-only imports excluded: they
    never run). ``from a import b`` counts as importing ``a.b`` when that is a module."""
    out: set[str] = set()
    base = name if is_package else name.rpartition(".")[0]
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:  # relative import
                anchor = base.split(".")[: len(base.split(".")) - node.level + 1]
                source = ".".join(anchor + ([node.module] if node.module else []))
            for a in node.names:
                sub = f"{source}.{a.name}"
                out.add(sub if sub in modules else source)
        stack.extend(ast.iter_child_nodes(node))
    return {m for m in out if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    names = module_names()
    return {name: imported(ast.parse(path.read_text()), name, path.name == "__init__.py", set(names))
            for name, path in names.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or None (iterative DFS)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in graph:
        if root in state:
            continue
        path, iters = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while path:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iters.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(sorted(graph[nxt])))
    return None


def test_find_cycle_finds_one_and_only_real_ones():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_import_graph_parses_relative_and_type_only_imports():
    src = "from . import b\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import p.c\n"
    assert imported(ast.parse(src), "p.a", False, {"p", "p.a", "p.b", "p.c"}) == {"p.b"}
    src = "def f():\n    from p.b import x\n"
    assert imported(ast.parse(src), "p.a", False, {"p", "p.a", "p.b"}) == {"p.b"}


def test_no_import_cycles():
    graph = import_graph()
    assert "lmrlgym.algos.rl" in graph["lmrlgym.models.render"]  # the graph sees real edges
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.slow(seconds=13)
def test_every_module_imports_on_its_own():
    # A fresh interpreter imports ``lmrlgym`` and notes which of its modules are loaded:
    # importing any module of the package starts exactly so (the parent package runs first).
    # Before each module it drops the package's modules loaded since, so each import runs
    # every package module it needs as in a fresh process (third-party ones stay cached:
    # torch cannot be imported twice, and it keeps the test fast). __main__ runs the CLI.
    script = (
        "import importlib, sys, traceback\n"
        "import lmrlgym\n"
        "base = set(sys.modules)\n"
        f"failed = []\nfor name in {sorted(m for m in module_names() if m != 'lmrlgym.__main__')!r}:\n"
        "    for m in [m for m in sys.modules if m.startswith('lmrlgym') and m not in base]:\n"
        "        del sys.modules[m]\n"
        "    try:\n        importlib.import_module(name)\n"
        "    except Exception:\n        failed.append(name + ': ' + traceback.format_exc(limit=-3))\n"
        "print('\\n'.join(failed))\nsys.exit(1 if failed else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=ROOT.parent, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
