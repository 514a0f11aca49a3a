"""One op table: Python and C agree on every op (csrc/ops.def and
csrc/fuse/fops.def, read through nytorch._C), an op's particle, op-library and
fused forms compute the same values, and the elementwise math gives the same
numbers on plain numbers, in fused programs (scalar and vector instructions)
and in particle arithmetic (csrc/nyto_math.h, one source)."""

import itertools
import math
import random
import re
import struct

import nytorch as nyto
import pytest
import torch
from nytorch import _C, ops
from nytorch import fuse as F
from nytorch._fuse import program as _fuse_program
from nytorch._fuse import trace as _fuse_trace
from nytorch._fuse.trace import apply

OP_ROWS = list(ops.OP_TABLE)
FUSE_ROWS = _C.fuse_op_table()
FUSE_MATH = {name: arity for name, _, arity, is_math in FUSE_ROWS if is_math}


# ---------------------------------------------------------------------------
# Python and C agree on every op.
def test_op_table_python_mirrors_c():
    c_rows = _C.op_table()
    assert len(c_rows) == len(ops.ELEMENTWISE_OPS) == len(ops.OP_CODE)
    for code, (name, c_code, nl, nli, ns, args, fuse) in enumerate(c_rows):
        assert c_code == code and ops.OP_CODE[name] == code  # the row's position is the code
        assert ops.ELEMENTWISE_OPS[name] == (nl, ns)
        assert ops.OP_TABLE[code] == (name, code, nl, nli, ns, args, fuse)
    assert list(ops.ELEMENTWISE_OPS) == [r[0] for r in c_rows]  # dict order is the code order
    assert len(set(ops.OP_CODE)) == len(c_rows)


def _schema_args(handle):
    return [(str(a.type), a.alias_info is not None and a.alias_info.is_write) for a in handle._schema.arguments]


@pytest.mark.parametrize("row", OP_ROWS, ids=lambda r: r.name)
def test_registered_schemas_and_twins_follow_the_table(row):
    out = _schema_args(getattr(torch.ops.nytorch, row.name).default)
    inp = _schema_args(getattr(torch.ops.nytorch, row.name + "_").default)
    assert [t for t, _ in out] == ["List[Tensor]"] * row.n_lists + ["number"] * row.n_scalars
    assert [t for t, _ in inp] == ["List[Tensor]"] * row.n_lists_inplace + ["number"] * row.n_scalars
    assert [w for _, w in inp] == [True] + [False] * (len(inp) - 1)  # the in-place twin writes self only
    assert not any(w for _, w in out)
    assert str(getattr(torch.ops.nytorch, row.name + "_").default._schema.returns) == "[]"
    # the typed wrappers exist for both forms and reach the same op
    assert callable(getattr(ops, row.name)) and callable(getattr(ops, row.name + "_"))
    assert row.name in ops.__all__ and row.name + "_" in ops.__all__
    # the apply entry takes exactly the table's operand counts
    lists = [[torch.ones(3)] for _ in range(row.n_lists)]
    _C.apply(row.code, False, tuple(lists), (1.0,) * row.n_scalars)
    with pytest.raises(TypeError, match="wrong operand count"):
        _C.apply(row.code, False, tuple(lists) + ([torch.ones(3)],), (1.0,) * row.n_scalars)


def test_fuse_table_python_mirrors_c():
    assert _fuse_program.OPS == _fuse_trace.OPS == tuple(r[0] for r in FUSE_ROWS)
    assert all(_fuse_trace.CODE[name] == code for name, code, _, _ in FUSE_ROWS)
    assert _fuse_trace.ARITY == FUSE_MATH
    assert {"load", "store", "rand", "randn", "rands"} == {r[0] for r in FUSE_ROWS if not r[3]}


@pytest.mark.parametrize("name", sorted(FUSE_MATH))
def test_every_fuse_math_op_compiles_runs_and_evaluates_numbers(name):
    """Each math op of fops.def: as a vector instruction over a buffer, as a
    scalar instruction over numbers, and on plain numbers (scalar_eval)."""
    n = FUSE_MATH[name]
    vals = (0.7, 0.4, -1.3)[:n]
    prog = F.program(lambda x, *s: apply(name, x, *s), "p" + "n" * (n - 1))
    assert any(ins[0] == _fuse_trace.CODE[name] for ins in prog.instr)
    x = torch.full((40,), vals[0], dtype=torch.float64)
    got = F.run_flat(prog, [[x]], list(vals[1:]))[0][0]
    number = _fuse_trace.scalar_eval(name, *vals)
    scalar_prog = F.program(lambda x, *s: apply(name, *s), "p" + "n" * n)
    assert any(ins[0] == _fuse_trace.CODE[name] and ins[1] < 0 for ins in scalar_prog.instr)  # a scalar instruction
    in_scalar = F.run_flat(scalar_prog, [[x]], list(vals))[0][0]
    assert same(got[0].item(), number) and same(in_scalar[0].item(), number), (
        got[0].item(),
        in_scalar[0].item(),
        number,
    )


