"""Every op of ``nytorch.ops`` against a plain per-tensor torch reference.

Fast route (contiguous float tensors, fused kernel), slow route (anything
else, per-tensor ATen), random fills, opcheck, torch.compile, bad input and
the CPU instruction-set choice.
"""

import itertools
import os
import re
import subprocess
import sys

import nytorch
import pytest
import torch
from nytorch import ops
from nytorch.ops import ELEMENTWISE_OPS, RANDOM_OPS

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA"))]
FLOATS = [torch.float32, torch.float64, torch.bfloat16]
OTHER_DEVICE = "cuda" if HAS_CUDA else "meta"


def _rdiv(s, x):
    # Python's `s / x` is `x.reciprocal() * s` (two roundings); the op is one
    # true division, like torch.div with a wrapped number.
    return torch.full_like(x, s, dtype=torch.result_type(x, s)) / x


# op name -> reference on one index: x = that index's tensors (list order of
# the op; copy_ gets [self, src]), s = the scalars.
REF = {
    "neg": lambda x, s: -x[0],
    "copy": lambda x, s: x[-1].clone(),
    "add": lambda x, s: x[0] + x[1],
    "sub": lambda x, s: x[0] - x[1],
    "mul": lambda x, s: x[0] * x[1],
    "div": lambda x, s: x[0] / x[1],
    "pow": lambda x, s: x[0] ** x[1],
    "add_scalar": lambda x, s: x[0] + s[0],
    "sub_scalar": lambda x, s: x[0] - s[0],
    "mul_scalar": lambda x, s: x[0] * s[0],
    "div_scalar": lambda x, s: x[0] / s[0],
    "pow_scalar": lambda x, s: x[0] ** s[0],
    "rsub_scalar": lambda x, s: s[0] - x[0],
    "rdiv_scalar": lambda x, s: _rdiv(s[0], x[0]),
    "rpow_scalar": lambda x, s: s[0] ** x[0],
    "axpby": lambda x, s: s[0] * x[0] + s[1] * x[1],
    "lerp": lambda x, s: torch.lerp(x[0], x[1], s[0]),
    "addcmul": lambda x, s: torch.addcmul(x[0], x[1], x[2], value=s[0]),
    "pso_velocity": lambda x, s: s[0] * x[0] + s[1] * x[4] * (x[2] - x[1]) + s[2] * x[5] * (x[3] - x[1]),
    "fill": lambda x, s: torch.full_like(x[0], s[0]),
    "hypot": lambda x, s: torch.hypot(x[0], x[1]),
    # torch.hypot takes the number as a wrapped tensor: cast to the result dtype
    "hypot_scalar": lambda x, s: torch.hypot(x[0], torch.full_like(x[0], s[0], dtype=torch.result_type(x[0], s[0]))),
}
assert set(REF) == set(ELEMENTWISE_OPS)

# Float scalars per op, plus extra cases (lerp's two branches, pow's special exponents).
SCALARS = {
    "add_scalar": (0.3,),
    "sub_scalar": (1.7,),
    "mul_scalar": (-1.3,),
    "div_scalar": (0.7,),
    "pow_scalar": (2.0,),
    "rsub_scalar": (2.5,),
    "rdiv_scalar": (2.5,),
    "rpow_scalar": (1.5,),
    "axpby": (1.5, -0.7),
    "lerp": (0.3,),
    "addcmul": (0.5,),
    "pso_velocity": (0.7, 1.5, 1.3),
    "fill": (1.25,),
    "hypot_scalar": (2.3,),
}
INT_SCALARS = {
    "add_scalar": (3,),
    "sub_scalar": (2,),
    "mul_scalar": (-3,),
    "div_scalar": (2,),
    "pow_scalar": (2,),
    "rsub_scalar": (5,),
    "rdiv_scalar": (6,),
    "rpow_scalar": (2,),
    "axpby": (2, -3),
    "lerp": (1,),
    "addcmul": (2,),
    "pso_velocity": (2, 3, -1),
    "fill": (7,),
    "hypot_scalar": (3,),
}
CASES = [(op, SCALARS.get(op, ())) for op in ELEMENTWISE_OPS] + [
    ("lerp", (0.7,)),
    ("lerp", (-0.2,)),
    ("pow_scalar", (0.5,)),
    ("pow_scalar", (-1.0,)),
    ("pow_scalar", (1.7,)),
    ("pow_scalar", (3,)),
    ("hypot_scalar", (-0.0,)),
    ("hypot_scalar", (float("inf"),)),
    ("hypot_scalar", (1e30,)),
]
CASE_IDS = [f"{op}{s if op in ('lerp', 'pow_scalar', 'hypot_scalar') else ''}" for op, s in CASES]

