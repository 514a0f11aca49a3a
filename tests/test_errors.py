"""Errors (issue 15): bad numbers and arguments fail like torch, or with a
message that names the argument and what was expected, and leave every
operand unchanged.

- particle-with-number arithmetic follows torch's rules for the per-parameter
  reference ``p op s`` (results, dtypes, and errors: type and wording);
- the named methods (``add``, ``add_``, ``radd``...) raise ``TypeError`` where
  their operators do (the dunders still return NotImplemented);
- the public entry points (Swarm, fuse, algorithms, load_state_dict) check
  their arguments.
"""

from __future__ import annotations

import operator
import re

import numpy as np
import nytorch as nyto
import pytest
import torch
from nytorch.algorithms import EMA, ES, PSO, History, greedy_soup, uniform_soup, weighted_soup
from torch import nn


class Net(nyto.NytoModule):
    def __init__(self, t: torch.Tensor = None) -> None:
        super().__init__()
        t = torch.tensor([1.0, 2.0, 3.0]) if t is None else t
        self.w = nn.Parameter(t, requires_grad=t.is_floating_point())


def base(dt: torch.dtype) -> torch.Tensor:
    if dt is torch.bool:
        return torch.tensor([True, False, True])
    return torch.tensor([1, 2, 3]).to(dt)


def snapshot(m):
    if isinstance(m, nyto.Swarm):
        return [(f, f.clone()) for f in list(m.flats) + list(m.buffers)]
    return [(p, p.detach().clone(), p._version) for p in m.parameters()]


def assert_unchanged(m, snap):
    if isinstance(m, nyto.Swarm):
        now = list(m.flats) + list(m.buffers)
        assert len(now) == len(snap)
        for t, (obj, val) in zip(now, snap):
            assert t is obj and torch.equal(t, val)
        return
    now = list(m.parameters())
    assert len(now) == len(snap)
    for p, (obj, val, _) in zip(now, snap):
        assert p is obj
        assert torch.equal(p.detach(), val)


OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv, "**": operator.pow}
IOPS = {"+": operator.iadd, "-": operator.isub, "*": operator.imul, "/": operator.itruediv, "**": operator.ipow}
KINDS = ("op", "rop", "iop")


def _apply(kind, sym, x, s):
    if kind == "op":
        return OPS[sym](x, s)
    if kind == "rop":
        return OPS[sym](s, x)
    return IOPS[sym](x, s)


def _outcome(f):
    try:
        r = f()
    except Exception as e:  # noqa: BLE001
        return e
    return r.w if isinstance(r, nn.Module) else r


# --------------------------------------------------------------------------
# 1. numbers: torch's rules per parameter
# --------------------------------------------------------------------------

DTYPES = [torch.int64, torch.int32, torch.bool, torch.float16, torch.bfloat16, torch.float32, torch.float64]
BIG = [2**64, 2**70, 2**1100, -(2**63) - 1, -(2**70)]


@pytest.mark.parametrize("dt", DTYPES, ids=str)
@pytest.mark.parametrize("s", BIG, ids=lambda s: f"{'-' if s < 0 else ''}2^{abs(s).bit_length() - 1}")
def test_int_out_of_range_raises_torchs_overflow_error(dt, s):
    # torch: `t + 2**70` -> OverflowError: int too big to convert; a negative
    # one below -2**63 -> OverflowError: can't convert negative int to unsigned
    for sym in OPS:
        for kind in KINDS:
            want = _outcome(lambda: _apply(kind, sym, base(dt), s))
            assert isinstance(want, OverflowError), (kind, sym, want)
            net = Net(base(dt))
            snap = snapshot(net)
            with pytest.raises(OverflowError, match=f"^{re.escape(str(want))}$"):
                _apply(kind, sym, net, s)
            assert_unchanged(net, snap)
            # the named methods too
            name = {"+": "add", "-": "sub", "*": "mul", "/": "div", "**": "pow"}[sym]
            name = {"op": name, "rop": "r" + name, "iop": name + "_"}[kind]
            with pytest.raises(OverflowError):
                getattr(net, name)(s)
            assert_unchanged(net, snap)


