"""``nytorch.fuse.run_flat(..., seed=state)``: a random-state tensor (int64 [2]
= (seed, offset)) read by the kernels at run time and advanced after each
call. Bitwise the int route with the same (seed, offset); fresh numbers per
call; bad states raise before anything is written. CUDA cases (the
interpreter, generated kernels, a CUDA graph replay) skip without a GPU."""

import importlib

import nytorch as nyto
import pytest
import torch

fz = importlib.import_module("nytorch._fuse.api")
cg = importlib.import_module("nytorch._fuse.codegen")
random_state = nyto.fuse.random_state
needs_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and nyto._C.has_cuda()), reason="needs a CUDA device and nytorch built with CUDA"
)


def _programs():
    return {
        "uniform": fz.program(lambda x, s: (fz.rand_like(x), s * fz.rand_like(x) + x), "pn"),
        "normal": fz.program(lambda x, s: (fz.randn_like(x) * s, fz.randn_like(x) + x), "pn"),
    }


def _groups(dtype, device="cpu", sizes=(1003, 17, 4, 1)):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(n, generator=g, dtype=torch.float64).to(dtype).to(device) for n in sizes]


def _same(a, b):
    return all(torch.equal(x, y) for la, lb in zip(a, b) for x, y in zip(la, lb))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", ["uniform", "normal"])
@pytest.mark.parametrize("seed, s_off, offset", [(0, 0, 0), (123, 5, 0), (2**62 + 7, 1001, 3)])
def test_state_equals_int_route(kind, dtype, seed, s_off, offset):
    prog = _programs()[kind]
    xs = _groups(dtype)
    st = random_state(seed, offset=s_off)
    got = fz.run_flat(prog, [xs], [2.5], seed=st, offset=offset)
    ref = fz.run_flat(prog, [xs], [2.5], seed=seed, offset=s_off + offset)
    assert _same(got, ref)
    # in place too (outputs aliasing the input)
    a, b = [x.clone() for x in xs], [x.clone() for x in xs]
    ys_a, ys_b = [torch.empty_like(x) for x in xs], [torch.empty_like(x) for x in xs]
    fz.run_flat(prog, [a], [2.5], out=[ys_a, a], seed=random_state(seed, offset=s_off), offset=offset)
    fz.run_flat(prog, [b], [2.5], out=[ys_b, b], seed=seed, offset=s_off + offset)
    assert _same([ys_a, a], [ys_b, b])


def test_state_advances_by_whole_counters():
    prog = _programs()["uniform"]
    for sizes, span in (((1003, 17), 1004), ((4,), 4), ((5, 8), 8), ((0,), 0)):
        xs = [torch.zeros(n) for n in sizes]
        st = random_state(9, offset=6)
        fz.run_flat(prog, [xs], [1.0], seed=st, offset=100)  # the extra offset does not move the state
        assert st.tolist() == [9, 6 + span]
    # a program without random numbers leaves the state alone
    st = random_state(9, offset=6)
    v0 = st._version
    fz.run_flat(fz.program(lambda x: x * 2, "p"), [[torch.ones(7)]], [], seed=st)
    assert st.tolist() == [9, 6] and st._version == v0


def test_two_calls_draw_fresh_numbers():
    prog = fz.program(lambda x: fz.rand_like(x), "p")
    xs = [torch.zeros(1001), torch.zeros(6)]
    st = random_state(5)
    (a,) = fz.run_flat(prog, [xs], [], seed=st)
    (b,) = fz.run_flat(prog, [xs], [], seed=st)
    assert not torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])
    # the second call continues the streams: it is the int route at offset = span
    (ref,) = fz.run_flat(prog, [xs], [], seed=5, offset=1004)
    assert torch.equal(b[0], ref[0]) and torch.equal(b[1], ref[1])
    assert st.tolist() == [5, 2008]


def test_random_state_helper():
    assert random_state(3).dtype == torch.int64 and random_state(3, offset=4).tolist() == [3, 4]
    torch.manual_seed(0)
    a = random_state()
    torch.manual_seed(0)
    assert torch.equal(a, random_state()) and a[0] >= 0
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="seed must be an int >= 0"):
            random_state(bad)
    with pytest.raises(ValueError, match="offset"):
        random_state(1, offset=-2)


