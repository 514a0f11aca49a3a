"""``nytorch.Swarm``: stacked storage, row views, every op against a
per-particle reference, reductions, vectorized forward against the loop,
checkpoints and bad input."""

import doctest
import importlib
import operator

import nytorch as nyto
import nytorch.swarm
import nytorch.swarm.arithmetic
import nytorch.swarm.core
import nytorch.swarm.forward
import nytorch.swarm.fused
import pytest
import torch
from nytorch import Swarm
from torch import nn

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA"))]
# nytorch.fuse always runs on the CPU; on CUDA where nytorch was built with its kernels
FUSE_DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(
            not (HAS_CUDA and nyto._C.has_cuda()), reason="no CUDA, or nytorch built without CUDA"
        ),
    ),
]
DTYPES = [torch.float32, torch.float64]


class Net(nyto.NytoModule):
    """Linear -> BatchNorm -> Linear, with a sub-particle."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)
        self.head = Head()

    def forward(self, x):
        return self.head(torch.tanh(self.bn(self.lin(x))))


class Head(nyto.NytoModule):
    def __init__(self):
        super().__init__()
        self.out = nn.Linear(4, 2)
        self.scale = nn.Parameter(torch.tensor(1.5))

    def forward(self, h):
        return self.out(h) * self.scale


class Mixed(nyto.NytoModule):
    """Two flat groups: float32 and float64."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 2).double()

    def forward(self, x):
        return self.b(self.a(x).double())


class Small(nyto.NytoModule):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        return self.lin(x)


def make(n=5, dtype=torch.float32, device="cpu", cls=Net, seed=0):
    torch.manual_seed(seed)
    net = cls().to(device=device, dtype=dtype) if cls is not Mixed else cls().to(device)
    s = Swarm(net, n, init="rand")
    s += 0.5  # values in [0.5, 1.5): safe for div and pow
    with torch.no_grad():
        for b in s.buffers:
            if b.dtype.is_floating_point:
                b.uniform_(0.5, 1.5)
    return net, s


def snapshot(s):
    return [t.clone() for t in s.flats + s.buffers]


def same(s, snap):
    return all(torch.equal(a, b) for a, b in zip(s.flats + s.buffers, snap))


def values(p):
    return [q.detach() for q in p.parameters()]


def named(p):
    """A particle's parameters as plain tensors (copies), by name."""
    return {n: q.detach().clone() for n, q in p.named_parameters()}


def assert_named(got, want, cmp=torch.equal):
    assert got.keys() == want.keys()
    for n in want:
        assert got[n].dtype == want[n].dtype and cmp(got[n], want[n]), n


# ---------------------------------------------------------------------------
# storage and views
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_rows_are_views_of_the_stacked_buffer(device):
    net, s = make(device=device)
    assert len(s.flats) == 1 and s.flats[0].shape == (5, s.numel) and s.flats[0].is_contiguous()
    flat = s.flats[0]
    row_bytes = s.numel * flat.element_size()
    for i in range(len(s)):
        p = s[i]
        start = flat.data_ptr() + i * row_bytes
        for q in p.parameters():
            assert start <= q.data_ptr() < start + row_bytes
            assert q.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()
        assert p.bn.running_mean.data_ptr() == s.buffers[0][i].data_ptr()
        assert isinstance(p, Net) and p._nyto_species is net._nyto_species
        assert isinstance(p.head, Head)


def test_writes_are_visible_both_ways():
    _, s = make()
    p = s[2]
    with torch.no_grad():
        s.flats[0][2].fill_(7.0)
    assert all((q == 7).all() for q in p.parameters())
    p += 1  # particle op on the row view
    assert (s.flats[0][2] == 8).all() and (s.flats[0][1] != 8).all()
    with torch.no_grad():
        p.lin.weight[0, 0] = -3.0
    assert s.flats[0][2, 0] == -3.0
    s += 1  # swarm op seen by the particle
    assert p.lin.weight[0, 0] == -2.0
    # an optimizer on the particle's Parameters writes the row
    opt = torch.optim.SGD(p.parameters(), lr=1.0)
    p(torch.randn(4, 3)).sum().backward()
    before = s.flats[0].clone()
    opt.step()
    assert not torch.equal(s.flats[0][2], before[2]) and torch.equal(s.flats[0][3], before[3])
    # buffers: train-mode forward of the particle updates its row of the stats
    b0 = s.buffers[0].clone()
    p.train()(torch.randn(8, 3))
    assert not torch.equal(s.buffers[0][2], b0[2]) and torch.equal(s.buffers[0][0], b0[0])


