"""CUDA graphs for swarm optimizer steps (``cuda_graph=True``).

A graphed step is ``fitness_fn(opt.ask())`` then the algorithm's capturable
update (``opt._graph_tell(f)``: device tensors only, no ``.item()``, no
``nonzero``, no host sync), captured once with :class:`torch.cuda.CUDAGraph`
and replayed: one launch of the whole step. The kernels' random numbers come
from a random state (``nytorch.fuse.random_state``) that every replay reads
and advances on the device, so each step draws fresh numbers.

- **Capture.** The first ``step(fn)`` (and the first after a new ``fn``, or a
  ``load_state_dict``) runs the step eagerly on a side stream (the warm-up
  torch requires; it is a real step) and then captures it. Later steps replay.
- **Not capturable.** A fitness function that syncs (``.item()``, ``.cpu()``,
  ``print`` of a tensor, a CPU result, data-dependent shapes) fails the
  capture: :class:`GraphCaptureError` names the cause and the eager way
  (``cuda_graph=False``); the warm-up step has been applied by then.
- **History.** Records stay on the device (a ring of ``sync_every`` rows,
  written inside the graph) and are read back, in one sync, every
  ``sync_every`` steps, when ``history`` is read, at the end of ``run`` and by
  ``state_dict``; ``run``'s callback and progress bar see them then.
- ``cuda_graph="eager"`` runs the same capturable step without a graph, on
  any device: the graph mode's trajectory, for tests and debugging.
"""

from __future__ import annotations

import time
from typing import Any, Callable, List, Optional, Tuple

import torch

from ._base import History, as_fitness, progress

__all__ = ["GraphCaptureError", "GraphMode", "graph_mode", "capture", "diversity", "centered_ranks"]


class GraphCaptureError(RuntimeError):
    """A step could not be captured in a CUDA graph (the message says why)."""


def graph_mode(opt: Any, cuda_graph: Any, device: torch.device, *, fused: bool) -> Optional[GraphMode]:
    """The checked graph mode of ``opt`` (None for ``cuda_graph=False``).
    ``fused``: the optimizer runs on nytorch.fuse (graph mode needs it)."""
    name = type(opt).__name__
    if cuda_graph is False or cuda_graph is None:
        return None
    if cuda_graph not in (True, "eager"):
        raise ValueError(f"{name}: cuda_graph must be True, False or 'eager', got {cuda_graph!r}")
    if not fused:
        raise ValueError(f"{name}(cuda_graph=...) needs backend='fuse' (the graphed step is a fused program)")
    if cuda_graph is True and device.type != "cuda":
        raise ValueError(
            f"{name}(cuda_graph=True) needs CUDA tensors (they are on {device}); use cuda_graph=False "
            "(eager), or cuda_graph='eager' for the graph mode's step without a graph"
        )
    return GraphMode(opt, graph=cuda_graph is True, device=device)


def diversity(flats: List[torch.Tensor]) -> torch.Tensor:
    """``Swarm.diversity()`` as a 0-dim float64 device tensor (no sync)."""
    sq = None
    for f in flats:
        d = (f - f.mean(0, keepdim=True)).pow(2).sum(1).double()
        sq = d if sq is None else sq + d
    assert sq is not None
    return sq.sqrt().mean()


def centered_ranks(f: torch.Tensor) -> torch.Tensor:
    """``es.centered_ranks`` without a sort (pairwise comparisons, ties broken
    by order): capturable for any population a graph holds."""
    n = f.shape[0]
    less = (f[None, :] < f[:, None]).sum(1)
    before = torch.ones(n, n, dtype=torch.bool, device=f.device).tril_(-1)
    ties = ((f[None, :] == f[:, None]) & before).sum(1)
    return 0.5 - (less + ties).to(f.dtype) / max(n - 1, 1)


