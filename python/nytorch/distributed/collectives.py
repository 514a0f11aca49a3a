"""The collectives of :mod:`nytorch.distributed` on a particle or a swarm:
``all_reduce_``, ``broadcast_``, ``all_gather`` and ``check_species``.
"""

from __future__ import annotations

import math
import numbers
from functools import partial
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist

from ..particle import NytoModule
from ..storage import flat_storage
from ..swarm import Swarm
from .core import (
    Handle,
    all_gather_flat,
    buckets,
    check_devices,
    check_signature,
    launch,
    particle_lines,
    particle_signature,
    require_group,
    small_device,
)

Weights = Union[float, Sequence[float], torch.Tensor, None]


# ---------------------------------------------------------------------------
# What a collective works on
class _Target:
    """The buffers of a particle or swarm and what identifies their layout."""

    def __init__(self, obj: Any, flats: List[torch.Tensor], species: Any, sig: Tuple, lines) -> None:
        self.obj = obj
        self.flats = flats
        self.species = species
        self.sig = sig
        self.lines = lines


def _target(what: str, x: Any) -> _Target:
    if isinstance(x, NytoModule):
        return _Target(x, flat_storage(x).flats, x._nyto_species, particle_signature(x), lambda: particle_lines(x))
    t = swarm_target(x)
    if t is not None:
        return _Target(*t)
    raise TypeError(
        f"nytorch.distributed.{what}: expected a particle (nytorch.NytoModule) or a swarm, got {type(x).__name__}"
    )


def _prepare(what: str, x: Any, group: Optional[Any], timeout: Optional[float]) -> Tuple[_Target, int, int]:
    rank, world = require_group(what, group)
    t = _target(what, x)
    check_devices(what, t.flats, group)
    check_signature(what, t.species, t.sig, t.lines, group, timeout=timeout)
    return t, rank, world


def check_species(particle_or_swarm: Any, group: Optional[Any] = None, timeout: Optional[float] = None) -> None:
    """Check that every rank of ``group`` holds a particle (or swarm) of the
    same structure: classes, parameter names, shapes and dtypes. A collective
    over all ranks (one 8-byte all-gather); raises
    :class:`SpeciesMismatchError` on every rank naming the first difference.

    Collectives run it automatically the first time a species meets a group;
    call it at setup to fail early::

        nd.check_species(net)
    """
    rank, world = require_group("check_species", group)
    t = _target("check_species", particle_or_swarm)
    check_signature("check_species", t.species, t.sig, t.lines, group, force=True, timeout=timeout)


# ---------------------------------------------------------------------------
# all_reduce_
def _coefficients(
    what: str, weights: Weights, op: str, rank: int, world: int
) -> Tuple[Optional[float], Optional[float], bool]:
    """(this rank's factor, the total weight if known locally, whether the
    total must be summed across ranks). Raises before anything is written."""
    if weights is None:
        return None, (float(world) if op == "mean" else None), False
    if isinstance(weights, torch.Tensor):
        weights = weights.item() if weights.dim() == 0 else weights.tolist()
    if isinstance(weights, numbers.Real) and not isinstance(weights, bool):
        w = float(weights)
        _check_weight(what, w, "weights")
        return w, None, op == "mean"
    try:
        ws = [float(v) for v in weights]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise TypeError(
            f"nytorch.distributed.{what}: weights must be a number (this rank's weight) or a "
            f"sequence of one number per rank, got {type(weights).__name__}"
        ) from None
    if len(ws) != world:
        raise ValueError(
            f"nytorch.distributed.{what}: weights has {len(ws)} entries but the group has "
            f"{world} ranks (give one weight per rank, or this rank's weight as a number)"
        )
    for i, v in enumerate(ws):
        _check_weight(what, v, f"weights[{i}]")
    total = math.fsum(ws)
    if op == "mean" and total <= 0:
        raise ValueError(
            f"nytorch.distributed.{what}: the weights sum to {total}; a weighted mean needs a positive total"
        )
    return ws[rank], (total if op == "mean" else None), False


