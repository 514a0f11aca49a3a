"""The multi-tensor op library: ``torch.ops.nytorch.*`` with typed wrappers.

Every op takes lists of tensors (typically a whole parameter list) and runs
them in one extension call: a fused pass over all elements on the fast route
(one floating dtype per device group, contiguous tensors), plain per-tensor
ATen on the slow route (anything else). Out-of-place ops return new tensors;
in-place ops (trailing ``_``) write their first list and return ``None``.

>>> import torch, nytorch
>>> xs = [torch.ones(2), torch.zeros(3)]
>>> nytorch.ops.add_scalar(xs, 1.5)
[tensor([2.5000, 2.5000]), tensor([1.5000, 1.5000, 1.5000])]
>>> nytorch.ops.axpby_(xs, xs, 2.0, -1.0); xs[0]
tensor([1., 1.])
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch

from . import _C  # noqa: F401  (registers torch.ops.nytorch)

Tensors = Sequence[torch.Tensor]
Number = Union[int, float, bool]

_ns = torch.ops.nytorch


class OpRow(NamedTuple):
    """One row of the op table (csrc/ops.def, read through ``_C.op_table()``)."""

    name: str  # registered name; the in-place twin is name + "_"
    code: int  # the op code of _C.apply (the row's position)
    n_lists: int  # tensor lists of the out-of-place form, self included
    n_lists_inplace: int  # ... of the in-place form (copy_ takes its source)
    n_scalars: int  # scalar operands
    args: str  # the out-of-place schema's arguments
    fuse: str  # the same value as a nytorch.fuse expression ("" if none)


OP_TABLE: Tuple[OpRow, ...] = tuple(OpRow(*row) for row in _C.op_table())
# name -> (number of tensor lists, number of scalars) of the out-of-place form.
# copy_ takes one more list (the source); the random ops take floats.
ELEMENTWISE_OPS = {row.name: (row.n_lists, row.n_scalars) for row in OP_TABLE}
OP_CODE = {row.name: row.code for row in OP_TABLE}  # csrc/ops.def, enum nyto::Op
RANDOM_OPS = ("normal", "uniform")
ALL_OPS = tuple(ELEMENTWISE_OPS) + RANDOM_OPS


def _handle(name: str):
    return getattr(_ns, name).default


# ---------------------------------------------------------------------------
# Fake (meta) kernels, so FakeTensor / torch.compile can trace every op.
def _promoted(op: str, xs: Sequence[torch.Tensor], scalars: Sequence[Number]) -> torch.dtype:
    dtype = xs[0].dtype
    for t in xs[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    probe = torch.empty((), dtype=dtype, device="meta")
    for s in scalars:
        dtype = torch.result_type(probe, s)
        probe = torch.empty((), dtype=dtype, device="meta")
    if op in ("div", "div_scalar", "rdiv_scalar") and not (dtype.is_floating_point or dtype.is_complex):
        dtype = torch.get_default_dtype()
    return dtype


def _check_operands(name: str, inplace: bool, lists, scalars) -> None:
    """The front end's operand checks (check_operands in csrc/ops.cpp), for the
    fake kernels, which also serve as the Meta kernels: a fake or meta call
    (or one mixing meta and real tensors) fails where the real one would."""
    op = f"nytorch.{name}{'_' if inplace else ''}"
    n = len(lists[0])
    for k, lst in enumerate(lists[1:], 1):
        if len(lst) != n:
            raise RuntimeError(
                f"{op}: tensor list arguments must have the same length, but argument 0 "
                f"has {n} tensors and argument {k} has {len(lst)}"
            )
    for k, s in enumerate(scalars):
        if isinstance(s, complex):
            raise RuntimeError(f"{op}: scalar argument {k} is complex ({s}); only real numbers are supported")
    for i, xs in enumerate(zip(*lists)):
        for k, t in enumerate(xs[1:], 1):
            if t.shape != xs[0].shape:
                raise RuntimeError(
                    f"{op}: shape mismatch at index {i}: argument 0 has shape "
                    f"{list(xs[0].shape)} but argument {k} has shape {list(t.shape)}"
                )
            if t.device != xs[0].device:
                raise RuntimeError(
                    f"{op}: device mismatch at index {i}: argument 0 is on {xs[0].device} "
                    f"but argument {k} is on {t.device}"
                )
        if inplace and name not in ("copy", "fill"):
            rt = _promoted(name, xs, scalars)
            if not torch.can_cast(rt, xs[0].dtype):
                raise RuntimeError(
                    f"{op}: dtype mismatch at index {i}: the result type {rt} can't be cast "
                    f"to the in-place output's dtype {xs[0].dtype}"
                )


def _register_fakes() -> None:
    for name, (n_lists, _) in ELEMENTWISE_OPS.items():

        def fake_out(*args, _name=name, _n=n_lists):
            lists, scalars = args[:_n], args[_n:]
            _check_operands(_name, False, lists, scalars)
            if _name in ("copy", "fill"):
                return [torch.empty_like(x, memory_format=torch.contiguous_format) for x in lists[0]]
            return [
                torch.empty_like(xs[0], dtype=_promoted(_name, xs, scalars), memory_format=torch.contiguous_format)
                for xs in zip(*lists)
            ]

        def fake_in(*args, _name=name, _n=OP_TABLE[OP_CODE[name]].n_lists_inplace):
            _check_operands(_name, True, args[:_n], args[_n:])

        torch.library.register_fake(f"nytorch::{name}")(fake_out)
        torch.library.register_fake(f"nytorch::{name}_")(fake_in)
    for name in RANDOM_OPS:
        torch.library.register_fake(f"nytorch::{name}")(
            lambda xs, a=0.0, b=1.0, *, generator=None: [
                torch.empty_like(x, memory_format=torch.contiguous_format) for x in xs
            ]
        )
        torch.library.register_fake(f"nytorch::{name}_")(lambda xs, a=0.0, b=1.0, *, generator=None: None)


_register_fakes()


# ---------------------------------------------------------------------------
# Typed wrappers. In eager mode on plain tensors each is one call of
# nytorch._C.apply_eager (the same front end without the dispatcher's ~5 us of
# argument handling); otherwise (torch.compile tracing, FakeTensor and other
# subclasses, modes, autograd) it calls the op's `.default` overload. The
# dispatcher picks a kernel from the tensor arguments, so a call whose lists
# are all empty can't reach one: the wrappers answer those themselves.
_apply_eager = _C.apply_eager
_is_compiling = torch.compiler.is_compiling


def _run(name: str, inplace: bool, lists: tuple, scalars: tuple = ()):
    if not _is_compiling():
        out = _apply_eager(OP_CODE[name], inplace, lists, scalars)
        if out is not NotImplemented:
            return out
    if not any(map(len, lists)):
        return None if inplace else []
    return _handle(name + "_" if inplace else name)(*lists, *scalars)


def neg(xs: Tensors) -> List[torch.Tensor]:
    """``[-x for x in xs]``."""
    return _run("neg", False, (xs,))


def neg_(xs: Tensors) -> None:
    """``x.neg_()`` for every x."""
    _run("neg", True, (xs,))


def copy(xs: Tensors) -> List[torch.Tensor]:
    """Contiguous clones of every tensor, in fresh storage."""
    return _run("copy", False, (xs,))


def copy_(xs: Tensors, src: Tensors) -> None:
    """``x.copy_(s)`` for every pair (casts like torch)."""
    _run("copy", True, (xs, src))


def _list_op(name: str, sym: str, expr: str = ""):
    """The wrapper pair of a two-list op: ``x sym y``, or ``expr`` (over x, y) for a function."""

    def out_of_place(xs: Tensors, ys: Tensors) -> List[torch.Tensor]:
        return _run(name, False, (xs, ys))

    def in_place(xs: Tensors, ys: Tensors) -> None:
        _run(name, True, (xs, ys))

    out_of_place.__name__, in_place.__name__ = name, name + "_"
    expr = expr or f"x {sym} y"
    out_of_place.__doc__ = f"``[{expr} for x, y in zip(xs, ys)]`` in one call."
    in_place.__doc__ = (
        f"``x {sym}= y`` for every pair, in one call."
        if sym
        else f"``x = {expr}`` in place for every pair, in one call."
    )
    return out_of_place, in_place


def _scalar_op(name: str, expr: str):
    def out_of_place(xs: Tensors, scalar: Number) -> List[torch.Tensor]:
        return _run(name, False, (xs,), (scalar,))

    def in_place(xs: Tensors, scalar: Number) -> None:
        _run(name, True, (xs,), (scalar,))

    out_of_place.__name__, in_place.__name__ = name, name + "_"
    out_of_place.__doc__ = f"``[{expr} for x in xs]`` in one call (s: a real number)."
    in_place.__doc__ = f"``x = {expr}`` in place for every x, in one call."
    return out_of_place, in_place


add, add_ = _list_op("add", "+")
sub, sub_ = _list_op("sub", "-")
mul, mul_ = _list_op("mul", "*")
div, div_ = _list_op("div", "/")
pow, pow_ = _list_op("pow", "**")  # noqa: A001
add_scalar, add_scalar_ = _scalar_op("add_scalar", "x + s")
sub_scalar, sub_scalar_ = _scalar_op("sub_scalar", "x - s")
mul_scalar, mul_scalar_ = _scalar_op("mul_scalar", "x * s")
div_scalar, div_scalar_ = _scalar_op("div_scalar", "x / s")
pow_scalar, pow_scalar_ = _scalar_op("pow_scalar", "x ** s")
rsub_scalar, rsub_scalar_ = _scalar_op("rsub_scalar", "s - x")
rdiv_scalar, rdiv_scalar_ = _scalar_op("rdiv_scalar", "s / x")
rpow_scalar, rpow_scalar_ = _scalar_op("rpow_scalar", "s ** x")
fill, fill_ = _scalar_op("fill", "s (a tensor like x filled with s)")


def axpby(xs: Tensors, ys: Tensors, a: Number, b: Number) -> List[torch.Tensor]:
    """``[a*x + b*y ...]`` in one pass over memory."""
    return _run("axpby", False, (xs, ys), (a, b))


def axpby_(xs: Tensors, ys: Tensors, a: Number, b: Number) -> None:
    """``x = a*x + b*y`` in place, one pass over memory."""
    _run("axpby", True, (xs, ys), (a, b))


def lerp(xs: Tensors, ends: Tensors, weight: Number) -> List[torch.Tensor]:
    """``torch.lerp(x, end, weight)`` for every pair."""
    return _run("lerp", False, (xs, ends), (weight,))


def lerp_(xs: Tensors, ends: Tensors, weight: Number) -> None:
    """``x.lerp_(end, weight)`` for every pair (EMA: ``lerp_(avg, new, 1 - decay)``)."""
    _run("lerp", True, (xs, ends), (weight,))


def addcmul(xs: Tensors, ys: Tensors, zs: Tensors, value: Number = 1) -> List[torch.Tensor]:
    """``torch.addcmul(x, y, z, value=value)``: ``x + value * y * z``."""
    return _run("addcmul", False, (xs, ys, zs), (value,))


def addcmul_(xs: Tensors, ys: Tensors, zs: Tensors, value: Number = 1) -> None:
    """``x += value * y * z`` in place, one pass over memory."""
    _run("addcmul", True, (xs, ys, zs), (value,))


def pso_velocity(
    v: Tensors, x: Tensors, pbest: Tensors, gbest: Tensors, r1: Tensors, r2: Tensors, w: Number, c1: Number, c2: Number
) -> List[torch.Tensor]:
    """PSO velocity ``w*v + c1*r1*(pbest - x) + c2*r2*(gbest - x)`` in one pass."""
    return _run("pso_velocity", False, (v, x, pbest, gbest, r1, r2), (w, c1, c2))


def pso_velocity_(
    v: Tensors, x: Tensors, pbest: Tensors, gbest: Tensors, r1: Tensors, r2: Tensors, w: Number, c1: Number, c2: Number
) -> None:
    """The PSO velocity update written into ``v``, one pass over memory."""
    _run("pso_velocity", True, (v, x, pbest, gbest, r1, r2), (w, c1, c2))


def normal(
    xs: Tensors, mean: float = 0.0, std: float = 1.0, *, generator: Optional[torch.Generator] = None
) -> List[torch.Tensor]:
    """New tensors like ``xs`` with N(mean, std^2) samples (honours ``torch.manual_seed``)."""
    return _normal(xs, mean, std, generator=generator) if len(xs) else []


def normal_(xs: Tensors, mean: float = 0.0, std: float = 1.0, *, generator: Optional[torch.Generator] = None) -> None:
    """Fill every tensor with N(mean, std^2) samples, one generator draw per dtype group."""
    if len(xs):
        _normal_(xs, mean, std, generator=generator)


def uniform(
    xs: Tensors, low: float = 0.0, high: float = 1.0, *, generator: Optional[torch.Generator] = None
) -> List[torch.Tensor]:
    """New tensors like ``xs`` with U(low, high) samples."""
    return _uniform(xs, low, high, generator=generator) if len(xs) else []


def uniform_(xs: Tensors, low: float = 0.0, high: float = 1.0, *, generator: Optional[torch.Generator] = None) -> None:
    """Fill every tensor with U(low, high) samples."""
    if len(xs):
        _uniform_(xs, low, high, generator=generator)


_normal, _normal_, _uniform, _uniform_ = (_handle(n) for n in ("normal", "normal_", "uniform", "uniform_"))


def _install_table_wrappers() -> None:
    """Wrappers for the table's ops that have no hand-written one above (a new
    row of csrc/ops.def needs no code here): its ``fuse`` expression is the doc."""
    g = globals()
    for row in OP_TABLE:
        if row.name in g:
            continue
        expr = row.fuse or row.name
        if (row.n_lists, row.n_scalars) == (2, 0):
            pair = _list_op(row.name, "", expr)
        elif (row.n_lists, row.n_scalars) == (1, 1):
            pair = _scalar_op(row.name, expr)
        else:

            def out_of_place(*args, _row=row):
                return _run(_row.name, False, args[: _row.n_lists], args[_row.n_lists :])

            def in_place(*args, _row=row):
                _run(_row.name, True, args[: _row.n_lists_inplace], args[_row.n_lists_inplace :])

            out_of_place.__name__, in_place.__name__ = row.name, row.name + "_"
            out_of_place.__doc__ = f"``{row.name}({row.args})`` in one call."
            in_place.__doc__ = f"``{row.name}`` written into the first list, in one call."
            pair = (out_of_place, in_place)
        g[row.name], g[row.name + "_"] = pair


_install_table_wrappers()

__all__ = [n for n in ALL_OPS] + [n + "_" for n in ALL_OPS]
