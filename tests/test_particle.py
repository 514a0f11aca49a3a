"""Particle operations of ``nytorch.NytoModule`` (docs: shared spec
"particle-operation"), checked against a plain per-parameter torch reference.

Every value is compared with ``[p.detach() op q.detach() for ...]`` over
``named_parameters()``, on float32, float64 and mixed-dtype models built from
nn.Conv2d / nn.BatchNorm2d / nn.Linear / nn.Sequential / nn.ModuleList
children and a NytoModule sub-particle.
"""

import copy
import gc
import io
import operator
import os
import pickle
import re
import weakref
from collections import OrderedDict

import nytorch as nyto
import pytest
import torch
from torch import nn
from torch.func import functional_call

# --------------------------------------------------------------------------
# Module classes (module level, so pickle finds them)
# --------------------------------------------------------------------------


class NytoLinear(nyto.NytoModule):  # the spec's example
    def __init__(self, w: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(w)
        self.bias = torch.nn.Parameter(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x + self.bias


class Layer(nyto.NytoModule):  # the spec's submodule example
    def __init__(self, in_size, out_size):
        super().__init__()
        self.lin = nn.Linear(in_size, out_size)

    def forward(self, x):
        return self.lin(x)


class ResLayer(nyto.NytoModule):
    def __init__(self, in_size, out_size):
        super().__init__()
        self.sub_moudle = Layer(in_size, out_size)

    def forward(self, x):
        return self.sub_moudle(x) + x


class Inner(nyto.NytoModule):
    """A sub-particle: a NytoModule child of Model."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3))
        self.proj = nn.Linear(3, 3)

    def forward(self, x):
        return self.proj(x * self.weight)


class Model(nyto.NytoModule):
    """float32 / float64 / mixed (seq, inner and scale in float64) model."""

    def __init__(self, dtype: str = "float32"):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.lin = nn.Linear(3, 4)
        self.seq = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
        self.heads = nn.ModuleList([nn.Linear(3, 3), nn.Linear(3, 2, bias=False)])
        self.inner = Inner()
        self.scale = nn.Parameter(torch.tensor(1.5))
        self.frozen = nn.Parameter(torch.randn(2), requires_grad=False)
        with torch.no_grad():  # non-trivial buffers
            self.bn.running_mean.copy_(torch.randn(3))
            self.bn.running_var.copy_(torch.rand(3) + 0.5)
            self.bn.num_batches_tracked.fill_(5)
        if dtype == "float64":
            self.double()
        elif dtype == "mixed":
            self.seq.double()
            self.inner.double()
            self.scale.data = self.scale.data.double()
        else:
            assert dtype == "float32"

    def forward(self, img):
        h = self.bn(self.conv(img.to(self.conv.weight.dtype))).mean(dim=(2, 3))
        h = self.lin(h)
        h = self.seq(h.to(self.seq[0].weight.dtype))
        h = self.inner(h.to(self.inner.weight.dtype))
        h = self.heads[1](self.heads[0](h.to(self.heads[0].weight.dtype)))
        return (h * self.scale + self.frozen).double()


class Twin(Model):
    """Same structure as Model, another class."""


class Tied(nyto.NytoModule):
    """One Parameter used in three places, across the root and a sub-particle."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 3)
        self.inner = Inner()
        self.b.weight = self.a.weight
        self.inner.proj.weight = self.a.weight

    def forward(self, x):
        return self.inner(self.b(self.a(x)))


class Wide(nyto.NytoModule):
    """~1.25M parameters, float32 + float64, for random-fill statistics."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(1000, 1000)
        self.b = nn.Linear(500, 500).double()


class Big(nyto.NytoModule):
    """~4M float32 parameters."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(1000, 1000) for _ in range(4)])


class Many(nyto.NytoModule):
    """40 parameters, 0.8 MB."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(100, 100) for _ in range(20)])


class Empty(nyto.NytoModule):
    """A particle without parameters (only a buffer)."""

    def __init__(self):
        super().__init__()
        self.act = nn.ReLU()
        self.register_buffer("count", torch.zeros(()))


class Positional(nyto.NytoModule):
    """Ordinary attribute names: a `pos` embedding and a `sub` layer."""

    def __init__(self):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(4))
        self.sub = nn.Linear(4, 4)

    def forward(self, x):
        return self.sub(x + self.pos)


DTYPES = ["float32", "float64", "mixed"]


def make(dtype="float32", cls=Model):
    return cls(dtype)


def image(n=4):
    return torch.randn(n, 2, 5, 5, dtype=torch.float64)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The models are tiny: intra-op threads only add overhead (a lot of it on a busy host).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def no_gc():
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


# --------------------------------------------------------------------------
# The shared reference helper
# --------------------------------------------------------------------------

OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv, "**": operator.pow}
IOPS = {"+": operator.iadd, "-": operator.isub, "*": operator.imul, "/": operator.itruediv, "**": operator.ipow}
UNARY = {"neg": operator.neg, "pos": operator.pos}
SYMS = list(OPS)


def _ref_operand(x):
    if isinstance(x, nn.Module):
        return {n: p.detach().clone() for n, p in x.named_parameters()}
    return x


def _torch_number(p, x):
    """Number ``x`` as torch takes it against parameter ``p``: a 0-dim tensor
    counts as the Python number it holds unless it changes the result dtype
    (torch's category rule: int64 + float64 0-dim tensor is float64)."""
    if isinstance(x, torch.Tensor) and torch.result_type(p, x) == torch.result_type(p, x.item()):
        return x.item()
    return x


def reference(fn, *operands):
    """``{name: fn(*per-parameter operands)}`` over the named_parameters of the
    first module operand: modules give their parameter of that name (detached),
    numbers are taken as torch takes them (a bool in a subtraction raises, as
    torch's does)."""
    mod = next(x for x in operands if isinstance(x, nn.Module))
    ops = [_ref_operand(x) for x in operands]
    out = {}
    for name, p in mod.named_parameters():
        out[name] = fn(*(x[name] if isinstance(x, dict) else _torch_number(p, x) for x in ops))
    return out


def _close(got, want, exact=False):
    """assert_close over a {name: tensor} pair of dicts: one comparison per dtype,
    per-name messages only when something differs."""
    assert list(got) == list(want)
    groups = {}
    for name, g in got.items():
        w = want[name]
        assert g.dtype == w.dtype and g.shape == w.shape, (name, g.dtype, w.dtype, g.shape, w.shape)
        groups.setdefault(g.dtype, ([], []))
        groups[g.dtype][0].append(g.detach().reshape(-1))
        groups[g.dtype][1].append(w.detach().reshape(-1))
    tol = dict(rtol=0, atol=0) if exact else {}
    for dt, (gs, ws) in groups.items():
        try:
            torch.testing.assert_close(torch.cat(gs), torch.cat(ws), equal_nan=True, **tol)
        except AssertionError:
            for name, g in got.items():
                torch.testing.assert_close(
                    g.detach(), want[name].detach(), equal_nan=True, msg=lambda m, name=name: f"{name}: {m}", **tol
                )
            raise


def assert_values(m, ref):
    _close(dict(m.named_parameters()), ref)


def snapshot(m):
    return (
        dict(m.named_parameters()),
        {n: p.detach().clone() for n, p in m.named_parameters()},
        {n: b.detach().clone() for n, b in m.named_buffers()},
    )


def assert_unchanged(m, snap):
    objs, vals, bufs = snap
    now = dict(m.named_parameters())
    assert list(now) == list(objs)
    for n, p in now.items():
        assert p is objs[n], n
    _close(now, vals, exact=True)
    _close(dict(m.named_buffers()), bufs, exact=True)


def assert_same_structure(r, src, dtypes=None):
    """``dtypes``: the parameters' expected dtypes where torch promotes."""
    assert type(r) is type(src)
    dtypes = dtypes or {}
    a = [(n, p.shape, p.dtype) for n, p in r.named_parameters()]
    b = [(n, p.shape, dtypes.get(n, p.dtype)) for n, p in src.named_parameters()]
    assert a == b
    assert [n for n, _ in r.named_modules()] == [n for n, _ in src.named_modules()]
    assert [(n, t.shape, t.dtype) for n, t in r.named_buffers()] == [
        (n, t.shape, t.dtype) for n, t in src.named_buffers()
    ]


def assert_buffers_copied(r, src):
    """Buffers of a result: equal values to the source's, never the same memory."""
    sb = dict(src.named_buffers())
    for n, b in r.named_buffers():
        assert b is not sb[n], n
        assert torch.equal(b, sb[n]), n
        if b.numel():
            assert b.data_ptr() != sb[n].data_ptr(), n


def assert_new_particle(r, src, operands=(), dtypes=None):
    """An out-of-place result: new instance of src's class, same structure, new
    Parameter objects, requires_grad per parameter, buffers copied, same repr."""
    assert r is not src
    assert_same_structure(r, src, dtypes)
    old = {id(p) for m in (src,) + tuple(x for x in operands if isinstance(x, nn.Module)) for p in m.parameters()}
    srg = dict(src.named_parameters())
    for n, p in r.named_parameters():
        assert type(p) is nn.Parameter, n
        assert id(p) not in old, n
        assert p.requires_grad == srg[n].requires_grad, n
        assert p.is_leaf and p.grad is None, n
    for (n, m), (_, ms) in zip(r.named_modules(), src.named_modules()):
        assert type(m) is type(ms), n
        if n:
            assert m is not ms, n
    assert_buffers_copied(r, src)
    assert repr(r) == repr(src)


def assert_forward_matches(r, src, ref):
    """r's forward equals the source's forward with the reference parameters."""
    x = image()
    r.eval()
    src.eval()
    with torch.no_grad():
        want = functional_call(src, ref, (x,))
        got = r(x)
    torch.testing.assert_close(got, want, equal_nan=True)


def assert_flat_storage(m):
    """Each dtype's parameters tile one contiguous buffer (no gaps, no overlap)."""
    groups = {}
    for p in m.parameters():  # unique parameters
        groups.setdefault((p.device, p.dtype), []).append(p)
    for key, ps in groups.items():
        ps = [p for p in ps if p.numel()]
        assert all(p.is_contiguous() for p in ps), key
        assert len({p.untyped_storage().data_ptr() for p in ps}) == 1, key
        ps.sort(key=lambda p: p.storage_offset())
        for prev, p in zip(ps, ps[1:]):
            assert p.storage_offset() == prev.storage_offset() + prev.numel(), key
            assert p.data_ptr() == prev.data_ptr() + prev.numel() * prev.element_size(), key


NUMBERS = [
    3,
    -2,
    0,
    2.5,
    -0.75,
    True,
    False,
    torch.tensor(1.5),
    torch.tensor(-2),
    torch.tensor(True),
    torch.tensor(0.25, dtype=torch.float64),
]
NUMBER_IDS = ["int3", "int-2", "int0", "float2.5", "float-0.75", "True", "False", "t1.5", "t-2", "tTrue", "t0.25f64"]


# --------------------------------------------------------------------------
# The spec's examples
# --------------------------------------------------------------------------


def test_spec_number_op():
    net = NytoLinear(torch.Tensor([2.0]), torch.Tensor([1.0]))
    new_net = net + 10
    assert torch.equal(net.weight, torch.tensor([2.0])) and torch.equal(net.bias, torch.tensor([1.0]))
    assert torch.equal(new_net.weight, torch.tensor([12.0]))
    assert torch.equal(new_net.bias, torch.tensor([11.0]))
    assert repr(new_net.weight) == "Parameter containing:\ntensor([12.], requires_grad=True)"


def test_spec_particle_op():
    net = NytoLinear(torch.Tensor([2.0]), torch.Tensor([1.0]))
    new_net = net + net
    assert torch.equal(net.weight, torch.tensor([2.0])) and torch.equal(net.bias, torch.tensor([1.0]))
    assert torch.equal(new_net.weight, torch.tensor([4.0]))
    assert torch.equal(new_net.bias, torch.tensor([2.0]))


def test_spec_operator_list():
    net = NytoLinear(torch.Tensor([2.0]), torch.Tensor([1.0]))
    w, b = 2.0, 1.0
    for res, (ew, eb) in [
        (+net, (w, b)),
        (-net, (-w, -b)),
        (net**2, (w**2, b**2)),
        (net + 2, (w + 2, b + 2)),
        (net - 2, (w - 2, b - 2)),
        (net * 2, (w * 2, b * 2)),
        (net / 2, (w / 2, b / 2)),
        (2**net, (2**w, 2**b)),
        (2 + net, (2 + w, 2 + b)),
        (2 - net, (2 - w, 2 - b)),
        (2 * net, (2 * w, 2 * b)),
        (2 / net, (2 / w, 2 / b)),
        (net**net, (w**w, b**b)),
        (net - net, (0.0, 0.0)),
        (net * net, (w * w, b * b)),
        (net / net, (1.0, 1.0)),
    ]:
        assert type(res) is NytoLinear
        assert torch.equal(res.weight, torch.tensor([ew])) and torch.equal(res.bias, torch.tensor([eb]))
    n = NytoLinear(torch.Tensor([2.0]), torch.Tensor([1.0]))
    n **= 2
    n += 2
    n -= 2
    n *= 2
    n /= 2
    assert torch.equal(n.weight, torch.tensor([4.0])) and torch.equal(n.bias, torch.tensor([1.0]))
    other = n.clone()
    n **= other
    n += other
    n -= other
    n *= other
    n /= other
    assert torch.equal(n.weight, torch.tensor([256.0])) and torch.equal(n.bias, torch.tensor([1.0]))


def test_spec_species():
    net1 = NytoLinear(torch.Tensor([1.0]), torch.Tensor([2.0]))
    net2 = NytoLinear(torch.Tensor([3.0]), torch.Tensor([4.0]))
    net3 = net1 + 10
    with pytest.raises(AssertionError):
        net1 + net2
    assert repr(net1 + net3) == "NytoLinear()"
    net3.load_state_dict(net2.state_dict())
    res = net1 + net3
    assert repr(res) == "NytoLinear()"
    assert torch.equal(res.weight, torch.tensor([4.0])) and torch.equal(res.bias, torch.tensor([6.0]))


def test_spec_clone_detach():
    net = NytoLinear(torch.Tensor([1.0]), torch.Tensor([2.0]))
    net_clone = net.clone()
    assert net.weight is not net_clone.weight and net.bias is not net_clone.bias
    assert torch.equal(net.weight, net_clone.weight) and torch.equal(net.bias, net_clone.bias)
    assert repr(net + net_clone) == "NytoLinear()"
    net_detach = net.detach()
    assert net.weight is net_detach.weight and net.bias is net_detach.bias
    with pytest.raises(AssertionError):
        net + net_detach


def test_spec_clone_from():
    net1 = NytoLinear(torch.Tensor([1.0]), torch.Tensor([2.0]))
    net2 = NytoLinear(torch.Tensor([3.0]), torch.Tensor([4.0]))
    a = net1.clone()
    a.load_state_dict(net2.state_dict())
    b = net1.clone_from(net2)
    for net3 in (a, b):
        assert torch.equal(net3.weight, torch.tensor([3.0])) and torch.equal(net3.bias, torch.tensor([4.0]))
        assert net3.weight is not net2.weight
        assert torch.equal((net1 + net3).weight, torch.tensor([4.0]))
        with pytest.raises(AssertionError):
            net3 + net2
    assert torch.equal(net1.weight, torch.tensor([1.0]))


def test_spec_randn():
    net = NytoLinear(torch.Tensor([1.0]), torch.Tensor([2.0]))
    net_randn = net.randn()
    assert net_randn.weight.shape == (1,) and net_randn.bias.shape == (1,)
    assert net_randn.weight.requires_grad
    assert repr(net + net_randn) == "NytoLinear()"


def test_spec_submodule():
    root_module = ResLayer(12, 2)
    sub_moudle = root_module.sub_moudle
    new_root_module = root_module + 10
    new_sub_moudle = sub_moudle + 10
    assert repr(new_root_module) == (
        "ResLayer(\n  (sub_moudle): Layer(\n    (lin): Linear(in_features=12, out_features=2, bias=True)\n  )\n)"
    )
    assert repr(new_sub_moudle) == "Layer(\n  (lin): Linear(in_features=12, out_features=2, bias=True)\n)"
    assert new_root_module.sub_moudle is not new_sub_moudle
    assert new_sub_moudle is not sub_moudle
    assert new_sub_moudle.lin.weight is not new_root_module.sub_moudle.lin.weight
    torch.testing.assert_close(new_sub_moudle.lin.weight, sub_moudle.lin.weight + 10)
    torch.testing.assert_close(new_root_module.sub_moudle.lin.bias, sub_moudle.lin.bias + 10)
    # (the spec's ResLayer(12, 2) cannot run forward: the residual needs in == out)
    square = ResLayer(4, 4)
    x = torch.randn(5, 4)
    torch.testing.assert_close(
        (square + 10)(x), functional_call(square, {n: p + 10 for n, p in square.named_parameters()}, (x,))
    )


# --------------------------------------------------------------------------
# Particle-number ops
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(UNARY))
def test_unary(dtype, name):
    net = make(dtype)
    snap = snapshot(net)
    ref = reference(UNARY[name], net)
    r = UNARY[name](net)
    assert_new_particle(r, net)
    assert_values(r, ref)
    assert_unchanged(net, snap)
    assert_forward_matches(r, net, ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", NUMBERS, ids=NUMBER_IDS)
@pytest.mark.parametrize("reflected", [False, True], ids=["net_op_k", "k_op_net"])
@pytest.mark.parametrize("sym", SYMS)
def test_number_op(dtype, k, reflected, sym):
    net = make(dtype)
    net + 0  # the source has flat storage before the op, too
    snap = snapshot(net)
    operands = (k, net) if reflected else (net, k)
    try:
        ref = reference(OPS[sym], *operands)
    except RuntimeError as e:  # torch refuses (`- True`): so does nytorch, writing nothing
        with pytest.raises(RuntimeError, match=re.escape(str(e).split(".")[0])):
            OPS[sym](*operands)
        assert_unchanged(net, snap)
        return
    r = OPS[sym](*operands)
    assert_new_particle(r, net, dtypes={n: v.dtype for n, v in ref.items()})
    assert_values(r, ref)
    assert_unchanged(net, snap)
    assert_forward_matches(r, net, ref)
    assert r._nyto_species is net._nyto_species


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", NUMBERS, ids=NUMBER_IDS)
@pytest.mark.parametrize("sym", SYMS)
def test_number_op_inplace(dtype, k, sym):
    net = make(dtype)
    snap = snapshot(net)
    objs, _, bufs = snap
    versions = {n: p._version for n, p in objs.items()}
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.5)
    try:
        ref = reference(OPS[sym], net, k)
    except RuntimeError as e:  # torch refuses (`-= True`): so does nytorch, writing nothing
        with pytest.raises(RuntimeError, match=re.escape(str(e).split(".")[0])):
            IOPS[sym](net, k)
        assert_unchanged(net, snap)
        return
    ref = {n: v.to(objs[n].dtype) for n, v in ref.items()}  # in place: the parameter keeps its dtype
    x = net
    x = IOPS[sym](x, k)
    assert x is net
    now = dict(net.named_parameters())
    assert list(now) == list(objs)
    for n, p in now.items():
        assert p is objs[n], n
        assert p._version > versions[n], n
    assert_values(net, ref)
    for n, b in net.named_buffers():
        assert torch.equal(b, bufs[n]), n
    # the optimizer built before the op steps the module's own parameters
    assert [id(p) for p in opt.param_groups[0]["params"]] == [id(p) for p in net.parameters() if p.requires_grad]
    for p in net.parameters():
        if p.requires_grad:
            p.grad = torch.ones_like(p)
    opt.step()
    assert_values(net, {n: (v - 0.5 if objs[n].requires_grad else v) for n, v in ref.items()})
    net.eval()
    assert net(image()).shape == (4, 2)


# --------------------------------------------------------------------------
# Particle-particle ops
# --------------------------------------------------------------------------

PAIRS = ["self", "net_op_other", "other_op_net"]


def _pair(net, pair):
    other = 0.5 * net.randn() + 1.25  # same species, positive-ish: fewer NaNs in **
    if pair == "self":
        return net, net
    return (net, other) if pair == "net_op_other" else (other, net)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("sym", SYMS)
def test_particle_op(dtype, pair, sym):
    net = make(dtype)
    a, b = _pair(net, pair)
    snaps = [snapshot(a), snapshot(b)]
    ref = reference(OPS[sym], a, b)
    r = OPS[sym](a, b)
    assert_new_particle(r, a, (b,))
    assert_values(r, ref)
    assert_unchanged(a, snaps[0])
    assert_unchanged(b, snaps[1])
    assert_forward_matches(r, a, ref)
    assert r._nyto_species is net._nyto_species


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("sym", SYMS)
def test_particle_op_inplace(dtype, pair, sym):
    net = make(dtype)
    a, b = _pair(net, pair)
    objs, _, bufs = snapshot(a)
    bsnap = snapshot(b) if b is not a else None
    versions = {n: p._version for n, p in objs.items()}
    opt = torch.optim.SGD([p for p in a.parameters() if p.requires_grad], lr=0.5)
    ref = reference(OPS[sym], a, b)
    x = a
    x = IOPS[sym](x, b)
    assert x is a
    for n, p in a.named_parameters():
        assert p is objs[n], n
        assert p._version > versions[n], n
    assert_values(a, ref)
    for n, t in a.named_buffers():
        assert torch.equal(t, bufs[n]), n
    if bsnap is not None:
        assert_unchanged(b, bsnap)
    for p in opt.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    opt.step()
    assert_values(a, {n: (v - 0.5 if objs[n].requires_grad else v) for n, v in ref.items()})


# --------------------------------------------------------------------------
# Species
# --------------------------------------------------------------------------


def _forms(sym):
    """(label, fn(a, b)) for every way two particles meet under `sym`."""

    def inplace_ab(a, b):
        x = a
        x = IOPS[sym](x, b)

    def inplace_ba(a, b):
        x = b
        x = IOPS[sym](x, a)

    return [
        ("a_op_b", lambda a, b: OPS[sym](a, b)),
        ("b_op_a", lambda a, b: OPS[sym](b, a)),
        ("a_iop_b", inplace_ab),
        ("b_iop_a", inplace_ba),
    ]


FORMS = ["a_op_b", "b_op_a", "a_iop_b", "b_iop_a"]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("sym", SYMS)
@pytest.mark.parametrize("other", ["constructor", "class", "detach"])
def test_species_mismatch(other, sym, form):
    a = make("mixed")
    a + 1
    if other == "constructor":
        b = make("mixed")
    elif other == "class":
        b = Twin("mixed")
    else:
        b = a.detach()
    b + 1
    snaps = [snapshot(a), snapshot(b)]
    fn = dict(_forms(sym))[form]
    with pytest.raises(AssertionError):
        fn(a, b)
    assert_unchanged(a, snaps[0])
    assert_unchanged(b, snaps[1])


def test_species_is_kept_by_ops_and_copies():
    net = make("mixed")
    other = make("mixed")
    members = [
        net,
        net + 1,
        2 * net,
        -net,
        +net,
        net**net,
        net.clone(),
        net.randn(),
        net.rand(),
        net.clone_from(other),
        (net + 1).clone().randn(),
    ]
    for x in members:
        assert x._nyto_species is net._nyto_species
        assert x.inner._nyto_species is net.inner._nyto_species
    for i, x in enumerate(members):
        for y in members[i:]:
            assert_values(x + y, reference(operator.add, x, y))
            assert_values(y * x, reference(operator.mul, y, x))
    assert_values(net.clone_from(other), reference(operator.pos, other))


def test_detach_new_species_same_parameters():
    net = make("mixed")
    net + 1
    d = net.detach()
    assert type(d) is Model and d is not net
    assert d._nyto_species is not net._nyto_species
    dp = dict(d.named_parameters())
    for n, p in net.named_parameters():
        assert dp[n] is p, n
    assert_buffers_copied(d, net)
    assert repr(d) == repr(net)
    assert_values(d + d, reference(operator.add, net, net))
    with pytest.raises(AssertionError):
        d + net
    with pytest.raises(AssertionError):
        d.inner + net.inner
    # d is a particle of its own species: its own ops work
    assert_values(d.clone() - d, reference(operator.sub, net, net))


def test_load_state_dict_across_species():
    a, b = make("mixed"), make("mixed")
    a_clone = a.clone()
    objs = dict(a.named_parameters())
    a.load_state_dict(b.state_dict())
    for n, p in a.named_parameters():
        assert p is objs[n]
        assert torch.equal(p, dict(b.named_parameters())[n])
    for n, t in a.named_buffers():
        assert torch.equal(t, dict(b.named_buffers())[n])
    assert_values(a + a_clone, reference(operator.add, b, a_clone))
    with pytest.raises(AssertionError):
        a + b


NON_NUMBERS = ["abc", [1, 2], torch.ones(3), torch.ones(2, 2), 1j, None]
NON_NUMBER_IDS = ["str", "list", "tensor3", "tensor2x2", "complex", "None"]


@pytest.mark.parametrize("form", ["net_op_x", "x_op_net", "net_iop_x"])
@pytest.mark.parametrize("x", NON_NUMBERS, ids=NON_NUMBER_IDS)
@pytest.mark.parametrize("sym", SYMS)
def test_non_number_operand(sym, x, form):
    net = make("mixed")
    net + 1
    snap = snapshot(net)
    xsnap = copy.deepcopy(x)
    with pytest.raises(TypeError) as info:
        if form == "net_op_x":
            OPS[sym](net, x)
        elif form == "x_op_net":
            OPS[sym](x, net)
        else:
            y = net
            y = IOPS[sym](y, x)
    msg = str(info.value)
    assert "Model" in msg, msg
    if "unsupported operand" in msg:
        assert type(x).__name__ in msg, msg
    assert_unchanged(net, snap)
    if isinstance(x, torch.Tensor):
        assert torch.equal(x, xsnap)
    else:
        assert x == xsnap


# --------------------------------------------------------------------------
# Submodules
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_submodule_op_is_independent_particle(dtype):
    net = make(dtype)
    net + 1  # root storage captured first
    snap = snapshot(net)
    isnap = snapshot(net.inner)
    ref = reference(lambda p: 3 * p, net.inner)
    r = 3 * net.inner
    assert type(r) is Inner and r is not net.inner
    assert_new_particle(r, net.inner)
    assert_values(r, ref)
    assert_unchanged(net, snap)
    assert_unchanged(net.inner, isnap)
    assert r._nyto_species is net.inner._nyto_species
    assert_values(r + net.inner, reference(lambda p, q: p + q, r, net.inner))
    with pytest.raises(AssertionError):
        r + net
    x = torch.randn(2, 3, dtype=r.weight.dtype)
    torch.testing.assert_close(r(x), functional_call(net.inner, ref, (x,)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("first", ["root_first", "sub_first"])
def test_submodule_inplace_changes_only_submodule(dtype, first):
    net = make(dtype)
    if first == "root_first":
        net + 1
    else:
        net.inner + 1
    objs, vals, bufs = snapshot(net)
    inner = net.inner
    net.inner += 2
    assert net.inner is inner
    for n, p in net.named_parameters():
        assert p is objs[n], n
        want = vals[n] + 2 if n.startswith("inner.") else vals[n]
        torch.testing.assert_close(p.detach(), want, msg=n)
    assert_values(net + 1, {n: v + 1 for n, v in snapshot(net)[1].items()})
    after = snapshot(net)[1]
    net *= 2
    assert_values(net, {n: v * 2 for n, v in after.items()})
    net.inner -= net.inner.clone()
    assert_values(net, {n: (torch.zeros_like(v) if n.startswith("inner.") else v * 2) for n, v in after.items()})
    net.eval()
    assert torch.isfinite(net(image())).all()


# --------------------------------------------------------------------------
# Tied parameters, late changes, dtype conversions, requires_grad
# --------------------------------------------------------------------------


def _assert_tied(m):
    assert m.a.weight is m.b.weight is m.inner.proj.weight


def test_tied_parameters_count_once():
    t = Tied()
    w = t.a.weight.detach().clone()
    assert len(list(t.parameters())) == 5
    ref_r = reference(lambda p: p + 1, t)
    r = t + 1
    _assert_tied(r)
    assert len(list(r.parameters())) == 5
    torch.testing.assert_close(r.a.weight.detach(), w + 1)
    assert_values(r, reference(lambda p: p + 1, t))
    assert_values(t + t, reference(lambda p: p + p, t))
    c = t.clone()
    _assert_tied(c)
    assert c.a.weight is not t.a.weight
    t += 1
    _assert_tied(t)
    torch.testing.assert_close(t.a.weight.detach(), w + 1)
    ri = t.inner * 2
    torch.testing.assert_close(ri.proj.weight.detach(), (w + 1) * 2)
    t.inner += 1  # the shared weight lives in the root and the sub-particle
    _assert_tied(t)
    torch.testing.assert_close(t.a.weight.detach(), w + 2)
    assert_values(t - 1, reference(lambda p: p - 1, t))
    x = torch.randn(2, 3)
    torch.testing.assert_close(r(x), functional_call(t, ref_r, (x,)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_parameters_added_or_replaced_later(dtype):
    net = make(dtype)
    net + 1
    net.extra = nn.Parameter(torch.randn(4, dtype=torch.float64))
    net.lin.weight = nn.Parameter(torch.randn(4, 3))
    net.seq[2].bias = nn.Parameter(torch.randn(3, dtype=net.seq[2].weight.dtype))
    net.inner.weight = nn.Parameter(torch.randn(3, dtype=net.inner.proj.weight.dtype))
    r = net + 1
    assert_new_particle(r, net)
    assert "extra" in dict(r.named_parameters())
    assert_values(r, reference(lambda p: p + 1, net))
    assert_values(net.inner * 2, reference(lambda p: p * 2, net.inner))
    objs = dict(net.named_parameters())
    ref = reference(lambda p: p * 3, net)
    net *= 3
    assert all(p is objs[n] for n, p in net.named_parameters())
    assert_values(net, ref)
    assert_flat_storage(net)


RESHAPES = {
    "view": lambda w: w.view(4, 3),
    "t": lambda w: w.t(),
    "slice": lambda w: w[:2],
    "unsqueeze": lambda w: w.unsqueeze(0),
}


@pytest.mark.parametrize("how", list(RESHAPES))
def test_parameter_data_reshaped_at_same_address(how):
    # `p.data = <view starting at p's own address>`: the cached storage must not be trusted
    net = NytoLinear(torch.randn(3, 4), torch.randn(4))
    net + 1
    w = net.weight
    net.weight.data = RESHAPES[how](net.weight.data)
    assert net.weight.data_ptr() == w.data_ptr()
    shape = net.weight.shape
    r = net + 1
    assert r.weight.shape == shape
    assert_values(r, reference(lambda p: p + 1, net))
    ref = reference(lambda p: p * 2, net)
    net *= 2
    assert net.weight is w and net.weight.shape == shape
    assert_values(net, ref)
    assert_flat_storage(r)


REPOINTS = {
    "new_storage": lambda net: torch.randn_like(net.weight),
    "clone": lambda net: net.weight.data.clone() + 1,
    # same storage (the flat), same shape, another offset: over the bias and beyond
    "other_offset": lambda net: (
        net.weight.data.view(-1)[0:1]
        .new_empty(0)
        .set_(net.weight.untyped_storage(), net.weight.storage_offset() + 1, net.weight.shape)
    ),
}


@pytest.mark.parametrize("how", list(REPOINTS))
def test_parameter_data_repointed(how):
    # `p.data = t` rewrites p's TensorImpl in place: the view keys must notice
    net = NytoLinear(torch.randn(3, 4), torch.randn(3 * 4 + 8)[:4].clone())
    net + 1
    w = net.weight
    net.weight.data = REPOINTS[how](net)
    ref = reference(lambda p: p + 1, net)
    assert_values(net + 1, ref)
    ref = reference(lambda p: p * 2, net)
    net *= 2
    assert net.weight is w
    assert_values(net, ref)


class Thousand(nyto.NytoModule):
    """600 small parameters: two such particles take the two-thread view check."""

    def __init__(self):
        super().__init__()
        self.ps = nn.ParameterList([nn.Parameter(torch.randn(3)) for _ in range(600)])


@pytest.mark.parametrize("which", ["left", "right", "none"])
@pytest.mark.parametrize("form", ["a + b", "a += b"])
def test_parameter_repointed_in_a_many_parameter_pair(which, form):
    # the views of both operands are checked on two threads (>= 1024 parameters)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _repointed_pair(which, form)
    finally:
        torch.set_num_threads(threads)


def _repointed_pair(which, form):
    a = Thousand()
    b = a.clone()
    for p in b.parameters():  # made: b's views are checked too
        p.data.mul_(0.5)
    a + b
    if which != "none":
        p = (a if which == "left" else b).ps[417]
        p.data = p.data.clone() + 1
    ref = reference(lambda x, y: x + y, a, b)
    if form == "a + b":
        assert_values(a + b, ref)
    else:
        a += b
        assert_values(a, ref)


CONVERSIONS = {
    "double": lambda m: m.double(),
    "to_float64": lambda m: m.to(torch.float64),
    "float": lambda m: m.float(),
    "half": lambda m: m.half(),
    "float_then_double": lambda m: m.float().double(),
}


@pytest.mark.parametrize("conv", list(CONVERSIONS))
def test_dtype_conversion_then_ops(conv):
    net = make("mixed")
    net + 1
    c = net.clone()
    objs = dict(net.named_parameters())
    assert CONVERSIONS[conv](net) is net
    assert all(p is objs[n] for n, p in net.named_parameters())
    r = net * 2 + 1
    assert_new_particle(r, net)
    assert_values(r, reference(lambda p: p * 2 + 1, net))
    assert_values(r - net, reference(lambda p, q: p - q, r, net))
    assert_flat_storage(r)
    assert_flat_storage(net)
    ref = reference(lambda p: p * 2, net)
    net *= 2
    assert all(p is objs[n] for n, p in net.named_parameters())
    assert_values(net, ref)
    assert c._nyto_species is net._nyto_species
    if conv != "half":
        net.eval()
        assert net(image()).shape == (4, 2)


def test_requires_grad_change_is_reflected():
    net = make("mixed")
    net + 1
    net.lin.weight.requires_grad_(False)
    net.frozen.requires_grad_(True)
    rg = {n: p.requires_grad for n, p in net.named_parameters()}
    assert not rg["lin.weight"] and rg["frozen"]
    for r in (net + 1, net * net, net.clone(), net.randn(), net.rand(), -net):
        assert {n: p.requires_grad for n, p in r.named_parameters()} == rg


# --------------------------------------------------------------------------
# Buffers
# --------------------------------------------------------------------------

RESULTS = {
    "add": lambda n: n + 10,
    "radd": lambda n: 10 + n,
    "mul_particle": lambda n: n * n,
    "neg": lambda n: -n,
    "clone": lambda n: n.clone(),
    "detach": lambda n: n.detach(),
    "randn": lambda n: n.randn(),
    "rand": lambda n: n.rand(),
    "clone_from": lambda n: n.clone_from(Model("mixed")),
}


@pytest.mark.parametrize("how", list(RESULTS))
def test_buffers_never_transformed_nor_shared(how):
    net = make("mixed")
    if how == "clone_from":
        src = make("mixed")
        r = net.clone_from(src)
    else:
        src = net
        r = RESULTS[how](net)
    assert_buffers_copied(r, src)
    before = {n: b.clone() for n, b in src.named_buffers()}
    r.train()
    r(image(8))
    assert int(r.bn.num_batches_tracked) == 6
    assert not torch.equal(r.bn.running_mean, before["bn.running_mean"])
    for n, b in src.named_buffers():
        assert torch.equal(b, before[n]), n


def test_inplace_ops_leave_buffers_alone():
    net = make("mixed")
    bufs = {n: b.clone() for n, b in net.named_buffers()}
    net += 10
    net *= net
    net **= 2
    for n, b in net.named_buffers():
        assert torch.equal(b, bufs[n]), n


def test_buffer_replaced_later_is_copied():
    net = make("mixed")
    net + 1
    net.bn.running_mean = torch.full((3,), 7.0)
    net.bn.running_var.fill_(3.0)
    r = net + 1
    assert torch.equal(r.bn.running_mean, torch.full((3,), 7.0))
    assert torch.equal(r.bn.running_var, torch.full((3,), 3.0))
    assert_buffers_copied(r, net)


# --------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_flat_storage(dtype):
    net = make(dtype)
    r = net + 1
    assert_flat_storage(net)
    assert_flat_storage(r)
    for x in (r * net, net.clone(), net.randn(), -r, 2**net, net.inner + 1):
        assert_flat_storage(x)
        assert {p.untyped_storage().data_ptr() for p in x.parameters()}.isdisjoint(
            {p.untyped_storage().data_ptr() for p in net.parameters()}
        )
    net += 1
    assert_flat_storage(net)
    n_groups = len({p.dtype for p in net.parameters()})
    assert len({p.untyped_storage().data_ptr() for p in net.parameters()}) == n_groups
    assert len({p.untyped_storage().data_ptr() for p in r.parameters()}) == n_groups


# --------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradients_on_results(dtype):
    net = make(dtype)
    for p in net.parameters():
        p.grad = torch.ones_like(p)  # the source's grads are not carried over
    r = net * 0.5 + 1
    r.eval()
    x = image()
    r(x).pow(2).sum().backward()
    ref = {n: p.detach().clone().requires_grad_(p.requires_grad) for n, p in r.named_parameters()}
    net.eval()
    functional_call(net, ref, (x,)).pow(2).sum().backward()
    for n, p in r.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.shape == p.shape, n
            torch.testing.assert_close(p.grad, ref[n].grad, msg=n)
        else:
            assert p.grad is None, n
    for p in net.parameters():
        assert torch.equal(p.grad, torch.ones_like(p))


def test_gradients_after_inplace():
    net = make("mixed")
    net.eval()
    x = image()
    stale = (net(x) ** 2).sum()
    net += 1
    with pytest.raises(RuntimeError, match="inplace"):
        stale.backward()  # the in-place op bumped the saved tensors' versions
    net.zero_grad()
    (net(x) ** 2).sum().backward()
    for n, p in net.named_parameters():
        assert (p.grad is not None) == p.requires_grad, n
    net -= net.clone()
    assert_values(net, {n: torch.zeros_like(p) for n, p in net.named_parameters()})


# --------------------------------------------------------------------------
# Serialization
# --------------------------------------------------------------------------


def _roundtrip(how, net):
    if how == "pickle":
        return pickle.loads(pickle.dumps(net))
    if how == "deepcopy":
        return copy.deepcopy(net)
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@pytest.mark.parametrize("how", ["pickle", "deepcopy", "torch_save"])
@pytest.mark.parametrize("state", ["fresh", "after_ops"])
def test_serialization_roundtrip(how, state):
    net = make("mixed")
    if state == "after_ops":
        net = net + 1
        net *= 2
    loaded = _roundtrip(how, net)
    assert type(loaded) is Model and loaded is not net
    assert_same_structure(loaded, net)
    assert repr(loaded) == repr(net)
    lp = dict(loaded.named_parameters())
    for n, p in net.named_parameters():
        assert type(lp[n]) is nn.Parameter and lp[n] is not p
        assert lp[n].requires_grad == p.requires_grad
        assert torch.equal(lp[n], p), n
    assert_buffers_copied(loaded, net)
    assert_values(loaded + 1, reference(lambda p: p + 1, net))
    assert_values(loaded * loaded.clone(), reference(lambda p: p * p, net))
    ref = reference(lambda p: p - 3, net)
    loaded -= 3
    assert_values(loaded, ref)
    assert_flat_storage(loaded)
    assert_values(net + 0, reference(operator.pos, net))  # the source still works
    net.eval()
    loaded.eval()
    x = image()
    torch.testing.assert_close(loaded(x), functional_call(net, ref, (x,)))


def test_state_dict_roundtrip():
    net = make("mixed")
    net = 2 * net - 1
    sd = net.state_dict()
    other = make("mixed")
    objs = dict(other.named_parameters())
    other.load_state_dict(sd)
    assert all(p is objs[n] for n, p in other.named_parameters())
    for n, t in other.state_dict().items():
        assert torch.equal(t, sd[n]), n
    assert_values(other + other.clone(), reference(lambda p: p + p, net))
    net.load_state_dict(make("mixed").state_dict())
    assert_values(net + 1, reference(lambda p: p + 1, net))


def _param_bytes(m):
    return sum(t.numel() * t.element_size() for t in list(m.parameters()) + list(m.buffers()))


def test_pickle_size_and_memory():
    net = Many() + 1
    nbytes = _param_bytes(net)
    data = pickle.dumps(net)
    assert len(data) < 1.5 * nbytes
    loaded = pickle.loads(data)
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in loaded.parameters()}
    assert sum(storages.values()) < 1.5 * nbytes


@pytest.mark.parametrize("how", ["pickle", "deepcopy", "torch_save"])
def test_serialization_keeps_shared_references(how):
    net = make("mixed") + 1  # parameters view the flat buffers
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    n2, w2, inner2, opt2 = _roundtrip(how, (net, net.lin.weight, net.inner, opt))
    assert n2.lin.weight is w2
    assert n2.inner is inner2
    assert [id(p) for p in opt2.param_groups[0]["params"]] == [id(p) for p in n2.parameters()]


# --------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------

DYING = {
    "add": lambda n: n + 1,
    "rsub": lambda n: 1 - n,
    "particle": lambda n: n * n,
    "neg": lambda n: -n,
    "clone": lambda n: n.clone(),
    "detach": lambda n: n.detach(),
    "randn": lambda n: n.randn(),
    "rand": lambda n: n.rand(),
    "clone_from": lambda n: n.clone_from(n.detach()),
    "submodule": lambda n: n.inner + 1,
}


@pytest.mark.parametrize("how", list(DYING))
def test_results_die_without_gc(no_gc, how):
    net = make("mixed")
    r = DYING[how](net)
    r += 1  # in-place on the result, too
    w = weakref.ref(r)
    wi = weakref.ref(r.inner if hasattr(r, "inner") else r.proj)
    del r
    assert w() is None and wi() is None
    assert_values(net + 1, reference(lambda p: p + 1, net))


RESULT_ROUTES = {
    "fast_op": lambda n: n + n,
    "fast_op_number": lambda n: n * 2,
    "fast_unary": lambda n: n.clone(),
    "fast_random": lambda n: n.rand(),
    "python_number": lambda n: n + torch.tensor(2.0),  # a 0-dim tensor takes the Python route
    "python_generator": lambda n: n.randn(generator=torch.Generator().manual_seed(0)),
}


@pytest.mark.parametrize("route", list(RESULT_ROUTES))
def test_result_state_valid_from_the_start(route):
    # modules registered after construction carry versions: results must record them
    net = make("mixed")
    net.inner.extra = nn.Parameter(torch.ones(2))
    net.heads[0].register_buffer("steps", torch.zeros(1))
    net + 1
    r = RESULT_ROUTES[route](net)
    assert nyto._C.state_ok(r, r.__dict__["_nyto_state"])
    assert nyto._C.fast_unary(r, 1) is not None  # so the next op takes the C route


def test_result_hook_dicts_untracked_until_a_hook_comes():
    net = make("mixed")
    r = net + 1
    hook_dicts = [v for m in r.modules() for v in vars(m).values() if type(v) is OrderedDict]
    assert len(hook_dicts) >= 11 * 2 and not any(gc.is_tracked(d) for d in hook_dicts)
    del hook_dicts
    # a hook that holds its module: tracked again, and the cycle is collected
    r.register_forward_hook(lambda m, i, o, keep=r: None)
    assert gc.is_tracked(r._forward_hooks)
    w = weakref.ref(r)
    was = gc.isenabled()
    gc.disable()
    try:
        del r
        assert w() is not None  # kept by the cycle
        gc.collect()
        assert w() is None
    finally:
        if was:
            gc.enable()


@pytest.mark.parametrize("how", ["fresh", "inplace", "after_results", "inner_inplace"])
def test_source_dies_without_gc(no_gc, how):
    net = make("mixed")
    keep = None
    if how == "inplace":
        net += 1
        net *= net.clone()
    elif how == "after_results":
        keep = net + 1
    elif how == "inner_inplace":
        net + 1
        net.inner += 1
    w = weakref.ref(net)
    del net
    assert w() is None
    if keep is not None:
        assert_values(keep * 2, reference(lambda p: p * 2, keep))


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_rss_bounded_in_a_loop(no_gc):
    net = Big()
    size = _param_bytes(net)
    assert size >= 16_000_000
    for _ in range(3):
        net = 0.5 * net + 1
    start = _rss()
    for _ in range(200):  # its speed: benchmarks/bench_particles.py --rss
        net = 0.5 * net + 1
    growth = _rss() - start
    assert growth <= 4 * size, f"RSS grew {growth / size:.1f} particles"
    torch.testing.assert_close(net.layers[0].bias.detach(), torch.full((1000,), 2.0))


# --------------------------------------------------------------------------
# Random particles
# --------------------------------------------------------------------------


@pytest.mark.parametrize("fill", ["randn", "rand"])
def test_random_fill_honours_seed(fill):
    net = make("mixed")

    def draw(seed):
        torch.manual_seed(seed)
        return getattr(net, fill)()

    a, b, c = draw(1), draw(1), draw(2)
    for x in (a, b, c):
        assert_new_particle(x, net)
        assert x._nyto_species is net._nyto_species
        assert_flat_storage(x)
    for n, p in a.named_parameters():
        assert torch.equal(p, dict(b.named_parameters())[n]), n
        assert not torch.equal(p, dict(c.named_parameters())[n]), n
        assert not torch.equal(p, dict(net.named_parameters())[n]), n
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    x, y = getattr(net, fill)(generator=g1), getattr(net, fill)(generator=g2)
    assert all(torch.equal(p, q) for p, q in zip(x.parameters(), y.parameters()))
    # the default generator (C hot path) and a generator (dispatcher route) draw alike
    torch.manual_seed(7)
    fast = getattr(net, fill)()
    slow = getattr(net, fill)(generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(p, q) for p, q in zip(fast.parameters(), slow.parameters()))


@pytest.mark.parametrize("dist", [0, 1])
def test_random_c_route_taken_on_a_valid_state(dist):
    net = make("mixed")
    net + 1  # captures the storage state
    torch.manual_seed(3)
    r = nyto._C.fast_random(net, dist, 0.0, 1.0)
    assert r is not None and type(r) is type(net) and r._nyto_species is net._nyto_species
    torch.manual_seed(3)
    want = net.randn() if dist == 0 else net.rand()
    assert all(torch.equal(p, q) for p, q in zip(r.parameters(), want.parameters()))
    net.inner.extra = nn.Parameter(torch.ones(1))  # a registration: the cached state is stale
    assert nyto._C.fast_random(net, dist, 0.0, 1.0) is None


def test_randn_statistics():
    net = Wide()
    r = net.randn()
    assert [(n, p.dtype) for n, p in r.named_parameters()] == [(n, p.dtype) for n, p in net.named_parameters()]
    big = [p for p in r.parameters() if p.numel() >= 250_000]
    assert len(big) == 2
    for p in big:
        x = p.detach().double()
        assert abs(x.mean().item()) < 0.01
        assert abs(x.std().item() - 1) < 0.01
        assert 0.64 < (x.abs() < 1).double().mean().item() < 0.725
    allv = torch.cat([p.detach().double().flatten() for p in r.parameters()])
    assert abs(allv.mean().item()) < 0.01 and abs(allv.std().item() - 1) < 0.01


def test_rand_range():
    net = Wide()
    r = net.rand()
    allv = torch.cat([p.detach().double().flatten() for p in r.parameters()])
    assert allv.min().item() >= 0 and allv.max().item() < 1
    assert abs(allv.mean().item() - 0.5) < 0.01
    assert [p.dtype for p in r.parameters()] == [p.dtype for p in net.parameters()]


# --------------------------------------------------------------------------
# Edge cases
# --------------------------------------------------------------------------


def test_particle_without_parameters_arithmetic():
    e = Empty()
    for r in (e + 1, e * e, -e, e.clone(), 2**e):
        assert type(r) is Empty and r is not e
        assert torch.equal(r.count, e.count) and r.count is not e.count
    e += 1
    assert e.count.item() == 0


@pytest.mark.parametrize("fill", ["randn", "rand"])
def test_particle_without_parameters_random(fill):
    e = Empty()
    r = getattr(e, fill)()
    assert type(r) is Empty and r is not e


def test_attribute_names_not_shadowed():
    # named particle methods (pos, sub, add, ...) must not hide same-named attributes
    m = Positional()
    m.register_buffer("add", torch.ones(2))
    x = torch.randn(2, 4)
    for p in (m, m + 1, m.clone(), m * m):
        assert isinstance(p.pos, nn.Parameter) and isinstance(p.sub, nn.Linear)
        assert torch.equal(p.add, torch.ones(2))
        p(x)
    assert_values(m + 1, reference(lambda q: q + 1, m))
    net = Model()  # without such attributes the named methods are there
    assert_values(net.sub(1), reference(lambda q: q - 1, net))
    assert_values(m.mul(2), reference(lambda q: q * 2, m))


def test_helpers_can_fail():
    """The comparison helpers above really catch differences."""
    net = make("mixed")
    ref = reference(lambda p: p + 1, net)
    ref["inner.proj.bias"] = ref["inner.proj.bias"].clone()
    ref["inner.proj.bias"][0] += 1e-3
    with pytest.raises(AssertionError, match="inner.proj.bias"):
        assert_values(net + 1, ref)
    snap = snapshot(net)
    with torch.no_grad():
        net.heads[1].weight[0, 0] += 1e-6
    with pytest.raises(AssertionError):
        assert_unchanged(net, snap)
    net.lin.bias = nn.Parameter(net.lin.bias.detach().clone())
    with pytest.raises(AssertionError):
        assert_unchanged(net, snapshot(make("mixed")))
    with pytest.raises(AssertionError):
        assert_flat_storage(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))
    with pytest.raises(AssertionError):
        assert_new_particle(net.detach(), net)


def test_cached_storage_survives_unrelated_module_changes():
    """Registrations elsewhere (other modules being built) keep a particle's
    cached storage; a registration inside the particle re-captures it."""
    from nytorch import _storage

    net = make("float32")
    net + 1
    st = _storage.state_of(net)
    nn.Linear(3, 3).register_buffer("extra", torch.zeros(1))  # unrelated modules change
    assert _storage.state_of(net) is st
    net.lin.extra_bias = nn.Parameter(torch.zeros(1))  # a registration inside the particle
    st2 = _storage.state_of(net)
    assert st2 is not st
    assert any(p is net.lin.extra_bias for p in st2.params)
