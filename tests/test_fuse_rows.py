"""nytorch.fuse.run_rows: a program over stacked rows where an input may be
one row read by every row. It must compute and draw bitwise what run_flat does
over the stacked buffers with that row expanded, on all rows or a subset,
and refuse bad rows / operands before writing anything."""

import nytorch as nyto
import pytest
import torch
from nytorch import fuse as F

HAS_CUDA = torch.cuda.is_available() and nyto._C.has_cuda()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device/kernels"))]


def pull(x, v, g, w, c):
    """Random, one-row and stacked operands; two outputs."""
    v = w * v + c * nyto.rand_like(x) * (g - x) + 0.01 * nyto.randn_like(x)
    return x + v, v


PULL = F.program(pull, "pppnn")


def operands(n, shapes, dtype, device, seed=0):
    """Stacked x, v ([n, *shape] per group) and one row g per group."""
    gen = torch.Generator().manual_seed(seed)

    def make(*s):
        return torch.randn(*s, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)

    return [make(n, *s) for s in shapes], [make(n, *s) for s in shapes], [make(*s) for s in shapes]


def flat_reference(xs, vs, gs, *, seed, offset=0):
    """run_flat over the stacked buffers with each one-row input expanded."""
    full = [g.expand(x.shape).contiguous() for g, x in zip(gs, xs)]
    return F.run_flat(PULL, [xs, vs, full], [0.7, 1.5], seed=seed, offset=offset)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shapes", [[(13,)], [(4, 5), (1,), (2048 + 3,)]], ids=["one group", "three groups"])
def test_all_rows_equal_run_flat_bitwise(shapes, dtype, device):
    xs, vs, gs = operands(6, shapes, dtype, device)
    ref = flat_reference(xs, vs, gs, seed=11, offset=5)
    got = F.run_rows(PULL, [xs, vs, gs], [0.7, 1.5], seed=11, offset=5)
    for r, o in zip(ref, got):
        for a, b in zip(r, o):
            assert a.shape == b.shape and torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rows", [[0], [1, 4], [0, 2, 3, 5], []])
def test_listed_rows_only_and_in_place(rows, device):
    xs, vs, gs = operands(6, [(37,), (3,)], torch.float32, device, seed=1)
    before = [t.clone() for t in xs + vs]
    ref = flat_reference(xs, vs, gs, seed=3)
    F.run_rows(PULL, [xs, vs, gs], [0.7, 1.5], out=[xs, vs], seed=3, rows=rows)
    for j, outs in enumerate((xs, vs)):
        for g, t in enumerate(outs):
            old = before[j * len(xs) + g]
            for r in range(6):
                want = ref[j][g][r] if r in rows else old[r]
                assert torch.equal(t[r], want), (j, g, r)


def test_rows_as_an_int64_tensor_equal_the_list():
    xs, vs, gs = operands(7, [(300,)], torch.float32, "cpu", seed=4)
    a = [t.clone() for t in xs], [t.clone() for t in vs]
    F.run_rows(PULL, [a[0], a[1], gs], [0.7, 1.5], out=[a[0], a[1]], seed=5, rows=[1, 2, 3, 6])
    mask = torch.tensor([False, True, True, True, False, False, True])
    F.run_rows(PULL, [xs, vs, gs], [0.7, 1.5], out=[xs, vs], seed=5, rows=mask.nonzero()[:, 0])
    assert torch.equal(xs[0], a[0][0]) and torch.equal(vs[0], a[1][0])
    before = xs[0].clone()
    with pytest.raises(RuntimeError, match="1-D int64"):
        F.run_rows(PULL, [xs, vs, gs], [0.7, 1.5], out=[xs, vs], seed=5, rows=torch.tensor([1.0, 2.0]))
    assert torch.equal(xs[0], before)


