"""sep-CMA-ES: CMA-ES with a diagonal covariance (Ros & Hansen 2008); its
time and memory are linear in the number of parameters, so it scales to
millions of them.

>>> import torch, nytorch as nyto
>>> from nytorch.algorithms import SepCMAES
>>> class Point(nyto.NytoModule):
...     def __init__(self):
...         super().__init__()
...         self.x = torch.nn.Parameter(torch.full((5,), 3.0))
>>> cma = SepCMAES(Point(), sigma_init=1.0, seed=0)
>>> hist = cma.run(lambda s: s.dot(s), 200, progress_bar=False)   # sphere
>>> float(cma.center.x.detach().abs().max()) < 1e-3
True
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .._fuse import api as _fuse
from ..particle import NytoModule
from ._gaussian import GaussianStrategy, check_positive
from ._sampling import run
from .snes import default_popsize


def _norm(xs) -> float:
    """The Euclidean norm of the tensors together, in float64."""
    return math.sqrt(sum(float(torch.linalg.vector_norm(x, dtype=torch.float64)) ** 2 for x in xs))


# The update's elementwise parts as two fused passes (one each before and after
# the norm of p_sigma that decides h_sig); built on first use.
_PROGRAMS: dict = {}


def _mean_program():
    """m + sigma * sqrt(C) * zw and the p_sigma path ks * ps + as * zw."""
    prog = _PROGRAMS.get("mean")
    if prog is None:

        def fn(m, c, zw, ps, sigma, ks, a_s):
            return m + sigma * (_fuse.sqrt(c) * zw), ks * ps + a_s * zw

        prog = _PROGRAMS["mean"] = _fuse.program(fn, "ppppnnn")
    return prog


def _scale_program():
    """sigma * sqrt(C), as the update's second pass computes it."""
    prog = _PROGRAMS.get("scale")
    if prog is None:
        prog = _PROGRAMS["scale"] = _fuse.program(lambda c, sigma: _fuse.sqrt(c) * sigma, "pn")
    return prog


def _cov_program(h_sig: bool):
    """The p_c path, C (rank-one and rank-mu updates) and the next step's
    scale sigma * sqrt(C)."""
    prog = _PROGRAMS.get(("cov", h_sig))
    if prog is None:

        def fn(pc, c, zw, zw2, kc, a_c, keep, cmu, c1, sigma):
            pc = kc * pc + a_c * (_fuse.sqrt(c) * zw) if h_sig else kc * pc
            c = c * (keep + cmu * zw2) + c1 * (pc * pc)
            return pc, c, _fuse.sqrt(c) * sigma

        prog = _PROGRAMS[("cov", h_sig)] = _fuse.program(fn, "ppppnnnnnn")
    return prog


