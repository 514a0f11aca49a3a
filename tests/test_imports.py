"""No module of ``python/nytorch`` takes part in an import circle (issue 12).

The import graph is read from the source with ``ast``: every ``import`` and
``from ... import`` statement counts, wherever it stands (module level, inside
a function, under ``if TYPE_CHECKING:``), and so does
``importlib.import_module("nytorch....")`` with a literal name. Relative
imports are resolved against the importing module's package; ``from pkg
import name`` imports ``pkg.name`` when that is a module (a source file, a
package or a compiled module such as ``nytorch._C``), else ``pkg`` itself.
An edge goes to the named module only: importing ``pkg.sub`` runs
``pkg/__init__.py`` first, but that is not counted (the root package's
``__init__`` imports nearly everything, so every module would be "in a
circle" with it); instead ``test_every_module_imports_first`` imports each
module that ``import nytorch`` leaves out in a fresh interpreter, which
catches a package whose ``__init__`` needs one of its importers half-built.

The graph must be acyclic: no strongly connected component of more than one
module and no module importing itself, except the circles listed in
``ALLOWED`` (each with the reason it is still there).
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Set

import nytorch
import pytest

# the package as imported: the source tree (editable) or an installed wheel
SRC = Path(nytorch.__file__).resolve().parent

# Strongly connected components still tolerated, as frozensets of module
# names; an entry needs a comment naming the issue that removes it, and
# test_allowed_circles_still_exist fails once it is gone (the list only shrinks).
ALLOWED: Set[frozenset] = set()


# Submodules that an attribute of their package hides (``from pkg import sub``
# or ``pkg.sub`` then gives the attribute, and importers need importlib).
# Same rule as ALLOWED: each entry names its issue and the list only shrinks.
ALLOWED_SHADOWS: Set[str] = set()


def source_modules(root: Path = SRC, package: str = "nytorch") -> Dict[str, Path]:
    """``{module name: file}`` of every ``.py`` file under ``root`` (a package's
    ``__init__.py`` under the package's name)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        parts = [package] + list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def compiled_modules() -> Set[str]:
    """Modules of the installed package that have no source here (``_C``, ``_build_info``)."""
    return {f"nytorch.{m.name}" for m in pkgutil.iter_modules(list(nytorch.__path__))}


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    package = module if is_package else module.rpartition(".")[0]
    parts = package.split(".")
    if level > 1:
        parts = parts[: len(parts) - (level - 1)]
    base = ".".join(parts)
    return f"{base}.{name}" if name else base


def imports_of(module: str, path: Path, known: Set[str]) -> Set[str]:
    """The ``nytorch`` modules that ``module`` (source ``path``) imports."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    out: Set[str] = set()

    def add(name: str) -> None:
        # the longest known module that ``name`` names or lies in
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name.startswith("nytorch"):
            out.add(name)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "nytorch" or alias.name.startswith("nytorch."):
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            if not (base == "nytorch" or base.startswith("nytorch.")):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if sub in known else base)
        elif isinstance(node, ast.Call):
            f = node.func
            if (
                isinstance(f, ast.Attribute)
                and f.attr == "import_module"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                add(node.args[0].value)
    return out


def import_graph() -> Dict[str, Set[str]]:
    mods = source_modules()
    known = set(mods) | compiled_modules()
    return {m: imports_of(m, p, known) & set(mods) for m, p in mods.items()}


def strongly_connected(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Tarjan's algorithm (iterative): the strongly connected components."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    on_stack: Set[str] = set()
    stack: List[str] = []
    out: List[List[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    out.append(sorted(comp))
    return out


def circles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Components of more than one module, and modules importing themselves."""
    return sorted(c for c in strongly_connected(graph) if len(c) > 1 or c[0] in graph[c[0]])


def _describe(graph: Dict[str, Set[str]], comp: Iterable[str]) -> str:
    members = set(comp)
    edges = [f"{a} -> {b}" for a in sorted(members) for b in sorted(graph[a] & members)]
    return "{" + ", ".join(sorted(members)) + "}: " + "; ".join(edges)


def test_the_graph_sees_the_package():
    graph = import_graph()
    assert {"nytorch", "nytorch.particle", "nytorch.swarm", "nytorch.distributed"} <= set(graph)
    # module-level, relative and function-level imports are all edges
    assert "nytorch.particle" in graph["nytorch"]
    assert "nytorch._storage" in graph["nytorch.particle"]


def test_the_graph_finds_circles():
    # the rules themselves, on a made-up graph
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}, "e": {"a"}}
    assert circles(g) == [["a", "b", "c"], ["d"]]