def test_slices_are_views_index_tensors_copy():
    _, s = make(n=6)
    sub = s[1:5:2]
    assert len(sub) == 2 and sub.flats[0].data_ptr() == s.flats[0][1].data_ptr()
    sub *= 0
    assert (s.flats[0][1] == 0).all() and (s.flats[0][3] == 0).all() and (s.flats[0][2] != 0).all()
    g = s[torch.tensor([5, 0])]
    assert torch.equal(g.flats[0], s.flats[0][[5, 0]])
    g += 1
    assert not torch.equal(g.flats[0][0], s.flats[0][5])  # a copy
    m = s[torch.tensor([True, False, False, False, False, True])]
    assert torch.equal(m.flats[0], s.flats[0][[0, 5]])


def test_setitem_and_scatter_copy_values():
    net, s = make(n=4)
    s[1] = net
    assert torch.equal(s[1].lin.weight, net.lin.weight)
    assert torch.equal(s.buffers[0][1], net.bn.running_mean)
    with torch.no_grad():
        net.lin.weight.add_(1)
    assert not torch.equal(s[1].lin.weight, net.lin.weight)  # copied, not shared
    other = s.gather([3, 2])
    s[torch.tensor([0, 1])] = other
    assert torch.equal(s.flats[0][0], s.flats[0][3]) and torch.equal(s.flats[0][1], s.flats[0][2])
    s[2:4] = net
    assert torch.equal(s[3].lin.bias, net.lin.bias)


def test_indexing_and_assignment_match_plain_tensors():
    torch.manual_seed(4)
    base = Net()
    nets = [base.randn() for _ in range(5)]  # one species, independent values
    plain = [named(p) for p in nets]
    s = Swarm.stack(nets)
    for i in range(5):
        assert_named(named(s[i]), plain[i])
        assert_named(named(s[i - 5]), plain[i])  # negative indices
    for index, rows in (
        (slice(1, 5, 2), [1, 3]),
        (slice(-3, None), [2, 3, 4]),
        (torch.tensor([4, 0, 4]), [4, 0, 4]),
        ([2, 1], [2, 1]),
        (torch.tensor([True, False, True, False, False]), [0, 2]),
    ):
        sub = s[index] if not isinstance(index, list) else s.gather(index)
        assert len(sub) == len(rows)
        for k, i in enumerate(rows):
            assert_named(named(sub[k]), plain[i])
    # assignment: the particle's values (per parameter), the other rows unchanged
    net = nets[0].clone()
    with torch.no_grad():
        for n, q in net.named_parameters():
            q.copy_(torch.arange(q.numel(), dtype=q.dtype).reshape(q.shape) + 0.5)
    want = named(net)
    s[3] = net
    s[torch.tensor([0])] = Swarm.stack([net])
    for i in range(5):
        assert_named(named(s[i]), want if i in (0, 3) else plain[i])
    s[1:3] = net
    for i in range(5):
        assert_named(named(s[i]), want if i != 4 else plain[4])


def test_construction_modes():
    torch.manual_seed(0)
    net = Net()
    s = Swarm(net, 3)  # clone
    for p in s:
        assert all(torch.equal(a, b) for a, b in zip(values(p), values(net)))
    torch.manual_seed(1)
    r = Swarm(net, 3, init="randn")
    torch.manual_seed(1)
    expect = torch.randn(3 * r.numel)  # one draw over the whole buffer
    assert torch.equal(r.flats[0].reshape(-1), expect)
    z = Swarm(net, 2, init="zeros")
    assert (z.flats[0] == 0).all()
    fresh = Swarm(net, 3, init=lambda i: Net())
    assert not torch.equal(fresh.flats[0][0], fresh.flats[0][1])
    per = Swarm(net, 4, init="perturb", scale=1e-3)
    assert (per.flats[0] - s.flats[0][:1]).abs().max() < 1e-2
    st = Swarm.stack([net, net + 1, net * 2])
    assert torch.equal(st[2].lin.weight, (net * 2).lin.weight)
    shared = Swarm.from_flats(net, [st.flats[0]], st.buffers)
    assert shared.flats[0] is st.flats[0] and shared.species is st.species


