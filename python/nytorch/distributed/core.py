"""The core of :mod:`nytorch.distributed`: the process group (``init``,
``device``, ``barrier``) and the plumbing every collective shares:
process-group checks, buckets, work handles with timeouts, species
signatures. Nothing here talks to a process group at import time.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import socket
import weakref
from typing import Any, Callable, List, Optional, Sequence, Set, Tuple

import torch
import torch.distributed as dist

from ..errors import CollectiveError, SpeciesError
from ..particle import NytoModule
from ..storage import structure_signature

# Largest message of one collective, in bytes. A particle's flat buffer is cut
# into contiguous slices of at most this size (zero-copy views): the
# collectives of a big particle are queued together and post-processing of a
# finished slice (the division of a mean) overlaps the transfer of the next.
# 16 MiB: on gloo/loopback (benchmarks/bench_distributed.py --buckets, a
# ResNet-18-sized particle of 46.8 MB, noisy shared machine) 4-16 MiB were
# the fastest in every run, ~5% ahead of 32 MiB; one 46.8 MB message ranged
# from 12% faster to 15% slower; 1 MiB was 20-30% slower (round trips).
# NCCL pipelines inside each message, so there the size only bounds one call.
BUCKET_BYTES = 16 << 20

DEFAULT_TIMEOUT_S = 300.0


# Ranks holding particles of different structure (shapes, dtypes, classes):
# the one species error of nytorch (an AssertionError, like particles').
SpeciesMismatchError = SpeciesError


# ---------------------------------------------------------------------------
# Process group
def require_group(what: str, group: Optional[Any]) -> Tuple[int, int]:
    """(rank, world size) in ``group``; a clear error without a process group."""
    if not dist.is_available():
        raise RuntimeError(f"nytorch.distributed.{what}: this torch build has no torch.distributed")
    if not dist.is_initialized():
        raise RuntimeError(
            f"nytorch.distributed.{what}: no process group is initialised; call "
            "nytorch.distributed.init() (or torch.distributed.init_process_group) first, e.g. in a "
            "script launched with `torchrun --nproc-per-node=2 script.py`"
        )
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError(
            f"nytorch.distributed.{what}: this process (global rank {dist.get_rank()}) "
            "is not a member of the given group"
        )
    return rank, dist.get_world_size(group)


def backend_of(group: Optional[Any]) -> str:
    return str(dist.get_backend(group)).lower()


def small_device(group: Optional[Any]) -> torch.device:
    """Where small bookkeeping tensors (signatures, fitness values) live: the
    current CUDA device for NCCL, the CPU otherwise."""
    if "nccl" in backend_of(group):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def check_devices(what: str, flats: Sequence[torch.Tensor], group: Optional[Any]) -> None:
    if "nccl" in backend_of(group):
        for f in flats:
            if f.device.type != "cuda":
                raise ValueError(
                    f"nytorch.distributed.{what}: the NCCL backend needs CUDA tensors, but a "
                    f"parameter group is on {f.device}; move the particle with .cuda() first"
                )


# ---------------------------------------------------------------------------
# Setup
def init(backend: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT_S, **kwargs: Any) -> Tuple[int, int]:
    """Initialise the default process group and return ``(rank, world_size)``.

    Under torchrun (``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` in the
    environment) this is ``torch.distributed.init_process_group`` with the
    given ``timeout`` in seconds (every collective of the group fails after
    it instead of hanging) and ``backend`` defaulting to NCCL when CUDA is
    available (the rank's device is set from ``LOCAL_RANK``), else gloo.
    Without torchrun it starts a one-process group on 127.0.0.1, so the same
    script also runs as ``python script.py``. Already initialised: returns
    the current group's rank and size.
    """
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if "RANK" not in os.environ and "init_method" not in kwargs and "store" not in kwargs:
        kwargs.update(init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout), **kwargs)
    return dist.get_rank(), dist.get_world_size()


def device() -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` under NCCL, else the CPU."""
    if dist.is_initialized() and "nccl" in str(dist.get_backend()).lower():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier(group: Optional[Any] = None, timeout: Optional[float] = None) -> None:
    """A barrier that names the missing ranks: ``monitored_barrier`` on gloo
    (raises :class:`CollectiveError` naming the rank that did not arrive
    within ``timeout`` seconds), a plain barrier on NCCL."""
    require_group("barrier", group)
    try:
        if "gloo" in str(dist.get_backend(group)).lower():
            td = None if timeout is None else datetime.timedelta(seconds=timeout)
            dist.monitored_barrier(group=group, timeout=td, wait_all_ranks=True)
        else:
            work = dist.barrier(group=group, async_op=True)
            wait_work("barrier", work, timeout)
    except RuntimeError as e:
        if isinstance(e, CollectiveError):
            raise
        raise CollectiveError(f"nytorch.distributed.barrier on rank {dist.get_rank()}: {e}") from e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------
# Buckets
def buckets(flat: torch.Tensor, bucket_bytes: Optional[int] = None) -> List[torch.Tensor]:
    """Contiguous views of ``flat`` (1-D, or [N, numel] rows flattened) of at
    most ``bucket_bytes`` (default :data:`BUCKET_BYTES`) each; one view when
    it fits."""
    if bucket_bytes is None:
        bucket_bytes = BUCKET_BYTES
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
    flat = flat.view(-1)
    n = flat.numel()
    step = max(1, bucket_bytes // max(1, flat.element_size()))
    if n <= step:
        return [flat]
    return [flat[i : i + step] for i in range(0, n, step)]


# ---------------------------------------------------------------------------
# Work handles
def _timedelta(timeout: Optional[float]) -> Optional[datetime.timedelta]:
    return None if timeout is None else datetime.timedelta(seconds=float(timeout))


def wrap_error(what: str, err: BaseException, timeout: Optional[float] = None) -> CollectiveError:
    msg = str(err)
    low = msg.lower()
    rank = dist.get_rank() if dist.is_initialized() else -1
    if "timed out" in low or "timeout" in low:
        why = (
            f"timed out{'' if timeout is None else f' after {timeout:g} s'} waiting for a peer: "
            "a rank is hung, dead or running different collectives"
        )
    elif "connection" in low or "closed" in low or "reset" in low or "broken pipe" in low:
        why = "a peer closed the connection: a rank died or left"
    else:
        why = "the collective failed"
    return CollectiveError(
        f"nytorch.distributed.{what} on rank {rank}: {why}. The process group is unusable now; "
        f"end the job. ({type(err).__name__}: {msg.splitlines()[0] if msg else ''})"
    )


def wait_work(what: str, work: Any, timeout: Optional[float]) -> None:
    try:
        if timeout is None:
            work.wait()
        else:
            work.wait(_timedelta(timeout))
    except RuntimeError as e:  # DistBackendError and gloo errors are RuntimeErrors
        raise wrap_error(what, e, timeout) from e


class Handle:
    """The work of an asynchronous collective (``async_op=True``).

    ``wait()`` blocks until every message arrived, then finishes the
    post-processing (the division of a mean, the assembly of a gather) and
    returns the result (the particle or swarm updated in place, or the
    gathered particles). Do not read or write the operands before ``wait()``.
    """

    def __init__(
        self,
        what: str,
        works: Sequence[Tuple[Any, Optional[Callable[[], None]]]],
        result: Callable[[], Any],
        timeout: Optional[float],
    ) -> None:
        self._what = what
        self._works = list(works)  # (work, after) per bucket; after runs once that bucket landed
        self._result = result
        self._timeout = timeout
        self._done = False
        self._value: Any = None

    def wait(self, timeout: Optional[float] = None) -> Any:
        """Finish the collective (at most ``timeout`` seconds per message,
        default: the one given at launch, else the process group's)."""
        if not self._done:
            t = self._timeout if timeout is None else timeout
            for work, after in self._works:
                if work is not None:
                    wait_work(self._what, work, t)
                if after is not None:
                    after()
            self._value = self._result()
            self._done = True
            self._works = []
        return self._value

    def is_completed(self) -> bool:
        """True once every message of the collective has arrived (``wait()``
        still has to be called for the post-processing)."""
        return self._done or all(w is None or w.is_completed() for w, _ in self._works)

    def __repr__(self) -> str:
        return f"<nytorch.distributed.Handle {self._what} done={self._done}>"


def launch(what: str, start: Callable[[], Any]) -> Any:
    try:
        return start()
    except RuntimeError as e:
        raise wrap_error(what, e) from e


# ---------------------------------------------------------------------------
# Species signatures
def particle_signature(net: NytoModule) -> Tuple:
    """What must agree across ranks for a particle's flats to line up
    (:func:`nytorch.structure_signature`)."""
    return structure_signature(net)


def signature_hash(sig: Tuple) -> int:
    digest = hashlib.sha256(repr(sig).encode()).digest()
    return int.from_bytes(digest[:8], "little", signed=True)


def first_difference(a: Sequence[str], b: Sequence[str]) -> str:
    return next((f"{x} vs {y}" for x, y in zip(a, b) if x != y), f"{len(a)} vs {len(b)} entries")


# species -> {(group key, signature hash)} already checked
_checked: weakref.WeakKeyDictionary[Any, Set[Tuple[int, int]]] = weakref.WeakKeyDictionary()


def _group_key(group: Optional[Any]) -> int:
    return id(group if group is not None else dist.group.WORLD)


def check_signature(
    what: str,
    species: Any,
    sig: Tuple,
    describe: Callable[[], List[str]],
    group: Optional[Any],
    force: bool = False,
    timeout: Optional[float] = None,
) -> None:
    """All-gather the 64-bit hash of ``sig``; raise SpeciesMismatchError on
    every rank when ranks differ. Runs once per (species, signature, group)
    unless ``force``."""
    h = signature_hash(sig)
    key = (_group_key(group), h)
    seen = _checked.get(species) if species is not None else None
    if not force and seen is not None and key in seen:
        return
    rank, world = require_group(what, group)
    dev = small_device(group)
    mine = torch.tensor([h], dtype=torch.int64, device=dev)
    allh = torch.empty(world, dtype=torch.int64, device=dev)
    wait_work(what, launch(what, lambda: _all_gather_flat(allh, mine, group, True)), timeout)
    hashes = allh.tolist()
    if any(x != hashes[0] for x in hashes):
        # Every rank saw the same hashes, so every rank takes this branch.
        lines = describe()
        gathered: List[Any] = [None] * world
        try:
            dist.all_gather_object(gathered, lines, group=group)
        except RuntimeError:  # the description is a courtesy; the mismatch is certain
            gathered = [None] * world
        odd = [r for r, x in enumerate(hashes) if x != hashes[0]]
        detail = ""
        if gathered[0] is not None and gathered[odd[0]] is not None:
            detail = f"; first difference (rank 0 vs rank {odd[0]}): {first_difference(gathered[0], gathered[odd[0]])}"
        raise SpeciesMismatchError(
            f"nytorch.distributed.{what}: ranks hold particles of different structure "
            f"(rank {rank} of {world}); ranks {odd} differ from rank 0{detail}. Every rank must "
            "build the same model class with the same shapes and dtypes"
        )
    if species is not None:
        _checked.setdefault(species, set()).add(key)


def particle_lines(net: NytoModule) -> List[str]:
    lines = [f"class {type(net).__qualname__}"]
    lines += [
        f"{n}: {list(p.shape)} {str(p.dtype).replace('torch.', '')} {p.device.type}" for n, p in net.named_parameters()
    ]
    return lines


def _all_gather_flat(out: torch.Tensor, inp: torch.Tensor, group: Optional[Any], async_op: bool):
    """all_gather into one tensor ([world * n], or [world, n] contiguous)."""
    fn: Callable = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return fn(out.view(-1), inp.reshape(-1), group=group, async_op=async_op)


all_gather_flat = _all_gather_flat