@pytest.mark.parametrize("row", [r for r in OP_ROWS if r.fuse], ids=lambda r: r.name)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_fusable_ops_agree_with_their_fused_expression(row, dtype):
    """An op with a `fuse` column computes the same bits (NaN, inf, -0.0
    included) as that expression fused: one math source (csrc/nyto_math.h)."""
    m = re.fullmatch(r"(\w+)\(([xys, ]+)\)", row.fuse)
    fop, operands = m.group(1), [o.strip() for o in m.group(2).split(",")]
    assert fop in FUSE_MATH and FUSE_MATH[fop] == len(operands)
    assert operands.count("s") == row.n_scalars and len({"x", "y"} & set(operands)) == row.n_lists
    specials = [0.0, -0.0, 1.0, -1.5, 0.1, 3.0, math.inf, -math.inf, math.nan, 1e30, -2.5e-3]
    gen = torch.Generator().manual_seed(0)
    n = 64 * 32  # whole vectors: the kernels' scalar tails use libm, their bodies SLEEF
    x = torch.randn(n, generator=gen, dtype=torch.float64).to(dtype)
    y = torch.randn(n, generator=gen, dtype=torch.float64).to(dtype)
    x[: len(specials) ** 2] = torch.tensor([a for a in specials for _ in specials], dtype=dtype)
    y[: len(specials) ** 2] = torch.tensor([b for _ in specials for b in specials], dtype=dtype)
    if row.name in ("pow", "pow_scalar"):
        x = x.abs()
    numbers = {
        "pow_scalar": [2.0, 0.5, -1.0, -0.5, -2.0, 3.0, 1.7],
        "lerp": [0.3, 0.7, -0.2, 0.5, math.nan],
    }.get(row.name, [0.75, -0.0, math.inf, math.nan, -3.5])
    lerp_rounds_twice = row.name == "lerp" and _C.cpu_isa() == "DEFAULT"  # torch's portable vec::fmadd
    for s in numbers if row.n_scalars else [None]:
        lists = [[x], [y]][: row.n_lists]
        got = getattr(ops, row.name)(*lists, *([s] if s is not None else []))[0]
        kinds = "".join("n" if o == "s" else "p" for o in operands)
        names = [o for o in operands]
        prog = F.program(lambda *a: apply(fop, *a), kinds)
        bufs = [[{"x": x, "y": y}[o]] for o in names if o != "s"]
        fused = F.run_flat(prog, bufs, [s] if s is not None else [])[0][0]
        if lerp_rounds_twice:
            torch.testing.assert_close(got, fused, rtol=1e-6, atol=1e-6, equal_nan=True)
            continue
        assert_bits(got, fused, f"{row.name} s={s}")


def assert_bits(a, b, what):
    assert a.dtype == b.dtype and a.shape == b.shape
    nan = a.isnan() & b.isnan()
    bad = ~nan & ((a != b) | (a.signbit() != b.signbit()))
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} differ, first at {int(bad.nonzero()[0])}: {a[bad][0].item()} vs {b[bad][0].item()}"
    )


