"""``nytorch.fuse``: a whole particle update in one pass over memory.

``step = nyto.fuse(fn)`` (or ``@nyto.fuse``) traces ``fn`` -- a function of
particles and numbers -- once, compiles its elementwise expression DAG to a
small program, and runs every later call as ONE kernel over the particles'
flat buffers: each input element read once, each output written once,
intermediates in registers / L1-sized blocks, random numbers generated in
the kernel.

>>> import torch, nytorch as nyto
>>> class P(nyto.NytoModule):
...     def __init__(self):
...         super().__init__()
...         self.w = torch.nn.Parameter(torch.ones(3)); self.b = torch.nn.Parameter(torch.zeros(2))
>>> x = P()
>>> v, best = x * 0, x + 1                                 # the same species as x
>>> @nyto.fuse
... def pso(x, v, g, w, c):
...     v = w * v + c * nyto.rand_like(x) * (g - x)
...     return x + v, v
>>> _ = torch.manual_seed(0)
>>> new_x, new_v = pso(x, v, best, 0.7, 1.5)                # two new particles
>>> _ = pso(x, v, best, 0.5, 1.5, out=(x, v))              # in place; new numbers: no retrace
>>> pso.traces
1

Calling contract (also for ``nytorch.Swarm`` and other users of flat buffers)
-----------------------------------------------------------------------------
High level: ``Fused.__call__(*args, out=None)``. Positional ``args`` are
particles (``NytoModule`` of ONE species, with compatible layouts) and real
numbers (``int``/``float``/``bool``/0-dim tensors; their values are passed at
run time: changing them never retraces). ``out``: ``None`` (new particles,
one per output), or a particle / tuple of particles of the same species (one
per output) written in place -- they may be arguments themselves (aliasing is
correct: every element is read before it is written). Returns the output
particle(s): a single value when ``fn`` returned one value, else a tuple.
A program is traced once per (pattern of particle/number arguments, species);
``Fused.traces`` counts traces.

Low level, on any flat buffers (no particles involved)::

    prog = nytorch.fuse.program(fn, "ppn")          # 'p': buffer argument, 'n': number
    outs = nytorch.fuse.run_flat(prog, inputs, numbers, out=None, seed=None, offset=0)

- ``inputs``: one entry per 'p' argument, in argument order; each entry is a
  list of tensors, one per *group* (e.g. one per (device, dtype) of a
  particle, ``state.flats``). Within a group every input and output has the
  same dtype (float32, float64, bfloat16, float16), the same device and the
  same numel, and is contiguous (any shape: a stacked ``[N, numel]`` buffer is
  fine). Groups are independent: the CPU runs a call's groups in one pool
  of workers, in parallel (an output of one group may not be an operand of
  another).
- ``numbers``: one real number per 'n' argument, in argument order.
- ``out``: ``None`` (new tensors, returned as ``outs[output][group]``) or
  ``outs[output][group]`` tensors written in place; an output may be one of
  the inputs itself (same tensor), but may not partially overlap one.
- ``seed``: the Philox key of ``rand_like``/``randn_like``; ``None`` draws one
  from torch's default CPU generator per call (``torch.manual_seed``
  reproduces runs). ``offset``: added to the element index of the random
  counters, so a caller that splits one logical buffer into chunks gets the
  same numbers as one call over the whole buffer.
- ``seed`` may also be a *random state*: an int64 tensor of shape [2] =
  (seed, offset) on the operands' device (:func:`random_state` makes one).
  The kernels read it at run time (on CUDA from device memory, so a CUDA
  graph replay uses its current value): the call draws exactly what
  ``seed=int(state[0]), offset=int(state[1]) + offset`` draws, then, when
  the program draws random numbers, ``state[1]`` grows by the largest
  group's numel rounded up to a multiple of 4 (whole Philox counters),
  enqueued after the kernels on the same stream (no host sync), so the next
  call draws fresh numbers. Not under ``torch.compile`` (the torch op takes
  an int seed): there it raises.
- Random streams: element ``e`` (index within its group's buffer, plus
  ``offset``) of the ``k``-th random call in ``fn`` (trace order) in group
  ``g`` uses Philox4x32-10 with key = seed and counter =
  (e >> 2 (float math) or e >> 1 (float64), stream k, group g): independent
  of threads, block sizes and device (CPU and CUDA draw the same uniforms).
- Rows: :func:`run_rows` runs a program over stacked ``[N, ...]`` buffers
  where an input may be ONE row (e.g. the best particle against a stacked
  swarm) read by every row, on all rows or a listed subset; it draws and
  computes exactly what ``run_flat`` does over the buffers with that row
  expanded. Other broadcasts are not supported: expand first.

Errors: an unsupported operation raises :class:`FuseError` (a TypeError)
while tracing, naming it; mismatched species raise nytorch.SpeciesError, an AssertionError (like
particle arithmetic); bad buffers raise RuntimeError before anything is
written (operands unchanged).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .. import _C
from .. import _storage as S
from .._storage import state_of
from ..particle import NytoModule, _number, _same_species
from . import codegen as _codegen
from .program import Program, compile_nodes
from .trace import FuseError, Node, apply, lift, random_node, scalar_eval, start_trace
from .trace import clamp as _clamp

__all__ = [
    "fuse",
    "Fused",
    "FuseError",
    "Program",
    "program",
    "run_flat",
    "run_rows",
    "rand_like",
    "randn_like",
    "where",
    "clamp",
    "minimum",
    "maximum",
    "lerp",
    "fma",
    "hypot",
    "sqrt",
    "exp",
    "log",
    "sign",
    "abs",
]

_fuse_run = _C.fuse_run
_fuse_call = _C.fuse_call
_MAX_CACHE = 64


# ---------------------------------------------------------------------------
# Tracing and compiling
def _trace(fn: Callable, kinds: str) -> Program:
    start_trace()
    args = []
    n_in = n_num = 0
    for k in kinds:
        if k == "p":
            args.append(Node("in", (), n_in, False))
            n_in += 1
        elif k == "n":
            args.append(Node("num", (), n_num, True))
            n_num += 1
        else:
            raise ValueError(f"nytorch.fuse: argument kinds are 'p' (buffer/particle) or 'n' (number), got {k!r}")
    res = fn(*args)
    single = not isinstance(res, (tuple, list))
    outs = [res] if single else list(res)
    if not outs:
        raise FuseError("nytorch.fuse: the function returned no values")
    nodes = []
    for j, o in enumerate(outs):
        try:
            nodes.append(lift(o))
        except FuseError:
            raise FuseError(
                f"nytorch.fuse: output {j} of the function is a {type(o).__name__}; a fused "
                "function returns traced values (or a tuple of them)"
            ) from None
    return compile_nodes(nodes, n_in, n_num, single)


def program(fn: Callable, kinds: str) -> Program:
    """Trace ``fn`` for arguments of the given kinds ('p': buffer, 'n': number).

    >>> prog = program(lambda x, y, a: a * x + y, "ppn"); prog.n_in, prog.n_num, prog.n_out
    (2, 1, 1)
    """
    if not isinstance(kinds, str):
        raise TypeError(
            f"nytorch.fuse.program: kinds must be a str of 'p' (buffer) and 'n' (number), "
            f"one per argument, got {type(kinds).__name__}"
        )
    if not callable(fn):
        raise TypeError(f"nytorch.fuse.program: fn must be a function, got {type(fn).__name__}")
    return _trace(fn, kinds)


def _check_lists(x: Any, name: str, what: str, where: str) -> None:
    if not isinstance(x, (list, tuple)) or not all(isinstance(g, (list, tuple)) for g in x):
        raise TypeError(
            f"nytorch.fuse.{where}: {name} must be a list with one list of tensors per {what} "
            f"({name}[k][g]: group g), got {type(x).__name__}"
        )


def _check_call(
    where: str,
    prog: Program,
    inputs: Sequence[Sequence[torch.Tensor]],
    numbers: Sequence[float],
    out: Optional[Sequence[Sequence[torch.Tensor]]],
    seed: Union[None, int, torch.Tensor],
    offset: int,
) -> Union[int, torch.Tensor]:
    """The argument checks of run_flat and run_rows (``where``); returns the
    seed for the kernel: a random-state tensor (checked), or an int key (-1:
    drawn from torch's generator)."""
    _check_lists(inputs, "inputs", "input", where)
    if out is not None:
        _check_lists(out, "out", "output", where)
    if not hasattr(numbers, "__len__"):
        raise TypeError(
            f"nytorch.fuse.{where}: numbers must be a sequence of {prog.n_num} real numbers, "
            f"got {type(numbers).__name__}"
        )
    state = seed if isinstance(seed, torch.Tensor) else None
    for name, v in (("seed", None if state is not None else seed), ("offset", offset)):
        if v is not None and (isinstance(v, bool) or not hasattr(type(v), "__index__")):
            raise TypeError(
                f"nytorch.fuse.{where}: {name} must be an int"
                f"{' or a random-state tensor' if name == 'seed' else ''}, got {type(v).__name__}"
            )
    if len(numbers) != prog.n_num:
        raise TypeError(f"nytorch.fuse.{where}: the program takes {prog.n_num} numbers, got {len(numbers)}")
    if len(inputs) != prog.n_in:
        raise TypeError(f"nytorch.fuse.{where}: the program takes {prog.n_in} inputs, got {len(inputs)}")
    if state is not None:
        _check_state(state, inputs)
        return state
    if seed is None:
        return -1
    if seed < 0:
        raise ValueError(f"nytorch.fuse.{where}: seed must be >= 0")
    return int(seed)


def run_flat(
    prog: Program,
    inputs: Sequence[Sequence[torch.Tensor]],
    numbers: Sequence[float] = (),
    out: Optional[Sequence[Sequence[torch.Tensor]]] = None,
    seed: Union[None, int, torch.Tensor] = None,
    offset: int = 0,
) -> Optional[List[List[torch.Tensor]]]:
    """Run ``prog`` on flat buffers: see the module docstring for the contract.

    >>> prog = program(lambda x, y, a: a * x + y, "ppn")
    >>> run_flat(prog, [[torch.ones(3)], [torch.arange(3.)]], [2.0])
    [[tensor([2., 3., 4.])]]
    >>> x = torch.ones(3); run_flat(prog, [[x], [x]], [3.0], out=[[x]]); x
    tensor([4., 4., 4.])
    """
    key = _check_call("run_flat", prog, inputs, numbers, out, seed, offset)
    consts = [*numbers, *prog.lits]
    if isinstance(key, torch.Tensor):
        if torch.compiler.is_compiling():
            raise RuntimeError(
                "nytorch.fuse.run_flat: a random-state tensor seed is not supported under torch.compile "
                "(torch.ops.nytorch.fused takes an int seed); pass seed=int, or call run_flat outside "
                "the compiled region"
            )
        return _run(prog, consts, inputs, out, key, offset)
    if torch.compiler.is_compiling():
        return _run_op(prog, inputs, consts, out, key, offset)
    return _run(prog, consts, inputs, out, key, offset)


def run_rows(
    prog: Program,
    inputs: Sequence[Sequence[torch.Tensor]],
    numbers: Sequence[float] = (),
    out: Optional[Sequence[Sequence[torch.Tensor]]] = None,
    seed: Union[None, int, torch.Tensor] = None,
    offset: int = 0,
    *,
    rows: Union[None, Sequence[int], torch.Tensor] = None,
) -> Optional[List[List[torch.Tensor]]]:
    """:func:`run_flat` over stacked rows, where an input may be one row.

    Input 0 of every group is a stacked buffer of ``N`` rows (dim 0; ``N``
    the same in every group); every other input is stacked like it or ONE
    row (``numel / N`` elements), which every row reads (it may not overlap
    an output); outputs are stacked. ``rows``: the rows to run (ascending,
    no repeats; ints or a 1-D int64 CPU tensor such as ``mask.nonzero()[:, 0]``;
    ``None``: all), the others are left alone (so ``rows`` needs ``out``).
    Random numbers and
    results are bitwise those of ``run_flat`` over the stacked buffers with
    the one-row inputs expanded: row ``r`` draws the counters of elements
    ``r * numel/N + e``. On the CPU a run of consecutive rows is one job
    (all in one pool); on CUDA each row is its own launch: prefer
    ``run_flat`` over expanded buffers there.

    >>> prog = program(lambda x, g, a: x + a * (g - x), "ppn")
    >>> x, g = torch.zeros(3, 2), torch.tensor([1.0, 2.0])
    >>> run_rows(prog, [[x], [g]], [0.5], out=[[x]], rows=[0, 2]); x
    tensor([[0.5000, 1.0000],
            [0.0000, 0.0000],
            [0.5000, 1.0000]])
    """
    key = _check_call("run_rows", prog, inputs, numbers, out, seed, offset)
    first = inputs[0][0] if inputs[0] else None
    if not isinstance(first, torch.Tensor) or first.dim() < 1:
        raise TypeError("nytorch.fuse.run_rows: input 0 must be stacked buffers of rows (a tensor with dim >= 1)")
    if rows is not None:
        if out is None:
            raise ValueError("nytorch.fuse.run_rows: rows= needs out= (the rows not run keep the outputs' values)")
        if not isinstance(rows, torch.Tensor):
            rows = [int(r) for r in rows]
    if torch.compiler.is_compiling():
        raise RuntimeError("nytorch.fuse.run_rows is not supported under torch.compile: use run_flat")
    return _fuse_run(prog.words, [*numbers, *prog.lits], inputs, out, key, offset, first.shape[0], rows)


def _check_state(state: torch.Tensor, inputs: Sequence[Sequence[torch.Tensor]]) -> None:
    """A random state is a contiguous int64 [2] tensor on the device of every
    group with elements (empty groups are skipped, as the kernels skip them)."""
    if state.dtype != torch.int64 or state.shape != (2,) or not state.is_contiguous():
        raise TypeError(
            "nytorch.fuse.run_flat: a random state is a contiguous int64 tensor of shape [2] (seed, offset), "
            f"as nytorch.fuse.random_state makes; got {state.dtype} of shape {list(state.shape)}"
        )
    for g, t in enumerate(inputs[0] if inputs else ()):
        if isinstance(t, torch.Tensor) and t.device != state.device and t.numel():
            raise RuntimeError(
                f"nytorch.fuse.run_flat: the random state is on {state.device}, group {g} on {t.device} "
                "(it must be on the operands' device)"
            )


def random_state(seed: Optional[int] = None, device: Any = "cpu", offset: int = 0) -> torch.Tensor:
    """A random state for :func:`run_flat`: ``tensor([seed, offset])`` (int64)
    on ``device``; ``seed=None`` draws one from torch's default CPU generator.
    Each ``run_flat(..., seed=state)`` that draws random numbers advances
    ``state[1]`` on the device (see the module docstring).

    >>> st = random_state(7); prog = program(lambda x: rand_like(x), "p")
    >>> a = run_flat(prog, [[torch.zeros(5)]], seed=st); st.tolist()
    [7, 8]
    >>> b = run_flat(prog, [[torch.zeros(5)]], seed=7, offset=8)
    >>> torch.equal(run_flat(prog, [[torch.zeros(5)]], seed=random_state(7, offset=8))[0][0], b[0][0])
    True
    """
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()))
    for name, v in (("seed", seed), ("offset", offset)):
        if isinstance(v, bool) or not hasattr(type(v), "__index__") or v < 0:
            raise ValueError(f"nytorch.fuse.random_state: {name} must be an int >= 0, got {v!r}")
    return torch.tensor([int(seed), int(offset)], dtype=torch.int64, device=device)


