"""The package layout rules, checked from the source: every module imports, no import circle,
dependencies point down the layer order only, no private name crosses a module, and mqbench's
own modules are imported at module level (lazy imports only for heavy optional packages)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "mqbench"
# Lower layers first; a module may import only its own layer or layers before it.
LAYERS = ["errors", "paths", "provenance", "progress", "task", "quant", "truth", "proxy",
          "scoring", "board", "search", "api", "cli", "testing", "__init__", "__main__"]


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1] if len(parts) > 1 else "__init__")


def _type_checking_lines(tree) -> set[int]:
    """Lines inside `if TYPE_CHECKING:` blocks (imports for annotations only, never run)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            out |= set(range(node.lineno, node.end_lineno + 1))
    return out


def _imports(path: Path, top_only: bool):
    """(imported module, names, line) for mqbench imports; module-level only if top_only.
    Imports under `if TYPE_CHECKING:` are skipped: they are annotations, not dependencies."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    nodes = tree.body if top_only else [n for n in ast.walk(tree)
                                        if getattr(n, "lineno", 0) not in skip]
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "mqbench":
            yield node.module, [a.name for a in node.names], node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "mqbench":
                    yield a.name, [], node.lineno


def _target(module: str, name: str) -> str:
    """`from mqbench.board import page` imports the module mqbench.board.page."""
    sub = f"{module}.{name}"
    return sub if sub in MODULES else module


@pytest.mark.parametrize("module", [m for m in MODULES if not m.endswith("__main__")])
def test_every_module_imports(module):
    importlib.import_module(module)


def test_module_docstrings():
    missing = [m for m, p in MODULES.items() if ast.get_docstring(ast.parse(p.read_text())) is None]
    assert not missing, f"modules without a docstring: {missing}"


def test_no_import_circle():
    graph = {m: set() for m in MODULES}
    for m, path in MODULES.items():
        for mod, names, _ in _imports(path, top_only=True):
            for target in {_target(mod, n) for n in names} or {mod}:
                if target in graph and target != m:
                    graph[m].add(target)
    # a package imports its own __init__ chain implicitly: ignore parent packages
    for m in graph:
        graph[m] = {t for t in graph[m] if not m.startswith(t + ".")}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for t in graph[m]:
            if state.get(t) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_dependencies_point_down():
    upward = []
    for m, path in MODULES.items():
        for mod, names, line in _imports(path, top_only=False):
            for target in {_target(mod, n) for n in names} or {mod}:
                if target in MODULES and _layer(target) > _layer(m):
                    upward.append(f"{m}:{line} imports {target}")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_private_names_across_modules():
    private = [f"{m}:{line} imports {mod}.{n}"
               for m, path in MODULES.items() for mod, names, line in _imports(path, False)
               for n in names if n.startswith("_") and not n.startswith("__")]
    assert not private, "\n".join(private)


def test_mqbench_imports_at_module_level():
    inner = []
    for m, path in MODULES.items():
        top = {line for _, _, line in _imports(path, top_only=True)}
        inner += [f"{m}:{line} imports {mod}" for mod, _, line in _imports(path, False)
                  if line not in top]
    assert not inner, "imports of mqbench modules inside functions:\n" + "\n".join(inner)


def test_lazy_third_party_imports_say_why():
    """An import inside a function is for a heavy optional package and carries a comment."""
    bare = []
    for m, path in MODULES.items():
        lines = path.read_text().splitlines()
        tree = ast.parse(path.read_text())
        top, skip = {id(n) for n in tree.body}, _type_checking_lines(tree)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top \
                    and node.lineno not in skip:
                here = lines[node.lineno - 1]
                i = node.lineno - 2  # a comment may head a group of consecutive imports
                while i >= 0 and lines[i].strip().startswith(("import ", "from ")):
                    i -= 1
                if "#" not in here and not (i >= 0 and lines[i].strip().startswith("#")):
                    bare.append(f"{m}:{node.lineno}: {here.strip()}")
    assert not bare, "lazy imports without a comment saying why:\n" + "\n".join(bare)
