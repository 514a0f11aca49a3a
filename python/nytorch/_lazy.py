"""Lazily made Parameters of result particles (see csrc/lazy_params.cpp).

An out-of-place particle op gives each module of its result a
:class:`LazyParams` as ``_parameters``: the right keys, values not made yet.
Any look at a value (``m.weight``, ``parameters()``, ``state_dict()``,
``m._parameters.items()``...) makes all of the particle's Parameters at once
and turns every LazyParams of the particle into a :class:`ParamDict` (a plain
dict in all but name), so the cost is paid once and only by results that are
looked at: intermediates such as ``c1 * (p - x)`` never make theirs.

>>> import torch, nytorch as nyto
>>> class Net(nyto.NytoModule):
...     def __init__(self):
...         super().__init__()
...         self.fc = torch.nn.Linear(2, 2)
>>> a = Net(); b = a + 1
>>> type(b.fc._parameters).__name__
'LazyParams'
>>> torch.equal(b.fc.weight, a.fc.weight + 1)
True
>>> type(b.fc._parameters).__name__
'ParamDict'
"""

from __future__ import annotations

from typing import Any

from . import _C
from ._containers import ParamDict

__all__ = ["LazyParams", "ParamDict"]


class LazyParams(ParamDict):
    """A result module's ``_parameters`` whose values are not made yet.

    ``in``, ``len()`` and ``keys()`` answer without making them; every other
    use makes them first (``_C.materialize``). Making them is no change of
    structure; writes after it move the version cell like a ParamDict's.
    """

    __slots__ = ()


def _made_first(name: str):
    base = getattr(ParamDict, name)  # the changing methods move the version cell

    def method(self, *args, **kwargs):
        record = self._nyto_record
        if record is not None:
            _C.materialize(record)
        return base(self, *args, **kwargs)

    method.__name__ = name
    method.__qualname__ = f"LazyParams.{name}"
    method.__doc__ = f"dict.{name}, after making the particle's Parameters."
    return method


def _reduce_ex(self, protocol: int) -> Any:
    record = self._nyto_record
    if record is not None:
        _C.materialize(record)
    return dict, (dict(self),)


# Everything that reads or writes values (keys are there from the start).
for _name in (
    "__getitem__",
    "get",
    "items",
    "values",
    "__iter__",
    "__reversed__",
    "copy",
    "pop",
    "popitem",
    "setdefault",
    "update",
    "clear",
    "__setitem__",
    "__delitem__",
    "__eq__",
    "__ne__",
    "__repr__",
    "__or__",
    "__ror__",
    "__ior__",
):
    setattr(LazyParams, _name, _made_first(_name))
del _name
LazyParams.__reduce_ex__ = _reduce_ex  # type: ignore[method-assign,assignment]

_C.register_lazy_types(LazyParams, ParamDict)