# --- generated CUDA kernels (nytorch/_fuse/codegen.py): NYTO_FUSE_ENGINE=codegen
def _run(prog, consts, inputs, out, seed, offset):
    """One fuse call: generated kernels for CUDA buffers when the engine is
    "codegen" (falling back to the interpreter, with a one-time warning
    naming the reason), else the interpreter (nytorch._C.fuse_run)."""
    if _codegen._ENGINE == "codegen" and inputs and inputs[0] and inputs[0][0].is_cuda:
        try:
            return _codegen.run(prog, inputs, consts, out, seed, offset)
        except _codegen.Fallback as e:
            _codegen._warn_once(str(e))
    return _fuse_run(prog.words, consts, inputs, out, seed, offset)


# --- end generated CUDA kernels


def _run_op(prog, inputs, consts, out, seed, offset):
    """The torch.ops route (torch.compile): explicit seed, group-major lists."""
    if seed < 0:
        seed = int(torch.randint(0, 2**62, ()).item()) if prog.has_rand else 0
    ng = len(inputs[0])
    flat_in = [inputs[k][g] for g in range(ng) for k in range(len(inputs))]
    if out is None:
        res = torch.ops.nytorch.fused.default(prog.ints, consts, flat_in, seed, offset)
        return [[res[g * prog.n_out + j] for g in range(ng)] for j in range(prog.n_out)]
    flat_out = [out[j][g] for g in range(ng) for j in range(len(out))]
    torch.ops.nytorch.fused_.default(prog.ints, consts, flat_in, flat_out, seed, offset)
    return None