def test_issue_examples_overflow():
    net = Net(torch.tensor([1, 2, 3]))
    snap = snapshot(net)
    with pytest.raises(OverflowError, match="int too big to convert"):
        net + 2**70
    with pytest.raises(OverflowError, match="int too big to convert"):
        net *= 2**70
    with pytest.raises(OverflowError, match="int too big to convert"):
        net.add_(2**70)
    assert_unchanged(net, snap)
    # a float particle too: torch parses the int before looking at dtypes
    f = Net()
    with pytest.raises(OverflowError, match="int too big to convert"):
        f + 2**70
    with pytest.raises(OverflowError, match="can't convert negative int to unsigned"):
        f + (-(2**70))


# Numbers whose rules nytorch follows exactly (0-dim tensors of the default
# dtypes act like the Python number; numpy bools parse as floats, as in torch).
NUMBERS = [
    3,
    -2,
    0,
    2.5,
    -0.5,
    float("inf"),
    True,
    False,
    2**62,
    2**63,
    2**64 - 1,
    -(2**63),
    torch.tensor(2),
    torch.tensor(2.5),
    torch.tensor(True),
    torch.tensor(2.5, requires_grad=True),
    np.float64(2.5),
    np.float32(0.5),
    np.int64(3),
    np.int32(-2),
    np.True_,
]


def _same_outcome(want, got, ctx):
    if isinstance(want, Exception):
        assert isinstance(got, Exception), (ctx, want, got)
        # torch raises NotImplementedError for "pow" on bool, a RuntimeError subclass
        assert isinstance(got, type(want)) or (type(want) is NotImplementedError and isinstance(got, RuntimeError)), (
            ctx,
            want,
            got,
        )
        return
    assert not isinstance(got, Exception), (ctx, want, got)
    assert got.dtype == want.dtype, (ctx, want.dtype, got.dtype)
    tol = {} if want.dtype in (torch.float16, torch.bfloat16) else dict(rtol=1e-6, atol=0)
    torch.testing.assert_close(got.detach(), want.detach(), equal_nan=True, msg=lambda m: f"{ctx}: {m}", **tol)


def _is_bool_sub(sym, s, dt):
    # documented: a bool number subtracts as 0/1 from non-bool particles (torch refuses `t - True`)
    is_bool = isinstance(s, (bool, np.bool_)) or (isinstance(s, torch.Tensor) and s.dtype == torch.bool)
    return sym == "-" and is_bool


@pytest.mark.parametrize("dt", DTYPES, ids=str)
def test_number_promotion_matches_torch(dt):
    bad = []
    for s in NUMBERS:
        for sym in OPS:
            for kind in KINDS:
                if _is_bool_sub(sym, s, dt):
                    continue
                if dt is torch.bool and sym == "**" and isinstance(s, torch.Tensor) and s.dtype == torch.bool:
                    continue  # torch: bool ** Python True works, bool ** tensor(True) raises; we follow the number
                if dt is torch.bool and kind == "rop" and sym == "/" and isinstance(s, int) and s >= 2**63:
                    continue  # torch computes uint64 / bool as s * reciprocal; we refuse uint64 with bool
                if kind == "rop" and isinstance(s, np.bool_):
                    continue  # numpy's np.bool_.__add__ runs first and computes `True + net`
                ref_s = s.detach() if isinstance(s, torch.Tensor) else s
                want = _outcome(lambda: _apply(kind, sym, base(dt), ref_s))
                net = Net(base(dt))
                snap = snapshot(net)
                got = _outcome(lambda: _apply(kind, sym, net, s))
                try:
                    _same_outcome(want, got, (dt, kind, sym, s))
                except AssertionError as e:
                    bad.append(str(e)[:300])
                if isinstance(got, Exception) or kind != "iop":
                    assert_unchanged(net, snap)
    assert not bad, "\n".join(bad)


def test_uint64_range_int_like_torch():
    # torch parses 2**63 <= s < 2**64 as a uint64 scalar: an int particle stays int
    net = Net(torch.tensor([1, 2, 3]))
    r = net + 2**63
    assert r.w.dtype == torch.int64
    assert torch.equal(r.w, torch.tensor([1, 2, 3]) + 2**63)
    net += 2**64 - 1
    assert torch.equal(net.w, torch.tensor([1, 2, 3]) + (2**64 - 1))
    b = Net(torch.tensor([True, False]))
    snap = snapshot(b)
    for f in (lambda: b + 2**63, lambda: b.add_(2**63)):
        with pytest.raises(RuntimeError, match="Promotion for uint16, uint32, uint64 types is not supported"):
            f()
    assert_unchanged(b, snap)


