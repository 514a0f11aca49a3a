"""Public read access to a particle's storage: :func:`flat_storage` and
:func:`structure_signature`.

A particle keeps its parameters as views into one flat 1-D buffer per
(device, dtype) group (the *flats*), so code that works on whole particles
(optimizers, collectives, checkpoints) can touch every parameter with one
tensor op per group:

>>> import torch, nytorch as nyto
>>> class Net(nyto.NytoModule):
...     def __init__(self):
...         super().__init__()
...         self.lin = torch.nn.Linear(3, 2)
>>> net = Net()
>>> st = nyto.flat_storage(net)
>>> [f.shape for f in st.flats], st.groups
([torch.Size([8])], [(device(type='cpu'), torch.float32, 8)])
>>> _ = st.flats[0].zero_()          # writes every parameter, in place
>>> net.lin.bias.tolist()
[0.0, 0.0]

This module is the supported way in; ``nytorch._storage`` (which it reads)
is the implementation and may change.
"""

from __future__ import annotations

from typing import Any, List, NamedTuple, Tuple

import torch

from ._storage import state_of
from .particle import NytoModule


class FlatStorage(NamedTuple):
    """A particle's storage as :func:`flat_storage` returns it.

    - ``flats``: one contiguous 1-D tensor per (device, dtype) group; every
      parameter of the particle is a view into one of them, in layout order
      (``named_parameters()`` order, a tied parameter once). Writing a flat
      writes the parameters (and the other way round).
    - ``buffers``: the particle's buffers (BatchNorm statistics), each once,
      in ``named_buffers()`` order: the module's own tensors, not copies.
    - ``groups``: ``(device, dtype, numel)`` of each flat.
    """

    flats: List[torch.Tensor]
    buffers: List[torch.Tensor]
    groups: List[Tuple[torch.device, torch.dtype, int]]


def _particle(particle: Any, what: str) -> NytoModule:
    if not isinstance(particle, NytoModule):
        raise TypeError(f"nytorch.{what}: expected a particle (nytorch.NytoModule), got {type(particle).__name__}")
    return particle


def flat_storage(particle: NytoModule) -> FlatStorage:
    """The flat parameter buffers, buffers and groups of ``particle`` (see
    :class:`FlatStorage`); no copy.

    The flats stay the particle's storage until its structure changes (a
    parameter added, deleted or replaced, ``.to()``, ``p.data = ...``): call
    ``flat_storage`` again after such a change rather than keeping the
    tensors (the call re-captures the particle, copying its parameters into
    new flats when they no longer tile one buffer).
    """
    st = state_of(_particle(particle, "flat_storage"))
    return FlatStorage(list(st.flats), list(st.buffers), list(st.layout.groups))


def structure_signature(particle: NytoModule) -> Tuple:
    """What must agree for two particles' flats to line up element for
    element: the module classes and tree, the parameter slots (ties
    included), shapes, dtypes and device types (not device indices: ranks
    use different GPUs). A tuple of strings, ints and tuples, equal across
    processes for equal structures (``nytorch.distributed`` compares a hash
    of its ``repr`` across ranks); treat its contents as opaque.

    >>> structure_signature(Net()) == structure_signature(Net())
    True
    """
    st = state_of(_particle(particle, "structure_signature"))
    lay = st.layout
    classes = (type(particle).__qualname__,) + tuple(type(m).__qualname__ for m in st.modules)
    groups = tuple((str(dt), torch.device(dev).type, n) for dev, dt, n in lay.groups)
    return ("particle", classes, lay.children, lay.param_slots, lay.view_spec, groups)


__all__ = ["FlatStorage", "flat_storage", "structure_signature"]
