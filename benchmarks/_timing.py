"""Timing, workload and table helpers shared by the benchmark scripts.

The machines these run on are shared and noisy, so every comparison is made
*in one process, interleaved*: :func:`compare` calibrates each candidate to a
block of calls lasting about ``block_s``, then runs ``rounds`` rounds in which
every candidate times one block (in a rotating order), and reports the median
per-call time of each candidate over the rounds. Ratios between candidates of
one :func:`compare` call are therefore measured under the same conditions.
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

Shapes = List[Tuple[int, ...]]


# ---------------------------------------------------------------------------
# Timing
@dataclass
class Timing:
    """Per-call times (seconds) of one candidate over the rounds of a compare."""

    name: str
    calls_per_block: int
    samples: List[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else math.nan

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median (0.05 = +-2.5%);
        the full range when there are fewer than 4 samples."""
        if len(self.samples) < 2:
            return math.nan
        if len(self.samples) < 4:
            return (max(self.samples) - min(self.samples)) / self.median
        q = statistics.quantiles(self.samples, n=4)
        return (q[2] - q[0]) / self.median


def mins_us(timings: Dict[str, Timing]) -> Dict[str, float]:
    """Fastest block of every candidate (us per call): a cross-check under heavy load."""
    return {k: min(t.samples) * 1e6 for k, t in timings.items() if t.samples}


def worst_spread(timings: Dict[str, Timing]) -> str:
    """The largest relative spread among the candidates of one compare."""
    vals = [t.spread for t in timings.values() if t.samples and not math.isnan(t.spread)]
    return f"{max(vals):.0%}" if vals else "n/a"


def _sync_for(device: str) -> Optional[Callable[[], None]]:
    if device.startswith("cuda"):
        return torch.cuda.synchronize
    return None


def _block(fn: Callable[[], object], n: int, sync: Optional[Callable[[], None]], gc_off: bool = False) -> float:
    """Seconds for n back-to-back calls of fn.

    The cyclic GC stays on by default (unlike timeit), and each candidate
    pays for its own garbage: the block starts with the young generations
    collected (untimed) and ends by collecting them (timed). Otherwise the
    reference cycles one candidate leaves (nytorch 1.1.0 leaves ~1000 objects
    per out-of-place op) are freed by whichever candidate happens to trigger
    the next collection.
    """
    gc_was = gc.isenabled()
    if gc_off:
        gc.disable()
    try:
        settle = gc.isenabled()
        if settle:
            gc.collect(1)
        if sync:
            sync()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        if sync:
            sync()
        if settle:
            gc.collect(1)
        return time.perf_counter() - t0
    finally:
        if gc_was:
            gc.enable()


def calibrate(
    fn: Callable[[], object], block_s: float, sync=None, warmup: int = 2, max_calls: int = 1_000_000
) -> Tuple[int, float]:
    """Warm fn up and find a block size n whose block lasts about block_s.

    A candidate whose first call already lasts block_s is not called again
    here (big workloads: every call counts). Returns (n, seconds per call).
    """
    t = _block(fn, 1, sync)
    if t >= block_s:
        return 1, t
    for _ in range(warmup - 1):
        _block(fn, 1, sync)
    n = 1
    while True:
        t = _block(fn, n, sync)
        if t >= block_s or n >= max_calls:
            return n, t / n
        if t <= 0:
            n *= 10
            continue
        # aim at block_s with a little headroom, grow at most 100x a step
        n = min(max_calls, max(n + 1, min(n * 100, int(n * block_s / t * 1.1) + 1)))