@pytest.mark.parametrize("dt", [torch.float16, torch.bfloat16])
def test_half_pow_exponent_overflow_like_torch(dt):
    net = Net(base(dt))
    snap = snapshot(net)
    want = _outcome(lambda: base(dt) ** 1e39)
    assert isinstance(want, RuntimeError)
    for f in (lambda: net**1e39, lambda: net.pow_(1e39), lambda: operator.ipow(net, 1e39)):
        with pytest.raises(RuntimeError, match=re.escape(str(want))):
            f()
    assert_unchanged(net, snap)


# --------------------------------------------------------------------------
# 5. numbers without a value, complex numbers
# --------------------------------------------------------------------------


@pytest.mark.parametrize("s", [torch.tensor(1.0, device="meta"), torch.tensor(1, device="meta")], ids=["f", "i"])
@pytest.mark.parametrize("kind", KINDS)
def test_meta_tensor_number_is_a_type_error(s, kind):
    net = Net()
    snap = snapshot(net)
    with pytest.raises(TypeError, match="meta"):
        _apply(kind, "+", net, s)
    assert_unchanged(net, snap)
    sw = nyto.Swarm(net, 2)
    ssnap = snapshot(sw)
    with pytest.raises(TypeError, match="meta"):
        _apply(kind, "*", sw, s)
    assert_unchanged(sw, ssnap)


@pytest.mark.parametrize(
    "s",
    [1j, torch.tensor(1j), np.complex64(1j), "x", [1.0], torch.ones(2), None],
    ids=["complex", "complex-tensor", "np-complex", "str", "list", "tensor", "None"],
)
@pytest.mark.parametrize("kind", KINDS)
def test_non_real_number_is_a_type_error(s, kind):
    net = Net()
    snap = snapshot(net)
    with pytest.raises(TypeError):
        _apply(kind, "+", net, s)
    assert_unchanged(net, snap)


def test_zero_dim_tensor_requiring_grad_is_its_value():
    net = Net()
    s = torch.tensor(2.0, requires_grad=True)
    r = net * s
    assert torch.equal(r.w.detach(), torch.tensor([2.0, 4.0, 6.0]))
    net += s
    assert torch.equal(net.w.detach(), torch.tensor([3.0, 4.0, 5.0]))
    assert s.grad is None


# --------------------------------------------------------------------------
# 2. named methods raise TypeError like their operators
# --------------------------------------------------------------------------

NAMED = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "**"}
PY_SYM = {"+": "+", "-": "-", "*": "*", "/": "/", "**": "** or pow()"}
DUNDERS = {}
for _n, _d in (("add", "add"), ("sub", "sub"), ("mul", "mul"), ("div", "truediv"), ("pow", "pow")):
    DUNDERS.update({_n: f"__{_d}__", "r" + _n: f"__r{_d}__", _n + "_": f"__i{_d}__"})


def _named_cases():
    for name, sym in NAMED.items():
        yield name, f"for {re.escape(PY_SYM[sym])}: 'Net' and 'str'"
        yield "r" + name, f"for {re.escape(PY_SYM[sym])}: 'str' and 'Net'"
        yield name + "_", f"for {re.escape(sym)}=: 'Net' and 'str'"


@pytest.mark.parametrize("name,msg", list(_named_cases()))
def test_named_methods_raise_type_error(name, msg):
    net = Net()
    snap = snapshot(net)
    with pytest.raises(TypeError, match=r"^unsupported operand type\(s\) " + msg + "$"):
        getattr(net, name)("x")
    assert_unchanged(net, snap)
    # the dunder still returns NotImplemented (Python then tries the reflected op)
    assert getattr(net, DUNDERS[name])("x") is NotImplemented
    assert_unchanged(net, snap)


def test_named_methods_still_work():
    net = Net()
    assert torch.equal(net.add(1).w, net.w + 1)
    assert torch.equal(net.rsub(1).w, 1 - net.w)
    assert torch.equal(net.mul(net).w, net.w * net.w)
    assert net.add_(1) is net


