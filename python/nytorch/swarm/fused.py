"""``nytorch.fuse`` functions applied to swarms: ``Swarm.fused(fn)`` (the
``SwarmFusing`` mix-in of the assembled class).

A fused function written for particles (``@nyto.fuse`` or a plain function of
particles and numbers) runs on swarms as ONE fused kernel per group over the
stacked ``[N, numel]`` buffers (``nytorch.fuse.run_flat``): every swarm
argument is one input, numbers are passed at run time (no retrace).

>>> import torch, nytorch as nyto
>>> class P(nyto.NytoModule):
...     def __init__(self):
...         super().__init__()
...         self.w = torch.nn.Parameter(torch.zeros(3))
>>> a = nyto.Swarm(P(), 4, init="zeros"); b = a + 1
>>> axpy = nyto.Swarm.fused(lambda x, y, s: x + s * y)
>>> axpy(a, b, 2.0).flats[0][0].tolist()          # a new swarm
[2.0, 2.0, 2.0]
>>> _ = axpy(a, b, 0.5, out=a); a.flats[0][3].tolist()   # in place
[0.5, 0.5, 0.5]
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .._fuse.api import program, run_flat
from ..particle import _number
from .core import SwarmCore, check_species


class SwarmFused:
    """A function of particles and numbers, run on swarms as one fused pass."""

    def __init__(self, fn: Callable) -> None:
        self.fn = getattr(fn, "fn", fn)  # a nytorch.fuse.Fused: its traced function
        self.programs: Dict[str, Any] = {}
        self.__name__ = getattr(self.fn, "__name__", "fused")

    def _program(self, kinds: str):
        prog = self.programs.get(kinds)
        if prog is None:
            prog = self.programs[kinds] = program(self.fn, kinds)
        return prog

    def __call__(self, *args: Any, out: Union[None, Any, Sequence[Any]] = None, seed: Optional[int] = None):
        kinds, nums, swarms = [], [], []
        for a in args:
            if isinstance(a, SwarmCore):
                kinds.append("p")
                swarms.append(a)
                continue
            n = _number(a)
            if n is None:
                raise TypeError(
                    f"Swarm.fused({self.__name__}): arguments are swarms of one species or "
                    f"numbers, got {type(a).__name__} (expand a particle with Swarm(p, n))"
                )
            kinds.append("n")
            nums.append(n)
        if not swarms:
            raise TypeError(f"Swarm.fused({self.__name__}): needs at least one swarm argument")
        first = swarms[0]
        for s in swarms[1:]:
            check_species(first, s)
            if len(s) != len(first):
                raise ValueError(
                    f"Swarm.fused({self.__name__}): swarms of different lengths ({len(first)} and {len(s)})"
                )
        for s in swarms:
            if not all(f.is_contiguous() for f in s.flats):
                raise ValueError(f"Swarm.fused({self.__name__}): swarms must be contiguous (use .clone())")
        prog = self._program("".join(kinds))
        inputs = [s.flats for s in swarms]
        if out is None:
            outs = [[torch.empty_like(f) for f in first.flats] for _ in range(prog.n_out)]
            run_flat(prog, inputs, nums, out=outs, seed=seed)
            res = tuple(first._new(o, [b.clone() for b in first.buffers]) for o in outs)
            return res[0] if prog.single else res
        targets: Tuple[Any, ...] = (out,) if isinstance(out, SwarmCore) else tuple(out)
        if len(targets) != prog.n_out:
            raise TypeError(f"Swarm.fused({self.__name__}): {prog.n_out} outputs, out= gives {len(targets)}")
        for t in targets:
            if not isinstance(t, SwarmCore):
                raise TypeError(f"Swarm.fused: out= takes swarms, got {type(t).__name__}")
            check_species(first, t)
            if len(t) != len(first) or not all(f.is_contiguous() for f in t.flats):
                raise ValueError("Swarm.fused: out= swarms must have the same length and be contiguous")
        run_flat(prog, inputs, nums, out=[t.flats for t in targets], seed=seed)
        return out


def fused(fn: Callable) -> SwarmFused:
    """``fn`` (particles and numbers in, values out; or a ``nytorch.fuse`` function)
    as a function on swarms, one fused pass per call."""
    return SwarmFused(fn)


class SwarmFusing:
    """``Swarm.fused(fn)``."""

    @staticmethod
    def fused(fn: Callable) -> SwarmFused:
        """``fn`` (a ``nytorch.fuse`` function, or any function of particles and
        numbers) as a function on swarms: one fused pass over the stacked
        buffers per call, ``out=`` for in place (see :mod:`nytorch.swarm.fused`).

        >>> s = nyto.Swarm(Net(), 3, init="zeros")
        >>> nyto.Swarm.fused(lambda x, a: x + a)(s, 1.5).flats[0][0, :2].tolist()
        [1.5, 1.5]
        """
        return SwarmFused(fn)


__all__: List[str] = ["SwarmFused", "SwarmFusing", "fused"]
