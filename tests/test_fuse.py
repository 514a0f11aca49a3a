"""nytorch.fuse: every op fused vs unfused particle arithmetic (or torch per
parameter), multi-output, in place and aliasing, retrace rules, in-kernel
random numbers, errors, the torch.ops op (opcheck) and the flat-buffer entry."""

import math
import os
import subprocess
import sys
import tempfile

import nytorch as nyto
import pytest
import torch
from nytorch import fuse as F
from nytorch._fuse.program import OPS

HAS_CUDA = torch.cuda.is_available() and nyto._C.has_cuda()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device/kernels"))]
FLOATS = [torch.float32, torch.float64, torch.bfloat16]


class Net(nyto.NytoModule):
    """Three parameters; `n` elements in the first (spans blocks and threads when large)."""

    def __init__(self, n=37):
        super().__init__()
        self.a = torch.nn.Parameter(torch.randn(n))
        self.b = torch.nn.Parameter(torch.randn(5, 3))
        self.c = torch.nn.Parameter(torch.randn(2, 2, 2))


def particles(k, dtype=torch.float32, device="cpu", n=37, positive=False, seed=0):
    torch.manual_seed(seed)
    base = Net(n).to(device=device, dtype=dtype)
    out = []
    for _ in range(k):
        p = base.randn()
        if positive:
            with torch.no_grad():
                for q in p.parameters():
                    q.abs_().add_(0.25)
        out.append(p)
    return out


def params(p):
    return [q.detach().clone() for q in p.parameters()]


def with_ties_and_nans(x, y, s):
    """Make comparisons meet every case (per parameter, in place): x equal to
    the number ``s`` and to 0 in places, y equal to x in places (some of those
    at s or 0), NaN in x alone, in y alone and in both; the rest unequal."""
    nan = float("nan")
    with torch.no_grad():
        for a, b in zip(x.parameters(), y.parameters()):
            a, b = a.view(-1), b.view(-1)
            a[1::5] = s
            a[2::7] = 0
            b[::3] = a[::3]
            a[3::11] = nan
            b[4::13] = nan
            a[6::17] = nan
            b[6::17] = nan


def per_param(fn, *ps):
    """Reference: fn applied with torch to every parameter (numbers pass through)."""
    lists = [list(p.parameters()) if isinstance(p, nyto.NytoModule) else None for p in ps]
    n = len(next(lst for lst in lists if lst is not None))
    out = []
    for i in range(n):
        args = [lst[i].detach() if lst is not None else p for lst, p in zip(lists, ps)]
        out.append(fn(*args))
    return out


def per_param_outputs(fn, *ps):
    """per_param of a function returning a tuple: one list of tensors per output."""
    return [list(o) for o in zip(*per_param(fn, *ps))]


def full(number, t):
    """A number as the left operand of a torch reference: torch's ``number / t``
    is ``reciprocal(t) * number`` (two roundings); particles and fused programs
    divide, as ``torch.full_like(t, number) / t`` does."""
    return torch.full_like(t, number)


def close(actual, expected, dtype, kind="exact"):
    a = params(actual) if isinstance(actual, nyto.NytoModule) else actual
    e = params(expected) if isinstance(expected, nyto.NytoModule) else expected
    tol = TOL[kind][dtype]
    for x, y in zip(a, e, strict=True):
        assert x.dtype == y.dtype
        torch.testing.assert_close(x, y, rtol=tol, atol=tol * 1e-3, equal_nan=True)


# Documented tolerances (docs/fuse.md): "exact" ops of one rounding are bitwise
# equal to the op-by-op result; transcendental ones (SLEEF vs torch's kernels,
# fma) agree within a few ulps.
TOL = {
    "exact": {torch.float32: 0.0, torch.float64: 0.0, torch.bfloat16: 0.0},
    "ulp": {torch.float32: 4e-6, torch.float64: 1e-14, torch.bfloat16: 8e-3},
    "fma": {torch.float32: 4e-6, torch.float64: 1e-12, torch.bfloat16: 8e-3},
}

S = 0.75  # the number operand

# name -> (fused fn of (x, y, s), torch reference per parameter (x, y, s), kind, positive inputs)
PARTICLE_OPS = {
    "add_pp": (lambda x, y, s: x + y, lambda x, y, s: x + y, "exact", False),
    "add_pn": (lambda x, y, s: x + s, lambda x, y, s: x + s, "exact", False),
    "radd": (lambda x, y, s: s + x, lambda x, y, s: s + x, "exact", False),
    "sub_pp": (lambda x, y, s: x - y, lambda x, y, s: x - y, "exact", False),
    "sub_pn": (lambda x, y, s: x - s, lambda x, y, s: x - s, "exact", False),
    "rsub": (lambda x, y, s: s - x, lambda x, y, s: s - x, "exact", False),
    "mul_pp": (lambda x, y, s: x * y, lambda x, y, s: x * y, "exact", False),
    "mul_pn": (lambda x, y, s: x * s, lambda x, y, s: x * s, "exact", False),
    "rmul": (lambda x, y, s: s * x, lambda x, y, s: s * x, "exact", False),
    "div_pp": (lambda x, y, s: x / y, lambda x, y, s: x / y, "exact", False),
    "div_pn": (lambda x, y, s: x / s, lambda x, y, s: x / s, "exact", False),
    "rdiv": (lambda x, y, s: s / x, lambda x, y, s: full(s, x) / x, "exact", False),
    # general exponents: SLEEF, like torch's vectorized pow but not its scalar tail loop (docs: a few ulps)
    "pow_pp": (lambda x, y, s: x**y, lambda x, y, s: x**y, "ulp", True),
    "pow_pn": (lambda x, y, s: x**s, lambda x, y, s: x**s, "ulp", True),
    "rpow": (lambda x, y, s: s**x, lambda x, y, s: full(s, x) ** x, "ulp", False),
    "neg": (lambda x, y, s: -x, lambda x, y, s: -x, "exact", False),
    "pos": (lambda x, y, s: +x, lambda x, y, s: +x, "exact", False),
    "named_methods": (lambda x, y, s: x.sub(y), lambda x, y, s: x - y, "exact", False),
}

