"""Model averaging: uniform / weighted / greedy soups of a swarm, and an EMA.

>>> import torch, nytorch as nyto
>>> from nytorch.algorithms import EMA, uniform_soup
>>> class P(nyto.NytoModule):
...     def __init__(self):
...         super().__init__()
...         self.w = torch.nn.Parameter(torch.zeros(2))
>>> s = nyto.Swarm(P(), 4, init="zeros") + torch.arange(4.)
>>> uniform_soup(s).w.tolist()
[1.5, 1.5]
>>> ema = EMA(s[0], decay=0.5); _ = ema.update(s[2]); ema.average.w.tolist()
[1.0, 1.0]
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .. import _checks, ops
from ..errors import SpeciesError
from ..particle import NytoModule
from ..storage import flat_storage
from ..swarm import Swarm


def uniform_soup(models: Union[Swarm, Sequence[NytoModule]]) -> NytoModule:
    """The average of the particles (a new particle): ``Swarm.mean()``."""
    return _as_swarm(models).mean()


def weighted_soup(models: Union[Swarm, Sequence[NytoModule]], weights: Any) -> NytoModule:
    """``sum(w_i * x_i) / sum(w_i)`` over the particles (a new particle)."""
    return _as_swarm(models).mean(weights=weights)


def greedy_soup(
    models: Union[Swarm, Sequence[NytoModule]], score: Callable[[NytoModule], float], *, maximize: bool = True
) -> Tuple[NytoModule, List[int]]:
    """Greedy soup (Wortsman et al. 2022): visit the particles from best to worst
    individual ``score`` and keep each one whose addition to the uniform soup
    does not make its score worse. Returns ``(soup, indices kept)``."""
    _checks.function(score, "greedy_soup", "score")
    s = _as_swarm(models)
    scores = [float(score(p)) for p in s]
    order = sorted(range(len(s)), key=lambda i: scores[i], reverse=maximize)
    kept = [order[0]]
    best = scores[order[0]]
    for i in order[1:]:
        trial = s.gather(kept + [i]).mean()
        sc = float(score(trial))
        if (sc >= best) if maximize else (sc <= best):
            kept.append(i)
            best = sc
    return s.gather(kept).mean(), kept


def _as_swarm(models) -> Swarm:
    if isinstance(models, Swarm):
        return models
    if isinstance(models, NytoModule) or not hasattr(models, "__iter__"):
        raise TypeError(f"models must be a nytorch.Swarm or a sequence of particles, got {type(models).__name__}")
    return Swarm.stack(list(models))


class EMA:
    """Exponential moving average of a particle or a swarm:
    ``average = decay * average + (1 - decay) * model`` per ``update(model)``,
    one fused pass (``nytorch.ops.lerp_``) over the stacked buffers. Floating
    buffers (BatchNorm statistics) are averaged alike unless ``buffers=False``
    (then copied).

    ``cuda_graph=True`` (CUDA): an update is one replay of a CUDA graph (the
    lerp and every buffer's lerp/copy), captured on the first update from a
    given model's memory (and again when ``decay`` or that memory changes)."""

    def __init__(
        self,
        model: Union[NytoModule, Swarm],
        decay: float = 0.999,
        *,
        buffers: bool = True,
        cuda_graph: bool = False,
    ) -> None:
        if not isinstance(model, (NytoModule, Swarm)):
            raise TypeError(
                f"EMA: model must be a particle (NytoModule) or a nytorch.Swarm, got {type(model).__name__}"
            )
        decay = _checks.real(decay, "EMA", "decay")
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA: decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.buffers = buffers
        self.average = model.clone()
        self.updates = 0
        if cuda_graph not in (True, False):
            raise ValueError(f"EMA: cuda_graph must be True or False, got {cuda_graph!r}")
        flats = self._tensors(self.average)[0]
        if cuda_graph and not (flats and all(f.is_cuda for f in flats)):
            raise ValueError("EMA(cuda_graph=True) needs a model on CUDA; use cuda_graph=False (eager)")
        self.cuda_graph = cuda_graph
        self._graph: Optional[Tuple[Any, Any]] = None  # (key, torch.cuda.CUDAGraph)

    def _tensors(self, m) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        if isinstance(m, Swarm):
            return list(m.flats), list(m.buffers)
        st = flat_storage(m)
        return list(st.flats), list(st.buffers)

    def update(self, model: Union[NytoModule, Swarm]) -> Union[NytoModule, Swarm]:
        """Move the average towards ``model`` (same species; for a swarm, same length)."""
        from ..swarm.core import check_species as _check_species

        if isinstance(self.average, Swarm):
            if not isinstance(model, Swarm):
                raise TypeError("EMA.update: this EMA averages a swarm; pass a Swarm")
            _check_species(self.average, model)
            if len(model) != len(self.average):
                raise ValueError(f"EMA.update: swarm of {len(model)}, expected {len(self.average)}")
        else:
            if not isinstance(model, NytoModule):
                raise TypeError("EMA.update: pass a particle of the averaged species")
            if model._nyto_species is not self.average._nyto_species:
                raise SpeciesError("EMA.update: particle of a different species")
        af, ab = self._tensors(self.average)
        mf, mb = self._tensors(model)
        if self.cuda_graph:
            from ._graph import GraphCaptureError

            try:
                self._replay(af + ab, mf + mb, len(af))
            except GraphCaptureError:
                self.updates += 1  # the warm-up update was applied
                raise
        else:
            self._lerp(af, ab, mf, mb)
        self.updates += 1
        return self.average

    def _lerp(self, af: List[torch.Tensor], ab: List[torch.Tensor], mf: List[torch.Tensor], mb: List[torch.Tensor]):
        w = 1.0 - self.decay
        with torch.no_grad():
            ops.lerp_(af, mf, w)
            for a, b in zip(ab, mb):
                if self.buffers and a.dtype.is_floating_point:
                    a.lerp_(b, w)
                else:
                    a.copy_(b)

    def _replay(self, mine: List[torch.Tensor], theirs: List[torch.Tensor], n_flats: int) -> None:
        """The update as a CUDA graph, keyed by the memory it reads and writes."""
        from ._graph import capture

        key = (self.decay, self.buffers, *[(t.data_ptr(), t.shape, t.dtype) for t in mine + theirs])
        if self._graph is not None and self._graph[0] == key:
            self._graph[1].replay()
            return
        self._graph = None
        args = (mine[:n_flats], mine[n_flats:], theirs[:n_flats], theirs[n_flats:])
        _, g, _ = capture(lambda: self._lerp(*args), mine[0].device, "EMA(cuda_graph=True)", "Use cuda_graph=False.")
        self._graph = (key, g)

    def state_dict(self) -> Dict[str, Any]:
        f, b = self._tensors(self.average)
        return {
            "flats": [t.clone() for t in f],
            "buffers": [t.clone() for t in b],
            "updates": self.updates,
            "decay": self.decay,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore ``state_dict()`` output in place."""
        _checks.state_keys(
            state,
            "EMA.load_state_dict",
            ("flats", "buffers", "updates", "decay"),
            strict=type(self).state_dict is EMA.state_dict,
        )
        f, b = self._tensors(self.average)
        if len(f) != len(state["flats"]) or any(x.shape != y.shape for x, y in zip(f, state["flats"])):
            raise ValueError("EMA.load_state_dict: shapes differ")
        with torch.no_grad():
            for x, y in zip(f + b, state["flats"] + state["buffers"]):
                x.copy_(y)
        self.updates = int(state["updates"])
        self.decay = float(state["decay"])
