"""Module containers that report every change of a particle's structure.

A particle caches where its parameters live (``nytorch._storage.State``) and
must notice any change of its module tree before the next op: a parameter,
buffer or submodule added, deleted, set to None or replaced, by
``setattr``/``del``, by nn.Module's registration methods or by writing the
``_parameters`` / ``_buffers`` / ``_modules`` dicts directly (``pop``,
``clear``, ``update``, ``torch.func.functional_call``'s swaps, ...).

So every module of a particle keeps its ``_parameters`` as a :class:`ParamDict`
and its ``_buffers`` and ``_modules`` as :class:`ContainerDict` s. The three
share one *version cell* (``_C.VersionCell``, an int64 with no references: it
can't take part in a reference cycle); every mutating dict method moves it to
a new, process-wide unique value (``_C.bump``; csrc/containers.cpp). A State records its modules' versions, and the
hot path (csrc/particle_fastpath.cpp) compares them: one dict lookup per
module, as before. Reads are plain dict reads; only writes pay (~0.3 us).

>>> import torch, nytorch as nyto
>>> class Net(nyto.NytoModule):
...     def __init__(self):
...         super().__init__()
...         self.fc = torch.nn.Linear(2, 2)
>>> n = Net(); _ = n + 1          # the first op captures the structure
>>> type(n.fc._parameters).__name__, type(n.fc._buffers).__name__
('ParamDict', 'ContainerDict')
>>> del n.fc.bias                 # a deletion is seen: the bias does not come back
>>> [k for k, _ in (n * 2).named_parameters()]
['fc.weight']
"""

from __future__ import annotations

from typing import Any, Optional

from torch import nn

from . import _C

__all__ = ["ParamDict", "ContainerDict", "CHANGING", "track", "touch"]

# dict's methods that can change the keys or values (each moves the version).
CHANGING = ("__setitem__", "__delitem__", "pop", "popitem", "clear", "update", "setdefault", "__ior__")


class ParamDict(_C.ParamDictBase):
    """A particle module's ``_parameters``: a dict (pickles and copies as one)
    whose changes (set, delete, pop, popitem, clear, update, setdefault, |=;
    in C, ``_C.ParamDictBase``) move the module's version cell ``_nyto_cell``."""

    __slots__ = ("_nyto_record", "_nyto_template", "__weakref__")
    _nyto_record: Optional[Any]  # a lazy result's _C.LazyRecord (on LazyParams), else None
    _nyto_template: Optional[Any]  # the key template a LazyParams was cloned from, else None


# A particle module's ``_buffers`` or ``_modules``: a dict whose changes move
# the version cell it shares with the module's ``_parameters`` (in C, with a
# free list: results make two per module).
ContainerDict = _C.ContainerDict


def track(module: nn.Module) -> None:
    """Give ``module`` tracked containers sharing one version cell (keeping
    their contents and order); a no-op when it has them."""
    d = module.__dict__
    params = d.get("_parameters")
    if params is None:
        return
    cell: Optional[Any] = getattr(params, "_nyto_cell", None) if isinstance(params, ParamDict) else None
    if cell is None:
        cell = _C.new_cell()
        tracked = ParamDict(params)
        tracked._nyto_record = None
        tracked._nyto_template = None
        tracked._nyto_cell = cell
        d["_parameters"] = tracked
    for name in ("_buffers", "_modules"):
        c = d.get(name)
        if c is None:
            continue
        if type(c) is not ContainerDict:
            c = ContainerDict(c)
            d[name] = c
        if getattr(c, "_nyto_cell", None) is not cell:
            c._nyto_cell = cell


def touch(module: nn.Module, *_args: Any) -> None:
    """A new version of ``module``'s structure (a registration hook: the
    registration's own dict write bumps too; this also covers subclasses that
    store elsewhere first)."""
    params = module.__dict__.get("_parameters")
    if isinstance(params, ParamDict):
        _C.bump(getattr(params, "_nyto_cell", None))
