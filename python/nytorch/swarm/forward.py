"""Vectorized evaluation of a :class:`nytorch.Swarm` (the ``SwarmForward``
mix-in of the assembled class): every particle's forward
in one ``torch.func.vmap`` of ``torch.func.functional_call`` over the stacked
parameter views (zero-copy) and buffer stacks. In train mode BatchNorm writes
its running statistics into each particle's row of the buffer stacks.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from torch.func import functional_call, vmap

from .core import SwarmCore


def _in_dims(args: Tuple[Any, ...], kwargs: Dict[str, Any], per_particle: bool, n: int):
    def dim(x, where):
        if not isinstance(x, torch.Tensor) or not per_particle:
            return None
        if x.dim() == 0 or x.shape[0] != n:
            raise ValueError(
                f"swarm forward with per_particle=True: {where} must have a leading dim of "
                f"size N = {n}, got shape {list(x.shape)}"
            )
        return 0

    return tuple(dim(a, f"argument {k}") for k, a in enumerate(args)), {
        k: dim(v, f"keyword {k!r}") for k, v in kwargs.items()
    }


def vmap_forward(
    swarm: SwarmCore, args: Tuple[Any, ...], kwargs: Dict[str, Any], per_particle: bool, chunk_size: Optional[int]
) -> Any:
    """``torch.stack([swarm[i](*args_i, **kwargs_i) for i in range(N)])``, vectorized."""
    n = len(swarm)
    if n == 0:
        raise ValueError("forward of an empty swarm")
    arg_dims, kw_dims = _in_dims(args, kwargs, per_particle, n)
    params = swarm.stacked_parameters()
    buffers = swarm.stacked_buffers()
    template = swarm.template
    keys = tuple(kwargs)

    def one(p, b, *a):
        pos, kw = a[: len(args)], dict(zip(keys, a[len(args) :]))
        return functional_call(template, (p, b), pos, kw, tie_weights=True, strict=False)

    in_dims = (0, 0) + arg_dims + tuple(kw_dims[k] for k in keys)
    f = vmap(one, in_dims=in_dims, randomness="different", chunk_size=chunk_size)
    return f(params, buffers, *args, *(kwargs[k] for k in keys))


class SwarmForward(SwarmCore):
    """Every particle's forward at once: ``swarm(x)``."""

    def forward(self, *args: Any, per_particle: bool = False, chunk_size: Optional[int] = None, **kwargs: Any) -> Any:
        """Every particle's forward at once (``torch.func.functional_call`` under
        ``torch.func.vmap``): results are stacked along a new leading dim of size N.

        Tensor arguments are the same for every particle, or with
        ``per_particle=True`` carry a leading dim of size N (particle i gets
        ``x[i]``). ``chunk_size`` (default ``swarm.chunk_size``, None: all at once)
        runs that many particles per vmapped call to bound memory. In train mode,
        BatchNorm updates each particle's own statistics.

        >>> s = nyto.Swarm(Net(), 4, init="randn"); x = torch.randn(4, 6, 3)
        >>> y = s(x, per_particle=True); torch.allclose(y[2], s[2](x[2]))
        True
        """
        return vmap_forward(self, args, kwargs, per_particle, self.chunk_size if chunk_size is None else chunk_size)

    __call__ = forward


__all__ = ["SwarmForward", "vmap_forward"]