def capture(fn: Callable[[], Any], device: torch.device, what: str, advice: str) -> Tuple[Any, Any, Any]:
    """Run ``fn`` once eagerly on a side stream (torch's warm-up before a
    capture), then capture it: ``(warm-up result, graph, static result)``.
    A failed capture raises :class:`GraphCaptureError` with ``advice``."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        warm = fn()
    torch.cuda.current_stream(device).wait_stream(side)
    g = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(g):
            static = fn()
    except Exception as e:  # noqa: BLE001 - any failure of the capture is reported the same way
        raise GraphCaptureError(
            f"{what}: the step could not be captured in a CUDA graph: {type(e).__name__}: {e}. {advice}"
        ) from e
    return warm, g, static


class _LazyHistory(History):
    """A History whose last records may still be on the device (``flush``)."""

    def __init__(self, flush: Callable[[], None]) -> None:
        self._flush = flush
        super().__init__()

    @property  # type: ignore[override]
    def records(self) -> List[Any]:
        self._flush()
        return self._records

    @records.setter
    def records(self, value: List[Any]) -> None:
        self._records = value


class GraphMode:
    """The graph mode of one optimizer: its step captured and replayed.

    The optimizer provides ``ask()`` (capturable in graph mode) and
    ``_graph_tell(f) -> (best, mean, diversity or None)`` (0-dim device
    tensors, minimized sign), and may provide ``_graph_sync()`` (device
    values to host ones before a checkpoint) and ``_graph_reload()`` (after
    ``load_state_dict``)."""

    def __init__(self, opt: Any, *, graph: bool, device: torch.device, sync_every: int = 100) -> None:
        self.opt, self.graph, self.device, self.sync_every = opt, graph, device, sync_every
        self._cuda_graph: Optional[Any] = None
        self._key: Any = None
        self._static: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        self._ring = torch.zeros(sync_every, 3, dtype=torch.float64, device=device)
        self._slot = torch.zeros(1, dtype=torch.long, device=device)
        self._start = 0  # ring row of the first pending record
        self._pending: List[Tuple[int, float]] = []  # (step, time) of records still on the device
        self._callback: Optional[Callable] = None
        old = opt.history
        opt.history = _LazyHistory(self.flush)
        opt.history.records = list(old.records)

    # -- the step ---------------------------------------------------------------------
    def _body(self, fitness_fn: Callable[[Any], Any]) -> Tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            fitness = fitness_fn(self.opt.ask())
            fitness = fitness if isinstance(fitness, torch.Tensor) else torch.as_tensor(fitness)
            return fitness, self._tell(fitness)

    def _tell(self, fitness: Any) -> torch.Tensor:
        """The capturable tell; the record goes to the ring. Returns it."""
        opt = self.opt
        f = as_fitness(fitness, self._n(), self.device, f"{type(opt).__name__}.tell")
        if opt.maximize:
            f = -f
        best, mean, div = opt._graph_tell(f)
        sign = -1.0 if opt.maximize else 1.0
        nan = torch.full((), float("nan"), dtype=torch.float64, device=self.device)
        rec = torch.stack([best * sign, mean * sign, nan if div is None else div.double()])
        self._ring.index_copy_(0, self._slot, rec[None])
        self._slot.add_(1).remainder_(self.sync_every)
        return rec

    def _n(self) -> int:
        opt = self.opt
        return opt.popsize if hasattr(opt, "popsize") else len(opt.swarm)

    def _count(self) -> None:
        self.opt.steps_done += 1
        self._pending.append((self.opt.steps_done, time.perf_counter()))
        if len(self._pending) >= self.sync_every:
            self.flush()

    def tell(self, fitness: Any) -> None:
        """``tell`` in graph mode: the capturable update, run eagerly."""
        with torch.no_grad():
            self._tell(fitness)
        self._count()

    def step(self, fitness_fn: Callable[[Any], Any]) -> torch.Tensor:
        """One step: replayed from the graph (captured on first use)."""
        if not self.graph:
            fitness, _ = self._body(fitness_fn)
        elif self._cuda_graph is not None and self._key == fitness_fn:  # == : a bound method is a new object per access
            self._cuda_graph.replay()
            assert self._static is not None
            fitness = self._static[0]
        else:
            try:
                fitness = self._capture(fitness_fn)
            except GraphCaptureError:
                self._count()  # the warm-up step was applied
                raise
        self._count()
        return fitness.clone()

    def _capture(self, fitness_fn: Callable[[Any], Any]) -> torch.Tensor:
        self.reset()
        name = type(self.opt).__name__
        advice = (
            "The fitness function must be capturable: device tensors only, no .item()/.cpu()/.tolist()/print "
            "of tensors, no host-device copies or synchronization, no data-dependent shapes, a [N] tensor on "
            f"{self.device}. Otherwise run eagerly with {name}(..., cuda_graph=False). (The warm-up step before "
            "the capture was applied.)"
        )
        (fitness, _), g, static = capture(
            lambda: self._body(fitness_fn), self.device, f"{name}(cuda_graph=True)", advice
        )
        self._cuda_graph, self._key, self._static = g, fitness_fn, static
        return fitness

    def reset(self) -> None:
        """Drop the captured graph (the next step captures again)."""
        self._cuda_graph = self._key = self._static = None

    # -- records ------------------------------------------------------------------------
    def flush(self) -> None:
        """Read the records still on the device (one sync) into the history."""
        if not self._pending:
            return
        rows = self._ring.tolist()
        hist = self.opt.history
        for k, (step, t) in enumerate(self._pending):
            best, mean, div = rows[(self._start + k) % self.sync_every]
            if hist._t0 is None:
                hist._t0 = t
            rec = {"step": step, "best": best, "mean": mean, "diversity": div, "time": t - hist._t0}
            hist._records.append(rec)
            if self._callback is not None:
                self._callback(rec)
        self._start = (self._start + len(self._pending)) % self.sync_every
        self._pending = []

    def sync(self) -> None:
        """Before a checkpoint: records and device-held values to the host."""
        self.flush()
        getattr(self.opt, "_graph_sync", lambda: None)()

    def reload(self) -> None:
        """After ``load_state_dict``: records pending are dropped, the graph is captured again."""
        self._pending = []
        self._start = 0
        self._slot.zero_()
        self.reset()
        getattr(self.opt, "_graph_reload", lambda: None)()

    def run(
        self,
        fitness_fn: Callable[[Any], Any],
        steps: int,
        progress_bar: bool,
        callback: Optional[Callable],
        desc: str,
    ) -> History:
        """``steps`` graphed steps; the progress bar and ``callback`` see the
        records when they are read back (every ``sync_every`` steps and at the end)."""
        bar = progress(range(steps), progress_bar, desc)
        self.flush()
        self._callback = callback
        try:
            for k in bar:
                self.step(fitness_fn)
                if hasattr(bar, "set_postfix") and (k + 1 == steps or not self._pending):
                    rec = self.opt.history.records[-1]
                    bar.set_postfix(best=f"{rec['best']:.4g}", mean=f"{rec['mean']:.4g}", refresh=False)
            self.flush()
        finally:
            self._callback = None
        return self.opt.history
