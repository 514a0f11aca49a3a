"""Fused Gaussian sampling of a population around a center ("virtual noise").

``FusedSampler.sample`` writes the rows ``center + scale * eps`` (and the
antithetic ``center - scale * eps``) of a stacked ``[N, numel]`` population in
ONE :mod:`nytorch.fuse` call: the normals are drawn in the kernel (Philox) and
never stored unless ``store_noise``. ``FusedSampler.sums`` gives the weighted
sums ``sum_i w_i eps_i`` (and ``sum_i v_i eps_i**2``) that every Gaussian
strategy's update needs, by regenerating eps from the same (seed, counters)
chunk by chunk, or by reading the stored noise (float32/float64 on the CPU:
``nytorch._C.fuse_row_sums``, one pass over all rows, row after row): both
routes run the same arithmetic in the same order, so they give bitwise the
same sums (float32 and float64; half dtypes store rounded noise).

Counter layout: noise row ``i`` (``0 <= i < h``, h = the rows drawn: N, or
N/2 when antithetic) of parameter group ``j`` is Philox stream ``i % K`` of
fuse group ``(i // K) * G + j`` (G parameter groups); element
``e`` of the row is element ``e`` of that group. ``K`` is 4 on CUDA (the
kernel's 16 outputs) and 8 on the CPU (16 made fewer calls, but the
interpreter's block of 16 draws and up to 48 outputs thrashed L1: ``ask``
10-20% slower at P=256 x D=100k and P=1024 x D=5k). A call that only needs chunk
``c`` passes empty tensors for the groups before it (fuse skips them).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from .. import _C
from .._fuse import api as _fuse

ROWS = 4  # noise rows per program (random streams 0..ROWS-1) on CUDA: 3*ROWS <= 16 outputs
CPU_ROWS = 8  # on the CPU (16 measured 10-20% slower in ask: a block's 16 draws + 48 outputs thrash L1)
_PROGRAMS: Dict[Tuple, object] = {}
_row_sums = _C.fuse_row_sums
_fuse_run = _C.fuse_run


def run(prog, inputs: Sequence[Sequence[torch.Tensor]], numbers: Sequence[float], out, seed: int = 0) -> None:
    """``nytorch.fuse.run_flat(prog, inputs, numbers, out=out, seed=seed)`` for
    the algorithms' own programs and buffers: CPU calls go straight to the
    kernel's entry (run_flat's argument checks cost a few microseconds a call,
    a tenth of a small step); CUDA ones (the generated-kernel engine) and
    torch.compile take run_flat."""
    first = inputs[0][0] if inputs and inputs[0] else None
    if first is not None and first.device.type == "cpu" and not torch.compiler.is_compiling():
        _fuse_run(prog.words, [*numbers, *prog.lits] if prog.lits else numbers, inputs, out, seed, 0)
    else:
        _fuse.run_flat(prog, inputs, numbers, out=out, seed=seed)


def _ask_program(k: int, antithetic: bool, vector: bool, store: bool):
    key = ("ask", k, antithetic, vector, store)
    prog = _PROGRAMS.get(key)
    if prog is None:

        def fn(c, s):
            # Outputs row by row (plus_r, minus_r, noise_r): the program computes each row's values
            # right after its draw, so a draw dies young (K live 4 KiB blocks thrashed L1). The
            # scalar-scale minus is c + (-s) * e, one muladd, bitwise c - s * e (negation is exact).
            neg = -s if not vector else None
            out = []
            for _ in range(k):
                e = _fuse.randn_like(c)
                out.append(c + s * e)
                if antithetic:
                    out.append(c - s * e if neg is None else c + neg * e)
                if store:
                    out.append(e)
            return tuple(out)

        prog = _PROGRAMS[key] = _fuse.program(fn, "pp" if vector else "pn")
    return prog


def _sum_program(k: int, squares: bool, stored: bool):
    """acc1 + sum_r w_r e_r (and acc2 + sum_r v_r e_r^2), e_r regenerated or read."""
    key = ("sum", k, squares, stored)
    prog = _PROGRAMS.get(key)
    if prog is None:
        n_acc = 2 if squares else 1

        def fn(*args):
            accs = list(args[:n_acc])
            rest = args[n_acc:]
            noise, w = (rest[:k], rest[k:]) if stored else ((), rest)
            for r in range(k):
                e = noise[r] if stored else _fuse.randn_like(args[0])
                accs[0] = accs[0] + w[r] * e
                if squares:
                    accs[1] = accs[1] + w[k + r] * (e * e)
            return tuple(accs) if squares else accs[0]

        kinds = "p" * n_acc + ("p" * k if stored else "") + "n" * (k * n_acc)
        prog = _PROGRAMS[key] = _fuse.program(fn, kinds)
    return prog


def _describe(t: torch.Tensor) -> Tuple:
    """What a plan's cache key records of a tensor: its memory and layout."""
    return (t.data_ptr(), t.dtype, t.device, tuple(t.shape), tuple(t.stride()))