def test_operator_with_unrelated_reflected_operand_still_works():
    class Other:
        def __radd__(self, other):
            return "reflected"

        def __rmul__(self, other):
            return "reflected"

    net = Net()
    assert net + Other() == "reflected"
    assert net * Other() == "reflected"


@pytest.mark.parametrize("name,msg", list(_named_cases()))
def test_swarm_named_methods_raise_type_error(name, msg):
    sw = nyto.Swarm(Net(), 2)
    snap = snapshot(sw)
    with pytest.raises(TypeError, match=r"^unsupported operand type\(s\) " + msg.replace("Net", "Swarm") + "$"):
        getattr(sw, name)("x")
    assert_unchanged(sw, snap)


# --------------------------------------------------------------------------
# 3. fuse
# --------------------------------------------------------------------------


@pytest.mark.parametrize("out", [3, "ab", None.__class__, 2.5])
def test_fuse_out_must_be_particles(out):
    net = Net()
    snap = snapshot(net)
    step = nyto.fuse(lambda a: a + 1)
    with pytest.raises(nyto.FuseError, match="out="):
        step(net, out=out)
    assert_unchanged(net, snap)


def test_fuse_out_wrong_count_names_out():
    net = Net()
    snap = snapshot(net)
    step = nyto.fuse(lambda a: a + 1)
    with pytest.raises(TypeError, match="out="):
        step(net, out=(net, net))
    assert_unchanged(net, snap)


# --------------------------------------------------------------------------
# 4. Swarm: empty or wrongly shaped fitness
# --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["argmin", "argmax", "best"])
@pytest.mark.parametrize("fitness", [torch.tensor([]), []], ids=["tensor", "list"])
def test_empty_swarm_has_no_best(method, fitness):
    sw = nyto.Swarm(Net(), 0)
    with pytest.raises(ValueError, match="empty"):
        getattr(sw, method)(fitness)


@pytest.mark.parametrize("method", ["argmin", "argmax", "best"])
@pytest.mark.parametrize(
    "fitness,err",
    [
        (torch.zeros(3), ValueError),
        (torch.zeros(4, 1), ValueError),
        (torch.tensor(1.0), ValueError),
        ("abcd", TypeError),
        (torch.zeros(4, dtype=torch.complex64), TypeError),
        (torch.zeros(4, dtype=torch.bool), TypeError),
        (None, TypeError),
        (torch.tensor([]), ValueError),
    ],
    ids=["short", "2d", "0d", "str", "complex", "bool", "None", "empty"],
)
def test_swarm_fitness_checked(method, fitness, err):
    sw = nyto.Swarm(Net(), 4)
    with pytest.raises(err, match="fitness"):
        getattr(sw, method)(fitness)


# --------------------------------------------------------------------------
# 6. load_state_dict: missing and unexpected keys
# --------------------------------------------------------------------------


def _optimizers():
    net = Net()
    yield "PSO", PSO(nyto.Swarm(net, 4, init="randn"), seed=0)
    yield "ES", ES(net, 4, seed=0)
    yield "EMA", EMA(net, 0.9)
    yield "EMA-swarm", EMA(nyto.Swarm(net, 3), 0.9)
    yield "Swarm", nyto.Swarm(net, 3, init="randn")
    yield "History", History()


@pytest.mark.parametrize("name,obj", list(_optimizers()), ids=lambda x: x if isinstance(x, str) else "")
def test_load_state_dict_names_missing_and_unexpected_keys(name, obj):
    state = obj.state_dict()
    key = sorted(state)[0]
    bad = {k: v for k, v in state.items() if k != key}
    bad["bogus"] = 1
    before = obj.state_dict()
    with pytest.raises(nyto.NytoError) as info:
        obj.load_state_dict(bad)
    e = info.value
    assert isinstance(e, KeyError) and isinstance(e, ValueError)
    msg = str(e)
    assert repr(key) in msg and "'bogus'" in msg and "missing" in msg and "unexpected" in msg, msg
    assert msg == e.args[0]  # no KeyError quoting
    after = obj.state_dict()
    for k in before:
        if isinstance(before[k], list) and before[k] and isinstance(before[k][0], torch.Tensor):
            assert all(torch.equal(a, b) for a, b in zip(before[k], after[k])), k
    obj.load_state_dict(state)  # the full state still loads