# Where the kernel mirrors torch's own float32/float64 arithmetic the results
# must be bit-identical. Not exact: pow (SLEEF in the vector body, libm in the
# tail), x ** 0.5 (torch's AVX2 float sqrt is within 1 ulp, the kernel's is
# correctly rounded) and addcmul (torch's AVX2 build lets the compiler contract
# the scalar tail of its kernel, x + v*y*z, into an FMA: 1 ulp apart there).
EXACT = {
    "neg",
    "copy",
    "fill",
    "add",
    "sub",
    "mul",
    "div",
    "add_scalar",
    "sub_scalar",
    "mul_scalar",
    "div_scalar",
    "rsub_scalar",
    "rdiv_scalar",
    "axpby",
    "pso_velocity",
    "lerp",
}
POSITIVE_BASE = {"pow", "pow_scalar", "rpow_scalar"}


def tol(op, scalars, dtype):
    """assert_close kwargs for op's result in dtype."""
    exact = op in EXACT or (op == "pow_scalar" and scalars[0] in (2.0, 3, -1.0))
    if dtype in (torch.float32, torch.float64) and exact:
        return dict(rtol=0, atol=0)
    if dtype == torch.float32:
        return dict(rtol=4e-6, atol=1e-6)
    if dtype == torch.float64:
        return dict(rtol=1e-13, atol=1e-13)
    if dtype in (torch.bfloat16, torch.float16):
        # The fused kernel rounds once; the torch chain rounds after every
        # step, so the gap grows with the size of the intermediate terms.
        atol = {"axpby": 0.03, "addcmul": 0.03, "lerp": 0.02, "pso_velocity": 0.15}.get(op, 0.01)
        return dict(rtol=2e-2, atol=atol)
    return dict(rtol=0, atol=0)  # integers, bool


def n_lists(op, inplace):
    return ELEMENTWISE_OPS[op][0] + (1 if op == "copy" and inplace else 0)


def call(op, inplace, lists, scalars):
    return getattr(ops, op + ("_" if inplace else ""))(*lists, *scalars)


def assert_same(actual, expected, rtol, atol):
    """Same dtype, shape and device; values within rtol/atol (NaN == NaN)."""
    assert (actual.dtype, actual.shape, actual.device) == (expected.dtype, expected.shape, expected.device)
    if actual.device.type == "meta":
        return
    # Quick checks first; NaNs and failures fall through to assert_close.
    if rtol == 0 and atol == 0:
        if torch.equal(actual, expected):
            return
    else:
        a, e = actual.double(), expected.double()
        if bool(((a - e).abs() <= atol + rtol * e.abs()).all()):
            return
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=True)


def snapshot(lists):
    return [[t.clone() for t in l] for l in lists]


def assert_unchanged(lists, before):
    for l, b in zip(lists, before):
        for t, tb in zip(l, b):
            assert_same(t, tb, rtol=0, atol=0)


# ---------------------------------------------------------------------------
# Operand construction.
SETS = {
    "several": [(3, 5), (0,), (17,), (2, 3, 4), (3, 0), (1,), (40, 33)],  # with empty tensors
    # > 2**15 elements in all, so at::parallel_for splits, mid-tensor.
    "large": [(9,), (181, 181), (33,)],
}
LAYOUTS = ("contig", "noncontig", "mixed")


def make(shape, dtype, device, gen, *, noncontig=False, positive=False, kind="float"):
    """A tensor of `shape` (a strided/transposed view if noncontig) and its base."""
    shape = tuple(shape)
    if noncontig and len(shape) >= 2:
        base_shape = shape[:-2] + (shape[-1], shape[-2])
    elif noncontig:
        base_shape = (2 * shape[0],)
    else:
        base_shape = shape
    if kind == "int":
        vals = torch.randint(1, 5, base_shape, generator=gen)
        if not positive:
            vals = vals * (torch.randint(0, 2, base_shape, generator=gen) * 2 - 1)
    else:  # magnitudes in [0.5, 2): no zeros to divide by
        vals = torch.rand(base_shape, generator=gen) * 1.5 + 0.5
        if not positive:
            vals = torch.where(torch.rand(base_shape, generator=gen) < 0.5, -vals, vals)
    base = vals.to(dtype).to(device)
    if noncontig and len(shape) >= 2:
        t = base.transpose(-1, -2)
    elif noncontig:
        t = base[::2]
    else:
        t = base
    assert t.shape == shape
    return t, base


