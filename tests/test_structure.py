"""Every change of a particle's structure after its storage state was cached is
seen (issue 15): each op then either works exactly as the per-parameter torch
reference does on the particle as it is now, or raises nytorch.StructureError
naming the parameter, before anything is written."""

import copy

import nytorch as nyto
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize


class Net(nyto.NytoModule):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.bn = nn.BatchNorm1d(3)
        self.head = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))


def snapshot(m):
    """Names, identities and values of everything a particle holds."""
    return (
        [(k, id(p), p.detach().clone()) for k, p in m.named_parameters()],
        [(k, b.detach().clone()) for k, b in m.named_buffers()],
    )


def assert_unchanged(m, snap):
    params, buffers = snapshot(m)
    assert [(k, i) for k, i, _ in params] == [(k, i) for k, i, _ in snap[0]]
    for (_, _, v), (_, _, w) in zip(params, snap[0]):
        assert torch.equal(v, w)
    assert [k for k, _ in buffers] == [k for k, _ in snap[1]]
    for (_, v), (_, w) in zip(buffers, snap[1]):
        assert torch.equal(v, w)


def _del_param(n):
    del n.fc.bias


def _none_param(n):
    n.fc.bias = None


def _pop_param(n):
    n.fc._parameters.pop("bias")


def _clear_params(n):
    n.head[1]._parameters.clear()


def _popitem_param(n):
    n.fc._parameters.popitem()


def _del_item_param(n):
    del n.fc._parameters["bias"]


def _del_buffer(n):
    del n.bn.running_mean


def _none_buffer(n):
    n.bn.running_var = None


def _pop_buffer(n):
    n.bn._buffers.pop("running_mean")


def _del_sub(n):
    del n.head


def _none_sub(n):
    n.head = None


def _pop_sub(n):
    n.head._modules.pop("1")


def _del_seq_item(n):
    del n.head[1]


def _set_item_sub(n):
    n._modules["head"] = nn.Sequential(nn.Linear(3, 5))


def _replace_sub(n):
    n.head = nn.Linear(3, 2)


def _replace_shape(n):
    n.fc.bias = nn.Parameter(torch.zeros(5))


def _set_item_shape(n):
    n.fc._parameters["bias"] = nn.Parameter(torch.zeros(7))


def _update_shape(n):
    n.fc._parameters.update(bias=nn.Parameter(torch.zeros(2)))


def _add_param(n):
    n.extra = nn.Parameter(torch.ones(2))


def _setdefault_param(n):
    n.fc._parameters.setdefault("extra", nn.Parameter(torch.ones(2)))


def _ior_param(n):
    n.fc._parameters |= {"extra": nn.Parameter(torch.ones(2))}


def _set_item_buffer(n):
    n.bn._buffers["extra"] = torch.ones(3)


# Each mutation leaves the particle with another set of parameters (or buffers):
# a lone op follows it, an op with an unchanged particle of its species raises.
MUTATIONS = [
    _del_param,
    _none_param,
    _pop_param,
    _clear_params,
    _popitem_param,
    _del_item_param,
    _del_sub,
    _none_sub,
    _pop_sub,
    _del_seq_item,
    _set_item_sub,
    _replace_sub,
    _replace_shape,
    _set_item_shape,
    _update_shape,
    _add_param,
    _setdefault_param,
    _ior_param,
]
BUFFER_MUTATIONS = [_del_buffer, _none_buffer, _pop_buffer, _set_item_buffer]


def reference(n, fn):
    return {k: fn(p.detach()) for k, p in n.named_parameters()}


def check_result(r, n, fn):
    assert [k for k, _ in r.named_parameters()] == [k for k, _ in n.named_parameters()]
    ref = reference(n, fn)
    for k, p in r.named_parameters():
        assert torch.equal(p.detach(), ref[k]), k
    assert [k for k, _ in r.named_buffers()] == [k for k, _ in n.named_buffers()]
    for (k, rb), (_, nb) in zip(r.named_buffers(), n.named_buffers()):
        assert rb is not nb and torch.equal(rb, nb), k  # copies of the buffers


def settle(n):
    """The particle has taken part in ops: its storage state is cached."""
    _ = n + 1
    _ = n * n
    n += 0