@pytest.mark.parametrize("name,obj", list(_optimizers()), ids=lambda x: x if isinstance(x, str) else "")
def test_load_state_dict_needs_a_mapping(name, obj):
    with pytest.raises(TypeError, match="state"):
        obj.load_state_dict(3)


# --------------------------------------------------------------------------
# 7. public entry points: wrong argument types and values
# --------------------------------------------------------------------------


def _net():
    return Net()


def _sw(n=4):
    return nyto.Swarm(Net(), n, init="randn")


_PROG = nyto.fuse.program(lambda x, y, a: a * x + y, "ppn")
_X = [[torch.ones(3)], [torch.ones(3)]]

# (id, callable taking nothing, error type, a word the message must contain)
ARG_CASES = [
    ("clone_from-int", lambda: _net().clone_from(3), TypeError, "other"),
    ("randn-generator", lambda: _net().randn(generator=3), TypeError, "generator"),
    ("rand-generator", lambda: _net().rand(generator="x"), TypeError, "generator"),
    ("Swarm-scale", lambda: nyto.Swarm(_net(), 2, init="perturb", scale="x"), TypeError, "scale"),
    ("Swarm-generator", lambda: nyto.Swarm(_net(), 2, init="randn", generator=3), TypeError, "generator"),
    ("Swarm.stack-int", lambda: nyto.Swarm.stack(3), TypeError, "particles"),
    ("Swarm.from_flats-int", lambda: nyto.Swarm.from_flats(_net(), 3), TypeError, "flats"),
    ("Swarm-index-str", lambda: _sw()["x"], IndexError, "index"),
    ("Swarm.gather-str", lambda: _sw().gather("x"), IndexError, "index"),
    ("Swarm.scatter_-int", lambda: _sw().scatter_([0], 3), TypeError, "src"),
    ("Swarm.mean-weights-str", lambda: _sw().mean(weights="x"), TypeError, "weights"),
    ("run_flat-inputs", lambda: nyto.run_flat(_PROG, 3, [1.0]), TypeError, "inputs"),
    ("run_flat-numbers", lambda: nyto.run_flat(_PROG, _X, 3), TypeError, "numbers"),
    ("run_flat-seed", lambda: nyto.run_flat(_PROG, _X, [1.0], seed="x"), TypeError, "seed"),
    ("run_flat-out", lambda: nyto.run_flat(_PROG, _X, [1.0], out=3), TypeError, "out"),
    ("program-kinds", lambda: nyto.fuse.program(lambda a, b: a, 3), TypeError, "kinds"),
    ("PSO-inertia", lambda: PSO(_sw(), inertia="x"), TypeError, "inertia"),
    ("PSO-social", lambda: PSO(_sw(), social=None), TypeError, "social"),
    ("PSO-seed", lambda: PSO(_sw(), seed="x"), TypeError, "seed"),
    ("PSO-generator", lambda: PSO(_sw(), generator=3), TypeError, "generator"),
    ("PSO-neighbors", lambda: PSO(_sw(), topology="ring", neighbors=1.5), TypeError, "neighbors"),
    ("PSO-vmax", lambda: PSO(_sw(), vmax="x"), TypeError, "vmax"),
    ("PSO-velocity_scale", lambda: PSO(_sw(), velocity_scale=-1.0), ValueError, "velocity_scale"),
    ("PSO-empty", lambda: PSO(_sw(0)), ValueError, "empty"),
    ("PSO.tell-str", lambda: PSO(_sw()).tell("x"), TypeError, "fitness"),
    ("PSO.run-steps-str", lambda: PSO(_sw()).run(lambda s: torch.zeros(4), "x"), TypeError, "steps"),
    ("PSO.run-steps-neg", lambda: PSO(_sw()).run(lambda s: torch.zeros(4), -1), ValueError, "steps"),
    ("PSO.run-fn", lambda: PSO(_sw()).run(3, 1, progress_bar=False), TypeError, "fitness_fn"),
    ("PSO.step-fn", lambda: PSO(_sw()).step(3), TypeError, "fitness_fn"),
    ("PSO.step-returns-str", lambda: PSO(_sw()).step(lambda s: "abcd"), TypeError, "fitness"),
    ("ES-popsize-str", lambda: ES(_net(), "x"), TypeError, "popsize"),
    ("ES-popsize-float", lambda: ES(_net(), 4.0), TypeError, "popsize"),
    ("ES-lr-str", lambda: ES(_net(), 4, lr="x"), TypeError, "lr"),
    ("ES-lr-neg", lambda: ES(_net(), 4, lr=-1.0), ValueError, "lr"),
    ("ES-sigma-str", lambda: ES(_net(), 4, sigma="x"), TypeError, "sigma"),
    ("ES-betas", lambda: ES(_net(), 4, betas=3), TypeError, "betas"),
    ("ES-betas-range", lambda: ES(_net(), 4, betas=(0.9, 1.5)), ValueError, "betas"),
    ("ES-seed", lambda: ES(_net(), 4, seed="x"), TypeError, "seed"),
    ("ES.tell-str", lambda: ES(_net(), 4).tell("x"), TypeError, "fitness"),
    ("EMA-decay-str", lambda: EMA(_net(), decay="x"), TypeError, "decay"),
    ("EMA-model", lambda: EMA(3), TypeError, "model"),
    ("uniform_soup-int", lambda: uniform_soup(3), TypeError, "models"),
    ("weighted_soup-weights", lambda: weighted_soup([_net()], "x"), TypeError, "weights"),
    ("greedy_soup-score", lambda: greedy_soup([_net()], 3), TypeError, "score"),
]


