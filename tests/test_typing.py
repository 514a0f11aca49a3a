"""The typed boundary: ``nytorch/_C.pyi`` declares exactly what the compiled
module defines, and the package ships ``py.typed``."""

import ast
import pathlib

import nytorch
from nytorch import _C

PKG = pathlib.Path(nytorch.__file__).parent


def stub_names() -> set:
    tree = ast.parse((PKG / "_C.pyi").read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):  # overloads repeat a name: a set
            names.add(node.name)
    return names


def test_stub_declares_every_name_of_the_extension():
    defined = {n for n in dir(_C) if not n.startswith("__")}
    stub = stub_names()
    assert defined - stub == set(), "missing from _C.pyi"
    assert stub - defined == set(), "declared in _C.pyi but not in _C"


def test_stub_functions_match_kinds():
    tree = ast.parse((PKG / "_C.pyi").read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            assert isinstance(getattr(_C, node.name), type), node.name
        elif isinstance(node, ast.FunctionDef):
            assert callable(getattr(_C, node.name)) and not isinstance(getattr(_C, node.name), type), node.name


def test_package_is_marked_typed():
    assert (PKG / "py.typed").is_file()