# ---------------------------------------------------------------------------
# The particle front end
class Fused:
    """A fused particle function (see :func:`fuse`). ``traces``: how many
    times ``fn`` was traced; ``programs``: the cached programs."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self.traces = 0
        self.programs: Dict[Tuple[str, Any], Program] = {}
        self.__doc__ = getattr(fn, "__doc__", None)
        self.__name__ = getattr(fn, "__name__", "fused")
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<nytorch.fuse of {self.__name__}: {self.traces} traces>"

    def _program(self, kinds: str, species) -> Program:
        key = (kinds, species)
        prog = self.programs.get(key)
        if prog is None:
            prog = _trace(self.fn, kinds)
            self.traces += 1
            if len(self.programs) >= _MAX_CACHE:
                self.programs.pop(next(iter(self.programs)))
            self.programs[key] = prog
        return prog

    def __call__(self, *args: Any, out: Union[None, NytoModule, Sequence[NytoModule]] = None):
        # The hot path: an in-place call of a traced program on valid particles
        # runs in C (_C.fuse_call); it returns None for anything else.
        if out is not None and _codegen._ENGINE != "codegen":
            done = _fuse_call(self.programs, args, out)
            if done is not None:
                return done
        nums: List[Any] = []
        parts: List[NytoModule] = []
        kinds = ""
        for a in args:
            t = type(a)
            if t is float or t is int:
                nums.append(a)
                kinds += "n"
            elif isinstance(a, NytoModule):
                parts.append(a)
                kinds += "p"
            else:
                nums.append(_as_number(a))
                kinds += "n"
        if not parts:
            raise TypeError("nytorch.fuse: a fused function needs at least one particle argument")
        first = parts[0]
        sp = first._nyto_species
        prog = self.programs.get((kinds, sp))
        if prog is None:
            for p in parts:
                if p._nyto_species is not sp:
                    _same_species(first, p)
            prog = self._program(kinds, sp)
        st = state_of(first)
        layout = st.layout
        inputs = [st.flats]
        for p in parts[1:]:
            inputs.append(_flats_like(first, p, sp, layout))
        if prog.lits:
            nums += prog.lits
        if out is None:
            pool = layout.pool
            outs = [_C.pooled_like(st.flats, pool) for _ in range(prog.n_out)]
            if layout.groups:  # a particle without parameters: nothing to compute
                _run(prog, nums, inputs, outs, -1, 0)
            if prog.single:
                return first._from_flats(st, outs[0])
            return tuple(first._from_flats(st, f) for f in outs)
        if isinstance(out, NytoModule):
            targets = (out,)
        elif isinstance(out, (tuple, list)):
            targets = tuple(out)
        else:
            raise FuseError(
                f"nytorch.fuse: out= takes a particle or a tuple of particles (one per output of "
                f"{self.__name__}), got {type(out).__name__}"
            )
        if len(targets) != prog.n_out:
            raise TypeError(f"nytorch.fuse: {self.__name__} has {prog.n_out} outputs, out= gives {len(targets)}")
        flats = []
        for o in targets:
            for p, f in zip(parts, inputs):  # an argument: its flats are known
                if o is p:
                    flats.append(f)
                    break
            else:
                if not isinstance(o, NytoModule):
                    raise TypeError(f"nytorch.fuse: out= takes particles, got {type(o).__name__}")
                flats.append(_flats_like(first, o, sp, layout))
        if layout.groups:
            _run(prog, nums, inputs, flats, -1, 0)
        return out


def _flats_like(first: NytoModule, p: NytoModule, species: Any, layout: Any) -> list:
    """The flats of particle ``p``, which must be of ``first``'s species and layout."""
    if p._nyto_species is not species:
        _same_species(first, p)
    s = state_of(p)
    if s.layout is not layout and not S.compatible(state_of(first), s):
        S.check_structure(state_of(first), s, "nytorch.fuse")
        _layout_error(first, p)
    return s.flats


