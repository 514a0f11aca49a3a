"""Fuzzing suite: random models, random sequences of particle operations,
fused calls, swarm operations and structural mutations, each checked against a
plain per-parameter torch reference kept by the test.

Run: ``python -m pytest tests/test_fuzz.py`` (profiles in tests/conftest.py):

- default (``nyto-dev``; ``nyto-ci`` with ``CI`` set: derandomized): 400
  examples of up to 20 steps, about 15 s on 2 cores when nothing fails;
- ``NYTO_FUZZ=long``: up to 100 000 examples of up to 40 steps; bound it
  with ``timeout`` (e.g. ``NYTO_FUZZ=long timeout 600 python -m pytest
  tests/test_fuzz.py``) or ``HYPOTHESIS_PROFILE``/``--hypothesis-seed``.

A failure prints the model spec and the concrete step list (``p2 = p0 + 0.5``,
``del p1.c0.weight``, ...) as hypothesis notes, shrunk to a minimal sequence.

The reference (the "shadow"): every particle is a list of parameter names
(``named_parameters(remove_duplicate=False)``, in order) mapping to *cells*;
a cell is one Parameter object's expected value (tied names share a cell;
``detach()`` shares cells across species, since it shares the Parameter
objects). Rules checked:

- particle op number: per unique parameter, torch's ``t op s`` (in place:
  ``t.op_(s)``, so torch's dtype and cast rules; if torch raises for any
  parameter nytorch must raise); a 0-dim tensor promotes as in torch (an
  int64 parameter plus a float64 0-dim tensor is float64). ``+p`` is
  ``clone()`` (documented; torch's ``+bool_tensor`` raises). ``s / p`` is
  compared within 1-2 ulps: torch computes it as ``p.reciprocal() * s``.
- particle op particle: another species raises SpeciesError; within a species
  the operands must have the same parameter names (and ties), shapes, dtypes
  and devices, else nytorch.StructureError (a ValueError) naming a parameter;
  values per name.
- out-of-place results: exactly the left operand's current parameter names,
  module structure and buffers (copies), new Parameter objects, same
  requires_grad; in place: the same Parameter objects.
- on any error: every operand unchanged (values, names, Parameter identities).
- particles not taking part in a step never change (a Parameter deleted from
  a particle but still held elsewhere, e.g. by a ``detach()`` twin, must not
  be written by ops on that particle).
"""

from __future__ import annotations

import operator
import os

import nytorch as nyto
import pytest
import torch
from hypothesis import event, given, note  # hypothesis: requirements.txt
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrize as P

LONG = os.environ.get("NYTO_FUZZ", "").lower() == "long"
MAX_STEPS = 40 if LONG else 20
MAX_POOL = 6
MAX_SWARMS = 2

OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv, "**": operator.pow}
IOPS = {"+": operator.iadd, "-": operator.isub, "*": operator.imul, "/": operator.itruediv, "**": operator.ipow}
METHOD = {"+": "add", "-": "sub", "*": "mul", "/": "div", "**": "pow"}
INEXACT = {"**"}  # results within a few ulps of torch's (docs/fuse.md, docs/swarm.md)


# ----------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------
class Root(nyto.NytoModule):
    """The particle: a NytoModule holding the random submodules."""

    def forward(self, x):  # never called
        return x


class NytoSub(nyto.NytoModule):
    """A NytoModule used as a submodule."""


class Holder(nn.Module):
    """A plain module holding random parameters (and maybe a buffer)."""


PARAM_KINDS = ["f32", "f64", "i64", "bool", "empty", "empty2d", "noncontig", "scalar", "f64noncontig"]


def make_tensor(kind: str, g: torch.Generator) -> torch.Tensor:
    if kind == "f32":
        return torch.randn(int(torch.randint(1, 4, (), generator=g)), generator=g)
    if kind == "f64":
        return torch.randn(2, 2, generator=g, dtype=torch.float64)
    if kind == "i64":
        return torch.randint(-4, 5, (3,), generator=g)
    if kind == "bool":
        return torch.randint(0, 2, (2,), generator=g).bool()
    if kind == "empty":
        return torch.empty(0)
    if kind == "empty2d":
        return torch.empty(2, 0, dtype=torch.float64)
    if kind == "noncontig":
        return torch.randn(4, 3, generator=g).t()
    if kind == "f64noncontig":
        return torch.randn(3, 2, generator=g, dtype=torch.float64)[::2]
    if kind == "scalar":
        return torch.randn((), generator=g)
    raise AssertionError(kind)


def make_param(kind: str, g: torch.Generator) -> nn.Parameter:
    t = make_tensor(kind, g)
    return nn.Parameter(t, requires_grad=t.is_floating_point())


param_kinds = st.sampled_from(PARAM_KINDS)
float_dtypes = st.sampled_from(["f32", "f64"])
leaf_specs = st.one_of(
    st.tuples(st.just("linear"), st.integers(1, 3), st.integers(1, 3), st.booleans(), float_dtypes),
    st.tuples(st.just("bn"), st.integers(1, 3)),
    st.tuples(st.just("holder"), st.lists(param_kinds, max_size=3), st.booleans()),
    st.tuples(st.just("plist"), st.lists(param_kinds, min_size=1, max_size=3)),
    st.tuples(st.just("pdict"), st.lists(param_kinds, min_size=1, max_size=3)),
)
tree_specs = st.recursive(
    leaf_specs,
    lambda ch: st.tuples(st.sampled_from(["seq", "mlist", "mdict", "nyto"]), st.lists(ch, min_size=1, max_size=3)),
    max_leaves=5,
)
model_specs = st.fixed_dictionaries(
    {
        "children": st.lists(tree_specs, min_size=1, max_size=3),
        "params": st.lists(param_kinds, max_size=2),
        "ties": st.lists(st.tuples(st.integers(0, 63), st.integers(0, 63)), max_size=2),
        "seed": st.integers(0, 2**16),
    }
)