class FusedSampler:
    """Samples ``rows`` noise rows per step into a population (see the module
    docstring). ``centers``: the center's flat buffers (one per group);
    ``antithetic``: the population holds ``2 * rows`` particles;
    ``store_noise``: keep the noise in ``self.noise`` (``[rows, numel]`` per
    group) instead of regenerating it."""

    def __init__(self, centers: Sequence[torch.Tensor], rows: int, *, antithetic: bool, store_noise: bool) -> None:
        self.rows, self.antithetic, self.store_noise = rows, antithetic, store_noise
        self.groups = len(centers)
        on_cpu = not centers or centers[0].device.type == "cpu"
        self.k = CPU_ROWS if on_cpu else ROWS
        self.noise: Optional[List[torch.Tensor]] = (
            [torch.empty((rows, c.numel()), dtype=c.dtype, device=c.device) for c in centers] if store_noise else None
        )
        self._empties = [torch.empty(0) for _ in range(3 * self.k)]  # distinct: outputs may not overlap
        # sums() over stored float32/float64 CPU noise: one nytorch._C.fuse_row_sums call per group (the
        # chunked programs, 8 rows a call, cost a call and a pass over the accumulators per chunk)
        self._row_sums = self.noise is not None and all(
            n.device.type == "cpu" and n.dtype in (torch.float32, torch.float64) for n in self.noise
        )
        # row views, built once: indexing a tensor row by row costs about a microsecond a row, which on
        # small rows (P=1024 x D=5k) was a tenth of the step
        self._noise_rows = [list(n.unbind(0)) for n in self.noise] if self.noise is not None else None
        self._plan: Optional[Tuple] = None  # sample(): (key, calls, the tensors the key describes)
        self._stored_rows: Optional[List] = None  # sums(): per chunk, the stored noise rows of each group

    def _pad(self, n: int, j: int = 0) -> List[torch.Tensor]:
        """``n`` empty groups (fuse skips them) for output ``j``."""
        return [self._empties[j]] * n

    def _chunks(self):
        """(first row, rows) of each chunk: full chunks of K rows, then the rest."""
        return [(a, min(self.k, self.rows - a)) for a in range(0, self.rows, self.k)]

    def sample(
        self,
        seed: int,
        centers: Sequence[torch.Tensor],
        scale: Union[float, Sequence[torch.Tensor]],
        population: Sequence[torch.Tensor],
    ) -> None:
        """Write ``population[j][i] = centers[j] + scale * eps_i`` (rows
        ``h + i``: ``- scale * eps_i`` when antithetic) for the step's ``seed``."""
        vector = not isinstance(scale, (int, float))
        scales: List[torch.Tensor] = [] if isinstance(scale, (int, float)) else list(scale)
        tensors = (list(centers), scales, list(population))
        key = (vector, self.store_noise, tuple(_describe(t) for group in tensors for t in group))
        if self._plan is None or self._plan[0] != key:
            # the calls' argument lists, kept while the same tensors come back (the plan holds them: their
            # memory cannot be reused by other tensors, so an equal key means the same buffers)
            self._plan = (key, self._sample_calls(*tensors, vector), tensors)
        numbers = [float(scale)] if isinstance(scale, (int, float)) else []
        for prog, ins, outs in self._plan[1]:
            run(prog, ins, numbers, outs, seed)

    def _sample_calls(self, centers, scale, population, vector: bool):
        h, G, K = self.rows, self.groups, self.k
        full = h // K
        rows = [list(p.unbind(0)) for p in population]
        noise_rows = self._noise_rows if self._noise_rows is not None else []
        calls = []
        for first_chunk, n_chunks, k in ((0, full, K), (full, 1 if h % K else 0, h % K)):
            if n_chunks == 0:
                continue
            n_pad = first_chunk * G
            pad = self._pad(n_pad)
            gids = [(c, j) for c in range(first_chunk, first_chunk + n_chunks) for j in range(G)]
            ins = [pad + [centers[j] for _, j in gids]]
            if vector:
                ins.append(pad + [scale[j] for _, j in gids])
            outs = []
            for r in range(k):  # the program's outputs: plus_r, minus_r, noise_r
                outs.append([rows[j][c * K + r] for c, j in gids])
                if self.antithetic:
                    outs.append([rows[j][h + c * K + r] for c, j in gids])
                if self.store_noise:
                    outs.append([noise_rows[j][c * K + r] for c, j in gids])
            outs = [self._pad(n_pad, o) + out for o, out in enumerate(outs)]
            calls.append((_ask_program(k, self.antithetic, vector, self.store_noise), ins, outs))
        return calls

    def sums(
        self,
        seed: int,
        w: Union[torch.Tensor, List[float]],
        v: Union[None, torch.Tensor, List[float]] = None,
        like: Sequence[torch.Tensor] = (),
    ) -> Tuple[List[torch.Tensor], Optional[List[torch.Tensor]]]:
        """``(sum_i w_i eps_i, sum_i v_i eps_i**2)`` per group (the second None
        without ``v``) over the noise rows of the step drawn with ``seed``;
        ``w``, ``v``: tensors or lists of floats; ``like``: the center's flats
        (shapes, dtypes, devices)."""
        G = self.groups
        wl = w.tolist() if isinstance(w, torch.Tensor) else w
        vl = (v.tolist() if isinstance(v, torch.Tensor) else v) if v is not None else None
        acc1 = [torch.zeros(t.numel(), dtype=t.dtype, device=t.device) for t in like]
        acc2 = [torch.zeros_like(a) for a in acc1] if v is not None else None
        stored = self.store_noise
        if stored and self._row_sums:
            # one pass over each group's stored rows (row order, the same roundings as the programs)
            for j, rows in enumerate(self.noise or ()):
                _row_sums(rows, wl, vl, acc1[j], acc2[j] if acc2 is not None else None)
            return acc1, acc2
        stored_rows: List = []
        if stored:
            if self._stored_rows is None:  # the chunks' noise rows, listed once
                noise_rows = self._noise_rows if self._noise_rows is not None else []
                self._stored_rows = [
                    [[noise_rows[j][a + r] for j in range(G)] for r in range(k)] for a, k in self._chunks()
                ]
            stored_rows = self._stored_rows
        for c, (a, k) in enumerate(self._chunks()):
            # regenerated noise: chunk c is fuse groups c*G.. (empty groups before it); stored noise
            # draws nothing, so its group numbers do not matter (no padding: O(chunks) work, not O(chunks^2))
            n_pad = 0 if stored else c * G
            pad = self._pad(n_pad)
            ins = [pad + acc1]
            if acc2 is not None:
                ins.append(pad + acc2)
            if stored:
                ins += stored_rows[c]
            nums = wl[a : a + k] + (vl[a : a + k] if vl is not None else [])
            outs = [pad + acc1] + ([self._pad(n_pad, 1) + acc2] if acc2 is not None else [])
            run(_sum_program(k, acc2 is not None, stored), ins, nums, outs, seed)
        return acc1, acc2

    def draw(self, seed: int, like: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """The step's noise rows, ``[rows, numel]`` per group (for tests and
        inspection; the strategies never materialize them)."""
        saved, self.store_noise = self.store_noise, True
        saved_noise, saved_rows, saved_plan, saved_stored = self.noise, self._noise_rows, self._plan, self._stored_rows
        self.noise = [torch.empty((self.rows, t.numel()), dtype=t.dtype, device=t.device) for t in like]
        self._noise_rows = [list(n.unbind(0)) for n in self.noise]
        self._plan = self._stored_rows = None
        try:
            pop = [
                torch.empty(((2 if self.antithetic else 1) * self.rows, t.numel()), dtype=t.dtype, device=t.device)
                for t in like
            ]
            self.sample(seed, [t.reshape(-1) for t in like], 0.0, pop)
            return self.noise
        finally:
            self.noise, self.store_noise = saved_noise, saved
            self._noise_rows, self._plan, self._stored_rows = saved_rows, saved_plan, saved_stored