TORCH_OPS = {
    "abs": (lambda x, y, s: abs(x), lambda x, y, s: x.abs(), "exact", False),
    "nyto_abs": (lambda x, y, s: nyto.abs(x), lambda x, y, s: x.abs(), "exact", False),
    # ours is correctly rounded; torch's CPU sqrt may be 1 ulp off
    "sqrt": (lambda x, y, s: nyto.sqrt(x), lambda x, y, s: x.sqrt(), "ulp", True),
    "sqrt_method": (lambda x, y, s: x.sqrt(), lambda x, y, s: x.sqrt(), "ulp", True),
    "exp": (lambda x, y, s: nyto.exp(x), lambda x, y, s: x.exp(), "ulp", False),
    "log": (lambda x, y, s: nyto.log(x), lambda x, y, s: x.log(), "ulp", True),
    "sign": (lambda x, y, s: nyto.sign(x), lambda x, y, s: x.sign(), "exact", False),
    "clamp": (lambda x, y, s: nyto.clamp(x, -s, s), lambda x, y, s: x.clamp(-s, s), "exact", False),
    "clamp_min": (lambda x, y, s: x.clamp(min=s), lambda x, y, s: x.clamp(min=s), "exact", False),
    "clamp_max": (lambda x, y, s: nyto.clamp(x, max=s), lambda x, y, s: x.clamp(max=s), "exact", False),
    # particle bounds, lo > hi where y > y * s (torch: hi wins), NaN bounds propagate
    "clamp_pp": (lambda x, y, s: nyto.clamp(x, y, y * s), lambda x, y, s: torch.clamp(x, y, y * s), "exact", False),
    "minimum_pp": (lambda x, y, s: nyto.minimum(x, y), lambda x, y, s: torch.minimum(x, y), "exact", False),
    "maximum_pp": (lambda x, y, s: nyto.maximum(x, y), lambda x, y, s: torch.maximum(x, y), "exact", False),
    "minimum_pn": (lambda x, y, s: nyto.minimum(x, s), lambda x, y, s: x.clamp(max=s), "exact", False),
    "maximum_pn": (lambda x, y, s: x.maximum(s), lambda x, y, s: x.clamp(min=s), "exact", False),
    "gt": (lambda x, y, s: x > y, lambda x, y, s: (x > y).to(x.dtype), "exact", False),
    "gt_n": (lambda x, y, s: x > s, lambda x, y, s: (x > s).to(x.dtype), "exact", False),
    "ge": (lambda x, y, s: x >= y, lambda x, y, s: (x >= y).to(x.dtype), "exact", False),
    "ge_n": (lambda x, y, s: x >= s, lambda x, y, s: (x >= s).to(x.dtype), "exact", False),
    "lt": (lambda x, y, s: x < y, lambda x, y, s: (x < y).to(x.dtype), "exact", False),
    "lt_n": (lambda x, y, s: x < 0, lambda x, y, s: (x < 0).to(x.dtype), "exact", False),
    "le": (lambda x, y, s: x <= y, lambda x, y, s: (x <= y).to(x.dtype), "exact", False),
    "le_n": (lambda x, y, s: x <= 0, lambda x, y, s: (x <= 0).to(x.dtype), "exact", False),
    "eq": (lambda x, y, s: x == y, lambda x, y, s: (x == y).to(x.dtype), "exact", False),
    "eq_n": (lambda x, y, s: x == s, lambda x, y, s: (x == s).to(x.dtype), "exact", False),
    "ne": (lambda x, y, s: x != y, lambda x, y, s: (x != y).to(x.dtype), "exact", False),
    "ne_n": (lambda x, y, s: x != 0, lambda x, y, s: (x != 0).to(x.dtype), "exact", False),
    "where": (lambda x, y, s: nyto.where(x > 0, x, y), lambda x, y, s: torch.where(x > 0, x, y), "exact", False),
    "where_number": (lambda x, y, s: nyto.where(x > y, s, y), lambda x, y, s: torch.where(x > y, s, y), "exact", False),
    # a particle as the condition: `a` where cond != 0 (NaN included)
    "where_particle_cond": (
        lambda x, y, s: nyto.where(x, y, s),
        lambda x, y, s: torch.where(x != 0, y, s),
        "exact",
        False,
    ),
    "lerp_small": (lambda x, y, s: nyto.lerp(x, y, 0.3), lambda x, y, s: torch.lerp(x, y, 0.3), "ulp", False),
    "lerp_large": (lambda x, y, s: x.lerp(y, s), lambda x, y, s: torch.lerp(x, y, s), "ulp", False),
    "lerp_particle_weight": (lambda x, y, s: nyto.lerp(x, y, y), lambda x, y, s: torch.lerp(x, y, y), "ulp", False),
    "fma": (lambda x, y, s: nyto.fma(x, y, s), lambda x, y, s: (x.double() * y.double() + s).to(x.dtype), "fma", False),
    # SLEEF's hypot in the vector body, like torch's vectorized kernel
    "hypot_pp": (lambda x, y, s: nyto.hypot(x, y), lambda x, y, s: torch.hypot(x, y), "ulp", False),
    "hypot_pn": (lambda x, y, s: x.hypot(s), lambda x, y, s: torch.hypot(x, full(s, x)), "ulp", False),
    "hypot_np": (lambda x, y, s: nyto.hypot(s, y), lambda x, y, s: torch.hypot(full(s, y), y), "ulp", False),
}