def build_module(spec, g: torch.Generator) -> nn.Module:
    kind = spec[0]
    if kind == "linear":
        m = nn.Linear(spec[1], spec[2], bias=spec[3])
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        return m.double() if spec[4] == "f64" else m
    if kind == "bn":
        m = nn.BatchNorm1d(spec[1])
        with torch.no_grad():
            m.running_mean.copy_(torch.randn(spec[1], generator=g))
            m.num_batches_tracked.fill_(int(torch.randint(0, 9, (), generator=g)))
        return m
    if kind == "holder":
        m = Holder()
        for i, k in enumerate(spec[1]):
            setattr(m, f"w{i}", make_param(k, g))
        if spec[2]:
            m.register_buffer("buf", torch.randn(2, generator=g))
        return m
    if kind == "plist":
        return nn.ParameterList([make_param(k, g) for k in spec[1]])
    if kind == "pdict":
        return nn.ParameterDict({f"k{i}": make_param(k, g) for i, k in enumerate(spec[1])})
    children = [build_module(c, g) for c in spec[1]]
    if kind == "seq":
        return nn.Sequential(*children)
    if kind == "mlist":
        return nn.ModuleList(children)
    if kind == "mdict":
        return nn.ModuleDict({f"d{i}": c for i, c in enumerate(children)})
    if kind == "nyto":
        m = NytoSub()
        for i, c in enumerate(children):
            setattr(m, f"n{i}", c)
        return m
    raise AssertionError(kind)


def mutable_modules(root: nn.Module):
    """(qualified name, module) of the modules the fuzzer may mutate."""
    out = []
    for qn, m in root.named_modules():
        if ".parametrizations" in "." + qn or isinstance(m, (nn.ParameterList, nn.ParameterDict)):
            continue
        out.append((qn, m))
    return out


def build_root(spec) -> Root:
    g = torch.Generator().manual_seed(spec["seed"])
    root = Root()
    for i, c in enumerate(spec["children"]):
        setattr(root, f"c{i}", build_module(c, g))
    for i, k in enumerate(spec["params"]):
        setattr(root, f"w{i}", make_param(k, g))
    for n, (src, dst) in enumerate(spec["ties"]):
        params = list(root.named_parameters())
        mods = mutable_modules(root)
        if params and mods:
            mods[dst % len(mods)][1].register_parameter(f"tied{n}", params[src % len(params)][1])
    return root


# ----------------------------------------------------------------------------
# the shadow (reference)
# ----------------------------------------------------------------------------
class Cell:
    """The expected value of one Parameter object."""

    __slots__ = ("value", "rg", "obj", "tol")

    def __init__(self, value: torch.Tensor, rg: bool, obj=None, tol: bool = False) -> None:
        self.value, self.rg, self.obj, self.tol = value, rg, obj, tol


def structure(m: nn.Module):
    """Module tree signature: per module its class and dict keys (None-ness too)."""
    return [
        (
            qn,
            type(mod).__name__,
            tuple((k, v is None) for k, v in mod._parameters.items()),
            tuple((k, v is None) for k, v in mod._buffers.items()),
            tuple((k, v is None) for k, v in mod._modules.items()),
        )
        for qn, mod in m.named_modules(remove_duplicate=False)
    ]


class PRef:
    """A particle and what the test expects of it."""

    def __init__(self, label, module, species, names, cells, buffers, struct, bound):
        self.label = label
        self.module = module
        self.species = species
        self.names = names  # full parameter names, in order
        self.cells = cells  # name -> Cell (tied names share one)
        self.buffers = buffers  # [(name, expected value)]
        self.struct = struct
        self.bound = bound  # the module's Parameter objects are known (checked once)

    def unique(self):
        """(name, cell) per unique parameter, in order (named_parameters())."""
        seen, out = set(), []
        for n in self.names:
            c = self.cells[n]
            if id(c) not in seen:
                seen.add(id(c))
                out.append((n, c))
        return out

    def sig(self):
        """(name, shape, dtype) of the unique parameters (named_parameters()), in order."""
        return [(n, tuple(c.value.shape), c.value.dtype) for n, c in self.unique()]

    def __repr__(self) -> str:
        return self.label


def classify(sa, sb):
    """How two particles' parameters (``PRef.sig()``) meet: ("ok", ()), ("order",
    names) -- the same names and shapes in another order: nytorch may meet them
    by name or raise StructureError --, or ("bad", names): another set of
    names or another shape for a name, a StructureError naming one of them.
    Dtypes may differ: torch promotes per parameter (docs/api.md, _storage.py).
    Devices are all CPU here."""
    da = {n: shape for n, shape, _ in sa}
    db = {n: shape for n, shape, _ in sb}
    bad = set(da) ^ set(db)
    bad |= {n for n in set(da) & set(db) if da[n] != db[n]}
    if bad:
        return "bad", bad
    if [n for n, *_ in sa] != [n for n, *_ in sb]:
        return "order", {n for (n, *_), (m, *_) in zip(sa, sb) if n != m}
    return "ok", ()


def values_equal(actual: torch.Tensor, expected: torch.Tensor, tol: bool) -> bool:
    if actual.dtype != expected.dtype or actual.shape != expected.shape:
        return False
    if actual.numel() == 0:
        return True
    if tol and expected.is_floating_point():
        r = 4e-6 if expected.dtype != torch.float64 else 1e-13
        try:
            torch.testing.assert_close(actual, expected, rtol=r, atol=1e-30, equal_nan=True)
            return True
        except AssertionError:
            return False
    if expected.is_floating_point():
        return bool(((actual == expected) | (actual.isnan() & expected.isnan())).all())
    return torch.equal(actual, expected)


def torch_number_op(fn, t: torch.Tensor, s, reflected: bool = False):
    """torch's ``fn(t, s)`` (``fn(s, t)`` reflected) for a number ``s``: 0-dim
    tensors promote like torch's (int64 parameter + float64 0-dim tensor is
    float64)."""
    return fn(s, t) if reflected else fn(t, s)


def number_outcomes(fn, t: torch.Tensor, s, reflected: bool = False):
    """The acceptable outcomes (tensors or exceptions) of a number op on one
    parameter: torch's with ``s`` as given and, for a 0-dim tensor ``s``, also
    with the Python number it holds when that differs -- torch's Tensor-Tensor
    and Tensor-Scalar kernels disagree on a few cases (``int ** tensor(-1)``
    computes, ``int ** -1`` raises; ``bool ** tensor(True)`` raises, ``bool **
    True`` computes), and nytorch may take either route."""
    outs = []
    for v in [s, s.item()] if isinstance(s, torch.Tensor) else [s]:
        try:
            outs.append(torch_number_op(fn, t.clone() if fn in IOPS.values() else t, v, reflected))
        except RuntimeError as e:
            outs.append(e)
    if len(outs) == 2 and (
        isinstance(outs[0], Exception)
        and isinstance(outs[1], Exception)
        or isinstance(outs[0], torch.Tensor)
        and isinstance(outs[1], torch.Tensor)
        and values_equal(outs[0], outs[1], False)
    ):
        outs = outs[:1]
    return outs