@pytest.mark.parametrize("mutate", MUTATIONS + BUFFER_MUTATIONS, ids=lambda f: f.__name__[1:])
@pytest.mark.parametrize("result", [False, True], ids=["made", "result"])
def test_a_lone_op_follows_the_particle_as_it_is_now(mutate, result):
    torch.manual_seed(0)
    n = Net()
    if result:  # a result particle (lazy Parameters) mutated
        n = n * 1
    settle(n)
    mutate(n)
    check_result(n * 2, n, lambda p: p * 2)
    check_result(-n, n, lambda p: -p)
    check_result(n.clone(), n, lambda p: p)
    check_result(n + n, n, lambda p: p + p)
    ids = [id(p) for p in n.parameters()]
    ref = reference(n, lambda p: p + 1)
    n += 1
    assert [id(p) for p in n.parameters()] == ids
    for k, p in n.named_parameters():
        assert torch.equal(p.detach(), ref[k])
    # and a second op after the state was captured again
    check_result(n * 3, n, lambda p: p * 3)


@pytest.mark.parametrize("mutate", MUTATIONS, ids=lambda f: f.__name__[1:])
@pytest.mark.parametrize("op", ["add", "add_", "radd_other", "fuse", "fuse_out", "swarm"])
def test_an_op_with_an_unchanged_particle_raises_and_writes_nothing(mutate, op):
    torch.manual_seed(0)
    n = Net()
    old = n.clone()
    settle(n)
    settle(old)
    mutate(n)
    before_n, before_old = snapshot(n), snapshot(old)
    f = nyto.fuse(lambda a, b: a * 0.5 + b)
    calls = {
        "add": lambda: n + old,
        "add_": lambda: old.add_(n),
        "radd_other": lambda: n.__iadd__(old),
        "fuse": lambda: f(n, old),
        "fuse_out": lambda: f(old, n, out=old),
        "swarm": lambda: nyto.Swarm(old, 2) + n,
    }
    with pytest.raises(nyto.StructureError) as info:
        calls[op]()
    assert "'" in str(info.value)  # names the parameter
    assert isinstance(info.value, ValueError)
    assert_unchanged(n, before_n)
    assert_unchanged(old, before_old)


def test_the_issue_case():
    class Small(nyto.NytoModule):
        def __init__(s):
            super().__init__()
            s.fc = nn.Linear(4, 3)

    n = Small()
    old = n.clone()
    b0 = old.fc.bias.detach().clone()
    del n.fc.bias
    with pytest.raises(nyto.StructureError, match="fc.bias"):
        n + old
    with pytest.raises(nyto.StructureError, match="fc.bias"):
        old.add_(n)
    assert torch.equal(old.fc.bias, b0)
    assert [k for k, _ in (n * 2).named_parameters()] == ["fc.weight"]


def test_reregistered_parameter_of_the_same_shape_meets_by_name():
    torch.manual_seed(0)
    n = Net()
    old = n.clone()
    settle(n)
    new_bias = nn.Parameter(torch.full((3,), 5.0))
    n.fc.bias = new_bias
    r = n + old
    ref = {k: p.detach() + q.detach() for (k, p), (_, q) in zip(n.named_parameters(), old.named_parameters())}
    for k, p in r.named_parameters():
        assert torch.equal(p.detach(), ref[k])
    n -= old
    assert n.fc.bias is new_bias
    assert torch.equal(n.fc.bias.detach(), torch.full((3,), 5.0) - old.fc.bias.detach())


def test_parameter_of_another_dtype_is_promoted_like_torch():
    n = Net()
    old = n.clone()
    settle(n)
    n.fc.bias = nn.Parameter(torch.ones(3, dtype=torch.float64))
    r = n + old
    assert r.fc.bias.dtype == torch.float64
    assert torch.equal(r.fc.bias.detach(), 1 + old.fc.bias.detach().double())


def test_same_shapes_under_other_names_do_not_meet():
    class Two(nyto.NytoModule):
        def __init__(s):
            super().__init__()
            s.a = nn.Parameter(torch.zeros(3))
            s.b = nn.Parameter(torch.ones(3))

    x = Two()
    y = x.clone()
    del x.a  # x: b
    del y.b  # y: a  (same groups and shapes, other names)
    with pytest.raises(nyto.StructureError, match="'b' exists only on the left"):
        x + y


def test_load_state_dict_non_strict_with_missing_keys():
    torch.manual_seed(0)
    n = Net()
    settle(n)
    sd = {k: v + 1 for k, v in n.state_dict().items() if not k.startswith("fc.")}
    missing, unexpected = n.load_state_dict(sd, strict=False)
    assert missing == ["fc.weight", "fc.bias"] and not unexpected
    check_result(n * 2, n, lambda p: p * 2)