# ops whose inputs get ties (x == y, x == S, x == 0) and NaNs: comparisons,
# where, min/max/clamp, sign, abs (NaN semantics as torch's, docs/fuse.md)
TIES_AND_NANS = {
    "gt",
    "gt_n",
    "ge",
    "ge_n",
    "lt",
    "lt_n",
    "le",
    "le_n",
    "eq",
    "eq_n",
    "ne",
    "ne_n",
    "where",
    "where_number",
    "where_particle_cond",
    "minimum_pp",
    "maximum_pp",
    "minimum_pn",
    "maximum_pn",
    "clamp",
    "clamp_min",
    "clamp_max",
    "clamp_pp",
    "sign",
    "abs",
    "nyto_abs",
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("op", list(PARTICLE_OPS) + list(TORCH_OPS))
def test_op_fused_vs_unfused(op, dtype, device):
    fn, ref, kind, positive = {**PARTICLE_OPS, **TORCH_OPS}[op]
    x, y = particles(2, dtype, device, n=3000, positive=positive)
    if op in TIES_AND_NANS:
        with_ties_and_nans(x, y, S)
    before = params(x), params(y)
    step = nyto.fuse(fn)
    got = step(x, y, S)
    expected = per_param(ref, x, y, S)  # plain torch on every parameter
    if op in TIES_AND_NANS:  # the reference itself meets every case
        flat = torch.cat([e.reshape(-1) for e in expected])
        if op.startswith(("gt", "ge", "lt", "le", "eq", "ne")):
            assert (flat == 0).any() and (flat == 1).any(), op
    close(got, expected, dtype, kind)
    assert got._nyto_species is x._nyto_species
    for p, b in zip((x, y), before):  # operands unchanged
        close(params(p), b, dtype)


def test_clamp_compiles_to_one_instruction():
    # both bounds: maximum then minimum fused into one pass (the same values: clamp_* above)
    names = [OPS[i[0]] for i in F.program(lambda x, lo, hi: nyto.clamp(x, lo, hi), "pnn").instr]
    assert names.count("clamp") == 1 and "min" not in names and "max" not in names
    # a maximum read elsewhere too stays separate
    names = [OPS[i[0]] for i in F.program(lambda x, lo, hi: (lambda m: (m.minimum(hi), m))(x.maximum(lo)), "pnn").instr]
    assert "clamp" not in names and "min" in names and "max" in names


@pytest.mark.parametrize("exponent", [2, 3, 0.5, -1, -0.5, -2, 2.7, 0])
def test_pow_special_exponents_match_torch(exponent):
    (x,) = particles(1, positive=True)
    got = nyto.fuse(lambda x, e: x**e)(x, exponent)
    special = exponent in (2, 3, 0.5, -1, -0.5, -2, 0)  # bitwise (docs/fuse.md); others within a few ulps
    # ** 0.5 is a correctly rounded sqrt (torch's CPU sqrt is sometimes 1 ulp off on short tensors)
    ref = (lambda t: t.double().sqrt().float()) if exponent == 0.5 else (lambda t: t**exponent)
    close(got, per_param(ref, x), torch.float32, "exact" if special else "ulp")


# ---------------------------------------------------------------------------
# Chains, multiple outputs, in place, aliasing
def pso(x, v, p, g, w, c1, c2):
    v = w * v + c1 * nyto.rand_like(x) * (p - x) + c2 * nyto.rand_like(x) * (g - x)
    return x + v, v


def pso_ref(x, v, p, g, w, c1, c2, r1, r2):
    v = w * v + c1 * r1 * (p - x) + c2 * r2 * (g - x)
    return x + v, v


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_chain_multi_output_matches_torch_chain(dtype, device):
    x, v, p, g = particles(4, dtype, device, n=70_001)
    step = nyto.fuse(lambda x, v, p, g, w, c1, c2: pso_ref(x, v, p, g, w, c1, c2, 0.25 + 0 * x, x * 0.5))
    nx, nv = step(x, v, p, g, 0.7, 1.5, 1.25)

    def chain(x, v, p, g):  # torch, op by op, on one parameter
        if dtype == torch.bfloat16:
            # fused bf16 computes in float and rounds once: exactly the float32
            # chain rounded (the bf16 op-by-op chain rounds after every op)
            x, v, p, g = (t.float() for t in (x, v, p, g))
        return tuple(o.to(dtype) for o in pso_ref(x, v, p, g, 0.7, 1.5, 1.25, 0.25 + 0 * x, x * 0.5))

    ex, ev = per_param_outputs(chain, x, v, p, g)
    close(nx, ex, dtype)
    close(nv, ev, dtype)


LINEAR_COMBINATIONS = {
    "scalar_second": lambda a, b, c, s, t: a * s + b * t + c * 0.5,
    "scalar_first": lambda a, b, c, s, t: s * a + t * b + 0.25 * c,
    "vector_products": lambda a, b, c, s, t: a * b + b * c + c * a,
    "constant_tail": lambda a, b, c, s, t: s * a + 1.0,
    "constant_head": lambda a, b, c, s, t: 1.0 + s * a + b * t,
    "mixed": lambda a, b, c, s, t: (a - b) * s + c * (a + b) + t * b * c,
    "reused_product": lambda a, b, c, s, t: (lambda m: (m + c, m * 2))(a * s),
    # a sub read only by a chain's product runs inside it (CPU): PSO's and DE's forms
    "deferred_subs": lambda a, b, c, s, t: t * b + s * (a - b) + (c - a) * b,
    "lone_muladd_sub": lambda a, b, c, s, t: a + s * (b - c),
    "shared_sub": lambda a, b, c, s, t: (lambda d: (d * s + c * d, d))(a - b),
    "sub_operand_reused": lambda a, b, c, s, t: (a - b) * c + (b * 2) * a - (c - b) * t,
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("expr", list(LINEAR_COMBINATIONS))
def test_linear_combinations_bitwise(expr, dtype, device):
    fn = LINEAR_COMBINATIONS[expr]
    a, b, c = particles(3, dtype, device, n=5000)
    got = nyto.fuse(fn)(a, b, c, 0.3, -1.7)
    multi = isinstance(got, tuple)
    # torch, op by op, on every parameter
    want = per_param_outputs(lambda a, b, c: fn(a, b, c, 0.3, -1.7) if multi else (fn(a, b, c, 0.3, -1.7),), a, b, c)
    assert len(want) == (len(got) if multi else 1)
    for g, w in zip(got if multi else (got,), want, strict=True):
        close(g, w, dtype)
    nyto.fuse(fn)(a, b, c, 0.3, -1.7, out=(a, b) if multi else a)  # in place too
    for g, w in zip((a, b) if multi else (a,), want, strict=True):
        close(g, w, dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_in_place_out_into_operands(device):
    x, v, p, g = particles(4, torch.float32, device, n=5000)
    torch.manual_seed(3)
    nx, nv = nyto.fuse(pso)(x, v, p, g, 0.7, 1.5, 1.5)
    step = nyto.fuse(pso)
    w_obj = x.a
    ver = x.a._version
    torch.manual_seed(3)
    res = step(x, v, p, g, 0.7, 1.5, 1.5, out=(x, v))
    assert res[0] is x and res[1] is v and x.a is w_obj
    assert x.a._version > ver  # autograd sees the write
    close(x, nx, torch.float32)
    close(v, nv, torch.float32)


def test_out_single_and_into_other_particle():
    x, y, z = particles(3)
    f = nyto.fuse(lambda a, b: a * 2 + b)
    want = per_param(lambda a, b: a * 2 + b, x, y)
    assert f(x, y, out=z) is z
    close(z, want, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_aliasing_swap_and_cross_writes(device):
    x, y = particles(2, torch.float32, device, n=4099)
    bx, by = params(x), params(y)
    nyto.fuse(lambda a, b: (b, a))(x, y, out=(x, y))  # swap through the kernel
    close(x, by, torch.float32)
    close(y, bx, torch.float32)
    # each output reads the other's old value
    nyto.fuse(lambda a, b: (a + b, a - b))(x, y, out=(y, x))
    close(y, [u + w for u, w in zip(by, bx)], torch.float32)
    close(x, [u - w for u, w in zip(by, bx)], torch.float32)


def test_output_pure_number_and_input_passthrough():
    (x,) = particles(1)
    a, b = nyto.fuse(lambda x: (x, 2.5))(x)
    close(a, x, torch.float32)
    assert all(torch.all(q == 2.5) for q in b.parameters())


def test_overlapping_outputs_refused_and_unchanged():
    x, y = particles(2)
    bx = params(x)
    with pytest.raises(RuntimeError, match="overlap"):
        nyto.fuse(lambda a, b: (a + b, a - b))(x, y, out=(x, x))
    close(x, bx, torch.float32)


# ---------------------------------------------------------------------------
# Retrace rules
def test_numbers_do_not_retrace_species_does():
    x, y = particles(2)
    step = nyto.fuse(lambda a, b, w: w * a + (1 - w) * b)
    for w in (0.1, 0.5, 0.9, 1, True):
        close(step(x, y, w), per_param(lambda a, b: float(w) * a + (1 - float(w)) * b, x, y), torch.float32)
    assert step.traces == 1
    step(x, y, torch.tensor(0.25))  # a 0-dim tensor is a number
    assert step.traces == 1
    u, v = particles(2, seed=1)  # a new Net(): a new species
    step(u, v, 0.5)
    assert step.traces == 2
    step(x, 0.5, y)  # another pattern of particles and numbers
    assert step.traces == 3
    step(x.clone(), y * 2, 0.3)  # same species again
    assert step.traces == 3


def test_dtype_change_reuses_program():
    x, y = particles(2)
    step = nyto.fuse(lambda a, b: a * b + 1)
    step(x, y)
    xd, yd = x.clone().double(), y.clone().double()
    close(step(xd, yd), per_param(lambda a, b: a * b + 1, xd, yd), torch.float64)
    assert step.traces == 1


def test_decorator_and_trace_cost():
    @nyto.fuse
    def ema(avg, new, d):
        return d * avg + (1 - d) * new

    assert isinstance(ema, F.Fused) and ema.__name__ == "ema"
    x, y = particles(2)
    ema(x, y, 0.9, out=x)
    assert ema.traces == 1


# ---------------------------------------------------------------------------
# Random numbers
def flat_values(p):
    return torch.cat([q.detach().reshape(-1).double() for q in p.parameters()])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_random_reproducible_and_sane(dtype, device):
    (x,) = particles(1, dtype, device, n=1_000_000)
    draw = nyto.fuse(lambda x: (nyto.rand_like(x), nyto.randn_like(x), nyto.rand_like(x)))
    torch.manual_seed(42)
    u, z, u2 = (flat_values(p) for p in draw(x))
    torch.manual_seed(42)
    u_again = flat_values(draw(x)[0])
    assert torch.equal(u, u_again)  # torch.manual_seed reproduces
    assert not torch.equal(u, flat_values(draw(x)[0]))  # the next call draws new numbers
    assert not torch.equal(u, u2)  # two calls in one function: two streams
    n = u.numel()
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.002 and abs(u.std() - 1 / math.sqrt(12)) < 0.002
    assert abs(((u < 0.25).double().mean()) - 0.25) < 0.003
    assert abs(z.mean()) < 0.005 and abs(z.std() - 1) < 0.005
    assert abs((z.abs() < 1).double().mean() - 0.6827) < 0.003  # a scaled uniform would give 0.577
    assert abs((z.abs() < 2).double().mean() - 0.9545) < 0.002
    assert abs(torch.corrcoef(torch.stack([u, u2]))[0, 1]) < 0.005  # independent streams
    assert abs(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1]) < 0.005  # neighbours too
    assert n > 1_000_000


def test_random_independent_of_threads_and_chunks():
    buf = torch.empty(300_001)
    prog = F.program(lambda x: nyto.randn_like(x) + nyto.rand_like(x), "p")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = F.run_flat(prog, [[buf]], seed=7)[0][0]
        torch.set_num_threads(max(2, threads))
        two = F.run_flat(prog, [[buf]], seed=7)[0][0]
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    cut = 1001  # chunks at an odd element: offset keeps the counters
    a = F.run_flat(prog, [[buf[:cut]]], seed=7)[0][0]
    b = F.run_flat(prog, [[buf[cut:]]], seed=7, offset=cut)[0][0]
    assert torch.equal(torch.cat([a, b]), one)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_scaled_uniform_folds_exactly(dtype):
    # `s * rand_like(x)` is compiled to one scaled draw; it must equal the product
    buf = torch.empty(3001, dtype=dtype)
    folded = F.program(lambda x, s: (s * nyto.rand_like(x), nyto.rand_like(x) * s), "pn")
    plain = F.program(lambda x, s: (lambda r, q: (s * r, q * s, r, q))(nyto.rand_like(x), nyto.rand_like(x)), "pn")
    assert "rands" in repr(folded) and "rands" not in repr(plain)
    a = F.run_flat(folded, [[buf]], [0.37], seed=9)
    b = F.run_flat(plain, [[buf]], [0.37], seed=9)
    assert torch.equal(a[0][0], b[0][0]) and torch.equal(a[1][0], b[1][0])
    assert torch.equal(b[0][0], b[2][0] * 0.37)


def test_random_bfloat16_is_rounded_float32_stream():
    x32 = particles(1, torch.float32, n=10_000)[0]
    x16 = x32.clone().to(torch.bfloat16)
    draw = nyto.fuse(lambda x: nyto.rand_like(x) * 2 - 1)
    torch.manual_seed(5)
    a = draw(x32)
    torch.manual_seed(5)
    b = draw(x16)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p.detach().to(torch.bfloat16), q.detach())


def test_randn_method_and_eager_rand_like():
    (x,) = particles(1, n=50_000)
    torch.manual_seed(1)
    z = nyto.fuse(lambda x: x.randn() * 0 + x.rand())(x)
    assert 0 <= flat_values(z).min() and flat_values(z).max() < 1
    r = nyto.randn_like(x)  # outside fuse: x.randn()
    assert isinstance(r, Net) and abs(flat_values(r).std() - 1) < 0.05


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device/kernels")
def test_cuda_uniforms_equal_cpu():
    buf = torch.empty(10_007)
    prog = F.program(lambda x: nyto.rand_like(x), "p")
    cpu = F.run_flat(prog, [[buf]], seed=11, offset=3)[0][0]
    gpu = F.run_flat(prog, [[buf.cuda()]], seed=11, offset=3)[0][0]
    assert torch.equal(cpu, gpu.cpu())


# ---------------------------------------------------------------------------
# Errors
@pytest.mark.parametrize(
    "fn, name",
    [
        (lambda x, y: x @ y, "matmul"),
        (lambda x, y: x // y, "floordiv"),
        (lambda x, y: torch.sin(x), "torch.sin"),
        (lambda x, y: x.tanh(), "tanh"),
        (lambda x, y: x if x > 0 else y, "truth value"),
        (lambda x, y: x + torch.ones(3), "Tensor"),
        (lambda x, y: nyto.rand_like(1.0), "rand_like"),
    ],
)
def test_unsupported_op_raises_at_trace_naming_it(fn, name):
    x, y = particles(2)
    bx, by = params(x), params(y)
    with pytest.raises(F.FuseError, match=name.replace(".", r"\.")):
        nyto.fuse(fn)(x, y, out=x)
    close(x, bx, torch.float32)
    close(y, by, torch.float32)


def test_mismatched_species_raise_and_leave_operands_unchanged():
    x, y = particles(2)
    (other,) = particles(1, seed=2)
    step = nyto.fuse(lambda a, b: a + b)
    bx, bo = params(x), params(other)
    with pytest.raises(AssertionError, match="different species"):
        step(x, other, out=x)
    with pytest.raises(AssertionError, match="different species"):
        step(x, y, out=other)
    close(x, bx, torch.float32)
    close(other, bo, torch.float32)


def test_bad_arguments():
    x, y = particles(2)
    step = nyto.fuse(lambda a, b: (a + b, a - b))
    with pytest.raises(TypeError, match="2 outputs"):
        step(x, y, out=x)
    with pytest.raises(TypeError, match="particles or real numbers"):
        step(x, "y")
    with pytest.raises(TypeError, match="at least one particle"):
        step(1.0, 2.0)
    with pytest.raises(TypeError, match="expected a function"):
        nyto.fuse(3)
    with pytest.raises(F.FuseError, match="returns traced values"):
        nyto.fuse(lambda a: "no")(x)


def test_run_flat_checks_before_writing():
    prog = F.program(lambda a, b, s: a * s + b, "ppn")
    a, b, out = torch.ones(5), torch.ones(6), torch.zeros(5)
    with pytest.raises(RuntimeError, match="size mismatch"):
        F.run_flat(prog, [[a], [b]], [1.0], out=[[out]])
    assert torch.equal(out, torch.zeros(5))
    with pytest.raises(RuntimeError, match="dtype"):
        F.run_flat(prog, [[a], [torch.ones(5, dtype=torch.float64)]], [1.0])
    with pytest.raises(RuntimeError, match="partially overlap"):
        big = torch.ones(10)
        F.run_flat(prog, [[big[:5]], [big[5:]]], [1.0], out=[[big[2:7]]])
    with pytest.raises(RuntimeError, match="not contiguous"):
        F.run_flat(prog, [[torch.ones(4, 4).t()], [torch.ones(4, 4)]], [1.0])
    with pytest.raises(TypeError, match="numbers"):
        F.run_flat(prog, [[a], [a]], [])
    with pytest.raises(RuntimeError, match="float32, float64"):
        F.run_flat(prog, [[torch.ones(3, dtype=torch.int64)]] * 2, [1.0])
    with pytest.raises(RuntimeError, match="not a fuse program"):
        nyto._C.fuse_run(b"\0" * 24, [], [[a]], None, 0, 0)


# ---------------------------------------------------------------------------
# The flat-buffer entry and the torch op
def test_run_flat_groups_and_stacked_buffers():
    prog = F.program(lambda x, v, w: (x + w * v, v * 2), "ppn")
    x32, v32 = torch.randn(4, 100), torch.randn(4, 100)  # e.g. a stacked swarm group
    x64, v64 = torch.randn(7, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    (nx32, nx64), (nv32, nv64) = F.run_flat(prog, [[x32, x64], [v32, v64]], [0.5])
    torch.testing.assert_close(nx32, x32 + 0.5 * v32, rtol=0, atol=0)
    torch.testing.assert_close(nx64, x64 + 0.5 * v64, rtol=0, atol=0)
    assert nv32.shape == (4, 100) and torch.equal(nv64, v64 * 2)


class Mixed(nyto.NytoModule):
    """Two storage groups: float32 and float64 parameters."""

    def __init__(self):
        super().__init__()
        self.f = torch.nn.Parameter(torch.randn(700))
        self.d = torch.nn.Parameter(torch.randn(3, 5, dtype=torch.float64))


def test_particles_with_several_groups():
    x = Mixed()
    y = x.randn()
    step = nyto.fuse(lambda a, b, s: (a * s + b, nyto.rand_like(a)))
    torch.manual_seed(0)
    got, r = step(x, y, 0.5)
    assert torch.equal(got.f.data, (x.f * 0.5 + y.f).detach())
    assert torch.equal(got.d.data, (x.d * 0.5 + y.d).detach()) and got.d.dtype == torch.float64
    assert 0 <= r.d.min() and r.d.max() < 1 and r.f.std() > 0.2
    xd, yd, xf, yf = x.d.detach().clone(), y.d.detach().clone(), x.f.detach().clone(), y.f.detach().clone()
    step(x, y, 2.0, out=(y, x))  # y = 2x + y, x = uniform: in place, crossed
    assert torch.equal(y.d.data, xd * 2.0 + yd) and torch.equal(y.f.data, xf * 2.0 + yf)
    assert 0 <= x.d.min() and x.d.max() < 1


def test_torch_op_route_matches_eager_entry():
    prog = F.program(lambda x, y, s: (x * s + y, x - y), "ppn")
    ins = [[torch.randn(6), torch.randn(4, dtype=torch.float64)], [torch.randn(6), torch.randn(4, dtype=torch.float64)]]
    eager = F.run_flat(prog, ins, [3.0])
    run_op = sys.modules["nytorch._fuse.api"]._run_op
    via_op = run_op(prog, ins, [3.0, *prog.lits], None, 0, 0)
    for a, b in zip(eager, via_op):
        for u, v in zip(a, b):
            assert torch.equal(u, v)
    out = [[torch.empty(6), torch.empty(4, dtype=torch.float64)], [torch.empty(6), torch.empty(4, dtype=torch.float64)]]
    run_op(prog, ins, [3.0, *prog.lits], out, 0, 0)
    assert all(torch.equal(u, v) for a, b in zip(eager, out) for u, v in zip(a, b))


def test_opcheck_fused_ops():
    prog = F.program(lambda x, y, s: (x * s + y, nyto.sqrt(abs(x))), "ppn")
    ins = [torch.randn(5), torch.randn(5), torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)]
    consts = [2.0, *prog.lits]
    torch.library.opcheck(torch.ops.nytorch.fused.default, (prog.ints, consts, ins, 0, 0))
    outs = [torch.empty(5), torch.empty(5), torch.empty(3, dtype=torch.float64), torch.empty(3, dtype=torch.float64)]
    torch.library.opcheck(torch.ops.nytorch.fused_.default, (prog.ints, consts, ins, outs, 0, 0))
    res = torch.ops.nytorch.fused.default(prog.ints, consts, ins, 0, 0)
    torch.testing.assert_close(res[0], ins[0] * 2 + ins[1], rtol=0, atol=0)
    torch.testing.assert_close(res[3], ins[2].abs().sqrt(), rtol=0, atol=0)


def test_eager_functions_on_particles_and_numbers():
    (x,) = particles(1, positive=True)
    close(nyto.sqrt(x), per_param(torch.sqrt, x), torch.float32, "ulp")
    close(nyto.clamp(x, 0.5, 1.0), per_param(lambda t: t.clamp(0.5, 1.0), x), torch.float32)
    cond = x.clone()
    with torch.no_grad():
        for q in cond.parameters():
            q.view(-1)[::2] = 0  # both branches taken
    close(nyto.where(cond, x, -1.0), per_param(lambda c, t: torch.where(c != 0, t, -1.0), cond, x), torch.float32)
    assert nyto.sqrt(4.0) == 2.0 and nyto.clamp(3, max=1) == 1.0 and nyto.where(0, 1.0, 2.0) == 2.0
    assert nyto.fma(2, 3, 1) == 7 and nyto.lerp(0.0, 10.0, 0.25) == 2.5 and math.isnan(nyto.maximum(1, math.nan))


def test_scalar_subexpressions_computed_once_in_double():
    (x,) = particles(1)
    step = nyto.fuse(lambda x, w: (1 - w) * x + w**2 * x + nyto.sqrt(w) + (w > 0.5))
    w = 0.3
    close(step(x, w), per_param(lambda t: (1 - w) * t + w**2 * t + math.sqrt(w) + 0.0, x), torch.float32)


@pytest.mark.parametrize("name", ["nytorch._fuse.api", "nytorch._fuse.trace", "nytorch._fuse.program"])
def test_docstring_examples(name):
    import doctest

    result = doctest.testmod(sys.modules[name], optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# uniform draws compared bit for bit between the builds: offsets on and off
# the 4-element Philox counters, sizes with ragged tails, scaled draws, doubles
PORTABLE_DRAWS = [
    ("rand", "float32", 5000, 5),
    ("rand", "float32", 5000, 0),
    ("rand", "float32", 4099, 8),
    ("rands", "float32", 3001, 0),
    ("rands", "float32", 2077, 3),
    ("rand", "float64", 3001, 0),
    ("rands", "float64", 1500, 1),
]


# The uniform draws both CPU-build comparisons make: one source, run in this
# process and in a subprocess under another ATEN_CPU_CAPABILITY.
_DRAWS_FN = (
    "import torch, nytorch as nyto\n"
    "def uniform_draws(items):\n"
    "    progs = {'rand': nyto.fuse.program(lambda x: nyto.rand_like(x), 'p'),\n"
    "             'rands': nyto.fuse.program(lambda x, c: c * nyto.rand_like(x), 'pn')}\n"
    "    return [nyto.fuse.run_flat(progs[k], [[torch.zeros(n, dtype=getattr(torch, dt))]],\n"
    "                               [1.7] if k == 'rands' else [], seed=3, offset=o)[0][0] for k, dt, n, o in items]\n"
)


def _uniform_draws(items):
    ns: dict = {}
    exec(_DRAWS_FN, ns)
    return ns["uniform_draws"](items)


def _draws_under(capability, items, extra=""):
    """(stdout, uniform draws) of a subprocess with ATEN_CPU_CAPABILITY=capability."""
    code = _DRAWS_FN + extra + "import sys\ntorch.save(uniform_draws(eval(sys.argv[2])), sys.argv[1])\n"
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "u.pt")
        out = subprocess.run(
            [sys.executable, "-c", code, path, repr(items)], env=env, capture_output=True, text=True, check=True
        ).stdout
        draws = torch.load(path)
    assert len(draws) == len(items)
    return out, draws


def test_portable_cpu_build_agrees():
    # the DEFAULT build (scalar Philox, std:: math) against this one (AVX2 here)
    extra = (
        "assert nyto._C.cpu_isa() == 'DEFAULT'\n"
        "p = nyto.fuse.program(lambda x, y, s: nyto.where(x > 0, x * s + y, nyto.lerp(x, y, 0.3)) + "
        "nyto.randn_like(x), 'ppn')\n"
        "g = torch.Generator().manual_seed(0); x = torch.randn(5000, generator=g); y = torch.randn(5000, generator=g)\n"
        "print(repr(nyto.fuse.run_flat(p, [[x], [y]], [0.5], seed=3)[0][0].sum().item()))\n"
    )
    out, portable = _draws_under("default", PORTABLE_DRAWS, extra)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5000, generator=g), torch.randn(5000, generator=g)
    p = F.program(lambda x, y, s: nyto.where(x > 0, x * s + y, nyto.lerp(x, y, 0.3)) + nyto.randn_like(x), "ppn")
    mine = F.run_flat(p, [[x], [y]], [0.5], seed=3)[0][0].sum().item()
    assert abs(float(out) - mine) < 1e-3
    for (k, dt, n, o), ours, theirs in zip(PORTABLE_DRAWS, _uniform_draws(PORTABLE_DRAWS), portable):
        assert torch.equal(ours, theirs), (k, dt, n, o)  # same Philox bits, same scaling
        assert 0 <= ours.min() and ours.max() < (1.7 if k == "rands" else 1.0)


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() != "AVX512", reason="the CPU has no AVX-512")
def test_avx512_philox_agrees_with_avx2():
    # this process runs the AVX2 build's AVX-512 Philox rounds; ATEN_CPU_CAPABILITY=avx2 keeps them off
    draws = PORTABLE_DRAWS + [("rand", "float32", 100003, 0), ("rand", "float32", 70001, 2**32 - 40)]
    _, avx2 = _draws_under("avx2", draws)
    for case, ours, theirs in zip(draws, _uniform_draws(draws), avx2):
        assert torch.equal(ours, theirs), case


def test_big_call_streams_outputs():
    # calls past the caches write outputs that share no input with
    # non-temporal stores (chains and plain stores), aligned or not
    n = (5 << 20) + 333
    g = torch.Generator().manual_seed(1)
    a, b, c = (torch.randn(n + 1, generator=g) for _ in range(3))
    soup = F.program(lambda a, b, c: 0.5 * a + 0.25 * b + 0.125 * c, "ppp")
    two = F.program(lambda a, b, c: (a * b + c, a - c), "ppp")
    for lo in (0, 1):  # 1: outputs 4 bytes past 32-byte alignment
        ins = [[t[lo : lo + n]] for t in (a, b, c)]
        o1, o2 = torch.full((n + 1,), 7.0)[lo : lo + n], torch.full((n + 1,), 7.0)[lo : lo + n]
        F.run_flat(soup, ins, out=[[o1]])
        torch.testing.assert_close(o1, 0.5 * ins[0][0] + 0.25 * ins[1][0] + 0.125 * ins[2][0], rtol=0, atol=1e-6)
        F.run_flat(two, ins, out=[[o1], [o2]])
        assert torch.equal(o2, ins[0][0] - ins[2][0])
        torch.testing.assert_close(o1, ins[0][0] * ins[1][0] + ins[2][0], rtol=0, atol=1e-6)


# --- the C hot path of in-place calls (_C.fuse_call) ------------------------
FUSE_MOD = sys.modules["nytorch._fuse.api"]


def pso_step(x, v, p, g, w, c1, c2):
    nv = w * v + c1 * nyto.rand_like(x) * (p - x) + c2 * nyto.rand_like(x) * (g - x)
    return x + nv, nv


def test_in_place_calls_take_the_c_path_and_decline_the_rest():
    from nytorch import _C

    x, v, p, g = particles(4)
    step = nyto.fuse(pso_step)
    step(x, v, p, g, 0.7, 1.5, 1.5, out=(x, v))  # traced by the Python front end
    out, out_list = (x, v), [x, v]
    assert _C.fuse_call(step.programs, (x, v, p, g, 0.7, 1.5, 1.5), out) is out
    assert _C.fuse_call(step.programs, (x, v, p, g, 0.7, 1.5, 1.5), out_list) is out_list
    other = Net(37)  # another species
    declined = [
        ((x, v, p, g, 0.7, 1.5, 1.5), None),  # out-of-place: Python builds the results
        ((x, v, p, g, 0.7, 1.5), (x, v)),  # an argument pattern not traced
        ((x, v, p, other, 0.7, 1.5, 1.5), (x, v)),  # mixed species: Python raises
        ((x, v, p, g, True, 1.5, 1.5), (x, v)),  # a bool number
        ((x, v, p, g, 0.7, 1.5, 1.5), (x,)),  # wrong number of outputs: Python raises
        ((x, v, p, g, 0.7, 1.5, 1.5), (x, "v")),  # not a particle
    ]
    for args, out in declined:
        assert _C.fuse_call(step.programs, args, out) is None
    with pytest.raises(AssertionError):
        step(x, v, p, other, 0.7, 1.5, 1.5, out=(x, v))
    with pytest.raises(TypeError):
        step(x, v, p, g, 0.7, 1.5, 1.5, out=(x,))


FUSED = {
    "pso": (pso_step, 4, 3, (0, 1)),
    "ema": (lambda a, b, d: a * d + b * (1 - d), 2, 1, (0,)),
    "soup": (lambda a, b, c, w: w * a + (1 - w) * b + c / 3, 3, 1, (3,)),
    "new-out": (lambda a, b: nyto.where(a > b, a, b) + nyto.randn_like(a), 2, 0, (5,)),  # out is no argument
}


@pytest.mark.parametrize("kind", list(FUSED))
def test_c_path_matches_python_path(kind, monkeypatch):
    fn, n_parts, n_nums, outs = FUSED[kind]
    nums = (0.7, 1.5, 1.5)[:n_nums]

    def run(c_path):
        calls = []
        real = FUSE_MOD._C.fuse_call
        monkeypatch.setattr(
            FUSE_MOD, "_fuse_call", (lambda *a: calls.append(real(*a)) or calls[-1]) if c_path else (lambda *a: None)
        )
        ps = particles(6, seed=3)
        step = nyto.fuse(fn)
        warm = [q.clone() for q in ps]  # same species: traces the program
        step(*warm[:n_parts], *nums, out=tuple(warm[i] for i in outs))
        torch.manual_seed(11)
        step(*ps[:n_parts], *nums, out=tuple(ps[i] for i in outs))
        assert step.traces == 1
        if c_path:  # the first call traced (C declined), the second ran in C
            assert calls[0] is None and calls[1] is not None
        return [q.detach().clone() for i in outs for q in ps[i].parameters()]

    python_route, c_route = run(False), run(True)
    assert len(python_route) == len(c_route) > 0
    for a, b in zip(python_route, c_route):
        assert torch.equal(a, b)