def _check_bucket_bytes(what: str, bucket_bytes: Optional[int]) -> None:
    if bucket_bytes is not None and (
        isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, int) or bucket_bytes <= 0
    ):
        raise ValueError(f"nytorch.distributed.{what}: bucket_bytes must be a positive int, got {bucket_bytes!r}")


def _check_weight(what: str, w: float, name: str) -> None:
    if not math.isfinite(w) or w < 0:
        raise ValueError(f"nytorch.distributed.{what}: {name} must be finite and >= 0, got {w}")


def all_reduce_(
    particle_or_swarm: Any,
    op: str = "mean",
    weights: Weights = None,
    group: Optional[Any] = None,
    async_op: bool = False,
    timeout: Optional[float] = None,
    bucket_bytes: Optional[int] = None,
) -> Any:
    """Reduce a particle (or swarm) over the ranks of ``group``, in place.

    ``op="mean"``: every rank ends with the mean of all ranks' parameters;
    with ``weights`` the weighted mean ``sum_r w_r * p_r / sum_r w_r``
    (FedAvg: ``weights=len(local_data)``; model soups). ``op="sum"``: the
    (weighted) sum. ``weights`` is this rank's weight (a number; the total is
    summed across ranks alongside the data) or one number per rank (the same
    sequence on every rank). Returns the particle, or a :class:`Handle`
    whose ``wait()`` finishes the division and returns it when ``async_op``.
    ``timeout`` (seconds) bounds each wait; default: the group's timeout.
    ``bucket_bytes`` caps one message (default :data:`BUCKET_BYTES`).

    ::

        nd.all_reduce_(net)                         # mean over ranks
        nd.all_reduce_(net, weights=len(shard))     # FedAvg
        nd.all_reduce_(net, op="sum")

    Bad input (unknown op, wrong weights, integer parameters for a mean)
    raises before anything is written or sent.
    """
    what = "all_reduce_"
    if op not in ("mean", "sum"):
        raise ValueError(f"nytorch.distributed.{what}: op must be 'mean' or 'sum', got {op!r}")
    rank, world = require_group(what, group)
    t = _target(what, particle_or_swarm)
    if op == "mean":
        for f in t.flats:
            if not (f.is_floating_point() or f.is_complex()):
                raise TypeError(
                    f"nytorch.distributed.{what}: op='mean' needs floating-point parameters, "
                    f"but a parameter group is {f.dtype}; use op='sum'"
                )
    coef, total, sum_total = _coefficients(what, weights, op, rank, world)
    _check_bucket_bytes(what, bucket_bytes)
    check_devices(what, t.flats, group)
    check_signature(what, t.species, t.sig, t.lines, group, timeout=timeout)

    works: List[Tuple[Any, Any]] = []
    divisor: List[Optional[float]] = [total]
    if sum_total:  # this rank's weight only: sum the weights with the data
        wt = torch.tensor([coef], dtype=torch.float64, device=small_device(group))

        def got_total() -> None:
            total_w = wt.item()
            divisor[0] = total_w
            if not total_w > 0:
                raise ValueError(
                    f"nytorch.distributed.{what}: the weights of all ranks sum to {total_w}; "
                    "a weighted mean needs a positive total (the parameters now hold 0)"
                )

        works.append((launch(what, lambda: dist.all_reduce(wt, group=group, async_op=True)), got_total))
    for f in t.flats:
        for b in buckets(f, bucket_bytes):
            if coef is not None and coef != 1.0:
                b.mul_(coef)
            work = launch(what, partial(dist.all_reduce, b, op=dist.ReduceOp.SUM, group=group, async_op=True))
            after = None if divisor[0] is None and not sum_total else (lambda b=b: b.div_(divisor[0]))
            works.append((work, after))
    return _finish(Handle(what, works, lambda: particle_or_swarm, timeout), async_op)


def _finish(handle: Handle, async_op: bool) -> Any:
    return handle if async_op else handle.wait()