def test_mixed_dtype_groups():
    _, s = make(cls=Mixed)
    assert [g[1] for g in s.groups] == [torch.float32, torch.float64]
    p = s[3]
    assert p.a.weight.dtype == torch.float32 and p.b.weight.dtype == torch.float64
    assert p.b.weight.data_ptr() >= s.flats[1][3].data_ptr()


# ---------------------------------------------------------------------------
# every op against a per-particle reference
# ---------------------------------------------------------------------------

OPS = [
    ("add", operator.add, operator.iadd),
    ("sub", operator.sub, operator.isub),
    ("mul", operator.mul, operator.imul),
    ("div", operator.truediv, operator.itruediv),
    ("pow", operator.pow, operator.ipow),
]
KINDS = ["swarm", "particle", "number", "per-particle"]


def close(a, b, op):
    if op == "pow":
        return torch.allclose(a, b, rtol=1e-6 if a.dtype == torch.float32 else 1e-13, atol=0)
    if op == "div" and a.is_cuda:
        # torch's CUDA `x / number` (and so the particle reference) multiplies
        # by the reciprocal; a swarm divided by an [N] tensor divides: 1 ulp.
        return torch.allclose(a, b, rtol=torch.finfo(a.dtype).eps, atol=0)
    return torch.equal(a, b)


def operand_for(kind, s, other_swarm, i):
    """The per-particle reference's right operand for particle i."""
    if kind == "swarm":
        return other_swarm[i]
    if kind == "particle":
        return other_swarm[0]
    if kind == "number":
        return 1.25
    return float(torch.linspace(0.5, 1.5, len(s))[i])


def swarm_operand(kind, s, other_swarm):
    if kind == "swarm":
        return other_swarm
    if kind == "particle":
        return other_swarm[0]
    if kind == "number":
        return 1.25
    return torch.linspace(0.5, 1.5, len(s))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name,op,iop", OPS, ids=[o[0] for o in OPS])
def test_op_matches_per_particle_reference(name, op, iop, kind, dtype, device):
    _, s = make(dtype=dtype, device=device)
    _, o = make(dtype=dtype, device=device, seed=1)
    o = Swarm.from_flats(s.template, o.flats, o.buffers)  # same species as s
    rhs = swarm_operand(kind, s, o)
    # the reference: plain torch on each parameter of each row
    xs, os_ = [named(s[i]) for i in range(len(s))], [named(o[i]) for i in range(len(o))]

    def operand(i, n):
        if kind == "swarm":
            return os_[i][n]
        if kind == "particle":
            return os_[0][n]
        return operand_for(kind, s, o, i)  # a number

    ref = [{n: op(t, operand(i, n)) for n, t in xs[i].items()} for i in range(len(s))]
    out = op(s, rhs)
    assert isinstance(out, Swarm) and out.species is s.species and len(out) == len(s)
    for i, r in enumerate(ref):
        got = named(out[i])
        assert got.keys() == r.keys()
        for n in r:
            assert got[n].dtype == r[n].dtype and close(got[n], r[n], name), (name, kind, i, n)
    # buffers are copied, never transformed or shared
    assert all(torch.equal(a, b) and a.data_ptr() != b.data_ptr() for a, b in zip(out.buffers, s.buffers))
    # reflected: number/tensor/particle on the left
    if kind != "swarm":
        lhs = rhs

        # a number on the left as a tensor: torch's `number / t` is reciprocal(t) * number (two
        # roundings); swarms and particles divide, like `torch.full_like(t, number) / t`
        def left(i, n, t):
            c = operand(i, n)
            return c if isinstance(c, torch.Tensor) else torch.full_like(t, c)

        rref = [{n: op(left(i, n, t), t) for n, t in xs[i].items()} for i in range(len(s))]
        rout = op(lhs, s)
        assert isinstance(rout, Swarm)
        for i, r in enumerate(rref):
            got = named(rout[i])
            for n in r:
                assert close(got[n], r[n], name), (name, kind, "reflected", i, n)
    # in place: same object, same storage
    flat = s.flats[0]
    ptr = flat.data_ptr()
    res = iop(s, rhs)
    assert res is s and s.flats[0] is flat and flat.data_ptr() == ptr
    for i, r in enumerate(ref):
        got = named(s[i])
        for n in r:
            assert close(got[n], r[n], name), (name, kind, "in place", i, n)