def same(a, b):
    """Bitwise equal numbers (any NaN equals any NaN; -0.0 differs from 0.0)."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return struct.pack("<d", a) == struct.pack("<d", b)


# ---------------------------------------------------------------------------
# Plain numbers vs fused (scalar and vector instructions) vs particle arithmetic.
SPECIALS = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.1,
    10.0,
    0.3,
    0.7,
    -2.5,
    0.49999999999999994,
    0.5,
    math.inf,
    -math.inf,
    math.nan,
    1e308,
    5e-324,
]

# name -> (nytorch function, arity, exact across routes)
FUNCS = {
    "fma": (nyto.fma, 3),
    "lerp": (nyto.lerp, 3),
    "hypot": (nyto.hypot, 2),
    "minimum": (nyto.minimum, 2),
    "maximum": (nyto.maximum, 2),
    "where": (nyto.where, 3),
    "sign": (nyto.sign, 1),
    "abs": (nyto.abs, 1),
    "sqrt": (nyto.sqrt, 1),
}


class One(nyto.NytoModule):
    def __init__(self, values):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(values, dtype=torch.float64))


def same_species(*columns):
    """Particles of one species holding the given values."""
    base = One(list(columns[0]))
    out = [base]
    for c in columns[1:]:
        q = base.clone()
        with torch.no_grad():
            q.w.copy_(torch.tensor(list(c), dtype=torch.float64))
        out.append(q)
    return out


def _tuples(arity, k=400, seed=0):
    rng = random.Random(seed)
    every = list(itertools.product(SPECIALS, repeat=arity))
    return every if len(every) <= k else rng.sample(every, k)


@pytest.mark.parametrize("name", sorted(FUNCS))
def test_numbers_fused_and_particles_agree(name):
    fn, arity = FUNCS[name]
    tuples = _tuples(arity)
    plain = [fn(*t) for t in tuples]  # Python numbers: _C.fuse_scalar
    cols = list(zip(*tuples))
    parts = same_species(*cols)
    vector = fn(*parts).w.detach().tolist()  # particles: a one-op fused vector program (float64)
    scalar_prog = nyto.fuse(lambda p, *s: fn(*s))
    anchor = One([0.0])
    for t, want, got_v in zip(tuples, plain, vector):
        assert same(got_v, want), (name, t, got_v, want)
    for t, want in list(zip(tuples, plain))[:60]:  # scalar instructions (one compiled program, numbers vary)
        got_s = scalar_prog(anchor, *t).w.item()
        assert same(got_s, want), (name, t, got_s, want)


def test_fma_rounds_once_everywhere():
    """The issue's example: 0.1 * 10 - 1 is 5.55e-17 with one rounding."""
    want = 5.551115123125783e-17
    assert nyto.fma(0.1, 10.0, -1.0) == want
    assert nyto.fuse(lambda p, a, b, c: nyto.fma(a, b, c))(One([0.0]), 0.1, 10.0, -1.0).w.item() == want
    a, b, c = same_species([0.1], [10.0], [-1.0])
    assert nyto.fma(a, b, c).w.item() == want
    assert nyto.fma(a, 10.0, -1.0).w.item() == want
    assert 0.1 * 10.0 - 1.0 == 0.0  # two roundings, for contrast


def test_lerp_takes_torchs_two_branches_on_numbers():
    for s, e, w in [
        (1.0, 3.0, 0.7),
        (0.1, 0.3, 0.49999999999999994),
        (0.1, 0.3, 0.5),
        (1e16, 1.0, 0.9),
        (-0.0, 0.0, 0.25),
        (1.0, 2.0, math.inf),
    ]:
        ref = torch.lerp(torch.tensor([s] * 8, dtype=torch.float64), torch.tensor([e] * 8, dtype=torch.float64), w)[
            0
        ].item()
        got = nyto.lerp(s, e, w)
        assert same(got, ref), (s, e, w, got, ref)
        assert same(
            ops.lerp([torch.tensor([s] * 8, dtype=torch.float64)], [torch.tensor([e] * 8, dtype=torch.float64)], w)[0][
                0
            ].item(),
            ref,
        )


# ---------------------------------------------------------------------------
# hypot, added through the table: particles (method, in-place twin, reflected).
class Net(nyto.NytoModule):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.randn(37))
        self.b = torch.nn.Parameter(torch.randn(5, 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_particle_hypot(dtype):
    torch.manual_seed(0)
    x = Net().to(dtype)
    y = x.randn()
    ref = [torch.hypot(p, q) for p, q in zip(x.parameters(), y.parameters())]
    ref_s = [torch.hypot(p, torch.full_like(p, 2.5)) for p in x.parameters()]
    for got, want in ((x.hypot(y), ref), (x.hypot(2.5), ref_s), (x.rhypot(2.5), ref_s)):
        assert got._nyto_species is x._nyto_species
        for p, e in zip(got.parameters(), want):
            torch.testing.assert_close(p.detach(), e.detach(), rtol=0, atol=0)
    w = x.a
    assert x.hypot_(y) is x and x.a is w
    for p, e in zip(x.parameters(), ref):
        torch.testing.assert_close(p.detach(), e.detach(), rtol=0, atol=0)
    with pytest.raises(TypeError, match="hypot"):
        x.hypot("a")
    assert not hasattr(type(x), "__hypot__")


def test_hypot_on_numbers_and_in_fused_functions():
    assert nyto.hypot(3.0, 4.0) == 5.0 and nyto.hypot(-0.0, -0.0) == 0.0 and nyto.hypot(math.inf, math.nan) == math.inf
    torch.manual_seed(1)
    x = Net()
    step = nyto.fuse(lambda p, s: nyto.hypot(p, s) + p.hypot(p))
    got = step(x, 0.5)
    for g, p in zip(got.parameters(), x.parameters()):
        torch.testing.assert_close(g.detach(), torch.hypot(p, torch.full_like(p, 0.5)) + torch.hypot(p, p))