def compare(
    fns: Dict[str, Optional[Callable[[], object]]],
    *,
    rounds: int = 9,
    block_s: float = 2e-3,
    device: str = "cpu",
    budget_s: Optional[float] = None,
    min_rounds: int = 3,
    warmup: int = 2,
    slow_s: float = 1.0,
) -> Dict[str, Timing]:
    """Median per-call time of every candidate, measured interleaved.

    Every round times one block of each candidate, in a rotating order.
    ``budget_s`` caps the estimated time of the measured rounds: each
    candidate gets an equal share, so a slow candidate takes part in fewer
    rounds (never fewer than ``min_rounds``) while fast ones get all
    ``rounds``; one whose call lasts over ``slow_s`` seconds (nytorch 1.1.0,
    Python loops on 50M parameters) may get only 2. Candidates whose value is
    None are skipped (median NaN).
    """
    sync = _sync_for(device)
    live = {k: f for k, f in fns.items() if f is not None}
    timings = {k: Timing(k, 0) for k in fns}
    quota = {}
    for k, f in live.items():
        n, per = calibrate(f, block_s, sync, warmup=warmup)
        timings[k].calls_per_block = n
        quota[k] = rounds
        if budget_s is not None and live:
            share = budget_s / len(live)
            floor = min(min_rounds, 2) if per > slow_s else min_rounds
            quota[k] = max(floor, min(rounds, int(share / max(n * per, 1e-9))))
    names = list(live)
    for r in range(max(quota.values(), default=0)):
        shift = r % len(names)
        for k in names[shift:] + names[:shift]:
            if r < quota[k]:
                n = timings[k].calls_per_block
                timings[k].samples.append(_block(live[k], n, sync) / n)
    return timings


# ---------------------------------------------------------------------------
# Workloads: parameter shapes of typical models (no torchvision needed)
def resnet18_shapes(num_classes: int = 1000) -> Shapes:
    """Parameter shapes of torchvision's resnet18 (62 tensors, 11,689,512 params)."""
    shapes: Shapes = [(64, 3, 7, 7), (64,), (64,)]
    in_c = 64
    for out_c, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            s = stride if block == 0 else 1
            c_in = in_c if block == 0 else out_c
            shapes += [(out_c, c_in, 3, 3), (out_c,), (out_c,), (out_c, out_c, 3, 3), (out_c,), (out_c,)]
            if block == 0 and (s != 1 or c_in != out_c):
                shapes += [(out_c, c_in, 1, 1), (out_c,), (out_c,)]
        in_c = out_c
    shapes += [(num_classes, 512), (num_classes,)]
    return shapes


def mlp_shapes(sizes: Sequence[int] = (256, 256, 128, 64, 32, 10)) -> Shapes:
    """Linear layers: 10 tensors, 109,354 params by default."""
    out: Shapes = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        out += [(b, a), (b,)]
    return out


def big_shapes(d: int = 576, layers: int = 12, vocab: int = 4096, ctx: int = 512) -> Shapes:
    """A GPT-like transformer: 148 tensors, ~50M params by default."""
    shapes: Shapes = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,)]
    shapes += [(d,), (d,)]
    return shapes


def workloads(quick: bool = False) -> Dict[str, Shapes]:
    """name -> parameter shapes, smallest first."""
    return {
        "tiny": [(10, 1), (1,)],
        "mlp": mlp_shapes(),
        "many-small": [(64,)] * 1000,
        "resnet18": resnet18_shapes(),
        "big": big_shapes(),
    }


def numel(shapes: Shapes) -> int:
    return sum(math.prod(s) for s in shapes)