def _as_number(a: Any) -> float:
    n = _number(a)
    if n is None or isinstance(n, complex):
        raise TypeError(f"nytorch.fuse: arguments are particles or real numbers, got {type(a).__name__}")
    return n


def _layout_error(a: NytoModule, b: NytoModule) -> None:
    raise RuntimeError(
        f"nytorch.fuse: particles of one species with different layouts (dtypes/devices/shapes): "
        f"{type(a).__name__} and {type(b).__name__}; convert them alike (e.g. .to(dtype)) first"
    )


def fuse(fn: Callable) -> Fused:
    """Turn ``fn`` (particles and numbers in, traced values out) into one fused kernel.

    >>> import torch, nytorch as nyto
    >>> ema = nyto.fuse(lambda avg, new, d: d * avg + (1 - d) * new)
    >>> class P(nyto.NytoModule):
    ...     def __init__(self):
    ...         super().__init__(); self.w = torch.nn.Parameter(torch.zeros(4))
    >>> avg = P(); new = avg + 1
    >>> _ = ema(avg, new, 0.9, out=avg); avg.w.data
    tensor([0.1000, 0.1000, 0.1000, 0.1000])
    """
    if isinstance(fn, Fused):
        return fn
    if not callable(fn):
        raise TypeError(f"nytorch.fuse: expected a function, got {type(fn).__name__}")
    return Fused(fn)