def test_two_subsets_make_one_call():
    # the split PSO uses: disjoint row subsets, one seed, are one call over all rows
    xs, vs, gs = operands(9, [(100,)], torch.float32, "cpu", seed=2)
    ref = flat_reference(xs, vs, gs, seed=8)
    F.run_rows(PULL, [xs, vs, gs], [0.7, 1.5], out=[xs, vs], seed=8, rows=[0, 4, 5])
    F.run_rows(PULL, [xs, vs, gs], [0.7, 1.5], out=[xs, vs], seed=8, rows=[1, 2, 3, 6, 7, 8])
    assert torch.equal(xs[0], ref[0][0]) and torch.equal(vs[0], ref[1][0])


def test_random_state_equals_int_route_and_advances_like_run_flat():
    xs, vs, gs = operands(4, [(10,)], torch.float32, "cpu")
    st = F.random_state(21, offset=6)
    got = F.run_rows(PULL, [xs, vs, gs], [0.7, 1.5], seed=st)
    ref = flat_reference(xs, vs, gs, seed=21, offset=6)
    assert torch.equal(got[0][0], ref[0][0])
    st2 = F.random_state(21, offset=6)
    F.run_flat(PULL, [xs, vs, [g.expand(4, 10).contiguous() for g in gs]], [0.7, 1.5], seed=st2)
    assert torch.equal(st, st2) and int(st[1]) > 6


def test_new_outputs_are_stacked():
    xs, vs, gs = operands(3, [(2, 4)], torch.float64, "cpu")
    (nx,), (nv,) = F.run_rows(PULL, [xs, vs, gs], [0.5, 1.0], seed=0)
    assert nx.shape == (3, 2, 4) and nv.shape == (3, 2, 4)


@pytest.mark.parametrize(
    "case, err, match",
    [
        ("unsorted", RuntimeError, "ascending"),
        ("repeated", RuntimeError, "ascending"),
        ("out of range", RuntimeError, "out of range"),
        ("negative", RuntimeError, "out of range"),
        ("row overlaps an output", RuntimeError, "one row read by every row"),
        ("neither stacked nor a row", RuntimeError, "size mismatch"),
        ("rows differ between groups", RuntimeError, "stacked buffer of 4 rows"),
        ("input 0 is a number", TypeError, "stacked"),
        ("numbers", TypeError, "numbers"),
        ("rows without out", ValueError, "needs out"),
    ],
)
def test_bad_calls_raise_and_change_nothing(case, err, match):
    xs, vs, gs = operands(4, [(8,), (3,)], torch.float32, "cpu")
    snap = [t.clone() for t in xs + vs + gs]
    ins, nums, rows = [xs, vs, gs], [0.7, 1.5], None
    if case == "unsorted":
        rows = [2, 1]
    elif case == "repeated":
        rows = [1, 1]
    elif case == "out of range":
        rows = [0, 4]
    elif case == "negative":
        rows = [-1]
    elif case == "row overlaps an output":
        ins = [xs, vs, [xs[0][2], gs[1]]]
    elif case == "neither stacked nor a row":
        ins = [xs, vs, [torch.zeros(5), gs[1]]]
    elif case == "rows differ between groups":
        ins = [[xs[0], torch.zeros(5, 3)], [vs[0], torch.zeros(5, 3)], gs]
    elif case == "input 0 is a number":
        ins = [[torch.tensor(1.0)], [torch.tensor(1.0)], [torch.tensor(1.0)]]
    elif case == "numbers":
        nums = [0.7]
    out = None if case == "rows without out" else [xs, vs]
    if out is None:
        rows = [0]
    with pytest.raises(err, match=match):
        F.run_rows(PULL, ins, nums, out=out, seed=0, rows=rows)
    assert all(torch.equal(a, b) for a, b in zip(xs + vs + gs, snap))


def test_exported_and_documented():
    assert nyto.run_rows is F.run_rows and "run_rows" in nyto.__all__
    assert "bitwise" in F.run_rows.__doc__
