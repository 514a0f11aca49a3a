"""Tracing for :mod:`nytorch.fuse`: symbolic values that record an elementwise DAG.

A traced function receives a :class:`Node` for every argument: a *vector* node
(one value per element: a particle or flat buffer) or a *scalar* node (a
number, passed at run time). Arithmetic on nodes builds new nodes; anything
else raises :class:`FuseError` naming the operation, at trace time.

>>> x, s = Node("in", (), 0, False), Node("num", (), 0, True)
>>> y = 2 * x + s; y.op, y.args[0].op, y.scalar
('add', 'mul', False)
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

from .. import _C
from ..errors import FuseError

__all__ = ["FuseError", "Node", "lift", "apply", "random_node", "start_trace", "scalar_eval"]

# The instructions of a fuse program (csrc/fuse/fops.def, through _C):
# OPS[code] is the name, CODE[name] the code, ARITY[name] the operands of a
# math op (loads, stores and random streams are not in ARITY).
_TABLE = _C.fuse_op_table()
OPS: Tuple[str, ...] = tuple(name for name, _, _, _ in _TABLE)
CODE: Dict[str, int] = {name: code for name, code, _, _ in _TABLE}
ARITY: Dict[str, int] = {name: arity for name, _, arity, math in _TABLE if math}


class Node:
    """One value of a traced function. ``op``: 'in' (buffer input ``value``),
    'num' (number argument ``value``), 'lit' (a constant ``value``), 'rand' /
    'randn' (random stream ``value``) or an operation over ``args``.
    ``scalar``: one value per call (numbers only) rather than per element."""

    __slots__ = ("op", "args", "value", "scalar")

    def __init__(self, op: str, args: Tuple[Node, ...], value: Any, scalar: bool) -> None:
        self.op = op
        self.args = args
        self.value = value
        self.scalar = scalar

    def __repr__(self) -> str:
        kind = "scalar" if self.scalar else "vector"
        return f"<nytorch.fuse traced {kind} value: {self.op}>"

    # -- arithmetic ----------------------------------------------------
    def __add__(self, o):
        return apply("add", self, o)

    def __radd__(self, o):
        return apply("add", o, self)

    def __sub__(self, o):
        return apply("sub", self, o)

    def __rsub__(self, o):
        return apply("sub", o, self)

    def __mul__(self, o):
        return apply("mul", self, o)

    def __rmul__(self, o):
        return apply("mul", o, self)

    def __truediv__(self, o):
        return apply("div", self, o)

    def __rtruediv__(self, o):
        return apply("div", o, self)

    def __pow__(self, o):
        return apply("pow", self, o)

    def __rpow__(self, o):
        return apply("pow", o, self)

    def __neg__(self):
        return apply("neg", self)

    def __pos__(self):
        return apply("pos", self)

    def __abs__(self):
        return apply("abs", self)

    # comparisons give masks: 1.0 where true, 0.0 where false
    def __lt__(self, o):
        return apply("lt", self, o)

    def __le__(self, o):
        return apply("le", self, o)

    def __gt__(self, o):
        return apply("gt", self, o)

    def __ge__(self, o):
        return apply("ge", self, o)

    def __eq__(self, o):
        return apply("eq", self, o)  # type: ignore[override]

    def __ne__(self, o):
        return apply("ne", self, o)  # type: ignore[override]

    __hash__ = object.__hash__

    # -- named methods (the particle method names, plus the fuse functions)
    add = __add__
    sub = __sub__
    mul = __mul__
    div = __truediv__
    pow = __pow__
    radd = __radd__
    rsub = __rsub__
    rmul = __rmul__
    rdiv = __rtruediv__
    rpow = __rpow__
    neg = __neg__
    pos = __pos__
    abs = __abs__

    def clone(self):
        return apply("pos", self)

    def sqrt(self):
        return apply("sqrt", self)

    def exp(self):
        return apply("exp", self)

    def log(self):
        return apply("log", self)

    def sign(self):
        return apply("sign", self)

    def minimum(self, o):
        return apply("min", self, o)

    def maximum(self, o):
        return apply("max", self, o)

    def lerp(self, end, weight):
        return apply("lerp", self, end, weight)

    def hypot(self, o):
        return apply("hypot", self, o)

    def clamp(self, min=None, max=None):  # noqa: A002  (torch's names)
        return clamp(self, min, max)

    def rand(self):
        return random_node("rand", self)

    def randn(self):
        return random_node("randn", self)

    # -- everything else is refused, by name ----------------------------
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise FuseError(f"nytorch.fuse: unsupported operation '.{name}' on a traced value (supported: {SUPPORTED})")

    def __bool__(self):
        raise FuseError(
            "nytorch.fuse: a traced value has no truth value (Python `if`/`and`/`or`/"
            "`min()` on particles can't be fused); use nytorch.where(cond, a, b)"
        )

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        raise FuseError(
            f"nytorch.fuse: unsupported operation torch.{name} in a fused function (supported: {SUPPORTED})"
        )


def _refuse(name: str):
    def method(self, *args, **kwargs):
        raise FuseError(f"nytorch.fuse: unsupported operation '{name}' on a traced value (supported: {SUPPORTED})")

    method.__name__ = name
    return method


for _name in (
    "__matmul__",
    "__rmatmul__",
    "__floordiv__",
    "__rfloordiv__",
    "__mod__",
    "__rmod__",
    "__divmod__",
    "__and__",
    "__rand__",
    "__or__",
    "__ror__",
    "__xor__",
    "__rxor__",
    "__invert__",
    "__lshift__",
    "__rshift__",
    "__round__",
    "__trunc__",
    "__floor__",
    "__ceil__",
    "__float__",
    "__int__",
    "__index__",
    "__complex__",
    "__len__",
    "__iter__",
    "__getitem__",
    "__setitem__",
    "__call__",
    "__array__",
):
    setattr(Node, _name, _refuse(_name))
# In-place operators inside a traced function rebind the name (x += y is
# x = x + y): they never write the caller's particle; write results with out=.
del _name

SUPPORTED = (
    "+ - * / ** (with numbers and particles), unary -, +, abs, < <= > >= == != (masks), "
    "sqrt, exp, log, sign, minimum, maximum, clamp, where, lerp, fma, hypot, rand_like, randn_like"
)


def lift(x: Any) -> Node:
    """A node for ``x``: nodes as they are, real numbers as constants."""
    if type(x) is Node:
        return x
    t = type(x)
    if t is float or t is int or t is bool:
        return Node("lit", (), float(x), True)
    from ..particle import _number  # 0-dim tensors, numpy scalars

    n = _number(x)
    if n is None or isinstance(x, complex):
        raise FuseError(
            f"nytorch.fuse: can't use a {type(x).__name__} in a fused expression; only particles "
            "(the function's arguments) and real numbers can be combined"
        )
    return Node("lit", (), float(n), True)


def apply(op: str, *args: Any) -> Node:
    """The node of ``op`` over ``args`` (nodes or numbers)."""
    nodes = tuple(lift(a) for a in args)
    return Node(op, nodes, None, all(n.scalar for n in nodes))


def random_node(kind: str, like: Any) -> Node:
    """A fresh random stream shaped like the vector node ``like``."""
    if type(like) is not Node or like.scalar:
        raise FuseError(
            f"nytorch.fuse: {kind}_like needs a particle argument of the fused function, got {type(like).__name__}"
        )
    stream = _STREAMS[0]
    _STREAMS[0] += 1
    return Node(kind, (), stream, False)


# Random calls are numbered in trace order (the k-th call is stream k):
# reset by start_trace() before each trace.
_STREAMS = [0]


def start_trace() -> None:
    _STREAMS[0] = 0


def clamp(x: Any, min: Any = None, max: Any = None) -> Node:  # noqa: A002
    """``torch.clamp``: ``minimum(maximum(x, min), max)`` (NaN stays NaN)."""
    if min is None and max is None:
        raise FuseError("nytorch.fuse: clamp needs min or max")
    out = lift(x)
    if min is not None:
        out = apply("max", out, min)
    if max is not None:
        out = apply("min", out, max)
    return out


def scalar_eval(op: str, *v: float) -> float:
    """``op`` on numbers (eager calls on numbers only), exactly as a fused
    program's scalar instructions and the kernels compute it in double: one
    C function (csrc/fuse/fuse.cpp scalar_op over csrc/nyto_math.h), so
    ``nyto.fma(0.1, 10.0, -1.0)`` rounds once and ``nyto.lerp`` takes torch's
    two-branch form.

    >>> scalar_eval("fma", 0.1, 10.0, -1.0), scalar_eval("lerp", 0.0, 10.0, 0.25)
    (5.551115123125783e-17, 2.5)
    """
    return _fuse_scalar(CODE[op], *v)


_fuse_scalar = _C.fuse_scalar