def make_lists(op, inplace, shapes, dtypes, device, layout="contig", kind="float", seed=0):
    """Operand lists for op; dtypes[k][i] is the dtype of list k, index i."""
    gen = torch.Generator().manual_seed(seed)
    lists, bases = [], []
    for k in range(n_lists(op, inplace)):
        positive = op in POSITIVE_BASE and k == 0 or kind == "int" and op in ("pow", "rpow_scalar")
        row, brow = [], []
        for i, shape in enumerate(shapes):
            nc = layout == "noncontig" or (layout == "mixed" and (i + k) % 2 == 1)
            t, b = make(shape, dtypes[k][i], device, gen, noncontig=nc, positive=positive, kind=kind)
            row.append(t)
            brow.append(b)
        lists.append(row)
        bases.append(brow)
    return lists, bases


# ---------------------------------------------------------------------------
# Fast and slow route against the reference, every op x dtype x layout x set.
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "layout,tset", [(lay, ts) for lay in LAYOUTS for ts in SETS if (lay, ts) != ("noncontig", "large")]
)  # per-tensor ATen: size is moot
@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("op,scalars", CASES, ids=CASE_IDS)
def test_op_matches_torch(op, scalars, dtype, inplace, layout, tset, device):
    shapes = SETS[tset]
    nl = n_lists(op, inplace)
    lists, bases = make_lists(op, inplace, shapes, [[dtype] * len(shapes)] * nl, device, layout)
    before = snapshot(lists)
    bases_before = [[b.clone() for b in row] for row in bases]
    expected = [REF[op]([b[i] for b in before], scalars) for i in range(len(shapes))]
    kw = tol(op, scalars, dtype)

    if not inplace:
        out = call(op, False, lists, scalars)
        assert isinstance(out, list) and len(out) == len(shapes)
        for r, e, x in zip(out, expected, lists[0]):
            assert_same(r, e, **kw)
            assert r.is_contiguous()
            if op == "copy" and x.numel():
                assert r.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
        assert_unchanged(lists, before)
        return

    selves = list(lists[0])
    ptrs = [t.data_ptr() for t in selves]
    versions = [t._version for t in selves]
    assert call(op, True, lists, scalars) is None
    assert all(a is b for a, b in zip(lists[0], selves))
    assert [t.data_ptr() for t in selves] == ptrs
    assert all(t._version > v for t, v in zip(selves, versions))
    for i, (t, e) in enumerate(zip(selves, expected)):
        assert_same(t, e.to(dtype), **kw)
        # Only the view was written: the rest of its base is untouched.
        want = bases_before[0][i].clone()
        want.as_strided(t.shape, t.stride(), t.storage_offset() - bases[0][i].storage_offset()).copy_(e)
        assert_same(bases[0][i], want, **kw)
    assert_unchanged(lists[1:], before[1:])


# ---------------------------------------------------------------------------
# Slow route: integers, mixed dtypes; results identical to torch, dtype included.
def _expect_inplace(op, xs, scalars):
    """torch's in-place result for one index, or None where torch refuses."""
    try:
        r = REF[op](xs, scalars)
    except (RuntimeError, NotImplementedError):
        return None
    if op != "copy" and not torch.can_cast(r.dtype, xs[0].dtype):
        return None
    return r.to(xs[0].dtype)