@pytest.mark.parametrize(
    "state, err, match",
    [
        (torch.zeros(2), TypeError, "int64 tensor of shape \\[2\\]"),
        (torch.zeros(3, dtype=torch.int64), TypeError, "shape \\[3\\]"),
        (torch.zeros(2, 2, dtype=torch.int64), TypeError, "int64 tensor of shape"),
        (torch.zeros(4, dtype=torch.int64)[::2], TypeError, "contiguous"),
        (torch.zeros(2, dtype=torch.int64, device="meta"), RuntimeError, "must be on the operands' device"),
    ],
)
def test_bad_state_raises_and_changes_nothing(state, err, match):
    prog = _programs()["uniform"]
    x = torch.randn(10)
    y = torch.randn(10)
    x0, y0 = x.clone(), y.clone()
    with pytest.raises(err, match=match):
        fz.run_flat(prog, [[x]], [1.0], out=[[y], [x]], seed=state)
    assert torch.equal(x, x0) and torch.equal(y, y0)


def test_bad_state_in_c_raises_before_writing():
    """The compiled entry checks too (callers of nytorch._C.fuse_run)."""
    prog = _programs()["uniform"]
    x, y = torch.randn(10), torch.randn(10)
    x0, y0 = x.clone(), y.clone()
    for st in (torch.zeros(2), torch.zeros(3, dtype=torch.int64), torch.zeros(2, dtype=torch.int64, device="meta")):
        with pytest.raises(RuntimeError, match="random state"):
            nyto._C.fuse_run(prog.words, [1.0], [[x]], [[y], [x]], st, 0)
    assert torch.equal(x, x0) and torch.equal(y, y0)


def test_state_under_torch_compile_raises(monkeypatch):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    with pytest.raises(RuntimeError, match="not supported under torch.compile"):
        fz.run_flat(_programs()["uniform"], [[torch.zeros(4)]], [1.0], seed=random_state(1))


def test_seed_of_another_type_is_named():
    with pytest.raises(TypeError, match="seed must be an int or a random-state tensor"):
        fz.run_flat(_programs()["uniform"], [[torch.zeros(4)]], [1.0], seed="7")


# ---------------------------------------------------------------------------
# CUDA
@needs_cuda
@pytest.mark.parametrize("engine", ["interp", "codegen"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_cuda_state_equals_int_route(engine, dtype):
    if engine == "codegen" and cg.available():
        pytest.skip(cg.available())
    prev = cg.set_engine(engine)
    try:
        for kind, prog in _programs().items():
            xs = _groups(dtype, "cuda", sizes=(70001, 4099, 5))
            st = random_state(77, "cuda", offset=13)
            got = fz.run_flat(prog, [xs], [2.5], seed=st, offset=2)
            ref = fz.run_flat(prog, [xs], [2.5], seed=77, offset=15)
            assert _same(got, ref), kind
            assert st.tolist() == [77, 13 + 70004]
    finally:
        cg.set_engine(prev)


@needs_cuda
@pytest.mark.parametrize("engine", ["interp", "codegen"])
def test_cuda_graph_replay_reads_the_current_state(engine):
    """Captured once, replayed: each replay reads the state the previous one advanced."""
    if engine == "codegen" and cg.available():
        pytest.skip(cg.available())
    prev = cg.set_engine(engine)
    try:
        prog = fz.program(lambda x, s: (fz.rand_like(x) * s, fz.randn_like(x) + x), "pn")
        x = torch.randn(10007, device="cuda")
        outs = [[torch.empty_like(x)], [torch.empty_like(x)]]
        st = random_state(21, "cuda")
        fz.run_flat(prog, [[x]], [3.0], out=outs, seed=st)  # warm-up (loads generated kernels)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fz.run_flat(prog, [[x]], [3.0], out=outs, seed=st)
        span = 10008
        for k in range(1, 4):
            g.replay()
            ref = fz.run_flat(prog, [[x]], [3.0], seed=21, offset=k * span)
            assert torch.equal(outs[0][0], ref[0][0]) and torch.equal(outs[1][0], ref[1][0])
        assert st.tolist() == [21, 4 * span]
    finally:
        cg.set_engine(prev)


@needs_cuda
@pytest.mark.parametrize("engine", ["interp", "codegen"])
def test_cuda_empty_groups_may_live_elsewhere(engine):
    """Empty groups (the ES sampler's padding: CPU tensors) are skipped; their device does not matter."""
    if engine == "codegen" and cg.available():
        pytest.skip(cg.available())
    prev = cg.set_engine(engine)
    try:
        prog = fz.program(lambda x: fz.rand_like(x), "p")
        x = torch.zeros(9, device="cuda")
        (got,) = fz.run_flat(prog, [[torch.empty(0), x]], [], seed=random_state(4, "cuda"))
        (ref,) = fz.run_flat(prog, [[torch.empty(0), x]], [], seed=4)
        assert torch.equal(got[1], ref[1])
    finally:
        cg.set_engine(prev)