@pytest.mark.parametrize("device", DEVICES)
def test_ops_on_two_groups_and_unary(device):
    _, s = make(cls=Mixed, device=device)
    t = -s + 2 * s
    for i in range(len(s)):
        assert_named(named(t[i]), {n: -q + 2 * q for n, q in named(s[i]).items()})
    assert torch.equal((+s).flats[1], s.flats[1]) and (+s).flats[1].data_ptr() != s.flats[1].data_ptr()


# ---------------------------------------------------------------------------
# reductions and statistics
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_reductions_match_reference(dtype, device):
    _, s = make(dtype=dtype, device=device)
    n = len(s)
    rows = [torch.cat([q.detach().reshape(-1) for q in p.parameters()]) for p in s]
    X = torch.stack(rows)
    m = s.mean()
    assert isinstance(m, Net) and m._nyto_species is s.species
    assert torch.allclose(torch.cat([q.detach().reshape(-1) for q in m.parameters()]), X.mean(0))
    assert torch.allclose(m.bn.running_mean, s.buffers[0].mean(0))
    w = torch.arange(1.0, n + 1, dtype=dtype, device=device)
    wm = s.mean(weights=w)
    ref = (w[:, None] * X).sum(0) / w.sum()
    assert torch.allclose(torch.cat([q.detach().reshape(-1) for q in wm.parameters()]), ref)
    assert torch.allclose(s.norm(), X.norm(dim=1))
    assert torch.allclose(s.norm(1), X.abs().sum(1))
    assert torch.allclose(s.dot(s), (X * X).sum(1))
    assert torch.allclose(s.dot(s[1]), X @ X[1])
    fit = torch.tensor([3.0, -1.0, 7.0, 0.0, 2.0])
    assert s.argmin(fit) == 1 and s.argmax(fit.tolist()) == 2
    b = s.best(fit)
    assert torch.equal(torch.cat([q.detach().reshape(-1) for q in b.parameters()]), X[1])
    d = (X - X.mean(0)).norm(dim=1).mean()
    assert abs(s.diversity() - float(d)) < 1e-5


def test_norm_two_groups():
    _, s = make(cls=Mixed)
    X = [torch.cat([q.detach().double().reshape(-1) for q in p.parameters()]) for p in s]
    assert torch.allclose(s.norm().double(), torch.stack(X).norm(dim=1), rtol=1e-6)


# ---------------------------------------------------------------------------
# vectorized forward
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("chunk", [None, 2])
def test_forward_matches_loop(mode, chunk, device):
    _, s = make(n=5, device=device)
    ref_swarm = s.clone()
    getattr(s, mode)()
    x = torch.randn(6, 3, device=device)
    y = s(x, chunk_size=chunk)
    ys = []
    for p in ref_swarm:
        getattr(p, mode)()
        ys.append(p(x))
    assert torch.allclose(y, torch.stack(ys), atol=1e-6)
    # train mode: each particle's BatchNorm statistics updated like the loop's
    for a, b in zip(s.buffers, ref_swarm.buffers):
        assert torch.allclose(a.to(b.dtype), b, atol=1e-6)
    if mode == "train":
        assert (s.buffers[2] == 1).all()


@pytest.mark.parametrize("device", DEVICES)
def test_forward_per_particle_inputs(device):
    _, s = make(n=4, cls=Small, device=device)
    x = torch.randn(4, 7, 3, device=device)
    y = s(x, per_particle=True)
    for i in range(4):
        assert torch.allclose(y[i], s[i](x[i]), atol=1e-6)
    with pytest.raises(ValueError, match="leading dim of size N = 4"):
        s(torch.randn(3, 7, 3, device=device), per_particle=True)


# ---------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------


def test_state_dict_round_trip(tmp_path):
    _, s = make()
    path = tmp_path / "swarm.pt"
    torch.save(s.state_dict(), path)
    _, t = make(seed=3)
    t = Swarm.from_flats(s.template, t.flats, t.buffers)
    t.load_state_dict(torch.load(path))
    assert same(t, snapshot(s))
    bad = s.state_dict()
    bad["flats"] = [bad["flats"][0][:2]]
    snap = snapshot(t)
    with pytest.raises(ValueError, match="flats\\[0\\]"):
        t.load_state_dict(bad)
    assert same(t, snap)


# ---------------------------------------------------------------------------
# bad input: clear errors, operands unchanged
# ---------------------------------------------------------------------------