@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize("op", list(ELEMENTWISE_OPS))
def test_int64_slow_route(op, inplace):
    shapes = SETS["several"]
    nl = n_lists(op, inplace)
    scalars = INT_SCALARS.get(op, ())
    lists, _ = make_lists(op, inplace, shapes, [[torch.int64] * len(shapes)] * nl, "cpu", kind="int")
    before = snapshot(lists)
    xs = [[b[i] for b in before] for i in range(len(shapes))]
    if not inplace:
        try:
            expected = [REF[op](x, scalars) for x in xs]
        except (RuntimeError, NotImplementedError):  # torch refuses (lerp on integers)
            with pytest.raises((RuntimeError, NotImplementedError)):
                call(op, False, lists, scalars)
            return
        for r, e in zip(call(op, False, lists, scalars), expected):
            assert_same(r, e, rtol=0, atol=0)
        assert_unchanged(lists, before)
        return
    expected = [_expect_inplace(op, x, scalars) for x in xs]
    if any(e is None for e in expected):
        with pytest.raises(RuntimeError, match=rf"nytorch\.{op}_: .*index 0"):
            call(op, True, lists, scalars)
        assert_unchanged(lists, before)
        return
    call(op, True, lists, scalars)
    for t, e in zip(lists[0], expected):
        assert_same(t, e, rtol=0, atol=0)


MIXED = [torch.float32, torch.float64, torch.bfloat16, torch.int64]


@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize("op", list(ELEMENTWISE_OPS))
def test_mixed_dtypes(op, inplace):
    """Per index and per list different dtypes: promotes (out-of-place) or
    casts to self (in-place) exactly like torch."""
    shapes = [(3, 5), (17,), (2, 3, 4), (6,), (4, 4)]
    nl = n_lists(op, inplace)
    pool = FLOATS if inplace else MIXED  # an int64 self can't take float results
    dtypes = [[pool[(i + k) % len(pool)] for i in range(len(shapes))] for k in range(nl)]
    scalars = SCALARS.get(op, ())
    lists, _ = make_lists(op, inplace, shapes, dtypes, "cpu", seed=1)
    before = snapshot(lists)
    xs = [[b[i] for b in before] for i in range(len(shapes))]
    if inplace:
        expected = [_expect_inplace(op, x, scalars) for x in xs]
        bad = [i for i, e in enumerate(expected) if e is None]
        if bad:  # lerp_ needs one dtype
            with pytest.raises(RuntimeError, match=rf"nytorch\.{op}_: .*index {bad[0]}"):
                call(op, True, lists, scalars)
            assert_unchanged(lists, before)
            return
        call(op, True, lists, scalars)
        results = lists[0]
    else:
        try:
            expected = [REF[op](x, scalars) for x in xs]
        except RuntimeError:
            with pytest.raises(RuntimeError):
                call(op, False, lists, scalars)
            return
        results = call(op, False, lists, scalars)
        assert_unchanged(lists, before)
    for r, e in zip(results, expected):
        assert r.dtype == e.dtype
        assert_same(r, e, **tol(op, scalars, e.dtype))


# ---------------------------------------------------------------------------
# Random fills.
def _rand_lists():
    base = torch.empty(300, 400)
    return [
        torch.empty(100_000),
        torch.empty(100_000, dtype=torch.float64),
        torch.empty(250, 400, dtype=torch.bfloat16),
        torch.empty(100_000),
        torch.empty(7, dtype=torch.float64),
        torch.empty(0),
        base.t(),
    ]  # last: non-contiguous


def _draw(name, inplace, xs, a, b, **kw):
    if inplace:
        getattr(ops, name + "_")(xs, a, b, **kw)
        return xs
    return getattr(ops, name)(xs, a, b, **kw)


@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize(
    "name,a,b", [("normal", 0.0, 1.0), ("normal", 2.0, 3.0), ("uniform", 0.0, 1.0), ("uniform", -2.0, 5.0)]
)
def test_random_distribution(name, a, b, inplace):
    xs = _rand_lists()
    versions = [t._version for t in xs]
    torch.manual_seed(0)
    out = _draw(name, inplace, xs, a, b)
    assert [t.dtype for t in out] == [t.dtype for t in xs]
    assert [t.shape for t in out] == [t.shape for t in xs]
    if inplace:
        assert all(t._version > v for t, v in zip(xs, versions))
    for t in out:
        if t.numel() < 1000:
            continue
        f = t.double().flatten()
        if name == "normal":
            assert abs(f.mean().item() - a) < 0.02 * b
            assert abs(f.std().item() - b) < 0.02 * b
        else:
            assert f.min().item() >= a
            assert f.max().item() < b if t.dtype != torch.bfloat16 else f.max().item() <= b
            assert abs(f.mean().item() - (a + b) / 2) < 0.01 * (b - a)
            assert abs(f.std().item() - (b - a) / 12**0.5) < 0.01 * (b - a)
    # Tensors of one (device, dtype) group get different samples.
    assert not torch.equal(out[0], out[3])


