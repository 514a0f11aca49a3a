"""Result particles make their Parameter objects on first use (nytorch._lazy).

Every way of looking at a lazy result must see the same Parameters, values
and flags as an eagerly built one, and the laziness must never leak: no
None values, no lost writes, no reference cycles.
"""

import copy
import gc
import io
import pickle
import weakref

import nytorch as nyto
import pytest
import torch
from nytorch._lazy import LazyParams, ParamDict
from torch import nn


class Net(nyto.NytoModule):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.head = nn.Linear(2, 1, bias=False)  # a None-valued key: bias
        self.scale = nn.Parameter(torch.tensor(2.0))
        self.register_buffer("count", torch.tensor(0))

    def forward(self, x):
        return self.head(self.fc(x)) * self.scale


def lazy_result():
    torch.manual_seed(0)
    a = Net()
    b = a.randn()  # other values: a kernel reading one operand twice fails
    a + b  # first op captures the states; results from here on are lazy
    return a, b, a + b


def expected(a, b):
    return {k: (p + b.state_dict()[k]).detach() for k, p in a.named_parameters()}


def assert_values(r, want):
    got = dict(r.named_parameters())
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert isinstance(got[k], nn.Parameter), k
        torch.testing.assert_close(got[k].detach(), v, rtol=0, atol=0)


def test_result_starts_lazy_and_becomes_plain_once_looked_at():
    a, b, r = lazy_result()
    dicts = [m.__dict__["_parameters"] for m in r.modules()]
    assert all(type(d) is LazyParams for d in dicts)
    assert "weight" in r.fc._parameters and len(r.head._parameters) == 2  # keys only: still lazy
    assert type(r.fc.__dict__["_parameters"]) is LazyParams
    w = r.fc.weight  # one look makes the whole particle's Parameters
    assert isinstance(w, nn.Parameter)
    assert all(type(d) is ParamDict for d in dicts)
    assert r.head._parameters["bias"] is None  # a None-valued key stays None
    assert_values(r, expected(a, b))


@pytest.mark.parametrize(
    "look",
    [
        "named_parameters",
        "parameters",
        "state_dict",
        "items",
        "values",
        "dict",
        "iter",
        "get",
        "repr",
        "eq",
        "copy",
        "functional_call",
        "forward",
        "deepcopy",
        "pickle",
        "torch_save",
        "to",
    ],
)
def test_every_look_sees_the_made_parameters(look):
    a, b, r = lazy_result()
    want = expected(a, b)
    x = torch.randn(4, 3)
    if look == "named_parameters":
        assert_values(r, want)
    elif look == "parameters":
        assert all(isinstance(p, nn.Parameter) for p in r.parameters())
        assert len(list(r.parameters())) == len(want)
    elif look == "state_dict":
        sd = r.state_dict()
        for k, v in want.items():
            torch.testing.assert_close(sd[k], v, rtol=0, atol=0)
    elif look == "items":
        assert all(isinstance(v, nn.Parameter) for _, v in r.fc._parameters.items())
    elif look == "values":
        assert all(isinstance(v, nn.Parameter) for v in r.fc._parameters.values())
    elif look == "dict":
        d = dict(r.fc._parameters)
        assert type(d) is dict and all(isinstance(v, nn.Parameter) for v in d.values())
    elif look == "iter":
        assert [k for k in r.fc._parameters] == ["weight", "bias"]
        assert isinstance(r.fc._parameters["weight"], nn.Parameter)
    elif look == "get":
        assert isinstance(r.fc._parameters.get("bias"), nn.Parameter)
    elif look == "repr":
        assert "Parameter" in repr(r.fc._parameters)
    elif look == "eq":
        assert r.fc._parameters == dict(r.fc._parameters)
    elif look == "copy":
        c = r.fc._parameters.copy()
        assert type(c) is dict and isinstance(c["weight"], nn.Parameter)
    elif look == "functional_call":
        out = torch.func.functional_call(r, dict(r.named_parameters()), (x,))
        torch.testing.assert_close(out, r(x))
    elif look == "forward":
        ref = ((x @ want["fc.weight"].T + want["fc.bias"]) @ want["head.weight"].T) * want["scale"]
        torch.testing.assert_close(r(x), ref)
    elif look == "deepcopy":
        c = copy.deepcopy(r)
        assert_values(c, want)
        assert type(c.fc._parameters) is dict or type(c.fc._parameters) is ParamDict
    elif look == "pickle":
        c = pickle.loads(pickle.dumps(r))
        assert_values(c, want)
        assert type(c.fc.__dict__["_parameters"]) is dict
    elif look == "torch_save":
        buf = io.BytesIO()
        torch.save(r, buf)
        buf.seek(0)
        assert_values(torch.load(buf, weights_only=False), want)
    elif look == "to":
        c = r.to(torch.float64)
        assert all(p.dtype == torch.float64 for p in c.parameters())
        for k, v in want.items():
            torch.testing.assert_close(dict(c.named_parameters())[k], v.double())


