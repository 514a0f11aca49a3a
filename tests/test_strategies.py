"""The fused-sampling strategies (``nytorch.algorithms``: ES(backend="fuse"),
PGPE, SNES, CEM, SepCMAES, DE): convergence on sphere and Rastrigin within a
bounded number of steps, stored vs regenerated noise (bitwise the same
trajectory), bitwise resume, population statistics, bad input."""

import doctest
import importlib
import io
import math
import re
from pathlib import Path

import nytorch as nyto
import pytest
import torch
from nytorch import Swarm
from nytorch.algorithms import CEM, CMAES, DE, ES, PGPE, SNES, SepCMAES, nes_utilities
from nytorch.algorithms._sampling import CPU_ROWS, FusedSampler
from torch import nn

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA"))]


class Point(nyto.NytoModule):
    def __init__(self, dim=10):
        super().__init__()
        self.a = nn.Parameter(torch.zeros(dim // 2))
        self.b = nn.Parameter(torch.zeros(dim - dim // 2))


class Mixed(nyto.NytoModule):
    """Two parameter groups (float32 and float64)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.zeros(6))
        self.b = nn.Parameter(torch.zeros(5, dtype=torch.float64))


def sphere(s):
    return s.dot(s)


def rastrigin(s):
    x = torch.cat([f.double() for f in s.flats], 1)
    return 10 * x.shape[1] + (x * x - 10 * torch.cos(2 * math.pi * x)).sum(1)


def center(o):
    return torch.cat([q.detach().reshape(-1).double() for q in o.center.parameters()])


def f_center(o):
    return float(rastrigin(Swarm(o.center, 1)))


def start(device="cpu"):
    return Point().to(device) + 3.0  # sphere 90, Rastrigin 90


# name -> (constructor of a Gaussian strategy from a center, keyword arguments)
GAUSSIAN = {
    "es": lambda c, **kw: ES(c, 100, sigma=1.0, lr=0.05, backend="fuse", **kw),
    "pgpe": lambda c, **kw: PGPE(c, 100, stdev_init=2.0, center_lr=0.05, **kw),
    "snes": lambda c, **kw: SNES(c, 100, stdev_init=2.0, **kw),
    "cem": lambda c, **kw: CEM(c, 100, stdev_init=2.0, elite_ratio=0.2, **kw),
    "sepcma": lambda c, **kw: SepCMAES(c, 100, sigma_init=2.0, **kw),
}


# ---------------------------------------------------------------------------
# convergence: thresholds far below what a wrong update reaches (start: 90)
# ---------------------------------------------------------------------------
# thresholds hold for seeds 0-4 with a margin (checked when they were set)
SPHERE = {"es": (200, 5e-3), "pgpe": (200, 0.15), "snes": (200, 1e-5), "cem": (150, 1e-5), "sepcma": (100, 1e-10)}


@pytest.mark.parametrize("name", sorted(SPHERE))
def test_converges_on_sphere(name):
    steps, tol = SPHERE[name]
    o = GAUSSIAN[name](start(), seed=0)
    o.run(sphere, steps, progress_bar=False)
    assert float(center(o).norm()) < tol
    assert o.best_fitness <= min(o.history.best) + 1e-12 and len(o.history) == steps


# (steps, how the result is judged, threshold)
# (Rastrigin's local minima sit at integer points, 1 per coordinate off 0)
RASTRIGIN = {
    "es": (200, "box", 0.6),
    "pgpe": (300, "box", 0.8),
    "snes": (200, "f", 3.0),
    "cem": (150, "f", 8.0),
    "sepcma": (100, "f", 5.0),
}


@pytest.mark.parametrize("name", sorted(RASTRIGIN))
def test_converges_on_rastrigin(name):
    steps, kind, tol = RASTRIGIN[name]
    o = GAUSSIAN[name](start(), seed=0)
    o.run(rastrigin, steps, progress_bar=False)
    if kind == "box":  # in the global optimum's neighbourhood (every coordinate within 1 of 0)
        assert float(center(o).abs().max()) < tol
    else:
        assert f_center(o) < tol


def test_de_converges():
    torch.manual_seed(0)
    de = DE(Swarm(Point(), 50, init="randn") * 3, F=0.5, CR=0.9, seed=0)
    de.run(sphere, 300, progress_bar=False)
    assert de.best_fitness < 1e-9
    assert float(sphere(Swarm(de.best, 1))) == pytest.approx(de.best_fitness, rel=1e-5)
    torch.manual_seed(0)
    de = DE(Swarm(Point(), 50, init="randn") * 3, F=0.5, CR=0.1, seed=0)
    de.run(rastrigin, 300, progress_bar=False)
    assert de.best_fitness < 1e-3


def test_cmaes_converges_and_learns_a_rotated_covariance():
    o = CMAES(start(), 20, sigma_init=2.0, seed=0)
    o.run(sphere, 150, progress_bar=False)
    assert float(center(o).norm()) < 1e-4  # seeds 0-4: < 4e-6
    o = CMAES(start(), 100, sigma_init=2.0, seed=0)
    o.run(rastrigin, 100, progress_bar=False)
    assert f_center(o) < 8.0  # seeds 0-4: < 5.5
    # a rotated ellipsoid (condition 1e4): the full covariance solves it, the diagonal one cannot
    g = torch.Generator().manual_seed(0)
    rot, _ = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=torch.float64))
    scale = 10 ** (4 * torch.arange(10, dtype=torch.float64) / 9)

    def ellipsoid(s):
        x = torch.cat([f.double() for f in s.flats], 1) @ rot.t()
        return (x * x * scale).sum(1)

    full, sep = CMAES(start(), 10, sigma_init=1.0, seed=1), SepCMAES(start(), 10, sigma_init=1.0, seed=1)
    for o in (full, sep):
        o.run(ellipsoid, 500, progress_bar=False)
    assert float(ellipsoid(Swarm(full.center, 1))) < 1e-10  # seeds 0-4: < 1e-13
    assert float(ellipsoid(Swarm(sep.center, 1))) > 1.0  # seeds 0-4: 12-76
    with pytest.raises(ValueError, match="SepCMAES"):
        CMAES(Point(10_001))


def test_progress_bar_callback_and_log():
    from nytorch.algorithms import LogCallback

    seen = []
    o = CEM(start(), 10, seed=0, track_diversity=True)
    hist = o.run(sphere, 4, progress_bar=True, callback=seen.append)
    assert [r["step"] for r in seen] == [1, 2, 3, 4] and hist is o.history
    assert all(r["diversity"] > 0 and r["best"] <= r["mean"] for r in seen)
    LogCallback(every=2, use_print=True)(seen[1])


def test_maximize_flips():
    o = SNES(start(), 20, stdev_init=1.0, maximize=True, seed=0)
    o.run(lambda s: -sphere(s), 150, progress_bar=False)
    assert float(center(o).norm()) < 0.05 and o.best_fitness > -0.05


# ---------------------------------------------------------------------------
# stored vs regenerated noise, resume
# ---------------------------------------------------------------------------
def state_tensors(o):
    out = []

    def walk(v):
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)

    walk({k: v for k, v in o.state_dict().items() if k not in ("rng", "seed_rng")})
    return out


def model(name):
    return Mixed() + 1.5 if name != "es" else Point() + 1.5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(GAUSSIAN))
def test_stored_and_regenerated_noise_give_the_same_trajectory(name, device):
    runs = []
    for store in (True, False):
        o = GAUSSIAN[name](model(name).to(device), seed=3, store_noise=store)
        assert (o.sampler.noise is not None) == store
        o.run(rastrigin, 6, progress_bar=False)
        runs.append((state_tensors(o), [f.clone() for f in o.population.flats]))
    (a, pa), (b, pb) = runs
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))


@pytest.mark.parametrize("name", sorted(GAUSSIAN) + ["de", "cmaes"])
def test_checkpoint_resumes_bitwise(name):
    if name == "cmaes":
        make = lambda seed: CMAES(Mixed() + 1.5, 8, seed=seed)  # noqa: E731
    elif name == "de":
        torch.manual_seed(0)
        make = lambda seed: DE(Swarm(Mixed(), 12, init="randn"), seed=seed)  # noqa: E731
    elif name == "sepcma":  # vectors long enough for the vectorized sqrt (torch's and fuse's differ by 1 ulp)
        make = lambda seed: GAUSSIAN[name](Point(300) + 1.5, seed=seed)  # noqa: E731
    else:
        make = lambda seed: GAUSSIAN[name](model(name), seed=seed)  # noqa: E731
    o = make(4)
    o.run(rastrigin, 3, progress_bar=False)
    buf = io.BytesIO()
    torch.save(o.state_dict(), buf)
    o.run(rastrigin, 3, progress_bar=False)
    expect = state_tensors(o)
    fresh = make(99)
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf, weights_only=False))
    fresh.run(rastrigin, 3, progress_bar=False)
    got = state_tensors(fresh)
    assert len(got) == len(expect) and all(torch.equal(x, y) for x, y in zip(got, expect))
    pop = lambda z: z.swarm if name == "de" else z.population
    assert all(torch.equal(x, y) for x, y in zip(pop(fresh).flats, pop(o).flats))
    assert fresh.history.best == o.history.best


def test_algorithm_template():
    """SwarmOptimizer owns the loop, seeding, maximize, best tracking, history
    and checkpoints: no algorithm redefines them (each implements its own
    ask/tell bodies and its own state), and every checkpoint carries the
    common keys."""
    from nytorch.algorithms import PSO, SwarmOptimizer
    from nytorch.algorithms.sharded import ShardedES, ShardedPSO

    owned = (
        "step",
        "run",
        "best_fitness",
        "state_dict",
        "load_state_dict",
        "_record",
        "_fitness",
        "_observe",
        "_end_step",
        "_setup",
    )
    for cls in (ES, PGPE, SNES, CEM, SepCMAES, CMAES, DE, PSO, ShardedES):
        assert issubclass(cls, SwarmOptimizer)
        for name in owned:
            assert getattr(cls, name) is getattr(SwarmOptimizer, name), (cls.__name__, name)
        assert "ask" in vars(cls) or cls in (PGPE, SNES, CEM, SepCMAES)  # the Gaussian strategies share theirs
    assert ShardedPSO.state_dict is not SwarmOptimizer.state_dict  # adds its global keys on top
    torch.manual_seed(0)
    algos = [
        ES(Point(), 4, seed=1),
        ES(Point(), 4, seed=1, backend="fuse"),
        PGPE(Point(), 4, seed=1),
        SNES(Point(), 4, seed=1),
        CEM(Point(), 4, seed=1),
        SepCMAES(Point(), 4, seed=1),
        CMAES(Point(), 4, seed=1),
        DE(Swarm(Point(), 5, init="randn"), seed=1),
        PSO(Swarm(Point(), 5, init="randn"), seed=1),
    ]
    for o in algos:
        for maximize in (False, True):
            o.maximize = maximize
            o.step(lambda s: s.dot(s))
        st = o.state_dict()
        assert {"steps_done", "history"} <= set(st) and st["steps_done"] == 2
        assert ("rng" in st) == (o.generator is not None) and ("seed_rng" in st) == (o.seed_generator is not None)
        assert ("best_fitness" in st) == o._saves_best_fitness
        with pytest.raises(Exception, match="unexpected key"):
            o.load_state_dict({**st, "extra": 1})
        o.load_state_dict(st)
        assert o.steps_done == 2 and len(o.history) == 2


# ---------------------------------------------------------------------------
# the sampled population
# ---------------------------------------------------------------------------
def normal_checks(e: torch.Tensor) -> None:
    """Standard normal samples: tolerances of about 4 standard errors (n = e.numel())."""
    e = e.double().reshape(-1)
    n = e.numel()
    assert abs(float(e.mean())) < 4 / math.sqrt(n)
    assert abs(float(e.std()) - 1) < 4 / math.sqrt(2 * n)
    p1 = float((e.abs() < 1).double().mean())  # 0.6827 for N(0, 1); 0.577 for a uniform of std 1
    assert abs(p1 - 0.682689) < 4 * math.sqrt(0.6827 * 0.3173 / n)
    p2 = float((e.abs() > 2).double().mean())  # tails: 0.0455
    assert abs(p2 - 0.0455) < 4 * math.sqrt(0.0455 * 0.9545 / n)
    k = float((e**4).mean())  # kurtosis 3
    assert abs(k - 3) < 4 * math.sqrt(96 / n)


def test_es_population_statistics():
    d, pop = 40000, 16
    c = Point(d) + 0.25
    es = ES(c, pop, sigma=0.5, backend="fuse", seed=1, store_noise=False)
    x = es.ask().flats[0].double()
    h = pop // 2
    eps = (x[:h] - 0.25) / 0.5
    normal_checks(eps)
    # antithetic: the second half mirrors the first around the center
    assert torch.allclose(x[:h] + x[h:], torch.full_like(x[:h], 0.5), atol=1e-6)
    # rows (other streams, other chunks) are uncorrelated
    z = eps - eps.mean(1, keepdim=True)
    corr = (z @ z.t()) / (z.norm(dim=1)[:, None] * z.norm(dim=1)[None, :])
    off = corr - torch.eye(h, dtype=corr.dtype)
    assert float(off.abs().max()) < 5 / math.sqrt(d)
    # and a new step draws new noise
    y = es.ask().flats[0].double()
    assert float(((y[:h] - 0.25) / 0.5 * eps).mean().abs()) < 5 / math.sqrt(h * d)


def test_per_element_scale_statistics():
    d = 40000
    o = PGPE(Point(d), 16, stdev_init=1.0, seed=2, store_noise=False)
    o.stdev[0][: d // 4] = 0.5  # parameter a: halves with stdev 0.5 and 1.0; b: 2.0
    o.stdev[0][d // 2 :] = 2.0
    x = o.ask().flats[0].double()
    h = 8
    normal_checks(x[:h, : d // 4] / 0.5)
    normal_checks(x[:h, d // 4 : d // 2])
    normal_checks(x[:h, d // 2 :] / 2.0)
    assert torch.allclose(x[:h], -x[h:], atol=0)


class Wide(nyto.NytoModule):
    """A float32 group (full blocks and a ragged tail) and a float64 one."""

    def __init__(self, n=2 * 1024 + 5):
        super().__init__()
        self.a = nn.Parameter(torch.linspace(-1, 1, n))
        self.b = nn.Parameter(torch.linspace(0, 2, 1500, dtype=torch.float64))


@pytest.mark.parametrize("kind", ["scalar sigma (ES)", "per-element stdev (PGPE)"])
def test_population_is_center_plus_minus_scale_times_the_noise_bitwise(kind):
    # ask() draws each row's normals and writes center + scale * e and center - scale * e in the
    # same pass (on the CPU, 32 elements after each step of the draw): bitwise the torch expression
    # over the stored noise, on whole blocks and ragged tails, for both program shapes
    if kind.startswith("scalar"):
        o = ES(Wide(), 2 * CPU_ROWS + 6, sigma=0.3, backend="fuse", store_noise=True, seed=4)
        scale = [torch.tensor(0.3, dtype=f.dtype) for f in o.sampler.noise]
    else:
        o = PGPE(Wide(), 2 * CPU_ROWS + 6, stdev_init=0.3, store_noise=True, seed=4)
        for s in o.stdev:
            s.mul_(torch.linspace(0.5, 1.5, s.numel(), dtype=s.dtype))
        scale = o.stdev
    x = o.ask().flats
    h = len(x[0]) // 2
    for flat, noise, c, sc in zip(x, o.sampler.noise, nyto.flat_storage(o.center).flats, scale):
        c = c.reshape(-1)
        assert torch.equal(flat[:h], c + sc * noise)
        assert torch.equal(flat[h:], c - sc * noise)


def test_sampler_sums_match_the_drawn_noise():
    like = [torch.randn(1003), torch.randn(7, dtype=torch.float64)]
    for rows in (CPU_ROWS, 2 * CPU_ROWS + 3, 5):
        s = FusedSampler(like, rows, antithetic=True, store_noise=False)
        eps = s.draw(11, like)
        w, v = torch.randn(rows, dtype=torch.float64), torch.randn(rows, dtype=torch.float64)
        s1, s2 = s.sums(11, w, v, like=like)
        for a, b, e in zip(s1, s2, eps):
            assert torch.allclose(a, w.to(e.dtype) @ e, atol=1e-5)
            assert torch.allclose(b, v.to(e.dtype) @ (e * e), atol=1e-5)
        normal_checks(eps[0])


def test_stored_sums_equal_the_regenerated_ones_bitwise():
    """Stored float32/float64 CPU noise is summed by one _C.fuse_row_sums call
    per group, regenerated noise by the chunked programs: bitwise the same
    sums (rows not a multiple of 8 or of a chunk, several column tiles and a
    partial vector at the end; one and two threads)."""
    like = [torch.randn(2 * 16384 + 45), torch.randn(8192 + 3, dtype=torch.float64)]  # 64 KiB tiles
    cases = [(r, a, z) for r in (1, 13, 2 * CPU_ROWS + 3, 40) for a in (False, True) for z in range(3)]
    for rows, antithetic, zeros in cases:
        sums = []
        w = torch.randn(rows, dtype=torch.float64)
        v = w.exp()
        if zeros:  # rows whose weights are both 0 (CEM's, sep-CMA-ES's non-elites) are skipped
            w[::2] = 0.0
            v[::2] = 0.0 if zeros == 1 else v[::2]
            w[1::4] = -0.0
        threads = torch.get_num_threads()
        for store in (True, False):
            s = FusedSampler(like, rows, antithetic=antithetic, store_noise=store)
            assert s._row_sums == store
            pop = [torch.empty((2 if antithetic else 1) * rows, t.numel(), dtype=t.dtype) for t in like]
            s.sample(5, like, 0.5, pop)
            try:
                torch.set_num_threads(2 if store and rows > 1 else 1)  # narrower tiles for two threads
                sums.append((s.sums(5, w, v, like=like), s.sums(5, w, like=like)))
            finally:
                torch.set_num_threads(threads)
        (a, a1), (b, b1) = sums
        for x, y in zip(a[0] + a[1] + a1[0], b[0] + b[1] + b1[0]):
            assert torch.equal(x, y) and torch.equal(x.signbit(), y.signbit())
        assert a1[1] is None and b1[1] is None


def test_row_sums_checks_its_operands():
    rows, acc = torch.randn(4, 10), torch.zeros(10)
    w = [1.0, 2.0, 3.0, 4.0]
    nyto._C.fuse_row_sums(rows, w, None, acc, None)
    assert torch.allclose(acc, torch.tensor(w) @ rows)
    bad = [
        ((rows.double(), w, None, acc, None), "dtype"),
        ((rows, w[:3], None, acc, None), "one weight per row"),
        ((rows, w, w, acc, None), "both given"),
        ((rows, w, None, rows[1], None), "overlaps"),
        ((rows, w, w, acc, acc), "overlap"),
        ((rows.t(), w, None, acc, None), "contiguous"),
        ((rows, w, None, torch.zeros(9), None), "one element per column"),
    ]
    for args, msg in bad:
        with pytest.raises((RuntimeError, ValueError, TypeError), match=msg):
            nyto._C.fuse_row_sums(*args)


def test_sepcma_scale_follows_sigma_and_C():
    """sep-CMA-ES's update writes the next scale sigma * sqrt(C) in its fused
    pass; scale() recomputes it when C or sigma changed otherwise."""
    o = SepCMAES(Mixed() + 1.5, 8, sigma_init=0.3, seed=0)

    def expect():
        return [torch.sqrt(c) * o.sigma for c in o.C]

    for _ in range(3):
        o.step(rastrigin)
        assert all(torch.allclose(a, b, rtol=1e-6) for a, b in zip(o.scale(), expect()))
    o.sigma = 2.0
    assert all(torch.allclose(a, b) for a, b in zip(o.scale(), expect()))
    o.C[0].mul_(4.0)
    assert all(torch.allclose(a, b) for a, b in zip(o.scale(), expect()))
    state = o.state_dict()
    o.step(rastrigin)
    o.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(o.scale(), expect()))


def test_sampler_plan_follows_its_tensors():
    """sample() keeps its call lists while the same tensors come back and
    rebuilds them for new ones (another population, center or scale)."""
    c1, c2 = torch.zeros(1000), torch.full((1000,), 5.0)
    s = FusedSampler([c1], 20, antithetic=True, store_noise=True)
    pa, pb = torch.empty(40, 1000), torch.empty(40, 1000)
    for pop, c, sc in ((pa, c1, 0.5), (pa, c1, 0.5), (pb, c2, 0.5), (pb, c2, [torch.full((1000,), 2.0)])):
        pop.fill_(float("nan"))
        s.sample(7, [c], sc, [pop])
        eps = s.noise[0]
        scale = sc if isinstance(sc, float) else sc[0]
        assert torch.equal(pop[:20], c + scale * eps) and torch.equal(pop[20:], c - scale * eps)
    assert torch.isnan(pa).sum() == 0 and not torch.equal(pa, pb)


def test_cuda_chunking_on_the_cpu(monkeypatch):
    """CUDA's 4 rows per program (CPU_ROWS patched): sums, stored vs regenerated."""
    import nytorch.algorithms._sampling as sampling

    monkeypatch.setattr(sampling, "CPU_ROWS", sampling.ROWS)
    like = [torch.randn(301), torch.randn(7, dtype=torch.float64)]
    s = FusedSampler(like, 11, antithetic=False, store_noise=False)
    assert s.k == 4 and [k for _, k in s._chunks()] == [4, 4, 3]
    eps = s.draw(3, like)
    w, v = torch.randn(11, dtype=torch.float64), torch.randn(11, dtype=torch.float64)
    s1, s2 = s.sums(3, w, v, like=like)
    for a, b, e in zip(s1, s2, eps):
        assert torch.allclose(a, w.to(e.dtype) @ e, atol=1e-5)
        assert torch.allclose(b, v.to(e.dtype) @ (e * e), atol=1e-5)
    runs = []
    for store in (True, False):
        o = SNES(Mixed() + 1.5, 11, seed=3, store_noise=store)
        o.run(rastrigin, 4, progress_bar=False)
        runs.append(state_tensors(o))
    assert all(torch.equal(x, y) for x, y in zip(*runs))


_F = importlib.import_module("nytorch._fuse.api")


def _randn_prog():
    return _F.program(lambda x: nyto.randn_like(x), "p")


def _box_muller_reference(n, dtype, seed, offset):
    """float64 Box-Muller of the same stream's uniforms (rand_like draws the
    same Philox words): pair p of a counter takes u1 = word 2p (open at 0),
    u2 = word 2p + 1 (float: 4 elements a counter; double: words (0,1), (2,3))."""
    prog = _F.program(lambda x: nyto.rand_like(x), "p")
    m = (offset + n + 1) // 2 * 2
    u = _F.run_flat(prog, [[torch.zeros(m, dtype=dtype)]], seed=seed)[0][0].double()
    u1 = u[0::2] + (2.0**-24 if dtype == torch.float32 else 2.0**-53)
    u2 = u[1::2]
    ref = torch.empty(m, dtype=torch.float64)
    r = torch.sqrt(-2 * torch.log(u1))
    ref[0::2] = r * torch.cos(2 * math.pi * u2)
    ref[1::2] = r * torch.sin(2 * math.pi * u2)
    return ref[offset : offset + n]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_normals_are_box_muller_of_the_stream(dtype):
    """The kernel's normals equal Box-Muller of the stream's own uniforms (the
    pairing CUDA shares) to a few ulps, at offsets on and off the counters."""
    for offset, n in ((0, 40_000), (3, 40_001), (1, 77)):
        z = _F.run_flat(_randn_prog(), [[torch.zeros(n, dtype=dtype)]], seed=5, offset=offset)[0][0].double()
        ref = _box_muller_reference(n, dtype, 5, offset)
        tol = (4 if dtype == torch.float32 else 32) * torch.finfo(dtype).eps  # float64: the reference's own rounding
        assert float(((z - ref).abs() / ref.abs().clamp_min(1.0)).max()) < tol, (offset, n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_normals_quality(dtype):
    """Moments up to the 4th and the tails of 4M normals (a wrong radius,
    angle or pairing shifts one of them by many standard errors)."""
    n = 1 << 22
    z = _F.run_flat(_randn_prog(), [[torch.zeros(n, dtype=dtype)]], seed=123)[0][0].double()
    se = 1 / math.sqrt(n)
    assert abs(float(z.mean())) < 5 * se
    assert abs(float((z**2).mean()) - 1) < 5 * math.sqrt(2) * se
    assert abs(float((z**3).mean())) < 5 * math.sqrt(15) * se
    assert abs(float((z**4).mean()) - 3) < 5 * math.sqrt(96) * se
    for k, p in (
        (1, 0.31731050786291415),
        (2, 0.04550026389635842),
        (3, 0.0026997960632601866),
        (4, 6.334248366623996e-05),
    ):
        q = float((z.abs() > k).double().mean())
        assert abs(q - p) < 5 * math.sqrt(p * (1 - p) / n) + 1 / n, (k, q, p)
    assert float(z.abs().max()) > 4.5  # the tails are reached (u1 down to 2^-24: |z| up to 5.77)
    # even (cosine) and odd (sine) elements: same law, uncorrelated, and pairs
    # are independent of their neighbours
    ev, od = z[0::2], z[1::2]
    assert abs(float(ev.std()) - float(od.std())) < 10 * se
    assert abs(float((ev * od).mean())) < 5 * math.sqrt(2) * se
    assert abs(float((ev[1:] * ev[:-1]).mean())) < 5 * math.sqrt(2) * se
    # radius^2 of a pair is exponential(1/2): P(r^2 > 4) = e^-2
    r2 = ev**2 + od**2
    assert abs(float((r2 > 4).double().mean()) - math.exp(-2)) < 5 * math.sqrt(0.12 / (n / 2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_normals_independent_of_threads_chunks_and_vector_steps(dtype):
    """Every element's value depends only on (seed, stream, group, index +
    offset): not on the thread count, where a call is cut, the 8-counter steps
    or the block boundaries; including a counter whose low word wraps."""
    n = 100_003
    prog = _randn_prog()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _F.run_flat(prog, [[torch.zeros(n, dtype=dtype)]], seed=9)[0][0]
        torch.set_num_threads(max(2, threads))
        two = _F.run_flat(prog, [[torch.zeros(n, dtype=dtype)]], seed=9)[0][0]
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    for cuts in ((1, 2, 3, 31, 33, 1000, 4097), (17, 5000, 5001, 99_999)):
        parts, lo = [], 0
        for hi in cuts + (n,):
            parts.append(_F.run_flat(prog, [[torch.zeros(hi - lo, dtype=dtype)]], seed=9, offset=lo)[0][0])
            lo = hi
        assert torch.equal(torch.cat(parts), one), cuts
    # counters around 2^32 (the 64-bit counter's low word wraps inside an 8-counter step)
    per = 4 if dtype == torch.float32 else 2
    base = ((1 << 32) - 5) * per + 1
    whole = _F.run_flat(prog, [[torch.zeros(200, dtype=dtype)]], seed=9, offset=base)[0][0]
    pieces = torch.cat(
        [_F.run_flat(prog, [[torch.zeros(1, dtype=dtype)]], seed=9, offset=base + i)[0][0] for i in range(0, 200, 7)]
    )
    assert torch.equal(whole[0::7], pieces)
    assert torch.allclose(
        whole.double(), _box_muller_tail(dtype, 9, base, 200), rtol=0, atol=8 * torch.finfo(dtype).eps * 4
    )


def _box_muller_tail(dtype, seed, offset, n):
    """_box_muller_reference for a far offset (uniforms drawn from there)."""
    prog = _F.program(lambda x: nyto.rand_like(x), "p")
    start = offset - offset % 2
    m = (offset - start + n + 1) // 2 * 2
    u = _F.run_flat(prog, [[torch.zeros(m, dtype=dtype)]], seed=seed, offset=start)[0][0].double()
    u1 = u[0::2] + (2.0**-24 if dtype == torch.float32 else 2.0**-53)
    u2 = u[1::2]
    ref = torch.empty(m, dtype=torch.float64)
    r = torch.sqrt(-2 * torch.log(u1))
    ref[0::2] = r * torch.cos(2 * math.pi * u2)
    ref[1::2] = r * torch.sin(2 * math.pi * u2)
    return ref[offset - start : offset - start + n]


def test_nes_utilities():
    u = nes_utilities(torch.tensor([3.0, 1.0, 2.0, 4.0, 0.0]))
    assert float(u.sum()) == pytest.approx(0, abs=1e-12)
    assert int(u.argmax()) == 4 and int(u.argmin()) in (0, 3)


# ---------------------------------------------------------------------------
# updates against a plain torch reference (one step)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("antithetic", [False, True])
def test_snes_and_cem_steps_match_reference(antithetic):
    c0 = Point(8) + 1.0
    for cls in (SNES, CEM):
        o = cls(c0, 10, stdev_init=0.3, seed=5, store_noise=True, antithetic=antithetic)
        x = o.ask().flats[0].clone()
        eps = o.sampler.noise[0].clone()
        if antithetic:
            eps = torch.cat([eps, -eps])
        assert torch.allclose(x, 1.0 + 0.3 * eps)
        f = sphere(o.population)
        o.tell(f)
        if cls is SNES:
            u = nes_utilities(f.double()).float()
            mu = 1.0 + 0.3 * (u @ eps)
            sd = 0.3 * torch.exp(o.stdev_lr / 2 * (u @ (eps * eps) - u.sum()))
        else:
            elite = x[torch.argsort(f.double(), stable=True)[: o.elites]]
            mu = elite.mean(0)
            sd = (elite.var(0, unbiased=False).sqrt() / 0.3).clamp(0.9, 1.1) * 0.3
        assert torch.allclose(center(o).float(), mu, atol=1e-5)
        assert torch.allclose(o.stdev[0], sd, atol=1e-5)


def test_pgpe_step_matches_reference():
    from nytorch.algorithms import centered_ranks

    o = PGPE(Point(8) + 1.0, 10, stdev_init=0.3, center_lr=0.1, stdev_lr=0.5, seed=5, store_noise=True)
    x = o.ask().flats[0].clone()
    eps = o.sampler.noise[0].clone()
    h = 5
    assert torch.allclose(x, torch.cat([1.0 + 0.3 * eps, 1.0 - 0.3 * eps]))
    f = sphere(o.population)
    o.tell(f)
    u = centered_ranks(f.double()).float()
    a, b = (u[:h] - u[h:]) / 2, (u[:h] + u[h:]) / 2 - u.mean()
    g = 0.3 * (a @ eps) / h
    mu = 1.0 + 0.1 * g / g.norm()  # ClipUp's first step: the normalized gradient times the lr
    sd = 0.3 + (0.3 * (b @ (eps * eps) - b.sum()) * 0.5 / h).clamp(-0.06, 0.06)
    assert torch.allclose(center(o).float(), mu, atol=1e-6)
    assert torch.allclose(o.stdev[0], sd, atol=1e-6)
    assert not torch.allclose(sd, torch.full_like(sd, 0.3), atol=1e-3)  # the stdev moved


# ---------------------------------------------------------------------------
# CUDA, bad input, doctests
# ---------------------------------------------------------------------------
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA")
@pytest.mark.parametrize("name", sorted(SPHERE))
def test_cuda_converges_on_sphere(name):
    steps, tol = SPHERE[name]
    o = GAUSSIAN[name](start("cuda"), seed=0)
    o.run(sphere, steps, progress_bar=False)
    assert float(center(o).norm()) < tol


def test_bad_input():
    with pytest.raises(ValueError, match="even popsize"):
        PGPE(Point(), 5)
    with pytest.raises(ValueError, match="stdev_init"):
        SNES(Point(), 6, stdev_init=0.0)
    with pytest.raises(ValueError, match="elite_ratio"):
        CEM(Point(), 6, elite_ratio=1.5)
    with pytest.raises(ValueError, match="optimizer"):
        PGPE(Point(), 6, optimizer="sgd")
    with pytest.raises(ValueError, match="at least 4"):
        DE(Swarm(Point(), 3))
    with pytest.raises(ValueError, match="backend"):
        ES(Point(), 4, backend="jax")
    with pytest.raises(TypeError, match="particle"):
        SNES(torch.zeros(3), 6)

    class OwnTell(ES):  # like nytorch.distributed.ShardedES: its tell reads es.noise
        def tell(self, fitness):
            super().tell(fitness)

    with pytest.raises(ValueError, match="store_noise=True"):
        OwnTell(Point(), 4, backend="fuse", store_noise=False)
    OwnTell(Point(), 4, backend="fuse", store_noise=True).step(sphere)
    o = SepCMAES(Point(), 6, seed=0)
    o.ask()
    before = state_tensors(o)
    with pytest.raises(ValueError, match="N = 6"):
        o.tell(torch.ones(5))
    assert all(torch.equal(a, b) for a, b in zip(state_tensors(o), before))
    with pytest.raises(nyto.errors.StateDictError):
        o.load_state_dict({"center": []})


@pytest.mark.parametrize("mod", ["_gaussian", "pgpe", "snes", "cem", "sep_cma", "cma", "de", "es"])
def test_doctests(mod):
    m = importlib.import_module(f"nytorch.algorithms.{mod}")
    assert doctest.testmod(m).failed == 0


# ---------------------------------------------------------------------------
# examples: --quick mode, one thread, a plot (tests/test_examples.py's checks,
# run in this process: a subprocess each would pay ~5 s of imports)
# ---------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["pgpe", "snes", "cem", "sepcma", "cmaes", "de"])
def test_example_quick_mode(name, tmp_path, capsys, monkeypatch):
    import matplotlib  # noqa: F401  (requirements.txt: a missing one fails, as in test_examples.py)
    import sklearn  # noqa: F401

    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    threads = torch.get_num_threads()
    try:
        mod = importlib.import_module(f"{name}_digits")
        plot = tmp_path / "plot.png"
        acc = mod.main(["--quick", "--threads", "1", "--no-progress", "--plot", str(plot)])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    accs = [float(a) for a in re.findall(r"test accuracy (\d+\.\d)%", out)]
    assert accs and max(accs) > 30.0 and acc > 0.3, out  # well above chance (10%) in a few seconds
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