class SepCMAES(GaussianStrategy):
    """Samples ``x_i = center + sigma * sqrt(C) * z_i`` (one fused pass; C the
    diagonal covariance ``self.C``), recombines the ``popsize // 2`` best with
    log-decreasing weights, adapts sigma by cumulative step-size adaptation
    (path ``p_sigma``) and C by the rank-one (path ``p_c``) and rank-mu updates
    with the learning rates of sep-CMA-ES (c1, cmu times (n + 2) / 3).
    Everything is computed from the weighted noise sums ``sum w z`` and
    ``sum w z**2`` (noise regenerated or stored). ``popsize=None``:
    4 + 3 ln(n). Fitness is minimized unless ``maximize``.
    """

    _tensor_state = ("C", "p_sigma", "p_c")
    _scalar_state = ("sigma",)

    def __init__(
        self,
        center: NytoModule,
        popsize: Optional[int] = None,
        *,
        sigma_init: float = 0.1,
        maximize: bool = False,
        seed: Optional[int] = None,
        store_noise: Optional[bool] = None,
        track_diversity: bool = False,
    ) -> None:
        n = sum(p.numel() for p in center.parameters()) if isinstance(center, NytoModule) else 1
        popsize = default_popsize(n) if popsize is None else popsize
        self.sigma = check_positive(sigma_init, "SepCMAES", "sigma_init")
        super().__init__(
            center,
            popsize,
            antithetic=False,
            store_noise=store_noise,
            maximize=maximize,
            seed=seed,
            track_diversity=track_diversity,
        )
        mu = popsize // 2
        w = torch.log(torch.tensor(mu + 0.5, dtype=torch.float64)) - torch.log(
            torch.arange(1, mu + 1, dtype=torch.float64)
        )
        self.weights = (w / w.sum()).to(self.device)
        self.mu, self.n = mu, n
        mueff = float(1 / self.weights.square().sum())
        self.mueff = mueff
        self.cs = (mueff + 2) / (n + mueff + 5)
        self.ds = 1 + 2 * max(0.0, math.sqrt((mueff - 1) / (n + 1)) - 1) + self.cs
        self.cc = (4 + mueff / n) / (n + 4 + 2 * mueff / n)
        c1 = 2 / ((n + 1.3) ** 2 + mueff)
        cmu = min(1 - c1, 2 * (mueff - 2 + 1 / mueff) / ((n + 2) ** 2 + mueff))
        self.c1 = min(1.0, c1 * (n + 2) / 3)
        self.cmu = min(1 - self.c1, cmu * (n + 2) / 3)
        self.chi_n = math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n * n))
        self.C = [torch.ones_like(f) for f in self.flats]
        self.p_sigma = [torch.zeros_like(f) for f in self.flats]
        self.p_c = [torch.zeros_like(f) for f in self.flats]

    def scale(self):
        # sigma * sqrt(C) in the same buffers every step (the sampler keeps its call plan while its
        # tensors stay): written by the update's second pass, recomputed when C or sigma changed
        # otherwise (a loaded checkpoint, the caller's edits)
        bufs = self._scale_buffers()
        key = self._scale_of()
        if self._scale_key != key:  # the update's own arithmetic (fused sqrt and product): a resumed run
            run(_scale_program(), [self.C], [self.sigma], [bufs])  # samples bitwise as the uninterrupted one
            self._scale_key = self._scale_of()
        return bufs

    _scale_key: object = None

    def _scale_buffers(self):
        bufs = getattr(self, "_scale_bufs", None)
        if bufs is None or len(bufs) != len(self.C):
            bufs = self._scale_bufs = [torch.empty_like(c) for c in self.C]
            self._scale_key = None
        return bufs

    def _scale_of(self) -> object:
        """What the scale is a function of: sigma and C (in-place writes bump a tensor's version;
        inference tensors keep none: then a key equal to nothing)."""
        if any(c.is_inference() for c in self.C):
            return object()
        return (self.sigma, [(c.data_ptr(), c._version) for c in self.C])

    def _update(self, f: torch.Tensor) -> None:
        w = self._rank_weights(f, self.weights)  # the mu best, log-decreasing weights
        zw, zw2 = self._sums(w, w)  # never antithetic: the rows are the population's
        cs, cc, c1, cmu = self.cs, self.cc, self.c1, self.cmu
        flats = self.flats
        run(
            _mean_program(),
            [flats, self.C, zw, self.p_sigma],
            [self.sigma, 1 - cs, math.sqrt(cs * (2 - cs) * self.mueff)],
            [flats, self.p_sigma],
        )
        ps_norm = _norm(self.p_sigma)
        gen = self.steps_done + 1
        h_sig = ps_norm / math.sqrt(1 - (1 - cs) ** (2 * gen)) < (1.4 + 2 / (self.n + 1)) * self.chi_n
        keep = 1 - c1 - cmu + (0.0 if h_sig else c1 * cc * (2 - cc))
        self.sigma *= math.exp(min(1.0, (cs / self.ds) * (ps_norm / self.chi_n - 1)))
        bufs = self._scale_buffers()
        run(
            _cov_program(h_sig),
            [self.p_c, self.C, zw, zw2],
            [1 - cc, math.sqrt(cc * (2 - cc) * self.mueff), keep, cmu, c1, self.sigma],
            [self.p_c, self.C, bufs],
        )
        self._scale_key = self._scale_of()