# ---------------------------------------------------------------------------
# broadcast_
def broadcast_(
    particle_or_swarm: Any,
    src: int,
    group: Optional[Any] = None,
    async_op: bool = False,
    timeout: Optional[float] = None,
    bucket_bytes: Optional[int] = None,
) -> Any:
    """Copy rank ``src``'s parameters into the particle (or swarm) of every
    rank, in place (``src`` is a global rank, as in ``torch.distributed``).
    Returns the particle, or a :class:`Handle` when ``async_op``::

        nd.broadcast_(net, src=0)     # every rank starts from rank 0's values
    """
    what = "broadcast_"
    rank, world = require_group(what, group)
    if isinstance(src, bool) or not isinstance(src, numbers.Integral):
        raise TypeError(f"nytorch.distributed.{what}: src must be a rank (int), got {type(src).__name__}")
    if not 0 <= int(src) < dist.get_world_size():
        raise ValueError(f"nytorch.distributed.{what}: src={src} is not a rank (world size {dist.get_world_size()})")
    if group is not None and int(src) not in dist.get_process_group_ranks(group):
        raise ValueError(f"nytorch.distributed.{what}: src={src} is not a member of the group")
    _check_bucket_bytes(what, bucket_bytes)
    t = _target(what, particle_or_swarm)
    check_devices(what, t.flats, group)
    check_signature(what, t.species, t.sig, t.lines, group, timeout=timeout)
    works = [
        (launch(what, lambda b=b: dist.broadcast(b, int(src), group=group, async_op=True)), None)
        for f in t.flats
        for b in buckets(f, bucket_bytes)
    ]
    return _finish(Handle(what, works, lambda: particle_or_swarm, timeout), async_op)


# ---------------------------------------------------------------------------
# all_gather
def all_gather(
    particle_or_swarm: Any, group: Optional[Any] = None, async_op: bool = False, timeout: Optional[float] = None
) -> Any:
    """Every rank's particle, on every rank, in rank order: a
    :class:`nytorch.Swarm` of ``world`` particles of the local species (its
    buffers are copies of the local particle's); a swarm input gives the swarm
    of all ranks' rows (``world * n``). A :class:`Handle` when ``async_op``::

        everyone = nd.all_gather(net)      # everyone[r] holds rank r's values
    """
    what = "all_gather"
    t, rank, world = _prepare(what, particle_or_swarm, group, timeout)
    outs = [torch.empty((world,) + tuple(f.shape), dtype=f.dtype, device=f.device) for f in t.flats]
    works = [
        (launch(what, partial(all_gather_flat, o, f.contiguous(), group, True)), None) for o, f in zip(outs, t.flats)
    ]
    return _finish(Handle(what, works, lambda: _gathered(t, outs, world), timeout), async_op)


def _gathered(t: _Target, outs: List[torch.Tensor], world: int) -> Any:
    if isinstance(t.obj, NytoModule):
        return swarm_from_rows(t.obj, outs)
    return gathered_swarm(t.obj, outs)


# ---------------------------------------------------------------------------
# Swarms (their stacked buffers)
def swarm_signature(swarm: Any) -> Tuple:
    return ("swarm", len(swarm), particle_signature(swarm.template))


def swarm_target(x: Any) -> Optional[Tuple]:
    """(obj, flats, species, signature, lines) of a Swarm (or ShardedSwarm's
    local rows), or None for anything else."""
    if not isinstance(x, Swarm):
        return None
    for g, f in enumerate(x.flats):
        if not f.is_contiguous():
            raise ValueError(
                f"nytorch.distributed: swarm flats[{g}] is not contiguous (a strided sub-swarm); "
                "use swarm.clone() first"
            )
    t = x.template
    return (x, list(x.flats), x.species, swarm_signature(x), lambda: [f"swarm of {len(x)}"] + particle_lines(t))


def swarm_from_rows(particle: NytoModule, rows: List[torch.Tensor]) -> Any:
    """A Swarm of ``particle``'s species around ``rows`` ([world, numel] per group)."""
    return Swarm.from_flats(particle, rows)


def gathered_swarm(swarm: Any, outs: List[torch.Tensor]) -> Any:
    """All ranks' rows ([world, n, numel] per group) as one swarm of world*n."""
    flats = [o.view(-1, o.shape[-1]) for o in outs]
    return swarm.__class__.from_flats(swarm.template, flats)


__all__ = ["all_reduce_", "broadcast_", "all_gather", "check_species"]