def test_resolving_imports(tmp_path):
    pkg = tmp_path / "nytorch"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .sub import thing\n")
    (pkg / "sub" / "__init__.py").write_text("from .inner import x\nfrom . import inner\n")
    (pkg / "sub" / "inner.py").write_text(
        "import importlib\n"
        "def f():\n    from .. import sub, _C\n    from ..sub import inner\n"
        "    importlib.import_module('nytorch.other')\n"
    )
    (pkg / "other.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from nytorch.sub.inner import f\n"
    )
    mods = source_modules(pkg)
    known = set(mods) | {"nytorch._C"}
    assert imports_of("nytorch.sub.inner", mods["nytorch.sub.inner"], known) == {
        "nytorch.sub",
        "nytorch._C",
        "nytorch.sub.inner",
        "nytorch.other",
    }
    got = {m: imports_of(m, p, known) & set(mods) for m, p in mods.items()}
    assert got == {
        "nytorch": {"nytorch.sub"},
        "nytorch.sub": {"nytorch.sub.inner"},
        "nytorch.sub.inner": {"nytorch.sub", "nytorch.sub.inner", "nytorch.other"},
        "nytorch.other": {"nytorch.sub.inner"},
    }
    assert circles(got) == [["nytorch.other", "nytorch.sub", "nytorch.sub.inner"]]


def test_no_import_circles():
    graph = import_graph()
    found = [c for c in circles(graph) if frozenset(c) not in ALLOWED]
    assert not found, "import circles in python/nytorch:\n" + "\n".join(_describe(graph, c) for c in found)


def test_allowed_circles_still_exist():
    # an entry of ALLOWED that no longer happens must be removed (so the list only shrinks)
    present = {frozenset(c) for c in circles(import_graph())}
    assert not (ALLOWED - present), f"remove from ALLOWED: {sorted(map(sorted, ALLOWED - present))}"


def _left_out_by_import_nytorch() -> List[str]:
    code = "import sys, nytorch; print('\\n'.join(m for m in sys.modules if m.startswith('nytorch')))"
    loaded = set(
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    )
    return sorted(m for m in source_modules() if m not in loaded and m != "nytorch.__main__")


@pytest.mark.parametrize("module", _left_out_by_import_nytorch())
def test_every_module_imports_first(module):
    # a fresh interpreter whose first import is this module (after the root package,
    # which Python always runs first), then its package's public names
    package = module.rpartition(".")[0] if not (SRC / module.split(".", 1)[1].replace(".", "/")).is_dir() else module
    code = f"import {module}, {package}; [getattr({package}, n) for n in getattr({package}, '__all__', [])]"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]


def _shadowed() -> Set[str]:
    out = set()
    for m in source_modules():
        if "." not in m or m.endswith(".__main__"):
            continue
        module = importlib.import_module(m)
        parent, _, last = m.rpartition(".")
        if getattr(sys.modules[parent], last, module) is not module:
            out.add(m)
    return out


def test_no_attribute_shadows_a_submodule():
    found = _shadowed() - ALLOWED_SHADOWS
    assert not found, f"package attributes hide these submodules (rename one of the two): {sorted(found)}"


def test_allowed_shadows_still_exist():
    gone = ALLOWED_SHADOWS - _shadowed()
    assert not gone, f"remove from ALLOWED_SHADOWS: {sorted(gone)}"