# ---------------------------------------------------------------------------
# Functions usable inside fused functions. Outside one, on particles they run
# as a one-op fused call; on numbers they compute the number.
_EAGER: Dict[str, Fused] = {}


def _dispatch(op: str, *args: Any):
    if any(type(a) is Node for a in args):
        return apply(op, *args)
    if any(isinstance(a, NytoModule) for a in args):
        f = _EAGER.get(op)
        if f is None:
            f = _EAGER[op] = Fused(lambda *xs, _op=op: apply(_op, *xs))
            f.__name__ = f"nytorch.{op}"
        return f(*args)
    nums = []
    for a in args:
        n = _number(a)
        if n is None:
            raise TypeError(f"nytorch.{op}: arguments are particles, numbers or traced values, got {type(a).__name__}")
        nums.append(float(n))
    return scalar_eval(op, *nums)


def rand_like(x: Any):
    """Uniform [0, 1) values shaped like particle ``x``: inside a fused function
    generated in the kernel (Philox4x32-10, see the module docstring); outside
    one, ``x.rand()``."""
    if isinstance(x, NytoModule):
        return x.rand()
    return random_node("rand", x)


def randn_like(x: Any):
    """Standard normal values shaped like particle ``x`` (Box-Muller on Philox
    in a fused function; ``x.randn()`` outside one)."""
    if isinstance(x, NytoModule):
        return x.randn()
    return random_node("randn", x)