def test_mixing_species_raises_and_changes_nothing():
    _, s = make()
    _, other = make(seed=2)  # another constructor call: another species
    snap_s, snap_o = snapshot(s), snapshot(other)
    for fn in (
        lambda: s + other,
        lambda: s.add_(other),
        lambda: s * other[0],
        lambda: s.__imul__(other[0]),
        lambda: s.dot(other),
        lambda: s.scatter_([0], other[0]),
        lambda: s.__setitem__(1, other[1]),
        lambda: Swarm.stack([s[0], other[0]]),
    ):
        with pytest.raises(AssertionError, match="different species"):
            fn()
    assert same(s, snap_s) and same(other, snap_o)


def test_wrong_lengths_raise_and_change_nothing():
    _, s = make(n=5)
    o = s.gather([0, 1, 2])
    snap = snapshot(s)
    for fn in (
        lambda: s * torch.ones(4),
        lambda: s.mul_(torch.ones(6)),
        lambda: s + o,
        lambda: s.add_(o),
        lambda: s.mean(weights=torch.ones(3)),
        lambda: s.argmin(torch.ones(2)),
        lambda: s.scatter_([0, 1], o),
    ):
        with pytest.raises(ValueError, match="N = 5|different lengths|3 rows|scatter_"):
            fn()
    assert same(s, snap)


def test_bad_operands_and_indices():
    _, s = make(n=3)
    snap = snapshot(s)
    with pytest.raises(TypeError):
        s + "a"
    with pytest.raises(TypeError):
        s += [1, 2, 3]
    with pytest.raises(ValueError):
        s * torch.ones(3, 2)
    with pytest.raises(IndexError):
        s[3]
    with pytest.raises(IndexError):
        s[torch.tensor([0, 5])]
    with pytest.raises(ValueError, match="unknown init"):
        Swarm(s.template, 2, init="nope")
    with pytest.raises(TypeError, match="NytoModule"):
        Swarm(nn.Linear(2, 2), 2)
    with pytest.raises(ValueError, match="shape"):
        Swarm.from_flats(s.template, [torch.zeros(2, 5)])
    assert same(s, snap)


def test_inplace_cast_error_changes_nothing():
    _, s = make(cls=Mixed)
    snap = snapshot(s)
    with pytest.raises(RuntimeError, match="can't be cast"):
        s += torch.tensor([1 + 2j] * len(s))
    assert same(s, snap)


# ---------------------------------------------------------------------------
# nytorch.fuse functions on swarms
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("device", FUSE_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fused_function_on_swarms_matches_rows(dtype, device):
    fz = importlib.import_module("nytorch._fuse.api")
    _, s = make(dtype=dtype, device=device)
    o = s.randn()
    step = fz.fuse(lambda x, v, a: (a * x + v, fz.maximum(x - v, 0.0)))
    f = Swarm.fused(step)
    new, other = f(s, o, 0.5)
    for i in range(len(s)):  # plain torch per parameter (bitwise: one rounding per op, no FMA)
        x, v = named(s[i]), named(o[i])
        assert_named(named(new[i]), {n: 0.5 * x[n] + v[n] for n in x})
        assert_named(named(other[i]), {n: torch.clamp(x[n] - v[n], min=0.0) for n in x})
        assert any((x[n] < v[n]).any() and (x[n] > v[n]).any() for n in x)  # both sides of the maximum
    snap_o = snapshot(o)
    res = f(s, o, 2.0, out=(s, o))  # in place, aliasing inputs
    assert res[0] is s and not same(o, snap_o)
    _, alien = make(seed=5)
    snap = snapshot(s)
    with pytest.raises(AssertionError, match="different species"):
        f(s, alien, 1.0)
    with pytest.raises(TypeError, match="swarms of one species or numbers"):
        f(s, s[0], 1.0)
    assert same(s, snap)


# ---------------------------------------------------------------------------
# docstring examples
# ---------------------------------------------------------------------------


class DocNet(nyto.NytoModule):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.lin(x)


@pytest.mark.parametrize(
    "module",
    [nytorch.swarm, nytorch.swarm.core, nytorch.swarm.arithmetic, nytorch.swarm.forward, nytorch.swarm.fused],
    ids=lambda m: m.__name__,
)
def test_docstring_examples(module):
    result = doctest.testmod(
        module,
        extraglobs={"Net": DocNet, "nyto": nyto, "torch": torch},
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
    )
    assert result.attempted > 0
    assert result.failed == 0