def test_load_state_dict_assign_replaces_parameters():
    torch.manual_seed(0)
    n = Net()
    other = Net()
    settle(n)
    n.load_state_dict(other.state_dict(), assign=True)
    check_result(n * 2, n, lambda p: p * 2)
    assert torch.equal(n.fc.weight, other.fc.weight)


class Scale(nn.Module):
    def forward(self, x):
        return 2 * x


@pytest.mark.parametrize("leave", [False, True])
def test_parametrization_added_and_removed(leave):
    torch.manual_seed(0)
    n = Net()
    settle(n)
    parametrize.register_parametrization(n.fc, "weight", Scale())
    assert "fc.parametrizations.weight.original" in dict(n.named_parameters())
    check_result(n * 2, n, lambda p: p * 2)
    r = n + 1
    assert torch.equal(r.fc.weight, 2 * (n.fc.parametrizations.weight.original.detach() + 1))
    n += 1
    check_result(n - 1, n, lambda p: p - 1)
    parametrize.remove_parametrizations(n.fc, "weight", leave_parametrized=leave)
    assert "fc.weight" in dict(n.named_parameters())
    check_result(n * 2, n, lambda p: p * 2)


def test_functional_call_swaps_do_not_lose_the_state():
    """torch.func.functional_call writes _parameters and puts them back: the
    versions move, the structure is the same, the cached state is kept."""
    n = Net()
    settle(n)
    st = n.__dict__["_nyto_state"]
    params = {k: p.detach() + 1 for k, p in n.named_parameters()}
    n.eval()
    torch.func.functional_call(n.fc, {"weight": params["fc.weight"], "bias": params["fc.bias"]}, (torch.randn(2, 4),))
    w = n.fc.weight
    n += 1
    assert n.__dict__["_nyto_state"] is st
    assert n.fc.weight is w


def test_untracked_container_replacement_is_recaptured():
    n = Net()
    settle(n)
    n.fc._parameters = dict(n.fc._parameters)  # a plain dict put in wholesale
    del n.fc._parameters["bias"]
    check_result(n * 2, n, lambda p: p * 2)


def test_copies_and_pickles_keep_plain_dicts():
    n = Net()
    settle(n)
    assert type(copy.deepcopy(n).fc._parameters) is dict
    import pickle

    m = pickle.loads(pickle.dumps(n))
    assert type(m.fc._parameters) is dict
    check_result(m * 2, m, lambda p: p * 2)


def test_swarm_from_a_mutated_particle():
    torch.manual_seed(0)
    n = Net()
    settle(n)
    del n.fc.bias
    s = nyto.Swarm(n, 3)
    assert "fc.bias" not in s.param_names
    assert [k for k, _ in s[1].named_parameters()] == [k for k, _ in n.named_parameters()]
    s2 = s + n
    check_result(s2[0], n, lambda p: p + p)


@pytest.mark.parametrize("how", ["setitem", "register"])
def test_none_valued_parameter_keys_follow_into_results(how):
    n = Net()
    settle(n)
    r0 = n * 2
    assert "extra" not in r0.fc._parameters
    if how == "setitem":
        n.fc._parameters["extra"] = None
    else:
        n.fc.register_parameter("extra", None)
    r = n * 2
    assert "extra" in r.fc._parameters and r.fc._parameters["extra"] is None
    del n.fc._parameters["extra"]
    assert "extra" not in (n * 2).fc._parameters


CHANGES = {  # each changing dict method, called so that it changes the dict
    "__setitem__": lambda d, k, v: d.__setitem__(k, v),
    "__delitem__": lambda d, k, v: d.__delitem__(k),
    "pop": lambda d, k, v: d.pop(k),
    "popitem": lambda d, k, v: d.popitem(),
    "clear": lambda d, k, v: d.clear(),
    "update": lambda d, k, v: d.update({k: v}),
    "setdefault": lambda d, k, v: d.setdefault(k + "_new", v),
    "__ior__": lambda d, k, v: d.__ior__({k: v}),
}


@pytest.mark.parametrize("method", sorted(CHANGES))
@pytest.mark.parametrize("container", ["_parameters", "_buffers", "_modules"])
@pytest.mark.parametrize("result", [False, True], ids=["made", "result"])
def test_every_changing_method_of_every_container_moves_the_version(method, container, result):
    from nytorch._containers import CHANGING

    assert set(CHANGES) == set(CHANGING)
    n = Net()
    if result:
        n = n + 1
    settle(n)
    m = n.bn if container == "_buffers" else (n.head if container == "_modules" else n.fc)
    d = m.__dict__[container]
    cell = m.__dict__["_parameters"]._nyto_cell
    assert d._nyto_cell is cell
    key = next(iter(d))
    value = d[key]
    v0 = cell.version
    _ = (key in d, len(d), d.get(key), list(d.items()), d.copy())  # reads move nothing
    assert cell.version == v0
    CHANGES[method](d, key, value)
    assert cell.version > v0