def where(cond: Any, a: Any, b: Any):
    """``a`` where ``cond`` is nonzero (e.g. a mask ``x > 0``), else ``b``."""
    return _dispatch("where", cond, a, b)


def minimum(a: Any, b: Any):
    """Elementwise minimum (``torch.minimum``: NaN if either is NaN)."""
    return _dispatch("min", a, b)


def maximum(a: Any, b: Any):
    """Elementwise maximum (``torch.maximum``: NaN if either is NaN)."""
    return _dispatch("max", a, b)


def clamp(x: Any, min: Any = None, max: Any = None):  # noqa: A002
    """``torch.clamp(x, min, max)`` = ``minimum(maximum(x, min), max)``; bounds are numbers or particles."""
    args = (x, min, max)
    if any(type(a) is Node for a in args):
        return _clamp(x, min, max)
    if min is None and max is None:
        raise FuseError("nytorch.clamp: needs min or max")
    if any(isinstance(a, NytoModule) for a in args):
        if min is None:
            return _dispatch("min", x, max)
        if max is None:
            return _dispatch("max", x, min)
        return _CLAMP(x, min, max)
    return _clamp_number(x, min, max)


_CLAMP = Fused(lambda x, lo, hi: _clamp(x, lo, hi))
_CLAMP.__name__ = "nytorch.clamp"