# ---------------------------------------------------------------------------
# Memory bandwidth
def bandwidth_probes(device: str = "cpu", nelem: int = 64 << 20) -> Dict[str, Tuple[Callable[[], object], float]]:
    """Large memory-bound ops on float32 buffers of nelem elements (256 MiB
    each by default, far beyond the 32 MiB L3) and the bytes each moves per
    call: name -> (fn, bytes).

    ``copy``: ``dst.copy_(src)``, counted as read + write (STREAM 'copy').
    With write-allocate caches the CPU also reads dst before writing it, so
    this count understates the traffic (~3 bytes moved per 2 counted).
    ``add_``: ``a.add_(b)``, 2 reads + 1 write of lines already read: the
    count is the traffic, like the in-place PSO update (6 reads + 1 write).
    """
    src = torch.rand(nelem, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch the pages once
    nbytes = src.numel() * src.element_size()
    return {
        "copy": ((lambda: dst.copy_(src)), 2.0 * nbytes),
        "add_": ((lambda: dst.add_(src)), 3.0 * nbytes),
    }


# ---------------------------------------------------------------------------
# Output helpers
def us(seconds: float) -> str:
    if seconds is None or math.isnan(seconds):
        return "n/a"
    v = seconds * 1e6
    if v >= 1e5:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def ratio(a: float, b: float) -> float:
    if a is None or b is None or math.isnan(a) or math.isnan(b) or b == 0:
        return math.nan
    return a / b


def fmt_ratio(r: float) -> str:
    return "n/a" if r is None or math.isnan(r) else f"{r:.2f}x"


def verdict(ok: Optional[bool], has_target: bool = False) -> str:
    """PASS/MISS; "n/a" for a target that could not be measured; "" for no target."""
    if ok is None:
        return "n/a" if has_target else ""
    return "PASS" if ok else "MISS"


def check(value: float, limit: float, at_most: bool = True) -> Optional[bool]:
    """value <= limit (or >= limit); None when value is NaN (not measured)."""
    if value is None or math.isnan(value):
        return None
    return value <= limit if at_most else value >= limit


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], title: str = "") -> None:
    cells = [[str(h) for h in headers]] + [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if title:
        print(f"\n{title}")
    line = "  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(cells[0], widths)))
    print(line)
    print("-" * len(line))
    for r in cells[1:]:
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    print(flush=True)


def machine_line(device: str) -> str:
    if device.startswith("cuda"):
        dev = torch.cuda.get_device_name()
    else:
        dev = f"CPU x{os.cpu_count()} ({platform.processor() or platform.machine()}), torch threads {torch.get_num_threads()}"
    load = ", load avg %.1f %.1f %.1f" % os.getloadavg() if hasattr(os, "getloadavg") else ""
    return f"torch {torch.__version__}, python {platform.python_version()}, {dev}{load}"


def load_warning() -> str:
    """A warning line when other processes keep the CPUs busy, else ''."""
    if not hasattr(os, "getloadavg"):
        return ""
    load = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    if load <= cores * 1.5:  # this benchmark's own threads count too
        return ""
    return (
        f"WARNING: load average {load:.1f} on {cores} cores: other processes compete for the CPUs. "
        "Multi-threaded rows of mid-sized workloads (0.1-10 MB) stall in parallel regions waiting "
        "for a descheduled worker; rerun when the machine is quiet, or compare with --threads 1."
    )


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def write_json(path: Optional[str], payload: dict) -> None:
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=1, default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o))
    print(f"wrote {path}")


def probe(fn: Callable[[], object], label: str) -> Optional[Callable[[], object]]:
    """fn after one trial call, or None (a column prints n/a) if that call raises."""
    try:
        fn()
        return fn
    except Exception as e:  # noqa: BLE001  (a candidate that can't run here: report, go on)
        first = str(e).splitlines()[0][:120] if str(e) else ""
        print(f"  [{label}] unavailable: {type(e).__name__}: {first}")
        return None


def finish(script: str, results: List[dict], elapsed_s: float, device: str, json_path: Optional[str], **extra) -> None:
    """The scripts' last lines: the PASS/MISS count (n/a too where a target
    could not be measured), a load warning if any, and the JSON file."""
    n_ok = sum(1 for r in results if r.get("ok") is True)
    n_miss = sum(1 for r in results if r.get("ok") is False)
    n_na = sum(1 for r in results if r.get("target") and r.get("ok") is None)
    na = f", {n_na} n/a" if n_na else ""
    print(f"targets: {n_ok} PASS, {n_miss} MISS{na}   (total {elapsed_s:.0f}s; {machine_line(device)})")
    if load_warning():
        print(load_warning())
    write_json(json_path, dict(script=script, machine=machine_line(device), **extra, results=results))


class Stopwatch:
    """Wall time since construction, for the scripts' own time budget."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0
