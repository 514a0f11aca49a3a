"""``Swarm``: N particles of one species in stacked storage.

A swarm keeps one ``[N, numel]`` buffer per (device, dtype) group of its
species' layout (``swarm.flats``; row ``i`` is particle ``i``'s flat buffer in
the layout order of :mod:`nytorch._storage`) and one ``[N, *shape]`` tensor per
buffer (``swarm.buffers``: BatchNorm statistics stay per particle).

>>> import torch, nytorch as nyto
>>> class Net(nyto.NytoModule):
...     def __init__(self):
...         super().__init__()
...         self.lin = torch.nn.Linear(3, 2)
...     def forward(self, x):
...         return self.lin(x)
>>> _ = torch.manual_seed(0)
>>> swarm = nyto.Swarm(Net(), 8, init="randn")
>>> swarm.flats[0].shape                       # 8 particles x 8 parameters
torch.Size([8, 8])
>>> p = swarm[3]                               # a particle viewing row 3
>>> p.lin.bias.data_ptr() == swarm.flats[0][3, 6:].data_ptr()
True
>>> swarm = 0.5 * swarm + swarm[0]             # particle ops, broadcast
>>> swarm(torch.ones(5, 3)).shape              # every particle's forward at once
torch.Size([8, 5, 2])

Contract for sharding (``nytorch.distributed``) and other low-level users:

- ``swarm.flats``: list of the stacked parameter buffers, one per group, in
  ``swarm.groups`` order (``(device, dtype, numel)``); each is ``[N, numel]``
  with contiguous rows (``stride(1) == 1``). Writing them writes the particles.
- ``swarm.buffers``: list of ``[N, *shape]`` buffer stacks, in
  ``swarm.buffer_names`` order; ``swarm.param_names`` names the parameters
  (one name per unique parameter, layout order).
- ``Swarm.from_flats(template, flats, buffers=None)`` builds a swarm around
  given stacked buffers without copying (e.g. the local shard of a sharded
  swarm): ``template`` is a particle of the species; ``flats[g]`` must be
  ``[n, numel_g]`` of group g's dtype and device with contiguous rows.
- ``swarm.template`` is the swarm's private particle of the species (its
  structure, species and train/eval mode); ``swarm[a:b]`` is a zero-copy
  sub-swarm (a shard), ``swarm.gather(index)`` / ``swarm.scatter_(index, src)``
  move rows.

Layout of this package (dependencies point one way, towards ``core``):

- :mod:`nytorch.swarm.core`: ``SwarmCore``, the stacked storage, rows,
  particles, indexing, copies, checkpoints;
- :mod:`nytorch.swarm.arithmetic`: ``SwarmArithmetic(SwarmCore)``, operators and reductions;
- :mod:`nytorch.swarm.forward`: ``SwarmForward(SwarmCore)``, the vectorized forward;
- :mod:`nytorch.swarm.fused`: ``SwarmFusing``, a mix-in for ``Swarm.fused(fn)``;
- here: :class:`Swarm`, the class assembled from them (no module above imports it).
"""

from __future__ import annotations

from .arithmetic import SwarmArithmetic
from .forward import SwarmForward
from .fused import SwarmFusing


class Swarm(SwarmArithmetic, SwarmForward, SwarmFusing):
    """N particles of one species in stacked storage.

    ``Swarm(net, n, init="clone")`` builds ``n`` particles shaped like the
    particle ``net`` (a :class:`NytoModule`) in one go. ``init``:

    - ``"clone"``: every particle holds ``net``'s values;
    - ``"randn"`` / ``"rand"``: standard normal / uniform [0, 1) parameters
      (like ``net.randn()``; honours ``generator`` and ``torch.manual_seed``);
    - ``"perturb"``: ``net``'s values plus ``scale`` times standard normal noise;
    - ``"zeros"``;
    - a callable ``init(i) -> nn.Module`` whose parameters (and buffers) have
      ``net``'s names and shapes (e.g. ``lambda i: Net()`` for freshly
      initialized networks): its values are copied into row ``i``.

    Buffers start as copies of ``net``'s (or of the callable's results).

    >>> s = nyto.Swarm(Net(), 4, init="zeros"); len(s), float(s.flats[0].abs().sum())
    (4, 0.0)
    """


__all__ = ["Swarm"]