@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize("name", RANDOM_OPS)
def test_random_seed_and_generator(name, inplace):
    def draw(**kw):
        return [t.clone() for t in _draw(name, inplace, _rand_lists(), 0.0, 1.0, **kw)]

    torch.manual_seed(123)
    r1 = draw()
    torch.manual_seed(123)
    r2 = draw()
    torch.manual_seed(124)
    r3 = draw()
    for x, y, z in zip(r1, r2, r3):
        assert torch.equal(x, y)
        if x.numel() > 1:
            assert not torch.equal(x, z)
    # An explicit generator: reproducible and leaves the global one alone.
    state = torch.get_rng_state()
    g1 = draw(generator=torch.Generator().manual_seed(7))
    g2 = draw(generator=torch.Generator().manual_seed(7))
    g3 = draw(generator=torch.Generator().manual_seed(8))
    assert torch.equal(torch.get_rng_state(), state)
    for x, y, z in zip(g1, g2, g3):
        assert torch.equal(x, y)
        if x.numel() > 1:
            assert not torch.equal(x, z)


def test_random_bad_input():
    with pytest.raises(RuntimeError, match=r"nytorch\.normal: std must be >= 0"):
        ops.normal([torch.empty(3)], 0.0, -1.0)
    with pytest.raises(RuntimeError, match=r"nytorch\.uniform: low must be <= high"):
        ops.uniform([torch.empty(3)], 1.0, 0.0)
    xs = [torch.zeros(3), torch.zeros(3, dtype=torch.int64)]
    with pytest.raises(RuntimeError, match=r"nytorch\.uniform: tensor 1 has dtype Long"):
        ops.uniform_(xs)
    assert not xs[0].any()


# ---------------------------------------------------------------------------
# opcheck: schema, autograd registration, fake kernels, AOT dispatch.
def _opcheck_args(op, inplace):
    lists, _ = make_lists(op, inplace, [(3,), (2, 4)], [[torch.float32] * 2] * n_lists(op, inplace), "cpu", seed=2)
    return (*lists, *SCALARS.get(op, ()))


@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize("op", list(ELEMENTWISE_OPS))
def test_opcheck(op, inplace):
    handle = getattr(torch.ops.nytorch, op + ("_" if inplace else "")).default
    torch.library.opcheck(handle, _opcheck_args(op, inplace))


@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize("name", RANDOM_OPS)
def test_opcheck_random(name, inplace):
    handle = getattr(torch.ops.nytorch, name + ("_" if inplace else "")).default
    # test_aot_dispatch_dynamic compares the values of two runs, which a
    # random op can't match; the schema/registration/fake checks still apply.
    torch.library.opcheck(
        handle,
        ([torch.empty(3), torch.empty(2, 4)], 0.5, 2.0),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )
    # ...and with a non-contiguous input the fake kernel's strides still match.
    torch.library.opcheck(handle, ([torch.empty(4, 3).t()],), test_utils=("test_faketensor",))


@pytest.mark.parametrize("op", ["neg", "add", "axpby", "pso_velocity", "copy", "fill"])
def test_opcheck_noncontiguous_and_int(op):
    """The fake kernels describe the slow route's results too (dtype, strides)."""
    handle = getattr(torch.ops.nytorch, op).default
    nl = n_lists(op, False)
    lists, _ = make_lists(op, False, [(3, 4), (5,)], [[torch.float32] * 2] * nl, "cpu", layout="noncontig", seed=3)
    torch.library.opcheck(handle, (*lists, *SCALARS.get(op, ())), test_utils=("test_faketensor",))
    lists, _ = make_lists(op, False, [(3, 4), (5,)], [[torch.int64] * 2] * nl, "cpu", kind="int")
    torch.library.opcheck(handle, (*lists, *SCALARS.get(op, ())), test_utils=("test_faketensor",))


def test_compile_chain_matches_eager():
    def chain(xs, ys, zs):
        a = ops.axpby(xs, ys, 0.5, -1.5)
        b = ops.mul_scalar(a, 3.0)
        ops.addcmul_(b, ys, zs, 0.25)
        return ops.add(b, xs)

    lists, _ = make_lists("addcmul", False, [(3, 5), (17,), (2, 3, 4)], [[torch.float32] * 3] * 3, "cpu", seed=4)
    eager = chain(*lists)
    torch._dynamo.reset()
    compiled = torch.compile(chain, fullgraph=True)(*lists)
    for c, e in zip(compiled, eager):
        assert_same(c, e, rtol=0, atol=0)