def _clamp_number(x, lo, hi):
    out = float(x)
    if lo is not None:
        out = scalar_eval("max", out, float(lo))
    if hi is not None:
        out = scalar_eval("min", out, float(hi))
    return out


def lerp(start: Any, end: Any, weight: Any):
    """``torch.lerp``: ``start + weight * (end - start)`` (torch's two-branch
    rounding; the weight may be a number or a particle)."""
    return _dispatch("lerp", start, end, weight)


def fma(a: Any, b: Any, c: Any):
    """Fused multiply-add ``a * b + c`` with one rounding (CPU AVX2 and CUDA;
    the portable CPU build calls ``std::fma``)."""
    return _dispatch("fma", a, b, c)


def hypot(a: Any, b: Any):
    """``torch.hypot``: ``sqrt(a**2 + b**2)`` without overflow (each a particle or a number)."""
    return _dispatch("hypot", a, b)


def sqrt(x: Any):
    """Elementwise square root."""
    return _dispatch("sqrt", x)


def exp(x: Any):
    """Elementwise exponential."""
    return _dispatch("exp", x)


def log(x: Any):
    """Elementwise natural logarithm."""
    return _dispatch("log", x)


def sign(x: Any):
    """Elementwise sign: -1, 0 or 1 (0 for NaN, like torch.sign)."""
    return _dispatch("sign", x)


def abs(x: Any):  # noqa: A001
    """Elementwise absolute value (``abs(x)`` works too)."""
    return _dispatch("abs", x)


# ---------------------------------------------------------------------------
# Fake kernels of torch.ops.nytorch.fused / fused_ (FakeTensor, torch.compile, opcheck).
def _fake_fused(program, numbers, inputs, seed, offset=0):
    n_in, n_out = program[1], program[2]
    if n_in < 1 or len(inputs) % n_in:
        raise RuntimeError("nytorch.fused: inputs are not a whole number of groups")
    ng = len(inputs) // n_in
    return [
        torch.empty_like(inputs[g * n_in], memory_format=torch.contiguous_format)
        for g in range(ng)
        for _ in range(n_out)
    ]


def _fake_fused_(program, numbers, inputs, out, seed, offset=0):
    return None


torch.library.register_fake("nytorch::fused")(_fake_fused)
torch.library.register_fake("nytorch::fused_")(_fake_fused_)

# `nytorch.fuse` is this function (the package exports it); its helpers hang
# on it, so `nytorch.fuse.run_flat`, `nytorch.fuse.program` work as documented.
for _name, _value in (
    ("Fused", Fused),
    ("FuseError", FuseError),
    ("Program", Program),
    ("program", program),
    ("run_flat", run_flat),
    ("run_rows", run_rows),
    ("random_state", random_state),
):
    setattr(fuse, _name, _value)