@pytest.mark.parametrize("fn,err,word", [c[1:] for c in ARG_CASES], ids=[c[0] for c in ARG_CASES])
def test_bad_arguments_named(fn, err, word):
    with pytest.raises(err, match=word):
        fn()


def test_bad_arguments_leave_operands_unchanged():
    net = _net()
    snap = snapshot(net)
    for f in (lambda: net.randn(generator=3), lambda: net.clone_from(3)):
        with pytest.raises(TypeError):
            f()
    assert_unchanged(net, snap)
    sw = _sw()
    ssnap = snapshot(sw)
    for f in (lambda: sw.scatter_([0], 3), lambda: sw.mean(weights="x"), lambda: sw.argmin("abcd")):
        with pytest.raises((TypeError, ValueError)):
            f()
    assert_unchanged(sw, ssnap)
    pso = PSO(sw, seed=0)
    for f in (lambda: pso.tell("x"), lambda: pso.run(3, 1, progress_bar=False)):
        with pytest.raises(TypeError):
            f()
    assert_unchanged(sw, ssnap)
    assert pso.steps_done == 0


@pytest.mark.parametrize(
    "number", [np.True_, np.float32(2.5), np.int64(3), np.float64(-1.5)], ids=lambda x: type(x).__name__
)
def test_numpy_scalars_on_the_left_use_the_reflected_operators(number):
    class Lin(nyto.NytoModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.arange(3.0))

    net = Lin()
    for op in (operator.add, operator.sub, operator.mul, operator.truediv):
        r = op(number, net)
        assert isinstance(r, Lin)
        assert torch.equal(r.w.detach(), op(torch.tensor(float(number)), net.w.detach())), op


@pytest.mark.parametrize("pdtype", [torch.int64, torch.int32, torch.bool, torch.float16, torch.float32])
@pytest.mark.parametrize("tdtype", [torch.float64, torch.bfloat16, torch.float16, torch.int8, torch.int64])
@pytest.mark.parametrize("op", [operator.add, operator.sub, operator.mul, operator.truediv], ids=lambda f: f.__name__)
def test_zero_dim_tensor_numbers_promote_like_torch(pdtype, tdtype, op):
    class One(nyto.NytoModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor([1, 2, 3]).to(pdtype), requires_grad=False)
            self.s = torch.nn.Parameter(torch.tensor(4).to(pdtype), requires_grad=False)  # 0-dim

    net = One()
    t = torch.tensor(2).to(tdtype)
    for left, right, ref in ((net, t, lambda p: op(p, t)), (t, net, lambda p: op(t, p))):
        try:
            expected = {k: ref(p.detach()) for k, p in net.named_parameters()}
        except RuntimeError:
            with pytest.raises((RuntimeError, TypeError)):
                op(left, right)
            continue
        r = op(left, right)
        for k, p in r.named_parameters():
            assert p.dtype == expected[k].dtype, k
            assert torch.equal(p.detach(), expected[k]), k