# ---------------------------------------------------------------------------
# Bad input: a RuntimeError naming the op and the index, every operand unchanged.
MULTI = [op for op in ELEMENTWISE_OPS if ELEMENTWISE_OPS[op][0] >= 2]
INPLACE_FORMS = [(op, ip) for op in ELEMENTWISE_OPS for ip in (False, True) if n_lists(op, ip) >= 2]
FORM_IDS = [op + ("_" if ip else "") for op, ip in INPLACE_FORMS]


def _good(op, inplace, n=3, dtype=torch.float32):
    lists, _ = make_lists(op, inplace, [(3, 4), (5,), (2, 3)][:n], [[dtype] * n] * n_lists(op, inplace), "cpu", seed=5)
    return lists


def _name(op, inplace):
    return re.escape(f"nytorch.{op}{'_' if inplace else ''}: ")


@pytest.mark.parametrize("op,inplace", INPLACE_FORMS, ids=FORM_IDS)
def test_unequal_lengths(op, inplace):
    lists = _good(op, inplace)
    lists[-1] = lists[-1][:2]
    before = snapshot(lists)
    k = len(lists) - 1
    with pytest.raises(RuntimeError, match=_name(op, inplace) + rf".*same length.*argument {k} has 2"):
        call(op, inplace, lists, SCALARS.get(op, ()))
    assert_unchanged(lists, before)


@pytest.mark.parametrize("op,inplace", INPLACE_FORMS, ids=FORM_IDS)
def test_shape_mismatch(op, inplace):
    lists = _good(op, inplace)
    lists[-1][2] = torch.ones(3, 2)
    before = snapshot(lists)
    with pytest.raises(RuntimeError, match=_name(op, inplace) + "shape mismatch at index 2"):
        call(op, inplace, lists, SCALARS.get(op, ()))
    assert_unchanged(lists, before)


@pytest.mark.parametrize("op,inplace", INPLACE_FORMS, ids=FORM_IDS)
def test_device_mismatch(op, inplace):
    lists = _good(op, inplace)
    lists[1][1] = lists[1][1].to(OTHER_DEVICE)
    before = snapshot(lists)
    with pytest.raises(RuntimeError, match=_name(op, inplace) + "device mismatch at index 1"):
        call(op, inplace, lists, SCALARS.get(op, ()))
    assert_unchanged(lists, before)


DTYPE_BAD = [op for op in ELEMENTWISE_OPS if op not in ("neg", "copy", "fill")]  # copy_/fill_ cast


@pytest.mark.parametrize("op", DTYPE_BAD)
def test_inplace_dtype_mismatch(op):
    """int64 self at index 1 with float operands / float scalars."""
    lists = _good(op, True)
    lists[0][1] = torch.arange(5)
    before = snapshot(lists)
    with pytest.raises(RuntimeError, match=_name(op, True) + "dtype mismatch at index 1"):
        call(op, True, lists, SCALARS.get(op, ()))
    assert_unchanged(lists, before)


@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize("op", [op for op in ELEMENTWISE_OPS if ELEMENTWISE_OPS[op][1]])
def test_complex_scalar(op, inplace):
    lists = _good(op, inplace)
    scalars = list(SCALARS[op])
    scalars[-1] = 1 + 2j
    before = snapshot(lists)
    with pytest.raises(RuntimeError, match=_name(op, inplace) + f"scalar argument {len(scalars) - 1} is complex"):
        call(op, inplace, lists, scalars)
    assert_unchanged(lists, before)


def _overlapping():
    """(op, lists, message): in-place operands torch refuses only while writing."""
    base = torch.arange(10.0)
    yield "add_scalar", [[torch.ones(3), torch.zeros(1).expand(3)]], (1.0,), "internal overlap at index 1"
    yield "add", [[torch.ones(4), base[1:5]], [torch.ones(4), base[0:4]]], (), "partial overlap at index 1"
    yield "neg", [[torch.ones(3), torch.tensor([True, False])]], (), "index 1"
    yield "sub", [[torch.arange(3), torch.arange(2)], [torch.arange(3), torch.tensor([True, False])]], (), "index 1"
    yield (
        "pow",
        [[torch.ones(2), torch.tensor([True, False])], [torch.ones(2), torch.tensor([True, True])]],
        (),
        "index 1",
    )


