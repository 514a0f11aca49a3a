"""Argument checks of the public entry points: each raises TypeError (wrong
type) or ValueError (wrong value) with a message naming the argument and what
was expected, before anything is changed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterable, Optional

import torch

from .errors import StateDictError


def real(x: Any, where: str, name: str) -> float:
    """``x`` as a float: a real number (int, float, numpy scalar, real 0-dim tensor; not bool)."""
    from .particle import _number

    n = None if isinstance(x, (bool, str)) else _number(x)
    if n is None or isinstance(n, bool):
        raise TypeError(f"{where}: {name} must be a real number, got {type(x).__name__}")
    return float(n)


def integer(x: Any, where: str, name: str, minimum: Optional[int] = None) -> int:
    """``x`` as an int (an int or anything with ``__index__``; not bool or float), ``>= minimum``."""
    if isinstance(x, bool) or not hasattr(type(x), "__index__"):
        raise TypeError(f"{where}: {name} must be an int, got {type(x).__name__}")
    v = int(x.__index__())
    if minimum is not None and v < minimum:
        raise ValueError(f"{where}: {name} must be >= {minimum}, got {v}")
    return v


def generator(x: Any, where: str, name: str = "generator") -> None:
    if x is not None and not isinstance(x, torch.Generator):
        raise TypeError(f"{where}: {name} must be a torch.Generator or None, got {type(x).__name__}")


def function(x: Any, where: str, name: str) -> None:
    if not callable(x):
        raise TypeError(f"{where}: {name} must be callable, got {type(x).__name__}")


def schedule(x: Any, where: str, name: str) -> None:
    """A number or a function of the step."""
    if not callable(x):
        real(x, where, f"{name} (a number or a function of the step)")


def state_keys(
    state: Any, where: str, required: Iterable[str], optional: Iterable[str] = (), strict: bool = True
) -> None:
    """``state`` must be a mapping with the ``required`` keys (and, when
    ``strict``, no keys beyond ``required`` and ``optional``)."""
    if not isinstance(state, Mapping):
        raise TypeError(f"{where}: state must be a dict (a state_dict() result), got {type(state).__name__}")
    required = list(required)
    known = set(required) | set(optional)
    missing = [k for k in required if k not in state]
    unexpected = [k for k in state if k not in known] if strict else []
    if missing or unexpected:
        parts = []
        if missing:
            parts.append("missing key(s) " + ", ".join(map(repr, missing)))
        if unexpected:
            parts.append("unexpected key(s) " + ", ".join(map(repr, unexpected)))
        raise StateDictError(
            f"{where}: the state has {' and '.join(parts)}; expected the keys of "
            f"state_dict(): {', '.join(map(repr, required))}. Nothing was loaded."
        )
