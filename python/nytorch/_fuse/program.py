"""Compiling a traced DAG into a fuse program (the bytecode of csrc/fuse/program.h).

>>> from nytorch._fuse.trace import Node
>>> x, w = Node("in", (), 0, False), Node("num", (), 0, True)
>>> prog = compile_nodes([w * x + 1.0], n_in=1, n_num=1)
>>> prog.n_in, prog.n_out, prog.lits, prog.n_vreg
(1, 1, (1.0,), 1)
"""

from __future__ import annotations

import struct
from typing import Dict, List, Sequence, Tuple

from .trace import ARITY, CODE, OPS, FuseError, Node

__all__ = ["OPS", "Program", "compile_nodes"]

MAGIC = 0x4E590001
MAX_INSTR = 4096


class Program:
    """A compiled fused expression: run it with :func:`nytorch.fuse.run_flat`.

    ``words``: the bytecode (int32, bytes); ``n_in``: buffer inputs; ``n_num``:
    numbers passed per call; ``lits``: the constants it was traced with
    (appended to the numbers); ``n_out``: outputs; ``has_rand``: whether it
    draws random numbers; ``single``: the function returned one value, not a tuple.
    """

    __slots__ = ("words", "n_in", "n_num", "lits", "n_out", "n_vreg", "has_rand", "single", "instr")

    def __init__(
        self,
        words: bytes,
        n_in: int,
        n_num: int,
        lits: Tuple[float, ...],
        n_out: int,
        n_vreg: int,
        has_rand: bool,
        single: bool,
        instr: List[Tuple[int, ...]],
    ) -> None:
        self.words = words
        self.n_in = n_in
        self.n_num = n_num
        self.lits = lits
        self.n_out = n_out
        self.n_vreg = n_vreg
        self.has_rand = has_rand
        self.single = single
        self.instr = instr

    @property
    def ints(self) -> List[int]:
        """The program as a list of ints (the ``int[] program`` of torch.ops.nytorch.fused)."""
        return list(struct.unpack(f"{len(self.words) // 4}i", self.words))

    def __repr__(self) -> str:
        lines = [
            f"<nytorch.fuse.Program: {self.n_in} inputs, {self.n_num} numbers, {self.n_out} outputs, "
            f"{self.n_vreg} registers>"
        ]
        for op, dst, a, b, c in self.instr:
            lines.append(f"  {OPS[op]:6s} {dst:4d} {a:4d} {b:4d} {c:4d}")
        return "\n".join(lines)


def _postorder(outputs: Sequence[Node]) -> List[Node]:
    order: List[Node] = []
    seen = set()
    stack = [(n, False) for n in reversed(outputs)]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        for a in reversed(node.args):
            if id(a) not in seen:
                stack.append((a, False))
    return order


def _peephole(outputs: Sequence[Node]) -> List[Node]:
    """``x + a*b`` (either order) -> ``muladd(a, b, x)`` where the product has
    no other use, and ``minimum(maximum(x, lo), hi)`` (``clamp``) ->
    ``clamp(x, lo, hi)`` where the maximum has no other use: one pass over
    the block instead of two, the same value (``s * rand_like`` -> ``rands``:
    the scale folded into the conversion, also the same value)."""
    order = _postorder(outputs)
    uses: Dict[int, int] = {}
    for node in order:
        for a in node.args:
            uses[id(a)] = uses.get(id(a), 0) + 1
    for node in outputs:
        uses[id(node)] = uses.get(id(node), 0) + 1

    def lone_mul(n: Node) -> bool:
        return n.op == "mul" and not n.scalar and uses.get(id(n), 0) == 1

    new: Dict[int, Node] = {}
    for n in order:
        args = tuple(new[id(a)] for a in n.args)
        if n.op == "mul" and not n.scalar:
            x, y = n.args
            r, k = (
                (y, args[0])
                if (y.op == "rand" and x.scalar and uses.get(id(y), 0) == 1)
                else (x, args[1])
                if (x.op == "rand" and y.scalar and uses.get(id(x), 0) == 1)
                else (None, None)
            )
            if r is not None and k is not None:  # s * rand_like(x): the scale folds into the conversion, same value
                new[id(n)] = Node("rands", (k,), r.value, False)
                continue
        if n.op == "min" and not n.scalar:
            inner = n.args[0]
            if inner.op == "max" and not inner.scalar and uses.get(id(inner), 0) == 1:
                new[id(n)] = Node("clamp", (new[id(inner.args[0])], new[id(inner.args[1])], args[1]), None, False)
                continue
        if n.op == "add" and not n.scalar:
            x, y = n.args
            m, other = (y, args[0]) if lone_mul(y) else (x, args[1]) if lone_mul(x) else (None, None)
            if m is not None and other is not None:
                f, g = new[id(m.args[0])], new[id(m.args[1])]
                if g.scalar:  # the scalar factor first (it stays in a register); a*b == b*a exactly
                    f, g = g, f
                new[id(n)] = Node("muladd", (f, g, other), None, False)
                continue
        same = all(a is b for a, b in zip(args, n.args))
        new[id(n)] = n if same else Node(n.op, args, n.value, n.scalar)
    return [new[id(o)] for o in outputs]