@pytest.mark.parametrize("case", range(5))
def test_inplace_refused_while_writing(case):
    """Errors torch raises mid-write (memory overlap, bool arithmetic) are
    checked up front: nothing is written at earlier indices."""
    op, lists, scalars, msg = list(_overlapping())[case]
    before = snapshot(lists)
    with pytest.raises(RuntimeError, match=_name(op, True) + ".*" + msg):
        call(op, True, lists, scalars)
    assert_unchanged(lists, before)


@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize("op", ["sub_scalar", "rsub_scalar"])
def test_bool_scalar_subtraction_is_refused_like_torch(op, inplace):
    """torch refuses `x - True` (and `True - x`), with this wording; so do both
    routes, before anything is written."""
    xs = [torch.arange(4.0), torch.arange(6.0).view(2, 3).t(), torch.arange(3)]
    with pytest.raises(RuntimeError, match="Subtraction, the `-` operator, with a bool"):
        torch.sub(xs[0], True)
    before = snapshot([xs])
    with pytest.raises(RuntimeError, match="Subtraction, the `-` operator, with a bool"):
        call(op, inplace, [xs], (True,))
    assert_unchanged([xs], before)


def test_inplace_full_alias_allowed():
    xs = [torch.arange(4.0), torch.arange(3.0)]
    ops.add_(xs, xs)
    assert torch.equal(xs[0], torch.arange(4.0) * 2)
    x = torch.zeros(1).expand(3)
    ops.fill_([x], 2.0)  # like torch, fill_ may write an expanded tensor
    assert x.tolist() == [2.0, 2.0, 2.0]


# ---------------------------------------------------------------------------
@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize("op", list(ELEMENTWISE_OPS) + list(RANDOM_OPS))
def test_empty_list(op, inplace):
    if op in RANDOM_OPS:
        args = ([],)
    else:
        args = ([],) * n_lists(op, inplace) + SCALARS.get(op, ())
    out = getattr(ops, op + ("_" if inplace else ""))(*args)
    assert out is None if inplace else out == []


_ISA_SCRIPT = r"""
import sys, torch, nytorch
from nytorch import ops
inputs = torch.load(sys.argv[1])
out = {k: getattr(ops, k.split(':')[0])(*v) for k, v in inputs.items()}
torch.save((nytorch._C.cpu_isa(), out), sys.argv[2])
"""
ISA_OPS = {
    "add": (),
    "div": (),
    "mul_scalar": (-1.3,),
    "rdiv_scalar": (2.5,),
    "pow_scalar": (1.7,),
    "pow": (),
    "axpby": (1.5, -0.7),
    "lerp": (0.3,),
    "addcmul": (0.5,),
    "pso_velocity": (0.7, 1.5, 1.3),
}


def test_cpu_isa_default_matches(tmp_path):
    """The portable (DEFAULT) kernel build gives the in-process build's results."""
    inputs = {}
    for op, dtype in itertools.product(ISA_OPS, FLOATS):
        lists, _ = make_lists(op, False, [(1000,), (3,), (5, 7)], [[dtype] * 3] * n_lists(op, False), "cpu")
        inputs[f"{op}:{dtype}"] = (*lists, *ISA_OPS[op])
    torch.save(inputs, tmp_path / "in.pt")
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    subprocess.run(
        [sys.executable, "-c", _ISA_SCRIPT, str(tmp_path / "in.pt"), str(tmp_path / "out.pt")],
        env=env,
        check=True,
        timeout=120,
    )
    isa, theirs = torch.load(tmp_path / "out.pt")
    assert isa == "DEFAULT"
    assert nytorch._C.cpu_isa() in ("AVX2", "DEFAULT")
    for key, args in inputs.items():
        op, _ = key.split(":")
        mine = getattr(ops, op)(*args)
        # pow: SLEEF vs libm; lerp: vector fmadd is fused on AVX2 only.
        kw = dict(rtol=0, atol=0) if op not in ("pow", "pow_scalar", "lerp") else tol("pow", (1.7,), args[0][0].dtype)
        for a, b in zip(mine, theirs[key]):
            assert_same(a, b, **kw)