def test_child_outlives_its_root():
    a, b, _ = lazy_result()
    want = expected(a, b)
    child = (a + b).fc  # the root result dies here
    gc.collect()
    torch.testing.assert_close(child.weight.detach(), want["fc.weight"], rtol=0, atol=0)
    w = (a + b).fc.weight  # the usual chained look
    torch.testing.assert_close(w.detach(), want["fc.weight"], rtol=0, atol=0)


def test_requires_grad_follows_the_left_operand_through_lazy_chains():
    a, b, _ = lazy_result()
    a.fc.bias.requires_grad_(False)
    a + b  # a's State is unchanged: flags are read per op
    r = ((a + b) * 2 + 1) - b  # three lazy results in a row
    flags = {k: p.requires_grad for k, p in r.named_parameters()}
    assert flags == {k: p.requires_grad for k, p in a.named_parameters()}
    assert flags["fc.bias"] is False and flags["fc.weight"] is True


def test_writes_to_a_lazy_result_are_kept():
    a, b, r = lazy_result()
    new = nn.Parameter(torch.ones(5))
    r.fc.extra = new  # register_parameter on a lazy dict: made first, then added
    assert r.fc.extra is new and isinstance(r.fc.weight, nn.Parameter)
    assert sum(p.numel() for p in r.parameters()) == sum(p.numel() for p in a.parameters()) + 5
    r2 = r + r  # the new parameter takes part (re-captured state)
    torch.testing.assert_close(r2.fc.extra.detach(), torch.full((5,), 2.0))
    del r.fc.extra
    assert "extra" not in dict(r.fc.named_parameters())


def test_in_place_ops_on_a_lazy_result_then_optimizer():
    a, b, r = lazy_result()
    want = expected(a, b)
    r += 1  # in place, still lazy
    assert type(r.fc.__dict__["_parameters"]) is LazyParams
    r *= 2
    got = dict(r.named_parameters())
    for k, v in want.items():
        torch.testing.assert_close(got[k].detach(), (v + 1) * 2)
    opt = torch.optim.SGD(r.parameters(), lr=1.0)
    held = [id(p) for p in r.parameters()]
    r += 1
    assert [id(p) for p in r.parameters()] == held
    r.fc.weight.grad = torch.ones_like(r.fc.weight)
    before = r.fc.weight.detach().clone()
    opt.step()
    torch.testing.assert_close(r.fc.weight.detach(), before - 1)


def test_autograd_sees_in_place_ops_on_made_parameters():
    a, b, r = lazy_result()
    y = (r.scale**2).sum()  # pow saves scale for backward
    v0 = r.scale._version
    r += 1  # one kernel on the flat: every parameter's version moves
    assert r.scale._version > v0
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


def test_detach_and_clone_of_a_lazy_result():
    a, b, r = lazy_result()
    want = expected(a, b)
    d = r.detach()
    assert d.fc.weight is r.fc.weight
    c = r.clone()
    assert c.fc.weight is not r.fc.weight
    assert_values(c, want)


def test_dead_lazy_results_are_freed_without_the_collector():
    a, b, _ = lazy_result()
    gc.disable()
    try:
        r = a + b
        refs = [
            weakref.ref(r),
            weakref.ref(r.fc),
            weakref.ref(r.fc.__dict__["_parameters"]),
            weakref.ref(r.__dict__["_nyto_state"]),
        ]
        del r
        assert all(ref() is None for ref in refs)
        r = a + b
        r.fc.weight  # made, then dropped
        refs = [weakref.ref(r), weakref.ref(r.fc.weight), weakref.ref(r.__dict__["_nyto_state"])]
        del r
        assert all(ref() is None for ref in refs)
    finally:
        gc.enable()


def test_load_state_dict_into_a_lazy_result():
    a, b, r = lazy_result()
    r.load_state_dict(a.state_dict())
    assert_values(r, {k: p.detach() for k, p in a.named_parameters()})
    torch.testing.assert_close((r - a).fc.weight.detach(), torch.zeros(2, 3))


def test_result_keys_follow_none_parameters_added_without_hooks():
    # register_parameter(name, None) runs no registration hook: the cached key
    # templates must still notice the new key (and its removal)
    a, b, _ = lazy_result()
    a + b
    a.fc.register_parameter("gate", None)
    r = a + b
    assert list(r.fc._parameters.keys()) == ["weight", "bias", "gate"]
    assert r.fc._parameters["gate"] is None
    assert list((r * 2).fc._parameters.keys()) == ["weight", "bias", "gate"]  # from a lazy source
    del a.fc.gate
    assert list((a + b).fc._parameters.keys()) == ["weight", "bias"]
    assert_values(a + b, expected(a, b))