def compile_nodes(outputs: Sequence[Node], n_in: int, n_num: int, single: bool = True) -> Program:
    """The program computing ``outputs`` from ``n_in`` buffer inputs and ``n_num`` numbers."""
    if n_in < 1:
        raise FuseError("nytorch.fuse: a fused function needs at least one particle (buffer) argument")
    outputs = _peephole(outputs)
    order = _postorder(outputs)
    # Scalar slots: the numbers, then the constants, then scalar results.
    slot: Dict[int, int] = {}
    lits: List[float] = []
    lit_slot: Dict[str, int] = {}
    for node in order:
        if node.op == "num":
            slot[id(node)] = node.value
        elif node.op == "lit":
            key = float(node.value).hex()
            if key not in lit_slot:
                lit_slot[key] = n_num + len(lits)
                lits.append(float(node.value))
            slot[id(node)] = lit_slot[key]
    n_sreg = n_num + len(lits)
    last_use: Dict[int, int] = {}
    for i, node in enumerate(order):
        for a in node.args:
            last_use[id(a)] = i
    for node in outputs:
        last_use[id(node)] = len(order)  # outputs live until the stores
    # A vector sub read only by one product (mul/muladd) keeps its operands'
    # registers until that product: the CPU interpreter then computes the
    # difference inside the product's loop (one pass less, the same value).
    readers: Dict[int, List[int]] = {}
    for i, node in enumerate(order):
        for a in node.args:
            readers.setdefault(id(a), []).append(i)
    out_ids = {id(o) for o in outputs}
    for node in order:
        at = readers.get(id(node), [])
        if node.op == "sub" and not node.scalar and len(at) == 1 and id(node) not in out_ids:
            user = order[at[0]]
            if user.op in ("mul", "muladd") and not user.scalar and sum(a is node for a in user.args[:2]) == 1:
                for a in node.args:
                    if not a.scalar:
                        last_use[id(a)] = max(last_use[id(a)], at[0])
    instr: List[Tuple[int, ...]] = []
    reg: Dict[int, int] = {}
    free: List[int] = []
    n_vreg = 0
    has_rand = False

    def operand(n: Node) -> int:
        return -1 - slot[id(n)] if n.scalar else reg[id(n)]

    for i, node in enumerate(order):
        op = node.op
        if op in ("num", "lit"):
            continue
        if node.scalar:  # scalar instruction: evaluated once per call
            slot[id(node)] = n_sreg
            n_sreg += 1
            args = [operand(a) for a in node.args] + [0] * (3 - len(node.args))
            instr.append((CODE[op], -1 - slot[id(node)], *args))
            continue
        args = [0, 0, 0]
        if op == "in":
            args[0] = node.value
            code = CODE["load"]
        elif op in ("rand", "randn"):
            args[0] = node.value
            has_rand = True
            code = CODE[op]
        elif op == "rands":
            args[0] = node.value
            args[1] = operand(node.args[0])
            has_rand = True
            code = CODE[op]
        else:
            if op not in ARITY:
                raise FuseError(f"nytorch.fuse: unsupported operation {op!r}")
            args[: len(node.args)] = [operand(a) for a in node.args]
            code = CODE[op]
        # operands whose last use is this instruction free their registers first
        for a in node.args:
            if not a.scalar and last_use.get(id(a)) == i and id(a) in reg:
                r = reg.pop(id(a))
                if r not in reg.values():
                    free.append(r)
        if free:
            dst = free.pop()
        else:
            dst = n_vreg
            n_vreg += 1
        reg[id(node)] = dst
        instr.append((code, dst, *args))
    for j, node in enumerate(outputs):
        instr.append((CODE["store"], j, operand(node), 0, 0))
    if len(instr) > MAX_INSTR:
        raise FuseError(f"nytorch.fuse: expression too large ({len(instr)} instructions, at most {MAX_INSTR})")
    header = (MAGIC, n_in, len(outputs), n_vreg, n_sreg, len(instr))
    flat = [w for ins in instr for w in ins]
    words = struct.pack(f"{len(header) + len(flat)}i", *header, *flat)
    return Program(words, n_in, n_num, tuple(lits), len(outputs), n_vreg, has_rand, single, instr)