def describe(t: torch.Tensor) -> str:
    return f"{t.dtype} {tuple(t.shape)} {t.detach().flatten()[:6].tolist()}"


class Fuzz:
    """Runs one step list against nytorch and the shadow."""

    def __init__(self, spec) -> None:
        self.objs = {}  # id(Parameter) -> (Parameter, Cell): every object seen
        self.pool = []
        self.swarms = []
        self.counter = 0
        self.species = 0
        root = build_root(spec)
        self.pool.append(self.adopt(root, self.new_species()))
        twin = build_root(spec)  # same structure, another species
        self.pool.append(self.adopt(twin, self.new_species()))
        note(
            f"model: {sum(1 for _ in root.named_parameters(remove_duplicate=False))} parameter names: "
            f"{[(n, tuple(p.shape), str(p.dtype)[6:]) for n, p in root.named_parameters(remove_duplicate=False)]}"
        )
        note("p0 = Root(...); p1 = Root(...)  (same spec, another species)")

    # -- bookkeeping ------------------------------------------------------
    def new_species(self) -> int:
        self.species += 1
        return self.species

    def label(self, prefix="p") -> str:
        self.counter += 1
        return f"{prefix}{self.counter + 1 if prefix == 'p' else self.counter}"

    def adopt(self, module: nn.Module, species: int, label=None) -> PRef:
        """A shadow read off a module (initial models and after mutations):
        known Parameter objects keep their cells (with the current values)."""
        names, cells = [], {}
        for n, p in module.named_parameters(remove_duplicate=False):
            known = self.objs.get(id(p))
            if known is not None:
                cell = known[1]
                cell.value = p.detach().clone()
                cell.rg = p.requires_grad
                cell.tol = False
            else:
                cell = Cell(p.detach().clone(), p.requires_grad, p)
                self.objs[id(p)] = (p, cell)
            names.append(n)
            cells[n] = cell
        buffers = [(n, b.detach().clone()) for n, b in module.named_buffers(remove_duplicate=False)]
        return PRef(label or f"p{len(self.pool)}", module, species, names, cells, buffers, structure(module), True)

    def add(self, ref: PRef, slot: int) -> None:
        if len(self.pool) < MAX_POOL:
            self.pool.append(ref)
        else:
            self.pool[2 + slot % (MAX_POOL - 2)] = ref  # p0 and p1 stay

    def result_ref(self, src: PRef, module, values, species=None, share=False) -> PRef:
        """The shadow of a new particle shaped like src; values: unique name -> tensor."""
        cells, fresh = {}, {}
        for n in src.names:
            c = src.cells[n]
            if share:
                cells[n] = c
                continue
            if id(c) not in fresh:
                first = next(m for m in src.names if src.cells[m] is c)
                v = values[first]
                fresh[id(c)] = Cell(v, c.rg, None, False)
            cells[n] = fresh[id(c)]
        buffers = [(n, v.clone()) for n, v in src.buffers]
        return PRef(
            self.label(),
            module,
            src.species if species is None else species,
            list(src.names),
            cells,
            buffers,
            src.struct,
            False,
        )

    # -- checks -------------------------------------------------------------
    def check(self, ref: PRef, what: str) -> None:
        m = ref.module
        named = list(m.named_parameters(remove_duplicate=False))
        names = [n for n, _ in named]
        assert names == ref.names, f"{what}: {ref.label} has parameters {names}, expected {ref.names}"
        for n, p in named:
            cell = ref.cells[n]
            assert isinstance(p, nn.Parameter), f"{what}: {ref.label}.{n} is a {type(p).__name__}"
            if cell.obj is None:
                known = self.objs.get(id(p))
                assert known is None or known[1] is cell, (
                    f"{what}: {ref.label}.{n} is a Parameter object that belongs elsewhere"
                )
                cell.obj = p
                self.objs[id(p)] = (p, cell)
            else:
                assert p is cell.obj, f"{what}: {ref.label}.{n} is not the same Parameter object as before"
            assert p.requires_grad == cell.rg, f"{what}: {ref.label}.{n}.requires_grad is {p.requires_grad}"
            assert values_equal(p.detach(), cell.value, cell.tol), (
                f"{what}: {ref.label}.{n} = {describe(p)}, expected {describe(cell.value)}"
            )
            if cell.tol:  # within tolerance: continue from nytorch's value
                cell.value, cell.tol = p.detach().clone(), False
        bufs = list(m.named_buffers(remove_duplicate=False))
        assert [n for n, _ in bufs] == [n for n, _ in ref.buffers], (
            f"{what}: {ref.label} has buffers {[n for n, _ in bufs]}, expected {[n for n, _ in ref.buffers]}"
        )
        for (n, b), (_, e) in zip(bufs, ref.buffers):
            assert values_equal(b.detach(), e, False), (
                f"{what}: buffer {ref.label}.{n} = {describe(b)}, expected {describe(e)}"
            )
        assert structure(m) == ref.struct, (
            f"{what}: {ref.label}'s module structure changed:\n{structure(m)}\nexpected\n{ref.struct}"
        )
        ref.bound = True

    def check_swarm(self, sw, what: str) -> None:
        for i in range(sw["n"]):
            v = sw["swarm"][i]
            named = list(v.named_parameters())
            names = [n for n, _ in named]
            exp = sw["rows"][i]
            assert names == list(exp), f"{what}: {sw['label']}[{i}] has parameters {names}, expected {list(exp)}"
            for n, p in named:
                tol = sw["tol"]
                assert values_equal(p.detach(), exp[n], tol), (
                    f"{what}: {sw['label']}[{i}].{n} = {describe(p)}, expected {describe(exp[n])}"
                )
                if tol:
                    exp[n] = p.detach().clone()
            bufs, ebufs = list(v.named_buffers(remove_duplicate=False)), sw["bufs"][i]
            assert [n for n, _ in bufs] == [n for n, _ in ebufs], (
                f"{what}: {sw['label']}[{i}] has buffers {[n for n, _ in bufs]}, expected {[n for n, _ in ebufs]}"
            )
            for (n, b), (_, e) in zip(bufs, ebufs):
                assert values_equal(b.detach(), e, False), (
                    f"{what}: buffer {sw['label']}[{i}].{n} = {describe(b)}, expected {describe(e)}"
                )
        sw["tol"] = False

    def check_all(self, what: str) -> None:
        for ref in self.pool:
            self.check(ref, what)
        for sw in self.swarms:
            self.check_swarm(sw, what)

    def expect_error(self, run, what, operands, kind=Exception, names=()):
        note(f"  -> expect {getattr(kind, '__name__', kind)}")
        event(f"expected error: {getattr(kind, '__name__', kind)}")
        with pytest.raises(kind) as info:
            run()
        if names:
            msg = str(info.value)
            assert any(n in msg or n.rsplit(".", 1)[-1] in msg for n in names), (
                f"{what}: the error does not name a parameter of {sorted(names)}: {msg}"
            )
        for ref in operands:
            if isinstance(ref, dict):
                self.check_swarm(ref, what + " (after the error)")
            else:
                self.check(ref, what + " (after the error)")

    # -- steps ----------------------------------------------------------------
    def run(self, step) -> None:
        event(step[0] if step[0] != "mut" else "mut " + step[2])
        getattr(self, "step_" + step[0])(*step[1:])

    def pick(self, i, like=None) -> PRef:
        """Particle i; with ``like``: i < 6 picks among like's species (others meet less often)."""
        if like is not None and i < 6:
            same = [p for p in self.pool if p.species == like.species]
            return same[i % len(same)]
        return self.pool[i % len(self.pool)]

    def step_num(self, i, op, mode, s, check, slot):
        a = self.pick(i)
        num = s  # a 0-dim tensor promotes like torch's (a higher category wins)
        if mode == "in":
            text = f"{a} {op}= {s!r}"
            run = lambda: IOPS[op](a.module, s)  # noqa: E731
        elif mode == "m_in":
            text = f"{a}.{METHOD[op]}_({s!r})"
            run = lambda: getattr(a.module, METHOD[op] + "_")(s)  # noqa: E731
        elif mode == "out":
            text = f"{a} {op} {s!r}"
            run = lambda: OPS[op](a.module, s)  # noqa: E731
        elif mode == "m_out":
            text = f"{a}.{METHOD[op]}({s!r})"
            run = lambda: getattr(a.module, METHOD[op])(s)  # noqa: E731
        elif mode == "rev":
            text = f"{s!r} {op} {a}"
            run = lambda: OPS[op](s, a.module)  # noqa: E731
        else:
            text = f"{a}.r{METHOD[op]}({s!r})"
            run = lambda: getattr(a.module, "r" + METHOD[op])(s)  # noqa: E731
        inplace = mode in ("in", "m_in")
        fn = IOPS[op] if inplace else OPS[op]
        outcomes = {n: number_outcomes(fn, c.value, num, mode in ("rev", "m_rev")) for n, c in a.unique()}
        # torch's `s / t` is `t.reciprocal() * s` (two roundings); nytorch's is correctly rounded
        inexact = op in INEXACT or (op == "/" and mode in ("rev", "m_rev"))
        if any(len(v) > 1 for v in outcomes.values()):
            return self._either(text, a, run, outcomes, inplace, inexact, slot)
        if not outcomes:  # no parameters: may raise where torch raises on an empty tensor (`- False`)
            try:
                torch_number_op(fn, torch.empty(0), num, mode in ("rev", "m_rev"))
            except RuntimeError:
                return self._either(text, a, run, outcomes, inplace, inexact, slot, may_raise=True)
        expected, err = {}, None
        for n, (o,) in outcomes.items():
            if isinstance(o, Exception):
                err = f"torch raises for {n}: {o}"
            else:
                expected[n] = o
        self._finish(text, a, None, run, expected, err, inplace, inexact, check, slot)

    def _either(self, text, a, run, outcomes, inplace, inexact, slot, may_raise=False):
        """A 0-dim tensor number where torch's two kernels disagree: an error
        (operands unchanged) or one of the outcomes per parameter."""
        note(text + "   (torch's Tensor and Scalar kernels disagree here: either outcome)")
        try:
            out = run()
        except Exception:
            if not may_raise and not any(isinstance(o, Exception) for v in outcomes.values() for o in v):
                raise  # no route of torch's raises: neither may nytorch
            self.check(a, text + " (after the error)")
            return
        target = a.module if inplace else out
        actual = {n: p.detach() for n, p in target.named_parameters()}
        for n, v in outcomes.items():
            assert n in actual, f"{text}: the result lacks {n}"
            assert any(isinstance(o, torch.Tensor) and values_equal(actual[n], o, inexact) for o in v), (
                f"{text}: {n} = {describe(actual[n])}, expected one of {[describe(o) if isinstance(o, torch.Tensor) else repr(o) for o in v]}"
            )
        values = {n: t.clone() for n, t in actual.items()}
        if inplace:
            for n, c in a.unique():
                c.value, c.tol = values[n], False
            self.check(a, text)
        else:
            ref = self.result_ref(a, out, values)
            self.add(ref, slot)
            note(f"  -> {ref}")
            self.check(ref, text)
            self.check(a, text + " (operand)")

    def step_pp(self, i, j, op, mode, check, slot):
        a = self.pick(i)
        b = self.pick(j, like=a)
        if mode == "in":
            text, run = f"{a} {op}= {b}", lambda: IOPS[op](a.module, b.module)
        elif mode == "out":
            text, run = f"{a} {op} {b}", lambda: OPS[op](a.module, b.module)
        else:  # a.radd(b) is b + a
            am, bm = a.module, b.module
            text, run = f"{a}.r{METHOD[op]}({b})", lambda: getattr(am, "r" + METHOD[op])(bm)
            a, b = b, a
        inplace = mode == "in"
        if a.species != b.species:
            note(text)
            return self.expect_error(run, text, [a, b], nyto.SpeciesError)
        how, bad = classify(a.sig(), b.sig())
        if how == "bad":
            note(text + f"   (structures differ: {sorted(bad)})")
            return self.expect_error(run, text, [a, b], nyto.StructureError, bad)
        if how == "order":
            text += f"   (same parameters in another order: {sorted(bad)}: by name, or StructureError)"
        expected, err = {}, None
        bvals = {n: c.value for n, c in b.unique()}
        for n, c in a.unique():
            try:
                if inplace:
                    expected[n] = IOPS[op](c.value.clone(), bvals[n])
                else:
                    expected[n] = OPS[op](c.value, bvals[n])
            except RuntimeError as e:
                err = f"torch raises for {n}: {e}"
        self._finish(text, a, b, run, expected, err, inplace, op in INEXACT, check, slot, bad if how == "order" else ())

    def _finish(self, text, a, b, run, expected, err, inplace, inexact, check, slot, order=()):
        operands = [a] if b is None or b is a else [a, b]
        if err is not None and not order:
            note(text + f"   ({err})")
            return self.expect_error(run, text, operands)
        note(text)
        versions = (
            {id(c.obj): c.obj._version for _, c in a.unique() if c.obj is not None} if inplace and a.bound else {}
        )
        try:
            out = run()
        except nyto.StructureError as e:
            if not order:
                raise
            msg = str(e)
            assert any(n in msg for n in order), (
                f"{text}: the error does not name a parameter of {sorted(order)}: {msg}"
            )
            for o in operands:
                self.check(o, text + " (after the error)")
            return
        except Exception:
            if err is None:
                raise
            for o in operands:
                self.check(o, text + " (after the error)")
            return
        assert err is None, f"{text}: did not raise ({err})"
        if inplace:
            assert out is a.module, f"{text}: in-place op returned another object"
            for n, c in a.unique():
                c.value, c.tol = expected[n], inexact
                if id(c.obj) in versions:
                    assert c.obj._version > versions[id(c.obj)], f"{text}: {a}.{n}._version did not increase"
            if inexact or check:
                self.check(a, text)
        else:
            assert isinstance(out, type(a.module)) and out is not a.module, f"{text}: returned {type(out)}"
            ref = self.result_ref(a, out, expected)
            for _, c in ref.unique():
                c.tol = inexact
            self.add(ref, slot)
            note(f"  -> {ref}")
            if inexact or check:
                self.check(ref, text)
                for o in operands:
                    self.check(o, text + " (operand)")
                mine = {id(t) for t in a.module.buffers()}
                assert not any(id(t) in mine for t in out.buffers()), f"{text}: the result shares a buffer object"

    def step_unary(self, i, kind, seed, check, slot):
        a = self.pick(i)
        if kind == "randn":
            text = f"{a}.randn(generator=Generator().manual_seed({seed}))"
            run = lambda: a.module.randn(generator=torch.Generator().manual_seed(seed))  # noqa: E731
            bad = [n for n, c in a.unique() if not c.value.is_floating_point()]
            if bad:
                note(text + f"   (non-floating parameters {bad})")
                return self.expect_error(run, text, [a])
            note(text)
            out, again = run(), run()
            for (n, p), (_, q) in zip(out.named_parameters(), again.named_parameters()):
                assert torch.equal(p, q), f"{text}: not reproducible for {n}"
            values = dict(out.named_parameters())  # random: checked for shape/dtype, then adopted
            ref = self.result_ref(
                a, out, {n: values[n].detach().clone() if n in values else torch.empty(0) for n, _ in a.unique()}
            )
            for n, c in ref.unique():
                assert n in values, f"{text}: result lacks {n}"
                assert values[n].shape == a.cells[n].value.shape and values[n].dtype == a.cells[n].value.dtype, (
                    f"{text}: {n} is {describe(values[n])}, expected like {describe(a.cells[n].value)}"
                )
                assert bool(torch.isfinite(values[n]).all()), f"{text}: {n} not finite"
            self.check(ref, text)
            self.add(ref, slot)
            note(f"  -> {ref}")
            return
        if kind == "detach":
            text = f"{a}.detach()"
            note(text)
            out = a.module.detach()
            if not a.bound:
                self.check(a, text + " (source)")
            ref = self.result_ref(a, out, None, species=self.new_species(), share=True)
            self.check(ref, text)
            self.add(ref, slot)
            note(f"  -> {ref} (new species, same Parameter objects)")
            return
        fn = {"neg": operator.neg, "pos": lambda t: t.clone(), "clone": lambda t: t.clone()}[kind]
        text = {"neg": f"-{a}", "pos": f"+{a}", "clone": f"{a}.clone()"}[kind]
        run = {"neg": lambda: -a.module, "pos": lambda: +a.module, "clone": lambda: a.module.clone()}[kind]
        expected, err = {}, None
        for n, c in a.unique():
            try:
                expected[n] = fn(c.value)
            except RuntimeError as e:
                err = f"torch raises for {n}: {e}"
        self._finish(text, a, None, run, expected, err, False, False, check, slot)

    def step_fuse(self, i, j, k, use_out, check, slot):
        a = self.pick(i)
        b = self.pick(j, like=a)
        o = self.pick(k, like=a) if use_out else None
        if o is None:
            text, run = f"fuse(lambda a, b: a * 0.5 + b)({a}, {b})", lambda: FUSED(a.module, b.module)
        else:
            text = f"fuse(lambda a, b: a * 0.5 + b)({a}, {b}, out={o})"
            run = lambda: FUSED(a.module, b.module, out=o.module)  # noqa: E731
        operands = [x for x in dict.fromkeys([a, b] + ([o] if o is not None else []))]
        hows = [classify(a.sig(), x.sig()) for x in operands if x.species == a.species]
        bad = set().union(*(names for how, names in hows if how == "bad"))
        if len({x.species for x in operands}) > 1:
            note(text)  # other errors may apply too (structure, layouts, dtypes): any may come first
            other = (
                bad
                or any(how == "order" for how, _ in hows)
                or any(not c.value.is_floating_point() for x in operands for _, c in x.unique())
                or any(x.sig() != a.sig() for x in operands if x.species == a.species)
            )
            return self.expect_error(run, text, operands, Exception if other else nyto.SpeciesError)
        order = set().union(*(names for how, names in hows if how == "order"))
        nonfloat = [n for n, c in a.unique() if not c.value.is_floating_point()]
        dtypes = any(x.sig() != a.sig() for x in operands)
        if bad:
            note(text + f"   (structures differ: {sorted(bad)})")
            # with other problems too (layouts, dtypes: a RuntimeError), any may be reported first
            kind = (
                nyto.StructureError
                if not (
                    nonfloat
                    or any(
                        {n: d for n, _, d in x.sig()}.get(n) not in (None, d) for x in operands for n, _, d in a.sig()
                    )
                )
                else Exception
            )
            return self.expect_error(run, text, operands, kind, bad if kind is nyto.StructureError else ())
        if order or nonfloat or dtypes:  # fuse meets flats element for element (docs/fuse.md)
            note(text + f"   (order {sorted(order)}, non-floating {nonfloat}, dtypes differ: {dtypes})")
            return self.expect_error(run, text, operands)
        note(text)
        bvals = {n: c.value for n, c in b.unique()}
        expected = {n: c.value * 0.5 + bvals[n] for n, c in a.unique()}
        out = run()
        if o is None:
            ref = self.result_ref(a, out, expected)
            self.add(ref, slot)
            note(f"  -> {ref}")
            self.check(ref, text)
        else:
            assert out is o.module, f"{text}: returned {type(out)}"
            for n, c in o.unique():
                c.value = expected[n]
            self.check(o, text)
        for x in operands:
            self.check(x, text + " (operand)")

    # -- swarms -----------------------------------------------------------
    def step_swarm(self, i, n, slot):
        a = self.pick(i)
        text = f"S = Swarm({a}, {n})"
        note(text)
        if not list(a.unique()):  # documented: a swarm stacks at least one parameter
            return self.expect_error(lambda: nyto.Swarm(a.module, n), text, [a], ValueError)
        sw_mod = nyto.Swarm(a.module, n)
        label = f"s{self.label('s')[1:]}"
        sw = {
            "label": label,
            "swarm": sw_mod,
            "n": n,
            "species": a.species,
            "tol": False,
            "rows": [{m: c.value.clone() for m, c in a.unique()} for _ in range(n)],
            "sig": a.sig(),
            "bufs": [[(m, v.clone()) for m, v in a.buffers] for _ in range(n)],
        }
        note(f"  -> {label}")
        if len(self.swarms) < MAX_SWARMS:
            self.swarms.append(sw)
        else:
            self.swarms[slot % MAX_SWARMS] = sw
        self.check_swarm(sw, text)
        if not a.bound:
            self.check(a, text + " (source)")

    def pick_swarm(self, si):
        return self.swarms[si % len(self.swarms)] if self.swarms else None

    def step_swarm_num(self, si, op, mode, s, slot):
        sw = self.pick_swarm(si)
        if sw is None:
            return
        num = s
        L = sw["label"]
        if mode == "in":
            text, run = f"{L} {op}= {s!r}", lambda: IOPS[op](sw["swarm"], s)
        elif mode == "out":
            text, run = f"{L} {op} {s!r}", lambda: OPS[op](sw["swarm"], s)
        else:
            text, run = f"{s!r} {op} {L}", lambda: OPS[op](s, sw["swarm"])
        rows, err = [], None
        for row in sw["rows"]:
            new = {}
            for n, v in row.items():
                outs = number_outcomes(IOPS[op] if mode == "in" else OPS[op], v, num, mode == "rev")
                if len(outs) > 1:
                    return  # torch's kernels disagree (see number_outcomes): checked on particles
                if isinstance(outs[0], Exception):
                    err = f"torch raises for {n}: {outs[0]}"
                else:
                    new[n] = outs[0]
            rows.append(new)
        if err is not None:
            note(text + f"   ({err})")
            return self.expect_error(run, text, [sw])
        note(text)
        out = run()
        if mode == "in":
            assert out is sw["swarm"], f"{text}: in-place op returned another object"
            sw["rows"], sw["tol"] = rows, op in INEXACT or (op == "/" and mode == "rev")
            self.check_swarm(sw, text)
        else:
            new = dict(
                sw,
                label=f"s{self.label('s')[1:]}",
                swarm=out,
                rows=rows,
                bufs=[list(b) for b in sw["bufs"]],
                tol=op in INEXACT or (op == "/" and mode == "rev"),
            )
            note(f"  -> {new['label']}")
            self.check_swarm(new, text)
            self.check_swarm(sw, text + " (operand)")
            if len(self.swarms) < MAX_SWARMS:
                self.swarms.append(new)
            else:
                self.swarms[slot % MAX_SWARMS] = new

    def step_swarm_set(self, si, row, j):
        sw = self.pick_swarm(si)
        if sw is None:
            return
        b = self.pick(j)
        r = row % sw["n"]
        text = f"{sw['label']}[{r}] = {b}"

        def run():
            sw["swarm"][r] = b.module

        if b.species != sw["species"]:
            note(text)
            return self.expect_error(run, text, [sw, b], nyto.SpeciesError)
        how, bad = classify(sw["sig"], b.sig())
        if how == "bad":
            note(text + f"   (structures differ: {sorted(bad)})")
            return self.expect_error(run, text, [sw, b], nyto.StructureError, bad)
        mine = [(n, v.shape, v.dtype) for n, v in sw["bufs"][r]]
        theirs = [(n, v.shape, v.dtype) for n, v in b.buffers]
        same_buffers = mine == theirs
        note(
            text
            + (
                f"   (same parameters in another order: {sorted(bad)}: by name, or StructureError)"
                if how == "order"
                else ""
            )
            + (
                ""
                if same_buffers
                else f"   (buffers differ: {[n for n, *_ in mine]} and {[n for n, *_ in theirs]}:"
                " an error before anything is written, or by name)"
            )
        )
        try:
            run()
        except Exception as e:
            if (
                how != "order"
                and same_buffers
                or how == "order"
                and not isinstance(e, nyto.StructureError)
                and same_buffers
            ):
                raise
            self.check_swarm(sw, text + " (after the error)")
            self.check(b, text + " (after the error)")
            return
        # values by name, cast to the row's dtype (copy_ semantics); buffers too
        sw["rows"][r] = {n: b.cells[n].value.to(v.dtype) for n, v in sw["rows"][r].items()}
        src = {n: v for n, v in b.buffers}
        sw["bufs"][r] = [
            (n, src[n].to(v.dtype) if n in src and src[n].shape == v.shape else v) for n, v in sw["bufs"][r]
        ]
        self.check_swarm(sw, text)
        self.check(b, text + " (source)")

    def step_swarm_view(self, si, row, op, s):
        sw = self.pick_swarm(si)
        if sw is None:
            return
        r = row % sw["n"]
        num = s
        text = f"v = {sw['label']}[{r}]; v {op}= {s!r}"
        v = sw["swarm"][r]

        def run():
            IOPS[op](v, s)

        new, err = {}, None
        for n, t in sw["rows"][r].items():
            outs = number_outcomes(IOPS[op], t, num)
            if len(outs) > 1:
                return  # torch's kernels disagree (see number_outcomes): checked on particles
            if isinstance(outs[0], Exception):
                err = f"torch raises for {n}: {outs[0]}"
            else:
                new[n] = outs[0]
        if err is not None:
            note(text + f"   ({err})")
            return self.expect_error(run, text, [sw])
        note(text)
        run()
        sw["rows"][r] = new
        sw["tol"] = sw["tol"] or op in INEXACT
        self.check_swarm(sw, text)

    # -- structural mutations ---------------------------------------------------
    def step_mut(self, i, kind, k, newkind, seed):
        a = self.pick(i)
        m = a.module
        g = torch.Generator().manual_seed(seed)
        self.check(a, f"before mutating {a}")
        mods = mutable_modules(m)
        params = [(qn, mod, n) for qn, mod in mods for n, p in mod._parameters.items() if p is not None]
        buffers = [(qn, mod, n) for qn, mod in mods for n, b in mod._buffers.items() if b is not None]
        children = [
            (qn, mod, n)
            for qn, mod in mods
            if not isinstance(mod, P.ParametrizationList)
            for n in mod._modules
            if n != "parametrizations"
        ]
        self.counter += 1
        fresh = f"x{self.counter}"

        def at(qn, n):
            return f"{a}.{qn + '.' if qn else ''}{n}"

        if kind.startswith("param_"):
            if not params:
                return
            qn, mod, n = params[k % len(params)]
            old = mod._parameters[n]
            same = lambda: nn.Parameter(
                torch.randn(old.shape, generator=g).to(old.dtype)  # noqa: E731
                if old.is_floating_point()
                else old.detach().clone().flip(0)
                if old.dim()
                else old.detach().clone(),
                requires_grad=old.requires_grad,
            )
            what = kind[6:]
            if what == "del":
                note(f"del {at(qn, n)}")
                delattr(mod, n)
            elif what == "none":
                note(f"{at(qn, n)} = None")
                setattr(mod, n, None)
            elif what == "rereg_same":
                note(f"{at(qn, n)} = Parameter(like the old one)")
                setattr(mod, n, same())
            elif what == "rereg_other":
                note(f"{at(qn, n)} = Parameter({newkind})")
                setattr(mod, n, make_param(newkind, g))
            elif what == "new":
                note(f"{at(qn, fresh)} = Parameter({newkind})")
                setattr(mod, fresh, make_param(newkind, g))
            elif what == "pop":
                note(f"{at(qn, '_parameters')}.pop({n!r})")
                mod._parameters.pop(n)
            elif what == "dict_same":
                note(f"{at(qn, '_parameters')}[{n!r}] = Parameter(like the old one)")
                mod._parameters[n] = same()
            elif what == "dict_other":
                note(f"{at(qn, '_parameters')}[{n!r}] = Parameter({newkind})")
                mod._parameters[n] = make_param(newkind, g)
            elif what == "dict_new":
                note(f"{at(qn, '_parameters')}[{fresh!r}] = Parameter({newkind})")
                mod._parameters[fresh] = make_param(newkind, g)
            elif what == "data_same":  # the same object, new storage
                note(f"{at(qn, n)}.data = (new tensor like it)")
                old.data = same().data
            elif what == "data_other":  # the same object, maybe another shape and dtype
                t = make_tensor(newkind, g)
                if old.requires_grad and not t.is_floating_point():
                    t = t.float()
                note(f"{at(qn, n)}.data = {newkind} {tuple(t.shape)} {str(t.dtype)[6:]}")
                old.data = t
            elif what == "rg_toggle":
                if not old.is_floating_point():
                    return
                note(f"{at(qn, n)}.requires_grad_({not old.requires_grad})")
                old.requires_grad_(not old.requires_grad)
            else:
                raise AssertionError(kind)
        elif kind.startswith("buf_"):
            what = kind[4:]
            if what == "new":
                qn, mod = mods[k % len(mods)]
                note(f"{at(qn, '')}register_buffer({fresh!r}, {newkind})")
                mod.register_buffer(fresh, make_tensor(newkind, g))
            else:
                if not buffers:
                    return
                qn, mod, n = buffers[k % len(buffers)]
                if what == "del":
                    note(f"del {at(qn, n)}")
                    delattr(mod, n)
                elif what == "none":
                    note(f"{at(qn, n)} = None")
                    setattr(mod, n, None)
                elif what == "pop":
                    note(f"{at(qn, '_buffers')}.pop({n!r})")
                    mod._buffers.pop(n)
                elif what == "dict_set":
                    note(f"{at(qn, '_buffers')}[{n!r}] = {newkind}")
                    mod._buffers[n] = make_tensor(newkind, g)
                else:
                    raise AssertionError(kind)
        elif kind.startswith("mod_"):
            if not children:
                return
            qn, mod, n = children[k % len(children)]
            what = kind[4:]
            shape = (1 + seed % 3, 1 + (seed // 3) % 3)
            if what == "del":
                note(f"del {at(qn, n)}")
                delattr(mod, n)
            elif what == "none":
                note(f"{at(qn, n)} = None")
                setattr(mod, n, None)
            elif what == "replace":
                note(f"{at(qn, n)} = nn.Linear{shape}")
                setattr(mod, n, nn.Linear(*shape))
            elif what == "pop":
                note(f"{at(qn, '_modules')}.pop({n!r})")
                mod._modules.pop(n)
            elif what == "dict_set":
                note(f"{at(qn, '_modules')}[{n!r}] = nn.Linear{shape}")
                mod._modules[n] = nn.Linear(*shape)
            elif what == "dict_none":
                note(f"{at(qn, '_modules')}[{n!r}] = None")
                mod._modules[n] = None
            else:
                raise AssertionError(kind)
        elif kind == "load_sd":
            b = self.pick(k)
            self.check(b, f"before loading {b}'s state_dict")
            mine = m.state_dict(keep_vars=True)
            theirs = b.module.state_dict()
            keys = [
                key
                for key in mine
                if key in theirs and theirs[key].shape == mine[key].shape and theirs[key].dtype == mine[key].dtype
            ]
            drop = {key for t, key in enumerate(keys) if (seed >> (t % 16)) & 1}
            sd = {key: theirs[key] for key in keys if key not in drop}
            note(f"{a}.load_state_dict({b}.state_dict() restricted to {sorted(sd)}, strict=False)")
            expected = {}
            for key, t in mine.items():
                if key in sd:
                    expected[id(t)] = (t, sd[key].clone())
            if any(
                isinstance(x, nn.modules.batchnorm._BatchNorm) and "num_batches_tracked" not in x._buffers
                for x in m.modules()
            ):
                # torch's own BatchNorm can't load then (AttributeError), nytorch or not
                note("  (skipped: a BatchNorm without num_batches_tracked can't load a state_dict)")
                return
            m.load_state_dict(sd, strict=False)
            for t, v in expected.values():
                assert values_equal(t.detach(), v, False), f"load_state_dict: {describe(t)} expected {describe(v)}"
        elif kind in ("to_double", "to_float"):
            qn, mod = mods[k % len(mods)]
            note(f"{at(qn, '')}{kind[3:]}()")
            getattr(mod, kind[3:])()
        elif kind == "parametrize":
            cands = [(qn, mod, n) for qn, mod, n in params if mod._parameters[n].is_floating_point()]
            if not cands:
                return
            qn, mod, n = cands[k % len(cands)]
            note(f"register_parametrization({at(qn, '')[:-1] if qn else a}, {n!r}, Double())")
            P.register_parametrization(mod, n, Double())
        elif kind == "unparametrize":
            cands = [(qn, mod, n) for qn, mod in mods if P.is_parametrized(mod) for n in mod.parametrizations]
            if not cands:
                return
            qn, mod, n = cands[k % len(cands)]
            leave = bool(seed & 1)
            note(f"remove_parametrizations({at(qn, '')[:-1] if qn else a}, {n!r}, leave_parametrized={leave})")
            P.remove_parametrizations(mod, n, leave_parametrized=leave)
        else:
            raise AssertionError(kind)
        # other parameters keep their objects and values
        if kind not in (
            "parametrize",
            "unparametrize",
            "load_sd",
            "param_data_same",
            "param_data_other",
            "to_double",
            "to_float",
        ):
            for n, p in m.named_parameters(remove_duplicate=False):
                known = self.objs.get(id(p))
                if known is not None:
                    assert values_equal(p.detach(), known[1].value, False), f"mutation changed {n}"
        self.pool[self.pool.index(a)] = self.adopt(m, a.species, a.label)


class Double(nn.Module):
    def forward(self, x):
        return x * 2


FUSED = nyto.fuse(lambda a, b: a * 0.5 + b)

# ----------------------------------------------------------------------------
# step strategies
# ----------------------------------------------------------------------------
idx = st.integers(0, 7)
ops = st.sampled_from(list(OPS))
numbers = st.one_of(
    st.integers(-3, 3),
    st.sampled_from([0.5, -1.5, 2.0, 0.0, -0.0, 1e-3, 3.25]),
    st.booleans(),
    st.builds(
        lambda v, dt: torch.tensor(v).to(dt),
        st.sampled_from([2, -1, 0.5, 0]),
        st.sampled_from([torch.float32, torch.float64, torch.int64, torch.int8, torch.bool]),
    ),
)
MUTATIONS = [
    "param_del",
    "param_none",
    "param_rereg_same",
    "param_rereg_other",
    "param_new",
    "param_pop",
    "param_dict_same",
    "param_dict_other",
    "param_dict_new",
    "param_data_same",
    "param_data_other",
    "param_rg_toggle",
    "to_double",
    "to_float",
    "buf_del",
    "buf_none",
    "buf_new",
    "buf_pop",
    "buf_dict_set",
    "mod_del",
    "mod_none",
    "mod_replace",
    "mod_pop",
    "mod_dict_set",
    "mod_dict_none",
    "load_sd",
    "parametrize",
    "unparametrize",
]
mutations = st.tuples(
    st.just("mut"),
    idx,
    st.sampled_from(MUTATIONS + ["parametrize", "unparametrize"]),
    st.integers(0, 63),
    param_kinds,
    st.integers(0, 2**16),
)
particle_ops = st.tuples(st.just("pp"), idx, idx, ops, st.sampled_from(["out", "in", "m_rev"]), st.booleans(), idx)
STEPS = {
    "num": st.tuples(
        st.just("num"),
        idx,
        ops,
        st.sampled_from(["out", "rev", "in", "m_out", "m_rev", "m_in"]),
        numbers,
        st.booleans(),
        idx,
    ),
    "pp": particle_ops,
    "mut": mutations,
    "unary": st.tuples(
        st.just("unary"),
        idx,
        st.sampled_from(["neg", "pos", "clone", "detach", "randn"]),
        st.integers(0, 9),
        st.booleans(),
        idx,
    ),
    "fuse": st.tuples(st.just("fuse"), idx, idx, idx, st.booleans(), st.booleans(), idx),
    "swarm": st.tuples(st.just("swarm"), idx, st.integers(1, 3), idx),
    "swarm_num": st.tuples(st.just("swarm_num"), idx, ops, st.sampled_from(["out", "rev", "in"]), numbers, idx),
    "swarm_set": st.tuples(st.just("swarm_set"), idx, idx, idx),
    "swarm_view": st.tuples(st.just("swarm_view"), idx, idx, ops, numbers),
}
# structural mutations and ops between particles weigh more
WEIGHTS = {
    "num": 3,
    "pp": 4,
    "mut": 5,
    "unary": 2,
    "fuse": 2,
    "swarm": 1,
    "swarm_num": 1,
    "swarm_set": 1,
    "swarm_view": 1,
}
steps = st.sampled_from([k for k, w in WEIGHTS.items() for _ in range(w)]).flatmap(STEPS.__getitem__)


# a length drawn first: lists of plain st.lists are mostly short; the shrinker still shortens it
step_lists = st.integers(1, MAX_STEPS).flatmap(lambda n: st.lists(steps, min_size=n, max_size=n))


@given(spec=model_specs, step_list=step_lists)
def test_fuzz_particles(spec, step_list):
    """Random models, random step lists: nytorch against the per-parameter torch reference."""
    fz = Fuzz(spec)
    for step in step_list:
        fz.run(step)
    fz.check_all("final check of every particle and swarm")