def test_tracked_containers_pickle_and_copy_as_plain_dicts():
    import pickle

    n = Net()
    settle(n)
    for d in (n.fc._parameters, n.bn._buffers, n.head._modules):
        assert type(pickle.loads(pickle.dumps(d))) is dict
        assert type(copy.copy(d)) is dict and type(copy.deepcopy(d)) is dict
        assert type(d.copy()) is dict


def test_many_results_reuse_containers_safely():
    """ContainerDicts come from a free list: dead results' containers are
    reused; a live result's containers are never shared."""
    n = Net()
    settle(n)
    live = []
    for i in range(600):
        r = n + i
        if i % 3 == 0:
            live.append((i, r))
    ids = {id(r.head._modules) for _, r in live} | {id(r.bn._buffers) for _, r in live}
    assert len(ids) == 2 * len(live)
    for i, r in live:
        assert list(r.head._modules) == ["0", "1"]
        assert torch.equal(r.head[0].weight, n.head[0].weight + i)
        del r.head[1]
        assert [k for k, _ in (r * 1).named_parameters() if k.startswith("head")] == ["head.0.weight", "head.0.bias"]


@pytest.mark.parametrize(
    "make", [lambda n: n + 0.5, lambda n: n / 2, lambda n: n / n, lambda n: 0.5 * n, lambda n: n**-0.5]
)
def test_a_promoted_result_gets_its_own_layout(make):
    """int particle + 0.5 is float32 (torch's rule): its storage layout must
    say so, for a swarm, a fused call or the next op built from it."""

    class Ints(nyto.NytoModule):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor([4, -3, 1]), requires_grad=False)
            self.f = nn.Parameter(torch.tensor([1.5, 2.5]))

    n = Ints()

    def same(x, y):
        return x.dtype == y.dtype and torch.allclose(x, y, rtol=0, atol=0, equal_nan=True)

    for _ in range(2):  # the second time through the C hot path
        r = make(n)
        ref = make(n.w.detach())
        assert same(r.w.detach(), ref)
        s = nyto.Swarm(r, 2)
        assert same(s[1].w.detach(), ref)
        assert same((r * 1).w.detach(), ref)
        assert same(nyto.fuse(lambda a: a * 1)(r).w.detach(), ref)


def test_freeing_nested_results_never_overfills_the_free_list():
    """A dying ContainerDict frees its entries (modules with their own
    ContainerDicts) before it takes a place on the free list: with the list
    nearly full, the nested frees used to take the last places first."""

    class Deep(nyto.NytoModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Sequential(nn.Sequential(nn.Linear(1, 1))), nn.Linear(1, 1))

    n = Deep()
    for count in range(40, 200, 7):  # ends the free list at many fill levels
        results = [n + i for i in range(count)]
        del results
        d = n.net._modules
        assert d.pop("nonexistent", "default") == "default"  # dict.pop still reached
        assert d.setdefault("1") is n.net[1] and d.copy().popitem()[0] == "1"
        n.net.add_module("x", nn.Linear(1, 1))
        d.pop("x")
    check_result(n * 2, n, lambda p: p * 2)


@pytest.mark.parametrize("tiled", [False, True], ids=["copied", "adopted"])
def test_capture_never_moves_a_version_back(tiled):
    """The first op captures the particle (its parameters share one version
    counter with their flat): autograd must still see an in-place op on a
    parameter it saved before."""
    torch.manual_seed(0)
    n = Net() if not tiled else Net() * 1
    for _ in range(50):
        with torch.no_grad():
            n.fc.weight.mul_(1.0)  # the parameter's version is now far ahead of a fresh counter
    before = {k: p._version for k, p in n.named_parameters()}
    loss = (n.fc.weight**2).sum()  # saves fc.weight at its version
    n += 1
    for k, p in n.named_parameters():
        assert p._version > before[k], k
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_swarm_row_assignment_copies_buffers_by_name_or_refuses():
    n = Net()
    s = nyto.Swarm(n, 2)
    p = n.clone()
    p.bn.running_var.fill_(9.0)
    s[0] = p
    assert torch.equal(s[0].bn.running_var, torch.full((3,), 9.0))
    assert torch.equal(s[0].bn.running_mean, p.bn.running_mean)
    del p.bn.running_mean
    before = [f.clone() for f in s.flats], [b.clone() for b in s.buffers]
    with pytest.raises(nyto.StructureError, match="running_mean"):
        s[1] = p * 2
    assert all(torch.equal(a, b) for a, b in zip(s.flats, before[0]))
    assert all(torch.equal(a, b) for a, b in zip(s.buffers, before[1]))


def test_in_place_swarm_op_refused_by_one_group_writes_no_group():
    class Mixed(nyto.NytoModule):
        def __init__(self):
            super().__init__()
            self.f = nn.Parameter(torch.tensor([2.0, 4.0]))
            self.i = nn.Parameter(torch.tensor([1, 2]), requires_grad=False)

    s = nyto.Swarm(Mixed(), 2)
    before = [f.clone() for f in s.flats]
    for op in (lambda x: x.__ipow__(-1), lambda x: x.__isub__(True)):
        with pytest.raises(RuntimeError):
            op(s)
        assert all(torch.equal(a, b) for a, b in zip(s.flats, before))


@pytest.mark.parametrize("op", [lambda s: False - s, lambda s: s - True, lambda s: s.__isub__(True)])
def test_swarm_subtraction_with_a_bool_is_refused_like_torch(op):
    s = nyto.Swarm(Net(), 2)
    before = [f.clone() for f in s.flats]
    with pytest.raises(RuntimeError, match="Subtraction, the `-` operator, with a bool"):
        op(s)
    assert all(torch.equal(a, b) for a, b in zip(s.flats, before))


@pytest.mark.parametrize("how", ["empty_double", "view_int32"])
def test_a_dtype_change_that_keeps_storage_is_seen(how):
    class E(nyto.NytoModule):
        def __init__(self):
            super().__init__()
            self.sub = nn.Module()
            self.sub.e = nn.Parameter(torch.zeros(0))
            self.sub.w = nn.Parameter(torch.tensor([1.5, 2.5]))

    n = E()
    settle(n)
    if how == "empty_double":
        n.sub.double()  # a plain submodule: .data of the same Parameters, empty e keeps its (no) storage
    else:
        n.sub.w.requires_grad_(False)
        n.sub.w.data = n.sub.w.data.view(torch.int32)  # same storage, offset and sizes
    r = n + 0
    for k, p in n.named_parameters():
        assert r.get_parameter(k).dtype == p.dtype, k
        assert torch.equal(r.get_parameter(k), p + 0), k


def test_fuse_of_a_particle_without_parameters():
    class Empty(nyto.NytoModule):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(1, 1, bias=False)

    p = Empty()
    settle(p)
    del p.lin.weight
    f = nyto.fuse(lambda a, b: a * 0.5 + b)
    for _ in range(2):  # the second call through the C route
        assert list(f(p, p).parameters()) == []
        assert f(p, p, out=p) is p


def test_row_assignment_into_a_promoted_swarm():
    class B(nyto.NytoModule):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor([True, False]), requires_grad=False)

    n = B()
    s = nyto.Swarm(n, 2) + 0  # bool + 0: an int64 swarm around the bool template
    s[0] = n + 1  # an int64 particle: [2, 1]
    assert s.flats[0].dtype == torch.int64
    assert s[0].w.tolist() == [2, 1]
    s.scatter_([1], n + 2)
    assert s[1].w.tolist() == [3, 2]


def test_scatter_takes_buffers_by_name_or_refuses():
    n = Net()
    s = nyto.Swarm(n, 2)
    p = n.clone()
    del p.bn.running_mean
    before = [f.clone() for f in s.flats]
    with pytest.raises(nyto.StructureError, match="running_mean"):
        s.scatter_([0, 1], p)
    assert all(torch.equal(a, b) for a, b in zip(s.flats, before))


def test_a_detach_twin_still_moves_the_versions_after_a_recapture():
    class R(nyto.NytoModule):
        def __init__(self):
            super().__init__()
            self.a = nn.Parameter(torch.ones(2, 2, dtype=torch.float64))
            self.sub = nn.Linear(1, 1)

    p = R()
    settle(p)
    twin = p.detach()  # the same Parameter objects, its own cached flats
    del p.sub.weight  # p is captured again on its next op
    _ = p + p
    v = p.a._version
    twin += 1  # writes p.a's values
    assert p.a._version > v
    assert torch.equal(p.a.detach(), torch.full((2, 2), 2.0, dtype=torch.float64))
